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

}  // namespace vlmo
