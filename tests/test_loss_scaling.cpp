// Dynamic loss scaling (fp16 training): the scaler's schedule, a skipped overflow step, the state in
// the metrics and the checkpoint, exact resumption, and unscaling that gives the unscaled update.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <fstream>
#include <nlohmann/json.hpp>

#include "test_util.h"
#include "vlmo/checkpoint.h"
#include "vlmo/precision.h"
#include "vlmo/pretrain.h"
#include "vlmo/safetensors.h"
#include "vlmo/train.h"

using namespace vlmo;

namespace {

// Random image-text batches, a pure function of the index (so resumption sees the same data).
Batch random_batch(const Config& c, int64_t index) {
  at::Generator gen = at::detail::createCPUGenerator(1000 + static_cast<uint64_t>(index));
  const int64_t B = 4, L = c.max_text_len;
  Batch b;
  b.text_ids = at::randint(5, c.vocab_size, {B, L}, gen, at::kLong);
  b.text_masks = at::ones({B, L}, at::kLong);
  b.text_masks.narrow(1, L - 3, 3).zero_();
  const at::Tensor masked = at::rand({B, L}, gen).lt(0.3).logical_and(b.text_masks.to(at::kBool));
  b.text_ids_mlm = b.text_ids.masked_fill(masked, 4);
  b.text_labels_mlm = b.text_ids.masked_fill(masked.logical_not(), -100);
  b.image = at::rand({B, 3, c.image_size, c.image_size}, gen) * 2 - 1;
  return b;
}

Config scaling_config() {
  return test::tiny_config({"mlm", "itm", "itc"}, [](Config& c) { c.vocab_size = 64; });
}

VLMo fresh_model(Precision p) {
  at::manual_seed(3);
  VLMo m(scaling_config());
  init_weights(m, 3);
  m->set_precision(p);
  return m;
}

bool fp16_runs_here() {
  try {
    check_precision_supported(Precision::kFloat16, c10::DeviceType::CPU);
    return true;
  } catch (const Error&) {
    return false;
  }
}

}  // namespace

// A run of 6 steps at initial scale 1024, growing every 2 good steps, with an overflow injected
// into the third step's gradient. By hand: steps 1-2 at 1024 (then 2048), step 3 at 2048
// overflows (skipped, back to 1024), steps 4-5 at 1024 (then 2048), step 6 at 2048.
// fp16 autocast where this LibTorch has it on the CPU (>= 2.4), else fp32 with scaling forced on:
// the scaler's bookkeeping is the same.
TEST(LossScaling, OverflowSkipsTheStepHalvesTheScaleAndResumesExactly) {
  const Precision precision = fp16_runs_here() ? Precision::kFloat16 : Precision::kFloat32;
  SCOPED_TRACE(precision_name(precision));
  const std::string dir = test::temp_dir();
  const Config c = scaling_config();
  const BatchFn batches = [c](int64_t i) { return random_batch(c, i); };
  TrainOptions t;
  t.max_steps = 6;
  t.warmup_steps = 1;
  t.lr = 1e-3;
  t.batch_size = 4;
  t.progress = false;
  t.loss_scaling = true;
  t.loss_scaler.scale = 1024;
  t.loss_scaler.growth_interval = 2;
  t.after_backward = [](int64_t step, VLMo& m) {
    if (step == 2) m->transformer->norm->weight.mutable_grad().view(-1)[0] = std::numeric_limits<float>::infinity();
  };
  t.checkpoint_path = dir + "/full.safetensors";
  t.metrics_path = dir + "/full.jsonl";
  VLMo a = fresh_model(precision);
  at::manual_seed(5);
  const TrainResult full = train(a, vl_objective, batches, t);

  ASSERT_EQ(full.history.size(), 6u);
  EXPECT_EQ(full.overflow_steps, 1);
  EXPECT_EQ(full.bad_steps, 0);
  EXPECT_EQ(full.loss_scaler.scale, 2048);
  EXPECT_EQ(full.loss_scaler.good_steps, 1);
  const std::vector<double> want = {1024, 1024, 2048, 1024, 1024, 2048};
  std::ifstream metrics(t.metrics_path);
  std::string line;
  for (size_t i = 0; i < want.size(); ++i) {
    ASSERT_TRUE(std::getline(metrics, line)) << "metrics line " << i + 1;
    const auto j = nlohmann::json::parse(line);
    EXPECT_EQ(j.at("loss_scale").get<double>(), want[i]) << "step " << i + 1;
    EXPECT_EQ(j.contains("skipped_step"), i == 2) << "step " << i + 1;
    if (i == 2) EXPECT_NE(j.at("skipped_step").get<std::string>().find("overflow: loss scale 2048 -> 1024"), std::string::npos);
  }
  const SafetensorsFile ck = read_safetensors(t.checkpoint_path);
  EXPECT_EQ(ck.metadata.at("loss_scale"), "2048");
  EXPECT_EQ(ck.metadata.at("loss_scale_good_steps"), "1");
  EXPECT_EQ(ck.metadata.at("optimizer_steps"), "5");  // the overflow step made no update
  EXPECT_EQ(ck.metadata.at("overflow_steps"), "1");

  // Stopped right after the overflow step, resumed in a fresh process state: same steps 4-6.
  t.checkpoint_path = dir + "/part.safetensors";
  t.metrics_path = dir + "/part.jsonl";
  t.stop_after = 3;
  VLMo b = fresh_model(precision);
  at::manual_seed(5);
  train(b, vl_objective, batches, t);
  EXPECT_EQ(read_safetensors(t.checkpoint_path).metadata.at("loss_scale"), "1024");
  t.stop_after = 0;
  VLMo resumed = fresh_model(precision);
  at::manual_seed(77);
  const TrainResult rest = train(resumed, vl_objective, batches, t, t.checkpoint_path);
  ASSERT_EQ(rest.history.size(), 3u);
  for (size_t i = 0; i < 3; ++i)
    for (const char* k : {"loss", "itc_loss", "itm_loss", "mlm_loss", "lr"})
      EXPECT_EQ(rest.history[i].at(k), full.history[i + 3].at(k)) << "step " << i + 4 << " " << k;
  EXPECT_EQ(rest.loss_scaler.scale, full.loss_scaler.scale);
  EXPECT_EQ(rest.loss_scaler.good_steps, full.loss_scaler.good_steps);
  const TensorMap wa = read_weights(dir + "/full.safetensors"), wb = read_weights(dir + "/part.safetensors");
  for (const auto& [k, v] : wa) EXPECT_TRUE(at::equal(v, wb.at(k))) << k;
}

