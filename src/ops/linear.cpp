// The linear layers' products (vlmo/ops.h: linear_product, mlp_product): fp32 on the CPU through
// oneDNN's matmul primitive, forward and backward, where LibTorch's at::linear runs the BLAS's GEMM
// (OpenBLAS on Debian, about half of oneDNN's rate on the base model's shapes on AVX-512), and
// with less kept for backward than composing LibTorch's functions keeps (docs/performance.md).
#include <ATen/ATen.h>
#include <ATen/record_function.h>
#include <torch/csrc/autograd/custom_function.h>

#include "ops/onednn_matmul.h"
#include "vlmo/error.h"
#include "vlmo/ops.h"
#include "vlmo/precision.h"

namespace vlmo {

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

bool fp32_cpu(const at::Tensor& t) { return t.is_cpu() && t.scalar_type() == at::kFloat; }

// x runs through oneDNN: an fp32 CPU input outside CPU autocast (which decides the product's type).
bool onednn_applies(const at::Tensor& x, CpuProducts backend) {
  return backend == CpuProducts::kOneDnn && fp32_cpu(x) && x.dim() >= 1 && x.numel() > 0 &&
         !autocast_enabled(c10::DeviceType::CPU);
}
// An fp32 CPU vector of n values, or undefined.
bool vector_fits(const at::Tensor& v, int64_t n) { return !v.defined() || (fp32_cpu(v) && v.dim() == 1 && v.size(0) == n); }
// W (out, in), b and the output scale (out; undefined: none): an fp32 CPU layer for inputs of `in` features.
bool layer_fits(const at::Tensor& w, const at::Tensor& b, const at::Tensor& scale, int64_t in) {
  return fp32_cpu(w) && w.dim() == 2 && w.size(1) == in && w.numel() > 0 && vector_fits(b, w.size(0)) &&
         vector_fits(scale, w.size(0));
}

// LibTorch's own: gamma ⊙ (x Wᵀ + b).
at::Tensor aten_layer(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b, const at::Tensor& gamma) {
  const at::Tensor y = at::linear(x, w, b);
  return gamma.defined() ? gamma * y : y;
}

#if VLMO_HAVE_DNNL
// a b (+ bias) of 2-d operands through oneDNN, or LibTorch's product where it has no fast kernel.
at::Tensor product(const at::Tensor& a, const at::Tensor& b, const at::Tensor& bias = at::Tensor()) {
  RECORD_FUNCTION("vlmo::onednn_linear", std::vector<c10::IValue>({a, b}));
  const at::Tensor c = onednn_product(a, b, bias);
  if (c.defined()) return c;
  return bias.defined() ? at::addmm(bias, a, b) : at::mm(a, b);
}

// gamma ⊙ (x Wᵀ + b) -> (..., out), gamma and b undefined for none: the rows of x times W (out,
// in) read as its transpose, (in, out) column-major.
at::Tensor rows_times_weight(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b, const at::Tensor& gamma) {
  std::vector<int64_t> sizes = x.sizes().vec();
  sizes.back() = w.size(0);
  at::Tensor y = product(x.reshape({-1, x.size(-1)}), w.t(), b).view(sizes);
  return gamma.defined() ? y.mul_(gamma) : y;
}

// The autograd functions below take every tensor defined (LibTorch 1.13's autograd::Function
// takes no undefined one): a layer without bias or output scale gets zeros or ones that need no
// gradient, and Flags says which are real.
struct Flags {
  bool bias = false, scale = false;
};
at::Tensor or_filled(const at::Tensor& v, const at::Tensor& w, double value) {
  return v.defined() ? v : at::full({w.size(0)}, value, w.options().requires_grad(false));
}
void save(AutogradContext* ctx, Flags f) {
  ctx->saved_data["bias"] = f.bias;
  ctx->saved_data["scale"] = f.scale;
}
Flags saved_flags(AutogradContext* ctx) { return {ctx->saved_data["bias"].toBool(), ctx->saved_data["scale"].toBool()}; }

// The gradients of y = gamma ⊙ (a Wᵀ + b) for dy = g (2-d), those asked for (da, dW, db, dgamma):
// da = (gamma ⊙ g) W, and from G = gᵀ a (one product): dW = gamma ⊙ G (row j times gamma_j),
// db = gamma ⊙ Σ g, dgamma_j = Σ_i g_ij y_ij = Σ_k W_jk G_jk + b_j Σ_i g_ij (y itself is not kept).
std::array<at::Tensor, 4> layer_gradients(const at::Tensor& g, const at::Tensor& a, const at::Tensor& w, const at::Tensor& b,
                                          const at::Tensor& gamma, Flags f, std::array<bool, 4> need) {
  std::array<at::Tensor, 4> d;
  if (need[0]) d[0] = product(f.scale ? g * gamma : g, w);
  if (need[1] || (f.scale && need[3])) {
    const at::Tensor G = product(g.t(), a.reshape({-1, w.size(1)}));
    if (need[1]) d[1] = f.scale ? G * gamma.unsqueeze(1) : G;
    if (f.scale && need[3]) d[3] = f.bias ? (G * w).sum(1) + b * g.sum(0) : (G * w).sum(1);
  }
  if (f.bias && need[2]) d[2] = f.scale ? g.sum(0) * gamma : g.sum(0);
  return d;
}

// gamma ⊙ (x Wᵀ + b), keeping x (and the parameters) for backward.
struct Layer : public torch::autograd::Function<Layer> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& w, const at::Tensor& b,
                            const at::Tensor& gamma, Flags f) {
    ctx->save_for_backward({x, w, b, gamma});
    save(ctx, f);
    return rows_times_weight(x, w, f.bias ? b : at::Tensor(), f.scale ? gamma : at::Tensor());
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto s = ctx->get_saved_variables();
    const auto need = [&](size_t i) { return ctx->needs_input_grad(i); };
    auto d = layer_gradients(grads[0].reshape({-1, s[1].size(0)}), s[0], s[1], s[2], s[3], saved_flags(ctx),
                             {need(0), need(1), need(2), need(3)});
    if (d[0].defined()) d[0] = d[0].view(s[0].sizes());
    return {d[0], d[1], d[2], d[3], at::Tensor()};
  }
};

