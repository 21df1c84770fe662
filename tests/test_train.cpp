#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cmath>
#include <csignal>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>
#include <set>

#include "demo.h"
#include "demo_diagnostics.h"
#include "demo_world.h"
#include "model/model_internals.h"
#include "test_util.h"
#include "train_util.h"
#include "vlmo/checkpoint.h"
#include "vlmo/data.h"
#include "vlmo/distributed.h"
#include "vlmo/image_tensor.h"
#include "vlmo/masking.h"
#include "vlmo/objectives.h"
#include "vlmo/pretrain.h"
#include "vlmo/recipes.h"
#include "vlmo/retrieval.h"
#include "vlmo/sources.h"
#include "vlmo/tasks.h"

using namespace vlmo;
using namespace vlmo::test;

TEST(Train, ScheduleAndParameterGroupsAreOfficial) {
  EXPECT_DOUBLE_EQ(learning_rate(0, 100, 10, 1.0), 0.0);  // the first step runs at lr 0, as HF's
  EXPECT_DOUBLE_EQ(learning_rate(5, 100, 10, 1.0), 0.5);
  EXPECT_DOUBLE_EQ(learning_rate(10, 100, 10, 1.0), 1.0);
  EXPECT_DOUBLE_EQ(learning_rate(55, 100, 10, 1.0), 0.5);
  EXPECT_DOUBLE_EQ(learning_rate(100, 100, 10, 1.0), 0.0);
  for (const char* n : {"transformer.blocks.0.attn.q_bias", "transformer.blocks.3.norm1.weight", "transformer.norm.weight",
                        "text_embeddings.LayerNorm.weight", "pooler.dense.bias"})
    EXPECT_TRUE(official_no_decay(n)) << n;
  for (const char* n : {"transformer.blocks.0.norm2_text.weight", "transformer.blocks.0.gamma_1", "transformer.cls_token",
                        "logit_scale", "vqa_classifier.1.weight"})
    EXPECT_FALSE(official_no_decay(n)) << n;
  // The substring "bias" also matches relative_position_bias_table (docs/design.md, "No-decay rule").
  EXPECT_TRUE(official_no_decay("relative_position_bias_table"));
  EXPECT_TRUE(is_task_head("vqa_classifier.3.weight"));
  EXPECT_FALSE(is_task_head("pooler.dense.weight"));
  // TrainOptions::head_prefixes: by default the official heads, else names starting with a prefix.
  EXPECT_TRUE(takes_head_lr("nlvr2_classifier.0.bias", {}));
  EXPECT_FALSE(takes_head_lr("itm_score.fc.weight", {}));
  EXPECT_TRUE(takes_head_lr("itm_score.fc.weight", {"itm_score.", "pooler."}));
  EXPECT_TRUE(takes_head_lr("pooler.dense.bias", {"itm_score.", "pooler."}));
  EXPECT_FALSE(takes_head_lr("vqa_classifier.0.weight", {"itm_score.", "pooler."}));
  EXPECT_FALSE(takes_head_lr("transformer.blocks.0.attn.qkv.weight", {"pooler."}));
}

// AdamW against the update written out by hand in double precision: decoupled decay (none for
// "bias"), head lr multiplier (vqa_classifier), bias corrections, and a parameter without a
// gradient in one step left untouched (its moments too).
TEST(Train, AdamWStepIsTheDocumentedUpdate) {
  struct Params : torch::nn::Module {
    Params() {
      register_parameter("weight", at::tensor({0.5f, -1.0f, 2.0f}));
      register_parameter("bias", at::tensor({0.1f, 0.2f}));
      register_parameter("vqa_classifier", at::tensor({-0.3f}));
    }
  } module;
  const double wd = 0.01, mult = 20, b1 = 0.9, b2 = 0.98, eps = 1e-8;
  AdamW opt(module, wd, mult);
  auto params = module.named_parameters();
  std::map<std::string, std::vector<double>> p, m, v;
  for (const auto& kv : params) {
    const at::Tensor t = kv.value().detach().to(at::kDouble);
    p[kv.key()] = std::vector<double>(t.data_ptr<double>(), t.data_ptr<double>() + t.numel());
    m[kv.key()] = v[kv.key()] = std::vector<double>(t.numel(), 0.0);
  }
  const double lrs[3] = {1e-3, 5e-4, 2e-3};
  int done = 0;
  for (int step = 0; step < 3; ++step) {
    opt.zero_grad();
    for (const auto& kv : params) {
      if (step == 1 && kv.key() == "bias") continue;  // no gradient this step
      at::Tensor gr = at::zeros_like(kv.value());
      for (int64_t i = 0; i < gr.numel(); ++i) gr[i] = 0.3 * (i + 1) * (step % 2 ? -1 : 1) + 0.05 * step;
      kv.value().mutable_grad() = gr;
    }
    opt.step(lrs[step]);
    ++done;
    for (const auto& kv : params) {
      const std::string& name = kv.key();
      if (step == 1 && name == "bias") continue;
      const double lr = lrs[step] * (name == "vqa_classifier" ? mult : 1), decay = name == "bias" ? 0 : wd;
      // The bias corrections use the optimizer's step count (also for a parameter that skipped one).
      const double bc1 = 1 - std::pow(b1, done), bc2 = 1 - std::pow(b2, done);
      for (size_t i = 0; i < p[name].size(); ++i) {
        const double grad = static_cast<double>(kv.value().grad()[i].item<float>());
        p[name][i] *= 1 - lr * decay;
        m[name][i] = b1 * m[name][i] + (1 - b1) * grad;
        v[name][i] = b2 * v[name][i] + (1 - b2) * grad * grad;
        p[name][i] -= lr / bc1 * m[name][i] / (std::sqrt(v[name][i] / bc2) + eps);
      }
    }
    for (const auto& kv : params)
      for (size_t i = 0; i < p[kv.key()].size(); ++i)
        EXPECT_NEAR(kv.value()[i].item<float>(), p[kv.key()][i], 1e-6) << kv.key() << "[" << i << "] after step " << step;
  }
  const TensorMap st = opt.state();
  EXPECT_NEAR(st.at("exp_avg.bias")[0].item<float>(), m["bias"][0], 1e-7);
  EXPECT_NEAR(st.at("exp_avg_sq.weight")[2].item<float>(), v["weight"][2], 1e-7 * v["weight"][2]);  // float: ~7 digits
}

TEST(Train, EveryStageLowersItsLosses) {
  // Eight fixed scenes, every step the same batch: each stage's losses must go down. Backgrounds
  // with 50 tint levels: per-patch MIM targets of a plain background are only its pixel noise.
  const DemoWorld w(3, 8, 2, 2, 32, 50);
  Config c = tiny_config(kPretrainingHeads);
  c.drop_path_rate = 0;
  VLMo m = tiny_model(c, 3);
  set_trainable_for_stage(m, Stage::kImage);
  auto r1 = train(m, mim_objective, world_batches(w, 8, 8, true, false, true), options(60, 3e-3));
  EXPECT_LT(mean_of(r1, "mim_loss", 55, 60), 0.9 * mean_of(r1, "mim_loss", 0, 5));
  set_trainable_for_stage(m, Stage::kText);
  auto r2 = train(m, text_mlm_objective, world_batches(w, 8, 8, false, true, false), options(30, 3e-3));
  EXPECT_LT(mean_of(r2, "textmlm_loss", 25, 30), 0.8 * mean_of(r2, "textmlm_loss", 0, 5));
  set_trainable_for_stage(m, Stage::kVL);
  // ITC and ITM read [CLS] features that barely depend on the input at initialisation, so the
  // contrastive loss needs a couple of hundred steps to break the symmetry (docs/demo.md, "The contrastive saddle").
  auto r3 = train(m, vl_objective, world_batches(w, 8, 8, true, true, false), options(300, 1e-3));
  EXPECT_LT(mean_of(r3, "itc_loss", 290, 300), 0.75 * mean_of(r3, "itc_loss", 0, 10));
  EXPECT_LT(mean_of(r3, "mlm_loss", 290, 300), 0.5 * mean_of(r3, "mlm_loss", 0, 10));
  EXPECT_LT(mean_of(r3, "itm_loss", 290, 300), mean_of(r3, "itm_loss", 0, 10));
}

