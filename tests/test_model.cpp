// src/model/: relative positions, the model's passes and their attention and product paths,
// precision, activation checkpointing, the run policy, int8 quantisation and the config.
#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <torch/autograd.h>
#include <torch/version.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <functional>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>

#include "model/model_internals.h"
#include "ops/packed_linear.h"
#include "test_util.h"
#include "vlmo/checkpoint.h"
#include "vlmo/objectives.h"
#include "vlmo/ops.h"
#include "vlmo/precision.h"
#include "vlmo/pretrain.h"
#include "vlmo/relative_position.h"
#include "vlmo/run_policy.h"
#include "vlmo/tasks.h"

using namespace vlmo;
using vlmo::test::expect_error;
using vlmo::test::fixture;
using vlmo::test::kRelativeBiasStd;
using vlmo::test::small_vocab;
using vlmo::test::tiny_batch;
using vlmo::test::tiny_config;
using vlmo::test::tiny_model;

namespace {

// Every output of the three passes (fusion, image with its VL-FFN features, text) and then every
// parameter's gradient of a fixed weighted sum of them, all as fp32: what two attention or
// product paths must agree on. Outputs come first (kPassOutputs of them).
constexpr size_t kPassOutputs = 5;
std::vector<at::Tensor> outputs_and_gradients(VLMo& m, const Batch& b) {
  m->zero_grad();
  const FusionOutput f = m->infer(b.text_ids, b.text_masks, b.image);
  const UnimodalOutput img = m->infer_image(b.image), txt = m->infer_text(b.text_ids, b.text_masks);
  std::vector<at::Tensor> out = {f.text_feats, f.image_feats, img.feats, img.cls_vlffn_feats, txt.feats};
  at::Tensor loss = at::zeros({}, at::kFloat);
  for (size_t i = 0; i < out.size(); ++i)
    loss = loss + (out[i].to(at::kFloat) * at::cos(at::arange(out[i].numel()).reshape(out[i].sizes()) * (i + 1.0))).sum();
  loss.backward();
  for (const auto& p : m->parameters()) out.push_back(p.grad().defined() ? p.grad().clone() : at::zeros_like(p));
  for (auto& t : out) t = t.detach().to(at::kFloat);
  return out;
}

// Tensor by tensor, max|a - b| <= tol * (1 + max|b|); failures name the output or parameter.
void expect_outputs_and_gradients_close(const std::vector<at::Tensor>& a, const std::vector<at::Tensor>& b, double tol) {
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) {
    const double diff = (a[i] - b[i]).abs().max().item<double>(), scale = b[i].abs().max().item<double>();
    EXPECT_LE(diff, tol * (1 + scale)) << (i < kPassOutputs ? "output " : "gradient of parameter ")
                                       << (i < kPassOutputs ? i : i - kPassOutputs) << ": max diff " << diff
                                       << ", max |reference| " << scale;
  }
}

// The model's run policy with one field changed.
void set_attention(VLMo& m, AttentionPath path) {
  RunPolicy p = m->run_policy();
  p.attention = path;
  m->set_run_policy(p);
}
void set_cpu_products(VLMo& m, CpuProducts products) {
  RunPolicy p = m->run_policy();
  p.cpu_products = products;
  m->set_run_policy(p);
}
void set_cpu_bf16(VLMo& m, CpuBf16Products mode) {
  RunPolicy p = m->run_policy();
  p.cpu_bf16 = mode;
  m->set_run_policy(p);
}

}  // namespace

TEST(RelativePosition, ImageIndexByHand) {
  // W = 2: patches (0,0) (0,1) (1,0) (1,1); span 3, nrd = 9 + 3 = 12.
  const at::Tensor idx = image_relative_position_index(2);
  ASSERT_EQ(idx.sizes(), at::IntArrayRef({5, 5}));
  auto a = idx.accessor<int64_t, 2>();
  EXPECT_EQ(a[0][0], 11);                     // CLS -> CLS
  EXPECT_EQ(a[0][3], 9);                      // CLS -> patch
  EXPECT_EQ(a[2][0], 10);                     // patch -> CLS
  EXPECT_EQ(a[1][1], 4);                      // same patch: (0+1)*3 + (0+1)
  EXPECT_EQ(a[1][4], 0);                      // (0,0) -> (1,1): dy = -1, dx = -1 -> 0*3 + 0
  EXPECT_EQ(a[4][1], 8);                      // (1,1) -> (0,0): dy = 1, dx = 1 -> 2*3 + 2
  EXPECT_EQ(a[2][3], 2 * 3 + 0 - 2 * 3 + 2);  // (0,1) -> (1,0): dy=-1, dx=1 -> 0*3+2
}

TEST(RelativePosition, TextAndFusionIndexByHand) {
  // W = 14, T = 196 (the official sizes): nrd = 732; text rows start at 734.
  const at::Tensor t = text_relative_position_index(40, 14, 196);
  auto a = t.accessor<int64_t, 2>();
  EXPECT_EQ(a[1][1], 732 + 2 + 194);        // distance 0
  EXPECT_EQ(a[1][39], 732 + 2 + 194 + 38);  // j - i = 38
  EXPECT_EQ(a[39][1], 732 + 2 + 194 - 38);
  EXPECT_EQ(a[0][5], 1123);
  EXPECT_EQ(a[5][0], 1124);
  EXPECT_EQ(a[0][0], 1125);
  const at::Tensor f = fusion_relative_position_index(40, 14, 196);
  ASSERT_EQ(f.size(0), 237);
  EXPECT_EQ(f[3][100].item<int64_t>(), 732);  // text query -> image key
  EXPECT_EQ(f[100][3].item<int64_t>(), 733);  // image query -> text key
  EXPECT_TRUE(at::equal(f.narrow(0, 40, 197).narrow(1, 40, 197), image_relative_position_index(14)));
  EXPECT_TRUE(at::equal(f.narrow(0, 0, 40).narrow(1, 0, 40), t));
  EXPECT_EQ(f.max().item<int64_t>(), 1125);  // every index inside the 1126-row table
}

TEST(RelativePosition, NotAKnotSplineIsExactOnCubicsAndInterpolates) {
  auto cubic = [](double x) { return 0.3 * x * x * x - x * x + 2 * x - 5; };
  std::vector<double> xs = {-4.7, -2.1, -1, 0, 1, 2.1, 4.7}, ys, at, want;
  for (double x : xs) ys.push_back(cubic(x));
  for (double x = -4.7; x <= 4.7; x += 0.37) {
    at.push_back(x);
    want.push_back(cubic(x));
  }
  const auto got = not_a_knot_spline(xs, ys, at);
  for (size_t i = 0; i < at.size(); ++i) EXPECT_NEAR(got[i], want[i], 1e-9) << at[i];
  std::vector<double> wiggly = {1, -2, 3, 0.5, 7, -1, 2};
  const auto through = not_a_knot_spline(xs, wiggly, xs);
  for (size_t i = 0; i < xs.size(); ++i) EXPECT_NEAR(through[i], wiggly[i], 1e-12);
  // Outside the range the spline is clamped to the end values (FITPACK clamps its arguments).
  EXPECT_NEAR(not_a_knot_spline(xs, wiggly, {10.0})[0], 2.0, 1e-12);
}

TEST(Model, ParameterNamesAreOfficial) {
  const TensorMap ref = load_safetensors(fixture("reference/tiny-relpos/weights.safetensors"));
  VLMo model(load_config(fixture("reference/tiny-relpos/config.json")));
  const TensorMap mine = model_state_dict(*model);
  ASSERT_EQ(mine.size(), ref.size());
  for (const auto& [k, v] : ref) {
    ASSERT_TRUE(mine.count(k)) << k;
    EXPECT_EQ(mine.at(k).sizes(), v.sizes()) << k;
  }
}

