#include "vlmo/recipes.h"

#include <algorithm>
#include <cstdio>

#include "vlmo/error.h"

namespace vlmo {

namespace {
enum class Size { kBase, kBasePlus, kLarge };
Size parse_size(const std::string& preset) {
  if (preset == "base") return Size::kBase;
  if (preset == "base_plus" || preset == "base-plus") return Size::kBasePlus;
  if (preset == "large") return Size::kLarge;
  throw Error(cat("unknown preset \"", preset, "\" (expected base, base_plus or large)"));
}
}  // namespace

StepBatch recipe_step_batch(int64_t recipe_batch, int64_t batch, int world) {
  if (recipe_batch < 1 || batch < 1 || world < 1)
    throw Error(
        cat("step batch: recipe batch ", recipe_batch, ", micro-batch ", batch, ", processes ", world, " must be positive"));
  const int64_t per_micro = batch * world;
  StepBatch s;
  s.accumulate = static_cast<int>(std::max<int64_t>(1, recipe_batch / per_micro));
  s.samples = s.accumulate * per_micro;
  if (s.samples != recipe_batch)
    s.note = cat("the recipe's batch of ", recipe_batch, " is not a multiple of --batch-size ", batch, " x ", world,
                 " process(es) = ", per_micro, ": ", s.accumulate, " micro-batch(es) per step, ", s.samples,
                 " samples per step, as the official's accumulate_grad_batches = ", recipe_batch, " // ", per_micro,
                 " gives (give a --batch-size that divides ", recipe_batch, " to train with the recipe's batch)");
  return s;
}

std::string step_samples_text(int64_t batch, int accumulate, int world) {
  return cat(batch * accumulate * world, " samples (", world, " process(es) x ", accumulate, " micro-batch(es) x ", batch, ")");
}

TrainingLength training_length(const Recipe& r, int64_t examples, int64_t batch, int world, int accumulate, int64_t steps) {
  if (examples < 1) throw Error("training length: no training examples");
  if (accumulate < 0 || steps < 0) throw Error("training length: accumulate and steps must be >= 0");
  TrainingLength l;
  l.batch = batch, l.world = world;
  l.step = recipe_step_batch(r.batch_size, batch, world);
  if (accumulate > 0) l.step = {accumulate, accumulate * batch * world, ""};
  const int64_t per_process = (examples + world - 1) / world;  // DistributedSampler: ceil(n / W)
  l.loader_batches = (per_process + batch - 1) / batch;
  if (steps > 0) l.steps = steps;
  else if (r.epochs > 0) l.steps = std::max<int64_t>(1, l.loader_batches * r.epochs / l.step.accumulate);
  else l.steps = r.steps;
  if (l.steps < 1) throw Error("training length: the recipe has neither epochs nor steps");
  l.warmup = r.warmup_steps >= 0 ? r.warmup_steps : static_cast<int64_t>(r.warmup_fraction * static_cast<double>(l.steps));
  l.epochs = static_cast<double>(l.steps) * static_cast<double>(l.step.samples) / static_cast<double>(examples);
  return l;
}

std::string TrainingLength::describe() const {
  char epochs_text[32];
  std::snprintf(epochs_text, sizeof epochs_text, "%.2f", epochs);
  return cat(steps, " steps of ", step_samples_text(batch, step.accumulate, world), ", ", loader_batches,
             " micro-batches per process and epoch: ", epochs_text, " epochs of the data; warm-up ", warmup, " steps");
}

FinetuneTask parse_finetune_task(const std::string& name) {
  if (name == "vqa") return FinetuneTask::kVqa;
  if (name == "nlvr2") return FinetuneTask::kNlvr2;
  if (name == "coco" || name == "irtr") return FinetuneTask::kRetrievalCoco;
  if (name == "f30k") return FinetuneTask::kRetrievalF30k;
  throw Error(cat("unknown task \"", name, "\" (expected vqa, nlvr2, coco or f30k; irtr = coco)"));
}

const char* finetune_task_name(FinetuneTask task) {
  switch (task) {
    case FinetuneTask::kVqa: return "vqa";
    case FinetuneTask::kNlvr2: return "nlvr2";
    case FinetuneTask::kRetrievalCoco: return "coco";
    case FinetuneTask::kRetrievalF30k: return "f30k";
  }
  return "?";
}

bool is_retrieval(FinetuneTask task) { return task == FinetuneTask::kRetrievalCoco || task == FinetuneTask::kRetrievalF30k; }

Recipe official_recipe(FinetuneTask task, const std::string& preset) {
  const Size size = parse_size(preset);
  const bool large = size == Size::kLarge, plus = size == Size::kBasePlus;
  Recipe r;
  switch (task) {
    case FinetuneTask::kVqa:  // task_finetune_vqa_*_image480
      r.image_size = 480;
      r.lr = large ? 1.5e-5 : 3e-5;
      r.head_lr_mult = 20;
      r.drop_path = 0.15;
      r.batch_size = 128;
      r.epochs = 10;
      break;
    case FinetuneTask::kNlvr2:  // task_finetune_nlvr2_*_image384
      r.image_size = 384;
      r.lr = plus || large ? 3e-5 : 5e-5;
      r.drop_path = plus ? 0.2 : large ? 0.15 : 0.1;
      r.batch_size = 128;
      r.epochs = 10;
      break;
    case FinetuneTask::kRetrievalCoco:  // task_finetune_irtr_coco_*_image384 + step3k
      r.image_size = 384;
      r.lr = large ? 2e-5 : 3e-5;
      r.drop_path = 0.2;
      r.batch_size = 3072;
      r.steps = 3000;
      r.warmup_steps = 300;
      break;
    case FinetuneTask::kRetrievalF30k:  // task_finetune_irtr_f30k_*_image384 + step1_5k
      r.image_size = 384;
      r.lr = large ? 2e-5 : 3e-5;
      r.drop_path = size == Size::kBase ? 0.15 : 0.2;
      r.batch_size = 3072;
      r.steps = 1500;
      r.warmup_steps = 150;
      r.init = plus ? "pretrained" : "coco";
      break;
  }
  return r;
}

double pretrain_lr(const std::string& preset) {
  switch (parse_size(preset)) {
    case Size::kBase: return 2e-4;
    case Size::kBasePlus: return 1e-4;
    case Size::kLarge: return 5e-5;
  }
  return 2e-4;
}

}  // namespace vlmo
