// oneDNN's CPU engine, its matmul primitive descriptors and one product through it, shared by the
// batched products (batched_matmul.cpp), the linear layers (linear.cpp) and the packed linear
// layers of inference (packed_linear.cpp). Builds with oneDNN only.
#pragma once
#if VLMO_HAVE_DNNL
#include <ATen/core/Tensor.h>

#include <oneapi/dnnl/dnnl.hpp>
#include <optional>

namespace vlmo {

// The one CPU engine every oneDNN primitive of the process runs on.
dnnl::engine& onednn_cpu_engine();

// A matmul primitive descriptor (oneDNN 2 and 3 alike) for these memory descriptors, `bias` a zero
// descriptor for none; nullopt where oneDNN has no kernel for them, or only its reference kernel,
// which is correct but slow: the caller's LibTorch fallback is the better one then.
std::optional<dnnl::matmul::primitive_desc> fast_matmul_desc(const dnnl::memory::desc& src, const dnnl::memory::desc& weights,
                                                             const dnnl::memory::desc& bias, const dnnl::memory::desc& dst,
                                                             const dnnl::primitive_attr& attr = dnnl::primitive_attr());

// a (..., M, K) b (..., K, N) + bias (N) (undefined: none) for fp32 CPU tensors of the same rank
// (2 to 4) and leading sizes, without autograd; an operand whose rows or columns are not contiguous
// is copied first. Undefined where oneDNN has no fast kernel (the caller's LibTorch product runs).
at::Tensor onednn_product(at::Tensor a, at::Tensor b, const at::Tensor& bias);

}  // namespace vlmo
#endif