TEST(Model, FusionNeedsTextPaddedToMaxLenAndTheConfiguredImageSize) {
  const Config c = tiny_config(all_heads(), small_vocab);
  VLMo m = tiny_model(c, 1, kRelativeBiasStd);
  Batch b = tiny_batch(c);
  expect_error([&] { m->infer(b.text_ids.narrow(1, 0, 5), b.text_masks.narrow(1, 0, 5), b.image); },
               {"padded to exactly max_text_len = 8"});
  expect_error([&] { m->infer(b.text_ids, b.text_masks, at::zeros({3, 3, 48, 48})); }, {"[3, 3, 48, 48]", "(B, 3, 32, 32)"});
  expect_error([&] { m->infer(b.text_ids, b.text_masks, b.image, 3); }, {"token type 3"});
  // Text-only passes accept shorter text (the index is the top-left block).
  EXPECT_EQ(m->infer_text_ft(b.text_ids.narrow(1, 0, 5), b.text_masks.narrow(1, 0, 5)).feats.size(1), 5);
}

TEST(Model, PaddedKeysDoNotInfluenceRealTokens) {
  const Config c = tiny_config(all_heads(), small_vocab);
  VLMo m = tiny_model(c, 1, kRelativeBiasStd);
  m->eval();
  Batch b = tiny_batch(c, 1);
  const at::Tensor a = m->infer(b.text_ids, b.text_masks, b.image).cls_feats;
  b.text_ids.narrow(1, c.max_text_len - 2, 2).fill_(7);  // change only masked positions
  const at::Tensor a2 = m->infer(b.text_ids, b.text_masks, b.image).cls_feats;
  EXPECT_TRUE(at::allclose(a, a2, 1e-6, 1e-6));
}

TEST(Model, PaddingRowGetsNoGradient) {
  const Config c = tiny_config(all_heads(), small_vocab);
  VLMo m = tiny_model(c, 1, kRelativeBiasStd);
  Batch b = tiny_batch(c);
  m->infer(b.text_ids, b.text_masks, b.image).cls_feats.sum().backward();
  const at::Tensor g = m->text_embeddings->word_embeddings->weight.grad();
  EXPECT_EQ(g[0].abs().sum().item<double>(), 0.0);
  EXPECT_GT(g.abs().sum().item<double>(), 0.0);
}

TEST(Model, RetrievalEncodersNeverUseVlExperts) {
  const Config c = tiny_config(all_heads(), small_vocab);
  VLMo m = tiny_model(c, 1, kRelativeBiasStd);
  Batch b = tiny_batch(c);
  (m->infer_text_ft(b.text_ids, b.text_masks).cls_feats.sum() + m->infer_image_ft(b.image).cls_feats.sum()).backward();
  for (const auto& p : m->named_parameters()) {
    if (p.key().find("_vl.") == std::string::npos) continue;
    EXPECT_TRUE(!p.value().grad().defined() || p.value().grad().abs().sum().item<double>() == 0) << p.key();
  }
  // ...while the pre-training ITC passes do.
  m->zero_grad();
  compute_itc(m, b).loss.backward();
  EXPECT_GT(m->transformer->block_list[2]->mlp_vl->fc1->weight.grad().abs().sum().item<double>(), 0);
}

TEST(Model, DropPathIsRandomInTrainingOnly) {
  Config c = tiny_config(all_heads(), small_vocab);
  c.drop_path_rate = 0.5;
  VLMo m = tiny_model(c, 1, kRelativeBiasStd);
  Batch b = tiny_batch(c);
  m->eval();
  const at::Tensor e1 = m->infer_image_ft(b.image).cls_feats, e2 = m->infer_image_ft(b.image).cls_feats;
  EXPECT_TRUE(at::equal(e1, e2));
  m->train();
  at::manual_seed(1);
  const at::Tensor t1 = m->infer_image_ft(b.image).cls_feats;
  at::manual_seed(2);
  const at::Tensor t2 = m->infer_image_ft(b.image).cls_feats;
  EXPECT_FALSE(at::allclose(t1, t2));
}

// TokenOutputs::kCls / kText skip the last block's work for the rows nobody reads; the rows that
// are produced, and the gradients they pass back, must be those of the full pass. fp64 so that a
// different GEMM blocking cannot hide a real difference behind float rounding.
TEST(Model, PartialLastBlockGivesTheFullPassRowsAndGradients) {
  Config c = tiny_config(all_heads(), small_vocab);
  c.drop_path_rate = 0.1;  // drop path is keyed per sample: the same draw on both paths
  VLMo m = tiny_model(c, 1, kRelativeBiasStd);
  m->to(at::kDouble);
  Batch b = tiny_batch(c);
  b.image = b.image.to(at::kDouble);
  auto grads = [&](const at::Tensor& loss) {
    m->zero_grad();
    loss.backward();
    std::vector<at::Tensor> g;
    for (const auto& p : m->parameters()) g.push_back(p.grad().defined() ? p.grad().clone() : at::zeros_like(p));
    return g;
  };
  auto expect_same = [](const std::vector<at::Tensor>& a, const std::vector<at::Tensor>& b, const char* what) {
    ASSERT_EQ(a.size(), b.size());
    for (size_t i = 0; i < a.size(); ++i) EXPECT_TRUE(at::allclose(a[i], b[i], 1e-10, 1e-12)) << what << " parameter " << i;
  };
  for (bool training : {false, true}) {
    m->train(training);
    SampleKeys keys({11, 12, 13});
    // Fusion: [CLS] (ITM / VQA / NLVR2) and text rows (MLM).
    const FusionOutput full = m->infer(b.text_ids, b.text_masks, b.image);
    const FusionOutput cls = m->infer(b.text_ids, b.text_masks, b.image, 1, TokenOutputs::kCls);
    const FusionOutput text = m->infer(b.text_ids, b.text_masks, b.image, 1, TokenOutputs::kText);
    EXPECT_FALSE(cls.text_feats.defined());
    EXPECT_FALSE(text.image_feats.defined());
    EXPECT_TRUE(at::allclose(full.cls_feats, cls.cls_feats, 1e-12, 1e-12));
    EXPECT_TRUE(at::allclose(full.text_feats, text.text_feats, 1e-12, 1e-12));
    if (training) {
      expect_same(grads(full.cls_feats.pow(2).sum()), grads(cls.cls_feats.pow(2).sum()), "fusion [CLS]");
      const FusionOutput full2 = m->infer(b.text_ids, b.text_masks, b.image);
      const FusionOutput text2 = m->infer(b.text_ids, b.text_masks, b.image, 1, TokenOutputs::kText);
      expect_same(grads(full2.text_feats.pow(2).sum()), grads(text2.text_feats.pow(2).sum()), "fusion text");
    }
    // Dual encoder with the VL-FFN branch (pre-training ITC) and without (retrieval).
    const UnimodalOutput img = m->infer_image(b.image), img_cls = m->infer_image(b.image, TokenOutputs::kCls);
    EXPECT_EQ(img_cls.feats.size(1), 1);
    EXPECT_TRUE(at::allclose(img.feats.narrow(1, 0, 1), img_cls.feats, 1e-12, 1e-12));
    EXPECT_TRUE(at::allclose(img.cls_feats, img_cls.cls_feats, 1e-12, 1e-12));
    EXPECT_TRUE(at::allclose(img.cls_vlffn_feats, img_cls.cls_vlffn_feats, 1e-12, 1e-12));
    const UnimodalOutput txt = m->infer_text_ft(b.text_ids, b.text_masks),
                         txt_cls = m->infer_text_ft(b.text_ids, b.text_masks, TokenOutputs::kCls);
    EXPECT_TRUE(at::allclose(txt.cls_feats, txt_cls.cls_feats, 1e-12, 1e-12));
    if (training) {
      expect_same(grads((img.cls_feats * img.cls_vlffn_feats).sum()), grads((img_cls.cls_feats * img_cls.cls_vlffn_feats).sum()),
                  "image [CLS]");
    }
  }
}

