// The attention kernels of the fused path (src/ops/attention.cpp). The plain path is the model's
// own (modules.cpp: product, softmax, product); which kernel a call runs is attention_kernel's
// choice (vlmo/run_policy.h).
#pragma once
#include <ATen/core/Tensor.h>

#include <cstdint>

namespace vlmo {

// CPU inference attention, one (sample, head) pair per task: every product reads q, k and v in
// place from the qkv projection's output (B, N, 3C) (rows 3C apart: a valid BLAS layout, so no
// permuted copies), the scale and the relative bias (H, N, N) go into the logits' GEMM (addmm),
// and the small per-head GEMMs run single-threaded side by side instead of each splitting over the
// threads. The same arithmetic as the plain path (logits = bias + scale * q k^T; the plain path
// scales q first, which is the same number whenever the scale is a power of two, e.g. head dim
// 64). The first `Q` tokens are the queries; key_mask (B, N), 1 = attend, may be undefined, as may
// rel_bias. Returns (B, Q, C). No autograd.
at::Tensor cpu_inference_attention(const at::Tensor& qkv, int64_t Q, int64_t heads, double scale, const at::Tensor& key_mask,
                                   const at::Tensor& rel_bias);

// The plain path's attention for training with oneDNN's fp32 products: softmax(scale q kᵀ + bias,
// masked keys -inf) v on q (B, H, Q, hd), k and v (B, H, N, hd), as the plain path computes it (q
// scaled first, products through batched_matmul), differentiable in q, k, v and rel_bias (H, N, N;
// the first Q rows are used), keeping for backward only q, k, v (views of the qkv output, which is
// kept anyway), the bias and the mask: backward computes the probabilities again (one more q kᵀ
// product) instead of keeping them from forward (H x N floats a query: 2844 at N = 237, more than the
// 768 of the token itself; docs/performance.md, "Memory"). key_mask (B, N), 1 = attend, and
// rel_bias may be undefined. Returns (B, H, Q, hd).
at::Tensor recomputing_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, double scale,
                                 const at::Tensor& key_mask, const at::Tensor& rel_bias);

// Whether this LibTorch has at::scaled_dot_product_attention (>= 2.0).
bool sdpa_built();

// at::scaled_dot_product_attention (flash / memory-efficient kernels on CUDA, the flash kernel on
// the CPU) on q / k / v (3, B, H, N, hd), with the relative-position bias (H, N, N) and the key
// padding mask as one additive mask (B or 1, H, Q, N) and SDPA's default scale head_dim^-0.5,
// which is the official's. The bias keeps its gradient: it flows back through the mask.
// `emulated_bf16`: the fp32 kernel on q, k and v rounded to bf16. Returns (B, Q, C). Throws on a
// LibTorch without SDPA (attention_kernel never picks it there).
at::Tensor sdpa_attention(const at::Tensor& qkv, int64_t Q, const at::Tensor& key_mask, const at::Tensor& rel_bias,
                          bool emulated_bf16);

}  // namespace vlmo
