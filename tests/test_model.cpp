#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <torch/autograd.h>
#include <torch/version.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <functional>
#include <optional>
#include <set>

#include "test_util.h"
#include "vlmo/batched_matmul.h"
#include "vlmo/checkpoint.h"
#include "vlmo/objectives.h"
#include "vlmo/precision.h"
#include "vlmo/pretrain.h"
#include "vlmo/reference_check.h"
#include "vlmo/relative_position.h"
#include "model/model_internals.h"

using namespace vlmo;
using vlmo::test::expect_error;
using vlmo::test::fixture;

namespace {

// Every head, 3 blocks of 4 heads, a 50-token vocabulary, 3 token types (NLVR2).
Config tiny_config() {
  return test::tiny_config(Config{}.heads, [](Config& c) {
    c.depth = 3;
    c.num_heads = 4;
    c.max_text_len = 8;
    c.vocab_size = 50;
    c.vlffn_start_layer_index = 2;
    c.vqav2_label_size = 5;
    c.num_token_types = 3;
    c.drop_path_rate = 0;
  });
}

VLMo tiny_model(const Config& c = tiny_config()) {
  VLMo m(c);
  init_weights(m, 1);
  torch::NoGradGuard g;
  if (m->relative_position_bias_table.defined()) m->relative_position_bias_table.normal_(0, 0.5);
  return m;
}

Batch tiny_batch(const Config& c, int64_t B = 3) {
  Batch b;
  b.text_ids = at::randint(1, c.vocab_size, {B, c.max_text_len});
  b.text_masks = at::ones({B, c.max_text_len}, at::kLong);
  b.text_masks.narrow(1, c.max_text_len - 2, 2).zero_();
  b.text_ids.narrow(1, c.max_text_len - 2, 2).zero_();
  b.image = at::rand({B, 3, c.image_size, c.image_size}) * 2 - 1;
  return b;
}

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

}  // namespace

TEST(RelativePosition, ImageIndexByHand) {
  // W = 2: patches (0,0) (0,1) (1,0) (1,1); span 3, nrd = 9 + 3 = 12.
  const at::Tensor idx = image_relative_position_index(2);
  ASSERT_EQ(idx.sizes(), at::IntArrayRef({5, 5}));
  auto a = idx.accessor<int64_t, 2>();
  EXPECT_EQ(a[0][0], 11);  // CLS -> CLS
  EXPECT_EQ(a[0][3], 9);   // CLS -> patch
  EXPECT_EQ(a[2][0], 10);  // patch -> CLS
  EXPECT_EQ(a[1][1], 4);   // same patch: (0+1)*3 + (0+1)
  EXPECT_EQ(a[1][4], 0);   // (0,0) -> (1,1): dy = -1, dx = -1 -> 0*3 + 0
  EXPECT_EQ(a[4][1], 8);   // (1,1) -> (0,0): dy = 1, dx = 1 -> 2*3 + 2
  EXPECT_EQ(a[2][3], 2 * 3 + 0 - 2 * 3 + 2);  // (0,1) -> (1,0): dy=-1, dx=1 -> 0*3+2
}

TEST(RelativePosition, TextAndFusionIndexByHand) {
  // W = 14, T = 196 (the official sizes): nrd = 732; text rows start at 734.
  const at::Tensor t = text_relative_position_index(40, 14, 196);
  auto a = t.accessor<int64_t, 2>();
  EXPECT_EQ(a[1][1], 732 + 2 + 194);       // distance 0
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
  const Config c = tiny_config();
  VLMo m = tiny_model(c);
  Batch b = tiny_batch(c);
  expect_error([&] { m->infer(b.text_ids.narrow(1, 0, 5), b.text_masks.narrow(1, 0, 5), b.image); },
               {"padded to exactly max_text_len = 8"});
  expect_error([&] { m->infer(b.text_ids, b.text_masks, at::zeros({3, 3, 48, 48})); },
               {"[3, 3, 48, 48]", "(B, 3, 32, 32)"});
  expect_error([&] { m->infer(b.text_ids, b.text_masks, b.image, 3); }, {"token type 3"});
  // Text-only passes accept shorter text (the index is the top-left block).
  EXPECT_EQ(m->infer_text_ft(b.text_ids.narrow(1, 0, 5), b.text_masks.narrow(1, 0, 5)).feats.size(1), 5);
}