// The CPU inference attention kernel (per sample and head, q / k / v read in place) against the
// plain path: image passes with the relative bias, fusion passes with padded keys, [CLS]-only
// last blocks, and int8 weights.
TEST(Model, FusedCpuInferenceAttentionEqualsThePlainPath) {
  const Config c = tiny_config(all_heads(), small_vocab);
  VLMo m = tiny_model(c, 1, kRelativeBiasStd);
  m->eval();
  // The fused path's fp32 CPU inference runs this kernel with LibTorch's products (with oneDNN's,
  // the plain path measured faster: vlmo/run_policy.h); both runs take them, so that only the
  // attention differs.
  set_cpu_products(m, CpuProducts::kAten);
  Batch b = tiny_batch(c, 5);
  auto run = [&](bool fused) {
    set_attention(m, fused ? AttentionPath::kFused : AttentionPath::kPlain);
    torch::NoGradGuard g;
    const int64_t before = fused_attention_calls();
    std::vector<at::Tensor> out = {
        m->infer(b.text_ids, b.text_masks, b.image).text_feats,
        m->infer(b.text_ids, b.text_masks, b.image).image_feats,
        m->infer(b.text_ids, b.text_masks, b.image, 2, TokenOutputs::kCls).cls_feats,
        m->infer_image(b.image).feats,
        m->infer_image_ft(b.image, TokenOutputs::kCls).cls_feats,
        m->infer_text(b.text_ids, b.text_masks).cls_vlffn_feats,
    };
    EXPECT_EQ(fused_attention_calls() - before, fused ? 6 * c.depth + 2 * (c.depth - c.vlffn_start_layer_index) : 0);
    set_attention(m, AttentionPath::kFused);
    return out;
  };
  const auto plain = run(false), fused = run(true);
  for (size_t i = 0; i < plain.size(); ++i)
    EXPECT_TRUE(at::allclose(fused[i], plain[i], 1e-5, 1e-6))
        << "output " << i << ": max diff " << (fused[i] - plain[i]).abs().max().item<double>();
  // With autograd on, training passes leave this kernel (it has no backward): the plain path on
  // LibTorch 1.13, scaled_dot_product_attention on >= 2 (Model.SdpaAndPlainAttentionAgree).
  const int64_t before = fused_attention_calls();
  m->infer_image(b.image).cls_feats.sum().backward();
  // (In fp32 on the CPU with oneDNN's products, training stays on the plain path: there SDPA
  // would take its unfused math fallback.)
  const bool sdpa_trains = m->run_policy().sdpa && m->run_policy().cpu_products != CpuProducts::kOneDnn;
  EXPECT_EQ(fused_attention_calls() - before, sdpa_trains ? 2 * c.depth - c.vlffn_start_layer_index : 0);
  // int8 weights: the kernel reads the quantised qkv layer's output the same way.
  if (!int8_supported()) return;
  quantize_int8(m);
  torch::NoGradGuard g;
  set_attention(m, AttentionPath::kPlain);
  const at::Tensor q_plain = m->infer_image_ft(b.image).feats;
  set_attention(m, AttentionPath::kFused);
  const at::Tensor q_fused = m->infer_image_ft(b.image).feats;
  EXPECT_TRUE(at::allclose(q_fused, q_plain, 1e-5, 1e-6)) << (q_fused - q_plain).abs().max().item<double>();
}

// Fused attention on LibTorch >= 2 (scaled_dot_product_attention with the relative bias and the
// padding mask as its additive mask) against the plain path, with autograd: the fusion pass with
// padded text keys, the image pass with the relative-position bias, the text pass, and the
// gradient of every parameter (the relative-position table's comes back through the mask).
// Tolerances, as max|fused - plain| <= tol * (1 + max|plain|) per tensor: fp32 2e-5 (float
// rounding of a different summation order); bf16 autocast 3e-2 (both paths round q k^T and the
// attention output to bfloat16, at different points: ~3 significant digits). The plain path runs
// its products as it does by default (oneDNN where built); SDPA runs with LibTorch's products,
// the setting under which it takes CPU training.
TEST(Model, SdpaAndPlainAttentionAgree) {
  if (!resolve_run_policy().sdpa) GTEST_SKIP() << "LibTorch " << TORCH_VERSION << " has no scaled_dot_product_attention";
  const Config c = tiny_config(all_heads(), small_vocab);
  for (const Precision precision : {Precision::kFloat32, Precision::kBFloat16}) {
    SCOPED_TRACE(precision_name(precision));
    const double tol = precision == Precision::kFloat32 ? 2e-5 : 3e-2;
    VLMo m = tiny_model(c, 1, kRelativeBiasStd);
    m->set_precision(precision);
    m->train();
    at::manual_seed(7);
    const Batch b = tiny_batch(c, 3);
    auto run = [&](bool fused) {
      set_attention(m, fused ? AttentionPath::kFused : AttentionPath::kPlain);
      const int64_t before = fused_attention_calls();
      auto out = outputs_and_gradients(m, b);
      EXPECT_EQ(fused_attention_calls() - before, fused ? 3 * c.depth + 2 * (c.depth - c.vlffn_start_layer_index) : 0);
      set_attention(m, AttentionPath::kFused);
      return out;
    };
    const auto plain = run(false);
    const CpuProducts backend = m->run_policy().cpu_products;
    set_cpu_products(m, CpuProducts::kAten);
    const auto fused = run(true);
    set_cpu_products(m, backend);
    expect_outputs_and_gradients_close(fused, plain, tol);
    // The relative-position table's gradient is there, and not zero: the bias was learned through the mask.
    if (m->relative_position_bias_table.defined()) {
      ASSERT_TRUE(m->relative_position_bias_table.grad().defined());
      EXPECT_GT(m->relative_position_bias_table.grad().abs().max().item<double>(), 0);
    }
  }
}

// The model under emulated bf16 products (src/ops: fp32 sums of bf16-rounded values) against the
// model under LibTorch's own bf16 products: outputs and gradients within bf16's tolerance (3e-2 of
// the largest value, as for SDPA vs plain in bf16).
TEST(Precision, EmulatedBf16ModelIsCloseToNativeBf16) {
  const Config c = tiny_config(all_heads(), small_vocab);
  VLMo m = tiny_model(c, 1, kRelativeBiasStd);
  m->set_precision(Precision::kBFloat16);
  m->train();
  at::manual_seed(7);
  const Batch batch = tiny_batch(c, 3);
  set_cpu_bf16(m, CpuBf16Products::kNative);
  const auto native = outputs_and_gradients(m, batch);
  set_cpu_bf16(m, CpuBf16Products::kEmulated);
  const auto emulated = outputs_and_gradients(m, batch);
  expect_outputs_and_gradients_close(emulated, native, 3e-2);
}

