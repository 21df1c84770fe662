#include "vlmo/bench.h"

#include <ATen/ATen.h>
#include <sys/resource.h>
#include <torch/csrc/autograd/profiler_legacy.h>
#include <torch/cuda.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <sstream>

#include "vlmo/error.h"
#include "vlmo/model.h"
#include "vlmo/ops.h"
#include "vlmo/pretrain.h"
#include "vlmo/tasks.h"
#include "vlmo/train.h"

#ifdef VLMO_WITH_CUDA
#include <c10/cuda/CUDACachingAllocator.h>
#endif

namespace vlmo {

const std::vector<std::string>& bench_tasks() {
  static const std::vector<std::string> kTasks = {"pretrain", "embed-image", "embed-text", "vqa", "nlvr2", "irtr"};
  return kTasks;
}

std::string bench_task_names() {
  std::string names;
  for (const auto& t : bench_tasks()) names += (names.empty() ? "" : ", ") + t;
  return names;
}

std::vector<std::string> parse_bench_tasks(const std::string& text) {
  if (text == "all") return bench_tasks();
  std::vector<std::string> out;
  std::stringstream in(text);
  for (std::string t; std::getline(in, t, ',');) {
    if (std::find(bench_tasks().begin(), bench_tasks().end(), t) == bench_tasks().end())
      throw Error(cat("--task: unknown task \"", t, "\" (expected all, or a comma-separated list of ", bench_task_names(), ")"));
    out.push_back(t);
  }
  if (out.empty()) throw Error("--task: give at least one task");
  return out;
}

namespace {

bool is_training(const std::string& task) { return task != "embed-image" && task != "embed-text"; }

// Forward FLOPs of `blocks` transformer blocks over a sequence of n tokens.
double blocks_flops(const Config& c, int64_t blocks, int64_t n) {
  const double C = c.embed_dim, N = static_cast<double>(n);
  const double per_token = 2.0 * (4 * C * C + 2 * C * c.mlp_hidden()) + 4 * N * C;  // 24·C² at mlp_ratio 4
  return static_cast<double>(blocks) * N * per_token;
}

double patch_embed_flops(const Config& c) { return 2.0 * c.num_patches() * (3.0 * c.patch_size * c.patch_size) * c.embed_dim; }

void sync(c10::Device device) {
  if (device.is_cuda()) torch::cuda::synchronize(device.index() < 0 ? -1 : device.index());
}

int64_t peak_rss_bytes() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return static_cast<int64_t>(u.ru_maxrss) * 1024;  // Linux: kilobytes
}

#ifdef VLMO_WITH_CUDA
void reset_cuda_peak(c10::Device d) { c10::cuda::CUDACachingAllocator::resetPeakStats(d.index() < 0 ? 0 : d.index()); }
int64_t cuda_peak_bytes(c10::Device d) {
  const auto stats = c10::cuda::CUDACachingAllocator::getDeviceStats(d.index() < 0 ? 0 : d.index());
  // Index 0 is StatType::AGGREGATE (every pool); the enum moved namespaces across 2.x releases.
  return stats.allocated_bytes[0].peak;
}
#endif

// Synthetic inputs on the CPU (a seeded generator: the same numbers on every device), moved once.
Batch synthetic_batch(const Config& c, const std::string& task, int64_t B, uint64_t seed, c10::Device device) {
  at::Generator gen = at::detail::createCPUGenerator(seed);
  const int64_t L = c.max_text_len, S = c.image_size;
  auto image = [&] { return at::rand({B, 3, S, S}, gen) * 2 - 1; };
  Batch b;
  // Word ids past BERT's special and unused entries, and its [CLS] / [SEP] / [MASK]; a small
  // vocabulary (the demo's, in BERT's order: [PAD] [UNK] [CLS] [SEP] [MASK] first) its own.
  const bool bert_like = c.vocab_size > 1000;
  if (c.vocab_size < 6) throw Error(cat("bench: a vocabulary of ", c.vocab_size, " entries is too small (>= 6)"));
  const int64_t cls = bert_like ? 101 : 2, sep = bert_like ? 102 : 3, mask = bert_like ? 103 : 4;
  b.text_ids = at::randint(bert_like ? 1000 : 5, c.vocab_size, {B, L}, gen, at::kLong);
  b.text_ids.select(1, 0).fill_(cls);
  b.text_ids.select(1, L - 1).fill_(sep);
  b.text_masks = at::ones({B, L}, at::kLong);
  if (task == "pretrain") {
    const at::Tensor masked = at::rand({B, L}, gen).lt(0.15);
    masked.select(1, 0).fill_(false);
    masked.select(1, L - 1).fill_(false);
    b.text_ids_mlm = b.text_ids.masked_fill(masked, mask);
    b.text_labels_mlm = b.text_ids.masked_fill(masked.logical_not(), -100);
  }
  if (task == "nlvr2") {
    b.image_0 = image();
    b.image_1 = image();
    b.nlvr2_labels = at::randint(0, 2, {B}, gen, at::kLong);
  } else if (task != "embed-text") {
    b.image = image();
  }
  if (task == "vqa") b.vqa_targets = at::rand({B, c.vqav2_label_size}, gen).lt(3.0 / c.vqav2_label_size).to(at::kFloat);
  return to_device(b, device);
}

}  // namespace