TEST(Model, PaddedKeysDoNotInfluenceRealTokens) {
  const Config c = tiny_config();
  VLMo m = tiny_model(c);
  m->eval();
  Batch b = tiny_batch(c, 1);
  const at::Tensor a = m->infer(b.text_ids, b.text_masks, b.image).cls_feats;
  b.text_ids.narrow(1, c.max_text_len - 2, 2).fill_(7);  // change only masked positions
  const at::Tensor a2 = m->infer(b.text_ids, b.text_masks, b.image).cls_feats;
  EXPECT_TRUE(at::allclose(a, a2, 1e-6, 1e-6));
}

TEST(Model, PaddingRowGetsNoGradient) {
  const Config c = tiny_config();
  VLMo m = tiny_model(c);
  Batch b = tiny_batch(c);
  m->infer(b.text_ids, b.text_masks, b.image).cls_feats.sum().backward();
  const at::Tensor g = m->text_embeddings->word_embeddings->weight.grad();
  EXPECT_EQ(g[0].abs().sum().item<double>(), 0.0);
  EXPECT_GT(g.abs().sum().item<double>(), 0.0);
}

TEST(Model, RetrievalEncodersNeverUseVlExperts) {
  const Config c = tiny_config();
  VLMo m = tiny_model(c);
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
  Config c = tiny_config();
  c.drop_path_rate = 0.5;
  VLMo m = tiny_model(c);
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

TEST(Objectives, HardNegativeWeightsAndSampling) {
  const at::Tensor sim = at::randn({4, 8}) * 3;
  const at::Tensor w = hard_negative_weights(sim);
  const at::Tensor soft = at::softmax(sim, 1);
  for (int i = 0; i < 4; ++i)
    for (int j = 0; j < 8; ++j)
      EXPECT_NEAR(w[i][j].item<double>(), i == j ? 0.0 : soft[i][j].item<double>(), 1e-7);
  for (int trial = 0; trial < 50; ++trial) {
    const at::Tensor neg = sample_hard_negatives(w);
    ASSERT_EQ(neg.sizes(), at::IntArrayRef({4}));
    for (int i = 0; i < 4; ++i) EXPECT_NE(neg[i].item<int64_t>(), i);
  }
}

TEST(Objectives, ItmPairsAreTheOfficialLayout) {
  const Config c = tiny_config();
  VLMo m = tiny_model(c);
  m->eval();
  Batch b = tiny_batch(c);
  const at::Tensor ni = at::tensor({2, 0, 1}, at::kLong), nt = at::tensor({1, 2, 0}, at::kLong);
  const ItmOutput got = compute_itm(m, b, ni, nt);
  // By hand: text 0 with image ni[0] = 2 is row 3; image 1 with text nt[1] = 2 is row 7.
  const at::Tensor row3 = m->itm_score->forward(
      m->infer(b.text_ids.narrow(0, 0, 1), b.text_masks.narrow(0, 0, 1), b.image.narrow(0, 2, 1)).cls_feats);
  const at::Tensor row7 = m->itm_score->forward(
      m->infer(b.text_ids.narrow(0, 2, 1), b.text_masks.narrow(0, 2, 1), b.image.narrow(0, 1, 1)).cls_feats);
  EXPECT_TRUE(at::allclose(got.logits[3], row3[0], 1e-5, 1e-5));
  EXPECT_TRUE(at::allclose(got.logits[7], row7[0], 1e-5, 1e-5));
  const at::Tensor labels = at::tensor({1, 1, 1, 0, 0, 0, 0, 0, 0}, at::kLong);
  EXPECT_NEAR(got.loss.item<double>(), at::cross_entropy_loss(got.logits, labels).item<double>(), 1e-6);
}

TEST(Objectives, ContrastiveLossByHand) {
  // Two orthogonal pairs: logits = e^s * I, loss = log(1 + e^{-e^s}) for every row and column.
  const at::Tensor img = at::eye(2), txt = at::eye(2), scale = at::full({}, std::log(2.0));
  const ContrastiveOutput out = contrastive_loss(img, txt, scale);
  EXPECT_NEAR(out.loss.item<double>(), std::log(1 + std::exp(-2.0)), 1e-6);
  EXPECT_TRUE(at::allclose(out.logits_i2t, 2 * at::eye(2)));
}

TEST(Objectives, MissingHeadsAndFieldsAreClearErrors) {
  Config c = tiny_config();
  c.heads = {"itc"};
  VLMo m = tiny_model(c);
  Batch b = tiny_batch(c);
  expect_error([&] { compute_vqa(m, b); }, {"\"vqa\" head"});
  expect_error([&] { compute_mlm(m, b); }, {"\"mlm\" head"});
  c.heads = all_heads();
  VLMo full = tiny_model(c);
  expect_error([&] { compute_vqa(full, b); }, {"vqa_targets"});
  expect_error([&] { compute_nlvr2(full, b); }, {"image_0"});
}

TEST(ReferenceCheck, DetectsAWrongWeight) {
  namespace fs = std::filesystem;
  const std::string dir = vlmo::test::temp_dir() + "/tiny";
  fs::copy(fixture("reference/tiny-abspos"), dir);
  TensorMap w = load_safetensors(dir + "/weights.safetensors");
  // One element only: a uniform shift of a bias would be removed by the next LayerNorm.
  w["transformer.blocks.1.mlp_text.fc2.bias"][0] += 1e-2;
  fs::permissions(dir, fs::perms::owner_all, fs::perm_options::add);
  fs::remove(dir + "/weights.safetensors");
  write_safetensors(dir + "/weights.safetensors", w);
  const CheckResult r = check_reference(dir);
  EXPECT_FALSE(r.ok());
  EXPECT_GT(r.passed(), 0);
  // Malformed: no inputs.
  fs::remove(dir + "/inputs.safetensors");
  expect_error([&] { check_reference(dir); }, {"inputs.safetensors"});
  expect_error([&] { check_reference("/nonexistent"); }, {"no config.json"});
}

TEST(ReferenceCheck, CompareTensorTolerance) {
  const at::Tensor b = at::tensor({0.0, 10.0});
  EXPECT_TRUE(compare_tensor("x", at::tensor({0.99e-4, 10.0 + 10.9e-4}), b).pass);
  EXPECT_FALSE(compare_tensor("x", at::tensor({1.01e-4, 10.0}), b).pass);
  EXPECT_FALSE(compare_tensor("x", at::tensor({0.0, 10.0 + 11.1e-4}), b).pass);
  EXPECT_FALSE(compare_tensor("x", at::tensor({NAN, 10.0}), b).pass);
  EXPECT_FALSE(compare_tensor("x", at::Tensor(), b).pass);
  EXPECT_FALSE(compare_tensor("x", at::zeros({3}), b).pass);
}

// TokenOutputs::kCls / kText skip the last block's work for the rows nobody reads; the rows that
// are produced, and the gradients they pass back, must be those of the full pass. fp64 so that a
// different GEMM blocking cannot hide a real difference behind float rounding.
TEST(Model, PartialLastBlockGivesTheFullPassRowsAndGradients) {
  Config c = tiny_config();
  c.drop_path_rate = 0.1;  // drop path is keyed per sample: the same draw on both paths
  VLMo m = tiny_model(c);
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
      expect_same(grads((img.cls_feats * img.cls_vlffn_feats).sum()),
                  grads((img_cls.cls_feats * img_cls.cls_vlffn_feats).sum()), "image [CLS]");
    }
  }
}

