// vlmo bench: the analytic FLOP count against hand counts and the documented official figure,
// and real timed steps of every task on a tiny model.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <nlohmann/json.hpp>
#include <sstream>

#include "test_util.h"
#include "vlmo/bench.h"
#include "vlmo/cpu_features.h"
#include "vlmo/model.h"
#include "vlmo/safetensors.h"
#include "vlmo/tasks.h"
#include "vlmo/threads.h"

#if defined(__GLIBC__)
#include <malloc.h>
#endif

using vlmo::Config;

TEST(Bench, AnalyticFlopsMatchHandCounts) {
  // tiny_config: width 32, 2 blocks, MLP 128, 32-px images of 16-px patches (5 image tokens),
  // 16 text tokens. Per block and token: 2·(4·32² + 2·32·128) = 24576, plus attention 4·N·32.
  const Config c = vlmo::test::tiny_config();
  const double patch_embed = 2.0 * 4 * (3 * 16 * 16) * 32;                     // 196608
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
  vlmo::test::write_file(dir + "/tiny.json", R"({"embed_dim": 32, "depth": 2, "num_heads": 2, "image_size": 32,
    "vlffn_start_layer_index": 1, "max_text_len": 16})");
  const auto r = vlmo::test::run_cli({"bench", "--config", dir + "/tiny.json", "--task", "all", "--batch", "2", "--steps",
                                      "1", "--warmup", "0", "--matmul-size", "64", "--json", "--quiet"});
  ASSERT_EQ(r.status, 0) << r.err;
  std::istringstream lines(r.out);
  std::vector<std::string> tasks;
  for (std::string line; std::getline(lines, line);) {
    const auto j = nlohmann::json::parse(line);
    tasks.push_back(j.at("task").get<std::string>());
    for (const char* key : {"samples_per_s", "tflops", "percent_of_matmul", "peak_memory_bytes", "matmul_tflops"})
      EXPECT_TRUE(j.contains(key)) << key << " missing in " << line;
    EXPECT_GT(j.at("samples_per_s").get<double>(), 0) << line;
    EXPECT_NEAR(j.at("percent_of_matmul").get<double>(),
                100 * j.at("tflops").get<double>() / j.at("matmul_tflops").get<double>(), 1e-9) << line;
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

namespace {

// VLMo-Base with the ITC heads (official initialisation, no drop path), in eval mode, with the
// five PIL-preprocessed fixture photographs at 224 px and four random captions.
struct PhotoRetrieval {
  vlmo::VLMo model{nullptr};
  at::Tensor photos, ids, masks;
  PhotoRetrieval() {
    const vlmo::TensorMap tensors = vlmo::load_safetensors(vlmo::test::fixture("images/expected.safetensors"));
    std::vector<at::Tensor> images;
    for (const char* name : {"messi5.jpg@224", "ela_original.jpg@224", "chelsea.png@224", "camera.png@224", "opencv-logo.png@224"})
      images.push_back(tensors.at(name));
    photos = at::stack(images);
    Config c = Config::base();
    c.heads = {"itc"};
    c.drop_path_rate = 0;  // train mode (a test's way to switch inference-only paths off) draws nothing
    model = vlmo::VLMo(c);
    vlmo::init_weights(model, 3);
    model->eval();
    ids = at::randint(1000, 30000, {4, c.max_text_len}, at::kLong);
    masks = at::ones({4, c.max_text_len}, at::kLong);
  }
  at::Tensor images() { return vlmo::encode_images(model, photos); }
  at::Tensor texts() { return vlmo::encode_texts(model, ids, masks); }
};

// A reduced-precision mode against fp32 features of the same model: cosine >= 0.99 for photos and
// captions (features are unit vectors), not bit-equal (the mode really ran), and the same
// nearest photo per caption (retrieval order is what matters to a user).
void expect_close_to_fp32(const char* mode, const at::Tensor& img32, const at::Tensor& txt32, const at::Tensor& img,
                          const at::Tensor& txt) {
  const at::Tensor cos_img = (img32 * img).sum(1), cos_txt = (txt32 * txt).sum(1);
  std::printf("%s vs fp32 cosine: photos min %.5f mean %.5f, captions min %.5f\n", mode, cos_img.min().item<double>(),
              cos_img.mean().item<double>(), cos_txt.min().item<double>());
  EXPECT_GE(cos_img.min().item<double>(), 0.99) << mode << " " << cos_img;
  EXPECT_GE(cos_txt.min().item<double>(), 0.99) << mode << " " << cos_txt;
  EXPECT_FALSE(at::equal(img32, img)) << mode;
  EXPECT_TRUE(at::equal(at::matmul(txt32, img32.t()).argmax(1), at::matmul(txt, img.t()).argmax(1))) << mode;
}

}  // namespace

// --quantize int8: the dual encoder's features on real photographs (the PIL-preprocessed fixture
// tensors) and on captions stay within cosine 0.99 of the fp32 features of the same model
// (VLMo-Base shape, official initialisation); a quantised model refuses training mode.
TEST(Quantize, Int8DualEncoderFeaturesMatchFp32OnRealPhotos) {
  if (!vlmo::int8_supported()) GTEST_SKIP() << "this LibTorch has no quantized engine";
  PhotoRetrieval r;
  const at::Tensor img32 = r.images(), txt32 = r.texts();
  vlmo::quantize_int8(r.model);
  expect_close_to_fp32("int8", img32, txt32, r.images(), r.texts());
  r.model->train();
  vlmo::test::expect_error([&] { r.model->infer_image_ft(r.photos); }, {"int8-quantised", "inference only"});
}

TEST(Quantize, BenchAndCommandsTakeQuantizeInt8) {
  if (!vlmo::int8_supported()) GTEST_SKIP() << "this LibTorch has no quantized engine";
  const std::string dir = vlmo::test::temp_dir();
  vlmo::test::write_file(dir + "/tiny.json", R"({"embed_dim": 32, "depth": 2, "num_heads": 2, "image_size": 32,
    "vlffn_start_layer_index": 1, "max_text_len": 16})");
  const auto ok = vlmo::test::run_cli({"bench", "--config", dir + "/tiny.json", "--task", "embed-image", "--batch", "2",
                                       "--steps", "1", "--matmul-size", "64", "--json", "--quiet", "--quantize", "int8"});
  ASSERT_EQ(ok.status, 0) << ok.err;
  EXPECT_EQ(nlohmann::json::parse(ok.out).at("quantize"), "int8");
  const auto train = vlmo::test::run_cli({"bench", "--config", dir + "/tiny.json", "--task", "vqa", "--quantize", "int8",
                                          "--matmul-size", "64", "--quiet"});
  EXPECT_EQ(train.status, 2);
  EXPECT_NE(train.err.find("int8 quantisation is for inference"), std::string::npos) << train.err;
  const auto bad = vlmo::test::run_cli({"bench", "--quantize", "int4", "--matmul-size", "64", "--quiet", "--task", "embed-text",
                                        "--config", dir + "/tiny.json"});
  EXPECT_EQ(bad.status, 2);
  EXPECT_NE(bad.err.find("--quantize: expected none or int8, got \"int4\""), std::string::npos) << bad.err;
}

