// The VLMo objectives (reference §2): ITC with its VL-FFN branch, ITM on hard negatives drawn
// from the ITC similarities, MLM (x0.25), text-only MLM, VQA BCE and NLVR2. Each returns its
// loss and the tensors it computed on the way. Not here: the optimiser, data, logging.
#pragma once
#include <ATen/Tensor.h>

#include <functional>

#include "vlmo/batch.h"
#include "vlmo/distributed.h"
#include "vlmo/model.h"

namespace vlmo {

// Symmetric CLIP loss over L2-normalised features with a learned log-scale; local rows are
// matched with the gathered columns. Returns the loss and the image->text logits (local rows).
struct ContrastiveOutput {
  at::Tensor loss;
  at::Tensor logits_i2t;  // (B, N) = exp(scale) * img @ all_txt^T
  at::Tensor logits_t2i;  // (B, N)
};
ContrastiveOutput contrastive_loss(const at::Tensor& image_feats, const at::Tensor& text_feats, const at::Tensor& logit_scale,
                                   const GatherFn& gather = gather_local);

struct ItcOutput {
  at::Tensor loss;  // 0.5 * (loss_itc + loss_itc_vl)
  ContrastiveOutput itc, itc_vl;
};
ItcOutput compute_itc(VLMo& model, const Batch& batch, const GatherFn& gather = gather_local);

// The distribution hard negatives are drawn from: softmax of the similarity rows with the
// positives (the diagonal of the local block) zeroed.
at::Tensor hard_negative_weights(const at::Tensor& sim);
// Why row `row` of those weights sums to 0 although it has `candidates` candidates: the softmax
// gave the positive all the mass (the others underflowed in fp32), which the official meets too.
std::string hard_negative_underflow(int64_t row, int64_t candidates);
// One negative per row, all rows in one multinomial call (no host round trip).
at::Tensor sample_hard_negatives(const at::Tensor& weights);
at::Tensor sample_hard_negatives(const at::Tensor& weights, at::Generator gen);

struct ItmOutput {
  at::Tensor loss;
  at::Tensor logits;  // (3B, 2): positives; (text, negative image); (image, negative text)
};
// Scores (text, image) pairs with the ITM head in one fusion pass; CE against `labels`.
ItmOutput itm_on_pairs(VLMo& model, const at::Tensor& text_ids, const at::Tensor& text_masks, const at::Tensor& images,
                       const at::Tensor& labels);
// The official ITM on 3B pairs: [positives; (text b, image neg_image_index[b]);
// (image b, text neg_text_index[b])], labels [1]*B + [0]*2B.
// `neg_image_index[b]`: the image paired with text b; `neg_text_index[b]`: the text paired
// with image b (indices into the gathered pools, or the local batch on one process).
ItmOutput compute_itm(VLMo& model, const Batch& batch, const at::Tensor& neg_image_index, const at::Tensor& neg_text_index,
                      const at::Tensor& pool_images = {}, const at::Tensor& pool_text_ids = {},
                      const at::Tensor& pool_text_masks = {});

struct LogitsLoss {
  at::Tensor loss, logits;
};

// Masked language modelling: mean cross-entropy over the labelled positions (labels != -100)
// times `weight`. The MLM head runs on the labelled positions only, unless `full_logits`, which
// also returns the (B, L, vocab) logits of every position (same loss). `accuracy` is the share
// of labelled positions predicted right (detached). With nothing labelled the loss is 0.
struct MlmOutput {
  at::Tensor loss, accuracy, logits;
};
MlmOutput mlm_loss(VLMo& model, const at::Tensor& text_feats, const at::Tensor& labels, double weight, bool full_logits = false);
MlmOutput compute_mlm(VLMo& model, const Batch& batch, bool full_logits = false);       // fusion pass, x 0.25
MlmOutput compute_text_mlm(VLMo& model, const Batch& batch, bool full_logits = false);  // stage 2, weight 1
LogitsLoss compute_vqa(VLMo& model, const Batch& batch);
LogitsLoss compute_nlvr2(VLMo& model, const Batch& batch);

}  // namespace vlmo
