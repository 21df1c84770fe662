// vlmo check-reference: compare the model with a fixture made by the official implementation.
#include <cstdio>
#include <iostream>
#include <nlohmann/json.hpp>

#include "cli.h"
#include "common.h"
#include "model/model_internals.h"
#include "vlmo/device.h"
#include "vlmo/error.h"
#include "vlmo/reference_check.h"

namespace vlmo::cli {
namespace {

int run_check(const Args& a) {
  const std::string& dir = a.positional[0];
  const at::Device device = parse_device(a.get("device"));
  const RunPolicy policy = run_policy_from(a, device);
  announce_run_policy(policy);
  const int64_t fused_before = fused_attention_calls();
  const CheckResult r = check_reference(dir, policy);
  // What ran: "fused" when a fused kernel took attention layers (LibTorch >= 2: SDPA).
  const std::string attention = fused_attention_calls() > fused_before ? "fused" : "plain";
  double worst = 0;
  for (const auto& row : r.rows) worst = std::max(worst, row.max_abs_err);
  if (a.get_flag("json")) {
    nlohmann::json j;
    j["fixture"] = dir;
    j["kind"] = r.kind;
    j["device"] = device.str();
    j["attention"] = attention;
    j["policy"] = nlohmann::json::parse(policy.json());
    j["passed"] = r.passed();
    j["total"] = r.rows.size();
    j["ok"] = r.ok();
    for (const auto& row : r.rows)
      j["tensors"].push_back({{"name", row.name},
                              {"shape", row.shape},
                              {"max_abs_err", row.max_abs_err},
                              {"worst_ratio", row.worst_ratio},
                              {"pass", row.pass},
                              {"note", row.note}});
    std::cout << j.dump(1) << "\n";
  } else {
    std::printf("%-56s %-18s %12s %10s  %s\n", "tensor", "shape", "max|a-b|", "err/tol", "result");
    for (const auto& row : r.rows)
      std::printf("%-56s %-18s %12.3e %10.3g  %s%s%s\n", row.name.c_str(), row.shape.c_str(), row.max_abs_err, row.worst_ratio,
                  row.pass ? "pass" : "FAIL", row.note.empty() ? "" : ": ", row.note.c_str());
    std::printf("%s: %s fixture on %s, %s attention: %d/%zu tensors pass (tolerance max|a-b| <= 1e-4*(1+|b|), "
                "largest error %.3e) -> %s\n",
                dir.c_str(), r.kind.c_str(), device.str().c_str(), attention.c_str(), r.passed(), r.rows.size(), worst,
                r.ok() ? "PASS" : "FAIL");
  }
  return r.ok() ? 0 : 1;
}

}  // namespace

Command check_reference_command() {
  Command c;
  c.name = "check-reference";
  c.summary = "Check the model against a reference fixture folder made by the official implementation\n"
              "(forward: outputs, losses, gradients; resize: state after loading at another size).\n"
              "Prints one row per expected tensor and a summary; exits 1 on any failure, 2 on a "
              "malformed fixture.";
  c.usage = "vlmo check-reference [options] DIR";
  c.options = {
      {"device", "cpu", "cpu or cuda[:N]"}, attention_option(), {"json", "false", "print JSON instead of a table", true}};
  c.min_positional = c.max_positional = 1;
  c.run = run_check;
  return c;
}

}  // namespace vlmo::cli