// Emulated bf16 rounds the same values on every attention path: q, k and v once, as they leave
// the qkv product; logits, probabilities and the products' sums stay fp32. So the plain path and
// the fused kernels (the CPU inference kernel without autograd; SDPA with autograd where LibTorch
// has it) agree as fp32 sums in another order do (2e-5, as SdpaAndPlainAttentionAgree's fp32),
// where rounding the probabilities on one path alone differs by bf16's 3 significant digits.
TEST(Precision, EmulatedBf16AttentionPathsRoundTheSameValues) {
  const Config c = tiny_config(all_heads(), small_vocab);
  VLMo m = tiny_model(c, 1, kRelativeBiasStd);
  m->set_precision(Precision::kBFloat16);
  set_cpu_bf16(m, CpuBf16Products::kEmulated);
  at::manual_seed(7);
  const Batch b = tiny_batch(c, 3);
  auto both = [&](AttentionPath path) {
    set_attention(m, path);
    m->eval();
    at::Tensor inference;
    {
      torch::NoGradGuard g;
      inference = m->infer_image_ft(b.image).feats;
    }
    m->train();
    return std::make_pair(inference, outputs_and_gradients(m, b));
  };
  // LibTorch's products on both paths (where SDPA takes CPU training), so that the linear layers
  // run the same kernel and only the attention differs.
  const CpuProducts backend = m->run_policy().cpu_products;
  set_cpu_products(m, CpuProducts::kAten);
  const auto plain = both(AttentionPath::kPlain);
  const auto counts = attention_kernel_counts();
  const auto fused = both(AttentionPath::kFused);
  const auto ran = attention_kernel_calls_since(counts);
  set_cpu_products(m, backend);
  auto calls = [&](const char* kernel) { return ran.count(kernel) ? ran.at(kernel) : 0; };
  EXPECT_GT(calls("cpu-inference"), 0);
  if (m->run_policy().sdpa) EXPECT_GT(calls("sdpa"), 0);
  const double tol = 2e-5 * (1 + plain.first.abs().max().item<double>());
  EXPECT_LE((fused.first - plain.first).abs().max().item<double>(), tol);
  expect_outputs_and_gradients_close(fused.second, plain.second, 2e-5);
}

// Activation checkpointing recomputes each block in the backward pass: the pre-training
// objective (ITC, ITM on drawn hard negatives, MLM; drop path on) must give the same losses and
// the same gradients as without it, with drop path drawn from the global generator (its state
// is replayed) and from sample keys, and the first pass must keep no block activations.
TEST(Model, ActivationCheckpointingGivesTheSameLossesAndGradients) {
  Config c = tiny_config(all_heads(), small_vocab);
  c.drop_path_rate = 0.2;
  VLMo m = tiny_model(c, 1, kRelativeBiasStd);
  m->to(at::kDouble);
  m->train();
  Batch b = tiny_batch(c, 4);
  b.image = b.image.to(at::kDouble);
  b.text_ids_mlm = b.text_ids.clone();
  b.text_labels_mlm = at::full_like(b.text_ids, -100);
  b.text_ids_mlm.select(1, 2).fill_(3);
  b.text_labels_mlm.select(1, 2).copy_(b.text_ids.select(1, 2));
  struct Run {
    std::map<std::string, double> losses;
    std::vector<at::Tensor> grads;
  };
  auto run = [&](bool checkpointing, bool keyed) {
    m->set_activation_checkpointing(checkpointing);
    m->zero_grad();
    at::manual_seed(77);
    std::optional<SampleKeys> keys;
    if (keyed) keys.emplace(std::vector<uint64_t>{5, 6, 7, 8});
    Run r;
    Outputs out;
    {
      // The ITM pass has 3B rows: keys cover the B-row passes only, so the keyed run uses the
      // ITC and MLM passes (whose rows are the batch's).
      if (keyed) {
        const ItcOutput itc = compute_itc(m, b);
        const MlmOutput mlm = compute_mlm(m, b);
        out["itc_loss"] = itc.loss;
        out["mlm_loss"] = mlm.loss;
      } else {
        out = vl_objective(m, b);
      }
    }
    at::Tensor total;
    for (const auto& [k, v] : out)
      if (k.size() > 5 && k.compare(k.size() - 5, 5, "_loss") == 0) {
        r.losses[k] = v.item<double>();
        total = total.defined() ? total + v : v;
      }
    total.backward();
    for (const auto& p : m->parameters()) r.grads.push_back(p.grad().defined() ? p.grad().clone() : at::zeros_like(p));
    return r;
  };
  for (bool keyed : {false, true}) {
    const Run plain = run(false, keyed), ckpt = run(true, keyed);
    ASSERT_EQ(plain.losses.size(), keyed ? 2u : 3u);
    for (const auto& [k, v] : plain.losses) EXPECT_NEAR(ckpt.losses.at(k), v, 1e-12) << k << (keyed ? " keyed" : "");
    ASSERT_EQ(plain.grads.size(), ckpt.grads.size());
    int nonzero = 0;
    for (size_t i = 0; i < plain.grads.size(); ++i) {
      EXPECT_TRUE(at::allclose(plain.grads[i], ckpt.grads[i], 1e-9, 1e-12))
          << "parameter " << i << (keyed ? " keyed" : "") << ": max difference "
          << (plain.grads[i] - ckpt.grads[i]).abs().max().item<double>();
      nonzero += plain.grads[i].abs().sum().item<double>() > 0;
    }
    EXPECT_GT(nonzero, 20);  // the comparison covers the blocks' parameters
  }
  // A different draw must show up: the replay is what makes the two runs agree.
  m->set_activation_checkpointing(false);
  at::manual_seed(77);
  const double a = vl_objective(m, b).at("mlm_loss").item<double>();
  at::manual_seed(78);
  const double d = vl_objective(m, b).at("mlm_loss").item<double>();
  EXPECT_NE(a, d);
  // The checkpointed pass keeps the block inputs only: its graph holds the CheckpointedBlock nodes.
  m->set_activation_checkpointing(true);
  const FusionOutput f = m->infer(b.text_ids, b.text_masks, b.image);
  ASSERT_TRUE(f.cls_feats.requires_grad());
  int checkpointed = 0;
  std::vector<torch::autograd::Node*> stack = {f.text_feats.grad_fn().get()};
  std::set<torch::autograd::Node*> seen;
  while (!stack.empty()) {
    auto* n = stack.back();
    stack.pop_back();
    if (!n || !seen.insert(n).second) continue;
    checkpointed += n->name().find("CheckpointedBlock") != std::string::npos;
    for (const auto& e : n->next_edges()) stack.push_back(e.function.get());
  }
  EXPECT_EQ(checkpointed, c.depth);
  m->set_activation_checkpointing(false);
}

