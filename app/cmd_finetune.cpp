// vlmo finetune / vlmo evaluate: the official fine-tuning recipes (reference §3 table) on
// VQAv2, NLVR2 and COCO/Flickr30K retrieval data, and their official metrics.
#include <ATen/ATen.h>

#include <cmath>
#include <fstream>
#include <iostream>
#include <memory>
#include <nlohmann/json.hpp>

#include "cli.h"
#include "vlmo/checkpoint.h"
#include "vlmo/data.h"
#include "vlmo/downstream_data.h"
#include "vlmo/error.h"
#include "vlmo/image_tensor.h"
#include "vlmo/pretrain.h"
#include "vlmo/retrieval.h"
#include "vlmo/sources.h"
#include "vlmo/vqa_eval.h"

namespace vlmo::cli {
namespace {

struct Recipe {
  int image_size;
  double lr, drop_path, head_lr_mult;
  int64_t effective_batch;
  double epochs;       // 0: use steps
  int64_t steps;
  double warmup_fraction;
};

// Official settings by task and preset (reference §3).
Recipe recipe(const std::string& task, const std::string& preset) {
  const bool large = preset == "large", plus = preset == "base_plus";
  if (task == "vqa") return {480, large ? 1.5e-5 : 3e-5, 0.15, 20.0, 128, 10, 0, 0.1};
  if (task == "nlvr2") return {384, plus || large ? 3e-5 : 5e-5, plus ? 0.2 : large ? 0.15 : 0.1, 1.0, 128, 10, 0, 0.1};
  if (task == "irtr") return {384, large ? 2e-5 : 3e-5, 0.2, 1.0, 3072, 0, 3000, 0.1};
  throw Error(cat("unknown task \"", task, "\" (expected vqa, nlvr2 or irtr)"));
}

Tokenizer tokenizer(const Args& a) {
  return Tokenizer::from_file(a.get("vocab").empty() ? Tokenizer::default_vocab_path() : a.get("vocab"));
}

int run_finetune(const Args& a) {
  const std::string task = a.get("task");
  const Recipe r = recipe(task, a.get("preset"));
  if (a.get("init").empty()) throw Error("--init CHECKPOINT (the pre-trained weights) is required");
  // The model: --config, else the config the --init checkpoint records, else --preset.
  WeightsFile init = read_weights_file(a.get("init"));
  Config cfg = Config::preset(a.get("preset"));
  if (!a.get("config").empty()) {
    cfg = load_config(a.get("config"));
  } else if (auto it = init.metadata.find("config"); it != init.metadata.end()) {
    cfg = config_from_json_text(it->second, a.get("init") + " (config)");
  }
  cfg.image_size = a.get_int("image-size") > 0 ? a.get_int("image-size") : r.image_size;
  cfg.drop_path_rate = r.drop_path;
  const Tokenizer tok = tokenizer(a);
  const uint64_t seed = std::stoull(a.get("seed"));
  std::map<std::string, std::string> meta;
  CollateOptions co;
  co.image_size = cfg.image_size;
  co.max_text_len = cfg.max_text_len;
  co.train_transform = true;  // square_transform_randaug
  const int64_t batch = a.get_int("batch-size");
  BatchFn batches;
  ObjectiveFn objective;
  size_t n = 0;

  if (task == "vqa") {
    auto qs = std::make_shared<std::vector<VqaQuestion>>(read_vqav2(a.get("questions"), a.get("annotations")));
    const auto vocab = build_answer_vocab(*qs, a.get_int("min-answer-count"));
    if (vocab.empty()) throw Error("no answer occurs often enough for the vocabulary (--min-answer-count)");
    auto a2l = std::make_shared<std::unordered_map<std::string, int64_t>>();
    for (size_t i = 0; i < vocab.size(); ++i) (*a2l)[vocab[i]] = static_cast<int64_t>(i);
    auto kept = std::make_shared<std::vector<std::pair<size_t, SoftTargets>>>();
    for (size_t i = 0; i < qs->size(); ++i) {
      SoftTargets t = vqa_soft_targets((*qs)[i].answers, *a2l);
      if (!t.labels.empty()) kept->emplace_back(i, std::move(t));  // dropped otherwise, as the official
    }
    cfg.heads = {"vqa"};
    cfg.vqav2_label_size = static_cast<int>(vocab.size());
    meta["vqa_answers"] = nlohmann::json(vocab).dump();
    n = kept->size();
    auto order = std::make_shared<EpochOrder>(n, seed);
    const std::string images = a.get("images"), split = a.get("image-split");
    const int L = static_cast<int>(vocab.size());
    batches = [=, &tok](int64_t index) {
      std::vector<Example> ex;
      at::Tensor targets = at::zeros({batch, L});
      for (int64_t j = 0; j < batch; ++j) {
        const auto& [qi, t] = (*kept)[order->at(index * batch + j)];
        const VqaQuestion& q = (*qs)[qi];
        ex.push_back({read_image(coco_image_path(images, split, q.image_id)), q.question});
        for (size_t k = 0; k < t.labels.size(); ++k) targets[j][t.labels[k]] = t.scores[k];
      }
      Batch b = collate(ex, tok, co, mix_seed(seed, static_cast<uint64_t>(index)));
      b.vqa_targets = targets;
      return b;
    };
    objective = [](VLMo& m, const Batch& b) { return Outputs{{"vqa_loss", compute_vqa(m, b).loss}}; };
  } else if (task == "nlvr2") {
    auto ex = std::make_shared<std::vector<Nlvr2Example>>(read_nlvr2(a.get("train"), a.get("images"), "train"));
    cfg.heads = {"nlvr2"};
    cfg.num_token_types = 3;
    n = ex->size();
    auto order = std::make_shared<EpochOrder>(n, seed);
    batches = [=, &tok](int64_t index) {
      std::vector<Example> left, right;
      std::vector<int64_t> labels;
      for (int64_t j = 0; j < batch; ++j) {
        const Nlvr2Example& e = (*ex)[order->at(index * batch + j)];
        left.push_back({read_image(e.image0), e.sentence});
        right.push_back({read_image(e.image1), e.sentence});
        labels.push_back(e.label);
      }
      Batch b = collate(left, tok, co, mix_seed(seed, 2 * static_cast<uint64_t>(index)));
      b.image_0 = b.image;
      b.image_1 = collate(right, tok, co, mix_seed(seed, 2 * static_cast<uint64_t>(index) + 1)).image;
      b.nlvr2_labels = at::tensor(at::ArrayRef<int64_t>(labels), at::kLong);
      return b;
    };
    objective = [](VLMo& m, const Batch& b) { return Outputs{{"nlvr2_loss", compute_nlvr2(m, b).loss}}; };
  } else {
    auto images = std::make_shared<std::vector<KarpathyImage>>();
    for (auto& k : read_karpathy(a.get("karpathy"), a.get("images")))
      if (k.split == "train" || k.split == "restval") images->push_back(std::move(k));
    auto pairs = std::make_shared<std::vector<std::pair<size_t, size_t>>>();
    for (size_t i = 0; i < images->size(); ++i)
      for (size_t c = 0; c < (*images)[i].captions.size(); ++c) pairs->emplace_back(i, c);
    cfg.heads = {"itc", "itm"};
    n = pairs->size();
    auto order = std::make_shared<EpochOrder>(n, seed);
    batches = [=, &tok](int64_t index) {
      std::vector<Example> ex;
      for (int64_t j = 0; j < batch; ++j) {
        const auto& [i, c] = (*pairs)[order->at(index * batch + j)];
        ex.push_back({read_image((*images)[i].path), (*images)[i].captions[c]});
      }
      return collate(ex, tok, co, mix_seed(seed, static_cast<uint64_t>(index)));
    };
    objective = irtr_objective;
  }
  if (n == 0) throw Error("no training examples");
  cfg.validate();
  VLMo model(cfg);
  init_weights(model, seed);
  const LoadReport rep = load_weights(model, std::move(init.tensors), false);
  std::cerr << "initialised from " << a.get("init") << " (missing tensors keep their fresh initialisation)\n" << rep.describe();

  TrainOptions t;
  t.name = "finetune-" + task;
  t.accumulate = static_cast<int>(std::max<int64_t>(1, r.effective_batch / batch));
  const int64_t per_step = batch * t.accumulate;
  t.max_steps = a.get_int("steps") > 0 ? a.get_int("steps")
                : r.epochs > 0 ? static_cast<int64_t>(std::ceil(r.epochs * static_cast<double>(n) / per_step))
                               : r.steps;
  t.warmup_steps = static_cast<int64_t>(r.warmup_fraction * t.max_steps);
  t.lr = a.get_double("lr") > 0 ? a.get_double("lr") : r.lr;
  t.head_lr_mult = r.head_lr_mult;
  t.batch_size = batch;
  t.checkpoint_path = a.get("out");
  t.checkpoint_every = 1000;
  t.metrics_path = a.get("metrics");
  t.loader_threads = a.get_int("loader-threads");
  t.config_json = config_to_json_text(cfg);
  t.metadata = meta;
  std::cerr << t.name << ": " << n << " examples, " << t.max_steps << " steps of " << per_step << " samples, lr "
            << t.lr << ", image " << cfg.image_size << " px\n";
  train(model, objective, batches, t, a.get("resume"));
  return 0;
}

int run_evaluate(const Args& a) {
  const std::string task = a.get("task");
  std::map<std::string, std::string> meta;
  VLMo model = load_model(a.get("model"), &meta);
  const Config& cfg = model->config();
  const Tokenizer tok = tokenizer(a);
  at::NoGradGuard guard;
  nlohmann::json out;
  out["task"] = task;
  if (task == "vqa") {
    if (model->vqa_classifier.is_empty() || !meta.count("vqa_answers")) throw Error(cat(a.get("model"), ": the model has no VQA head"));
    const auto answers = nlohmann::json::parse(meta["vqa_answers"]).get<std::vector<std::string>>();
    const auto qs = read_vqav2(a.get("questions"), a.get("annotations"));
    std::vector<std::pair<int64_t, std::string>> predictions;
    double acc = 0;
    int64_t scored = 0;
    for (size_t i = 0; i < qs.size(); i += 32) {
      std::vector<at::Tensor> pix;
      std::vector<std::string> q;
      for (size_t j = i; j < std::min(qs.size(), i + 32); ++j) {
        pix.push_back(eval_transform(read_image(coco_image_path(a.get("images"), a.get("image-split"), qs[j].image_id)), cfg.image_size));
        q.push_back(qs[j].question);
      }
      const auto [ids, masks] = encode_batch(tok, q, cfg.max_text_len);
      const at::Tensor pred = model->vqa_classifier->forward(model->infer(ids, masks, at::stack(pix)).cls_feats).argmax(1);
      for (size_t j = i; j < std::min(qs.size(), i + 32); ++j) {
        const std::string& ans = answers.at(pred[j - i].item<int64_t>());
        predictions.emplace_back(qs[j].question_id, ans);
        if (!qs[j].answers.empty()) acc += vqa_accuracy(ans, qs[j].answers), ++scored;
      }
    }
    if (!a.get("submission").empty()) write_vqa_submission(a.get("submission"), predictions);
    out["questions"] = qs.size();
    if (scored) out["accuracy"] = acc / scored;
  } else if (task == "nlvr2") {
    if (model->nlvr2_classifier.is_empty()) throw Error(cat(a.get("model"), ": the model has no NLVR2 head"));
    const auto ex = read_nlvr2(a.get("data"), a.get("images"), a.get("split"));
    std::vector<std::string> ids;
    std::vector<bool> correct;
    for (size_t i = 0; i < ex.size(); i += 16) {
      std::vector<at::Tensor> p0, p1;
      std::vector<std::string> s;
      for (size_t j = i; j < std::min(ex.size(), i + 16); ++j) {
        p0.push_back(eval_transform(read_image(ex[j].image0), cfg.image_size));
        p1.push_back(eval_transform(read_image(ex[j].image1), cfg.image_size));
        s.push_back(ex[j].sentence);
      }
      Batch b;
      std::tie(b.text_ids, b.text_masks) = encode_batch(tok, s, cfg.max_text_len);
      b.image_0 = at::stack(p0);
      b.image_1 = at::stack(p1);
      b.nlvr2_labels = at::zeros({static_cast<int64_t>(s.size())}, at::kLong);
      const at::Tensor pred = compute_nlvr2(model, b).logits.argmax(1);
      for (size_t j = i; j < std::min(ex.size(), i + 16); ++j) {
        ids.push_back(ex[j].identifier);
        correct.push_back((pred[j - i].item<int64_t>() == 1) == ex[j].label);
      }
    }
    const Nlvr2Score sc = nlvr2_score(ids, correct);
    out["examples"] = ids.size();
    out["accuracy"] = sc.accuracy;
    out["consistency"] = sc.consistency;
  } else if (task == "irtr") {
    std::vector<at::Tensor> img_feats, txt_feats;
    std::vector<int64_t> owner;
    std::vector<std::string> caps;
    int64_t ni = 0;
    const int64_t k = a.get_int("rerank");
    if (k > 0 && model->itm_score.is_empty()) throw Error(cat(a.get("model"), ": --rerank needs an ITM head"));
    std::vector<at::Tensor> pix, kept;  // kept: every image, for the re-ranking's fusion passes
    auto flush = [&] {
      if (pix.empty()) return;
      img_feats.push_back(model->infer_image_ft(at::stack(pix)).cls_feats);
      if (k > 0) kept.insert(kept.end(), pix.begin(), pix.end());
      pix.clear();
    };
    for (const auto& kimg : read_karpathy(a.get("karpathy"), a.get("images"))) {
      if (kimg.split != a.get("split")) continue;
      pix.push_back(eval_transform(read_image(kimg.path), cfg.image_size));
      if (pix.size() == 32) flush();
      for (const auto& c : kimg.captions) caps.push_back(c), owner.push_back(ni);
      ++ni;
    }
    flush();
    if (ni == 0) throw Error(cat(a.get("karpathy"), ": no image in split \"", a.get("split"), "\""));
    const auto [ids, masks] = encode_batch(tok, caps, cfg.max_text_len);
    for (int64_t i = 0; i < ids.size(0); i += 64)
      txt_feats.push_back(model->infer_text_ft(ids.narrow(0, i, std::min<int64_t>(64, ids.size(0) - i)),
                                               masks.narrow(0, i, std::min<int64_t>(64, ids.size(0) - i))).cls_feats);
    const at::Tensor scores = at::matmul(at::cat(img_feats), at::cat(txt_feats).t());
    const Recall rc = retrieval_recall(scores, owner);
    if (k > 0) {
      const Recall rr = rerank_recall(scores, owner, k, itm_pair_scorer(model, at::stack(kept), ids, masks));
      out["recall_itm_rerank"] = {{"k", k}, {"tr_r1", rr.tr1}, {"tr_r5", rr.tr5}, {"tr_r10", rr.tr10},
                                  {"ir_r1", rr.ir1}, {"ir_r5", rr.ir5}, {"ir_r10", rr.ir10}};
    }
    out["images"] = ni;
    out["captions"] = caps.size();
    out["recall"] = {{"tr_r1", rc.tr1}, {"tr_r5", rc.tr5}, {"tr_r10", rc.tr10}, {"ir_r1", rc.ir1}, {"ir_r5", rc.ir5}, {"ir_r10", rc.ir10}};
  } else {
    throw Error(cat("unknown task \"", task, "\" (expected vqa, nlvr2 or irtr)"));
  }
  std::cout << out.dump(2) << "\n";
  return 0;
}

}  // namespace

Command finetune_command() {
  Command c{"finetune", "Fine-tune a pre-trained checkpoint with the official recipe of a task: vqa (480 px, head lr x20, soft-score BCE), nlvr2 (384 px, three token types), irtr (384 px, contrastive). Position tables are resized on load.",
            "vlmo finetune --task {vqa,nlvr2,irtr} --init PRETRAINED [data options] --out CKPT"};
  c.options = {{"task", "vqa", "vqa, nlvr2 or irtr"},
               {"init", "", "pre-trained checkpoint (e.g. a 224-px stage-3 checkpoint)"},
               {"preset", "base", "preset of the model (and of the recipe's learning rate)"},
               {"config", "", "model config JSON (default: the one --init records, else --preset)"},
               {"questions", "", "vqa: v2_OpenEnded_mscoco_train2014_questions.json"},
               {"annotations", "", "vqa: v2_mscoco_train2014_annotations.json"},
               {"image-split", "train2014", "vqa: COCO file-name split (COCO_<split>_<id>.jpg)"},
               {"min-answer-count", "9", "vqa: answers kept in the vocabulary"},
               {"train", "", "nlvr2: train.json"},
               {"karpathy", "", "irtr: dataset_coco.json / dataset_flickr30k.json"},
               {"images", ".", "image folder (COCO folder, NLVR2 images root, Karpathy image root)"},
               {"vocab", "", "vocab.txt (default: BERT uncased)"},
               {"image-size", "0", "override the recipe's image size"},
               {"steps", "0", "override the recipe's steps"},
               {"lr", "0", "override the recipe's learning rate"},
               {"batch-size", "16", "samples per micro-batch (accumulated to the recipe's batch)"},
               {"out", "finetune.safetensors", "checkpoint"},
               {"metrics", "finetune.metrics.jsonl", "JSON-lines metrics"},
               {"resume", "", "checkpoint to resume exactly"},
               {"loader-threads", "2", "background loader threads"},
               {"seed", "1", "seed"}};
  c.run = run_finetune;
  return c;
}

Command evaluate_command() {
  Command c{"evaluate", "Official metrics of a fine-tuned model: vqa (accuracy with the official normalisation, EvalAI submission file), nlvr2 (accuracy, consistency), irtr (TR/IR R@1/5/10).",
            "vlmo evaluate --task {vqa,nlvr2,irtr} --model CKPT [data options]"};
  c.options = {{"task", "vqa", "vqa, nlvr2 or irtr"},
               {"model", "", "fine-tuned checkpoint"},
               {"questions", "", "vqa: questions JSON"},
               {"annotations", "", "vqa: annotations JSON (none for test-dev: submission only)"},
               {"image-split", "val2014", "vqa: COCO file-name split"},
               {"submission", "", "vqa: write the EvalAI submission JSON here"},
               {"data", "", "nlvr2: dev.json or test1.json"},
               {"split", "test", "nlvr2: dev or test1; irtr: Karpathy split (test, val)"},
               {"karpathy", "", "irtr: Karpathy JSON"},
               {"rerank", "0", "irtr: re-rank the dual encoder's top K with the ITM head (0: off)"},
               {"images", ".", "image folder / root"},
               {"vocab", "", "vocab.txt (default: BERT uncased)"}};
  c.run = run_evaluate;
  return c;
}

}  // namespace vlmo::cli