TEST(Train, StageTwoChangesNoFrozenParameter) {
  const DemoWorld w(4, 16, 2, 2, 32);
  VLMo m = tiny_model(tiny_config(kPretrainingHeads), 4);
  const TensorMap before = snapshot(m);
  set_trainable_for_stage(m, Stage::kText);
  train(m, text_mlm_objective, world_batches(w, 16, 8, false, true, false), options(5, 1e-3));
  int frozen = 0, changed = 0;
  for (const auto& [k, v] : model_state_dict(*m)) {
    if (stage2_trainable(k)) {
      changed += !at::equal(v, before.at(k));
    } else {
      ++frozen;
      EXPECT_TRUE(at::equal(v, before.at(k))) << k << " is frozen in stage 2 but changed";
    }
  }
  EXPECT_GT(frozen, 20);  // attention, norm1, V-FFN, patch embed, gamma_*, ...
  EXPECT_GT(changed, 10);
  EXPECT_TRUE(stage2_trainable("transformer.blocks.1.mlp_text.fc1.weight"));
  EXPECT_FALSE(stage2_trainable("transformer.blocks.1.attn.qkv.weight"));
  EXPECT_FALSE(stage2_trainable("transformer.blocks.1.gamma_1"));
  EXPECT_FALSE(stage2_trainable("transformer.blocks.1.mlp_imag.fc1.weight"));
}

TEST(Train, InterruptedAndResumedRunRepeatsTheLossesExactly) {
  const DemoWorld w(5, 32, 2, 2, 32);
  const std::string dir = vlmo::test::temp_dir();
  auto batches = world_batches(w, 32, 8, true, true, false);
  TrainOptions t = options(8, 1e-3);
  t.loader_threads = 2;
  at::manual_seed(11);
  VLMo a = tiny_model(tiny_config(kPretrainingHeads), 5);
  t.checkpoint_path = dir + "/a.safetensors";
  const TrainResult full = train(a, vl_objective, batches, t);

  at::manual_seed(11);
  VLMo b = tiny_model(tiny_config(kPretrainingHeads), 5);
  t.checkpoint_path = dir + "/b.safetensors";
  t.stop_after = 3;
  const TrainResult first = train(b, vl_objective, batches, t);
  ASSERT_EQ(first.steps, 3);
  at::manual_seed(999);  // whatever the process did meanwhile
  VLMo c = tiny_model(tiny_config(kPretrainingHeads), 77);
  t.stop_after = 0;
  const TrainResult rest = train(c, vl_objective, batches, t, dir + "/b.safetensors");
  ASSERT_EQ(rest.history.size(), 5u);
  for (size_t i = 0; i < 5; ++i)
    for (const char* k : {"loss", "itc_loss", "itm_loss", "mlm_loss", "lr"})
      EXPECT_EQ(rest.history[i].at(k), full.history[i + 3].at(k)) << "step " << i + 4 << " " << k;
  const TensorMap wa = read_weights(dir + "/a.safetensors"), wc = read_weights(dir + "/b.safetensors");
  for (const auto& [k, v] : wa) EXPECT_TRUE(at::equal(v, wc.at(k))) << k;
  // Checkpoints are written atomically: nothing else is left in the folder but the lock files.
  int files = 0;
  for (const auto& e : std::filesystem::directory_iterator(dir)) files += e.is_regular_file() && e.path().extension() != ".lock";
  EXPECT_EQ(files, 2);
  expect_error([&] { train(c, vl_objective, batches, t, vlmo::test::fixture("reference/tiny-abspos/weights.safetensors")); },
               {"not a training checkpoint"});
}

// --contrastive-batch global (vlmo/pretrain.h vl_global_step_objective).
namespace {

// Batches keyed by sample: batch `index` holds samples index*batch .. +batch-1 of a fixed order,
// each with its augmentation and masks drawn from its own index (collate's first_sample), so any
// batch size cuts the same sample sequence.
BatchFn sample_batches(const DemoWorld& w, int n, int batch) {
  auto order = std::make_shared<EpochOrder>(n, 7);
  CollateOptions co;
  co.image_size = 32;
  co.max_text_len = 16;
  co.train_transform = true;
  return [&w, order, co, batch](int64_t index) {
    std::vector<Example> ex;
    for (int j = 0; j < batch; ++j) {
      const Scene& s = w.split("train")[order->at(index * batch + j)];
      ex.push_back({w.render(s), w.caption(s, j % 2)});
    }
    return collate(ex, bert(), co, 11, index * batch);
  };
}

std::map<std::string, at::Tensor> gradients(VLMo& m) {
  std::map<std::string, at::Tensor> g;
  for (auto& p : m->named_parameters())
    if (p.value().grad().defined()) g[p.key()] = p.value().grad().clone();
  return g;
}

// 3 global-batch steps of stage vl from init seed 5, each step as `accumulate` micro-batches of
// `batch`: the weights after them and the run's history.
std::pair<std::map<std::string, at::Tensor>, TrainResult> train_split(const Config& c, const DemoWorld& w, int batch,
                                                                      int accumulate, const ObjectiveFn& objective,
                                                                      const StepObjectiveFn& step) {
  VLMo m = tiny_model(c, 5);
  set_trainable_for_stage(m, Stage::kVL);
  TrainOptions o = options(3, 1e-3);
  o.batch_size = batch;
  o.accumulate = accumulate;
  o.step_objective = step;
  const TrainResult r = train(m, objective, sample_batches(w, 32, batch), o);
  std::map<std::string, at::Tensor> weights;
  for (auto& p : m->named_parameters()) weights[p.key()] = p.value().detach().clone();
  return {weights, r};
}

double max_relative_difference(const std::map<std::string, at::Tensor>& a, const std::map<std::string, at::Tensor>& b,
                               std::string* where) {
  double worst = 0;
  for (const auto& [k, v] : a) {
    const at::Tensor& w = b.at(k);
    const double scale = std::max(v.norm().item<double>(), 1e-12);
    const double d = (v - w).norm().item<double>() / scale;
    if (getenv("VLMO_DEBUG_GRADS")) std::fprintf(stderr, "%-50s %.3g %.3g\n", k.c_str(), d, scale);
    if (d > worst) worst = d, *where = k;
  }
  return worst;
}

}  // namespace