// The CPU inference attention kernel (per sample and head, q / k / v read in place) against the
// plain path: image passes with the relative bias, fusion passes with padded keys, [CLS]-only
// last blocks, and int8 weights.
TEST(Model, FusedCpuInferenceAttentionEqualsThePlainPath) {
  const Config c = tiny_config();
  VLMo m = tiny_model(c);
  m->eval();
  Batch b = tiny_batch(c, 5);
  auto run = [&](bool fused) {
    set_fused_attention(fused);
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
    set_fused_attention(true);
    return out;
  };
  const auto plain = run(false), fused = run(true);
  for (size_t i = 0; i < plain.size(); ++i)
    EXPECT_TRUE(at::allclose(fused[i], plain[i], 1e-5, 1e-6)) << "output " << i << ": max diff "
                                                              << (fused[i] - plain[i]).abs().max().item<double>();
  // With autograd on, training passes leave this kernel (it has no backward): the plain path on
  // LibTorch 1.13, scaled_dot_product_attention on >= 2 (Model.SdpaAndPlainAttentionAgree).
  const int64_t before = fused_attention_calls();
  m->infer_image(b.image).cls_feats.sum().backward();
  // (In fp32 on the CPU with oneDNN's products, training stays on the plain path: there SDPA
  // would take its unfused math fallback.)
  const bool sdpa_trains = sdpa_available() && batched_matmul_backend() != "onednn";
  EXPECT_EQ(fused_attention_calls() - before, sdpa_trains ? 2 * c.depth - c.vlffn_start_layer_index : 0);
  // int8 weights: the kernel reads the quantised qkv layer's output the same way.
  if (!int8_supported()) return;
  quantize_int8(m);
  torch::NoGradGuard g;
  set_fused_attention(false);
  const at::Tensor q_plain = m->infer_image_ft(b.image).feats;
  set_fused_attention(true);
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
  if (!sdpa_available()) GTEST_SKIP() << "LibTorch " << TORCH_VERSION << " has no scaled_dot_product_attention";
  const Config c = tiny_config();
  for (const Precision precision : {Precision::kFloat32, Precision::kBFloat16}) {
    SCOPED_TRACE(precision_name(precision));
    const double tol = precision == Precision::kFloat32 ? 2e-5 : 3e-2;
    VLMo m = tiny_model(c);
    m->set_precision(precision);
    m->train();
    at::manual_seed(7);
    const Batch b = tiny_batch(c, 3);
    auto run = [&](bool fused) {
      set_fused_attention(fused);
      const int64_t before = fused_attention_calls();
      auto out = outputs_and_gradients(m, b);
      EXPECT_EQ(fused_attention_calls() - before, fused ? 3 * c.depth + 2 * (c.depth - c.vlffn_start_layer_index) : 0);
      set_fused_attention(true);
      return out;
    };
    const auto plain = run(false);
    const std::string backend = batched_matmul_backend();
    set_batched_matmul_backend("aten");
    const auto fused = run(true);
    set_batched_matmul_backend(backend);
    expect_outputs_and_gradients_close(fused, plain, tol);
    // The relative-position table's gradient is there, and not zero: the bias was learned through the mask.
    if (m->relative_position_bias_table.defined()) {
      ASSERT_TRUE(m->relative_position_bias_table.grad().defined());
      EXPECT_GT(m->relative_position_bias_table.grad().abs().max().item<double>(), 0);
    }
  }
}

