// The pre-training stages (reference §3) as objectives for vlmo::train: stage 1 masked image
// modelling (our built-in substitute for BEiT initialisation), stage 2 text-only MLM with the
// official frozen set, stage 3 ITC + ITM with hard negatives + MLM; and the retrieval
// fine-tuning (IRTR) objective.
#pragma once
#include <random>
#include <string>

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

// BEiT blockwise masking of `num_masked` patches on a grid x grid patch grid.
std::vector<bool> blockwise_mask(int grid, int num_masked, std::mt19937_64& rng);

// Objectives. Keys ending in "loss" are optimised; "*_acc" are logged.
Outputs mim_objective(VLMo& model, const Batch& batch);
Outputs text_mlm_objective(VLMo& model, const Batch& batch);
Outputs vl_objective(VLMo& model, const Batch& batch);
Outputs irtr_objective(VLMo& model, const Batch& batch);

// MLM loss over the labelled positions only (the same mean cross-entropy as over all positions
// with ignore_index -100, without computing vocabulary logits for unlabelled positions).
Outputs masked_lm(VLMo& model, const at::Tensor& text_feats, const at::Tensor& labels, double weight,
                  const std::string& prefix);

}  // namespace vlmo
