// The numerical kernels of src/ops/: batched products, bf16 rounding and the products of emulated
// bf16, the fused path's attention kernels, the kept low-precision weights, CPU feature detection.
#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <torch/autograd.h>
#include <torch/version.h>

#include <cmath>
#include <cstring>
#include <functional>
#include <limits>

#include "ops/attention.h"
#include "ops/packed_linear.h"
#include "test_util.h"
#include "vlmo/cpu_features.h"
#include "vlmo/ops.h"
#include "vlmo/precision.h"
#include "vlmo/run_policy.h"

using namespace vlmo;
using vlmo::test::expect_error;

namespace {

std::vector<CpuProducts> backends() {
  std::vector<CpuProducts> b = {CpuProducts::kAten};
  if (onednn_built()) b.push_back(CpuProducts::kOneDnn);
  return b;
}

RunPolicy emulating_policy() {
  RunPolicy p;
  p.precision = Precision::kBFloat16;
  p.cpu_bf16 = CpuBf16Products::kEmulated;
  p.cpu_products = onednn_built() ? CpuProducts::kOneDnn : CpuProducts::kAten;
  return p;
}

// Attention as the formula says, in fp64: softmax(scale q k^T + bias, masked keys -inf) v, for
// the first Q queries of qkv (B, N, 3C) with H heads; (B, Q, C).
at::Tensor attention_fp64(const at::Tensor& qkv, int64_t Q, int64_t H, const at::Tensor& key_mask, const at::Tensor& bias) {
  const at::Tensor x = qkv.to(at::kDouble);
  const int64_t B = x.size(0), N = x.size(1), C = x.size(2) / 3, hd = C / H;
  const at::Tensor parts = x.reshape({B, N, 3, H, hd}).permute({2, 0, 3, 1, 4});  // (3, B, H, N, hd)
  const at::Tensor q = parts[0].narrow(2, 0, Q), k = parts[1], v = parts[2];
  at::Tensor logits = at::matmul(q, k.transpose(-2, -1)) / std::sqrt(static_cast<double>(hd));
  if (bias.defined()) logits = logits + bias.to(at::kDouble).narrow(1, 0, Q).unsqueeze(0);
  if (key_mask.defined())
    logits = logits.masked_fill(key_mask.reshape({B, 1, 1, N}) == 0, -std::numeric_limits<double>::infinity());
  return at::matmul(logits.softmax(-1), v).transpose(1, 2).reshape({B, Q, C});
}

}  // namespace

