// The pre-training stages (reference §3) as objectives for vlmo::train: stage 1 masked image
// modelling (our built-in substitute for BEiT initialisation), stage 2 text-only MLM with the
// official frozen set, stage 3 ITC + ITM with hard negatives + MLM; and the fine-tuning
// objectives (retrieval, VQA, NLVR2).
#pragma once
#include <string>
#include <vector>

#include "vlmo/train.h"

namespace vlmo {

enum class Stage { kImage, kText, kVL };
Stage parse_stage(const std::string& s);  // "image", "text", "vl"
const char* stage_name(Stage s);

// Stage 2 trains only parameters whose name contains text_embeddings, token_type_embeddings,
// mlp_text, norm2_text, mlm_score, relative_position_bias_table or transformer.norm.
bool stage2_trainable(const std::string& name);
// Sets requires_grad for a stage: stage 2 freezes everything else; other stages train all.
void set_trainable_for_stage(VLMo& model, Stage stage);

// Objectives (ObjectiveFn). Keys ending in "loss" are optimised; "*_acc" are logged. `group`:
// the processes training together (nullptr: one process); ITC gathers every rank's features over
// it and ITM draws its hard negatives from every rank's samples (the official all_gather).
Outputs mim_objective(VLMo& model, const Batch& batch, const Distributed* group = nullptr);
Outputs text_mlm_objective(VLMo& model, const Batch& batch, const Distributed* group = nullptr);
Outputs vl_objective(VLMo& model, const Batch& batch, const Distributed* group = nullptr);

// Stage vl with a global contrastive batch (--contrastive-batch global): ITC and the ITM hard
// negatives over every sample of the optimizer step (all ranks x all micro-batches), with the
// exact gradient of the step's loss by gradient caching (one extra forward of the image and text
// encoders without autograd); ITM is a mean over the step's 3N pairs, MLM over the step's masked
// tokens; every random draw is keyed by the sample index (and `seed`), so the weights after a
// step do not depend on how the step is split over ranks and micro-batches. Models without an
// itm or mlm head skip those terms. For TrainOptions::step_objective.
StepObjectiveFn vl_global_step_objective(uint64_t seed);
// Retrieval fine-tuning with a global contrastive batch: irtr_objective's loss (the fine-tuned
// dual encoder, one ITC branch) over every sample of the step, as above.
// With with_itm, ITM with hard negatives from the step's dual-encoder similarities is added
// (irtr_itm_objective's loss).
StepObjectiveFn irtr_global_step_objective(uint64_t seed, bool with_itm = false);
// One draw per listed row of `weights` (rows need not sum to 1), from each row's key: the
// column index. Non-finite weights throw NonFiniteError.
at::Tensor keyed_sample_rows(const at::Tensor& weights, const at::Tensor& rows, const std::vector<uint64_t>& keys);
// Fine-tuning objectives: retrieval (dual-encoder contrastive, irtr_loss + irtr_i2t_acc), VQA
// (vqa_loss + vqa_score: soft score of the top answer), NLVR2 (nlvr2_loss + nlvr2_acc).
Outputs irtr_objective(VLMo& model, const Batch& batch, const Distributed* group = nullptr);
// Retrieval fine-tuning for ITM re-ranking (the NeurIPS supplementary's ITC + ITM variant; the
// official recipe is ITC only): irtr_objective's contrastive loss plus ITM with hard negatives
// drawn from the fine-tuned dual encoder's similarities (itm_loss + itm_acc), so that the fusion
// encoder and its ITM head keep fitting the encoder that the contrastive loss moves.
Outputs irtr_itm_objective(VLMo& model, const Batch& batch, const Distributed* group = nullptr);
Outputs vqa_objective(VLMo& model, const Batch& batch, const Distributed* group = nullptr);
Outputs nlvr2_objective(VLMo& model, const Batch& batch, const Distributed* group = nullptr);

}  // namespace vlmo