TEST(GlobalBatch, CachedItcGradientIsTheFullBatchGradient) {
  // ITC only (no itm / mlm head), no random draws, in fp64 (the features of an untrained model
  // are nearly collinear, which costs fp32 about 4 digits here): the gradient-cached step over
  // 2 micro-batches of 4 must equal autograd's gradient of the ITC loss on the whole batch of 8,
  // by an independent path (compute_itc on one batch).
  const DemoWorld w(3, 16, 2, 2, 32);
  Config c = vlmo::test::tiny_config({"itc"});
  c.drop_path_rate = 0;
  VLMo a(c), b(c);
  init_weights(a, 5);
  init_weights(b, 5);
  a->to(at::kDouble);
  b->to(at::kDouble);
  a->train();
  b->train();
  const BatchFn whole = sample_batches(w, 16, 8), halves = sample_batches(w, 16, 4);
  Batch full = whole(0);
  full.image = full.image.to(at::kDouble);
  const at::Tensor ref_loss = compute_itc(a, full).loss;
  ref_loss.backward();
  std::vector<Batch> micro = {halves(0), halves(1)};
  micro[0].first_sample = 0;
  micro[1].first_sample = 4;
  for (Batch& m : micro) m.image = m.image.to(at::kDouble);
  ASSERT_TRUE(at::equal(at::cat({micro[0].image, micro[1].image}), full.image));  // the same samples
  const Outputs out = vl_global_step_objective(3)(b, micro, nullptr);
  EXPECT_NEAR(out.at("itc_loss").item<double>(), ref_loss.item<double>(), 1e-12 * ref_loss.item<double>());
  const auto ga = gradients(a), gb = gradients(b);
  ASSERT_EQ(ga.size(), gb.size());
  std::string where;
  EXPECT_LT(max_relative_difference(ga, gb, &where), 1e-9) << "worst: " << where;
  EXPECT_GT(ga.at("logit_scale").abs().item<double>(), 0);

  // Retrieval fine-tuning (the fine-tuned dual encoder, one branch): the same against irtr_objective.
  for (auto* m : {&a, &b})
    for (auto& p : (*m)->named_parameters()) p.value().mutable_grad() = at::Tensor();
  const at::Tensor irtr = irtr_objective(a, full).at("irtr_loss");
  irtr.backward();
  const Outputs out2 = irtr_global_step_objective(3)(b, micro, nullptr);
  EXPECT_NEAR(out2.at("irtr_loss").item<double>(), irtr.item<double>(), 1e-12 * irtr.item<double>());
  const auto ra = gradients(a), rb = gradients(b);
  ASSERT_EQ(ra.size(), rb.size());
  EXPECT_LT(max_relative_difference(ra, rb, &where), 1e-9) << "worst: " << where;
}

TEST(GlobalBatch, WeightsDoNotDependOnHowTheStepIsSplit) {
  // ITC + ITM + MLM with drop path, dropout, augmentation and masking: 3 steps of 8 samples as
  // 1 x 8, 2 x 4 and 4 x 2 micro-batches end at the same weights.
  const DemoWorld w(3, 32, 2, 2, 32);
  Config c = tiny_config(kPretrainingHeads);
  c.drop_path_rate = 0.2;
  auto run = [&](int batch, int accumulate) {
    return train_split(c, w, batch, accumulate, vl_objective, vl_global_step_objective(9));
  };
  const auto [w8, r8] = run(8, 1);
  const auto [w4, r4] = run(4, 2);
  const auto [w2, r2] = run(2, 4);
  for (const char* k : {"itc_loss", "itm_loss", "mlm_loss", "itm_acc"}) {
    EXPECT_NEAR(r4.history[2].at(k), r8.history[2].at(k), 1e-4) << k;
    EXPECT_NEAR(r2.history[2].at(k), r8.history[2].at(k), 1e-4) << k;
  }
  std::string where;
  double moved = 0;
  VLMo init = tiny_model(c, 5);
  for (auto& p : init->named_parameters()) moved = std::max(moved, (p.value() - w8.at(p.key())).abs().max().item<double>());
  EXPECT_GT(moved, 1e-4);  // the steps did change the weights
  for (const auto* other : {&w4, &w2}) {
    double worst = 0;
    for (const auto& [k, v] : w8) {
      const double d = (v - other->at(k)).abs().max().item<double>();
      if (d > worst) worst = d, where = k;
    }
    EXPECT_LT(worst, 2e-5) << "worst: " << where;
  }
  // The local (official) objective on the same split differs: its contrastive batch is the micro-batch.
  VLMo m = tiny_model(c, 5);
  TrainOptions o = options(1, 1e-3);
  o.batch_size = 4;
  o.accumulate = 2;
  const TrainResult local = train(m, vl_objective, sample_batches(w, 32, 4), o);
  EXPECT_GT(std::abs(local.history[0].at("itc_loss") - r8.history[0].at("itc_loss")), 1e-3);
}

// Retrieval fine-tuning for ITM re-ranking (ITC + ITM): the contrastive term is irtr_objective's,
// the ITM term is compute_itm's with hard negatives drawn from the dual encoder's similarities, and
// its global-batch form ends at the same weights however the step is split.
TEST(GlobalBatch, RetrievalWithItmIsTheContrastivePlusHardNegativeItm) {
  const DemoWorld w(3, 32, 2, 2, 32);
  Config c = vlmo::test::tiny_config({"itc", "itm"});
  c.drop_path_rate = 0;
  VLMo m = tiny_model(c, 5);
  m->eval();
  const Batch b = sample_batches(w, 32, 8)(0);
  at::manual_seed(21);
  const Outputs both = irtr_itm_objective(m, b);
  EXPECT_NEAR(both.at("irtr_loss").item<double>(), irtr_objective(m, b).at("irtr_loss").item<double>(), 1e-6);
  at::manual_seed(21);  // the same draws by hand
  const auto img = m->infer_image_ft(b.image, TokenOutputs::kCls);
  const auto txt = m->infer_text_ft(b.text_ids, b.text_masks, TokenOutputs::kCls);
  const ContrastiveOutput itc = contrastive_loss(img.cls_feats, txt.cls_feats, m->logit_scale);
  const at::Tensor neg_image = sample_hard_negatives(hard_negative_weights(itc.logits_t2i));
  const at::Tensor neg_text = sample_hard_negatives(hard_negative_weights(itc.logits_i2t));
  EXPECT_FALSE(neg_image.eq(at::arange(8, at::kLong)).any().item<bool>());  // never the positive
  EXPECT_NEAR(both.at("itm_loss").item<double>(), compute_itm(m, b, neg_image, neg_text).loss.item<double>(), 1e-6);
  EXPECT_GT(both.at("itm_loss").item<double>(), 0.3);
  EXPECT_EQ(irtr_objective(m, b).count("itm_loss"), 0u);  // the official fine-tuning has no ITM
  VLMo no_itm(vlmo::test::tiny_config({"itc"}));
  expect_error([&] { irtr_global_step_objective(9, true)(no_itm, {b}, nullptr); }, {"no \"itm\" head"});
  expect_error([&] { irtr_itm_objective(no_itm, b); }, {"no \"itm\" head"});

  auto run = [&](int batch, int accumulate) {
    return train_split(c, w, batch, accumulate, irtr_itm_objective, irtr_global_step_objective(9, /*with_itm=*/true));
  };
  const auto [w8, r8] = run(8, 1);
  const auto [w4, r4] = run(4, 2);
  for (const char* k : {"irtr_loss", "itm_loss", "itm_acc"}) EXPECT_NEAR(r4.history[2].at(k), r8.history[2].at(k), 1e-4) << k;
  double worst = 0;
  for (const auto& [k, v] : w8) worst = std::max(worst, (v - w4.at(k)).abs().max().item<double>());
  EXPECT_LT(worst, 2e-5);
  EXPECT_GT((w8.at("itm_score.fc.weight") - [&] { return model_state_dict(*tiny_model(c, 5)).at("itm_score.fc.weight"); }())
                .abs()
                .max()
                .item<double>(),
            1e-5);  // the ITM head is trained
}

