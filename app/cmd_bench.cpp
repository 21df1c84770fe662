// vlmo bench: time real steps of the model on synthetic inputs and set them against the analytic
// FLOP count and a matrix-product rate measured on the same device.
#include <ATen/Parallel.h>
#include <torch/version.h>

#include <cstdio>
#include <iostream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "cli.h"
#include "common.h"
#include "model/model_internals.h"
#include "ops/packed_linear.h"
#include "vlmo/bench.h"
#include "vlmo/cpu_features.h"
#include "vlmo/device.h"
#include "vlmo/error.h"

namespace vlmo::cli {
namespace {

std::string memory_text(int64_t bytes) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.2f GiB", static_cast<double>(bytes) / (1024.0 * 1024 * 1024));
  return buf;
}

// The CPU's extensions as one line, e.g. "avx2 fma avx512f ...".
std::string features_text() {
  std::string text;
  for (const auto& f : cpu_features().features) text += (text.empty() ? "" : " ") + f;
  return text;
}

// The CPU's peak in the precision the products run in (emulated bf16 multiplies in fp32).
PeakRate hardware_peak(bool int8, bool native_bf16) {
  return measure_cpu_peak(int8 ? "int8" : native_bf16 ? "bf16" : "fp32", at::get_num_threads());
}

int run_bench_command(const Args& a) {
  Config config = a.get("config").empty() ? Config::preset(a.get("preset")) : load_config(a.get("config"));
  if (a.get_int("image-size") > 0) config.image_size = a.get_int("image-size");
  if (a.get_int("max-text-len") > 0) config.max_text_len = a.get_int("max-text-len");
  config.validate();
  const auto tasks = parse_bench_tasks(a.get("task"));
  const c10::Device device = parse_device(a.get("device"));
  const bool int8 = quantize_int8_option(a);  // checked before the yardstick runs
  const RunPolicy policy = run_policy_from(a, device);
  const std::string matmul_name = precision_name(policy.precision);
  // bf16 products on the CPU: LibTorch's bf16 GEMM or emulated (vlmo/run_policy.h); the attention layers' batched products.
  const bool cpu = device.is_cpu(), bf16 = policy.precision == Precision::kBFloat16;
  const std::string bf16_products = bf16 && cpu ? cpu_bf16_products_name(policy.cpu_bf16) : std::string("native");
  const std::string batched = cpu ? cpu_products_name(policy.cpu_products) : std::string("aten");
  const bool json = a.get_flag("json"), quiet = a.get_flag("quiet");
  if (!quiet) announce_run_policy(policy);
  const std::string preset = a.get("config").empty() ? a.get("preset") : a.get("config");
  // The yardstick: the best of an n^3 product and the blocks' linear shapes at n rows, run as the
  // blocks run them (vlmo/bench.h).
  const int64_t n = a.get_int64("matmul-size") > 0 ? a.get_int64("matmul-size") : (device.is_cuda() ? 8192 : 2048);
  if (!quiet)
    std::cerr << "bench: measuring the " << matmul_name << " matrix-product rate (" << n << "^3 and the layers' shapes at " << n
              << " rows) on " << device.str() << "\n";
  const MatmulRate yardstick = measure_matmul_rate(policy, n, config);
  const double matmul = yardstick.flops;
  const PeakRate peak = cpu ? hardware_peak(int8, bf16 && bf16_products == "native") : PeakRate{};

  if (!json) {
    std::printf("vlmo bench: %s at %d px, text length %d, batch %lld, %lld timed steps after %lld warm-up, %s, %s%s%s, "
                "%d threads, LibTorch %s, %s attention, batched products: %s%s\n",
                preset.c_str(), config.image_size, config.max_text_len, static_cast<long long>(a.get_int64("batch")),
                static_cast<long long>(a.get_int64("steps")), static_cast<long long>(a.get_int64("warmup")), device.str().c_str(),
                matmul_name.c_str(), a.get("quantize") == "int8" ? ", int8" : "",
                a.get_flag("activation-checkpointing") ? ", activation checkpointing" : "", at::get_num_threads(), TORCH_VERSION,
                attention_path_name(policy.attention).c_str(), batched.c_str(),
                bf16_products == "emulated" ? ", bf16 products emulated in fp32 (no AVX-512)" : "");
    std::printf("CPU: %s (%s; %s)\n", cpu_features().model.c_str(), cpu_features().widest().c_str(),
                cpu_features().features.empty() ? "no extensions reported" : features_text().c_str());
    std::printf("%s matmul (best of %lld^3 and the layers' shapes: %s, as LibTorch runs at::linear): %.3f TFLOP/s\n",
                matmul_name.c_str(), static_cast<long long>(n), yardstick.shape.c_str(), matmul / 1e12);
    if (peak.flops > 0)
      std::printf("CPU peak (%s on %d threads): %.3f T%s/s\n", peak.isa.c_str(), peak.threads, peak.flops / 1e12,
                  int8 ? "OP" : "FLOP");
    std::printf("\n%-12s %10s %12s %14s %10s %10s %10s %14s\n", "task", "s/step", "samples/s", "GFLOP/sample", "TFLOP/s",
                "% matmul", "% peak", "peak memory");
    std::fflush(stdout);
  }
  for (const auto& task : tasks) {
    BenchOptions o;
    o.task = task;
    o.config = config;
    o.batch = a.get_int64("batch");
    o.steps = a.get_int64("steps");
    o.warmup = a.get_int64("warmup");
    o.policy = policy;
    o.seed = a.get_uint64("seed");
    o.quantize_int8 = int8;
    o.activation_checkpointing = a.get_flag("activation-checkpointing");
    if (!a.get("profile").empty())
      o.profile_path = tasks.size() == 1 ? a.get("profile") : a.get("profile") + "." + task + ".json";
    if (!quiet)
      o.on_step = [&](int64_t done, int64_t total, double s) {
        std::cerr << "bench: " << task << " step " << done << "/" << total << (done <= o.warmup ? " (warm-up)" : "") << ": " << s
                  << " s\n";
      };
    const auto kernels_before = attention_kernel_counts();
    const int64_t packed_before = packed_linear_calls();
    const BenchResult r = run_bench(o);
    // What ran, not what was asked: the attention layers' calls by kernel, and "fused" when a fused
    // kernel took any (with --attention fused on LibTorch 1.13 a training step runs the plain path).
    const std::map<std::string, int64_t> kernels = attention_kernel_calls_since(kernels_before);
    const std::string attention = kernels.at("cpu-inference") + kernels.at("sdpa") > 0 ? "fused" : "plain";
    const double percent = 100.0 * r.achieved_flops / matmul;
    const double percent_peak = peak.flops > 0 ? 100.0 * r.achieved_flops / peak.flops : 0;
    if (json) {
      const nlohmann::json j = {
          {"task", task},
          {"model", preset},
          {"image_size", config.image_size},
          {"max_text_len", config.max_text_len},
          {"batch", o.batch},
          {"steps", o.steps},
          {"warmup", o.warmup},
          {"device", device.str()},
          {"quantize", a.get("quantize")},
          {"precision", matmul_name},
          {"attention", attention},
          {"policy", nlohmann::json::parse(policy.json())},
          {"attention_kernels", kernels},
          {"libtorch", TORCH_VERSION},
          {"activation_checkpointing", o.activation_checkpointing},
          {"threads", at::get_num_threads()},
          {"cpu", {{"model", cpu_features().model}, {"isa", cpu_features().widest()}, {"features", cpu_features().features}}},
          {"seconds_per_step", r.seconds_per_step},
          {"step_seconds", r.step_seconds},
          {"samples_per_s", r.samples_per_s},
          {"flops_per_sample", r.flops_per_sample},
          {"tflops", r.achieved_flops / 1e12},
          {"matmul_tflops", matmul / 1e12},
          {"matmul_size", n},
          {"matmul_shape", yardstick.shape},
          {"bf16_products", bf16_products},
          {"batched_matmul", batched},
          {"percent_of_matmul", percent},
          {"peak_tflops", peak.flops / 1e12},
          {"peak_isa", peak.isa},
          {"percent_of_peak", peak.flops > 0 ? nlohmann::json(percent_peak) : nlohmann::json()},
          {"packed_linear_calls", packed_linear_calls() - packed_before},
          {"peak_memory_bytes", r.peak_memory_bytes},
          {"memory_kind", r.memory_kind}};
      std::cout << j.dump() << std::endl;
    } else {
      std::printf("%-12s %10.3f %12.3f %14.2f %10.4f %9.1f%% %9.1f%% %14s%s\n", task.c_str(), r.seconds_per_step, r.samples_per_s,
                  r.flops_per_sample / 1e9, r.achieved_flops / 1e12, percent, percent_peak,
                  memory_text(r.peak_memory_bytes).c_str(), r.memory_kind == "process_peak_rss" ? " (RSS)" : "");
      std::fflush(stdout);
    }
  }
  return 0;
}

}  // namespace