// bf16 autocast for the dual encoder on real photos: close to fp32 (cosine >= 0.99, the same
// nearest photo per caption), and the low-precision weight copies kept between inference passes
// give exactly what autocast's own per-pass casts give, also after a weight changes.
TEST(Precision, Bf16DualEncoderFeaturesMatchFp32OnRealPhotos) {
  PhotoRetrieval r;
  const at::Tensor img32 = r.images(), txt32 = r.texts();
  r.model->set_precision(vlmo::Precision::kBFloat16);
  const at::Tensor img16 = r.images();
  expect_close_to_fp32("bf16", img32, txt32, img16, r.texts());
  // Kept copies (eval) against autocast's casts (train mode, no autograd): the same numbers.
  auto without_kept_copies = [&] {
    r.model->train();
    const at::Tensor out = r.images();
    r.model->eval();
    return out;
  };
  EXPECT_TRUE(at::equal(img16, without_kept_copies()));
  {
    torch::NoGradGuard g;
    r.model->transformer->block_list[0]->mlp_imag->fc1->weight.mul_(1.5);
    r.model->transformer->block_list[0]->attn->qkv->weight.mul_(0.5);
  }
  const at::Tensor changed = r.images();
  EXPECT_FALSE(at::equal(changed, img16));  // the copies followed the weights
  EXPECT_TRUE(at::equal(changed, without_kept_copies()));
}