// vlmo::batched_matmul with each backend this build has (oneDNN for fp32 on the CPU, aten): the products and both
// gradients against fp64 at::matmul of the same values, on the layouts the attention layers pass
// (q and k as strided views of one qkv output, k transposed, one query row, the gradients'
// transposed operands), within 1e-5 x (1 + the largest value) per tensor: fp32 sums of at most 64
// products. fp64 and broadcast batches run at::matmul itself.
TEST(BatchedMatmul, MatchesFp64ProductsAndGradients) {
  for (const CpuProducts backend : backends()) {
    SCOPED_TRACE("backend " + cpu_products_name(backend));
    at::manual_seed(7);
    const int64_t B = 3, N = 29, H = 4, hd = 16, C = H * hd;
    const at::Tensor qkv = at::randn({B, N, 3 * C}).requires_grad_();
    const at::Tensor p = at::randn({B, H, N, N}).softmax(-1).requires_grad_();
    auto heads = [&](const at::Tensor& t, int64_t i) {  // (B, H, N, hd) views of the qkv output
      return t.reshape({B, N, 3, H, hd}).permute({2, 0, 3, 1, 4}).select(0, i);
    };
    struct Case {
      const char* name;
      std::function<std::pair<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&)> operands;
    };
    const std::vector<Case> cases = {
        {"q kT",
         [&](const at::Tensor& x, const at::Tensor&) { return std::make_pair(heads(x, 0), heads(x, 1).transpose(-2, -1)); }},
        {"one query row",
         [&](const at::Tensor& x, const at::Tensor&) {
           return std::make_pair(heads(x, 0).narrow(2, 0, 1), heads(x, 1).transpose(-2, -1));
         }},
        {"p v", [&](const at::Tensor& x, const at::Tensor& w) { return std::make_pair(w, heads(x, 2)); }},
        {"pT q", [&](const at::Tensor& x, const at::Tensor& w) { return std::make_pair(w.transpose(-2, -1), heads(x, 0)); }},
        {"3-D",
         [&](const at::Tensor& x, const at::Tensor& w) { return std::make_pair(w.flatten(0, 1), heads(x, 2).flatten(0, 1)); }},
    };
    for (const auto& c : cases) {
      SCOPED_TRACE(c.name);
      const auto [a, b] = c.operands(qkv, p);
      const at::Tensor out = batched_matmul(a, b, backend);
      const at::Tensor weight = at::randn(out.sizes());
      const auto grads = torch::autograd::grad({(out * weight).sum()}, {qkv, p}, {}, true, false, true);
      const at::Tensor qkv64 = qkv.detach().to(at::kDouble).requires_grad_(), p64 = p.detach().to(at::kDouble).requires_grad_();
      const auto [a64, b64] = c.operands(qkv64, p64);
      const at::Tensor ref = at::matmul(a64, b64);
      const auto ref_grads = torch::autograd::grad({(ref * weight.to(at::kDouble)).sum()}, {qkv64, p64}, {}, true, false, true);
      auto near = [](const at::Tensor& got, const at::Tensor& want) {
        if (!want.defined()) return !got.defined() || got.abs().max().item<double>() == 0;
        return (got.to(at::kDouble) - want).abs().max().item<double>() <= 1e-5 * (1 + want.abs().max().item<double>());
      };
      ASSERT_EQ(out.sizes(), ref.sizes());
      EXPECT_EQ(out.scalar_type(), at::kFloat);
      EXPECT_TRUE(near(out, ref)) << (out.to(at::kDouble) - ref).abs().max().item<double>();
      EXPECT_TRUE(near(grads[0], ref_grads[0])) << "gradient of the qkv output";
      EXPECT_TRUE(near(grads[1], ref_grads[1])) << "gradient of the weights";
    }
    // fp64 (the tests' exact reference) and broadcast batches: LibTorch's own product.
    const at::Tensor a64 = at::randn({2, 5, 3}, at::kDouble), b64 = at::randn({2, 3, 4}, at::kDouble);
    EXPECT_TRUE(at::equal(batched_matmul(a64, b64, backend), at::matmul(a64, b64)));
    const at::Tensor a = at::randn({2, 5, 3}), b1 = at::randn({1, 3, 4});
    EXPECT_TRUE(at::allclose(batched_matmul(a, b1, backend), at::matmul(a, b1)));
  }
  if (!onednn_built())
    expect_error([] { batched_matmul(at::ones({1, 2, 2}), at::ones({1, 2, 2}), CpuProducts::kOneDnn); }, {"no oneDNN"});
}