TEST(GlobalBatch, KeyedDrawsFollowTheWeightsAndTheKeys) {
  const at::Tensor weights = at::tensor({0.0, 1.0, 3.0, 0.0}, at::kDouble).reshape({1, 4}).expand({2000, 4}).contiguous();
  std::vector<uint64_t> keys(2000);
  for (size_t i = 0; i < keys.size(); ++i) keys[i] = mix_seed(42, i);
  const at::Tensor picks = keyed_sample_rows(weights, at::arange(2000, at::kLong), keys);
  EXPECT_EQ(picks.eq(0).sum().item<int64_t>() + picks.eq(3).sum().item<int64_t>(), 0);  // zero weight: never
  EXPECT_NEAR(picks.eq(2).to(at::kFloat).mean().item<double>(), 0.75, 0.03);
  // A row's draw depends on its key only, not on the other rows.
  const at::Tensor again =
      keyed_sample_rows(weights, at::arange(5, 10, at::kLong), std::vector<uint64_t>(keys.begin() + 5, keys.begin() + 10));
  EXPECT_TRUE(at::equal(again, picks.narrow(0, 5, 5)));
  // Sample keys: a row's drop path and dropout follow its key, whatever batch it is in.
  Config c = vlmo::test::tiny_config({"itc"});
  c.drop_path_rate = 0.5;
  VLMo m = tiny_model(c, 1);
  m->train();
  const at::Tensor images = at::randn({4, 3, 32, 32});
  at::Tensor all, part, other;
  {
    SampleKeys k({10, 11, 12, 13});
    all = m->infer_image(images).cls_feats;
  }
  {
    SampleKeys k({12, 13});
    part = m->infer_image(images.narrow(0, 2, 2)).cls_feats;
  }
  {
    SampleKeys k({20, 21, 22, 23});
    other = m->infer_image(images).cls_feats;
  }
  EXPECT_TRUE(at::allclose(all.narrow(0, 2, 2), part, 1e-5, 1e-6));
  EXPECT_FALSE(at::allclose(all, other, 1e-3, 1e-4));  // other keys, other masks
  expect_error(
      [&] {
        SampleKeys k({1, 2});
        m->infer_image(images);
      },
      {"4 rows under 2 sample keys"});
}

TEST(Distributed, LaunchInfoFromTheLaunchersVariables) {
  const char* vars[] = {"RANK",
                        "WORLD_SIZE",
                        "LOCAL_RANK",
                        "MASTER_ADDR",
                        "MASTER_PORT",
                        "SLURM_PROCID",
                        "SLURM_NTASKS",
                        "SLURM_LOCALID",
                        "OMPI_COMM_WORLD_RANK",
                        "OMPI_COMM_WORLD_SIZE",
                        "OMPI_COMM_WORLD_LOCAL_RANK",
                        "VLMO_DIST_BACKEND"};
  std::map<std::string, std::string> saved;
  for (const char* v : vars)
    if (const char* x = std::getenv(v)) saved[v] = x;
  auto reset = [&] {
    for (const char* v : vars) ::unsetenv(v);
  };
  reset();
  LaunchInfo none = launch_info_from_env();
  EXPECT_EQ(none.world_size, 1);
  EXPECT_EQ(none.launcher, "none");
  EXPECT_EQ(none.backend, "gloo");  // this CPU build has no NCCL
  ::setenv("RANK", "2", 1), ::setenv("WORLD_SIZE", "4", 1), ::setenv("LOCAL_RANK", "0", 1);
  ::setenv("MASTER_ADDR", "10.1.2.3", 1), ::setenv("MASTER_PORT", "1234", 1);
  LaunchInfo t = launch_info_from_env();
  EXPECT_EQ(t.launcher, "torchrun");
  EXPECT_EQ(t.rank, 2);
  EXPECT_EQ(t.world_size, 4);
  EXPECT_EQ(t.master_addr, "10.1.2.3");
  EXPECT_EQ(t.master_port, 1234);
  ::setenv("RANK", "4", 1);
  expect_error([] { launch_info_from_env(); }, {"RANK=\"4\"", "from 0 to 3"});
  ::setenv("RANK", "1", 1), ::setenv("MASTER_PORT", "http", 1);
  expect_error([] { launch_info_from_env(); }, {"MASTER_PORT=\"http\""});
  reset();
  ::setenv("SLURM_PROCID", "1", 1), ::setenv("SLURM_NTASKS", "2", 1);
  expect_error([] { launch_info_from_env(); }, {"under Slurm set MASTER_ADDR"});
  ::setenv("MASTER_ADDR", "node1", 1);
  EXPECT_EQ(launch_info_from_env().launcher, "slurm");
  reset();
  ::setenv("OMPI_COMM_WORLD_RANK", "3", 1), ::setenv("OMPI_COMM_WORLD_SIZE", "8", 1),
      ::setenv("OMPI_COMM_WORLD_LOCAL_RANK", "1", 1);
  LaunchInfo m = launch_info_from_env();
  EXPECT_EQ(m.launcher, "openmpi");
  EXPECT_EQ(m.rank, 3);
  EXPECT_EQ(m.local_rank, 1);
  ::setenv("VLMO_DIST_BACKEND", "nccl", 1);
  if (!nccl_available()) expect_error([] { launch_info_from_env(); }, {"VLMO_DIST_BACKEND=nccl", "no NCCL"});
  ::setenv("VLMO_DIST_BACKEND", "mpi", 1);
  expect_error([] { launch_info_from_env(); }, {"expected gloo or nccl"});
  reset();
  for (const auto& [k, v] : saved) ::setenv(k.c_str(), v.c_str(), 1);
}

// ---- from the tests of loss_scaling ----
// Dynamic loss scaling (fp16 training): the scaler's schedule, a skipped overflow step, the state in
// the metrics and the checkpoint, exact resumption, and unscaling that gives the unscaled update.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <fstream>
#include <nlohmann/json.hpp>

#include "test_util.h"
#include "vlmo/checkpoint.h"
#include "vlmo/precision.h"
#include "vlmo/pretrain.h"
#include "vlmo/safetensors.h"
#include "vlmo/train.h"

using namespace vlmo;

namespace {

// Random image-text batches, a pure function of the index (so resumption sees the same data).
Batch random_batch(const Config& c, int64_t index) {
  at::Generator gen = at::detail::createCPUGenerator(1000 + static_cast<uint64_t>(index));
  const int64_t B = 4, L = c.max_text_len;
  Batch b;
  b.text_ids = at::randint(5, c.vocab_size, {B, L}, gen, at::kLong);
  b.text_masks = at::ones({B, L}, at::kLong);
  b.text_masks.narrow(1, L - 3, 3).zero_();
  const at::Tensor masked = at::rand({B, L}, gen).lt(0.3).logical_and(b.text_masks.to(at::kBool));
  b.text_ids_mlm = b.text_ids.masked_fill(masked, 4);
  b.text_labels_mlm = b.text_ids.masked_fill(masked.logical_not(), -100);
  b.image = at::rand({B, 3, c.image_size, c.image_size}, gen) * 2 - 1;
  return b;
}

Config scaling_config() {
  return test::tiny_config({"mlm", "itm", "itc"}, [](Config& c) { c.vocab_size = 64; });
}

VLMo fresh_model(Precision p) {
  at::manual_seed(3);
  VLMo m = tiny_model(scaling_config(), 3);
  m->set_precision(p);
  return m;
}

bool fp16_runs_here() {
  try {
    check_precision_supported(Precision::kFloat16, c10::DeviceType::CPU);
    return true;
  } catch (const Error&) {
    return false;
  }
}

}  // namespace

