#include <ATen/ATen.h>
#include <ATen/record_function.h>
#include <torch/csrc/autograd/custom_function.h>

#include <cstring>
#include <optional>
#include <string>

#include "ops/onednn_matmul.h"
#include "vlmo/error.h"
#include "vlmo/ops.h"
#include "vlmo/precision.h"

namespace vlmo {

#if VLMO_HAVE_DNNL
dnnl::engine& onednn_cpu_engine() {
  static dnnl::engine e(dnnl::engine::kind::cpu, 0);
  return e;
}

std::optional<dnnl::matmul::primitive_desc> fast_matmul_desc(const dnnl::memory::desc& src, const dnnl::memory::desc& weights,
                                                             const dnnl::memory::desc& bias, const dnnl::memory::desc& dst,
                                                             const dnnl::primitive_attr& attr) {
  try {
#if DNNL_VERSION_MAJOR >= 3
    dnnl::matmul::primitive_desc pd(onednn_cpu_engine(), src, weights, bias, dst, attr);
#else
    dnnl::matmul::primitive_desc pd(dnnl::matmul::desc(src, weights, bias, dst), attr, onednn_cpu_engine());
#endif
    if (std::strncmp(pd.impl_info_str(), "ref", 3) == 0) return std::nullopt;
    return pd;
  } catch (const dnnl::error&) {
    return std::nullopt;
  }
}
#endif

namespace {

#if VLMO_HAVE_DNNL

dnnl::memory::dims dims_of(at::IntArrayRef v) { return dnnl::memory::dims(v.begin(), v.end()); }

// A GEMM kernel reads a matrix whose rows or columns are contiguous; anything else is copied.
bool gemm_layout(const at::Tensor& t) {
  const int64_t d = t.dim();
  for (int64_t i = 0; i < d; ++i)
    if (t.stride(i) < 0 || (t.size(i) > 1 && t.stride(i) == 0)) return false;
  const int64_t rows = t.size(d - 2), cols = t.size(d - 1);
  const bool row_major = t.stride(d - 1) == 1 && t.stride(d - 2) >= std::max<int64_t>(cols, 1);
  const bool col_major = t.stride(d - 2) == 1 && t.stride(d - 1) >= std::max<int64_t>(rows, 1);
  return row_major || col_major;
}

dnnl::memory::desc describe(const at::Tensor& t) {
  return dnnl::memory::desc(dims_of(t.sizes()), dnnl::memory::data_type::f32, dims_of(t.strides()));
}

std::optional<dnnl::matmul::primitive_desc> matmul_desc(const at::Tensor& a, const at::Tensor& b, const at::Tensor& c) {
  return fast_matmul_desc(describe(a), describe(b), dnnl::memory::desc(), describe(c));
}

// c = a b through oneDNN; undefined when oneDNN offers no fast kernel for these layouts.
at::Tensor onednn_matmul(at::Tensor a, at::Tensor b) {
  if (!gemm_layout(a)) a = a.contiguous();
  if (!gemm_layout(b)) b = b.contiguous();
  std::vector<int64_t> sizes = a.sizes().vec();
  sizes.back() = b.size(-1);
  at::Tensor c = at::empty(sizes, a.options());
  auto pd = matmul_desc(a, b, c);
  if (!pd) {
    a = a.contiguous();
    b = b.contiguous();
    pd = matmul_desc(a, b, c);
    if (!pd) return at::Tensor();
  }
  dnnl::matmul prim(*pd);
  dnnl::stream stream(onednn_cpu_engine());
  dnnl::memory am(pd->src_desc(), onednn_cpu_engine(), a.data_ptr()), bm(pd->weights_desc(), onednn_cpu_engine(), b.data_ptr()),
      cm(pd->dst_desc(), onednn_cpu_engine(), c.data_ptr());
  prim.execute(stream, {{DNNL_ARG_SRC, am}, {DNNL_ARG_WEIGHTS, bm}, {DNNL_ARG_DST, cm}});
  stream.wait();
  return c;
}
#else
at::Tensor onednn_matmul(const at::Tensor&, const at::Tensor&) { return at::Tensor(); }
#endif

bool onednn_applies(const at::Tensor& a, const at::Tensor& b, CpuProducts backend) {
  if (backend != CpuProducts::kOneDnn || !a.is_cpu() || !b.is_cpu()) return false;
  if (a.scalar_type() != at::kFloat || b.scalar_type() != at::kFloat) return false;
  if (autocast_enabled(c10::DeviceType::CPU)) return false;  // autocast decides the product's type
  if (a.dim() != b.dim() || a.dim() < 3 || a.dim() > 4) return false;
  if (a.size(-1) != b.size(-2) || a.numel() == 0 || b.numel() == 0) return false;
  for (int64_t i = 0; i + 2 < a.dim(); ++i)
    if (a.size(i) != b.size(i)) return false;
  return true;
}

// For operands onednn_applies() accepted (batched_matmul checks, the backward's products check
// again through it): oneDNN, or at::matmul where it has no fast kernel for their layouts.
at::Tensor product(const at::Tensor& a, const at::Tensor& b) {
  RECORD_FUNCTION("vlmo::onednn_matmul", std::vector<c10::IValue>({a, b}));
  at::Tensor c = onednn_matmul(a, b);
  return c.defined() ? c : at::matmul(a, b);
}

// The gradients are products of the same kind: dA = dC Bᵀ, dB = Aᵀ dC.
struct BatchedMatmul : public torch::autograd::Function<BatchedMatmul> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& a, const at::Tensor& b) {
    ctx->save_for_backward({a, b});
    return product(a, b);
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx, torch::autograd::variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor &a = saved[0], &b = saved[1], &g = grads[0];
    at::Tensor ga, gb;
    if (ctx->needs_input_grad(0)) ga = batched_matmul(g, b.transpose(-2, -1), CpuProducts::kOneDnn);
    if (ctx->needs_input_grad(1)) gb = batched_matmul(a.transpose(-2, -1), g, CpuProducts::kOneDnn);
    return {ga, gb};
  }
};

}  // namespace

at::Tensor batched_matmul(const at::Tensor& a, const at::Tensor& b, CpuProducts backend) {
  if (backend == CpuProducts::kOneDnn && !onednn_built())
    throw Error(
        "batched products: oneDNN was asked for, but this build has none (libdnnl-dev was not found when it was configured)");
  if (!onednn_applies(a, b, backend)) return at::matmul(a, b);
  if (!a.requires_grad() && !b.requires_grad()) return product(a, b);
  return BatchedMatmul::apply(a, b);
}

bool onednn_built() { return VLMO_HAVE_DNNL != 0; }

}  // namespace vlmo