// vlmo::linear_product with each backend this build has: the output and the gradients of x, W, b
// and the output scale against fp64 gamma * at::linear of the same values, within 1e-5 x (1 + the
// largest value) per tensor, for a 3-d and a 2-d input, with and without a bias, with and without
// a scale (the blocks' layer scale, whose gradient comes from dyᵀ x and the weight, not from a kept
// output), an input that is a transposed view, and a weight that needs no gradient (frozen, as in
// the text stage). With oneDNN, the forward pass is one oneDNN product and the backward two (dx,
// dyᵀ x; the frozen weight without a scale: one); fp64 runs at::linear.
TEST(Ops, LinearProductMatchesFp64OutputAndGradients) {
  for (const CpuProducts backend : backends()) {
    SCOPED_TRACE("backend " + cpu_products_name(backend));
    at::manual_seed(5);
    struct Case {
      std::vector<int64_t> shape;
      bool bias, scale, transposed, frozen;
    };
    for (const Case& c : std::vector<Case>{{{3, 7, 40}, true, false, false, false},
                                           {{5, 40}, false, false, false, false},
                                           {{3, 7, 40}, true, true, false, false},
                                           {{5, 40}, false, true, false, false},
                                           {{40, 6}, true, false, true, false},
                                           {{2, 9, 40}, true, true, false, true}}) {
      SCOPED_TRACE(cat(c.shape.size(), "-d", c.bias ? ", bias" : "", c.scale ? ", scale" : "", c.transposed ? ", transposed" : "",
                       c.frozen ? ", frozen weight" : ""));
      const at::Tensor x0 = at::randn(c.shape).requires_grad_();
      const at::Tensor w = at::randn({48, 40}).requires_grad_(!c.frozen), b = at::randn({48}).requires_grad_(),
                       gamma = (at::rand({48}) + 0.05).requires_grad_();
      const at::Tensor x = c.transposed ? x0.t() : x0;
      const int64_t before = onednn_product_calls();
      const at::Tensor y = linear_product(x, w, c.bias ? b : at::Tensor(), backend, c.scale ? gamma : at::Tensor());
      const int64_t forward_calls = onednn_product_calls() - before;
      const at::Tensor weight = at::randn(y.sizes());
      std::vector<at::Tensor> inputs = {x0, b, gamma};
      if (!c.frozen) inputs.push_back(w);
      const auto grads = torch::autograd::grad({(y * weight).sum()}, inputs, {}, true, false, true);
      const int64_t backward_calls = onednn_product_calls() - before - forward_calls;
      const at::Tensor x64 = x0.detach().to(at::kDouble).requires_grad_(), w64 = w.detach().to(at::kDouble).requires_grad_(),
                       b64 = b.detach().to(at::kDouble).requires_grad_(), g64 = gamma.detach().to(at::kDouble).requires_grad_();
      at::Tensor want = at::linear(c.transposed ? x64.t() : x64, w64, c.bias ? b64 : at::Tensor());
      if (c.scale) want = g64 * want;
      std::vector<at::Tensor> inputs64 = {x64, b64, g64};
      if (!c.frozen) inputs64.push_back(w64);
      const auto want_grads = torch::autograd::grad({(want * weight.to(at::kDouble)).sum()}, inputs64, {}, true, false, true);
      auto near = [](const at::Tensor& got, const at::Tensor& expected) {
        if (!expected.defined()) return !got.defined() || got.abs().max().item<double>() == 0;
        return got.sizes() == expected.sizes() &&
               (got.to(at::kDouble) - expected).abs().max().item<double>() <= 1e-5 * (1 + expected.abs().max().item<double>());
      };
      EXPECT_EQ(y.scalar_type(), at::kFloat);
      EXPECT_TRUE(near(y, want)) << (y.to(at::kDouble) - want).abs().max().item<double>();
      for (size_t i = 0; i < grads.size(); ++i) EXPECT_TRUE(near(grads[i], want_grads[i])) << "gradient " << i;
      EXPECT_EQ(forward_calls, backend == CpuProducts::kOneDnn ? 1 : 0);
      EXPECT_EQ(backward_calls, backend == CpuProducts::kOneDnn ? (c.frozen && !c.scale ? 1 : 2) : 0);  // dscale needs dyᵀ x
    }
    const at::Tensor x64 = at::randn({4, 5}, at::kDouble), w64 = at::randn({3, 5}, at::kDouble);
    EXPECT_TRUE(at::equal(linear_product(x64, w64, at::Tensor(), backend), at::linear(x64, w64)));
  }
  if (!onednn_built())
    expect_error([] { linear_product(at::ones({2, 2}), at::ones({2, 2}), at::Tensor(), CpuProducts::kOneDnn); }, {"no oneDNN"});
}