// Emulated bf16 products (CPUs without a fast bf16 GEMM): a product of bf16-rounded inputs summed
// in fp32. Against an fp64 product of the rounded values (independent of any bf16 kernel), and
// the model under emulation against the model under LibTorch's own bf16 products: outputs and
// gradients within bf16's tolerance (3e-2 of the largest value, as for SDPA vs plain in bf16).
TEST(Precision, EmulatedBf16ProductsAreFp32SumsOfBf16RoundedValues) {
  const CpuBf16Products before = cpu_bf16_products();
  set_cpu_bf16_products(CpuBf16Products::kEmulated);
  at::manual_seed(3);
  const at::Tensor x = at::randn({5, 7, 48}), w = at::randn({24, 48}), b = at::randn({24});
  const at::Tensor a = at::randn({2, 3, 7, 16}), v = at::randn({2, 3, 16, 9});
  auto rounded = [](const at::Tensor& t) { return t.to(at::kBFloat16).to(at::kDouble); };
  {
    AutocastGuard bf16(c10::kCPU, Precision::kBFloat16);
    ASSERT_TRUE(bf16_emulated(c10::kCPU));
    const at::Tensor y = autocast_linear(x, w, b), p = autocast_matmul(a, v);
    EXPECT_EQ(y.scalar_type(), at::kFloat);
    const at::Tensor y_ref = at::linear(rounded(x), rounded(w), rounded(b)), p_ref = at::matmul(rounded(a), rounded(v));
    EXPECT_LE((y.to(at::kDouble) - y_ref).abs().max().item<double>(), 1e-5 * (1 + y_ref.abs().max().item<double>()));
    EXPECT_LE((p.to(at::kDouble) - p_ref).abs().max().item<double>(), 1e-5 * (1 + p_ref.abs().max().item<double>()));
    // The rounding happened: the unrounded product is further away than fp32 sums can explain.
    EXPECT_GT((at::linear(x.to(at::kDouble), w.to(at::kDouble), b.to(at::kDouble)) - y_ref).abs().max().item<double>(), 1e-3);
  }
  {
    AutocastGuard fp32(c10::kCPU, Precision::kFloat32);
    EXPECT_FALSE(bf16_emulated(c10::kCPU));
    EXPECT_TRUE(at::equal(autocast_linear(x, w, b), at::linear(x, w, b)));  // off: LibTorch's own
  }
  const Config c = tiny_config();
  VLMo m = tiny_model(c);
  m->set_precision(Precision::kBFloat16);
  m->train();
  at::manual_seed(7);
  const Batch batch = tiny_batch(c, 3);
  set_cpu_bf16_products(CpuBf16Products::kNative);
  const auto native = outputs_and_gradients(m, batch);
  set_cpu_bf16_products(CpuBf16Products::kEmulated);
  const auto emulated = outputs_and_gradients(m, batch);
  set_cpu_bf16_products(before);
  expect_outputs_and_gradients_close(emulated, native, 3e-2);
}

