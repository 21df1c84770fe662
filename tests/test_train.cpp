#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <set>

#include "test_util.h"
#include "train_util.h"
#include "vlmo/recipes.h"
#include "vlmo/checkpoint.h"
#include "vlmo/data.h"
#include "vlmo/distributed.h"
#include "vlmo/masking.h"
#include "demo.h"
#include "demo_diagnostics.h"
#include "vlmo/image_tensor.h"
#include "demo_world.h"
#include "vlmo/pretrain.h"
#include "vlmo/retrieval.h"
#include "vlmo/sources.h"
#include "vlmo/tasks.h"
#include "model/model_internals.h"

using namespace vlmo;
using namespace vlmo::test;

TEST(Train, ScheduleAndParameterGroupsAreOfficial) {
  EXPECT_DOUBLE_EQ(learning_rate(0, 100, 10, 1.0), 0.0);  // the first step runs at lr 0, as HF's
  EXPECT_DOUBLE_EQ(learning_rate(5, 100, 10, 1.0), 0.5);
  EXPECT_DOUBLE_EQ(learning_rate(10, 100, 10, 1.0), 1.0);
  EXPECT_DOUBLE_EQ(learning_rate(55, 100, 10, 1.0), 0.5);
  EXPECT_DOUBLE_EQ(learning_rate(100, 100, 10, 1.0), 0.0);
  for (const char* n : {"transformer.blocks.0.attn.q_bias", "transformer.blocks.3.norm1.weight",
                        "transformer.norm.weight", "text_embeddings.LayerNorm.weight", "pooler.dense.bias"})
    EXPECT_TRUE(official_no_decay(n)) << n;
  for (const char* n : {"transformer.blocks.0.norm2_text.weight", "transformer.blocks.0.gamma_1",
                        "transformer.cls_token", "logit_scale", "vqa_classifier.1.weight"})
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
  Config c = tiny();
  c.drop_path_rate = 0;
  VLMo m(c);
  init_weights(m, 3);
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
  VLMo m(tiny());
  init_weights(m, 4);
  const TensorMap before = [&] {
    TensorMap t;
    for (const auto& [k, v] : model_state_dict(*m)) t[k] = v.clone();
    return t;
  }();
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
  VLMo a(tiny());
  init_weights(a, 5);
  t.checkpoint_path = dir + "/a.safetensors";
  const TrainResult full = train(a, vl_objective, batches, t);

  at::manual_seed(11);
  VLMo b(tiny());
  init_weights(b, 5);
  t.checkpoint_path = dir + "/b.safetensors";
  t.stop_after = 3;
  const TrainResult first = train(b, vl_objective, batches, t);
  ASSERT_EQ(first.steps, 3);
  at::manual_seed(999);  // whatever the process did meanwhile
  VLMo c(tiny());
  init_weights(c, 77);
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
  for (const auto& e : std::filesystem::directory_iterator(dir))
    files += e.is_regular_file() && e.path().extension() != ".lock";
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
std::pair<std::map<std::string, at::Tensor>, TrainResult> train_split(const Config& c, const DemoWorld& w, int batch, int accumulate,
                                                                       const ObjectiveFn& objective, const StepObjectiveFn& step) {
  VLMo m(c);
  init_weights(m, 5);
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
  Config c = tiny();
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
  VLMo init(c);
  init_weights(init, 5);
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
  VLMo m(c);
  init_weights(m, 5);
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
  VLMo m(c);
  init_weights(m, 5);
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
  EXPECT_GT((w8.at("itm_score.fc.weight") - [&] { VLMo i(c); init_weights(i, 5); return model_state_dict(*i).at("itm_score.fc.weight"); }())
                .abs().max().item<double>(), 1e-5);  // the ITM head is trained
}

TEST(GlobalBatch, KeyedDrawsFollowTheWeightsAndTheKeys) {
  const at::Tensor weights = at::tensor({0.0, 1.0, 3.0, 0.0}, at::kDouble).reshape({1, 4}).expand({2000, 4}).contiguous();
  std::vector<uint64_t> keys(2000);
  for (size_t i = 0; i < keys.size(); ++i) keys[i] = mix_seed(42, i);
  const at::Tensor picks = keyed_sample_rows(weights, at::arange(2000, at::kLong), keys);
  EXPECT_EQ(picks.eq(0).sum().item<int64_t>() + picks.eq(3).sum().item<int64_t>(), 0);  // zero weight: never
  EXPECT_NEAR(picks.eq(2).to(at::kFloat).mean().item<double>(), 0.75, 0.03);
  // A row's draw depends on its key only, not on the other rows.
  const at::Tensor again = keyed_sample_rows(weights, at::arange(5, 10, at::kLong), std::vector<uint64_t>(keys.begin() + 5, keys.begin() + 10));
  EXPECT_TRUE(at::equal(again, picks.narrow(0, 5, 5)));
  // Sample keys: a row's drop path and dropout follow its key, whatever batch it is in.
  Config c = vlmo::test::tiny_config({"itc"});
  c.drop_path_rate = 0.5;
  VLMo m(c);
  init_weights(m, 1);
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
  expect_error([&] { SampleKeys k({1, 2}); m->infer_image(images); }, {"4 rows under 2 sample keys"});
}

TEST(Distributed, LaunchInfoFromTheLaunchersVariables) {
  const char* vars[] = {"RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "SLURM_PROCID", "SLURM_NTASKS",
                        "SLURM_LOCALID", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK",
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
  ::setenv("OMPI_COMM_WORLD_RANK", "3", 1), ::setenv("OMPI_COMM_WORLD_SIZE", "8", 1), ::setenv("OMPI_COMM_WORLD_LOCAL_RANK", "1", 1);
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
  VLMo m(scaling_config());
  init_weights(m, 3);
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
