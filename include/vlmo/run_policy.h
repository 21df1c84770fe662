// How a model runs: the one place that decides the device, the precision, the attention path, the
// kernel of the CPU's fp32 batched products and how bf16 products run on the CPU.
//
// A RunPolicy is a value, resolved once (resolve_run_policy) from what a command or a program asks
// for, the documented environment overrides and the platform (LibTorch version, oneDNN, the CPU),
// and carried by the model (VLMoImpl::set_run_policy). The forward pass reads its fields; it never
// looks at the environment or at process-wide switches. Per attention layer and pass, the kernel
// follows from the policy and the call's facts by one pure function (attention_kernel).
//
// Environment overrides, read in exactly one place (RunOverrides::from_environment), below what a
// program asks for explicitly:
//   VLMO_CPU_BATCHED_MATMUL=aten|onednn  the CPU's fp32 batched products (default: oneDNN where built)
//   VLMO_CPU_BF16=native|emulated        bf16 products on the CPU (default: native where oneDNN has a
//                                        fast bf16 GEMM, i.e. x86 with AVX-512 BW / VL / DQ)
#pragma once
#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>

#include <optional>
#include <string>

#include "vlmo/precision.h"

namespace vlmo {

enum class AttentionPath { kFused, kPlain };
// Where fp32 products run on the CPU: the attention layers' batched q·kᵀ and weights·v, and the
// blocks' linear layers, forward and backward (vlmo/ops.h: linear_product, mlp_product), whose
// weights oneDNN keeps packed in inference (no autograd, eval mode; src/ops/packed_linear.h).
enum class CpuProducts { kAten, kOneDnn };
// How bf16 products run on the CPU. LibTorch's bf16 GEMM is fast where oneDNN runs it (x86 with
// AVX-512 BW / VL / DQ, AMX); on an x86 CPU without AVX-512 it falls back to loops 25-40x slower
// than the fp32 GEMM (docs/performance.md). Emulated: inputs and weights rounded to bf16 as
// autocast rounds them, then the fp32 GEMM (a product of two bf16 numbers is exact in fp32, and a
// bf16 GEMM sums in fp32 too); the product's result stays fp32 where a bf16 GEMM rounds it to bf16.
enum class CpuBf16Products { kNative, kEmulated };

std::string attention_path_name(AttentionPath p);       // "fused" / "plain"
std::string cpu_products_name(CpuProducts p);           // "aten" / "onednn"
std::string cpu_bf16_products_name(CpuBf16Products p);  // "native" / "emulated"
// Parse the names above; anything else throws vlmo::Error naming `what` and the expected values.
AttentionPath parse_attention_path(const std::string& name, const std::string& what = "attention");
CpuProducts parse_cpu_products(const std::string& name, const std::string& what = "CPU products");
CpuBf16Products parse_cpu_bf16_products(const std::string& name, const std::string& what = "CPU bf16 products");

// What the build and the machine offer.
struct Platform {
  int torch_major = 0, torch_minor = 0;
  bool onednn = false;                            // this build runs products through oneDNN (libdnnl-dev at configure time)
  bool cpu_fast_bf16 = false;                     // oneDNN's bf16 GEMM condition: x86 with AVX-512 BW / VL / DQ (or not x86)
  bool sdpa() const { return torch_major >= 2; }  // at::scaled_dot_product_attention exists
  // CPU autocast in float16 (LibTorch >= 2.4; before it CPU autocast takes bfloat16 only).
  bool cpu_fp16_autocast() const { return torch_major > 2 || (torch_major == 2 && torch_minor >= 4); }
  static Platform current();
};

// The documented environment overrides (above), as read; unset variables are nullopt.
struct RunOverrides {
  std::optional<std::string> cpu_products;  // VLMO_CPU_BATCHED_MATMUL
  std::optional<std::string> cpu_bf16;      // VLMO_CPU_BF16
  static RunOverrides from_environment();
};

// What a command line or a program asks for; an unset field takes the override or the default.
struct RunOptions {
  std::optional<c10::Device> device;
  std::optional<Precision> precision;
  std::optional<AttentionPath> attention;
  std::optional<CpuProducts> cpu_products;
  std::optional<CpuBf16Products> cpu_bf16;
};

struct RunPolicy {
  c10::Device device = c10::kCPU;
  Precision precision = Precision::kFloat32;
  AttentionPath attention = AttentionPath::kFused;
  CpuProducts cpu_products = CpuProducts::kAten;
  CpuBf16Products cpu_bf16 = CpuBf16Products::kNative;
  bool sdpa = false;  // the fused path may use scaled_dot_product_attention (LibTorch >= 2)

  // Whether the products of a block on `t` run emulated now: bf16 autocast on (this thread), on
  // the CPU, with cpu_bf16 == kEmulated.
  bool bf16_emulated(c10::DeviceType t) const;
  // One line for logs: "device cpu, precision fp32, attention fused (SDPA: no), cpu products onednn, cpu bf16 native".
  std::string summary() const;
  // The same as a JSON object's text.
  std::string json() const;
  bool operator==(const RunPolicy& o) const;
};

// Explicit options first, then the overrides, then the platform's defaults. Throws vlmo::Error for
// what the platform cannot do (fp16 on the CPU before LibTorch 2.4, oneDNN products in a build
// without oneDNN) or an override's value that is not one of its names (naming the variable).
RunPolicy resolve_run_policy(const RunOptions& asked, const Platform& platform, const RunOverrides& overrides);
// resolve_run_policy(asked, Platform::current(), RunOverrides::from_environment()).
RunPolicy resolve_run_policy(const RunOptions& asked = {});

// The kernel an attention layer runs for one call.
enum class AttentionKernel {
  kCpuInference,  // the CPU's per-(sample, head) inference kernel (fp32, emulated bf16 too)
  kSdpa,          // at::scaled_dot_product_attention
  kPlain,         // product, softmax, product
};
std::string attention_kernel_name(AttentionKernel k);  // "cpu-inference", "sdpa", "plain"

struct AttentionCall {
  c10::DeviceType device = c10::DeviceType::CPU;
  at::ScalarType dtype = at::kFloat;  // of the qkv projection's output (fp32 under emulated bf16)
  bool autograd = false;              // the pass will be differentiated (grad mode on)
  bool recording = false;             // an AttentionRecorder reads the probabilities
};
// Fused path: on the CPU with oneDNN's products, the plain kernel, which measured fastest there in
// every precision (fp32 inference: 5-8 % ahead of the inference kernel, its batched products
// through oneDNN; fp32 training: SDPA takes LibTorch's unfused math fallback; bf16: 4x in the image
// embedding, 1.2x in the pre-training step; bench/paths_table.py, docs/performance.md), except
// fp16, which SDPA takes where it exists. With LibTorch's products (cpu products aten): on the CPU
// without autograd in fp32 (emulated bf16's products are fp32) the inference kernel, else SDPA
// where it exists and takes the dtype. Elsewhere (CUDA) SDPA where it exists. Plain path, or a
// recorder: the plain kernel.
AttentionKernel attention_kernel(const RunPolicy& policy, const AttentionCall& call);

}  // namespace vlmo