// gamma ⊙ (gelu(x W1ᵀ + b1) W2ᵀ + b2), keeping for backward x and the pre-activation h only:
// GELU's output (4C a token, as large as h) is computed again in backward for dW2 and dgamma,
// where composing the layers keeps it from forward to backward.
struct Mlp : public torch::autograd::Function<Mlp> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& w1, const at::Tensor& b1,
                            const at::Tensor& w2, const at::Tensor& b2, const at::Tensor& gamma, Flags f) {
    const at::Tensor h = rows_times_weight(x, w1, b1, at::Tensor());
    ctx->save_for_backward({x, w1, h, w2, b2, gamma});
    save(ctx, f);
    return rows_times_weight(at::gelu(h), w2, b2, f.scale ? gamma : at::Tensor());
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto s = ctx->get_saved_variables();
    const at::Tensor &x = s[0], &w1 = s[1], &w2 = s[3];
    const at::Tensor h = s[2].reshape({-1, w1.size(0)});
    const auto need = [&](size_t i) { return ctx->needs_input_grad(i); };
    const bool first = need(0) || need(1) || need(2);
    // GELU's output again, where dW2 or dgamma needs it (layer_gradients reads `a` only for them).
    const at::Tensor a = need(3) || need(5) ? at::gelu(h) : at::Tensor();
    const auto d2 = layer_gradients(grads[0].reshape({-1, w2.size(0)}), a, w2, s[4], s[5], saved_flags(ctx),
                                    {first, need(3), need(4), need(5)});
    std::array<at::Tensor, 4> d1;
    if (first)
      d1 = layer_gradients(at::gelu_backward(d2[0], h), x, w1, at::Tensor(), at::Tensor(), {true, false},
                           {need(0), need(1), need(2), false});
    if (d1[0].defined()) d1[0] = d1[0].view(x.sizes());
    return {d1[0], d1[1], d1[2], d2[1], d2[2], d2[3], at::Tensor()};
  }
};
#endif

}  // namespace

at::Tensor linear_product(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias, CpuProducts backend,
                          const at::Tensor& scale) {
  if (backend == CpuProducts::kOneDnn && !onednn_built())
    throw Error(
        "linear layers: oneDNN was asked for, but this build has none (libdnnl-dev was not found when it was configured)");
  if (!onednn_applies(x, backend) || !layer_fits(weight, bias, scale, x.size(-1))) return aten_layer(x, weight, bias, scale);
#if VLMO_HAVE_DNNL
  const bool grads =
      at::GradMode::is_enabled() && (x.requires_grad() || weight.requires_grad() || (bias.defined() && bias.requires_grad()) ||
                                     (scale.defined() && scale.requires_grad()));
  if (!grads) return rows_times_weight(x, weight, bias, scale);
  return Layer::apply(x, weight, or_filled(bias, weight, 0), or_filled(scale, weight, 1), Flags{bias.defined(), scale.defined()});
#else
  return aten_layer(x, weight, bias, scale);
#endif
}

at::Tensor mlp_product(const at::Tensor& x, const at::Tensor& w1, const at::Tensor& b1, const at::Tensor& w2,
                       const at::Tensor& b2, CpuProducts backend, const at::Tensor& scale) {
#if VLMO_HAVE_DNNL
  const bool grads =
      at::GradMode::is_enabled() && (x.requires_grad() || w1.requires_grad() || b1.requires_grad() || w2.requires_grad() ||
                                     b2.requires_grad() || (scale.defined() && scale.requires_grad()));
  if (grads && b1.defined() && b2.defined() && onednn_applies(x, backend) && layer_fits(w1, b1, at::Tensor(), x.size(-1)) &&
      layer_fits(w2, b2, scale, w1.size(0)))
    return Mlp::apply(x, w1, b1, w2, b2, or_filled(scale, w2, 1), Flags{true, scale.defined()});
#endif
  return linear_product(at::gelu(linear_product(x, w1, b1, backend)), w2, b2, backend, scale);
}

}  // namespace vlmo
