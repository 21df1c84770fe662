// Batched matrix products (the attention layers' q·kᵀ and weights·v, and their gradients).
//
// LibTorch's CPU bmm runs one BLAS call per matrix of the batch (a serial loop, each 197 x 64 x 197
// product threaded by the BLAS on its own), which reaches about half the GEMM rate; oneDNN's
// matmul primitive takes the whole strided batch in one call and spreads it over the threads, at
// 1.6-2.6x the rate on the base model's attention shapes (docs/performance.md). oneDNN is
// Debian's libdnnl (the library LibTorch itself links); a build without it runs at::matmul.
#pragma once
#include <ATen/core/Tensor.h>

#include <string>

namespace vlmo {

// a (..., M, K) times b (..., K, N), both of rank 3 or 4 with the same leading sizes: what
// at::matmul returns for them, differentiable. fp32 CPU tensors outside CPU autocast run through
// oneDNN when batched_matmul_backend() is "onednn"; anything else (fp64, reduced precision, CUDA,
// broadcast batches) runs at::matmul.
at::Tensor batched_matmul(const at::Tensor& a, const at::Tensor& b);

// "onednn" or "aten": where fp32 CPU products run in this process. The default is oneDNN where
// the build has it; VLMO_CPU_BATCHED_MATMUL=aten|onednn overrides (read once; a value this build
// cannot honour, or any other, throws vlmo::Error naming the variable).
std::string batched_matmul_backend();
// For this process, over the environment: "aten" or "onednn" (throws vlmo::Error for anything
// else, or "onednn" in a build without it).
void set_batched_matmul_backend(const std::string& name);

}  // namespace vlmo
