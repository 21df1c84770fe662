// The fused path's attention kernels (src/ops/attention.h).
#include "ops/attention.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/record_function.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/version.h>

#include <limits>
#include <vector>

#include "vlmo/error.h"
#include "vlmo/ops.h"
#include "vlmo/precision.h"

#if TORCH_VERSION_MAJOR >= 2
#define VLMO_HAVE_SDPA 1
#else
#define VLMO_HAVE_SDPA 0
#endif

namespace vlmo {

at::Tensor cpu_inference_attention(const at::Tensor& qkv_out, int64_t Q, int64_t H, double scale, const at::Tensor& key_mask,
                                   const at::Tensor& rel_bias) {
  RECORD_FUNCTION("vlmo::cpu_inference_attention", std::vector<c10::IValue>({qkv_out}));
  const at::Tensor qkv = qkv_out.contiguous();  // (B, N, 3C)
  const int64_t B = qkv.size(0), C = qkv.size(2) / 3, hd = C / H;
  at::Tensor out = at::empty({B, Q, C}, qkv.options());
  const at::Tensor bias = rel_bias.defined() ? rel_bias.narrow(1, 0, Q).to(qkv.scalar_type()).contiguous() : at::Tensor();
  const at::Tensor masked = key_mask.defined() ? (key_mask == 0).unsqueeze(1) : at::Tensor();  // (B, 1, N)
  at::parallel_for(0, B * H, 1, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const int64_t b = i / H, h = i % H;
      const at::Tensor x = qkv[b];  // (N, 3C)
      const at::Tensor q = x.narrow(0, 0, Q).narrow(1, h * hd, hd), k = x.narrow(1, C + h * hd, hd),
                       v = x.narrow(1, 2 * C + h * hd, hd);
      at::Tensor logits = bias.defined() ? at::addmm(bias[h], q, k.t(), 1.0, scale) : at::mm(q, k.t()).mul_(scale);
      if (masked.defined()) logits.masked_fill_(masked[b], -std::numeric_limits<float>::infinity());
      out[b].narrow(1, h * hd, hd).copy_(at::mm(logits.softmax(-1), v));
    }
  });
  return out;
}

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// The probabilities softmax(scale q kᵀ + bias, masked keys -inf) (B, H, Q, N), and q scaled.
std::pair<at::Tensor, at::Tensor> probabilities(const at::Tensor& q, const at::Tensor& k, double scale, const at::Tensor& masked,
                                                const at::Tensor& bias) {
  at::Tensor qs = q * scale;
  at::Tensor logits = batched_matmul(qs, k.transpose(-2, -1), CpuProducts::kOneDnn);
  if (bias.defined()) logits.add_(bias);
  if (masked.defined()) logits.masked_fill_(masked, -std::numeric_limits<float>::infinity());
  return {logits.softmax(-1), qs};
}

// The masked keys (B, 1, 1, N) bool or undefined, passed as a value, not as a differentiable input.
struct Masked {
  at::Tensor keys;
};

// Inputs q, k, v, bias (H, Q, N; a zero-size stand-in when there is none: LibTorch 1.13's
// autograd::Function takes no undefined tensor); the key mask as saved data (no gradient).
struct RecomputingAttention : public torch::autograd::Function<RecomputingAttention> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                            const at::Tensor& bias, const Masked& masked, double scale, bool has_bias) {
    const at::Tensor out =
        batched_matmul(probabilities(q, k, scale, masked.keys, has_bias ? bias : at::Tensor()).first, v, CpuProducts::kOneDnn);
    ctx->save_for_backward({q, k, v, bias});
    ctx->saved_data["masked"] = masked.keys;
    ctx->saved_data["scale"] = scale;
    ctx->saved_data["bias"] = has_bias;
    return out;
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto s = ctx->get_saved_variables();
    const at::Tensor &q = s[0], &k = s[1], &v = s[2];
    const double scale = ctx->saved_data["scale"].toDouble();
    const bool has_bias = ctx->saved_data["bias"].toBool();
    const c10::IValue& masked = ctx->saved_data["masked"];
    const auto [p, qs] =
        probabilities(q, k, scale, masked.isTensor() ? masked.toTensor() : at::Tensor(), has_bias ? s[3] : at::Tensor());
    const at::Tensor& g = grads[0];  // (B, H, Q, hd)
    const auto mm = [](const at::Tensor& a, const at::Tensor& b) { return batched_matmul(a, b, CpuProducts::kOneDnn); };
    const at::Tensor dv = mm(p.transpose(-2, -1), g);
    const at::Tensor dp = mm(g, v.transpose(-2, -1));
    const at::Tensor ds = p * (dp - (dp * p).sum(-1, true));  // softmax's backward
    variable_list out(7);
    if (ctx->needs_input_grad(0)) out[0] = mm(ds, k).mul_(scale);
    if (ctx->needs_input_grad(1)) out[1] = mm(ds.transpose(-2, -1), qs);
    if (ctx->needs_input_grad(2)) out[2] = dv;
    if (has_bias && ctx->needs_input_grad(3)) out[3] = ds.sum(0);
    return out;
  }
};

}  // namespace