// Checkpointing in the precisions and attention paths that runs train in (fp32 and bf16, with the
// fused path's kernels of this build: SDPA in training on LibTorch >= 2 where it applies): the first
// pass of a checkpointed block takes the kernels its recomputation takes, so the losses are
// bit-equal to those of a run without checkpointing. Each parameter's gradient is the same sum of
// per-pass contributions (the ITC, ITM and MLM passes reuse every block), which the autograd engine
// adds in another order when the blocks run again one by one: equal within 1e-6 x (1 + max|g|),
// a few fp32 roundings of the largest contribution.
TEST(Model, CheckpointingRecomputesWhatTheFirstPassComputed) {
  Config c = tiny_config(all_heads(), small_vocab);
  c.drop_path_rate = 0.2;
  for (const Precision precision : {Precision::kFloat32, Precision::kBFloat16}) {
    std::vector<CpuProducts> products_list = {CpuProducts::kAten};
    if (onednn_built()) products_list.push_back(CpuProducts::kOneDnn);
    for (const CpuProducts products : products_list) {
      SCOPED_TRACE(cat(precision_name(precision), ", ", cpu_products_name(products)));
      VLMo m = tiny_model(c, 1, kRelativeBiasStd);
      m->set_precision(precision);
      set_cpu_products(m, products);
      m->train();
      at::manual_seed(4);
      Batch b = tiny_batch(c, 4);
      b.text_ids_mlm = b.text_ids.clone();
      b.text_labels_mlm = at::full_like(b.text_ids, -100);
      b.text_ids_mlm.select(1, 2).fill_(3);
      b.text_labels_mlm.select(1, 2).copy_(b.text_ids.select(1, 2));
      auto run = [&](bool checkpointing, std::vector<double>& losses) {
        m->set_activation_checkpointing(checkpointing);
        m->zero_grad();
        at::manual_seed(77);
        const Outputs out = vl_objective(m, b);
        at::Tensor total;
        for (const auto& [k, v] : out)
          if (k.size() > 5 && k.compare(k.size() - 5, 5, "_loss") == 0) {
            losses.push_back(v.item<double>());
            total = total.defined() ? total + v : v;
          }
        total.backward();
        std::vector<at::Tensor> grads;
        for (const auto& p : m->parameters()) grads.push_back(p.grad().defined() ? p.grad().clone() : at::zeros_like(p));
        return grads;
      };
      std::vector<double> plain_losses, ckpt_losses;
      const int64_t kernels_before = attention_kernel_calls(AttentionKernel::kSdpa);
      const auto plain = run(false, plain_losses);
      const bool sdpa_ran = attention_kernel_calls(AttentionKernel::kSdpa) > kernels_before;
      const auto ckpt = run(true, ckpt_losses);
      ASSERT_EQ(plain_losses.size(), 3u);
      for (size_t i = 0; i < plain_losses.size(); ++i) EXPECT_EQ(ckpt_losses[i], plain_losses[i]) << "loss " << i;
      ASSERT_EQ(plain.size(), ckpt.size());
      for (size_t i = 0; i < plain.size(); ++i) {
        const double diff = (plain[i] - ckpt[i]).abs().max().item<double>(), scale = plain[i].abs().max().item<double>();
        EXPECT_LE(diff, 1e-6 * (1 + scale)) << "parameter " << i << ": max difference " << diff;
      }
      // The comparison covers SDPA in training where this LibTorch has it (attention_kernel): with
      // LibTorch's products.
      EXPECT_EQ(sdpa_ran, m->run_policy().sdpa && products == CpuProducts::kAten);
    }
  }
}

// bf16 autocast: the blocks' matrix products run in bfloat16 while the outputs (and the
// residual stream, norms and heads) stay fp32; results are close to fp32 but not equal, the
// gradients reach every parameter in fp32, and fp64 models are untouched.
TEST(Model, Bf16AutocastRunsTheBlocksInBfloat16) {
  const Config c = tiny_config(all_heads(), small_vocab);
  VLMo m = tiny_model(c, 1, kRelativeBiasStd);
  m->eval();
  Batch b = tiny_batch(c, 3);
  auto outputs = [&] {
    torch::NoGradGuard g;
    return std::vector<at::Tensor>{m->infer(b.text_ids, b.text_masks, b.image).cls_feats, m->infer_image_ft(b.image).cls_feats,
                                   m->infer_text(b.text_ids, b.text_masks).cls_vlffn_feats};
  };
  const auto fp32 = outputs();
  m->set_precision(Precision::kBFloat16);
  const auto bf16 = outputs();
  m->set_precision(Precision::kFloat32);
  EXPECT_FALSE(autocast_enabled(c10::DeviceType::CPU));  // the guard switched it off again
  for (size_t i = 0; i < fp32.size(); ++i) {
    EXPECT_EQ(bf16[i].scalar_type(), at::kFloat) << i;
    const double diff = (bf16[i] - fp32[i]).abs().max().item<double>();
    const double scale = fp32[i].abs().max().item<double>();
    EXPECT_GT(diff, 1e-6 * scale) << i << ": bf16 gave exactly the fp32 result (autocast not on?)";
    EXPECT_LT(diff, 0.05 * scale) << i;  // bfloat16 keeps 8 bits: ~0.4 % per product
  }
  // Training under bf16: fp32 gradients, finite, on the same parameters as fp32.
  m->train();
  m->set_precision(Precision::kBFloat16);
  const at::Tensor loss = m->infer(b.text_ids, b.text_masks, b.image).cls_feats.pow(2).sum();
  loss.backward();
  m->set_precision(Precision::kFloat32);
  int with_grad = 0;
  for (const auto& p : m->parameters()) {
    if (!p.grad().defined()) continue;
    ++with_grad;
    EXPECT_EQ(p.grad().scalar_type(), at::kFloat);
    EXPECT_TRUE(p.grad().isfinite().all().item<bool>());
  }
  EXPECT_GT(with_grad, 20);
  // fp64 stays fp64 (autocast casts fp32 only).
  m->eval();
  m->to(at::kDouble);
  b.image = b.image.to(at::kDouble);
  at::Tensor ref, got;
  {
    torch::NoGradGuard g;
    ref = m->infer(b.text_ids, b.text_masks, b.image).cls_feats;
    m->set_precision(Precision::kBFloat16);
    got = m->infer(b.text_ids, b.text_masks, b.image).cls_feats;
    m->set_precision(Precision::kFloat32);
  }
  EXPECT_EQ(got.scalar_type(), at::kDouble);
  EXPECT_TRUE(at::equal(ref, got));
}

