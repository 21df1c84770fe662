// Training: AdamW with the official parameter groups, the linear warm-up / decay schedule,
// atomic checkpoints with exact resume, and the training loop with JSON-lines metrics and a
// progress display. Objectives and data come from the caller (see vlmo/pretrain.h).
#pragma once
#include <ATen/Tensor.h>

#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "vlmo/error.h"
#include "vlmo/model.h"
#include "vlmo/objectives.h"
#include "vlmo/safetensors.h"
#include "vlmo/signals.h"

namespace vlmo {

// The official no-decay rule: substring match on "bias", "LayerNorm.bias/.weight",
// "norm.bias/.weight", "norm1.*", "norm2.*" (so norm2_text etc. and gamma_* are decayed, and
// relative_position_bias_table, which contains "bias", is not).
bool official_no_decay(const std::string& name);
// The official lr_mult applies to names containing "vqa_classifier" or "nlvr2_classifier".
bool is_task_head(const std::string& name);
// Whether head_lr_mult applies to a parameter: names starting with one of `heads`, or, when
// `heads` is empty, the official task heads (is_task_head).
bool takes_head_lr(const std::string& name, const std::vector<std::string>& heads);

// Linear warm-up from 0 to `peak` over `warmup` steps, then linear decay to 0 at `total`
// (get_polynomial_decay_schedule_with_warmup, power 1). `step` counts finished optimizer steps.
double learning_rate(int64_t step, int64_t total, int64_t warmup, double peak);

// AdamW (betas 0.9 / 0.98, eps 1e-8, decoupled weight decay) over the parameters that require
// grad; state is kept per parameter name so it can be saved and restored exactly.
class AdamW {
 public:
  // head_lr_mult applies to the parameters takes_head_lr(name, heads) selects.
  AdamW(torch::nn::Module& model, double weight_decay = 0.01, double head_lr_mult = 1.0,
        const std::vector<std::string>& heads = {}, double beta1 = 0.9, double beta2 = 0.98, double eps = 1e-8);
  void step(double lr);
  void zero_grad();
  // True when every gradient is finite (no NaN / inf); parameters without a gradient count as finite.
  bool gradients_finite() const;
  // Multiplies every gradient by `factor` (undoing a loss scale).
  void scale_gradients(double factor);
  int64_t steps() const { return steps_; }
  TensorMap state() const;  // "exp_avg.<name>", "exp_avg_sq.<name>"
  void load_state(const TensorMap& state, int64_t steps);

 private:
  struct Param {
    std::string name;
    at::Tensor p, exp_avg, exp_avg_sq;
    double weight_decay, lr_mult;
  };
  std::vector<Param> params_;
  double beta1_, beta2_, eps_;
  int64_t steps_ = 0;
};

// Dynamic loss scaling for fp16 training, with the defaults of the official recipe's AMP (PyTorch's
// GradScaler): the loss is multiplied by `scale` before the backward pass, so that small fp16
// gradients do not flush to zero, and the gradients are divided by it before the update. A step
// whose (unscaled) gradient overflows is skipped and the scale halved; after `growth_interval`
// good steps in a row it doubles. Scales stay powers of two, so scaling is exact.
struct LossScaler {
  double scale = 65536.0;
  double growth_factor = 2.0;
  double backoff_factor = 0.5;
  int64_t growth_interval = 2000;
  int64_t good_steps = 0;  // good steps since the scale last changed
  // After a step: `overflow` when its gradient was not finite.
  void update(bool overflow);
};

// The loss scale of the training step running on this thread (1 outside one): a whole-step
// objective multiplies what it differentiates by it (the trainer does so for the others).
double current_loss_scale();
class LossScaleScope {
 public:
  explicit LossScaleScope(double scale);
  ~LossScaleScope();
  LossScaleScope(const LossScaleScope&) = delete;
  LossScaleScope& operator=(const LossScaleScope&) = delete;

