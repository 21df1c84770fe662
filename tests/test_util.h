// Helpers shared by the tests: fixture paths, temporary folders, error expectations.
#pragma once
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "vlmo/config.h"
#include "vlmo/error.h"

namespace vlmo::test {

// The small model the unit tests train: 2 blocks of width 32, 32-px images, 16 tokens.
inline Config tiny_config(std::vector<std::string> heads = {"mlm", "itm", "itc"}) {
  Config c;
  c.embed_dim = 32;
  c.depth = 2;
  c.num_heads = 2;
  c.image_size = 32;
  c.vlffn_start_layer_index = 1;
  c.max_text_len = 16;
  c.heads = std::move(heads);
  return c;
}

inline std::string shared_dir() { return VLMO_SHARED_DIR; }
inline std::string fixture(const std::string& rel) { return shared_dir() + "/fixtures/" + rel; }

// A fresh temporary folder per call, removed by the OS's tmp cleaning, named after the test.
inline std::string temp_dir() {
  std::string tmpl = "/tmp/vlmo-test-XXXXXX";
  if (!::mkdtemp(tmpl.data())) throw std::runtime_error("mkdtemp failed");
  return tmpl;
}

inline std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

inline void write_file(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary);
  out << bytes;
}

// Runs `fn`, expecting vlmo::Error whose message contains every one of `parts`.
template <typename Fn>
void expect_error(Fn fn, std::initializer_list<std::string> parts) {
  try {
    fn();
  } catch (const vlmo::Error& e) {
    const std::string msg = e.what();
    for (const auto& p : parts) EXPECT_NE(msg.find(p), std::string::npos) << "message: " << msg << "\nmissing: " << p;
    return;
  }
  ADD_FAILURE() << "expected vlmo::Error";
}

// Runs the vlmo program with `args` (each shell-quoted here); captures stdout, stderr, status.
struct CliResult {
  int status = -1;
  std::string out, err;
};
inline std::string shell_quote(const std::string& s) {
  std::string q = "'";
  for (char c : s) q += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return q + "'";
}
inline CliResult run_cli(const std::vector<std::string>& args) {
  static int counter = 0;
  const std::string base = temp_dir() + "/cli" + std::to_string(counter++);
  std::string cmd = shell_quote(VLMO_BINARY);
  for (const auto& a : args) cmd += " " + shell_quote(a);
  cmd += " >" + base + ".out 2>" + base + ".err";
  CliResult r;
  const int rc = std::system(cmd.c_str());
  r.status = WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
  r.out = read_file(base + ".out");
  r.err = read_file(base + ".err");
  return r;
}

}  // namespace vlmo::test