namespace {
void check_task(const std::string& task) {
  const auto& known = bench_tasks();
  if (std::find(known.begin(), known.end(), task) == known.end())
    throw Error(cat("unknown bench task \"", task, "\" (known: pretrain, embed-image, embed-text, vqa, nlvr2, irtr)"));
}
}  // namespace

double analytic_flops_per_sample(const Config& c, const std::string& task) {
  check_task(task);
  const int64_t L = c.depth, vl_rerun = std::max(0, c.depth - c.vlffn_start_layer_index);
  const int64_t Ni = c.image_tokens(), Nt = c.max_text_len, Nf = c.fusion_tokens();
  const double pe = patch_embed_flops(c), C = c.embed_dim;
  const double fusion = blocks_flops(c, L, Nf) + pe;
  if (task == "pretrain") {
    const double image = blocks_flops(c, L + vl_rerun, Ni) + pe;
    const double text = blocks_flops(c, L + vl_rerun, Nt);
    const double mlm_head = static_cast<double>(Nt) * (2 * C * C + 2 * C * c.vocab_size);
    return 3 * (image + text + 4 * fusion + mlm_head);
  }
  if (task == "embed-image") return blocks_flops(c, L, Ni) + pe;
  if (task == "vqa") return 3 * (fusion + 2 * C * C + 2 * C * 2 * C + 2 * 2 * C * c.vqav2_label_size);
  if (task == "nlvr2") return 3 * (2 * fusion + 2 * 2 * C * 2 * C);
  if (task == "irtr") return 3 * (blocks_flops(c, L, Ni) + pe + blocks_flops(c, L, Nt));
  return blocks_flops(c, L, Nt);  // embed-text
}