// vlmo::mlp_product with each backend: gamma ⊙ (gelu(x W1ᵀ + b1) W2ᵀ + b2) and the gradients of
// all its inputs against fp64 at::linear / at::gelu of the same values (1e-5 x (1 + the largest
// value)), with and without the output scale, also with the first layer frozen. With oneDNN: 2
// products forward, 4 backward (dGELU, dyᵀ GELU, dx, dW1), 3 with the first layer frozen.
TEST(Ops, MlpProductMatchesFp64OutputAndGradients) {
  for (const CpuProducts backend : backends()) {
    for (const auto& [frozen, scaled] : std::vector<std::pair<bool, bool>>{{false, false}, {false, true}, {true, true}}) {
      SCOPED_TRACE(cat("backend ", cpu_products_name(backend), frozen ? ", first layer frozen" : "", scaled ? ", scaled" : ""));
      at::manual_seed(9);
      const at::Tensor x = at::randn({3, 5, 16}).requires_grad_(), w1 = at::randn({64, 16}).requires_grad_(!frozen),
                       b1 = at::randn({64}).requires_grad_(!frozen), w2 = at::randn({16, 64}).requires_grad_(),
                       b2 = at::randn({16}).requires_grad_(), gamma = (at::rand({16}) + 0.05).requires_grad_();
      const int64_t before = onednn_product_calls();
      const at::Tensor y = mlp_product(x, w1, b1, w2, b2, backend, scaled ? gamma : at::Tensor());
      const int64_t forward_calls = onednn_product_calls() - before;
      const at::Tensor weight = at::randn(y.sizes());
      std::vector<at::Tensor> inputs = {x, w2, b2, gamma};
      if (!frozen) inputs.insert(inputs.end(), {w1, b1});
      const auto grads = torch::autograd::grad({(y * weight).sum()}, inputs, {}, true, false, true);
      const int64_t backward_calls = onednn_product_calls() - before - forward_calls;
      std::vector<at::Tensor> inputs64;
      for (const at::Tensor& t : {x, w2, b2, gamma, w1, b1}) inputs64.push_back(t.detach().to(at::kDouble).requires_grad_());
      at::Tensor want = at::linear(at::gelu(at::linear(inputs64[0], inputs64[4], inputs64[5])), inputs64[1], inputs64[2]);
      if (scaled) want = inputs64[3] * want;
      inputs64.resize(inputs.size());
      const auto want_grads = torch::autograd::grad({(want * weight.to(at::kDouble)).sum()}, inputs64, {}, true, false, true);
      auto near = [](const at::Tensor& got, const at::Tensor& expected) {
        if (!expected.defined()) return !got.defined() || got.abs().max().item<double>() == 0;
        return got.sizes() == expected.sizes() &&
               (got.to(at::kDouble) - expected).abs().max().item<double>() <= 1e-5 * (1 + expected.abs().max().item<double>());
      };
      EXPECT_TRUE(near(y, want)) << (y.to(at::kDouble) - want).abs().max().item<double>();
      for (size_t i = 0; i < grads.size(); ++i) EXPECT_TRUE(near(grads[i], want_grads[i])) << "gradient " << i;
      EXPECT_EQ(forward_calls, backend == CpuProducts::kOneDnn ? 2 : 0);
      EXPECT_EQ(backward_calls, backend == CpuProducts::kOneDnn ? (frozen ? 3 : 4) : 0);
    }
  }
}

