// The run policy: resolution from options, overrides and platform; the attention kernel per call
// (vlmo/run_policy.h).
#include "vlmo/run_policy.h"

#include <torch/version.h>

#include <cstdlib>
#include <sstream>

#include "vlmo/error.h"
#include "vlmo/ops.h"

namespace vlmo {

std::string attention_path_name(AttentionPath p) { return p == AttentionPath::kPlain ? "plain" : "fused"; }
std::string cpu_products_name(CpuProducts p) { return p == CpuProducts::kOneDnn ? "onednn" : "aten"; }
std::string cpu_bf16_products_name(CpuBf16Products p) { return p == CpuBf16Products::kEmulated ? "emulated" : "native"; }

namespace {
// `what` then the quoted value: "option --attention \"x\"", "environment variable V=\"x\"".
std::string quoted(const std::string& what, const std::string& name) {
  return cat(what, what.empty() || what.back() == '=' ? "" : " ", "\"", name, "\"");
}
}  // namespace

AttentionPath parse_attention_path(const std::string& name, const std::string& what) {
  if (name == "fused") return AttentionPath::kFused;
  if (name == "plain") return AttentionPath::kPlain;
  throw Error(quoted(what, name) + ": expected fused or plain");
}

CpuProducts parse_cpu_products(const std::string& name, const std::string& what) {
  if (name == "aten") return CpuProducts::kAten;
  if (name == "onednn") return CpuProducts::kOneDnn;
  throw Error(quoted(what, name) + ": expected aten or onednn");
}

CpuBf16Products parse_cpu_bf16_products(const std::string& name, const std::string& what) {
  if (name == "native") return CpuBf16Products::kNative;
  if (name == "emulated") return CpuBf16Products::kEmulated;
  throw Error(quoted(what, name) + ": expected native or emulated");
}

Platform Platform::current() {
  Platform p;
  p.torch_major = TORCH_VERSION_MAJOR;
  p.torch_minor = TORCH_VERSION_MINOR;
  p.onednn = onednn_built();
#if defined(__x86_64__) || defined(__i386__)
  // oneDNN's condition for its bf16 GEMM (LibTorch's mkldnn_bf16_device_check).
  __builtin_cpu_init();
  p.cpu_fast_bf16 =
      __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
#else
  p.cpu_fast_bf16 = true;  // other architectures: LibTorch's own choice
#endif
  return p;
}

RunOverrides RunOverrides::from_environment() {
  RunOverrides o;
  if (const char* v = std::getenv("VLMO_CPU_BATCHED_MATMUL")) o.cpu_products = v;
  if (const char* v = std::getenv("VLMO_CPU_BF16")) o.cpu_bf16 = v;
  return o;
}

RunPolicy resolve_run_policy(const RunOptions& asked, const Platform& platform, const RunOverrides& overrides) {
  RunPolicy p;
  p.device = asked.device.value_or(c10::Device(c10::kCPU));
  p.precision = asked.precision.value_or(Precision::kFloat32);
  if (p.precision == Precision::kFloat16 && p.device.is_cpu() && !platform.cpu_fp16_autocast())
    throw Error(cat("precision fp16 on the CPU needs LibTorch >= 2.4 (this is ", platform.torch_major, ".", platform.torch_minor,
                    "); use bf16 or fp32 on the CPU, fp16 on a GPU"));
  p.attention = asked.attention.value_or(AttentionPath::kFused);
  p.sdpa = platform.sdpa();
  if (asked.cpu_products) p.cpu_products = *asked.cpu_products;
  else if (overrides.cpu_products)
    p.cpu_products = parse_cpu_products(*overrides.cpu_products, "environment variable VLMO_CPU_BATCHED_MATMUL=");
  else p.cpu_products = platform.onednn ? CpuProducts::kOneDnn : CpuProducts::kAten;
  if (p.cpu_products == CpuProducts::kOneDnn && !platform.onednn)
    throw Error(quoted(asked.cpu_products ? "CPU products" : "environment variable VLMO_CPU_BATCHED_MATMUL=", "onednn") +
                ": this build has no oneDNN (libdnnl-dev was not found when it was configured); expected aten");
  if (asked.cpu_bf16) p.cpu_bf16 = *asked.cpu_bf16;
  else if (overrides.cpu_bf16) p.cpu_bf16 = parse_cpu_bf16_products(*overrides.cpu_bf16, "environment variable VLMO_CPU_BF16=");
  else p.cpu_bf16 = platform.cpu_fast_bf16 ? CpuBf16Products::kNative : CpuBf16Products::kEmulated;
  return p;
}

RunPolicy resolve_run_policy(const RunOptions& asked) {
  return resolve_run_policy(asked, Platform::current(), RunOverrides::from_environment());
}

bool RunPolicy::bf16_emulated(c10::DeviceType t) const {
  return t == c10::DeviceType::CPU && cpu_bf16 == CpuBf16Products::kEmulated && autocast_enabled(t) &&
         autocast_dtype(t) == at::kBFloat16;
}

std::string RunPolicy::summary() const {
  std::ostringstream s;
  s << "device " << device.str() << ", precision " << precision_name(precision) << ", attention "
    << attention_path_name(attention) << " (SDPA: " << (sdpa ? "yes" : "no") << "), cpu products "
    << cpu_products_name(cpu_products) << ", cpu bf16 " << cpu_bf16_products_name(cpu_bf16);
  return s.str();
}

std::string RunPolicy::json() const {
  std::ostringstream s;
  s << "{\"device\": \"" << device.str() << "\", \"precision\": \"" << precision_name(precision) << "\", \"attention\": \""
    << attention_path_name(attention) << "\", \"sdpa\": " << (sdpa ? "true" : "false") << ", \"cpu_products\": \""
    << cpu_products_name(cpu_products) << "\", \"cpu_bf16\": \"" << cpu_bf16_products_name(cpu_bf16) << "\"}";
  return s.str();
}

bool RunPolicy::operator==(const RunPolicy& o) const {
  return device == o.device && precision == o.precision && attention == o.attention && cpu_products == o.cpu_products &&
         cpu_bf16 == o.cpu_bf16 && sdpa == o.sdpa;
}

std::string attention_kernel_name(AttentionKernel k) {
  switch (k) {
    case AttentionKernel::kCpuInference: return "cpu-inference";
    case AttentionKernel::kSdpa: return "sdpa";
    case AttentionKernel::kPlain: return "plain";
  }
  return "plain";
}

AttentionKernel attention_kernel(const RunPolicy& policy, const AttentionCall& call) {
  if (policy.attention == AttentionPath::kPlain || call.recording) return AttentionKernel::kPlain;
  const bool cpu = call.device == c10::DeviceType::CPU;
  const bool onednn = cpu && policy.cpu_products == CpuProducts::kOneDnn;
  if (cpu && !call.autograd && call.dtype == at::kFloat) return onednn ? AttentionKernel::kPlain : AttentionKernel::kCpuInference;
  const bool sdpa_dtype = call.dtype == at::kFloat || call.dtype == at::kBFloat16 || call.dtype == at::kHalf;
  const bool cpu_plain = onednn && ((call.autograd && call.dtype == at::kFloat) || call.dtype == at::kBFloat16);
  if (policy.sdpa && sdpa_dtype && !cpu_plain) return AttentionKernel::kSdpa;
  return AttentionKernel::kPlain;
}

}  // namespace vlmo