at::Tensor recomputing_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, double scale,
                                 const at::Tensor& key_mask, const at::Tensor& rel_bias) {
  const int64_t B = q.size(0), Q = q.size(2), N = k.size(2);
  const at::Tensor masked = key_mask.defined() ? (key_mask.reshape({B, 1, 1, N}) == 0) : at::Tensor();
  const bool has_bias = rel_bias.defined();
  const at::Tensor bias = has_bias ? rel_bias.narrow(1, 0, Q) : at::zeros({0}, q.options());
  return RecomputingAttention::apply(q, k, v, bias, Masked{masked}, scale, has_bias);
}

bool sdpa_built() { return VLMO_HAVE_SDPA != 0; }

#if VLMO_HAVE_SDPA
at::Tensor sdpa_attention(const at::Tensor& qkv_out, int64_t Q, const at::Tensor& key_mask, const at::Tensor& rel_bias,
                          bool emulated_bf16) {
  // unbind, not three selects: its backward writes the three gradients into one tensor, where
  // each select's backward would fill a zero tensor of the whole qkv and the three be summed.
  const std::vector<at::Tensor> qkv = qkv_out.unbind(0);
  const at::Tensor q = qkv[0].narrow(2, 0, Q), k = qkv[1], v = qkv[2];  // (B, H, Q|N, hd)
  const int64_t B = q.size(0), H = q.size(1), N = k.size(2), hd = q.size(3);
  at::Tensor mask;
  if (rel_bias.defined()) mask = rel_bias.narrow(1, 0, Q).unsqueeze(0);  // (1, H, Q, N)
  if (key_mask.defined()) {
    const at::Tensor pad = at::zeros({B, 1, 1, N}, q.options().dtype(at::kFloat))
                               .masked_fill(key_mask.reshape({B, 1, 1, N}) == 0, -std::numeric_limits<float>::infinity());
    mask = mask.defined() ? mask + pad : pad;
  }
  // Emulated bf16 (vlmo/run_policy.h): the fp32 kernel on q, k and v rounded to bf16.
  if (emulated_bf16) {
    AutocastGuard fp32(q.device().type(), Precision::kFloat32);
    const at::Tensor q32 = bf16_rounded_fp32(q), k32 = bf16_rounded_fp32(k), v32 = bf16_rounded_fp32(v);
    const at::Tensor out = mask.defined() ? at::scaled_dot_product_attention(q32, k32, v32, mask.to(at::kFloat))
                                          : at::scaled_dot_product_attention(q32, k32, v32);
    return out.transpose(1, 2).reshape({B, Q, H * hd});
  }
  // Under bf16 / fp16 the bias and the padding mask stay fp32 on the CPU, added to logits the
  // kernel accumulates in fp32, as the official adds its fp32 bias: LibTorch's CPU kernel takes a
  // float mask beside reduced-precision inputs. CUDA's kernels want the inputs' type, so there the
  // mask is rounded to it (docs/design.md, "Fidelity").
  if (mask.defined() && !q.is_cpu()) mask = mask.to(q.scalar_type());
  // No mask is "none", not an undefined tensor (which 2.x refuses as a mask of no type).
  const at::Tensor out = mask.defined() ? at::scaled_dot_product_attention(q, k, v, mask)
                                        : at::scaled_dot_product_attention(q, k, v);  // (B, H, Q, hd)
  return out.transpose(1, 2).reshape({B, Q, H * hd});
}
#else
at::Tensor sdpa_attention(const at::Tensor&, int64_t, const at::Tensor&, const at::Tensor&, bool) {
  throw Error(cat("scaled_dot_product_attention needs LibTorch >= 2 (this is ", TORCH_VERSION, ")"));
}
#endif

}  // namespace vlmo
