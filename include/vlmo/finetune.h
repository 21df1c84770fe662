// Fine-tuning assembled in one place, for `vlmo finetune` and the demo. What one task trains (its
// heads, batches, objective, validation and what its checkpoint records) is a FinetunePlan, made
// by one function per task: vqa_plan, nlvr2_plan, retrieval_plan. They take the task's batches as
// the caller makes them (the demo draws its own from its world); finetune_plan reads the official
// data files of a task into them, and prepare_finetuning makes a pre-trained checkpoint into the
// model to train, with the official recipe's schedule (vlmo/recipes.h).
#pragma once
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "vlmo/checkpoint.h"
#include "vlmo/downstream_data.h"
#include "vlmo/recipes.h"
#include "vlmo/sources.h"
#include "vlmo/tokenizer.h"
#include "vlmo/train.h"

namespace vlmo {

// A validation: named values measured on the model (the trainer logs them as "val_<name>").
using ValidateFn = std::function<std::map<std::string, double>(VLMo&)>;

// A task's training batches and how many examples one epoch has (0: drawn without end).
struct TaskBatches {
  BatchFn batches;
  int64_t examples = 0;
};

// What fine-tuning on one task trains; the schedule (steps, learning rate, batch) is the caller's
// recipe.
struct FinetunePlan {
  std::string name;                // TrainOptions::name: "finetune-vqa", "finetune-nlvr2", "finetune-retrieval"
  std::vector<std::string> heads;  // the heads the model is built with
  int vqa_labels = 0;              // VQA: the classifier's size (the answer list's)
  int token_types = 0;             // NLVR2: 3 (text, image 0, image 1); 0: the config's
  TaskBatches train;
  ObjectiveFn objective;
  StepObjectiveFn step_objective;               // set: the loss over each optimizer step's whole batch
  ValidateFn validate;                          // empty: no validation data
  std::map<std::string, std::string> metadata;  // recorded in the checkpoint (VQA: "vqa_answers")

  // `base` with the task's heads (and label count, token types).
  Config model_config(Config base) const;
  // The plan's training options: name, step objective, validation; metadata added to t's.
  void apply(TrainOptions& t) const;
};

// VQA (reference §4): a classifier over `answers` (in label order) on the fusion encoder's pooled
// [CLS], trained with the BCE on soft scores (vqa_objective); the checkpoint records the answers.
// With `validation` questions (rest_val), the official in-training VQA score on them ("vqa_score")
// and the VQA evaluation's accuracy ("vqa_accuracy"; evaluate_vqa), tokenized by `tok`, images from
// `load`.
FinetunePlan vqa_plan(std::vector<std::string> answers, TaskBatches train, std::vector<VqaQuestion> validation = {},
                      std::shared_ptr<const Tokenizer> tok = nullptr, ImageLoader load = file_image_loader());

// NLVR2: two fusion passes (token types 1 and 2) and a classifier on their pooled features
// (nlvr2_objective). With `validation` pairs, accuracy and consistency ("nlvr2_accuracy",
// "nlvr2_consistency").
FinetunePlan nlvr2_plan(TaskBatches train, std::vector<Nlvr2Example> validation = {},
                        std::shared_ptr<const Tokenizer> tok = nullptr, ImageLoader load = file_image_loader());

// Image-text retrieval (COCO, Flickr30K): the dual encoder's contrastive loss (irtr_objective,
// heads itc and itm); `with_itm` adds ITM on hard negatives (irtr_itm_objective, for re-ranking);
// with `global_batch_seed`, the loss over each optimizer step's whole batch
// (irtr_global_step_objective). With `validation` images, the dual encoder's recall
// ("tr_r1" ... "ir_r10").
FinetunePlan retrieval_plan(TaskBatches train, bool with_itm, std::optional<uint64_t> global_batch_seed,
                            std::vector<KarpathyImage> validation = {}, std::shared_ptr<const Tokenizer> tok = nullptr,
                            ImageLoader load = file_image_loader());

// The data files `vlmo finetune` reads.
struct FinetuneFiles {
  std::string images = ".";  // COCO image folder (VQA), NLVR2 images root, Karpathy image root
  // VQA: VQAv2 train questions and annotations (COCO file names of `image_split`), val ones
  // (trainable_val trains, the last `rest_val_images` images validate), the answer list
  // (`vlmo vqa-answers`; empty: the answers given at least `min_answer_count` times).
  std::string questions, annotations, image_split = "train2014";
  std::string val_questions, val_annotations, val_images, val_image_split = "val2014";
  std::string answers;
  int min_answer_count = 9, rest_val_images = 1000;
  std::string nlvr2_train, nlvr2_dev;  // NLVR2: train.json, dev.json (validates)
  std::string karpathy;                // COCO / Flickr30K: the Karpathy split (val validates)
};

// A fine-tuning as `vlmo finetune` runs it: the pre-trained weights, the task with its recipe and
// data, the training settings.
struct FinetuneSpec {
  std::string init;  // the pre-trained checkpoint
  ModelSpec model;   // where the architecture comes from (model_config); image_size 0: the recipe's
  FinetuneTask task = FinetuneTask::kVqa;
  Recipe recipe;  // the task's official recipe (official_recipe)
  FinetuneFiles files;
  int64_t batch = 16;                           // samples per micro-batch
  uint64_t seed = 1;                            // data order, augmentation, the new heads' initialisation
  bool with_itm = false, global_batch = false;  // retrieval_plan's
  // Overrides of the recipe; 0: the recipe's.
  int64_t steps = 0;
  double lr = 0;
  int accumulate = 0;
};

// The weights fine-tuning starts from, and the architecture: model_config of spec.model at the
// recipe's image size (unless spec.model.image_size), with the recipe's drop path.
struct FinetuneStart {
  WeightsFile weights;
  Config config;
};
FinetuneStart read_finetune_start(const FinetuneSpec& spec);

// The official data of spec.task read from spec.files as its plan: VQAv2 train + trainable_val
// (validated on rest_val), NLVR2 train (validated on dev), the Karpathy train + restval pairs
// (validated on val), in batches at `cfg`'s image size (the training transform) and text length.
// Named "finetune-<task>".
FinetunePlan finetune_plan(const FinetuneSpec& spec, const Config& cfg, std::shared_ptr<const Tokenizer> tok);

// A fresh model of `cfg` (init_weights with `seed`) given the tensors of `weights` it has; the
// others keep their initialisation (`report` lists them).
VLMo finetune_model(const Config& cfg, TensorMap weights, uint64_t seed, LoadReport* report = nullptr);

// A fine-tuning ready to train.
struct Finetuning {
  FinetunePlan plan;
  Config config;          // the model's
  VLMo model{nullptr};    // on the CPU
  LoadReport loaded;      // what the pre-trained weights gave the model
  TrainingLength length;  // the steps, their batch and warm-up (training_length)
  int world = 1;          // processes (t.group's)
};
// The plan of the task (finetune_plan), the model (finetune_model), and `t` set for them: the
// plan's options, and the recipe's schedule for this launch (training_length over t.group's
// processes): each optimizer step sees the recipe's batch as the official divides it, and the step
// count is the official's for the samples a step sees.
Finetuning prepare_finetuning(const FinetuneSpec& spec, FinetuneStart start, std::shared_ptr<const Tokenizer> tok,
                              TrainOptions& t);

}  // namespace vlmo