// In fp32, scaling by a power of two and unscaling is exact: the same weights after the same
// steps as a run without scaling (every backward operation is linear in the incoming gradient).
TEST(LossScaling, UnscaledGradientsGiveTheUnscaledUpdateExactly) {
  const Config c = scaling_config();
  const BatchFn batches = [c](int64_t i) { return random_batch(c, i); };
  auto run = [&](bool scaling) {
    TrainOptions t;
    t.max_steps = 3;
    t.warmup_steps = 1;
    t.lr = 1e-3;
    t.batch_size = 4;
    t.accumulate = 2;
    t.progress = false;
    t.loss_scaling = scaling;
    t.loss_scaler.scale = 4096;
    VLMo m = fresh_model(Precision::kFloat32);
    at::manual_seed(5);
    const TrainResult r = train(m, vl_objective, batches, t);
    EXPECT_EQ(r.overflow_steps, 0);
    return m;
  };
  VLMo plain = run(false), scaled = run(true);
  const auto pa = plain->named_parameters(), pb = scaled->named_parameters();
  for (const auto& p : pa) EXPECT_TRUE(at::equal(p.value(), pb[p.key()])) << p.key();
}

// Without an explicit choice, scaling follows the model's precision: on for fp16 only.
TEST(LossScaling, OnByDefaultForFp16Only) {
  const Config c = scaling_config();
  const BatchFn batches = [c](int64_t i) { return random_batch(c, i); };
  TrainOptions t;
  t.max_steps = 1;
  t.warmup_steps = 0;
  t.batch_size = 4;
  t.progress = false;
  t.metrics_path = test::temp_dir() + "/m.jsonl";
  VLMo m = fresh_model(Precision::kFloat32);
  train(m, vl_objective, batches, t);
  std::ifstream in(t.metrics_path);
  std::string line;
  ASSERT_TRUE(std::getline(in, line));
  EXPECT_FALSE(nlohmann::json::parse(line).contains("loss_scale"));
  if (!fp16_runs_here()) GTEST_SKIP() << "fp16 autocast on the CPU needs LibTorch >= 2.4";
  VLMo h = fresh_model(Precision::kFloat16);
  const TrainResult r = train(h, vl_objective, batches, t);
  std::ifstream in2(t.metrics_path);
  ASSERT_TRUE(std::getline(in2, line));
  EXPECT_EQ(nlohmann::json::parse(line).at("loss_scale").get<double>(), 65536.0);
  EXPECT_TRUE(std::isfinite(r.history.at(0).at("loss")));
}
