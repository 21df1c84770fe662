// vlmo::Error: the one exception type the library throws for bad input (files, configs,
// checkpoints). Messages name the file / field / tensor and what was expected.
#pragma once
#include <sstream>
#include <stdexcept>
#include <string>

namespace vlmo {

struct Error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// A non-finite value (NaN / inf) where the computation needs finite numbers, e.g. hard-negative
// weights from a diverged model. The trainer treats it as a non-finite loss: the step is skipped.
struct NonFiniteError : Error {
  using Error::Error;
};

// Builds a message from streamable parts: throw Error(cat("file ", path, ": ", what)).
template <typename... Parts>
std::string cat(const Parts&... parts) {
  std::ostringstream out;
  (out << ... << parts);
  return out.str();
}

}  // namespace vlmo
