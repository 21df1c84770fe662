// Shared by the libFuzzer targets: inputs that the library reads from a path go through one
// temporary file per process. Every target accepts vlmo::Error (bad input, reported) and nothing
// else: a crash, a sanitizer report or any other exception is a finding.
#pragma once
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "vlmo/error.h"

namespace vlmo::fuzz {

inline const std::string& temp_path(const char* suffix) {
  static const std::string path = "/tmp/vlmo-fuzz-" + std::to_string(::getpid()) + suffix;
  return path;
}

inline const std::string& write_temp(const uint8_t* data, size_t size, const char* suffix) {
  const std::string& path = temp_path(suffix);
  FILE* f = std::fopen(path.c_str(), "wb");
  if (!f) std::abort();
  if (size) std::fwrite(data, 1, size, f);
  std::fclose(f);
  return path;
}

template <typename Fn>
void expect_only_errors(Fn fn) {
  try {
    fn();
  } catch (const vlmo::Error&) {
  }
}

}  // namespace vlmo::fuzz
