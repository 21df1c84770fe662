// The products of a block as its RunPolicy runs them, and bf16 rounding (vlmo/ops.h).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/csrc/autograd/custom_function.h>

#include <cstdint>
#include <cstring>

#include "vlmo/ops.h"
#include "vlmo/precision.h"

namespace vlmo {

namespace {
// fp32 -> the nearest bf16, ties to even -> fp32, in one pass: c10::BFloat16's rounding (a NaN
// becomes the quiet NaN 0x7FC0, infinities stay, finite values past bf16's largest become
// infinite). LibTorch's .to(kBFloat16).to(kFloat) does the same in two passes through a bf16
// tensor, 3-4.5x slower on a (batch x tokens, 768) activation (docs/performance.md).
// Compiled for AVX2 and for the baseline x86-64, chosen at load time (with the baseline's 16-byte
// vectors alone it was compute-bound).
#if defined(__x86_64__) && defined(__GNUC__)
__attribute__((target_clones("avx2", "default")))
#endif
void round_to_bf16(const float* in, float* out, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    uint32_t u;
    std::memcpy(&u, in + i, sizeof u);
    const uint32_t r = (u & 0x7FFFFFFFu) > 0x7F800000u ? 0x7FC00000u : (u + 0x7FFFu + ((u >> 16) & 1u)) & 0xFFFF0000u;
    std::memcpy(out + i, &r, sizeof r);
  }
}

at::Tensor bf16_rounded_copy(const at::Tensor& t) {
  const at::Tensor src = t.contiguous();
  at::Tensor out = at::empty_like(src);
  const float* in = src.data_ptr<float>();
  float* o = out.data_ptr<float>();
  at::parallel_for(0, src.numel(), int64_t{1} << 15, [&](int64_t b, int64_t e) { round_to_bf16(in + b, o + b, e - b); });
  return out;
}

// Differentiable as .to(kBFloat16).to(kFloat) is: the gradient passes through bf16 too.
struct Bf16Rounding : public torch::autograd::Function<Bf16Rounding> {
  static at::Tensor forward(torch::autograd::AutogradContext*, const at::Tensor& t) { return bf16_rounded_copy(t); }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext*, torch::autograd::variable_list g) {
    return {bf16_rounded_fp32(g[0])};
  }
};
}  // namespace

at::Tensor bf16_rounded_fp32(const at::Tensor& t) {
  if (!t.defined() || !t.is_floating_point()) return t;
  if (t.scalar_type() == at::kBFloat16) return t.to(at::kFloat);
  if (t.scalar_type() != at::kFloat || !t.is_cpu()) return t.to(at::kBFloat16).to(at::kFloat);
  return t.requires_grad() ? Bf16Rounding::apply(t) : bf16_rounded_copy(t);
}

at::Tensor linear_as(const RunPolicy& policy, const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
                     bool weight_rounded, const at::Tensor& scale) {
  const auto t = x.device().type();
  const CpuProducts k = policy.cpu_products;
  // (Under native autocast linear_product is at::linear in autocast's type, then the scale.)
  if (!policy.bf16_emulated(t) || x.scalar_type() == at::kDouble) return linear_product(x, weight, bias, k, scale);
  AutocastGuard fp32(t, Precision::kFloat32);
  const at::Tensor w = weight_rounded ? weight : bf16_rounded_fp32(weight);
  return linear_product(bf16_rounded_fp32(x), w, bf16_rounded_fp32(bias), k, scale);
}

at::Tensor mlp_as(const RunPolicy& policy, const at::Tensor& x, const at::Tensor& w1, const at::Tensor& b1, const at::Tensor& w2,
                  const at::Tensor& b2, const at::Tensor& scale) {
  if (autocast_enabled(x.device().type())) {
    const at::Tensor y = linear_as(policy, at::gelu(linear_as(policy, x, w1, b1)), w2, b2);
    return scale.defined() ? scale * y : y;
  }
  return mlp_product(x, w1, b1, w2, b2, policy.cpu_products, scale);
}

at::Tensor matmul_as(const RunPolicy& policy, const at::Tensor& a, const at::Tensor& b) {
  const auto t = a.device().type();
  if (!policy.bf16_emulated(t) || a.scalar_type() == at::kDouble) return batched_matmul(a, b, policy.cpu_products);
  AutocastGuard fp32(t, Precision::kFloat32);
  return batched_matmul(bf16_rounded_fp32(a), bf16_rounded_fp32(b), policy.cpu_products);
}

at::Tensor low_precision_weight(const RunPolicy& policy, c10::DeviceType device, const at::Tensor& w) {
  if (!w.defined() || w.scalar_type() != at::kFloat) return w;  // autocast casts fp32 only (fp64 stays)
  if (policy.bf16_emulated(device)) return bf16_rounded_fp32(w.detach());
  return w.detach().to(autocast_dtype(device));
}

}  // namespace vlmo
