// The numerical kernels the model's blocks run (src/ops/): batched products through oneDNN, the
// products of a block as its RunPolicy runs them (autocast, emulated bf16), bf16 rounding.
//
// Batched products: LibTorch's CPU bmm runs one BLAS call per matrix of the batch (a serial loop,
// each 197 x 64 x 197 product threaded by the BLAS on its own), which reaches about half the GEMM
// rate; oneDNN's matmul primitive takes the whole strided batch in one call and spreads it over the
// threads, at 1.6-2.6x the rate on the base model's attention shapes (docs/performance.md). oneDNN
// is Debian's libdnnl (the library LibTorch itself links); a build without it runs at::matmul.
#pragma once
#include <ATen/core/Tensor.h>

#include "vlmo/run_policy.h"

namespace vlmo {

// a (..., M, K) times b (..., K, N), both of rank 3 or 4 with the same leading sizes: what
// at::matmul returns for them, differentiable. fp32 CPU tensors outside CPU autocast run through
// oneDNN when `backend` is kOneDnn (the gradients' products too); anything else (fp64, reduced
// precision, CUDA, broadcast batches) runs at::matmul. kOneDnn in a build without oneDNN throws
// (resolve_run_policy never gives it there).
at::Tensor batched_matmul(const at::Tensor& a, const at::Tensor& b, CpuProducts backend);
// x (..., in) Wᵀ + b, times `scale` (out) where given (the blocks' layer scale): what at::linear
// (and the product) returns for them, differentiable; `bias` and `scale` may be undefined. fp32
// CPU tensors outside CPU autocast run through oneDNN when `backend` is kOneDnn, forward and
// backward (dx = (scale ⊙ dy) W and G = dyᵀ x as oneDNN products; dW, db and dscale from G and the
// rows' sums of dy, so that with autograd only x is kept, not the product); anything else runs
// at::linear. kOneDnn in a build without oneDNN throws.
at::Tensor linear_product(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias, CpuProducts backend,
                          const at::Tensor& scale = at::Tensor());
// scale ⊙ (gelu(x W1ᵀ + b1) W2ᵀ + b2) through linear_product; with autograd, oneDNN's products and
// both biases, one differentiable function that keeps x and the first layer's output for backward
// and computes GELU's output again there (4C floats a token fewer kept than composing the layers,
// and C fewer for the scale; the same values, gradients within fp32 rounding).
at::Tensor mlp_product(const at::Tensor& x, const at::Tensor& w1, const at::Tensor& b1, const at::Tensor& w2,
                       const at::Tensor& b2, CpuProducts backend, const at::Tensor& scale = at::Tensor());
// Products run through oneDNN by batched_matmul and linear_product in this process so far (tests, vlmo bench).
int64_t onednn_product_calls();
// Whether this build has oneDNN's products.
bool onednn_built();

// at::linear / at::matmul as a block of a model with `policy` runs them: under autocast, in its
// type (emulated where policy.bf16_emulated(): the rounded operands' fp32 products as below);
// otherwise through linear_product and batched_matmul with policy.cpu_products. `bias` may be undefined.
// `weight_rounded`: the weight already holds what emulation would make of it (a kept copy,
// low_precision_weight), so it is not rounded again; the bias (small) is rounded in any case.
// `scale` (undefined: none) multiplies the output (linear_product's scale).
at::Tensor linear_as(const RunPolicy& policy, const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
                     bool weight_rounded = false, const at::Tensor& scale = at::Tensor());
at::Tensor matmul_as(const RunPolicy& policy, const at::Tensor& a, const at::Tensor& b);
// The blocks' MLP, scale ⊙ (gelu(x W1ᵀ + b1) W2ᵀ + b2) (`scale` undefined: none), as linear_as runs
// its layers (outside autocast: mlp_product).
at::Tensor mlp_as(const RunPolicy& policy, const at::Tensor& x, const at::Tensor& w1, const at::Tensor& b1, const at::Tensor& w2,
                  const at::Tensor& b2, const at::Tensor& scale = at::Tensor());

// The copy of an fp32 weight that inference under `policy` keeps between passes on `device`: in
// autocast's type, or under emulated bf16 fp32 holding bf16-rounded values (for linear_as with
// weight_rounded). Other dtypes (fp64) and undefined tensors come back as they are.
at::Tensor low_precision_weight(const RunPolicy& policy, c10::DeviceType device, const at::Tensor& w);

// fp32 copies of bf16-rounded values (a bf16 tensor is widened; an undefined or non-floating tensor
// is returned as it is). Differentiable as .to(kBFloat16).to(kFloat) is: the gradient passes
// through bf16 too. On the CPU one pass of c10::BFloat16's rounding (ties to even, NaN to the quiet
// NaN, overflow to infinity), 3-4.5x faster than LibTorch's two casts (docs/performance.md).
at::Tensor bf16_rounded_fp32(const at::Tensor& t);

}  // namespace vlmo
