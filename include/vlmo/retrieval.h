// Image-text retrieval recall with the official semantics (reference §5): scores[i, t] for
// image i and caption t; TR@K: an image is a hit if any of its captions is in its top K; IR@K:
// every caption is a query, a hit if its image is in the caption's top K images.
#pragma once
#include <ATen/Tensor.h>

#include <functional>
#include <vector>

namespace vlmo {

struct Recall {
  double tr1 = 0, tr5 = 0, tr10 = 0, ir1 = 0, ir5 = 0, ir10 = 0;  // fractions in [0, 1]
};

Recall retrieval_recall(const at::Tensor& scores, const std::vector<int64_t>& caption_image);

// Re-ranking (the official, unwired compute_irtr_recall_with_rerank): the top k of every image's
// row (TR) and of every caption's column (IR) are re-scored with `pair_score(images, captions)`
// (the ITM logit of class 1) plus the dual score; the rest keep the dual order below them.
using PairScoreFn = std::function<at::Tensor(const at::Tensor& image_index, const at::Tensor& caption_index)>;
// dual_weight scales the dual score in the sum: 1 is the official (a cosine next to a logit);
// the model's exp(logit_scale) makes it the contrastive logit, so that the sum is a product of
// the two experts' odds (RetrievalEvaluation::reranked_logits).
Recall rerank_recall(const at::Tensor& scores, const std::vector<int64_t>& caption_image, int64_t k,
                     const PairScoreFn& pair_score, double dual_weight = 1.0);
// The same for several weights, scoring each pair once.
std::vector<Recall> rerank_recall(const at::Tensor& scores, const std::vector<int64_t>& caption_image, int64_t k,
                                  const PairScoreFn& pair_score, const std::vector<double>& dual_weights);

// Chance levels of the same metrics for a random ranking.
Recall chance_recall(int64_t num_images, const std::vector<int64_t>& caption_image);

}  // namespace vlmo
