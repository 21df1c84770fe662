// One forward per task, on top of the model's forward paths (reference §1.7, §2): the VQA and
// NLVR2 classifiers, ITM scoring, MLM logits, and the retrieval dual encoder in chunks. Training
// objectives, evaluation, the inference commands and the demo all call these; no task head is
// applied anywhere else. Each checks that the model carries the head and names it when not.
#pragma once
#include <ATen/Tensor.h>

#include <functional>

#include "vlmo/model.h"

namespace vlmo {

// Throws vlmo::Error "the model has no <what> head (<tensors>)" unless `head` ("mlm", "itm",
// "itc", "vqa", "nlvr2", "mim") is built.
void require_head(VLMo& model, const std::string& head);

// (B, vqav2_label_size) logits: vqa_classifier(pooler) of the fusion pass. Probabilities are
// their sigmoid (the classifier is trained with a BCE on soft scores).
at::Tensor vqa_logits(VLMo& model, const at::Tensor& text_ids, const at::Tensor& text_masks, const at::Tensor& images);

// (B, 2) logits, class 1 = "True": two fusion passes (image_0 with token type 1, image_1 with
// token type 2), pooled features concatenated, nlvr2_classifier.
at::Tensor nlvr2_logits(VLMo& model, const at::Tensor& text_ids, const at::Tensor& text_masks, const at::Tensor& image_0,
                        const at::Tensor& image_1);

// (B, 2) logits, class 1 = "match": itm_score(pooler) of the fusion pass.
at::Tensor itm_logits(VLMo& model, const at::Tensor& text_ids, const at::Tensor& text_masks, const at::Tensor& images);

// The same head on pooled features (B, C) that the caller computed (the pooler's output of a
// fusion pass), e.g. to read gradients at them.
at::Tensor itm_logits_of_pooled(VLMo& model, const at::Tensor& pooled);

// ITM logit of class 1 for (image i, text j) pairs drawn from stacked inputs, in chunks of 128,
// without autograd: the pair scorer of retrieval re-ranking (vlmo/retrieval.h rerank_recall).
std::function<at::Tensor(const at::Tensor&, const at::Tensor&)> itm_pair_scorer(VLMo& model, const at::Tensor& images,
                                                                                const at::Tensor& text_ids,
                                                                                const at::Tensor& text_masks);

// MLM logits (N, vocab) of text features (N, C) or (B, L, C) -> (B, L, vocab).
at::Tensor mlm_logits(VLMo& model, const at::Tensor& text_feats);

// The retrieval dual encoder (infer_image_ft / infer_text_ft: expert paths, no VL-FFN),
// L2-normalised projected [CLS] features (N, C), computed without autograd in chunks of
// `chunk` samples, so that any number of inputs fits in memory; returned on the host (CPU)
// whatever the model's device.
at::Tensor encode_images(VLMo& model, const at::Tensor& images, int64_t chunk = 64);
at::Tensor encode_texts(VLMo& model, const at::Tensor& text_ids, const at::Tensor& text_masks, int64_t chunk = 64);

}  // namespace vlmo
