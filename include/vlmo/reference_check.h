// Checks the model against a reference fixture folder (format: shared/fixtures/reference/
// README.md): a forward fixture (config.json, weights, inputs, expected outputs, losses and
// gradients) or a resize fixture (config.json, source, expected state after loading).
#pragma once
#include <ATen/Device.h>
#include <ATen/Tensor.h>

#include <string>
#include <vector>

#include "vlmo/run_policy.h"

namespace vlmo {

struct CheckRow {
  std::string name;
  std::string shape;
  double max_abs_err = 0;  // max |a - b|
  double worst_ratio = 0;  // max |a - b| / (1e-4 * (1 + |b|)); pass iff <= 1
  bool pass = false;
  std::string note;  // why it failed when no number says it
};

struct CheckResult {
  std::string kind;  // "forward" or "resize"
  std::vector<CheckRow> rows;
  bool ok() const;
  int passed() const;
};

// Throws vlmo::Error for a malformed fixture (missing file, bad config, missing input).
// The model runs as `policy` says (its device included).
CheckResult check_reference(const std::string& dir, const RunPolicy& policy = resolve_run_policy());

// Compares one tensor with the tolerance max|a-b| <= 1e-4 * (1 + |b|).
CheckRow compare_tensor(const std::string& name, const at::Tensor& actual, const at::Tensor& expected);

}  // namespace vlmo