// recomputing_attention (fp32 training with oneDNN's products): the output and the gradients of q,
// k, v and the relative bias against the fp64 formula softmax(scale q kᵀ + bias, masked keys -inf) v,
// within 1e-5 x (1 + the largest value) per tensor, with padded keys, fewer queries than keys (q a
// narrowed view), with and without bias and mask. Forward runs 2 oneDNN products; backward 5: the
// probabilities' q kᵀ again (they are not kept), then dv, dp, dq and dk.
TEST(Ops, RecomputingAttentionMatchesFp64OutputAndGradients) {
  if (!onednn_built()) GTEST_SKIP() << "built without oneDNN";
  const int64_t B = 2, H = 3, N = 11, hd = 8;
  const double scale = 1.0 / std::sqrt(static_cast<double>(hd));
  for (const int64_t Q : {N, int64_t{4}}) {
    for (const bool with_bias : {true, false}) {
      for (const bool with_mask : {true, false}) {
        SCOPED_TRACE(cat(Q, " queries", with_bias ? ", bias" : "", with_mask ? ", mask" : ""));
        at::manual_seed(13);
        const at::Tensor q0 = at::randn({B, H, N, hd}).requires_grad_(), k = at::randn({B, H, N, hd}).requires_grad_(),
                         v = at::randn({B, H, N, hd}).requires_grad_(), bias = at::randn({H, N, N}).requires_grad_();
        at::Tensor mask = at::ones({B, N}, at::kLong);
        mask[1].narrow(0, N - 3, 3).fill_(0);
        const at::Tensor q = q0.narrow(2, 0, Q);
        const int64_t before = onednn_product_calls();
        const at::Tensor y =
            recomputing_attention(q, k, v, scale, with_mask ? mask : at::Tensor(), with_bias ? bias : at::Tensor());
        const int64_t forward_calls = onednn_product_calls() - before;
        const at::Tensor weight = at::randn(y.sizes());
        const auto grads = torch::autograd::grad({(y * weight).sum()}, {q0, k, v, bias}, {}, true, false, true);
        const int64_t backward_calls = onednn_product_calls() - before - forward_calls;
        std::vector<at::Tensor> in64;
        for (const at::Tensor& t : {q0, k, v, bias}) in64.push_back(t.detach().to(at::kDouble).requires_grad_());
        at::Tensor logits = at::matmul(in64[0].narrow(2, 0, Q) * scale, in64[1].transpose(-2, -1));
        if (with_bias) logits = logits + in64[3].narrow(1, 0, Q);
        if (with_mask) logits = logits.masked_fill(mask.reshape({B, 1, 1, N}) == 0, -std::numeric_limits<double>::infinity());
        const at::Tensor want = at::matmul(logits.softmax(-1), in64[2]);
        const auto want_grads = torch::autograd::grad({(want * weight.to(at::kDouble)).sum()}, in64, {}, true, false, true);
        auto near = [](const at::Tensor& got, const at::Tensor& expected) {
          if (!expected.defined()) return !got.defined() || got.abs().max().item<double>() == 0;
          return got.defined() && got.sizes() == expected.sizes() &&
                 (got.to(at::kDouble) - expected).abs().max().item<double>() <= 1e-5 * (1 + expected.abs().max().item<double>());
        };
        EXPECT_TRUE(near(y, want)) << (y.to(at::kDouble) - want).abs().max().item<double>();
        for (size_t i = 0; i < grads.size(); ++i) EXPECT_TRUE(near(grads[i], want_grads[i])) << "gradient " << i;
        EXPECT_EQ(forward_calls, 2);
        EXPECT_EQ(backward_calls, 5);
      }
    }
  }
}

