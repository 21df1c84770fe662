// The demo, as one readable story: build the world, pre-train in three stages, fine-tune the
// dual encoder for retrieval, evaluate on the held-out test split, report against chance.
#include "vlmo/demo.h"

#include <ATen/ATen.h>
#include <sys/stat.h>

#include <chrono>
#include <cstdio>
#include <algorithm>
#include <fstream>
#include <map>

#include "vlmo/checkpoint.h"
#include "vlmo/data.h"
#include "vlmo/demo_world.h"
#include "vlmo/error.h"
#include "vlmo/image_tensor.h"
#include "vlmo/pretrain.h"
#include "vlmo/retrieval.h"

namespace vlmo {
namespace {

constexpr double vqa_target_score = 1.0;  // every demo question has one unanimous answer

Config demo_config() {
  Config c;
  c.embed_dim = 128;
  c.depth = 4;
  c.num_heads = 4;
  c.image_size = 64;
  c.patch_size = 16;
  c.vlffn_start_layer_index = 3;
  c.max_text_len = 24;
  c.drop_path_rate = 0.0;
  c.heads = {"mlm", "itm", "itc", "mim"};
  return c;
}

struct Split {
  std::vector<Image> images;
  std::vector<std::string> captions;
  std::vector<int64_t> caption_image;
};

Split build_split(const DemoWorld& w, const std::string& name, int captions_per_image) {
  Split s;
  const auto& scenes = w.split(name);
  for (size_t i = 0; i < scenes.size(); ++i) {
    s.images.push_back(w.render(scenes[i]));
    for (int k = 0; k < captions_per_image; ++k) {
      s.captions.push_back(w.caption(scenes[i], static_cast<int>(i * 7 + k * 3) % w.num_caption_variants()));
      s.caption_image.push_back(static_cast<int64_t>(i));
    }
  }
  return s;
}

// A split through the dual encoder: its image and text inputs and the score matrix, in chunks.
struct DualScores {
  at::Tensor images, ids, masks, scores;
};

DualScores dual_scores(VLMo& model, const Tokenizer& tok, const Split& s, const Config& cfg) {
  at::NoGradGuard guard;
  model->eval();
  DualScores d;
  std::vector<at::Tensor> pix, img_feats, txt_feats;
  for (const auto& im : s.images) pix.push_back(eval_transform(im, cfg.image_size));
  d.images = at::stack(pix);
  std::tie(d.ids, d.masks) = encode_batch(tok, s.captions, cfg.max_text_len);
  for (int64_t i = 0; i < d.images.size(0); i += 64)
    img_feats.push_back(model->infer_image_ft(d.images.narrow(0, i, std::min<int64_t>(64, d.images.size(0) - i))).cls_feats);
  for (int64_t i = 0; i < d.ids.size(0); i += 64) {
    const int64_t n = std::min<int64_t>(64, d.ids.size(0) - i);
    txt_feats.push_back(model->infer_text_ft(d.ids.narrow(0, i, n), d.masks.narrow(0, i, n)).cls_feats);
  }
  d.scores = at::matmul(at::cat(img_feats), at::cat(txt_feats).t());
  model->train();
  return d;
}

Recall evaluate_retrieval(VLMo& model, const Tokenizer& tok, const Split& s, const Config& cfg) {
  return retrieval_recall(dual_scores(model, tok, s, cfg).scores, s.caption_image);
}

nlohmann::json recall_json(const Recall& r) {
  return {{"tr_r1", r.tr1}, {"tr_r5", r.tr5}, {"tr_r10", r.tr10}, {"ir_r1", r.ir1}, {"ir_r5", r.ir5}, {"ir_r10", r.ir10}};
}

}  // namespace

nlohmann::json run_demo(const DemoOptions& o) {
  const auto t_start = std::chrono::steady_clock::now();
  ::mkdir(o.out_dir.c_str(), 0755);
  at::manual_seed(o.seed);
  const Config cfg = demo_config();
  const Tokenizer tok = Tokenizer::from_file(o.vocab.empty() ? Tokenizer::default_vocab_path() : o.vocab);
  const DemoWorld world(o.seed, 6000, 100, 100, cfg.image_size);
  const Split test = build_split(world, "test", 2), val = build_split(world, "val", 2);
  const auto& train_scenes = world.split("train");
  auto steps = [&](int64_t n) { return std::max<int64_t>(2, static_cast<int64_t>(n * o.step_scale)); };

  VLMo model(cfg);
  init_weights(model, o.seed);
  nlohmann::json report;
  report["seed"] = o.seed;
  report["config"] = nlohmann::json::parse(config_to_json_text(cfg));
  report["world"] = {{"train_scenes", train_scenes.size()}, {"val_scenes", val.images.size()},
                     {"test_scenes", test.images.size()}, {"test_captions", test.captions.size()},
                     {"image_size", cfg.image_size}};
  const std::string metrics = o.out_dir + "/metrics.jsonl";
  std::remove(metrics.c_str());

  // One training run of a stage: examples from the training scenes, in a per-epoch order.
  // Trains `m` with `batches` and records the stage in the report.
  auto fit = [&](VLMo& m, const std::string& name, const ObjectiveFn& objective, const BatchFn& batches,
                 int64_t n_steps, int64_t batch, double lr, double head_lr_mult,
                 const std::map<std::string, std::string>& meta) {
    TrainOptions t;
    t.name = name;
    t.max_steps = n_steps;
    t.warmup_steps = std::max<int64_t>(1, n_steps / 10);
    t.lr = lr;
    t.head_lr_mult = head_lr_mult;
    t.batch_size = batch;
    t.progress = o.progress;
    t.log_every = 25;
    t.loader_threads = 1;
    t.checkpoint_path = o.out_dir + "/" + name + ".safetensors";
    t.config_json = config_to_json_text(m->config());
    t.metadata = meta;
    t.metrics_path = o.out_dir + "/" + name + ".metrics.jsonl";
    const TrainResult r = train(m, objective, batches, t);
    // Summaries: mean of each logged value over the first and the last 10 % of steps.
    nlohmann::json first, last;
    const size_t w = std::max<size_t>(1, r.history.size() / 10);
    for (const auto& [k, v] : r.history.front()) {
      if (k == "step" || k == "lr") continue;
      double a = 0, b = 0;
      for (size_t i = 0; i < w; ++i) a += r.history[i].at(k), b += r.history[r.history.size() - 1 - i].at(k);
      first[k] = a / w;
      last[k] = b / w;
    }
    report["stages"][name] = {{"steps", r.steps}, {"batch", batch}, {"lr", lr}, {"seconds", r.seconds},
                              {"first_steps", first}, {"last_steps", last}};
  };

  auto run_stage = [&](const std::string& name, Stage stage, const ObjectiveFn& objective, int64_t n_steps,
                       int64_t batch, double lr, bool with_images, bool with_text, bool patch_mask) {
    set_trainable_for_stage(model, stage);
    auto order = std::make_shared<EpochOrder>(train_scenes.size(), mix_seed(o.seed, std::hash<std::string>()(name)));
    CollateOptions co;
    co.image_size = cfg.image_size;
    co.max_text_len = cfg.max_text_len;
    co.patch_mask = patch_mask;
    co.patch_size = cfg.patch_size;
    const uint64_t stage_seed = mix_seed(o.seed, std::hash<std::string>()(name) + 1);
    BatchFn batches = [&, order, co, batch, with_images, with_text, stage_seed](int64_t index) {
      std::vector<Example> ex;
      for (int64_t j = 0; j < batch; ++j) {
        const int64_t g = index * batch + j;
        const Scene& s = train_scenes[order->at(g)];
        Example e;
        if (with_images) e.image = world.render(s);
        if (with_text) e.text = world.caption(s, static_cast<int>(mix_seed(stage_seed, g) % world.num_caption_variants()));
        ex.push_back(std::move(e));
      }
      return collate(ex, tok, co, mix_seed(stage_seed, index));
    };
    fit(model, name, objective, batches, n_steps, batch, lr, 1.0, {});
  };

  run_stage("stage1-image", Stage::kImage, mim_objective, steps(150), 64, 1e-3, true, false, true);
  run_stage("stage2-text", Stage::kText, text_mlm_objective, steps(150), 64, 1e-3, false, true, false);
  run_stage("stage3-vl", Stage::kVL, vl_objective, steps(300), 32, 1e-3, true, true, false);
  const Recall zero_shot = evaluate_retrieval(model, tok, test, cfg);
  run_stage("finetune-retrieval", Stage::kVL, irtr_objective, steps(600), 64, 1e-3, true, true, false);
  const DualScores test_scores = dual_scores(model, tok, test, cfg);
  const Recall ft = retrieval_recall(test_scores.scores, test.caption_image);
  const Recall ft_val = evaluate_retrieval(model, tok, val, cfg);
  // The dual encoder's top 8 re-scored with the ITM head.
  Recall reranked;
  {
    at::NoGradGuard guard;
    model->eval();
    reranked = rerank_recall(test_scores.scores, test.caption_image, 8,
                             itm_pair_scorer(model, test_scores.images, test_scores.ids, test_scores.masks));
    model->train();
  }
  const Recall chance = chance_recall(static_cast<int64_t>(test.images.size()), test.caption_image);
  const std::string stage3 = o.out_dir + "/stage3-vl.safetensors";

  // ---- VQA: a 13-way answer classifier on the fusion encoder, from the stage-3 weights.
  const std::vector<std::string> answers = DemoWorld::answers();
  Config vcfg = cfg;
  vcfg.heads = {"vqa"};
  vcfg.vqav2_label_size = static_cast<int>(answers.size());
  VLMo vqa(vcfg);
  init_weights(vqa, o.seed);
  load_weights(vqa, read_weights(stage3), false);
  auto answer_index = [&](const std::string& a) {
    return static_cast<int64_t>(std::find(answers.begin(), answers.end(), a) - answers.begin());
  };
  {
    auto order = std::make_shared<EpochOrder>(train_scenes.size(), mix_seed(o.seed, 501));
    BatchFn batches = [&, order](int64_t index) {
      const int64_t B = 32;
      std::vector<at::Tensor> pix;
      std::vector<std::string> qs;
      at::Tensor targets = at::zeros({B, static_cast<int64_t>(answers.size())});
      for (int64_t j = 0; j < B; ++j) {
        const int64_t g = index * B + j;
        const Scene& sc = train_scenes[order->at(g)];
        const auto [q, a] = world.question(sc, mix_seed(o.seed + 7, g));
        pix.push_back(to_normalized_tensor(world.render(sc)));
        qs.push_back(q);
        targets[j][answer_index(a)] = vqa_target_score;
      }
      Batch b;
      std::tie(b.text_ids, b.text_masks) = encode_batch(tok, qs, cfg.max_text_len);
      b.image = at::stack(pix);
      b.vqa_targets = targets;
      return b;
    };
    ObjectiveFn objective = [](VLMo& m, const Batch& b) {
      LogitsLoss l = compute_vqa(m, b);
      const at::Tensor picked = l.logits.argmax(1);
      return Outputs{{"vqa_loss", l.loss},
                     {"vqa_score", b.vqa_targets.gather(1, picked.unsqueeze(1)).mean().detach()}};
    };
    fit(vqa, "finetune-vqa", objective, batches, steps(300), 32, 1e-3, 20.0, {{"vqa_answers", nlohmann::json(answers).dump()}});
  }
  // Test: two questions per test scene; majority answer = the most frequent training answer.
  double vqa_acc = 0, vqa_majority = 0;
  int64_t vqa_n = 0;
  {
    std::map<std::string, int> counts;
    for (size_t i = 0; i < train_scenes.size(); ++i) counts[world.question(train_scenes[i], mix_seed(o.seed + 7, i)).second]++;
    const std::string majority = std::max_element(counts.begin(), counts.end(), [](auto& a, auto& b) { return a.second < b.second; })->first;
    at::NoGradGuard guard;
    vqa->eval();
    std::vector<at::Tensor> pix;
    std::vector<std::string> qs, gold;
    for (size_t i = 0; i < world.split("test").size(); ++i)
      for (int k = 0; k < 2; ++k) {
        const Scene& sc = world.split("test")[i];
        const auto [q, a] = world.question(sc, mix_seed(o.seed + 99, i * 2 + k));
        pix.push_back(to_normalized_tensor(world.render(sc)));
        qs.push_back(q);
        gold.push_back(a);
      }
    const auto [ids, masks] = encode_batch(tok, qs, cfg.max_text_len);
    const at::Tensor pred = vqa->vqa_classifier->forward(vqa->infer(ids, masks, at::stack(pix)).cls_feats).argmax(1);
    for (size_t i = 0; i < gold.size(); ++i) {
      vqa_acc += answers[pred[i].item<int64_t>()] == gold[i];
      vqa_majority += gold[i] == majority;
    }
    vqa_n = static_cast<int64_t>(gold.size());
    vqa_acc /= vqa_n;
    vqa_majority /= vqa_n;
    report["vqa"] = {{"test_questions", vqa_n}, {"accuracy", vqa_acc}, {"majority_answer", majority},
                     {"majority_accuracy", vqa_majority}};
  }

  // ---- NLVR2: statements over image pairs, two fusion passes, three token types.
  Config ncfg = cfg;
  ncfg.heads = {"nlvr2"};
  ncfg.num_token_types = 3;
  VLMo nlvr2(ncfg);
  init_weights(nlvr2, o.seed);
  load_weights(nlvr2, read_weights(stage3), false);
  auto pair_batch = [&](const std::vector<Scene>& scenes, int64_t first, int64_t B, uint64_t salt) {
    std::vector<at::Tensor> p0, p1;
    std::vector<std::string> st;
    std::vector<int64_t> labels;
    for (int64_t j = 0; j < B; ++j) {
      const uint64_t g = static_cast<uint64_t>(first + j);
      const Scene& l = scenes[mix_seed(salt, 2 * g) % scenes.size()];
      const Scene& r = scenes[mix_seed(salt, 2 * g + 1) % scenes.size()];
      const auto [text, truth] = world.statement(l, r, mix_seed(salt + 1, g));
      p0.push_back(to_normalized_tensor(world.render(l)));
      p1.push_back(to_normalized_tensor(world.render(r)));
      st.push_back(text);
      labels.push_back(truth ? 1 : 0);
    }
    Batch b;
    std::tie(b.text_ids, b.text_masks) = encode_batch(tok, st, cfg.max_text_len);
    b.image_0 = at::stack(p0);
    b.image_1 = at::stack(p1);
    b.nlvr2_labels = at::tensor(at::ArrayRef<int64_t>(labels), at::kLong);
    return b;
  };
  {
    BatchFn batches = [&](int64_t index) { return pair_batch(train_scenes, index * 32, 32, mix_seed(o.seed, 777)); };
    ObjectiveFn objective = [](VLMo& m, const Batch& b) {
      LogitsLoss l = compute_nlvr2(m, b);
      return Outputs{{"nlvr2_loss", l.loss}, {"nlvr2_acc", l.logits.argmax(1).eq(b.nlvr2_labels).to(at::kFloat).mean().detach()}};
    };
    fit(nlvr2, "finetune-nlvr2", objective, batches, steps(300), 32, 1e-3, 1.0, {});
  }
  {
    at::NoGradGuard guard;
    nlvr2->eval();
    const Batch b = pair_batch(world.split("test"), 0, 200, mix_seed(o.seed, 778));
    const at::Tensor pred = compute_nlvr2(nlvr2, b).logits.argmax(1);
    const double acc = pred.eq(b.nlvr2_labels).to(at::kDouble).mean().item<double>();
    const double pos = b.nlvr2_labels.to(at::kDouble).mean().item<double>();
    report["nlvr2"] = {{"test_pairs", 200}, {"accuracy", acc}, {"majority_accuracy", std::max(pos, 1 - pos)}};
  }

  report["retrieval"] = {{"test_after_pretraining", recall_json(zero_shot)},
                         {"test_after_finetuning", recall_json(ft)},
                         {"val_after_finetuning", recall_json(ft_val)},
                         {"test_after_finetuning_itm_rerank_top8", recall_json(reranked)},
                         {"chance", recall_json(chance)}};
  report["seconds"] = std::chrono::duration<double>(std::chrono::steady_clock::now() - t_start).count();

  std::printf("\nVLMo demo: shapes world, %zu test images x 2 captions (seed %llu)\n", test.images.size(),
              static_cast<unsigned long long>(o.seed));
  std::printf("%-34s %8s %8s %8s %8s %8s %8s\n", "test split, dual encoder", "TR@1", "TR@5", "TR@10", "IR@1", "IR@5", "IR@10");
  auto row = [](const char* name, const Recall& r) {
    std::printf("%-34s %7.1f%% %7.1f%% %7.1f%% %7.1f%% %7.1f%% %7.1f%%\n", name, 100 * r.tr1, 100 * r.tr5, 100 * r.tr10,
                100 * r.ir1, 100 * r.ir5, 100 * r.ir10);
  };
  row("chance", chance);
  row("after pre-training (no fine-tune)", zero_shot);
  row("after retrieval fine-tuning", ft);
  row("  + ITM re-ranking of the top 8", reranked);
  std::printf("\n%-34s %8s %10s\n", "task (test split)", "accuracy", "majority");
  std::printf("%-34s %7.1f%% %9.1f%%\n", "VQA (2 questions per image)", 100 * report["vqa"]["accuracy"].get<double>(),
              100 * report["vqa"]["majority_accuracy"].get<double>());
  std::printf("%-34s %7.1f%% %9.1f%%\n", "NLVR2 (200 image pairs)", 100 * report["nlvr2"]["accuracy"].get<double>(),
              100 * report["nlvr2"]["majority_accuracy"].get<double>());
  std::printf("R@1 over chance: TR %.1fx, IR %.1fx; total time %.0f s; report: %s/report.json\n", ft.tr1 / chance.tr1,
              ft.ir1 / chance.ir1, report["seconds"].get<double>(), o.out_dir.c_str());
  std::ofstream(o.out_dir + "/report.json") << report.dump(2) << "\n";
  return report;
}

}  // namespace vlmo