// A run of 6 steps at initial scale 1024, growing every 2 good steps, with an overflow injected
// into the third step's gradient. By hand: steps 1-2 at 1024 (then 2048), step 3 at 2048
// overflows (skipped, back to 1024), steps 4-5 at 1024 (then 2048), step 6 at 2048.
// fp16 autocast where this LibTorch has it on the CPU (>= 2.4), else fp32 with scaling forced on:
// the scaler's bookkeeping is the same.
TEST(LossScaling, OverflowSkipsTheStepHalvesTheScaleAndResumesExactly) {
  const Precision precision = fp16_runs_here() ? Precision::kFloat16 : Precision::kFloat32;
  SCOPED_TRACE(precision_name(precision));
  const std::string dir = test::temp_dir();
  const Config c = scaling_config();
  const BatchFn batches = [c](int64_t i) { return random_batch(c, i); };
  TrainOptions t;
  t.max_steps = 6;
  t.warmup_steps = 1;
  t.lr = 1e-3;
  t.batch_size = 4;
  t.progress = false;
  t.loss_scaling = true;
  t.loss_scaler.scale = 1024;
  t.loss_scaler.growth_interval = 2;
  t.after_backward = [](int64_t step, VLMo& m) {
    if (step == 2) m->transformer->norm->weight.mutable_grad().view(-1)[0] = std::numeric_limits<float>::infinity();
  };
  t.checkpoint_path = dir + "/full.safetensors";
  t.metrics_path = dir + "/full.jsonl";
  VLMo a = fresh_model(precision);
  at::manual_seed(5);
  const TrainResult full = train(a, vl_objective, batches, t);

  ASSERT_EQ(full.history.size(), 6u);
  EXPECT_EQ(full.overflow_steps, 1);
  EXPECT_EQ(full.bad_steps, 0);
  EXPECT_EQ(full.loss_scaler.scale, 2048);
  EXPECT_EQ(full.loss_scaler.good_steps, 1);
  const std::vector<double> want = {1024, 1024, 2048, 1024, 1024, 2048};
  std::ifstream metrics(t.metrics_path);
  std::string line;
  for (size_t i = 0; i < want.size(); ++i) {
    ASSERT_TRUE(std::getline(metrics, line)) << "metrics line " << i + 1;
    const auto j = nlohmann::json::parse(line);
    EXPECT_EQ(j.at("loss_scale").get<double>(), want[i]) << "step " << i + 1;
    EXPECT_EQ(j.contains("skipped_step"), i == 2) << "step " << i + 1;
    if (i == 2) EXPECT_NE(j.at("skipped_step").get<std::string>().find("overflow: loss scale 2048 -> 1024"), std::string::npos);
  }
  const SafetensorsFile ck = read_safetensors(t.checkpoint_path);
  EXPECT_EQ(ck.metadata.at("loss_scale"), "2048");
  EXPECT_EQ(ck.metadata.at("loss_scale_good_steps"), "1");
  EXPECT_EQ(ck.metadata.at("optimizer_steps"), "5");  // the overflow step made no update
  EXPECT_EQ(ck.metadata.at("overflow_steps"), "1");

  // Stopped right after the overflow step, resumed in a fresh process state: same steps 4-6.
  t.checkpoint_path = dir + "/part.safetensors";
  t.metrics_path = dir + "/part.jsonl";
  t.stop_after = 3;
  VLMo b = fresh_model(precision);
  at::manual_seed(5);
  train(b, vl_objective, batches, t);
  EXPECT_EQ(read_safetensors(t.checkpoint_path).metadata.at("loss_scale"), "1024");
  t.stop_after = 0;
  VLMo resumed = fresh_model(precision);
  at::manual_seed(77);
  const TrainResult rest = train(resumed, vl_objective, batches, t, t.checkpoint_path);
  ASSERT_EQ(rest.history.size(), 3u);
  for (size_t i = 0; i < 3; ++i)
    for (const char* k : {"loss", "itc_loss", "itm_loss", "mlm_loss", "lr"})
      EXPECT_EQ(rest.history[i].at(k), full.history[i + 3].at(k)) << "step " << i + 4 << " " << k;
  EXPECT_EQ(rest.loss_scaler.scale, full.loss_scaler.scale);
  EXPECT_EQ(rest.loss_scaler.good_steps, full.loss_scaler.good_steps);
  const TensorMap wa = read_weights(dir + "/full.safetensors"), wb = read_weights(dir + "/part.safetensors");
  for (const auto& [k, v] : wa) EXPECT_TRUE(at::equal(v, wb.at(k))) << k;
}

// In fp32, scaling by a power of two and unscaling is exact: the same weights after the same
// steps as a run without scaling (every backward operation is linear in the incoming gradient).
TEST(LossScaling, UnscaledGradientsGiveTheUnscaledUpdateExactly) {
  const Config c = scaling_config();
  const BatchFn batches = [c](int64_t i) { return random_batch(c, i); };
  auto run = [&](bool scaling) {
    TrainOptions t;
    t.max_steps = 3;
    t.warmup_steps = 1;
    t.lr = 1e-3;
    t.batch_size = 4;
    t.accumulate = 2;
    t.progress = false;
    t.loss_scaling = scaling;
    t.loss_scaler.scale = 4096;
    VLMo m = fresh_model(Precision::kFloat32);
    at::manual_seed(5);
    const TrainResult r = train(m, vl_objective, batches, t);
    EXPECT_EQ(r.overflow_steps, 0);
    return m;
  };
  VLMo plain = run(false), scaled = run(true);
  const auto pa = plain->named_parameters(), pb = scaled->named_parameters();
  for (const auto& p : pa) EXPECT_TRUE(at::equal(p.value(), pb[p.key()])) << p.key();
}

// Without an explicit choice, scaling follows the model's precision: on for fp16 only.
TEST(LossScaling, OnByDefaultForFp16Only) {
  const Config c = scaling_config();
  const BatchFn batches = [c](int64_t i) { return random_batch(c, i); };
  TrainOptions t;
  t.max_steps = 1;
  t.warmup_steps = 0;
  t.batch_size = 4;
  t.progress = false;
  t.metrics_path = test::temp_dir() + "/m.jsonl";
  VLMo m = fresh_model(Precision::kFloat32);
  train(m, vl_objective, batches, t);
  std::ifstream in(t.metrics_path);
  std::string line;
  ASSERT_TRUE(std::getline(in, line));
  EXPECT_FALSE(nlohmann::json::parse(line).contains("loss_scale"));
  if (!fp16_runs_here()) GTEST_SKIP() << "fp16 autocast on the CPU needs LibTorch >= 2.4";
  VLMo h = fresh_model(Precision::kFloat16);
  const TrainResult r = train(h, vl_objective, batches, t);
  std::ifstream in2(t.metrics_path);
  ASSERT_TRUE(std::getline(in2, line));
  EXPECT_EQ(nlohmann::json::parse(line).at("loss_scale").get<double>(), 65536.0);
  EXPECT_TRUE(std::isfinite(r.history.at(0).at("loss")));
}

