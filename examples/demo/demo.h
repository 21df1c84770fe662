// The built-in demo: the three pre-training stages, retrieval fine-tuning and evaluation on the
// procedural shapes world (vlmo/demo_world.h), on a small model, deterministic given the seed.
#pragma once
#include <c10/core/Device.h>

#include <nlohmann/json.hpp>
#include <optional>
#include <string>

#include "demo_world.h"
#include "vlmo/config.h"
#include "vlmo/distributed.h"
#include "vlmo/model.h"
#include "vlmo/precision.h"
#include "vlmo/run_policy.h"

namespace vlmo {

// The demo's recipe: the model's size and every stage's length, batch and learning rate. The
// defaults are the demo; `vlmo demo --recipe JSON` overrides any of them by name (experiments).
struct DemoRecipe {
  // The model is shaped like the official base-plus (no layer scale, absolute image and text
  // positions, no relative-position bias) with the VL-FFN in its top half, like base's top 2 of
  // 12 scaled to 4 layers (docs/demo.md gives the measurements): the demo's captions and questions are
  // about where shapes are, and with base's relative-position-only layout a 4x4-patch image gives
  // the text no absolute location; layer scale 0.1 in 4 layers leaves every [CLS] output at its
  // own embedding. Real pre-training keeps the official presets: this is the demo's recipe only.
  int embed_dim = 128, depth = 4, num_heads = 8, image_size = 48, vlffn_start = 2;  // 8 heads: more routes for the fused [CLS]
  std::optional<double> layer_scale;                                                // null: none (base-plus); 0.1 is base's
  bool absolute_positions = true;  // base-plus: absolute positions, no relative bias
  int background_tint = 4;         // the world's background tint levels per channel (DemoWorld)
  // The world: scenes of min_shapes..max_shapes shapes whose captions name caption_shapes of them
  // (0: all), as real captions leave objects out. A caption that names every shape lets one vector
  // per image hold all a caption can ask, and the fusion encoder then only matched the dual
  // encoder; with shapes left out, the dual encoder's image vector must hold every shape any
  // caption might name, while the fusion encoder reads the named ones from the patches
  // (docs/demo.md). Captions naming 3+ shapes need max_text_len ~40.
  int min_shapes = 2, max_shapes = 3, caption_shapes = 2;
  int max_text_len = 24;  // the model's text length (a two-shape caption fits in 24 tokens)
  // Standard deviation of the image's absolute position embeddings at initialisation. The
  // official trunc_normal(0.02) leaves a patch's place ~1/15 of its token beside its content, and
  // the demo's captions are about places (docs/demo.md).
  double image_pos_init_std = 3.0;
  // Stage 3: ITM leaves its prior only once ITC ranks the positive first in most batches, and then
  // needs ~2000 more steps.
  int64_t stage1_steps = 150, stage2_steps = 150, stage3_steps = 3000;
  int64_t retrieval_steps = 300, vqa_steps = 3000, nlvr2_steps = 1200;
  int64_t stage1_batch = 64, stage2_batch = 64, stage3_batch = 16, retrieval_batch = 64, vqa_batch = 32, nlvr2_batch = 32;
  // NLVR2 at 1e-3 collapsed to chance on one seed in three.
  double stage1_lr = 1e-3, stage2_lr = 1e-3, stage3_lr = 1e-3, retrieval_lr = 1e-3, vqa_lr = 1e-3, nlvr2_lr = 3e-4;
  double vqa_head_lr_mult = 20, nlvr2_head_lr_mult = 1;  // the classifier heads' lr multipliers (official: 20, 1)
  double stage3_itm_head_lr_mult = 1;                    // stage 3: lr multiplier of itm_score.* and pooler.* (official: 1)
  double stage3_mlm_prob = 0.15;                         // stage 3: MLM masking probability (official mlm_prob: 0.15)
  // Stage-3 batch composition: from step stage3_group_from x steps on, a batch is groups of
  // stage3_group scenes, each a scene of the epoch order and stage3_group - 1 of its
  // near-duplicates (scene_distance 1..stage3_group_distance): the in-batch negatives are then as
  // close as the dual encoder's top candidates at test time. 1: plain shuffled batches.
  int64_t stage3_group = 1, stage3_group_distance = 2;
  double stage3_group_from = 0;
  int64_t retrieval_group = 1;  // the same for the retrieval fine-tuning, from its first step
  // Retrieval fine-tuning with ITC + ITM (irtr_itm_objective, the supplementary's variant for
  // ITM re-ranking) instead of the official ITC only, whose fine-tuned encoder no longer fits its
  // ITM head (re-ranking with it cost up to 32 R@1 points).
  bool retrieval_itm = true;
  double warmup_fraction = 0.03;          // pre-training stages: warm-up steps / steps
  double finetune_warmup_fraction = 0.1;  // retrieval, VQA and NLVR2 fine-tuning

  // Applies the keys of a JSON object; an unknown key or a value of the wrong type is an error.
  void apply(const nlohmann::json& overrides);
  nlohmann::json to_json() const;
};

// The demo's model configuration for a recipe (vocab_size left at BERT's: the demo sets it to its
// tokenizer's).
Config demo_config(const DemoRecipe& r);

// The demo's world for a recipe (its shapes per scene and per caption, its background tint).
DemoWorld demo_world(const DemoRecipe& r, uint64_t seed, int n_train, int n_val, int n_test);

// The demo model's initial weights: the official initialisation (init_weights), then, unless the
// recipe's image_pos_init_std is the official 0.02 (whose trunc_normal draw stays), the image
// position embeddings drawn from normal(0, image_pos_init_std).
void init_demo_weights(VLMo& model, const DemoRecipe& r, uint64_t seed);

struct DemoOptions {
  uint64_t seed = 1;
  std::string out_dir = "demo-out";
  std::string vocab;        // empty: the default BERT vocabulary
  double step_scale = 1.0;  // multiplies every stage's step count (tests use small values)
  bool progress = true;
  DemoRecipe recipe;
  // Stop after pre-training (stages 1-3, zero-shot retrieval and the diagnostics): experiments.
  bool pretrain_only = false;
  // Experiments on later stages: begin at "stage2", "stage3" or "finetune" (empty: stage 1) from
  // `start_weights`, the checkpoint a previous run of the same model shape wrote before it.
  std::string start_at;
  std::string start_weights;
  // How every model of the demo runs (vlmo/run_policy.h): device, precision, attention, kernels.
  RunPolicy policy;
  std::string precision_note;  // how it was chosen (the report's "precision_choice")
  bool activation_checkpointing = false;
  // Several processes (torchrun): the group they joined (nullptr: one process). Each trains on
  // its share of every global batch; every rank evaluates; rank 0 writes the files and prints.
  std::shared_ptr<const Distributed> group;
};

// Runs everything, writes out_dir/report.json (and metrics.jsonl, checkpoints), returns the report.
nlohmann::json run_demo(const DemoOptions& o);

}  // namespace vlmo
