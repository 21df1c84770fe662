// Measurements of a model's state, taken by the demo after each stage: how much the
// [CLS] features of different inputs differ, whether the fusion encoder tells matched pairs from
// mismatched ones, where the fused [CLS] query attends, and the ITM gradients that reach it.
#pragma once
#include <ATen/ATen.h>

#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "vlmo/model.h"
#include "vlmo/tokenizer.h"

namespace vlmo {

// Mean cosine over all pairs of distinct rows of f (N, C): 1 when every row points the same way.
double mean_pairwise_cosine(const at::Tensor& f);

// images (N, 3, S, S), normalised as in training, and captions[i] describing images[i] (N >= 3).
// Returns, on these N pairs:
//   text_cls_cos, image_cls_cos: mean pairwise cosine of the dual encoder's retrieval features;
//   text_hidden_cos, image_hidden_cos: the same of the final-norm [CLS] hidden states;
//   fused_pooled_cos: the same of the pooled fusion [CLS] over matched and mismatched pairs;
//   itm_acc_random, itm_acc_hard: ITM accuracy over the N matched pairs and N mismatched pairs,
//     whose image is another of the N (random; or the dual encoder's most similar other image);
//   dual_pairwise_hard, itm_pairwise_hard: the share of captions that the dual encoder (cosine) /
//     the fusion encoder (ITM "match" logit) score higher with their image than with that most
//     similar other image: which of the two would rank the pair right (the dual one is, by
//     construction, its IR@1 over these N captions; the pair is the dual encoder's hardest, which
//     favours the fusion encoder in the comparison);
//   cls_attention_entropy[l], cls_attention_to_image[l]: per layer of the fusion pass, the
//     entropy of the text [CLS] query's attention over its valid keys, divided by log(keys)
//     (1: uniform), and the share of it on image tokens;
//   grad_itm_head, grad_pooler, grad_fused_cls: norms of the ITM loss gradient (matched vs random
//     mismatched) at the ITM head's weight, the pooler's weight and, per pair, the fused [CLS]
//     hidden state before the pooler.
// The model is left in its training mode, trainability and gradients as found.
nlohmann::json diagnose_model(VLMo& model, const Tokenizer& tok, const at::Tensor& images,
                              const std::vector<std::string>& captions, uint64_t seed);

}  // namespace vlmo
