#include "vlmo/precision.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/autocast_mode.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/version.h>

#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <cstring>

#include "vlmo/batched_matmul.h"
#include "vlmo/error.h"

// LibTorch 2.4 replaced the per-backend autocast switches (is_cpu_enabled, set_autocast_gpu_dtype,
// ...) by functions that take the device type; the old ones are deprecated there.
#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 4)
#define VLMO_AUTOCAST_BY_DEVICE_TYPE 1
#else
#define VLMO_AUTOCAST_BY_DEVICE_TYPE 0
#endif

namespace vlmo {

Precision parse_precision(const std::string& name) {
  if (name == "fp32" || name == "float32") return Precision::kFloat32;
  if (name == "bf16" || name == "bfloat16") return Precision::kBFloat16;
  if (name == "fp16" || name == "float16") return Precision::kFloat16;
  throw Error(cat("precision \"", name, "\": expected fp32, bf16 or fp16"));
}

std::string precision_name(Precision p) {
  return p == Precision::kBFloat16 ? "bf16" : p == Precision::kFloat16 ? "fp16" : "fp32";
}

at::ScalarType precision_dtype(Precision p) {
  return p == Precision::kBFloat16 ? at::kBFloat16 : p == Precision::kFloat16 ? at::kHalf : at::kFloat;
}

void check_precision_supported(Precision p, c10::DeviceType t) {
#if !VLMO_AUTOCAST_BY_DEVICE_TYPE
  // Before 2.4 CPU autocast takes bfloat16 only (LibTorch 1.13 refuses float16 outright).
  if (p == Precision::kFloat16 && t == c10::DeviceType::CPU)
    throw Error(cat("precision fp16 on the CPU needs LibTorch >= 2.4 (this is ", TORCH_VERSION,
                    "); use bf16 or fp32 on the CPU, fp16 on a GPU"));
#endif
}

namespace {
// Autocast exists for the CPU and CUDA here; other device types run in fp32.
bool supported(c10::DeviceType t) { return t == c10::DeviceType::CPU || t == c10::DeviceType::CUDA; }

void set_state(c10::DeviceType t, bool enabled, at::ScalarType dtype) {
#if VLMO_AUTOCAST_BY_DEVICE_TYPE
  at::autocast::set_autocast_enabled(t, enabled);
  at::autocast::set_autocast_dtype(t, dtype);
#else
  if (t == c10::DeviceType::CPU) {
    at::autocast::set_cpu_enabled(enabled);
    at::autocast::set_autocast_cpu_dtype(dtype);
  } else {
    at::autocast::set_enabled(enabled);
    at::autocast::set_autocast_gpu_dtype(dtype);
  }
#endif
}
}  // namespace

bool autocast_enabled(c10::DeviceType t) {
  if (!supported(t)) return false;
#if VLMO_AUTOCAST_BY_DEVICE_TYPE
  return at::autocast::is_autocast_enabled(t);
#else
  return t == c10::DeviceType::CPU ? at::autocast::is_cpu_enabled() : at::autocast::is_enabled();
#endif
}

at::ScalarType autocast_dtype(c10::DeviceType t) {
  if (!supported(t)) return at::kFloat;
#if VLMO_AUTOCAST_BY_DEVICE_TYPE
  return at::autocast::get_autocast_dtype(t);
#else
  return t == c10::DeviceType::CPU ? at::autocast::get_autocast_cpu_dtype() : at::autocast::get_autocast_gpu_dtype();
#endif
}

AutocastGuard::AutocastGuard(c10::DeviceType t, Precision precision)
    : type_(t), previous_enabled_(autocast_enabled(t)), previous_dtype_(autocast_dtype(t)) {
  if (!supported(t)) return;
  check_precision_supported(precision, t);
  at::autocast::increment_nesting();
  const bool reduced = precision != Precision::kFloat32;
  set_state(t, reduced, reduced ? precision_dtype(precision) : previous_dtype_);
}

AutocastGuard::~AutocastGuard() {
  if (!supported(type_)) return;
  set_state(type_, previous_enabled_, previous_dtype_);
  if (at::autocast::decrement_nesting() == 0) at::autocast::clear_cache();
}

namespace {
CpuBf16Products detect_cpu_bf16_products() {
  if (const char* env = std::getenv("VLMO_CPU_BF16")) {
    if (std::strcmp(env, "native") == 0) return CpuBf16Products::kNative;
    if (std::strcmp(env, "emulated") == 0) return CpuBf16Products::kEmulated;
    throw Error(cat("environment variable VLMO_CPU_BF16=\"", env, "\": expected native or emulated"));
  }
#if defined(__x86_64__) || defined(__i386__)
  // oneDNN's condition for its bf16 GEMM (LibTorch's mkldnn_bf16_device_check).
  __builtin_cpu_init();
  const bool avx512 = __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
                      __builtin_cpu_supports("avx512dq");
  return avx512 ? CpuBf16Products::kNative : CpuBf16Products::kEmulated;
#else
  return CpuBf16Products::kNative;
#endif
}

// Detected (or read from the environment) on first use; set_cpu_bf16_products replaces it.
std::atomic<CpuBf16Products>& cpu_bf16_choice() {
  static std::atomic<CpuBf16Products> choice{detect_cpu_bf16_products()};
  return choice;
}
}  // namespace

CpuBf16Products cpu_bf16_products() { return cpu_bf16_choice().load(); }

void set_cpu_bf16_products(CpuBf16Products mode) { cpu_bf16_choice().store(mode); }

std::string cpu_bf16_products_name() {
  return cpu_bf16_products() == CpuBf16Products::kEmulated ? "emulated" : "native";
}

bool bf16_emulated(c10::DeviceType t) {
  return t == c10::DeviceType::CPU && autocast_enabled(t) && autocast_dtype(t) == at::kBFloat16 &&
         cpu_bf16_products() == CpuBf16Products::kEmulated;
}

namespace {
// fp32 -> the nearest bf16, ties to even -> fp32, in one pass: c10::BFloat16's rounding (a NaN
// becomes the quiet NaN 0x7FC0, infinities stay, finite values past bf16's largest become
// infinite). LibTorch's .to(kBFloat16).to(kFloat) does the same in two passes through a bf16
// tensor, 3-4.5x slower on a (batch x tokens, 768) activation (docs/performance.md).
// Compiled for AVX2 and for the baseline x86-64, chosen at load time (with the baseline's 16-byte
// vectors alone it was compute-bound).
#if defined(__x86_64__) && defined(__GNUC__)
__attribute__((target_clones("avx2", "default")))
#endif
void round_to_bf16(const float* in, float* out, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    uint32_t u;
    std::memcpy(&u, in + i, sizeof u);
    const uint32_t r = (u & 0x7FFFFFFFu) > 0x7F800000u ? 0x7FC00000u : (u + 0x7FFFu + ((u >> 16) & 1u)) & 0xFFFF0000u;
    std::memcpy(out + i, &r, sizeof r);
  }
}

at::Tensor bf16_rounded_copy(const at::Tensor& t) {
  const at::Tensor src = t.contiguous();
  at::Tensor out = at::empty_like(src);
  const float* in = src.data_ptr<float>();
  float* o = out.data_ptr<float>();
  at::parallel_for(0, src.numel(), int64_t{1} << 15, [&](int64_t b, int64_t e) { round_to_bf16(in + b, o + b, e - b); });
  return out;
}

// Differentiable as .to(kBFloat16).to(kFloat) is: the gradient passes through bf16 too.
struct Bf16Rounding : public torch::autograd::Function<Bf16Rounding> {
  static at::Tensor forward(torch::autograd::AutogradContext*, const at::Tensor& t) { return bf16_rounded_copy(t); }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext*, torch::autograd::variable_list g) {
    return {bf16_rounded_fp32(g[0])};
  }
};
}  // namespace

at::Tensor bf16_rounded_fp32(const at::Tensor& t) {
  if (!t.defined() || !t.is_floating_point()) return t;
  if (t.scalar_type() == at::kBFloat16) return t.to(at::kFloat);
  if (t.scalar_type() != at::kFloat || !t.is_cpu()) return t.to(at::kBFloat16).to(at::kFloat);
  return t.requires_grad() ? Bf16Rounding::apply(t) : bf16_rounded_copy(t);
}

at::Tensor autocast_linear(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias) {
  const auto t = x.device().type();
  if (!bf16_emulated(t) || x.scalar_type() == at::kDouble) return at::linear(x, weight, bias);
  AutocastGuard fp32(t, Precision::kFloat32);
  return at::linear(bf16_rounded_fp32(x), bf16_rounded_fp32(weight), bf16_rounded_fp32(bias));
}

at::Tensor autocast_matmul(const at::Tensor& a, const at::Tensor& b) {
  const auto t = a.device().type();
  if (!bf16_emulated(t) || a.scalar_type() == at::kDouble) return batched_matmul(a, b);
  AutocastGuard fp32(t, Precision::kFloat32);
  return batched_matmul(bf16_rounded_fp32(a), bf16_rounded_fp32(b));
}

}  // namespace vlmo
