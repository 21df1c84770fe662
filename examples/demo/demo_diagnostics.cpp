#include "demo_diagnostics.h"

#include <cmath>
#include <random>

#include "model/model_internals.h"
#include "vlmo/data.h"
#include "vlmo/error.h"
#include "vlmo/tasks.h"

namespace vlmo {

double mean_pairwise_cosine(const at::Tensor& f) {
  const at::Tensor u = f.to(at::kDouble) / f.to(at::kDouble).norm(2, -1, true).clamp_min(1e-12);
  const double n = static_cast<double>(u.size(0));
  const double total = u.sum(0).pow(2).sum().item<double>();  // sum over all pairs, self-pairs (1 each) included
  return (total - n) / (n * (n - 1));
}

namespace {

// Restores training mode, trainability and gradients of a model when it goes out of scope.
class ModelStateGuard {
 public:
  explicit ModelStateGuard(VLMo& m) : model_(m), training_(m->is_training()) {
    for (auto& p : model_->parameters()) requires_.push_back(p.requires_grad()), grads_.push_back(p.grad());
  }
  ~ModelStateGuard() {
    model_->train(training_);
    size_t i = 0;
    for (auto& p : model_->parameters()) {
      p.set_requires_grad(requires_[i]);
      p.mutable_grad() = grads_[i];
      ++i;
    }
  }

 private:
  VLMo& model_;
  bool training_;
  std::vector<bool> requires_;
  std::vector<at::Tensor> grads_;
};

}  // namespace

nlohmann::json diagnose_model(VLMo& model, const Tokenizer& tok, const at::Tensor& images,
                              const std::vector<std::string>& captions, uint64_t seed) {
  const int64_t n = images.size(0);
  if (n < 3 || static_cast<int64_t>(captions.size()) != n)
    throw Error(cat("diagnose_model: needs N >= 3 images and as many captions (got ", n, " and ", captions.size(), ")"));
  ModelStateGuard restore(model);
  model->eval();
  const auto [ids, masks] = encode_batch(tok, captions, model->config().max_text_len);
  nlohmann::json out;

  at::Tensor neg_random = at::empty({n}, at::kLong), hard_logits;
  {
    std::mt19937_64 rng(seed);
    for (int64_t i = 0; i < n; ++i) neg_random[i] = (i + 1 + static_cast<int64_t>(rng() % (n - 1))) % n;
  }
  {
    at::NoGradGuard no_grad;
    const UnimodalOutput t = model->infer_text_ft(ids, masks), v = model->infer_image_ft(images);
    out["text_cls_cos"] = mean_pairwise_cosine(t.cls_feats);
    out["image_cls_cos"] = mean_pairwise_cosine(v.cls_feats);
    out["text_hidden_cos"] = mean_pairwise_cosine(t.feats.select(1, 0));
    out["image_hidden_cos"] = mean_pairwise_cosine(v.feats.select(1, 0));
    const at::Tensor raw = at::matmul(t.cls_feats, v.cls_feats.t());
    const at::Tensor sim = raw - 1e9 * at::eye(n);  // caption i vs image j != i
    hard_logits = itm_logits(model, ids, masks, images.index_select(0, sim.argmax(1)));
    // Does the dual encoder score caption i higher with its image than with that hardest other one?
    out["dual_pairwise_hard"] = raw.diagonal().gt(std::get<0>(sim.max(1))).to(at::kDouble).mean().item<double>();
  }
  // One fusion pass over the matched pairs and one over the random mismatches serve the
  // accuracies, the spread, the attention (the recorder's first `depth` entries are the matched
  // pass) and the ITM gradients.
  for (auto& p : model->parameters()) p.set_requires_grad(true), p.mutable_grad() = at::Tensor();
  AttentionRecorder rec;
  const FusionOutput pos = model->infer(ids, masks, images);
  const FusionOutput neg = model->infer(ids, masks, images.index_select(0, neg_random));
  // The pooler reads token 0 of the final-norm output, the text [CLS]: pool text_feats here so
  // that the gradient at that hidden state can be read.
  pos.text_feats.retain_grad();
  neg.text_feats.retain_grad();
  const at::Tensor pooled = at::cat({model->pooler->forward(pos.text_feats), model->pooler->forward(neg.text_feats)});
  const at::Tensor logits = itm_logits_of_pooled(model, pooled);
  const at::Tensor matched = logits.narrow(0, 0, n).detach();
  auto balanced_accuracy = [&](const at::Tensor& mismatched) {
    return 0.5 * (matched.argmax(1).eq(1).to(at::kDouble).mean().item<double>() +
                  mismatched.argmax(1).eq(0).to(at::kDouble).mean().item<double>());
  };
  out["itm_acc_random"] = balanced_accuracy(logits.narrow(0, n, n).detach());
  out["itm_acc_hard"] = balanced_accuracy(hard_logits);
  // The same question to the fusion encoder (its re-ranking score, the "match" logit).
  out["itm_pairwise_hard"] = matched.select(1, 1).gt(hard_logits.select(1, 1)).to(at::kDouble).mean().item<double>();
  out["fused_pooled_cos"] = mean_pairwise_cosine(pooled.detach());
  const int64_t depth = model->config().depth, Lt = ids.size(1);
  const at::Tensor keys = (masks.sum(1) + pos.image_feats.size(1)).to(at::kDouble);  // (N)
  std::vector<double> entropy, to_image;
  for (int64_t l = 0; l < depth; ++l) {
    const at::Tensor p = rec.cls_attention().at(static_cast<size_t>(l)).to(at::kDouble);  // (N, H, keys)
    const at::Tensor h = -(p * p.clamp_min(1e-300).log()).sum(-1);                        // (N, H)
    entropy.push_back((h / keys.log().unsqueeze(1)).mean().item<double>());
    to_image.push_back(p.narrow(2, Lt, p.size(2) - Lt).sum(-1).mean().item<double>());
  }
  out["cls_attention_entropy"] = entropy;
  out["cls_attention_to_image"] = to_image;
  const at::Tensor labels = at::cat({at::ones({n}, at::kLong), at::zeros({n}, at::kLong)});
  at::cross_entropy_loss(logits, labels).backward();
  out["grad_itm_head"] = model->itm_score->fc->weight.grad().norm().item<double>();
  out["grad_pooler"] = model->pooler->dense->weight.grad().norm().item<double>();
  out["grad_fused_cls"] =
      at::cat({pos.text_feats.grad().select(1, 0), neg.text_feats.grad().select(1, 0)}).norm(2, -1).mean().item<double>();
  return out;
}

}  // namespace vlmo
