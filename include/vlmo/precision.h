// Numeric precision of the model's forward passes: fp32, or bf16 autocast (matrix products in
// bfloat16, weights and gradients kept in fp32; LibTorch's autocast decides per operator).
#pragma once
#include <c10/core/DeviceType.h>
#include <c10/core/ScalarType.h>

#include <string>

namespace vlmo {

enum class Precision { kFloat32, kBFloat16 };

// "fp32" or "bf16" (also "float32" / "bfloat16"); anything else throws vlmo::Error naming the
// expected values.
Precision parse_precision(const std::string& name);
std::string precision_name(Precision p);

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