 private:
  double previous_;
};

// Named outputs of one objective evaluation: keys ending in "loss" are summed and optimised;
// other keys (accuracies) are only logged. The trainer passes every objective the processes it
// trains with (TrainOptions::group; nullptr: one process): an objective that compares samples
// across the batch (ITC, hard negatives) gathers them over that group (gather_over).
using Outputs = std::map<std::string, at::Tensor>;
using ObjectiveFn = std::function<Outputs(VLMo&, const Batch&, const Distributed* group)>;
// A whole-step objective: it gets every micro-batch of this rank's optimizer step (each with its
// first_sample set), runs its own forward and backward passes and returns the step's values
// (detached; "*loss" keys summed for the log). Its gradients must be such that their mean over
// ranks (the trainer's all-reduce) is the gradient of the step's loss. It must call the same
// collectives on every rank, and may throw NonFiniteError only after its last collective.
using StepObjectiveFn = std::function<Outputs(VLMo&, const std::vector<Batch>&, const Distributed* group)>;

struct TrainOptions {
  std::string name = "train";  // shown in logs ("stage1-image", ...)
  // Data parallel: the processes that train together (Distributed::init; see vlmo/distributed.h),
  // passed on to the objectives. nullptr (or a world of one): this process alone.
  std::shared_ptr<const Distributed> group;
  int64_t max_steps = 100;  // optimizer steps
  int64_t warmup_steps = 10;
  double lr = 1e-4;
  double weight_decay = 0.01;
  double head_lr_mult = 1.0;
  std::vector<std::string> head_prefixes;  // what head_lr_mult applies to; empty: vqa / nlvr2 classifiers
  int accumulate = 1;                      // micro-batches per optimizer step
  int64_t batch_size = 32;                 // samples per micro-batch (for samples/s)
  int64_t checkpoint_every = 0;            // steps; 0: only at the end
  std::string checkpoint_path;             // empty: no checkpoints
  std::string metrics_path;                // JSON lines; empty: none
  int log_every = 10;
  int loader_threads = 1;
  int prefetch = 2;
  bool progress = true;
  std::string config_json;                      // stored in checkpoints
  std::map<std::string, std::string> metadata;  // more metadata for checkpoints (e.g. answers)
  // Stop after this many steps of this run (for tests of resumption); 0: run to max_steps.
  int64_t stop_after = 0;
  // Validation: run after every `validate_every` steps (0: never in between) and after the last
  // step; its values are logged as "val_<name>" (one metrics line with the step).
  std::function<std::map<std::string, double>(VLMo&)> validate;
  int64_t validate_every = 0;
  // Numerical faults: a step whose loss or gradient is not finite is skipped (no update; data
  // and schedule move on) and counted; this many in a row stop the run (vlmo::Error) without
  // writing a checkpoint, so the last good one stays.
  int max_bad_steps = 5;
  // Bad data: the run stops when more than `max_skip_rate` of the last `skip_window` samples
  // read were skipped (judged once that many were read).
  double max_skip_rate = 0.5;
  int64_t skip_window = 1000;
  // Dynamic loss scaling (LossScaler; its initial state here): on when `loss_scaling` says so,
  // and by default when the model runs in fp16. Its state is logged ("loss_scale") and kept in
  // checkpoints, so a resumed run scales as the uninterrupted one would have.
  std::optional<bool> loss_scaling;
  LossScaler loss_scaler;
  // Tests and diagnostics: called after the step's backward passes, before gradients are
  // averaged and checked (e.g. to inject an overflow).
  std::function<void(int64_t step, VLMo& model)> after_backward;
  // When set, it replaces the per-micro-batch objective: the trainer reads the step's
  // `accumulate` micro-batches and hands them over together (--contrastive-batch global).
  StepObjectiveFn step_objective;
};

struct TrainResult {
  int64_t steps = 0;
  std::vector<std::map<std::string, double>> history;  // per optimizer step: losses, lr, ...
  double seconds = 0;
  std::map<std::string, double> validation;  // the last validation's values
  int64_t bad_steps = 0;                     // steps skipped for a non-finite loss or gradient
  int64_t overflow_steps = 0;                // fp16 steps skipped for a gradient overflow (loss scaling)
  LossScaler loss_scaler;                    // the scaler's state after the last step
  std::map<std::string, int64_t> skipped;    // samples skipped per reason (over the whole run)
};

// Runs (or resumes, if `resume_from` names a checkpoint) training.
TrainResult train(VLMo& model, const ObjectiveFn& objective, const BatchFn& batches, const TrainOptions& options,
                  const std::string& resume_from = "");

// Checkpoint files: one safetensors file with "model.*", "optim.*", "rng.torch" and metadata
// (step: training steps done; optimizer_steps: updates made, fewer when steps were skipped;
// config; format "vlmo-train-checkpoint"), written atomically with a CRC-32 of the data.
void save_checkpoint(const std::string& path, VLMo& model, const AdamW& opt, int64_t step, const std::string& config_json,
                     const std::string& stage, const std::map<std::string, std::string>& extra = {});
}  // namespace vlmo
