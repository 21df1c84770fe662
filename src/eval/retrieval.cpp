#include "vlmo/retrieval.h"

#include <ATen/ATen.h>

#include <cmath>
#include <vector>

#include "vlmo/error.h"

namespace vlmo {

Recall retrieval_recall(const at::Tensor& scores_in, const std::vector<int64_t>& caption_image) {
  const at::Tensor scores = scores_in.detach().to(at::kCPU).to(at::kFloat);
  const int64_t ni = scores.size(0), nt = scores.size(1);
  if (static_cast<int64_t>(caption_image.size()) != nt)
    throw Error(cat("retrieval: ", nt, " captions scored but ", caption_image.size(), " caption->image links"));
  const at::Tensor owner = at::tensor(at::ArrayRef<int64_t>(caption_image), at::kLong);
  Recall r;
  auto tr = [&](int64_t k) {
    const at::Tensor top = std::get<1>(scores.topk(std::min(k, nt), 1));  // (Ni, k) caption ids
    const at::Tensor hit =
        owner.index_select(0, top.reshape({-1})).reshape(top.sizes()).eq(at::arange(ni, at::kLong).unsqueeze(1)).any(1);
    return hit.to(at::kDouble).mean().item<double>();
  };
  auto ir = [&](int64_t k) {
    const at::Tensor top = std::get<1>(scores.topk(std::min(k, ni), 0));  // (k, Nt) image ids
    return top.eq(owner.unsqueeze(0)).any(0).to(at::kDouble).mean().item<double>();
  };
  r.tr1 = tr(1), r.tr5 = tr(5), r.tr10 = tr(10);
  r.ir1 = ir(1), r.ir5 = ir(5), r.ir10 = ir(10);
  return r;
}

std::vector<Recall> rerank_recall(const at::Tensor& scores_in, const std::vector<int64_t>& caption_image, int64_t k,
                                  const PairScoreFn& pair_score, const std::vector<double>& dual_weights) {
  const at::Tensor scores = scores_in.detach().to(at::kCPU).to(at::kFloat);
  const int64_t ni = scores.size(0), nt = scores.size(1);
  // The pairs of each direction are scored once, then combined with each weight of the dual score.
  const at::Tensor top_t = std::get<1>(scores.topk(std::min(k, nt), 1));  // (Ni, k) captions per image
  const at::Tensor t_rows = at::arange(ni, at::kLong).unsqueeze(1).expand_as(top_t).reshape({-1});
  const at::Tensor t_cols = top_t.reshape({-1});
  const at::Tensor t_pair = pair_score(t_rows, t_cols).to(at::kCPU).to(at::kFloat).reshape({-1});
  const at::Tensor top_i = std::get<1>(scores.topk(std::min(k, ni), 0));  // (k, Nt) images per caption
  const at::Tensor i_cols = at::arange(nt, at::kLong).unsqueeze(0).expand_as(top_i).reshape({-1});
  const at::Tensor i_rows = top_i.reshape({-1});
  const at::Tensor i_pair = pair_score(i_rows, i_cols).to(at::kCPU).to(at::kFloat).reshape({-1});
  auto rescore = [&](const at::Tensor& rows, const at::Tensor& cols, const at::Tensor& pair, double w) {
    at::Tensor out = scores - 1e4;  // everything outside the top k stays below, in dual order
    out.index_put_({rows, cols}, pair + w * scores.index({rows, cols}));
    return out;
  };
  std::vector<Recall> out;
  for (double w : dual_weights) {
    Recall r = retrieval_recall(rescore(t_rows, t_cols, t_pair, w), caption_image);
    const Recall ir = retrieval_recall(rescore(i_rows, i_cols, i_pair, w), caption_image);
    r.ir1 = ir.ir1, r.ir5 = ir.ir5, r.ir10 = ir.ir10;
    out.push_back(r);
  }
  return out;
}

Recall rerank_recall(const at::Tensor& scores, const std::vector<int64_t>& caption_image, int64_t k,
                     const PairScoreFn& pair_score, double dual_weight) {
  return rerank_recall(scores, caption_image, k, pair_score, std::vector<double>{dual_weight}).front();
}

Recall chance_recall(int64_t ni, const std::vector<int64_t>& caption_image) {
  const double nt = static_cast<double>(caption_image.size());
  std::vector<int64_t> per_image(ni, 0);
  for (int64_t i : caption_image) ++per_image[i];
  // TR: probability that K captions drawn without replacement include one of the image's c.
  auto tr = [&](int64_t k) {
    double sum = 0;
    for (int64_t c : per_image) {
      double miss = 1;
      for (int64_t j = 0; j < std::min<int64_t>(k, static_cast<int64_t>(nt)); ++j) miss *= (nt - c - j) / (nt - j);
      sum += 1 - std::max(0.0, miss);
    }
    return sum / ni;
  };
  Recall r;
  r.tr1 = tr(1), r.tr5 = tr(5), r.tr10 = tr(10);
  r.ir1 = std::min(1.0, 1.0 / ni), r.ir5 = std::min(1.0, 5.0 / ni), r.ir10 = std::min(1.0, 10.0 / ni);
  return r;
}

}  // namespace vlmo