// The recipe's batch over W processes: accumulate = recipe / (batch x W), rounded down as the
// official's accumulate_grad_batches, at least 1, and the rounding said.
TEST(Recipe, StepBatchDividesByProcessesToo) {
  const StepBatch one = recipe_step_batch(128, 16, 1), eight = recipe_step_batch(128, 16, 8);
  EXPECT_EQ(one.accumulate, 8);
  EXPECT_EQ(eight.accumulate, 1);
  EXPECT_EQ(eight.samples, 128);
  EXPECT_TRUE(eight.note.empty());
  const StepBatch two = recipe_step_batch(3072, 32, 2);
  EXPECT_EQ(two.accumulate, 48);
  EXPECT_EQ(two.samples, 3072);
  const StepBatch odd = recipe_step_batch(128, 16, 3);  // 128 / 48 = 2.67
  EXPECT_EQ(odd.accumulate, 2);
  EXPECT_EQ(odd.samples, 96);
  EXPECT_NE(odd.note.find("96 samples per step"), std::string::npos);
  const StepBatch big = recipe_step_batch(128, 100, 2);  // a micro-batch larger than the step
  EXPECT_EQ(big.accumulate, 1);
  EXPECT_EQ(big.samples, 200);
  EXPECT_FALSE(big.note.empty());
  EXPECT_THROW(recipe_step_batch(128, 0, 1), Error);
}

// The fine-tuning length of docs/training.md's table: steps = len(loader) x epochs // accumulate with
// len(loader) = ceil(ceil(n / W) / batch) (the official's run.py over a DistributedSampler), worked
// out by hand for each row (docs/design.md, "Fidelity to the official"); the last column is the
// epochs the steps cover (samples seen / n).
TEST(Recipe, FineTuningStepsAsTheOfficialCountsThem) {
  struct Row {
    FinetuneTask task;
    int64_t n, batch;
    int world, accumulate;  // accumulate 0: derived from the recipe's batch
    int accumulate_used;
    int64_t loader, steps, warmup;
    double epochs;
  };
  const Row rows[] = {
      // VQA (128 a step, 10 epochs), n = 640,000
      {FinetuneTask::kVqa, 640000, 32, 1, 0, 4, 20000, 50000, 5000, 10.0},
      {FinetuneTask::kVqa, 640000, 32, 2, 0, 2, 10000, 50000, 5000, 10.0},
      {FinetuneTask::kVqa, 640000, 16, 8, 0, 1, 5000, 50000, 5000, 10.0},
      {FinetuneTask::kVqa, 640000, 48, 1, 0, 2, 13334, 66670, 6667, 66670.0 * 96 / 640000},
      {FinetuneTask::kVqa, 640000, 48, 8, 0, 1, 1667, 16670, 1667, 16670.0 * 384 / 640000},
      {FinetuneTask::kVqa, 640000, 48, 1, 3, 3, 13334, 44446, 4444, 44446.0 * 144 / 640000},
      // NLVR2 (128 a step, 10 epochs), n = 86,373 (its train split)
      {FinetuneTask::kNlvr2, 86373, 32, 1, 0, 4, 2700, 6750, 675, 6750.0 * 128 / 86373},
      {FinetuneTask::kNlvr2, 86373, 16, 1, 0, 8, 5399, 6748, 674, 6748.0 * 128 / 86373},
      {FinetuneTask::kNlvr2, 86373, 32, 2, 0, 2, 1350, 6750, 675, 6750.0 * 128 / 86373},
      {FinetuneTask::kNlvr2, 86373, 16, 8, 0, 1, 675, 6750, 675, 6750.0 * 128 / 86373},
      {FinetuneTask::kNlvr2, 86373, 48, 1, 0, 2, 1800, 9000, 900, 9000.0 * 96 / 86373},
      {FinetuneTask::kNlvr2, 86373, 48, 2, 0, 1, 900, 9000, 900, 9000.0 * 96 / 86373},
      // COCO retrieval (3072 a step, 3000 steps, warm-up 300), n = 566,747 captions
      {FinetuneTask::kRetrievalCoco, 566747, 32, 1, 0, 96, 17711, 3000, 300, 3000.0 * 3072 / 566747},
      {FinetuneTask::kRetrievalCoco, 566747, 32, 2, 0, 48, 8856, 3000, 300, 3000.0 * 3072 / 566747},
      {FinetuneTask::kRetrievalCoco, 566747, 32, 8, 0, 12, 2214, 3000, 300, 3000.0 * 3072 / 566747},
      {FinetuneTask::kRetrievalCoco, 566747, 40, 2, 0, 38, 7085, 3000, 300, 3000.0 * 3040 / 566747},
      // Flickr30K retrieval (3072 a step, 1500 steps, warm-up 150), n = 145,000 captions
      {FinetuneTask::kRetrievalF30k, 145000, 32, 1, 0, 96, 4532, 1500, 150, 1500.0 * 3072 / 145000},
      {FinetuneTask::kRetrievalF30k, 145000, 32, 2, 0, 48, 2266, 1500, 150, 1500.0 * 3072 / 145000},
      {FinetuneTask::kRetrievalF30k, 145000, 32, 8, 0, 12, 567, 1500, 150, 1500.0 * 3072 / 145000},
      {FinetuneTask::kRetrievalF30k, 145000, 40, 1, 0, 76, 3625, 1500, 150, 1500.0 * 3040 / 145000},
  };
  for (const Row& w : rows) {
    const TrainingLength l = training_length(official_recipe(w.task, "base"), w.n, w.batch, w.world, w.accumulate);
    const std::string what = cat(finetune_task_name(w.task), " n ", w.n, " batch ", w.batch, " W ", w.world);
    EXPECT_EQ(l.step.accumulate, w.accumulate_used) << what;
    EXPECT_EQ(l.step.samples, w.accumulate_used * w.batch * w.world) << what;
    EXPECT_EQ(l.loader_batches, w.loader) << what;
    EXPECT_EQ(l.steps, w.steps) << what;
    EXPECT_EQ(l.warmup, w.warmup) << what;
    EXPECT_NEAR(l.epochs, w.epochs, 1e-12) << what;
  }
  // The rounding batch trains its 10 epochs, where ceil(10 n / 128) steps of 96 samples gave 7.5.
  EXPECT_GE(training_length(official_recipe(FinetuneTask::kNlvr2, "base"), 86373, 48, 1).epochs, 10.0);
  // A tiny set still trains a step; an explicit --steps wins over the epochs.
  EXPECT_EQ(training_length(official_recipe(FinetuneTask::kVqa, "base"), 3, 16, 1).steps, 1);
  EXPECT_EQ(training_length(official_recipe(FinetuneTask::kVqa, "base"), 640000, 32, 1, 0, 7).steps, 7);
  EXPECT_THROW(training_length(official_recipe(FinetuneTask::kVqa, "base"), 0, 16, 1), Error);
}

