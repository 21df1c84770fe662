// PackedLinear (src/ops/packed_linear.h): one oneDNN matmul primitive per row count, all sharing
// the weight reordered once into the layout the first one chose.
#include "ops/packed_linear.h"

#include <ATen/ATen.h>
#include <ATen/record_function.h>

#include <atomic>
#include <map>
#include <mutex>
#include <optional>
#include <unordered_map>
#include <vector>

#include "ops/onednn_matmul.h"
#include "vlmo/error.h"

namespace vlmo {

namespace {
std::atomic<int64_t> g_calls{0};
}  // namespace

int64_t packed_linear_calls() { return g_calls.load(); }

#if VLMO_HAVE_DNNL
namespace {
using dnnl::memory;
using tag = memory::format_tag;
using dt = memory::data_type;
}  // namespace

struct PackedLinear::Impl {
  at::Tensor source;  // the weight packed (kept to recognise it; its values are in `weights`)
  int64_t version = -1, in = 0, out = 0;
  bool bias = false, gelu = false, usable = true;
  memory::desc weights_desc;  // the blocked layout, chosen with the first row count
  memory weights;             // the packed weight
  at::Tensor in_place;        // oneDNN 3: the weight read in place (see for_rows)
  std::mutex mutex;
  struct Kernel {
    dnnl::matmul::primitive_desc pd;
    dnnl::matmul primitive;
  };
  std::map<int64_t, std::shared_ptr<const Kernel>> by_rows;  // null: no fast kernel for that many rows

  dnnl::primitive_attr attr() const {
    dnnl::primitive_attr a;
    a.set_scratchpad_mode(dnnl::scratchpad_mode::user);  // each call its own: calls may run concurrently
    if (gelu) {
      dnnl::post_ops po;
#if DNNL_VERSION_MAJOR >= 3
      po.append_eltwise(dnnl::algorithm::eltwise_gelu_erf, 0.f, 0.f);
#else
      po.append_eltwise(1.f, dnnl::algorithm::eltwise_gelu_erf, 0.f, 0.f);
#endif
      a.set_post_ops(po);
    }
    return a;
  }

  std::optional<dnnl::matmul::primitive_desc> describe(int64_t rows, const memory::desc& w) const {
    const memory::desc src({rows, in}, dt::f32, tag::ab), dst({rows, out}, dt::f32, tag::ab);
    const memory::desc b = bias ? memory::desc({1, out}, dt::f32, tag::ab) : memory::desc();
    return fast_matmul_desc(src, w, b, dst, attr());  // nullopt: at::linear is the better kernel
  }

  static std::shared_ptr<const Kernel> kernel(const std::optional<dnnl::matmul::primitive_desc>& pd) {
    return pd ? std::make_shared<const Kernel>(Kernel{*pd, dnnl::matmul(*pd)}) : nullptr;
  }

