#include "vlmo/precision.h"

#include <ATen/ATen.h>
#include <ATen/autocast_mode.h>
#include <torch/version.h>

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

}  // namespace vlmo