// The run policy's resolution as a table: platforms (LibTorch 1.13 / 2.6, with and without oneDNN,
// with and without a fast bf16 GEMM), explicit options, the environment's overrides; then the
// attention kernel per call (CPU / CUDA, fp32 / bf16 / fp16 / fp64, training / inference).
TEST(RunPolicy, ResolutionTable) {
  const Platform v113{1, 13, true, true}, v113_bare{1, 13, false, false}, v26_avx2{2, 6, true, false}, v26{2, 6, true, true};
  auto opts = [](std::function<void(RunOptions&)> f) {
    RunOptions o;
    f(o);
    return o;
  };
  auto env = [](std::optional<std::string> products, std::optional<std::string> bf16) {
    RunOverrides e;
    e.cpu_products = std::move(products);
    e.cpu_bf16 = std::move(bf16);
    return e;
  };
  struct Row {
    const char* name;
    Platform platform;
    RunOptions asked;
    RunOverrides overrides;
    // expected: device, precision, attention, products, bf16, sdpa
    std::string summary;
  };
  const std::vector<Row> rows = {
      {"1.13 defaults",
       v113,
       {},
       {},
       "device cpu, precision fp32, attention fused (SDPA: no), cpu products onednn, cpu bf16 native"},
      {"1.13 without oneDNN or AVX-512",
       v113_bare,
       {},
       {},
       "device cpu, precision fp32, attention fused (SDPA: no), cpu products aten, cpu bf16 emulated"},
      {"2.6 on AVX2",
       v26_avx2,
       {},
       {},
       "device cpu, precision fp32, attention fused (SDPA: yes), cpu products onednn, cpu bf16 emulated"},
      {"2.6 bf16 plain",
       v26,
       opts([](RunOptions& o) {
         o.precision = Precision::kBFloat16;
         o.attention = AttentionPath::kPlain;
       }),
       {},
       "device cpu, precision bf16, attention plain (SDPA: yes), cpu products onednn, cpu bf16 native"},
      {"fp16 on the CPU from 2.4",
       v26,
       opts([](RunOptions& o) { o.precision = Precision::kFloat16; }),
       {},
       "device cpu, precision fp16, attention fused (SDPA: yes), cpu products onednn, cpu bf16 native"},
      {"fp16 on CUDA with 1.13",
       v113,
       opts([](RunOptions& o) {
         o.device = c10::Device("cuda:1");
         o.precision = Precision::kFloat16;
       }),
       {},
       "device cuda:1, precision fp16, attention fused (SDPA: no), cpu products onednn, cpu bf16 native"},
      {"environment overrides",
       v26_avx2,
       {},
       env("aten", "native"),
       "device cpu, precision fp32, attention fused (SDPA: yes), cpu products aten, cpu bf16 native"},
      {"explicit options over the environment", v26, opts([](RunOptions& o) {
         o.cpu_products = CpuProducts::kOneDnn;
         o.cpu_bf16 = CpuBf16Products::kEmulated;
       }),
       env("aten", "native"), "device cpu, precision fp32, attention fused (SDPA: yes), cpu products onednn, cpu bf16 emulated"},
  };
  for (const Row& r : rows) {
    SCOPED_TRACE(r.name);
    const RunPolicy p = resolve_run_policy(r.asked, r.platform, r.overrides);
    EXPECT_EQ(p.summary(), r.summary);
    const auto j = nlohmann::json::parse(p.json());
    EXPECT_EQ(j.at("precision"), precision_name(p.precision));
    EXPECT_EQ(j.at("cpu_products"), cpu_products_name(p.cpu_products));
  }
  // What the platform cannot do, and override values that are no names, are errors naming the cause.
  expect_error([&] { resolve_run_policy(opts([](RunOptions& o) { o.precision = Precision::kFloat16; }), v113, {}); },
               {"fp16 on the CPU needs LibTorch >= 2.4"});
  expect_error([&] { resolve_run_policy({}, v113_bare, env("onednn", std::nullopt)); }, {"VLMO_CPU_BATCHED_MATMUL", "no oneDNN"});
  expect_error([&] { resolve_run_policy(opts([](RunOptions& o) { o.cpu_products = CpuProducts::kOneDnn; }), v113_bare, {}); },
               {"no oneDNN"});
  expect_error([&] { resolve_run_policy({}, v26, env("blas", std::nullopt)); },
               {"VLMO_CPU_BATCHED_MATMUL=\"blas\"", "aten or onednn"});
  expect_error([&] { resolve_run_policy({}, v26, env(std::nullopt, "fast")); }, {"VLMO_CPU_BF16=\"fast\"", "native or emulated"});
  expect_error([] { parse_attention_path("flash", "option --attention"); }, {"--attention \"flash\"", "fused or plain"});

  // The kernel of one attention call.
  auto policy = [](bool sdpa, AttentionPath path, CpuProducts products) {
    RunPolicy p;
    p.sdpa = sdpa;
    p.attention = path;
    p.cpu_products = products;
    return p;
  };
  const auto cpu = c10::DeviceType::CPU, cuda = c10::DeviceType::CUDA;
  const auto fused = AttentionPath::kFused, plain = AttentionPath::kPlain;
  const auto dnnl = CpuProducts::kOneDnn, aten = CpuProducts::kAten;
  struct KernelRow {
    const char* name;
    RunPolicy policy;
    AttentionCall call;
    AttentionKernel want;
  };
  const std::vector<KernelRow> kernels = {
      {"1.13 CPU inference fp32", policy(false, fused, dnnl), {cpu, at::kFloat, false, false}, AttentionKernel::kPlain},
      {"2.6 CPU inference fp32 (emulated bf16 too)",
       policy(true, fused, dnnl),
       {cpu, at::kFloat, false, false},
       AttentionKernel::kPlain},
      {"1.13 CPU inference fp32, LibTorch products",
       policy(false, fused, aten),
       {cpu, at::kFloat, false, false},
       AttentionKernel::kCpuInference},
      {"2.6 CPU inference fp32, LibTorch products",
       policy(true, fused, aten),
       {cpu, at::kFloat, false, false},
       AttentionKernel::kCpuInference},
      {"1.13 CPU inference bf16", policy(false, fused, dnnl), {cpu, at::kBFloat16, false, false}, AttentionKernel::kPlain},
      {"2.6 CPU inference bf16", policy(true, fused, dnnl), {cpu, at::kBFloat16, false, false}, AttentionKernel::kPlain},
      {"2.6 CPU inference bf16, LibTorch products",
       policy(true, fused, aten),
       {cpu, at::kBFloat16, false, false},
       AttentionKernel::kSdpa},
      {"1.13 CPU training fp32", policy(false, fused, dnnl), {cpu, at::kFloat, true, false}, AttentionKernel::kPlain},
      {"2.6 CPU training fp32, oneDNN products",
       policy(true, fused, dnnl),
       {cpu, at::kFloat, true, false},
       AttentionKernel::kPlain},
      {"2.6 CPU training fp32, LibTorch products",
       policy(true, fused, aten),
       {cpu, at::kFloat, true, false},
       AttentionKernel::kSdpa},
      {"2.6 CPU training bf16", policy(true, fused, dnnl), {cpu, at::kBFloat16, true, false}, AttentionKernel::kPlain},
      {"2.6 CPU training bf16, LibTorch products",
       policy(true, fused, aten),
       {cpu, at::kBFloat16, true, false},
       AttentionKernel::kSdpa},
      {"2.6 CUDA training bf16", policy(true, fused, dnnl), {cuda, at::kBFloat16, true, false}, AttentionKernel::kSdpa},
      {"2.6 CPU training fp16", policy(true, fused, dnnl), {cpu, at::kHalf, true, false}, AttentionKernel::kSdpa},
      {"fp64 (the tests' reference)", policy(true, fused, aten), {cpu, at::kDouble, false, false}, AttentionKernel::kPlain},
      {"2.6 CUDA inference fp32", policy(true, fused, dnnl), {cuda, at::kFloat, false, false}, AttentionKernel::kSdpa},
      {"2.6 CUDA training fp16", policy(true, fused, dnnl), {cuda, at::kHalf, true, false}, AttentionKernel::kSdpa},
      {"1.13 CUDA", policy(false, fused, dnnl), {cuda, at::kFloat, true, false}, AttentionKernel::kPlain},
      {"plain path", policy(true, plain, aten), {cpu, at::kFloat, false, false}, AttentionKernel::kPlain},
      {"plain path, CUDA", policy(true, plain, aten), {cuda, at::kBFloat16, true, false}, AttentionKernel::kPlain},
      {"an attention recorder", policy(true, fused, aten), {cpu, at::kFloat, false, true}, AttentionKernel::kPlain},
  };
  for (const KernelRow& r : kernels)
    EXPECT_EQ(attention_kernel_name(attention_kernel(r.policy, r.call)), attention_kernel_name(r.want)) << r.name;
}

