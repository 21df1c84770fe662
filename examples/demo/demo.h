// The built-in demo: the three pre-training stages, retrieval fine-tuning and evaluation on the
// procedural shapes world (vlmo/demo_world.h), on a small model, deterministic given the seed.
#pragma once
#include <nlohmann/json.hpp>
#include <string>

namespace vlmo {

struct DemoOptions {
  uint64_t seed = 1;
  std::string out_dir = "demo-out";
  std::string vocab;       // empty: the default BERT vocabulary
  double step_scale = 1.0; // multiplies every stage's step count (tests use small values)
  bool progress = true;
};

// Runs everything, writes out_dir/report.json (and metrics.jsonl, checkpoints), returns the report.
nlohmann::json run_demo(const DemoOptions& o);

}  // namespace vlmo
