#include <ATen/ATen.h>
#include <ATen/record_function.h>
#include <torch/csrc/autograd/custom_function.h>

#include <atomic>
#include <cstring>
#include <optional>
#include <string>
#include <unordered_map>

#include "ops/onednn_matmul.h"
#include "vlmo/error.h"
#include "vlmo/ops.h"
#include "vlmo/precision.h"

namespace vlmo {

namespace {
std::atomic<int64_t> g_products{0};
}  // namespace

int64_t onednn_product_calls() { return g_products.load(); }

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

std::optional<dnnl::matmul::primitive_desc> matmul_desc(const at::Tensor& a, const at::Tensor& b, const at::Tensor& bias,
                                                        const at::Tensor& c) {
  dnnl::memory::desc bd;
  if (bias.defined()) {
    dnnl::memory::dims d(c.dim(), 1);
    d.back() = bias.size(0);
    dnnl::memory::dims strides(c.dim(), bias.size(0));  // (1, ..., 1, N), contiguous
    strides.back() = 1;
    bd = dnnl::memory::desc(d, dnnl::memory::data_type::f32, strides);
  }
  return fast_matmul_desc(describe(a), describe(b), bd, describe(c));
}
}  // namespace

at::Tensor onednn_product(at::Tensor a, at::Tensor b, const at::Tensor& bias) {
  if (!gemm_layout(a)) a = a.contiguous();
  if (!gemm_layout(b)) b = b.contiguous();
  const at::Tensor bc = bias.defined() ? bias.contiguous() : bias;
  std::vector<int64_t> sizes = a.sizes().vec();
  sizes.back() = b.size(-1);
  at::Tensor c = at::empty(sizes, a.options());
  auto pd = matmul_desc(a, b, bc, c);
  if (!pd) {
    a = a.contiguous();
    b = b.contiguous();
    pd = matmul_desc(a, b, bc, c);
    if (!pd) return at::Tensor();
  }
  dnnl::matmul prim(*pd);
  dnnl::stream stream(onednn_cpu_engine());
  const dnnl::engine& e = onednn_cpu_engine();
  std::unordered_map<int, dnnl::memory> args = {{DNNL_ARG_SRC, dnnl::memory(pd->src_desc(), e, a.data_ptr())},
                                                {DNNL_ARG_WEIGHTS, dnnl::memory(pd->weights_desc(), e, b.data_ptr())},
                                                {DNNL_ARG_DST, dnnl::memory(pd->dst_desc(), e, c.data_ptr())}};
  if (bc.defined()) args.emplace(DNNL_ARG_BIAS, dnnl::memory(pd->bias_desc(), e, bc.data_ptr()));
  prim.execute(stream, args);
  stream.wait();
  ++g_products;
  return c;
}

namespace {
at::Tensor onednn_matmul(const at::Tensor& a, const at::Tensor& b) { return onednn_product(a, b, at::Tensor()); }
#else
// (Without oneDNN, at::matmul.)
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