Command bench_command() {
  Command c;
  c.name = "bench";
  c.summary = "Time real steps of the model on synthetic inputs (warm-up excluded): samples/s, achieved\n"
              "TFLOP/s from the analytic FLOP count (docs/performance.md), that as a percentage of a\n"
              "matrix-product rate measured on the same device in the run's precision (fp32, or bf16 with\n"
              "--precision bf16), and peak memory (on the CPU the process's peak resident size). Tasks:\n"
              "pretrain (ITC + ITM + MLM step with AdamW), embed-image, embed-text (inference), vqa, nlvr2,\n"
              "irtr (fine-tuning steps); `all` runs every one.";
  c.usage = "vlmo bench [options]";
  c.options = {
      {"task", "pretrain", "all, or a comma-separated list of " + bench_task_names()},
      {"preset", "base", "model size: base, base_plus or large"},
      {"config", "", "a config JSON instead of --preset"},
      integer_option("image-size", "0", "image side in pixels (0: the preset's, 224)", 0, 4096),
      integer_option("max-text-len", "0", "text length in word pieces (0: the preset's, 40)", 0, 4096),
      integer_option("batch", "8", "samples per step", 1, 1 << 20),
      integer_option("steps", "3", "timed steps", 1, 1 << 20),
      integer_option("warmup", "1", "untimed steps first", 0, 1 << 20),
      integer_option("matmul-size", "0", "yardstick: square product side, layer rows (0: 2048 CPU, 8192 CUDA)", 0, 65536),
      integer_option("seed", "0", "seed of the weights and inputs", 0),
      {"device", "cpu", "cpu or cuda[:N]"},
      {"quantize", "none", "none, or int8 (embed tasks, CPU: dynamic int8 linear layers)"},
      precision_option(),
      attention_option(),
      checkpointing_option(),
      {"profile", "",
       "write a Chrome trace of the timed steps to this file (several tasks: FILE.TASK.json); profiling slows the steps"},
      {"json", "false", "one JSON line per task instead of a table", true},
      {"quiet", "false", "no progress lines on stderr", true}};
  c.run = run_bench_command;
  return c;
}

}  // namespace vlmo::cli