TEST(Recipes, OfficialFineTuningSettings) {
  Recipe r = official_recipe(FinetuneTask::kVqa, "base");
  EXPECT_EQ(r.image_size, 480);
  EXPECT_DOUBLE_EQ(r.lr, 3e-5);
  EXPECT_DOUBLE_EQ(r.head_lr_mult, 20);
  EXPECT_DOUBLE_EQ(r.drop_path, 0.15);
  EXPECT_EQ(r.batch_size, 128);
  EXPECT_DOUBLE_EQ(official_recipe(FinetuneTask::kVqa, "large").lr, 1.5e-5);
  EXPECT_DOUBLE_EQ(official_recipe(FinetuneTask::kVqa, "base_plus").lr, 3e-5);
  EXPECT_EQ(r.epochs, 10);
  EXPECT_LT(r.warmup_steps, 0);  // a fraction of the steps

  r = official_recipe(FinetuneTask::kNlvr2, "base");
  EXPECT_EQ(r.image_size, 384);
  EXPECT_DOUBLE_EQ(r.lr, 5e-5);
  EXPECT_DOUBLE_EQ(r.drop_path, 0.1);
  EXPECT_DOUBLE_EQ(r.head_lr_mult, 1);
  EXPECT_DOUBLE_EQ(official_recipe(FinetuneTask::kNlvr2, "base-plus").drop_path, 0.2);
  EXPECT_DOUBLE_EQ(official_recipe(FinetuneTask::kNlvr2, "base_plus").lr, 3e-5);
  EXPECT_DOUBLE_EQ(official_recipe(FinetuneTask::kNlvr2, "large").drop_path, 0.15);

  r = official_recipe(FinetuneTask::kRetrievalCoco, "base");
  EXPECT_EQ(r.batch_size, 3072);
  EXPECT_EQ(training_length(r, 123456, 32, 1).steps, 3000);  // fixed steps, whatever the data size
  EXPECT_EQ(training_length(r, 123456, 32, 1).warmup, 300);
  EXPECT_DOUBLE_EQ(r.drop_path, 0.2);
  EXPECT_EQ(r.init, "pretrained");
  EXPECT_DOUBLE_EQ(official_recipe(FinetuneTask::kRetrievalCoco, "large").lr, 2e-5);

  r = official_recipe(FinetuneTask::kRetrievalF30k, "base");
  EXPECT_EQ(training_length(r, 10, 32, 1).steps, 1500);
  EXPECT_EQ(training_length(r, 10, 32, 1).warmup, 150);
  EXPECT_EQ(training_length(r, 10, 32, 1, 0, 500).warmup, 150);  // --steps keeps the preset's warm-up count
  EXPECT_DOUBLE_EQ(r.drop_path, 0.15);
  EXPECT_EQ(r.init, "coco");  // F30K base starts from the COCO-fine-tuned weights
  EXPECT_EQ(official_recipe(FinetuneTask::kRetrievalF30k, "large").init, "coco");
  EXPECT_EQ(official_recipe(FinetuneTask::kRetrievalF30k, "base_plus").init, "pretrained");
  EXPECT_DOUBLE_EQ(official_recipe(FinetuneTask::kRetrievalF30k, "large").lr, 2e-5);

  EXPECT_DOUBLE_EQ(pretrain_lr("base"), 2e-4);
  EXPECT_DOUBLE_EQ(pretrain_lr("base_plus"), 1e-4);
  EXPECT_DOUBLE_EQ(pretrain_lr("large"), 5e-5);
  EXPECT_EQ(parse_finetune_task("irtr"), FinetuneTask::kRetrievalCoco);
  expect_error([] { official_recipe(FinetuneTask::kVqa, "huge"); }, {"huge", "base_plus"});
  expect_error([] { parse_finetune_task("caption"); }, {"caption", "f30k"});
}

// ---- objectives ----

TEST(Objectives, HardNegativeWeightsAndSampling) {
  const at::Tensor sim = at::randn({4, 8}) * 3;
  const at::Tensor w = hard_negative_weights(sim);
  const at::Tensor soft = at::softmax(sim, 1);
  for (int i = 0; i < 4; ++i)
    for (int j = 0; j < 8; ++j) EXPECT_NEAR(w[i][j].item<double>(), i == j ? 0.0 : soft[i][j].item<double>(), 1e-7);
  for (int trial = 0; trial < 50; ++trial) {
    const at::Tensor neg = sample_hard_negatives(w);
    ASSERT_EQ(neg.sizes(), at::IntArrayRef({4}));
    for (int i = 0; i < 4; ++i) EXPECT_NE(neg[i].item<int64_t>(), i);
  }
}

TEST(Objectives, ItmPairsAreTheOfficialLayout) {
  const Config c = tiny_config(all_heads(), small_vocab);
  VLMo m = tiny_model(c, 1, kRelativeBiasStd);
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
  Config c = tiny_config(all_heads(), small_vocab);
  c.heads = {"itc"};
  VLMo m = tiny_model(c, 1, kRelativeBiasStd);
  Batch b = tiny_batch(c);
  expect_error([&] { compute_vqa(m, b); }, {"\"vqa\" head"});
  expect_error([&] { compute_mlm(m, b); }, {"\"mlm\" head"});
  c.heads = all_heads();
  VLMo full = tiny_model(c, 1, kRelativeBiasStd);
  expect_error([&] { compute_vqa(full, b); }, {"vqa_targets"});
  expect_error([&] { compute_nlvr2(full, b); }, {"image_0"});
}

TEST(Objectives, NonFiniteHardNegativeWeightsAreReportedNotCrashed) {
  const at::Tensor w = hard_negative_weights(at::full({4, 4}, std::nan(""), at::kFloat));
  EXPECT_THROW(sample_hard_negatives(w), NonFiniteError);
  expect_error([] { sample_hard_negatives(hard_negative_weights(at::ones({1, 1}))); }, {"at least 2"});
  // A large logit scale: the positive's softmax weight is 1 and the others underflow to 0 in fp32
  // (exp(-200) < the smallest float); the error says so instead of asking for more candidates.
  const at::Tensor sim = at::eye(4) * 200.0;
  expect_error([&] { sample_hard_negatives(hard_negative_weights(sim)); }, {"row 0 (3 candidates) underflowed to 0", "logit"});
  expect_error(
      [&] {
        keyed_sample_rows(hard_negative_weights(sim), at::arange(4), {1, 2, 3, 4});
      },
      {"underflowed to 0", "logit scale"});
}

// ---- faults a long run meets: non-finite losses and gradients, unusable data, a resume after
// more metrics than checkpoint were written, a stop request ----

namespace {

// Text-only batches of fixed sentences (stage 2), a pure function of the index.
BatchFn text_batches(int batch) {
  CollateOptions co;
  co.max_text_len = 16;
  return [co, batch](int64_t index) {
    static const char* kText[] = {"a red circle on the left", "two blue squares",     "a green triangle at the top",
                                  "the yellow star is small", "a large white circle", "three black dots"};
    std::vector<Example> ex;
    for (int j = 0; j < batch; ++j) ex.push_back({Image{}, kText[(index * batch + j) % 6]});
    return collate(ex, bert(), co, static_cast<uint64_t>(index));
  };
}

// A tiny_config model (global generator and init seeded 3) training stage 2 (text).
VLMo text_stage_model() {
  at::manual_seed(3);
  VLMo m = tiny_model(tiny_config(), 3);
  set_trainable_for_stage(m, Stage::kText);
  return m;
}

TrainOptions quiet(int64_t steps) {
  TrainOptions t;
  t.max_steps = steps;
  t.warmup_steps = 1;
  t.lr = 1e-3;
  t.batch_size = 4;
  t.progress = false;
  return t;
}

bool same_weights(const TensorMap& a, const TensorMap& b) {
  for (const auto& [k, v] : a)
    if (!at::equal(v, b.at(k))) return false;
  return true;
}

int count_lines_with(const std::string& path, const std::string& needle) {
  std::ifstream in(path);
  std::string line;
  int n = 0;
  while (std::getline(in, line)) n += line.find(needle) != std::string::npos;
  return n;
}

}  // namespace

