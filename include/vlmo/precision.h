// Numeric precision of the model's forward passes: fp32, or bf16 / fp16 autocast (matrix products
// in bfloat16 / float16, weights and gradients kept in fp32; LibTorch's autocast decides per
// operator). fp16 is for GPUs without bf16 (V100, T4); training in it needs loss scaling
// (vlmo/train.h: LossScaler), as the official recipe's fp16 AMP does.
#pragma once
#include <ATen/core/Tensor.h>
#include <c10/core/DeviceType.h>
#include <c10/core/ScalarType.h>

#include <string>

namespace vlmo {

enum class Precision { kFloat32, kBFloat16, kFloat16 };

// "fp32", "bf16" or "fp16" (also "float32" / "bfloat16" / "float16"); anything else throws
// vlmo::Error naming the expected values.
Precision parse_precision(const std::string& name);
std::string precision_name(Precision p);
// The autocast type of a reduced precision (kBFloat16 / kHalf), kFloat for fp32.
at::ScalarType precision_dtype(Precision p);
// Throws vlmo::Error (naming the option's value and what would work) when this LibTorch cannot
// autocast `p` on `device_type`: fp16 on the CPU needs LibTorch >= 2.4.
void check_precision_supported(Precision p, c10::DeviceType device_type);

// Autocast on this thread for one device type while the guard lives: kBFloat16 turns it on
// with bfloat16, kFloat32 turns it off. The previous state comes back on destruction, and the
// cast-weight cache is cleared when the outermost guard ends. Guards nest.
class AutocastGuard {
 public:
  AutocastGuard(c10::DeviceType device_type, Precision precision);
  ~AutocastGuard();
  AutocastGuard(const AutocastGuard&) = delete;
  AutocastGuard& operator=(const AutocastGuard&) = delete;

 private:
  c10::DeviceType type_;
  bool previous_enabled_;
  at::ScalarType previous_dtype_;
};

// Whether autocast is on for `device_type` on this thread, and its lower-precision type.
bool autocast_enabled(c10::DeviceType device_type);
at::ScalarType autocast_dtype(c10::DeviceType device_type);

// How bf16 matrix products run on the CPU. LibTorch's bf16 GEMM is fast where oneDNN runs it (x86
// with AVX-512 BW / VL / DQ, AMX; other architectures are left to LibTorch); on an x86 CPU
// without AVX-512 it falls back to loops 25-40x slower than the fp32 GEMM (docs/performance.md).
// There the blocks' products are emulated: inputs rounded to bf16 as autocast rounds them, then
// the fp32 GEMM (a product of two bf16 numbers is exact in fp32, and a bf16 GEMM sums in fp32
// too), its result left in fp32 where a bf16 GEMM rounds it to bf16: bf16 inputs and weights, at
// least a bf16 product's accuracy, at the fp32 rate, with fp32 activations (no memory saved).
// VLMO_CPU_BF16=native|emulated overrides the choice (read once per process).
enum class CpuBf16Products { kNative, kEmulated };
CpuBf16Products cpu_bf16_products();
void set_cpu_bf16_products(CpuBf16Products mode);  // for this process, over the environment and the CPU
std::string cpu_bf16_products_name();  // "native" or "emulated"
// Whether the products of a block on `device_type` run emulated now: bf16 autocast on the CPU
// with cpu_bf16_products() == kEmulated.
bool bf16_emulated(c10::DeviceType device_type);

// at::linear / at::matmul as the blocks run them: under autocast, in its type (emulated where
// bf16_emulated()); otherwise as LibTorch runs them, the products of autocast_matmul through
// vlmo::batched_matmul (oneDNN for fp32 on the CPU). `bias` may be undefined.
at::Tensor autocast_linear(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias);
at::Tensor autocast_matmul(const at::Tensor& a, const at::Tensor& b);
// For an emulated product: fp32 copies of bf16-rounded values (a bf16 tensor is widened; an
// undefined or non-floating tensor is returned as it is).
at::Tensor bf16_rounded_fp32(const at::Tensor& t);

}  // namespace vlmo