// The model carries its policy: a new model has resolve_run_policy()'s, set_run_policy reaches every
// block, and `--attention plain` (the policy's path) changes the kernel that runs.
TEST(RunPolicy, CarriedByTheModel) {
  const Config c = tiny_config(all_heads(), small_vocab);
  VLMo m = tiny_model(c, 1, kRelativeBiasStd);
  EXPECT_EQ(m->run_policy(), resolve_run_policy());
  m->eval();
  const Batch b = tiny_batch(c, 2);
  torch::NoGradGuard g;
  set_cpu_products(m, CpuProducts::kAten);  // where the fused path's fp32 inference is the CPU inference kernel
  const int64_t inference = attention_kernel_calls(AttentionKernel::kCpuInference),
                plain = attention_kernel_calls(AttentionKernel::kPlain);
  m->infer_image_ft(b.image);
  EXPECT_EQ(attention_kernel_calls(AttentionKernel::kCpuInference) - inference, c.depth);
  set_attention(m, AttentionPath::kPlain);
  for (const Block& block : m->transformer->block_list) EXPECT_EQ(block->attn->policy.attention, AttentionPath::kPlain);
  m->infer_image_ft(b.image);
  EXPECT_EQ(attention_kernel_calls(AttentionKernel::kPlain) - plain, c.depth);
  EXPECT_EQ(attention_kernel_calls(AttentionKernel::kCpuInference) - inference, c.depth);
}

// fp32 CPU inference with oneDNN's products runs each block's four linear layers through packed
// weights (src/ops/packed_linear.h): the same features as LibTorch's at::linear to fp32 rounding,
// and a weight changed in place is packed again.
TEST(Model, InferenceLinearLayersRunPackedWeights) {
  if (!onednn_built()) GTEST_SKIP() << "built without oneDNN";
  const Config c = tiny_config(all_heads(), small_vocab);
  VLMo m = tiny_model(c, 1, kRelativeBiasStd);
  m->eval();
  const Batch b = tiny_batch(c, 2);
  torch::NoGradGuard g;
  auto both = [&] {
    set_cpu_products(m, CpuProducts::kAten);
    const at::Tensor want = m->infer_image_ft(b.image).feats;
    set_cpu_products(m, CpuProducts::kOneDnn);
    const int64_t before = packed_linear_calls();
    const at::Tensor got = m->infer_image_ft(b.image).feats;
    EXPECT_EQ(packed_linear_calls() - before, 4 * c.depth);
    EXPECT_LE((got - want).abs().max().item<double>(), 1e-5 * (1 + want.abs().max().item<double>()));
    return got;
  };
  const at::Tensor first = both();
  m->transformer->block_list[0]->mlp_imag->fc1->weight.mul_(1.5);
  const at::Tensor second = both();
  EXPECT_GT((second - first).abs().max().item<double>(), 1e-3);
}

// ---- reduced precision and int8 on real photographs ----

namespace {

// VLMo-Base with the ITC heads (official initialisation, no drop path), in eval mode, with the
// five PIL-preprocessed fixture photographs at 224 px and four random captions.
struct PhotoRetrieval {
  vlmo::VLMo model{nullptr};
  at::Tensor photos, ids, masks;
  PhotoRetrieval() {
    const vlmo::TensorMap tensors = vlmo::load_safetensors(vlmo::test::fixture("images/expected.safetensors"));
    std::vector<at::Tensor> images;
    for (const char* name :
         {"messi5.jpg@224", "ela_original.jpg@224", "chelsea.png@224", "camera.png@224", "opencv-logo.png@224"})
      images.push_back(tensors.at(name));
    photos = at::stack(images);
    Config c = Config::base();
    c.heads = {"itc"};
    c.drop_path_rate = 0;  // train mode (a test's way to switch inference-only paths off) draws nothing
    model = vlmo::VLMo(c);
    vlmo::init_weights(model, 3);
    model->eval();
    ids = at::randint(1000, 30000, {4, c.max_text_len}, at::kLong);
    masks = at::ones({4, c.max_text_len}, at::kLong);
  }
  at::Tensor images() { return vlmo::encode_images(model, photos); }
  at::Tensor texts() { return vlmo::encode_texts(model, ids, masks); }
};

// A reduced-precision mode against fp32 features of the same model: cosine >= 0.99 for photos and
// captions (features are unit vectors), not bit-equal (the mode really ran), and the same nearest
// photo per caption wherever fp32's choice is clearer than the features moved: for unit vectors,
// a caption-photo similarity moves by at most |dt| + |di| + |dt||di| (|d| = sqrt(2 - 2 cos), the
// largest over captions and over photos), so a caption whose fp32 top-1 similarity leads the
// runner-up by more than twice that keeps its photo in any mode within those cosines. (With this
// untrained model most leads are far smaller than what cosine 0.998 allows: 0.003 against 0.067;
// those captions' nearest photo is a near-tie that kernels' rounding may break either way.)
void expect_close_to_fp32(const char* mode, const at::Tensor& img32, const at::Tensor& txt32, const at::Tensor& img,
                          const at::Tensor& txt) {
  const at::Tensor cos_img = (img32 * img).sum(1), cos_txt = (txt32 * txt).sum(1);
  std::printf("%s vs fp32 cosine: photos min %.5f mean %.5f, captions min %.5f\n", mode, cos_img.min().item<double>(),
              cos_img.mean().item<double>(), cos_txt.min().item<double>());
  EXPECT_GE(cos_img.min().item<double>(), 0.99) << mode << " " << cos_img;
  EXPECT_GE(cos_txt.min().item<double>(), 0.99) << mode << " " << cos_txt;
  EXPECT_FALSE(at::equal(img32, img)) << mode;
  const auto moved = [](const at::Tensor& cos) { return std::sqrt(std::max(0.0, 2 - 2 * cos.min().item<double>())); };
  const double di = moved(cos_img), dt = moved(cos_txt), bound = di + dt + di * dt;
  const at::Tensor s32 = at::matmul(txt32, img32.t()), s = at::matmul(txt, img.t());
  EXPECT_LE((s - s32).abs().max().item<double>(), bound) << mode;
  const auto top2 = s32.topk(2, 1);
  int clear = 0;
  for (int64_t i = 0; i < s32.size(0); ++i) {
    const double lead = (std::get<0>(top2)[i][0] - std::get<0>(top2)[i][1]).item<double>();
    if (lead <= 2 * bound) continue;
    ++clear;
    EXPECT_EQ(s[i].argmax().item<int64_t>(), std::get<1>(top2)[i][0].item<int64_t>()) << mode << ", caption " << i;
  }
  std::printf("%s: %d of %ld captions lead by more than %.4f (twice the bound); their nearest photo is fp32's\n", mode, clear,
              static_cast<long>(s32.size(0)), 2 * bound);
}

}  // namespace

// --quantize int8: the dual encoder's features on real photographs (the PIL-preprocessed fixture
// tensors) and on captions stay within cosine 0.99 of the fp32 features of the same model
// (VLMo-Base shape, official initialisation); a quantised model refuses training mode.
TEST(Quantize, Int8DualEncoderFeaturesMatchFp32OnRealPhotos) {
  if (!vlmo::int8_supported()) GTEST_SKIP() << "this LibTorch has no quantized engine";
  PhotoRetrieval r;
  const at::Tensor img32 = r.images(), txt32 = r.texts();
  vlmo::quantize_int8(r.model);
  expect_close_to_fp32("int8", img32, txt32, r.images(), r.texts());
  r.model->train();
  vlmo::test::expect_error([&] { r.model->infer_image_ft(r.photos); }, {"int8-quantised", "inference only"});
}

