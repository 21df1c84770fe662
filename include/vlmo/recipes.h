// The official training recipes as data (reference §3): fine-tuning settings by task and preset
// (the official config.py's task_finetune_* entries) and the pre-training learning rate by preset.
#pragma once
#include <cstdint>
#include <string>

namespace vlmo {

enum class FinetuneTask { kVqa, kNlvr2, kRetrievalCoco, kRetrievalF30k };
// "vqa", "nlvr2", "coco" (or "irtr"), "f30k"; throws naming the known tasks.
FinetuneTask parse_finetune_task(const std::string& name);
const char* finetune_task_name(FinetuneTask task);
// COCO or Flickr30K retrieval.
bool is_retrieval(FinetuneTask task);

struct Recipe {
  int image_size = 384;
  double lr = 3e-5;
  double head_lr_mult = 1.0;  // lr multiplier of vqa_classifier / nlvr2_classifier
  double drop_path = 0.1;
  int64_t batch_size = 128;  // effective (global) batch
  double epochs = 0;         // > 0: train this many epochs of the data ...
  int64_t steps = 0;         // ... else this many optimizer steps
  double warmup_fraction = 0.1;
  // What the official starts from: "pretrained" (the stage-3 checkpoint) or "coco" (Flickr30K
  // base and large start from the COCO-fine-tuned retrieval weights).
  std::string init = "pretrained";

  // Optimizer steps for `num_examples` training examples (epochs rounded up), and warm-up.
  int64_t total_steps(int64_t num_examples) const;
  int64_t warmup_steps(int64_t total) const;
};

// How an optimizer step reaches the recipe's (global) batch with micro-batches of `batch` samples on
// each of `world` processes: accumulate = recipe_batch / (batch x world), rounded down and at least
// 1, as the official computes its accumulate_grad_batches. `samples` is what one step then sees;
// `note` says so when the division rounds ("" when exact).
struct StepBatch {
  int accumulate = 1;
  int64_t samples = 0;
  std::string note;
};
StepBatch recipe_step_batch(int64_t recipe_batch, int64_t batch, int world);

// preset: "base", "base_plus" (or "base-plus"), "large"; throws naming the known presets.
Recipe official_recipe(FinetuneTask task, const std::string& preset);

// Peak learning rate of the pre-training stages: base 2e-4, base_plus 1e-4, large 5e-5.
double pretrain_lr(const std::string& preset);

}  // namespace vlmo
