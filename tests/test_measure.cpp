// src/measure/: vlmo bench (the analytic FLOP count against hand counts and the documented official
// figure, real timed steps of every task on a tiny model) and the reference check.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <sstream>

#include "test_util.h"
#include "vlmo/bench.h"
#include "vlmo/cpu_features.h"
#include "vlmo/model.h"
#include "vlmo/reference_check.h"
#include "vlmo/safetensors.h"
#include "vlmo/tasks.h"
#include "vlmo/threads.h"

using vlmo::Config;

TEST(Bench, AnalyticFlopsMatchHandCounts) {
  // tiny_config: width 32, 2 blocks, MLP 128, 32-px images of 16-px patches (5 image tokens),
  // 16 text tokens. Per block and token: 2·(4·32² + 2·32·128) = 24576, plus attention 4·N·32.
  const Config c = vlmo::test::tiny_config();
  const double patch_embed = 2.0 * 4 * (3 * 16 * 16) * 32;  // 196608
  EXPECT_DOUBLE_EQ(vlmo::analytic_flops_per_sample(c, "embed-image"), 2 * 5 * (24576 + 4 * 5 * 32) + patch_embed);
  EXPECT_DOUBLE_EQ(vlmo::analytic_flops_per_sample(c, "embed-text"), 2 * 16 * (24576 + 4 * 16 * 32));
  // docs/performance.md: "about 663 GFLOP per sample at 224 px" for the base pre-training step.
  const double pretrain = vlmo::analytic_flops_per_sample(Config::base(), "pretrain");
  EXPECT_NEAR(pretrain / 1e9, 663, 1.0);
  // A fine-tuning step is forward + backward: 3x a forward; NLVR2 runs two fusion passes.
  const double vqa = vlmo::analytic_flops_per_sample(Config::base(), "vqa");
  const double nlvr2 = vlmo::analytic_flops_per_sample(Config::base(), "nlvr2");
  EXPECT_GT(nlvr2, 1.9 * vqa);
  EXPECT_LT(nlvr2, 2.1 * vqa);
  vlmo::test::expect_error([&] { vlmo::analytic_flops_per_sample(c, "train"); }, {"unknown bench task \"train\""});
}

TEST(Bench, EveryTaskRunsTimedStepsOnATinyModel) {
  for (const auto& task : vlmo::bench_tasks()) {
    vlmo::BenchOptions o;
    o.task = task;
    o.config = vlmo::test::tiny_config();
    o.batch = 3;
    o.steps = 2;
    o.warmup = 1;
    std::vector<int64_t> seen;
    o.on_step = [&](int64_t done, int64_t total, double s) {
      EXPECT_EQ(total, 3);
      EXPECT_GE(s, 0);
      seen.push_back(done);
    };
    const vlmo::BenchResult r = vlmo::run_bench(o);
    EXPECT_EQ(seen, (std::vector<int64_t>{1, 2, 3})) << task;
    ASSERT_EQ(r.step_seconds.size(), 2u) << task;
    EXPECT_NEAR(r.seconds_per_step, (r.step_seconds[0] + r.step_seconds[1]) / 2, 1e-12) << task;
    EXPECT_TRUE(std::isfinite(r.samples_per_s) && r.samples_per_s > 0) << task;
    EXPECT_NEAR(r.samples_per_s, 3 / r.seconds_per_step, 1e-9 * r.samples_per_s) << task;
    EXPECT_DOUBLE_EQ(r.achieved_flops, r.flops_per_sample * r.samples_per_s) << task;
    EXPECT_GT(r.peak_memory_bytes, 1 << 20) << task;
    EXPECT_EQ(r.memory_kind, "process_peak_rss") << task;
  }
}

// A model with a small vocabulary (the demo's 58 entries) is benchmarked with ids in its range.
TEST(Bench, SmallVocabularyModelsRun) {
  vlmo::BenchOptions o;
  o.task = "pretrain";
  o.config = vlmo::test::tiny_config();
  o.config.vocab_size = 58;
  o.batch = 3;
  o.steps = 1;
  o.warmup = 0;
  EXPECT_GT(vlmo::run_bench(o).samples_per_s, 0);
  o.config.vocab_size = 5;
  vlmo::test::expect_error([&] { vlmo::run_bench(o); }, {"vocabulary of 5 entries is too small"});
}

