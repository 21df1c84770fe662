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
  int64_t epochs = 0;        // > 0: train this many epochs of the data ...
  int64_t steps = 0;         // ... else this many optimizer steps
  // Warm-up: this fraction of the steps (int(), as the official takes a float warmup_steps) ...
  double warmup_fraction = 0.1;
  int64_t warmup_steps = -1;  // ... or, when >= 0, this many steps (the official's step presets)
  // What the official starts from: "pretrained" (the stage-3 checkpoint) or "coco" (Flickr30K
  // base and large start from the COCO-fine-tuned retrieval weights).
  std::string init = "pretrained";
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
// What one optimizer step sees, as the training commands print it:
// "256 samples (2 process(es) x 32 micro-batch(es) x 4)".
std::string step_samples_text(int64_t batch, int accumulate, int world);

// The length of a fine-tuning for one launch, as the official's run.py computes it (reference §3).
// A recipe in epochs: each process's loader holds ceil(ceil(n / W) / batch) micro-batches an epoch
// (a DistributedSampler without drop_last: the last batch kept), and
// steps = loader length x epochs // accumulate, at least 1; so the steps follow the samples a step
// actually sees, and the run covers its epochs whatever the rounding. A recipe in steps keeps its
// steps. Warm-up: int(fraction x steps), or the recipe's fixed count.
struct TrainingLength {
  StepBatch step;                 // accumulation (recipe_step_batch, or the explicit one) and samples a step
  int64_t batch = 0;              // samples per micro-batch
  int world = 1;                  // processes
  int64_t loader_batches = 0;     // micro-batches per process and epoch
  int64_t steps = 0, warmup = 0;  // optimizer steps and warm-up steps
  double epochs = 0;              // passes over the n examples those steps make (samples seen / n)
  std::string describe() const;   // "6750 steps of 128 samples (1 process(es) x 4 micro-batch(es) x 32), ..."
};
// `accumulate` > 0 and `steps` > 0 override the recipe's (vlmo finetune --accumulate, --steps).
TrainingLength training_length(const Recipe& r, int64_t examples, int64_t batch, int world, int accumulate = 0,
                               int64_t steps = 0);

// preset: "base", "base_plus" (or "base-plus"), "large"; throws naming the known presets.
Recipe official_recipe(FinetuneTask task, const std::string& preset);

// Peak learning rate of the pre-training stages: base 2e-4, base_plus 1e-4, large 5e-5.
double pretrain_lr(const std::string& preset);

}  // namespace vlmo