// bf16 autocast for the dual encoder on real photos: close to fp32 (cosine >= 0.99, the same
// nearest photo per caption), and the low-precision weight copies kept between inference passes
// give exactly what autocast's own per-pass casts give, also after a weight changes.
TEST(Precision, Bf16DualEncoderFeaturesMatchFp32OnRealPhotos) {
  PhotoRetrieval r;
  const at::Tensor img32 = r.images(), txt32 = r.texts();
  r.model->set_precision(vlmo::Precision::kBFloat16);
  const at::Tensor img16 = r.images();
  expect_close_to_fp32("bf16", img32, txt32, img16, r.texts());
  // Kept copies (eval) against autocast's casts (train mode, no autograd): the same numbers.
  auto without_kept_copies = [&] {
    r.model->train();
    const at::Tensor out = r.images();
    r.model->eval();
    return out;
  };
  EXPECT_TRUE(at::equal(img16, without_kept_copies()));
  {
    torch::NoGradGuard g;
    r.model->transformer->block_list[0]->mlp_imag->fc1->weight.mul_(1.5);
    r.model->transformer->block_list[0]->attn->qkv->weight.mul_(0.5);
  }
  const at::Tensor changed = r.images();
  EXPECT_FALSE(at::equal(changed, img16));  // the copies followed the weights
  EXPECT_TRUE(at::equal(changed, without_kept_copies()));
}

// ---- from the tests of config ----
#include <gtest/gtest.h>

#include "test_util.h"
#include "vlmo/config.h"
#include "vlmo/model.h"

using namespace vlmo;
using vlmo::test::expect_error;

TEST(Config, PresetsMatchReferenceTable) {
  // Reference §1.1.
  const Config b = Config::preset("base"), bp = Config::preset("base_plus"), l = Config::preset("large");
  EXPECT_EQ(b.embed_dim, 768);
  EXPECT_EQ(b.depth, 12);
  EXPECT_EQ(b.num_heads, 12);
  EXPECT_EQ(b.mlp_hidden(), 3072);
  EXPECT_EQ(b.vlffn_start_layer_index, 10);
  EXPECT_TRUE(b.need_relative_position_embed);
  EXPECT_FALSE(b.use_abs_pos_emb);
  EXPECT_DOUBLE_EQ(*b.layer_scale_init_values, 0.1);
  EXPECT_EQ(bp.embed_dim, 544);
  EXPECT_EQ(bp.depth, 24);
  EXPECT_EQ(bp.num_heads, 16);
  EXPECT_EQ(bp.head_dim(), 34);
  EXPECT_EQ(bp.mlp_hidden(), 2176);
  EXPECT_EQ(bp.vlffn_start_layer_index, 21);
  EXPECT_FALSE(bp.need_relative_position_embed);
  EXPECT_TRUE(bp.use_abs_pos_emb);
  EXPECT_FALSE(bp.layer_scale_init_values.has_value());
  EXPECT_EQ(l.embed_dim, 1024);
  EXPECT_EQ(l.depth, 24);
  EXPECT_EQ(l.mlp_hidden(), 4096);
  EXPECT_EQ(l.vlffn_start_layer_index, 21);
  for (const Config* c : {&b, &bp, &l}) {
    EXPECT_EQ(c->patch_size, 16);
    EXPECT_EQ(c->image_size, 224);
    EXPECT_EQ(c->max_text_len, 40);
    EXPECT_EQ(c->vocab_size, 30522);
    EXPECT_EQ(c->vqav2_label_size, 3129);
    EXPECT_DOUBLE_EQ(c->drop_path_rate, 0.1);
  }
  // Table rows and sequence lengths quoted in reference §1.4 and §1.7.
  EXPECT_EQ(b.relative_table_rows(), 1126);
  EXPECT_EQ(b.fusion_tokens(), 237);
  Config c384 = b;
  c384.image_size = 384;
  EXPECT_EQ(c384.relative_table_rows(), 2606);
  EXPECT_EQ(c384.fusion_tokens(), 617);
  Config c480 = b;
  c480.image_size = 480;
  EXPECT_EQ(c480.num_relative_distance(), 3484);
  EXPECT_EQ(c480.relative_table_rows(), 3878);
  EXPECT_EQ(c480.fusion_tokens(), 941);
  expect_error([] { Config::preset("huge"); }, {"huge", "base_plus"});
}

TEST(Config, JsonRoundTrip) {
  for (const char* name : {"base", "base_plus", "large"}) {
    const Config c = Config::preset(name);
    const Config back = config_from_json_text(config_to_json_text(c), "roundtrip");
    EXPECT_EQ(config_to_json_text(back), config_to_json_text(c)) << name;
  }
}

TEST(Config, ReadsFixtureConfig) {
  const Config c = load_config(vlmo::test::fixture("reference/tiny-relpos/config.json"));
  EXPECT_EQ(c.embed_dim, 96);
  EXPECT_EQ(c.depth, 4);
  EXPECT_EQ(c.image_size, 64);
  EXPECT_EQ(c.num_token_types, 3);
  EXPECT_EQ(c.vocab_size, 1000);
  EXPECT_DOUBLE_EQ(*c.layer_scale_init_values, 0.1);
  const Config a = load_config(vlmo::test::fixture("reference/tiny-abspos/config.json"));
  EXPECT_FALSE(a.layer_scale_init_values.has_value());
  EXPECT_TRUE(a.use_abs_pos_emb);
}

TEST(Config, ErrorsNameTheField) {
  expect_error([] { config_from_json_text(R"({"embed_dim": 64, "colour": 3})", "x.json"); },
               {"x.json", "unknown config field", "colour"});
  expect_error([] { config_from_json_text(R"({"image_size": 100})", "x.json"); }, {"image_size", "100", "patch_size 16"});
  expect_error([] { config_from_json_text(R"({"embed_dim": 100, "num_heads": 12})", "x.json"); },
               {"num_heads", "12", "embed_dim 100"});
  expect_error([] { config_from_json_text(R"({"depth": 4, "vlffn_start_layer_index": 10})", "x.json"); },
               {"vlffn_start_layer_index", "depth=4"});
  expect_error([] { config_from_json_text(R"({"depth": "twelve"})", "x.json"); }, {"depth", "integer"});
  expect_error([] { config_from_json_text(R"({"num_token_types": 5})", "x.json"); }, {"num_token_types"});
  expect_error([] { config_from_json_text(R"({"max_text_len": 300})", "x.json"); }, {"max_text_len", "max_text_len_of_initckpt"});
  expect_error([] { config_from_json_text(R"({"heads": ["mlm", "caption"]})", "x.json"); }, {"heads", "caption"});
  expect_error([] { config_from_json_text(R"({"depth": 12,)", "x.json"); }, {"x.json", "JSON"});
  expect_error([] { config_from_json_text(R"([1, 2])", "x.json"); }, {"object"});
}

// Official figures (reference §1.1): the model built without task heads at 224 px counts
// base 176.0M (VL-FFN 9.4M; 175.4M without the pooler = the README's 175M), base_plus 166.9M
// (VL-FFN 7.1M), large 562.6M (VL-FFN 25.2M).
TEST(Config, ParameterCountsMatchOfficial) {
  struct Want {
    const char* preset;
    double backbone_m, vl_ffn_m;
  };
  for (const Want& w : {Want{"base", 176.0, 9.4}, Want{"base_plus", 166.9, 7.1}, Want{"large", 562.6, 25.2}}) {
    Config c = Config::preset(w.preset);
    c.heads = {};
    VLMo model(c);
    const int64_t total = count_parameters(*model);
    int64_t vl = 0;
    for (const auto& p : model->named_parameters())
      if (p.key().find("_vl.") != std::string::npos) vl += p.value().numel();
    EXPECT_NEAR(total / 1e6, w.backbone_m, 0.05) << w.preset;
    EXPECT_NEAR(vl / 1e6, w.vl_ffn_m, 0.05) << w.preset;
    if (std::string(w.preset) == "base") EXPECT_NEAR((total - count_parameters(*model, {"pooler."})) / 1e6, 175.4, 0.05);
  }
}