// Activation checkpointing recomputes each block in the backward pass: the pre-training
// objective (ITC, ITM on drawn hard negatives, MLM; drop path on) must give the same losses and
// the same gradients as without it, with drop path drawn from the global generator (its state
// is replayed) and from sample keys, and the first pass must keep no block activations.
TEST(Model, ActivationCheckpointingGivesTheSameLossesAndGradients) {
  Config c = tiny_config();
  c.drop_path_rate = 0.2;
  VLMo m = tiny_model(c);
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

// bf16 autocast: the blocks' matrix products run in bfloat16 while the outputs (and the
// residual stream, norms and heads) stay fp32; results are close to fp32 but not equal, the
// gradients reach every parameter in fp32, and fp64 models are untouched.
TEST(Model, Bf16AutocastRunsTheBlocksInBfloat16) {
  const Config c = tiny_config();
  VLMo m = tiny_model(c);
  m->eval();
  Batch b = tiny_batch(c, 3);
  auto outputs = [&] {
    torch::NoGradGuard g;
    return std::vector<at::Tensor>{m->infer(b.text_ids, b.text_masks, b.image).cls_feats,
                                   m->infer_image_ft(b.image).cls_feats,
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

TEST(Precision, NamesParseAndBadOnesAreErrors) {
  EXPECT_EQ(parse_precision("fp32"), Precision::kFloat32);
  EXPECT_EQ(parse_precision("bf16"), Precision::kBFloat16);
  EXPECT_EQ(parse_precision("bfloat16"), Precision::kBFloat16);
  EXPECT_EQ(precision_name(Precision::kBFloat16), "bf16");
  EXPECT_EQ(parse_precision("fp16"), Precision::kFloat16);
  EXPECT_EQ(parse_precision("float16"), Precision::kFloat16);
  EXPECT_EQ(precision_name(Precision::kFloat16), "fp16");
  EXPECT_EQ(precision_dtype(Precision::kFloat16), at::kHalf);
  expect_error([] { parse_precision("fp8"); }, {"precision \"fp8\"", "expected fp32, bf16 or fp16"});
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
  expect_error([] { config_from_json_text(R"({"image_size": 100})", "x.json"); },
               {"image_size", "100", "patch_size 16"});
  expect_error([] { config_from_json_text(R"({"embed_dim": 100, "num_heads": 12})", "x.json"); },
               {"num_heads", "12", "embed_dim 100"});
  expect_error([] { config_from_json_text(R"({"depth": 4, "vlffn_start_layer_index": 10})", "x.json"); },
               {"vlffn_start_layer_index", "depth=4"});
  expect_error([] { config_from_json_text(R"({"depth": "twelve"})", "x.json"); },
               {"depth", "integer"});
  expect_error([] { config_from_json_text(R"({"num_token_types": 5})", "x.json"); },
               {"num_token_types"});
  expect_error([] { config_from_json_text(R"({"max_text_len": 300})", "x.json"); },
               {"max_text_len", "max_text_len_of_initckpt"});
  expect_error([] { config_from_json_text(R"({"heads": ["mlm", "caption"]})", "x.json"); },
               {"heads", "caption"});
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
    if (std::string(w.preset) == "base")
      EXPECT_NEAR((total - count_parameters(*model, {"pooler."})) / 1e6, 175.4, 0.05);
  }
}

// vlmo::batched_matmul (oneDNN for fp32 on the CPU where the build has it): the products and both
// gradients against fp64 at::matmul of the same values, on the layouts the attention layers pass
// (q and k as strided views of one qkv output, k transposed, one query row, the gradients'
// transposed operands), within 1e-5 x (1 + the largest value) per tensor: fp32 sums of at most 64
// products. fp64 and broadcast batches run at::matmul itself.
TEST(BatchedMatmul, MatchesFp64ProductsAndGradients) {
  SCOPED_TRACE("backend " + batched_matmul_backend());
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
      {"q kT", [&](const at::Tensor& x, const at::Tensor&) { return std::make_pair(heads(x, 0), heads(x, 1).transpose(-2, -1)); }},
      {"one query row", [&](const at::Tensor& x, const at::Tensor&) { return std::make_pair(heads(x, 0).narrow(2, 0, 1), heads(x, 1).transpose(-2, -1)); }},
      {"p v", [&](const at::Tensor& x, const at::Tensor& w) { return std::make_pair(w, heads(x, 2)); }},
      {"pT q", [&](const at::Tensor& x, const at::Tensor& w) { return std::make_pair(w.transpose(-2, -1), heads(x, 0)); }},
      {"3-D", [&](const at::Tensor& x, const at::Tensor& w) { return std::make_pair(w.flatten(0, 1), heads(x, 2).flatten(0, 1)); }},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.name);
    const auto [a, b] = c.operands(qkv, p);
    const at::Tensor out = batched_matmul(a, b);
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
  EXPECT_TRUE(at::equal(batched_matmul(a64, b64), at::matmul(a64, b64)));
  const at::Tensor a = at::randn({2, 5, 3}), b1 = at::randn({1, 3, 4});
  EXPECT_TRUE(at::allclose(batched_matmul(a, b1), at::matmul(a, b1)));
}

// The emulated bf16 path's rounding (one pass in vlmo) is LibTorch's .to(kBFloat16).to(kFloat)
// bit for bit: ties to even, infinities, overflow to infinity, subnormals, -0, a strided input;
// NaN stays NaN (its bits differ between LibTorch versions: 1.13's vector path gives 0xFFFF); and
// the gradient passes through bf16 the same way.
TEST(Precision, Bf16RoundingIsLibTorchsBitForBit) {
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
    EXPECT_TRUE(at::equal(got.masked_fill(nan, 0).contiguous().view(at::kInt), want.masked_fill(nan, 0).contiguous().view(at::kInt)));
  }
  const at::Tensor x = at::randn({64, 33}).requires_grad_(), g = at::randn({64, 33}) * 1e3;
  const at::Tensor grad = torch::autograd::grad({bf16_rounded_fp32(x)}, {x}, {g})[0];
  EXPECT_TRUE(at::equal(grad.view(at::kInt), g.to(at::kBFloat16).to(at::kFloat).view(at::kInt)));
}
