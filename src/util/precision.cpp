#include "vlmo/precision.h"

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
  throw Error(cat("precision \"", name, "\": expected fp32 or bf16"));
}

std::string precision_name(Precision p) { return p == Precision::kBFloat16 ? "bf16" : "fp32"; }

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
  at::autocast::increment_nesting();
  set_state(t, precision == Precision::kBFloat16, precision == Precision::kBFloat16 ? at::kBFloat16 : previous_dtype_);
}

AutocastGuard::~AutocastGuard() {
  if (!supported(type_)) return;
  set_state(type_, previous_enabled_, previous_dtype_);
  if (at::autocast::decrement_nesting() == 0) at::autocast::clear_cache();
}

}  // namespace vlmo
