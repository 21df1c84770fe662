// Linear layers of CPU inference through oneDNN's matmul primitive (src/ops/packed_linear.cpp).
// LibTorch's at::linear on the CPU is a BLAS GEMM (OpenBLAS on Debian), which reaches about half
// the rate of oneDNN's brgemm kernels on the base model's shapes on AVX-512 (docs/performance.md):
// the weight is reordered once into the kernel's blocked layout (oneDNN 2; on oneDNN 3 it is read
// in place, see packed_linear.cpp), and bias and GELU run inside the kernel as post-ops, so the
// output is written once.
#pragma once
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <memory>

namespace vlmo {

// y = x W^T + b, or gelu(x W^T + b) (erf GELU, as at::gelu), for fp32 CPU tensors without autograd.
class PackedLinear {
 public:
  // weight (out, in) fp32 CPU, packed by the first forward(); `bias` says whether forward() takes one.
  PackedLinear(const at::Tensor& weight, bool bias, bool gelu);
  // x (..., in) -> (..., out); bias (out) when made with one. Undefined when oneDNN has no fast
  // kernel for these shapes on this CPU (the caller runs at::linear then).
  at::Tensor forward(const at::Tensor& x, const at::Tensor& bias) const;
  // Whether this packs `weight` as it is now (same tensor, same version).
  bool packs(const at::Tensor& weight) const;

  struct Impl;

 private:
  std::shared_ptr<Impl> impl_;
};

// Linear layers run by PackedLinear in this process so far (tests, vlmo bench).
int64_t packed_linear_calls();

}  // namespace vlmo