TEST(Precision, BenchTakesPrecisionAndCheckpointing) {
  const std::string dir = vlmo::test::temp_dir();
  vlmo::test::write_file(dir + "/tiny.json", R"({"embed_dim": 32, "depth": 2, "num_heads": 2, "image_size": 32,
    "vlffn_start_layer_index": 1, "max_text_len": 16})");
  const auto ok = vlmo::test::run_cli({"bench", "--config", dir + "/tiny.json", "--task", "pretrain", "--batch", "2",
                                       "--steps", "1", "--matmul-size", "64", "--json", "--quiet", "--precision", "bf16",
                                       "--activation-checkpointing"});
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
  vlmo::test::write_file(dir + "/tiny.json", R"({"embed_dim": 32, "depth": 2, "num_heads": 2, "image_size": 32,
    "vlffn_start_layer_index": 1, "max_text_len": 16})");
  const auto r = vlmo::test::run_cli({"bench", "--config", dir + "/tiny.json", "--task", "embed-image", "--batch", "2",
                                      "--steps", "1", "--matmul-size", "64", "--quiet", "--profile", dir + "/trace.json"});
  ASSERT_EQ(r.status, 0) << r.err;
  const auto trace = nlohmann::json::parse(vlmo::test::read_file(dir + "/trace.json"));
  const auto& events = trace.is_object() ? trace.at("traceEvents") : trace;
  bool saw_linear = false;
  for (const auto& e : events) saw_linear = saw_linear || (e.contains("name") && e["name"] == "aten::linear");
  EXPECT_TRUE(saw_linear) << "no aten::linear event in the trace";
}

#if defined(__SANITIZE_ADDRESS__)
#define VLMO_TEST_OWN_MALLOC 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(memory_sanitizer) || __has_feature(thread_sanitizer)
#define VLMO_TEST_OWN_MALLOC 1
#endif
#endif

// keep_freed_host_memory (called by the vlmo program at start): a block far above glibc's mmap
// threshold comes from the heap, and freeing it keeps it there for the next step.
TEST(Allocator, FreedHostMemoryStaysInTheProcessForReuse) {
#if !defined(__GLIBC__) || defined(VLMO_TEST_OWN_MALLOC)
  GTEST_SKIP() << "not glibc's malloc";
#else
  for (const char* v : {"VLMO_SYSTEM_MALLOC", "MALLOC_MMAP_MAX_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES"})
    if (std::getenv(v)) GTEST_SKIP() << v << " is set: the user's malloc settings win";
  ASSERT_TRUE(vlmo::keep_freed_host_memory());
  const size_t n = size_t{96} << 20;
  const struct mallinfo2 before = mallinfo2();
  auto* p = static_cast<char*>(std::malloc(n));
  ASSERT_NE(p, nullptr);
  std::memset(p, 1, n);
  static char* volatile escape = nullptr;  // the block must really exist: no malloc / free elision
  escape = p;
  EXPECT_EQ(escape[n / 2], 1);
  const struct mallinfo2 during = mallinfo2();
  EXPECT_EQ(during.hblkhd, before.hblkhd) << "the block was mapped on its own (mmap), not taken from the heap";
  std::free(p);
  const struct mallinfo2 after = mallinfo2();
  EXPECT_EQ(after.arena, during.arena) << "the heap was trimmed: the freed block went back to the kernel";
  EXPECT_GE(after.fordblks, n);
#endif
}