double measure_matmul_flops(c10::Device device, c10::ScalarType dtype, int64_t n, int reps) {
  at::NoGradGuard no_grad;
  const auto opts = at::TensorOptions().dtype(dtype).device(device);
  const at::Tensor a = at::randn({n, n}, opts), b = at::randn({n, n}, opts);
  at::Tensor c = at::matmul(a, b);  // warm-up
  sync(device);
  double best = 1e30;
  for (int r = 0; r < std::max(1, reps); ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    at::matmul_out(c, a, b);
    sync(device);
    best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  return 2.0 * static_cast<double>(n) * n * n / best;
}

MatmulRate measure_matmul_rate(const RunPolicy& policy, int64_t n, const Config& c, int reps) {
  const c10::Device device = policy.device;
  const Precision precision = policy.precision;
  at::NoGradGuard no_grad;
  const int64_t C = c.embed_dim, H = c.mlp_hidden();
  const std::vector<std::array<int64_t, 3>> shapes = {{n, n, n}, {n, C, 3 * C}, {n, C, H}, {n, H, C}};
  const auto opts = at::TensorOptions().dtype(precision_dtype(precision)).device(device);
  AutocastGuard autocast(device.type(), precision);
  MatmulRate best;
  for (const auto& [m, k, out] : shapes) {
    const at::Tensor x = at::randn({m, k}, opts), w = at::randn({out, k}, opts);
    (void)linear_as(policy, x, w, at::Tensor());  // warm-up
    sync(device);
    double seconds = 1e30;
    for (int r = 0; r < std::max(1, reps); ++r) {
      const auto t0 = std::chrono::steady_clock::now();
      (void)linear_as(policy, x, w, at::Tensor());
      sync(device);
      seconds = std::min(seconds, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    }
    const double flops = 2.0 * static_cast<double>(m) * k * out / seconds;
    if (flops > best.flops) best = {flops, cat(m, "x", k, "x", out)};
  }
  return best;
}

bool bf16_pays(c10::Device device, double min_ratio, double* ratio) {
  const int64_t n = device.is_cuda() ? 4096 : 1024;  // (below ~768 oneDNN bf16 is no faster on the CPU)
  double r = 0;
  try {
    r = measure_matmul_flops(device, at::kBFloat16, n, 3) / measure_matmul_flops(device, at::kFloat, n, 3);
  } catch (const std::exception&) {
    r = 0;  // no bf16 matrix product here
  }
  if (ratio) *ratio = r;
  return r >= min_ratio;
}

BenchResult run_bench(const BenchOptions& o) {
  check_task(o.task);
  if (o.batch < 1) throw Error(cat("batch: must be at least 1, got ", o.batch));
  if (o.task == "pretrain" && o.batch < 2) throw Error("batch: pre-training needs at least 2 samples (hard negatives)");
  if (o.steps < 1) throw Error(cat("steps: must be at least 1, got ", o.steps));
  Config c = o.config;
  if (o.task == "nlvr2") c.num_token_types = 3;
  c.heads = {"itc", "itm", "mlm"};
  if (o.task == "vqa") c.heads = {"vqa"};
  if (o.task == "nlvr2") c.heads = {"nlvr2"};
  c.validate();

  at::manual_seed(o.seed);
  VLMo model(c);
  init_weights(model, o.seed);
  model->to(o.policy.device);
  model->set_run_policy(o.policy);
  model->set_activation_checkpointing(o.activation_checkpointing);
  const bool training = is_training(o.task);
  model->train(training);
  if (o.quantize_int8) {
    if (training)
      throw Error(cat("int8 quantisation is for inference: task ", o.task, " trains (use embed-image or embed-text)"));
    if (o.policy.precision != Precision::kFloat32) throw Error("int8 quantisation runs in fp32 (give --precision fp32)");
    quantize_int8(model);
  }
  if (o.task == "pretrain") set_trainable_for_stage(model, Stage::kVL);
  std::unique_ptr<AdamW> opt;
  if (training) opt = std::make_unique<AdamW>(*model);
  const Batch batch = synthetic_batch(c, o.task, o.batch, o.seed + 1, o.policy.device);

  auto step = [&] {
    if (!training) {
      at::NoGradGuard no_grad;
      if (o.task == "embed-image") encode_images(model, batch.image, o.batch);
      else encode_texts(model, batch.text_ids, batch.text_masks, o.batch);
      return;
    }
    const Outputs out = o.task == "pretrain" ? vl_objective(model, batch)
                        : o.task == "vqa"    ? vqa_objective(model, batch)
                        : o.task == "nlvr2"  ? nlvr2_objective(model, batch)
                                             : irtr_objective(model, batch);
    at::Tensor loss;
    for (const auto& [k, v] : out)
      if (k.size() >= 4 && k.compare(k.size() - 4, 4, "loss") == 0) loss = loss.defined() ? loss + v : v;
    opt->zero_grad();
    loss.backward();
    opt->step(1e-5);
  };

  BenchResult r;
  r.task = o.task;
  const int64_t total_steps = o.warmup + o.steps;
  for (int64_t i = 0; i < o.warmup; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    step();
    sync(o.policy.device);
    if (o.on_step) o.on_step(i + 1, total_steps, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
#ifdef VLMO_WITH_CUDA
  if (o.policy.device.is_cuda()) reset_cuda_peak(o.policy.device);
#endif
  std::unique_ptr<torch::autograd::profiler::RecordProfile> profile;
  if (!o.profile_path.empty()) profile = std::make_unique<torch::autograd::profiler::RecordProfile>(o.profile_path);
  for (int64_t i = 0; i < o.steps; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    step();
    sync(o.policy.device);
    r.step_seconds.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    if (o.on_step) o.on_step(o.warmup + i + 1, total_steps, r.step_seconds.back());
  }
  profile.reset();  // writes the trace
  double total = 0;
  for (double s : r.step_seconds) total += s;
  r.seconds_per_step = total / static_cast<double>(o.steps);
  r.samples_per_s = static_cast<double>(o.batch) / r.seconds_per_step;
  r.flops_per_sample = analytic_flops_per_sample(c, o.task);
  r.achieved_flops = r.flops_per_sample * r.samples_per_s;
#ifdef VLMO_WITH_CUDA
  if (o.policy.device.is_cuda()) {
    r.peak_memory_bytes = cuda_peak_bytes(o.policy.device);
    r.memory_kind = "cuda_peak_allocated";
  }
#endif
  if (r.peak_memory_bytes < 0) {
    r.peak_memory_bytes = peak_rss_bytes();
    r.memory_kind = "process_peak_rss";
  }
  return r;
}

}  // namespace vlmo