  // The kernel for `rows` rows (made, and on the first call the weight packed, under the mutex).
  std::shared_ptr<const Kernel> for_rows(int64_t rows) {
    std::lock_guard<std::mutex> lock(mutex);
    if (!usable) return nullptr;
    auto it = by_rows.find(rows);
    if (it != by_rows.end()) return it->second;
    if (by_rows.size() >= 32) by_rows.clear();  // many batch shapes: keep the map small
    if (!weights) {
#if DNNL_VERSION_MAJOR >= 3
      // On oneDNN 3.7 (Debian 13) products through the layout format_tag::any chose came out
      // wrong in a standalone check (errors of ~10 on values of ~10; 2.6 is exact): there the
      // weight is read in place, (out, in) row-major being (in, out) column-major (tag ba), which
      // measured ~10 % slower than the packed layout on 2.6.
      const auto first = describe(rows, memory::desc({in, out}, dt::f32, tag::ba));
      if (!first) {
        usable = false;
        return nullptr;
      }
      weights_desc = first->weights_desc();
      in_place = source.contiguous();
      weights = memory(weights_desc, onednn_cpu_engine(), in_place.data_ptr());
#else
      const auto first = describe(rows, memory::desc({in, out}, dt::f32, tag::any));
      if (!first) {
        usable = false;
        return nullptr;
      }
      weights_desc = first->weights_desc();
      weights = memory(weights_desc, onednn_cpu_engine());
      // (out, in) row-major is (in, out) column-major: tag ba.
      const at::Tensor w = source.contiguous();
      memory plain(memory::desc({in, out}, dt::f32, tag::ba), onednn_cpu_engine(), w.data_ptr());
      dnnl::stream s(onednn_cpu_engine());
      dnnl::reorder(plain, weights).execute(s, plain, weights);
      s.wait();
#endif
      return by_rows.emplace(rows, kernel(first)).first->second;
    }
    return by_rows.emplace(rows, kernel(describe(rows, weights_desc))).first->second;
  }
};

PackedLinear::PackedLinear(const at::Tensor& weight, bool bias, bool gelu) : impl_(std::make_shared<Impl>()) {
  if (!weight.is_cpu() || weight.scalar_type() != at::kFloat || weight.dim() != 2)
    throw Error("PackedLinear: the weight must be a 2-d fp32 CPU tensor");
  impl_->source = weight.detach();
  impl_->version = static_cast<int64_t>(weight._version());
  impl_->in = weight.size(1), impl_->out = weight.size(0);
  impl_->bias = bias, impl_->gelu = gelu;
}

bool PackedLinear::packs(const at::Tensor& weight) const {
  return weight.data_ptr() == impl_->source.data_ptr() && static_cast<int64_t>(weight._version()) == impl_->version &&
         weight.sizes() == impl_->source.sizes();
}

at::Tensor PackedLinear::forward(const at::Tensor& x, const at::Tensor& bias) const {
  if (!x.is_cpu() || x.scalar_type() != at::kFloat || x.size(-1) != impl_->in || bias.defined() != impl_->bias)
    return at::Tensor();
  const at::Tensor src = x.contiguous();
  const int64_t rows = src.numel() / impl_->in;
  if (rows == 0) return at::Tensor();
  const auto k = impl_->for_rows(rows);
  if (!k) return at::Tensor();
  const dnnl::matmul::primitive_desc& pd = k->pd;
  RECORD_FUNCTION("vlmo::packed_linear", std::vector<c10::IValue>({x}));
  std::vector<int64_t> sizes = src.sizes().vec();
  sizes.back() = impl_->out;
  at::Tensor y = at::empty(sizes, src.options());
  at::Tensor scratch = at::empty({static_cast<int64_t>(pd.scratchpad_desc().get_size())}, src.options().dtype(at::kByte));
  const at::Tensor b = bias.defined() ? bias.detach().contiguous() : at::Tensor();
  dnnl::stream s(onednn_cpu_engine());
  std::unordered_map<int, memory> args = {
      {DNNL_ARG_SRC, memory(pd.src_desc(), onednn_cpu_engine(), src.data_ptr())},
      {DNNL_ARG_WEIGHTS, impl_->weights},
      {DNNL_ARG_DST, memory(pd.dst_desc(), onednn_cpu_engine(), y.data_ptr())},
      {DNNL_ARG_SCRATCHPAD, memory(pd.scratchpad_desc(), onednn_cpu_engine(), scratch.data_ptr())}};
  if (b.defined()) args.emplace(DNNL_ARG_BIAS, memory(pd.bias_desc(), onednn_cpu_engine(), b.data_ptr()));
  k->primitive.execute(s, args);
  s.wait();
  ++g_calls;
  return y;
}
#else
struct PackedLinear::Impl {};
PackedLinear::PackedLinear(const at::Tensor&, bool, bool) {}
bool PackedLinear::packs(const at::Tensor&) const { return false; }
at::Tensor PackedLinear::forward(const at::Tensor&, const at::Tensor&) const { return at::Tensor(); }
#endif

}  // namespace vlmo
