// Benchmarks of the model's real work on synthetic inputs (vlmo bench): steps are timed after a
// warm-up, throughput is set against an analytic FLOP count (the one docs/performance.md uses for
// the official figures) and against a matrix-product rate measured on the same device.
#pragma once
#include <c10/core/Device.h>
#include <c10/core/ScalarType.h>

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "vlmo/config.h"
#include "vlmo/precision.h"
#include "vlmo/run_policy.h"

namespace vlmo {

// The tasks vlmo bench knows: "pretrain" (stage 3: ITC + ITM with hard negatives + MLM, forward,
// backward and AdamW), "embed-image" / "embed-text" (dual-encoder features, inference), "vqa",
// "nlvr2", "irtr" (fine-tuning steps: forward, backward, AdamW).
const std::vector<std::string>& bench_tasks();
// The same, as text for help and errors: "pretrain, embed-image, ...".
std::string bench_task_names();

// Forward-pass FLOPs (2 per multiply-add) of one sample of `task` as the official computes it,
// times 3 for training tasks (backward = 2 x forward). Per block and token the matrix products
// cost 24·C² and attention 4·N·C (N tokens of the pass); the image passes of pre-training re-run
// the VL-FFN layers (depth - vlffn_start_layer_index more blocks), every pass that embeds an
// image adds the patch projection, the MLM head is applied to every text token. With the base
// preset at 224 px this gives ~663 GFLOP per pre-training sample (docs/performance.md).
double analytic_flops_per_sample(const Config& c, const std::string& task);

// FLOP/s of an n x n x n matrix product of `dtype` on `device` (the best of `reps` after a
// warm-up), as LibTorch runs it.
double measure_matmul_flops(c10::Device device, c10::ScalarType dtype, int64_t n, int reps = 5);

// The yardstick for "percent of matmul": the best rate of the products the blocks run, in the
// run's precision and the way the blocks run them (vlmo::linear_as: bf16 emulated where the
// policy says so), over an n x n x n product and the blocks' linear shapes at n
// rows (C -> 3C, C -> 4C, 4C -> C for the config's C). One square shape can run far below the
// layers' own (LibTorch 2.6 on some CPUs: a square fp32 product at half the rate of the model's
// layers), which made percentages over 100 %.
struct MatmulRate {
  double flops = 0;   // FLOP/s of the best shape
  std::string shape;  // "MxKxN" of that shape (M rows, K inputs, N outputs)
};
// On policy.device in policy.precision.
MatmulRate measure_matmul_rate(const RunPolicy& policy, int64_t n, const Config& c, int reps = 3);
// Whether bf16 autocast pays on `device`: its bf16 matrix product (n = 1024 on the CPU, 4096 on
// CUDA) runs at least `min_ratio` times the fp32 rate (CPUs with AMX / AVX512-BF16, GPUs since
// Ampere). `ratio` (if given) receives the measured bf16 / fp32 rate. Tens of milliseconds on the CPU.
bool bf16_pays(c10::Device device, double min_ratio = 1.5, double* ratio = nullptr);

// The CPU's peak rate in a precision, measured: a multiply-add loop on the widest vectors the CPU
// has for it (fp32: AVX-512 or AVX2 FMA; "bf16": AVX-512 BF16's vdpbf16ps; "int8": VNNI's
// vpdpbusd, else AVX2's vpmaddubsw; other precisions and CPUs without these: fp32's) on `threads`
// threads at once, best of 3 (~0.1 s each). What percent_of_peak is a percentage of.
struct PeakRate {
  double flops = 0;  // FLOP/s (int8: ops/s); 0 where no kernel applies
  std::string isa;   // the instruction timed, e.g. "avx512f (vfmadd, fp32)"
  int threads = 0;
};
PeakRate measure_cpu_peak(const std::string& precision, int threads);

// --task's value: "all" (bench_tasks()) or a comma-separated list of them; throws naming the known ones.
std::vector<std::string> parse_bench_tasks(const std::string& text);

struct BenchOptions {
  std::string task = "pretrain";
  Config config;  // image_size and max_text_len as the run should use them
  int64_t batch = 8;
  int64_t steps = 3;   // timed
  int64_t warmup = 1;  // not timed
  RunPolicy policy;    // device, precision, attention path, product kernels (vlmo/run_policy.h)
  uint64_t seed = 0;
  bool quantize_int8 = false;             // embed tasks only: vlmo::quantize_int8 on the CPU
  bool activation_checkpointing = false;  // pretrain and the fine-tuning tasks
  std::string profile_path;               // non-empty: a Chrome trace (chrome://tracing, Perfetto) of the timed steps
  // Called after every step, warm-up included (done counts both): progress for long runs.
  std::function<void(int64_t done, int64_t total, double seconds)> on_step;
};

struct BenchResult {
  std::string task;
  double seconds_per_step = 0, samples_per_s = 0;
  double flops_per_sample = 0, achieved_flops = 0;  // FLOP/s
  std::vector<double> step_seconds;                 // every timed step
  int64_t peak_memory_bytes = -1;                   // CUDA: peak allocated on the device; CPU: the process's peak RSS
  std::string memory_kind;                          // "cuda_peak_allocated" or "process_peak_rss"
};

// Builds a freshly initialised model of options.config (heads the task needs), runs `warmup`
// untimed and `steps` timed steps on synthetic inputs (uniform images, random word pieces, 15 %
// masked), synchronising the device around each step. Throws vlmo::Error on a bad option.
BenchResult run_bench(const BenchOptions& options);

}  // namespace vlmo