TEST(Bench, BadOptionsAreClearErrors) {
  vlmo::BenchOptions o;
  o.config = vlmo::test::tiny_config();
  o.task = "pretrain";
  o.batch = 1;
  vlmo::test::expect_error([&] { vlmo::run_bench(o); }, {"at least 2 samples"});
  o.task = "caption";
  vlmo::test::expect_error([&] { vlmo::run_bench(o); }, {"unknown bench task \"caption\"", "embed-image"});
}

TEST(Bench, MatmulRateIsPositive) {
  const double f = vlmo::measure_matmul_flops(c10::kCPU, at::kFloat, 64, 2);
  EXPECT_TRUE(std::isfinite(f) && f > 1e6) << f;
}

TEST(Bench, CommandPrintsOneJsonLinePerTask) {
  const std::string dir = vlmo::test::temp_dir();
  vlmo::test::write_tiny_config(dir);
  const auto r = vlmo::test::run_cli({"bench", "--config", dir + "/tiny.json", "--task", "all", "--batch", "2", "--steps", "1",
                                      "--warmup", "0", "--matmul-size", "64", "--json", "--quiet"});
  ASSERT_EQ(r.status, 0) << r.err;
  std::istringstream lines(r.out);
  std::vector<std::string> tasks;
  for (std::string line; std::getline(lines, line);) {
    const auto j = nlohmann::json::parse(line);
    tasks.push_back(j.at("task").get<std::string>());
    for (const char* key : {"samples_per_s", "tflops", "percent_of_matmul", "peak_memory_bytes", "matmul_tflops"})
      EXPECT_TRUE(j.contains(key)) << key << " missing in " << line;
    EXPECT_GT(j.at("samples_per_s").get<double>(), 0) << line;
    EXPECT_NEAR(j.at("percent_of_matmul").get<double>(), 100 * j.at("tflops").get<double>() / j.at("matmul_tflops").get<double>(),
                1e-9)
        << line;
    EXPECT_EQ(j.at("image_size").get<int>(), 32);
    // The CPU the run saw: this process's own reading of it.
    EXPECT_EQ(j.at("cpu").at("isa").get<std::string>(), vlmo::cpu_features().widest()) << line;
    EXPECT_EQ(j.at("cpu").at("features").get<std::vector<std::string>>(), vlmo::cpu_features().features) << line;
  }
  EXPECT_EQ(tasks, vlmo::bench_tasks());
  const auto bad = vlmo::test::run_cli({"bench", "--task", "pretrain,captioning"});
  EXPECT_EQ(bad.status, 2);
  EXPECT_NE(bad.err.find("--task: unknown task \"captioning\""), std::string::npos) << bad.err;
}

TEST(Quantize, BenchAndCommandsTakeQuantizeInt8) {
  if (!vlmo::int8_supported()) GTEST_SKIP() << "this LibTorch has no quantized engine";
  const std::string dir = vlmo::test::temp_dir();
  vlmo::test::write_tiny_config(dir);
  const auto ok = vlmo::test::run_cli({"bench", "--config", dir + "/tiny.json", "--task", "embed-image", "--batch", "2",
                                       "--steps", "1", "--matmul-size", "64", "--json", "--quiet", "--quantize", "int8"});
  ASSERT_EQ(ok.status, 0) << ok.err;
  EXPECT_EQ(nlohmann::json::parse(ok.out).at("quantize"), "int8");
  const auto train = vlmo::test::run_cli(
      {"bench", "--config", dir + "/tiny.json", "--task", "vqa", "--quantize", "int8", "--matmul-size", "64", "--quiet"});
  EXPECT_EQ(train.status, 2);
  EXPECT_NE(train.err.find("int8 quantisation is for inference"), std::string::npos) << train.err;
  const auto bad = vlmo::test::run_cli(
      {"bench", "--quantize", "int4", "--matmul-size", "64", "--quiet", "--task", "embed-text", "--config", dir + "/tiny.json"});
  EXPECT_EQ(bad.status, 2);
  EXPECT_NE(bad.err.find("--quantize: expected none or int8, got \"int4\""), std::string::npos) << bad.err;
}

