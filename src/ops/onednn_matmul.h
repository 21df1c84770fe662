// oneDNN's CPU engine and its matmul primitive descriptors, shared by the batched products
// (batched_matmul.cpp) and the packed linear layers (packed_linear.cpp). Builds with oneDNN only.
#pragma once
#if VLMO_HAVE_DNNL
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

}  // namespace vlmo
#endif