// The emulated bf16 path's rounding (one pass in vlmo) is LibTorch's .to(kBFloat16).to(kFloat)
// bit for bit: ties to even, infinities, overflow to infinity, subnormals, -0, a strided input;
// NaN stays NaN (its bits differ between LibTorch versions: 1.13's vector path gives 0xFFFF); and
// the gradient passes through bf16 the same way.
TEST(Ops, Bf16RoundingIsLibTorchsBitForBit) {
  at::manual_seed(3);
  std::vector<uint32_t> bits = {0x00000000u, 0x80000000u, 0x3F808000u, 0x3F818000u, 0x3F807FFFu, 0x3F808001u,
                                0x7F7FFFFFu, 0xFF7F8000u, 0x7F800000u, 0xFF800000u, 0x7FC00000u, 0xFFC00001u,
                                0x7F800001u, 0x00000001u, 0x00008000u, 0x00018000u, 0x807FFFFFu};
  std::vector<float> special(bits.size());
  std::memcpy(special.data(), bits.data(), bits.size() * sizeof(float));
  const at::Tensor values = at::cat({at::from_blob(special.data(), {static_cast<int64_t>(special.size())}).clone(),
                                     at::randn({100000}) * at::pow(10.0, at::randint(-40, 38, {100000}))});
  const at::Tensor strided = values.narrow(0, 0, 100000).reshape({400, 250}).t();  // not contiguous
  for (const at::Tensor& x : {values, strided}) {
    const at::Tensor got = bf16_rounded_fp32(x), want = x.to(at::kBFloat16).to(at::kFloat);
    ASSERT_EQ(got.sizes(), want.sizes());
    const at::Tensor nan = at::isnan(want);
    EXPECT_TRUE(at::equal(at::isnan(got), nan));
    EXPECT_TRUE(
        at::equal(got.masked_fill(nan, 0).contiguous().view(at::kInt), want.masked_fill(nan, 0).contiguous().view(at::kInt)));
  }
  const at::Tensor x = at::randn({64, 33}).requires_grad_(), g = at::randn({64, 33}) * 1e3;
  const at::Tensor grad = torch::autograd::grad({bf16_rounded_fp32(x)}, {x}, {g})[0];
  EXPECT_TRUE(at::equal(grad.view(at::kInt), g.to(at::kBFloat16).to(at::kFloat).view(at::kInt)));
}

// Emulated bf16 products (CPUs without a fast bf16 GEMM): a product of bf16-rounded inputs summed
// in fp32, against an fp64 product of the rounded values (independent of any bf16 kernel), within
// 1e-5 x (1 + the largest value): fp32 sums of at most 48 exact products. Outside autocast
// linear_as is the policy's fp32 product (linear_product).
TEST(Ops, EmulatedBf16ProductsAreFp32SumsOfBf16RoundedValues) {
  const RunPolicy policy = emulating_policy();
  at::manual_seed(3);
  const at::Tensor x = at::randn({5, 7, 48}), w = at::randn({24, 48}), b = at::randn({24});
  const at::Tensor a = at::randn({2, 3, 7, 16}), v = at::randn({2, 3, 16, 9});
  auto rounded = [](const at::Tensor& t) { return t.to(at::kBFloat16).to(at::kDouble); };
  {
    AutocastGuard bf16(c10::kCPU, Precision::kBFloat16);
    ASSERT_TRUE(policy.bf16_emulated(c10::kCPU));
    const at::Tensor y = linear_as(policy, x, w, b), p = matmul_as(policy, a, v);
    EXPECT_EQ(y.scalar_type(), at::kFloat);
    const at::Tensor y_ref = at::linear(rounded(x), rounded(w), rounded(b)), p_ref = at::matmul(rounded(a), rounded(v));
    EXPECT_LE((y.to(at::kDouble) - y_ref).abs().max().item<double>(), 1e-5 * (1 + y_ref.abs().max().item<double>()));
    EXPECT_LE((p.to(at::kDouble) - p_ref).abs().max().item<double>(), 1e-5 * (1 + p_ref.abs().max().item<double>()));
    // The rounding happened: the unrounded product is further away than fp32 sums can explain.
    EXPECT_GT((at::linear(x.to(at::kDouble), w.to(at::kDouble), b.to(at::kDouble)) - y_ref).abs().max().item<double>(), 1e-3);
    // A kept weight (low_precision_weight) holds the rounded values in fp32 and is used as it is.
    const at::Tensor kept_w = low_precision_weight(policy, c10::kCPU, w);
    EXPECT_EQ(kept_w.scalar_type(), at::kFloat);
    EXPECT_TRUE(at::equal(kept_w, w.to(at::kBFloat16).to(at::kFloat)));
    EXPECT_TRUE(at::equal(linear_as(policy, x, kept_w, b, /*weight_rounded=*/true), y));
    RunPolicy native = policy;
    native.cpu_bf16 = CpuBf16Products::kNative;
    EXPECT_FALSE(native.bf16_emulated(c10::kCPU));
    EXPECT_EQ(low_precision_weight(native, c10::kCPU, w).scalar_type(), at::kBFloat16);
    EXPECT_EQ(low_precision_weight(native, c10::kCPU, w.to(at::kDouble)).scalar_type(), at::kDouble);  // fp64 stays
  }
  {
    AutocastGuard fp32(c10::kCPU, Precision::kFloat32);
    EXPECT_FALSE(policy.bf16_emulated(c10::kCPU));
    EXPECT_TRUE(at::equal(linear_as(policy, x, w, b), linear_product(x, w, b, policy.cpu_products)));  // off: fp32
  }
}