TEST(Precision, BenchTakesPrecisionAndCheckpointing) {
  const std::string dir = vlmo::test::temp_dir();
  vlmo::test::write_tiny_config(dir);
  const auto ok =
      vlmo::test::run_cli({"bench", "--config", dir + "/tiny.json", "--task", "pretrain", "--batch", "2", "--steps", "1",
                           "--matmul-size", "64", "--json", "--quiet", "--precision", "bf16", "--activation-checkpointing"});
  ASSERT_EQ(ok.status, 0) << ok.err;
  const auto j = nlohmann::json::parse(ok.out);
  EXPECT_EQ(j.at("precision"), "bf16");
  EXPECT_EQ(j.at("activation_checkpointing"), true);
  EXPECT_GT(j.at("samples_per_s").get<double>(), 0);
  const auto bad = vlmo::test::run_cli({"bench", "--config", dir + "/tiny.json", "--precision", "fp8", "--quiet"});
  EXPECT_EQ(bad.status, 2);
  EXPECT_NE(bad.err.find("option --precision: expected fp32, bf16 or fp16, got \"fp8\""), std::string::npos) << bad.err;
  const auto int8 = vlmo::test::run_cli({"bench", "--config", dir + "/tiny.json", "--task", "embed-image", "--quantize", "int8",
                                         "--precision", "bf16", "--matmul-size", "64", "--quiet"});
  if (vlmo::int8_supported()) {
    EXPECT_EQ(int8.status, 2);
    EXPECT_NE(int8.err.find("int8 quantisation runs in fp32"), std::string::npos) << int8.err;
  }
}

TEST(Bench, ProfileWritesAChromeTraceOfTheTimedSteps) {
  const std::string dir = vlmo::test::temp_dir();
  vlmo::test::write_tiny_config(dir);
  const auto r = vlmo::test::run_cli({"bench", "--config", dir + "/tiny.json", "--task", "embed-image", "--batch", "2", "--steps",
                                      "1", "--matmul-size", "64", "--quiet", "--profile", dir + "/trace.json"});
  ASSERT_EQ(r.status, 0) << r.err;
  const auto trace = nlohmann::json::parse(vlmo::test::read_file(dir + "/trace.json"));
  const auto& events = trace.is_object() ? trace.at("traceEvents") : trace;
  // The linear layers: LibTorch's, or oneDNN's packed weights where fp32 CPU inference takes them.
  bool saw_linear = false;
  for (const auto& e : events)
    saw_linear = saw_linear || (e.contains("name") && (e["name"] == "aten::linear" || e["name"] == "vlmo::packed_linear"));
  EXPECT_TRUE(saw_linear) << "no aten::linear or vlmo::packed_linear event in the trace";
}

// ---- the reference check ----

using namespace vlmo;
using vlmo::test::expect_error;
using vlmo::test::fixture;

TEST(ReferenceCheck, DetectsAWrongWeight) {
  namespace fs = std::filesystem;
  const std::string dir = vlmo::test::temp_dir() + "/tiny";
  fs::copy(fixture("reference/tiny-abspos"), dir);
  TensorMap w = load_safetensors(dir + "/weights.safetensors");
  // One element only: a uniform shift of a bias would be removed by the next LayerNorm.
  w["transformer.blocks.1.mlp_text.fc2.bias"][0] += 1e-2;
  fs::permissions(dir, fs::perms::owner_all, fs::perm_options::add);
  fs::remove(dir + "/weights.safetensors");
  write_safetensors(dir + "/weights.safetensors", w);
  const CheckResult r = check_reference(dir);
  EXPECT_FALSE(r.ok());
  EXPECT_GT(r.passed(), 0);
  // Malformed: no inputs.
  fs::remove(dir + "/inputs.safetensors");
  expect_error([&] { check_reference(dir); }, {"inputs.safetensors"});
  expect_error([&] { check_reference("/nonexistent"); }, {"no config.json"});
}

TEST(ReferenceCheck, CompareTensorTolerance) {
  const at::Tensor b = at::tensor({0.0, 10.0});
  EXPECT_TRUE(compare_tensor("x", at::tensor({0.99e-4, 10.0 + 10.9e-4}), b).pass);
  EXPECT_FALSE(compare_tensor("x", at::tensor({1.01e-4, 10.0}), b).pass);
  EXPECT_FALSE(compare_tensor("x", at::tensor({0.0, 10.0 + 11.1e-4}), b).pass);
  EXPECT_FALSE(compare_tensor("x", at::tensor({NAN, 10.0}), b).pass);
  EXPECT_FALSE(compare_tensor("x", at::Tensor(), b).pass);
  EXPECT_FALSE(compare_tensor("x", at::zeros({3}), b).pass);
}