TEST(Train, NonFiniteLossOrGradientSkipsTheStepWithoutAnUpdate) {
  VLMo m = text_stage_model();
  int calls = 0;
  TensorMap before_bad;
  bool unchanged_over_bad_steps = false;
  const ObjectiveFn objective = [&](VLMo& model, const Batch& b, const Distributed*) {
    ++calls;
    Outputs out = text_mlm_objective(model, b);
    if (calls == 3) {  // step 3: NaN loss
      before_bad = snapshot(model);
      out["textmlm_loss"] = out["textmlm_loss"] * std::numeric_limits<double>::quiet_NaN();
    } else if (calls == 4) {  // step 4: finite loss (0), NaN gradient: d sqrt(0 * p) / dp
      const at::Tensor p = model->named_parameters()["transformer.blocks.0.mlp_text.fc1.weight"];
      out["textmlm_loss"] = out["textmlm_loss"] * 0 + (p * 0).sqrt().sum();
    } else if (calls == 5) {
      unchanged_over_bad_steps = same_weights(before_bad, snapshot(model));
    }
    return out;
  };
  TrainOptions t = quiet(6);
  t.metrics_path = vlmo::test::temp_dir() + "/m.jsonl";
  const TrainResult r = train(m, objective, text_batches(4), t);
  EXPECT_EQ(r.steps, 6);
  EXPECT_EQ(r.bad_steps, 2);
  EXPECT_TRUE(unchanged_over_bad_steps) << "a skipped step must not change the weights";
  EXPECT_TRUE(std::isnan(r.history[2].at("loss")));
  EXPECT_TRUE(std::isfinite(r.history[5].at("loss")));
  for (const auto& [k, v] : model_state_dict(*m)) EXPECT_TRUE(at::isfinite(v).all().item<bool>()) << k;
  EXPECT_EQ(count_lines_with(t.metrics_path, "\"skipped_step\":\"non-finite loss"), 1);
  EXPECT_EQ(count_lines_with(t.metrics_path, "\"skipped_step\":\"non-finite gradient\""), 1);
}

TEST(Train, StepsThatStayNonFiniteStopTheRunAndKeepTheLastCheckpoint) {
  const std::string dir = vlmo::test::temp_dir();
  VLMo m = text_stage_model();
  TrainOptions t = quiet(4);
  t.checkpoint_path = dir + "/ck.safetensors";
  train(m, text_mlm_objective, text_batches(4), t);
  const std::string good = vlmo::test::read_file(t.checkpoint_path);
  // The weights blow up: every later step is non-finite.
  {
    at::NoGradGuard g;
    m->named_parameters()["transformer.blocks.0.mlp_text.fc1.weight"].fill_(std::nan(""));
  }
  t.max_steps = 50;
  t.max_bad_steps = 3;
  expect_error([&] { train(m, text_mlm_objective, text_batches(4), t); },
               {"3 steps in a row had a non-finite loss or gradient", "step 3", t.checkpoint_path, "left as it was"});
  EXPECT_TRUE(vlmo::test::read_file(t.checkpoint_path) == good) << "the good checkpoint was replaced";
  // A checkpoint is due while the weights are broken: it is not written.
  t.checkpoint_every = 1;
  expect_error([&] { train(m, text_mlm_objective, text_batches(4), t); },
               {"transformer.blocks.0.mlp_text.fc1.weight is not finite after step 1", "left as it was"});
  EXPECT_TRUE(vlmo::test::read_file(t.checkpoint_path) == good) << "the good checkpoint was replaced";
}

TEST(Train, UnusableSamplesAreCountedAndAHighSkipRateStopsTheRun) {
  VLMo m = text_stage_model();
  const BatchFn inner = text_batches(4);
  // One corrupt image per batch (1 of 5 read), and from step 6 on 3 per batch (3 of 7).
  const BatchFn batches = [inner](int64_t index) {
    Batch b = inner(index);
    const int bad = index < 5 ? 1 : 3;
    b.skipped["corrupt_image"] = bad;
    for (int i = 0; i < bad; ++i) b.skip_log.push_back("img" + std::to_string(index) + ".jpg: not a JPEG");
    return b;
  };
  TrainOptions t = quiet(5);
  t.skip_window = 20;
  t.max_skip_rate = 0.3;
  TrainResult r = train(m, text_mlm_objective, batches, t);
  EXPECT_EQ(r.skipped.at("corrupt_image"), 5);  // 20 % skipped: the run goes on
  t.max_steps = 30;
  expect_error([&] { train(m, text_mlm_objective, batches, t); },
               {"of the last", "samples read were skipped", "> the limit of 30%", "corrupt_image"});
}

TEST(Train, ResumeDropsMetricsPastTheCheckpointAndATornLine) {
  const std::string dir = vlmo::test::temp_dir();
  auto run = [&](int64_t stop_after, const std::string& resume) {
    VLMo m = text_stage_model();
    TrainOptions t = quiet(8);
    t.checkpoint_path = dir + "/ck.safetensors";
    t.metrics_path = dir + "/m.jsonl";
    t.stop_after = stop_after;
    return train(m, text_mlm_objective, text_batches(4), t, resume);
  };
  run(2, "");  // steps 1-2, checkpoint at 2
  std::filesystem::copy_file(dir + "/ck.safetensors", dir + "/ck2.safetensors");
  run(3, dir + "/ck.safetensors");  // steps 3-5 logged; then the "kill": back to the step-2 checkpoint
  { std::ofstream(dir + "/m.jsonl", std::ios::app) << "{\"stage\":\"train\",\"step\":6,\"lo"; }
  std::filesystem::rename(dir + "/ck2.safetensors", dir + "/ck.safetensors");
  run(0, dir + "/ck.safetensors");
  std::ifstream in(dir + "/m.jsonl");
  std::string line;
  std::vector<int> steps;
  while (std::getline(in, line)) {
    const auto j = nlohmann::json::parse(line);  // no torn line is left
    steps.push_back(j.at("step").get<int>());
  }
  EXPECT_EQ(steps, (std::vector<int>{1, 2, 3, 4, 5, 6, 7, 8}));
}

TEST(Train, AStopRequestSavesACheckpointAndResumesExactly) {
  const std::string dir = vlmo::test::temp_dir();
  TrainOptions t = quiet(6);
  t.checkpoint_path = dir + "/full.safetensors";
  VLMo a = text_stage_model();
  train(a, text_mlm_objective, text_batches(4), t);

  VLMo b = text_stage_model();
  t.checkpoint_path = dir + "/cut.safetensors";
  int calls = 0;
  const ObjectiveFn stop_at_3 = [&](VLMo& model, const Batch& batch, const Distributed*) {
    if (++calls == 3) request_stop(SIGTERM);  // as the handler does, during step 3
    return text_mlm_objective(model, batch);
  };
  try {
    train(b, stop_at_3, text_batches(4), t);
    ADD_FAILURE() << "expected vlmo::Interrupted";
  } catch (const Interrupted& e) {
    EXPECT_EQ(e.signal, SIGTERM);
    EXPECT_EQ(e.step, 3);
    EXPECT_EQ(e.checkpoint, t.checkpoint_path);
    EXPECT_NE(std::string(e.what()).find("--resume " + t.checkpoint_path), std::string::npos) << e.what();
  }
  clear_stop_request();
  VLMo c = text_stage_model();
  train(c, text_mlm_objective, text_batches(4), t, t.checkpoint_path);
  const TensorMap wa = read_weights(dir + "/full.safetensors"), wc = read_weights(dir + "/cut.safetensors");
  for (const auto& [k, v] : wa) EXPECT_TRUE(at::equal(v, wc.at(k))) << k;
}