// The fused path's kernels against the fp64 formula: the CPU inference kernel (queries read in
// place from the qkv output, the bias in the logits' GEMM) and SDPA (where LibTorch has it), with a
// relative bias, padded keys and fewer queries than keys; within 1e-5 x (1 + max) per tensor (fp32
// sums of 16-term products and a softmax over 11 keys).
TEST(Ops, AttentionKernelsMatchTheFormula) {
  at::manual_seed(5);
  const int64_t B = 3, N = 11, H = 2, hd = 8, C = H * hd, Q = 4;
  const at::Tensor qkv = at::randn({B, N, 3 * C}), bias = at::randn({H, N, N});
  at::Tensor mask = at::ones({B, N}, at::kLong);
  mask[1].narrow(0, N - 3, 3).zero_();
  for (const int64_t queries : {N, Q}) {
    for (const bool with_bias : {false, true}) {
      SCOPED_TRACE(cat(queries, " queries", with_bias ? ", bias" : ""));
      const at::Tensor rel = with_bias ? bias : at::Tensor();
      const at::Tensor want = attention_fp64(qkv, queries, H, mask, rel);
      const double tol = 1e-5 * (1 + want.abs().max().item<double>());
      const at::Tensor got = cpu_inference_attention(qkv, queries, H, 1.0 / std::sqrt(static_cast<double>(hd)), mask, rel);
      ASSERT_EQ(got.sizes(), want.sizes());
      EXPECT_LE((got.to(at::kDouble) - want).abs().max().item<double>(), tol);
      if (!sdpa_built()) continue;
      const at::Tensor heads = qkv.reshape({B, N, 3, H, hd}).permute({2, 0, 3, 1, 4});
      const at::Tensor s = sdpa_attention(heads, queries, mask, rel, /*emulated_bf16=*/false);
      ASSERT_EQ(s.sizes(), want.sizes());
      EXPECT_LE((s.to(at::kDouble) - want).abs().max().item<double>(), tol);
    }
  }
  if (!sdpa_built()) expect_error([&] { sdpa_attention(qkv, Q, mask, bias, false); }, {"LibTorch >= 2"});
}

// PackedLinear against at::linear (and GELU): several row counts on one packed weight, with and
// without bias; within 1e-5 x (1 + max) (fp32 sums of 40 products in another order).
TEST(Ops, PackedLinearIsLinear) {
  if (!onednn_built()) GTEST_SKIP() << "built without oneDNN";
  at::manual_seed(3);
  const at::Tensor w = at::randn({48, 40}), b = at::randn({48});
  for (const bool gelu : {false, true}) {
    for (const bool bias : {false, true}) {
      const PackedLinear p(w, bias, gelu);
      EXPECT_TRUE(p.packs(w));
      for (const auto& shape : std::vector<std::vector<int64_t>>{{3, 7, 40}, {5, 40}, {1, 40}, {3, 7, 40}}) {
        SCOPED_TRACE(cat(gelu ? "gelu " : "", bias ? "bias " : "", shape.size(), "-d, ", shape[0], " rows"));
        const at::Tensor x = at::randn(shape);
        at::Tensor want = at::linear(x, w, bias ? b : at::Tensor());
        if (gelu) want = at::gelu(want);
        const int64_t before = packed_linear_calls();
        const at::Tensor got = p.forward(x, bias ? b : at::Tensor());
        ASSERT_TRUE(got.defined());
        EXPECT_EQ(packed_linear_calls() - before, 1);
        ASSERT_EQ(got.sizes(), want.sizes());
        EXPECT_LE((got - want).abs().max().item<double>(), 1e-5 * (1 + want.abs().max().item<double>()));
      }
      EXPECT_FALSE(p.forward(at::randn({2, 40}), bias ? at::Tensor() : b).defined());  // not the bias it was made for
    }
  }
  at::Tensor changed = w.clone();
  const PackedLinear p(changed, true, false);
  changed.add_(1);
  EXPECT_FALSE(p.packs(changed));
  EXPECT_FALSE(p.packs(w));
}

