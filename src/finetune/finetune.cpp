#include "vlmo/finetune.h"

#include <nlohmann/json.hpp>

#include "vlmo/error.h"
#include "vlmo/evaluate.h"
#include "vlmo/pretrain.h"

namespace vlmo {

Config FinetunePlan::model_config(Config base) const {
  base.heads = heads;
  if (vqa_labels > 0) base.vqav2_label_size = vqa_labels;
  if (token_types > 0) base.num_token_types = token_types;
  return base;
}

void FinetunePlan::apply(TrainOptions& t) const {
  t.name = name;
  t.step_objective = step_objective;
  t.validate = validate;
  for (const auto& [key, value] : metadata) t.metadata[key] = value;
}

namespace {
void need_tokenizer(const std::shared_ptr<const Tokenizer>& tok, const char* plan) {
  if (!tok) throw Error(cat(plan, ": validation data needs a tokenizer"));
}
}  // namespace

FinetunePlan vqa_plan(std::vector<std::string> answers, TaskBatches train, std::vector<VqaQuestion> validation,
                      std::shared_ptr<const Tokenizer> tok, ImageLoader load) {
  FinetunePlan p;
  p.name = "finetune-vqa";
  p.heads = {"vqa"};
  p.vqa_labels = static_cast<int>(answers.size());
  p.train = std::move(train);
  p.objective = vqa_objective;
  p.metadata["vqa_answers"] = nlohmann::json(answers).dump();
  if (!validation.empty()) {
    need_tokenizer(tok, "vqa_plan");
    p.validate = [tok, load, answers = std::move(answers), rest = std::move(validation)](VLMo& m) {
      const VqaEvaluation e = evaluate_vqa(m, *tok, rest, answers, load);
      return std::map<std::string, double>{{"vqa_score", e.score}, {"vqa_accuracy", e.accuracy}};
    };
  }
  return p;
}

FinetunePlan nlvr2_plan(TaskBatches train, std::vector<Nlvr2Example> validation, std::shared_ptr<const Tokenizer> tok,
                        ImageLoader load) {
  FinetunePlan p;
  p.name = "finetune-nlvr2";
  p.heads = {"nlvr2"};
  p.token_types = 3;
  p.train = std::move(train);
  p.objective = nlvr2_objective;
  if (!validation.empty()) {
    need_tokenizer(tok, "nlvr2_plan");
    p.validate = [tok, load, dev = std::move(validation)](VLMo& m) {
      const Nlvr2Score s = evaluate_nlvr2(m, *tok, dev, load).score;
      return std::map<std::string, double>{{"nlvr2_accuracy", s.accuracy}, {"nlvr2_consistency", s.consistency}};
    };
  }
  return p;
}

FinetunePlan retrieval_plan(TaskBatches train, bool with_itm, std::optional<uint64_t> global_batch_seed,
                            std::vector<KarpathyImage> validation, std::shared_ptr<const Tokenizer> tok, ImageLoader load) {
  FinetunePlan p;
  p.name = "finetune-retrieval";
  p.heads = {"itc", "itm"};
  p.train = std::move(train);
  p.objective = with_itm ? irtr_itm_objective : irtr_objective;
  if (global_batch_seed) p.step_objective = irtr_global_step_objective(*global_batch_seed, with_itm);
  if (!validation.empty()) {
    need_tokenizer(tok, "retrieval_plan");
    p.validate = [tok, load, val = std::move(validation)](VLMo& m) {
      const Recall rc = evaluate_retrieval(m, *tok, val, load).recall;
      return std::map<std::string, double>{{"tr_r1", rc.tr1}, {"tr_r5", rc.tr5}, {"tr_r10", rc.tr10},
                                           {"ir_r1", rc.ir1}, {"ir_r5", rc.ir5}, {"ir_r10", rc.ir10}};
    };
  }
  return p;
}

FinetuneStart read_finetune_start(const FinetuneSpec& spec) {
  FinetuneStart s;
  s.weights = read_weights_file(spec.init);
  ModelSpec model = spec.model;
  if (model.image_size <= 0) model.image_size = spec.recipe.image_size;
  s.config = model_config(spec.init, s.weights.metadata, model);
  s.config.drop_path_rate = spec.recipe.drop_path;
  return s;
}

namespace {

// VQAv2: train + trainable_val to train on, rest_val (the last val images) to validate on.
FinetunePlan vqa_files_plan(const FinetuneSpec& s, const CollateOptions& co, std::shared_ptr<const Tokenizer> tok) {
  const FinetuneFiles& f = s.files;
  std::vector<VqaQuestion> train = read_vqav2(f.questions, f.annotations);
  attach_coco_images(train, f.images, f.image_split);
  std::vector<VqaQuestion> val;
  if (!f.val_questions.empty()) {
    val = read_vqav2(f.val_questions, f.val_annotations);
    attach_coco_images(val, f.val_images.empty() ? f.images : f.val_images, f.val_image_split);
  }
  VqaFinetuneData d =
      vqa_finetune_data(std::move(train), val, f.answers.empty() ? std::vector<std::string>{} : read_answer_list(f.answers),
                        f.min_answer_count, f.rest_val_images);
  auto examples = std::make_shared<const std::vector<VqaExample>>(std::move(d.train));
  const int labels = static_cast<int>(d.answers.size());
  TaskBatches batches{vqa_batches(examples, labels, tok, co, s.batch, s.seed), static_cast<int64_t>(examples->size())};
  return vqa_plan(std::move(d.answers), std::move(batches), std::move(d.rest_val), tok);
}

FinetunePlan nlvr2_files_plan(const FinetuneSpec& s, const CollateOptions& co, std::shared_ptr<const Tokenizer> tok) {
  auto examples = std::make_shared<const std::vector<Nlvr2Example>>(read_nlvr2(s.files.nlvr2_train, s.files.images, "train"));
  TaskBatches batches{nlvr2_batches(examples, tok, co, s.batch, s.seed), static_cast<int64_t>(examples->size())};
  std::vector<Nlvr2Example> dev;
  if (!s.files.nlvr2_dev.empty()) dev = read_nlvr2(s.files.nlvr2_dev, s.files.images, "dev");
  return nlvr2_plan(std::move(batches), std::move(dev), tok);
}

// The Karpathy split: its train and restval pairs to train on, its val images to validate on.
FinetunePlan retrieval_files_plan(const FinetuneSpec& s, const CollateOptions& co, std::shared_ptr<const Tokenizer> tok) {
  const std::vector<KarpathyImage> karpathy = read_karpathy(s.files.karpathy, s.files.images);
  auto pairs = std::make_shared<const std::vector<ImageText>>(karpathy_pairs(karpathy));
  TaskBatches batches{pair_batches(pairs, tok, co, s.batch, s.seed), static_cast<int64_t>(pairs->size())};
  std::vector<KarpathyImage> val;
  for (const auto& k : karpathy)
    if (k.split == "val") val.push_back(k);
  return retrieval_plan(std::move(batches), s.with_itm, s.global_batch ? std::optional<uint64_t>(s.seed) : std::nullopt,
                        std::move(val), tok);
}

}  // namespace

FinetunePlan finetune_plan(const FinetuneSpec& spec, const Config& cfg, std::shared_ptr<const Tokenizer> tok) {
  if (spec.with_itm && !is_retrieval(spec.task))
    throw Error(cat("ITM training is for the retrieval tasks (coco, f30k), not ", finetune_task_name(spec.task)));
  CollateOptions co;
  co.image_size = cfg.image_size;
  co.max_text_len = cfg.max_text_len;
  co.train_transform = true;  // square_transform_randaug
  FinetunePlan p = spec.task == FinetuneTask::kVqa     ? vqa_files_plan(spec, co, tok)
                   : spec.task == FinetuneTask::kNlvr2 ? nlvr2_files_plan(spec, co, tok)
                                                       : retrieval_files_plan(spec, co, tok);
  p.name = std::string("finetune-") + finetune_task_name(spec.task);
  return p;
}

VLMo finetune_model(const Config& cfg, TensorMap weights, uint64_t seed, LoadReport* report) {
  cfg.validate();
  VLMo model(cfg);
  init_weights(model, seed);
  LoadReport r = load_weights(model, std::move(weights), false);
  if (report) *report = std::move(r);
  return model;
}

Finetuning prepare_finetuning(const FinetuneSpec& spec, FinetuneStart start, std::shared_ptr<const Tokenizer> tok,
                              TrainOptions& t) {
  Finetuning f;
  f.plan = finetune_plan(spec, start.config, std::move(tok));
  f.config = f.plan.model_config(std::move(start.config));
  f.model = finetune_model(f.config, std::move(start.weights.tensors), spec.seed, &f.loaded);
  const Recipe& r = spec.recipe;
  f.world = t.group ? t.group->world_size() : 1;
  f.length = training_length(r, f.plan.train.examples, spec.batch, f.world, spec.accumulate, spec.steps);
  t.accumulate = f.length.step.accumulate;
  t.max_steps = f.length.steps;
  t.warmup_steps = f.length.warmup;
  t.lr = spec.lr > 0 ? spec.lr : r.lr;
  t.head_lr_mult = r.head_lr_mult;
  t.batch_size = spec.batch;
  t.config_json = config_to_json_text(f.config);
  f.plan.apply(t);
  return f;
}

}  // namespace vlmo