// Native bf16 on the CPU: SDPA adds the relative bias in fp32, as the official adds its fp32 bias.
// q = k = 0, so the logits are the bias: 256 + {0, 0.5, 1, 1.5}, whose steps bf16 (spacing 2 at
// 256) would erase to {256, 256, 256, 258}; v holds one-hot rows, so the output is the attention
// probabilities: softmax({0, 0.5, 1, 1.5}) = {0.1015, 0.1674, 0.2760, 0.4551} in fp32, where a
// bf16 bias gives softmax({0, 0, 0, 2}) = {0.0996, 0.0996, 0.0996, 0.7361}.
TEST(Ops, SdpaAddsTheBiasInFp32UnderBf16) {
  if (!sdpa_built()) GTEST_SKIP() << "LibTorch " << TORCH_VERSION << " has no scaled_dot_product_attention";
  const int64_t N = 4, hd = 4;
  at::Tensor qkv = at::zeros({3, 1, 1, N, hd});  // (q k v, B, H, N, hd)
  qkv[2][0][0].copy_(at::eye(N));
  const at::Tensor bias = (256 + at::arange(N, at::kFloat) * 0.5).expand({1, N, N}).contiguous();  // (H, N, N)
  const at::Tensor out = sdpa_attention(qkv.to(at::kBFloat16), N, at::Tensor(), bias, /*emulated_bf16=*/false);
  const at::Tensor want = at::softmax(at::arange(N, at::kFloat) * 0.5, 0).expand({N, N});
  EXPECT_LE((out[0].to(at::kFloat) - want).abs().max().item<double>(), 4e-3) << out[0];
}

// /proc/cpuinfo as two kinds of these machines print it (first processor's lines; flags shortened).
TEST(CpuFeatures, ParsedFromCpuinfoWithTheWidestIsa) {
  const auto zen5 = parse_cpuinfo(
      "processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC\nflags\t\t: fpu sse2 avx2 fma avx512f avx512dq "
      "avx512bw avx512vl avx_vnni avx512_bf16 avx512_vnni\n\nprocessor\t: 1\nmodel name\t: other\nflags\t\t: fpu\n");
  EXPECT_EQ(zen5.model, "AMD EPYC");
  EXPECT_EQ(zen5.features, (std::vector<std::string>{"avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512_vnni",
                                                     "avx512_bf16", "avx_vnni"}));
  EXPECT_EQ(zen5.widest(), "avx512_bf16");
  const auto avx2 = parse_cpuinfo("model name\t: Intel(R) Xeon(R) CPU @ 2.20GHz\nflags\t\t: sse4_2 avx avx2 fma\n");
  EXPECT_EQ(avx2.model, "Intel(R) Xeon(R) CPU @ 2.20GHz");
  EXPECT_EQ(avx2.widest(), "avx2");
  EXPECT_TRUE(avx2.has("fma"));
  EXPECT_FALSE(avx2.has("avx512f"));
  const auto amx = parse_cpuinfo("flags: avx2 fma avx512f avx512bw avx512vl avx512dq avx512_bf16 amx_bf16 amx_tile amx_int8\n");
  EXPECT_EQ(amx.widest(), "amx");
  EXPECT_EQ(amx.model, "unknown");
  EXPECT_EQ(parse_cpuinfo("").widest(), "baseline");
}
