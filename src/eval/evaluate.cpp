#include "vlmo/evaluate.h"

#include <ATen/ATen.h>

#include <optional>

#include "vlmo/data.h"
#include "vlmo/error.h"
#include "vlmo/image_tensor.h"
#include "vlmo/tasks.h"

namespace vlmo {

namespace {
// Eval mode and no autograd for the scope; the previous training mode comes back after.
class EvalScope {
 public:
  explicit EvalScope(VLMo& m) : model_(m), was_training_(m->is_training()) { model_->eval(); }
  ~EvalScope() { model_->train(was_training_); }

 private:
  VLMo& model_;
  bool was_training_;
  at::NoGradGuard no_grad_;
};

void check_batch(int64_t batch) {
  if (batch < 1) throw Error(cat("evaluation batch size must be at least 1, got ", batch));
}
}  // namespace

VqaEvaluation score_vqa_predictions(const std::vector<VqaQuestion>& qs, const std::vector<std::string>& predicted,
                                    const std::vector<std::string>& answers) {
  if (predicted.size() != qs.size())
    throw Error(cat("score_vqa_predictions: ", predicted.size(), " predictions for ", qs.size(), " questions"));
  const auto label = answer_labels(answers);
  VqaEvaluation out;
  double score = 0, accuracy = 0;
  for (size_t i = 0; i < qs.size(); ++i) {
    out.predictions.emplace_back(qs[i].question_id, predicted[i]);
    const SoftTargets t = vqa_soft_targets(qs[i].answers, label);
    if (!t.labels.empty()) {
      const auto it = label.find(predicted[i]);
      for (size_t k = 0; it != label.end() && k < t.labels.size(); ++k)
        if (t.labels[k] == it->second) score += t.scores[k];
      ++out.score_questions;
    }
    if (!qs[i].answers.empty()) accuracy += vqa_accuracy(predicted[i], qs[i].answers), ++out.scored;
  }
  out.score = out.score_questions ? score / static_cast<double>(out.score_questions) : 0;
  out.accuracy = out.scored ? accuracy / static_cast<double>(out.scored) : 0;
  return out;
}

VqaEvaluation evaluate_vqa(VLMo& model, const Tokenizer& tok, const std::vector<VqaQuestion>& qs,
                           const std::vector<std::string>& answers, const ImageLoader& load, int64_t batch) {
  check_batch(batch);
  require_head(model, "vqa");
  if (static_cast<int>(answers.size()) != model->config().vqav2_label_size)
    throw Error(
        cat("evaluate_vqa: ", answers.size(), " answers for a classifier of ", model->config().vqav2_label_size, " labels"));
  EvalScope scope(model);
  const int size = model->config().image_size;
  std::vector<std::string> predicted;
  for (size_t i = 0; i < qs.size(); i += batch) {
    const size_t end = std::min(qs.size(), i + static_cast<size_t>(batch));
    std::vector<at::Tensor> pix;
    std::vector<std::string> text;
    for (size_t j = i; j < end; ++j) {
      pix.push_back(eval_transform(load(qs[j].image), size));
      text.push_back(qs[j].question);
    }
    const auto [ids, masks] = encode_batch(tok, text, model->config().max_text_len);
    const at::Tensor pred = vqa_logits(model, ids, masks, at::stack(pix)).argmax(1).cpu();
    for (size_t j = i; j < end; ++j) predicted.push_back(answers[pred[j - i].item<int64_t>()]);
  }
  return score_vqa_predictions(qs, predicted, answers);
}

Nlvr2Evaluation evaluate_nlvr2(VLMo& model, const Tokenizer& tok, const std::vector<Nlvr2Example>& ex, const ImageLoader& load,
                               int64_t batch) {
  check_batch(batch);
  require_head(model, "nlvr2");
  EvalScope scope(model);
  const int size = model->config().image_size;
  Nlvr2Evaluation out;
  std::vector<std::string> ids_all;
  std::vector<bool> correct;
  for (size_t i = 0; i < ex.size(); i += batch) {
    const size_t end = std::min(ex.size(), i + static_cast<size_t>(batch));
    std::vector<at::Tensor> p0, p1;
    std::vector<std::string> text;
    for (size_t j = i; j < end; ++j) {
      p0.push_back(eval_transform(load(ex[j].image0), size));
      p1.push_back(eval_transform(load(ex[j].image1), size));
      text.push_back(ex[j].sentence);
    }
    const auto [ids, masks] = encode_batch(tok, text, model->config().max_text_len);
    const at::Tensor pred = nlvr2_logits(model, ids, masks, at::stack(p0), at::stack(p1)).argmax(1).cpu();
    for (size_t j = i; j < end; ++j) {
      const bool says_true = pred[j - i].item<int64_t>() == 1;
      out.predictions.push_back(says_true);
      ids_all.push_back(ex[j].identifier);
      correct.push_back(says_true == ex[j].label);
    }
  }
  out.score = nlvr2_score(ids_all, correct);
  return out;
}

RetrievalEvaluation evaluate_retrieval(VLMo& model, const Tokenizer& tok, const std::vector<KarpathyImage>& images,
                                       const ImageLoader& load, int64_t rerank_k, int64_t batch,
                                       std::optional<VLMo> rerank_model) {
  check_batch(batch);
  require_head(model, "itc");
  VLMo scorer_model = rerank_model ? *rerank_model : model;
  if (rerank_k > 0) require_head(scorer_model, "itm");
  if (rerank_model) {
    const Config &a = model->config(), &b = scorer_model->config();
    if (a.image_size != b.image_size || a.max_text_len != b.max_text_len || a.vocab_size != b.vocab_size)
      throw Error(cat("evaluate_retrieval: the re-ranking model runs at image size ", b.image_size, ", text length ",
                      b.max_text_len, ", vocabulary ", b.vocab_size, "; the retrieval model at ", a.image_size, ", ",
                      a.max_text_len, ", ", a.vocab_size, " (they must agree)"));
  }
  if (images.empty()) throw Error("evaluate_retrieval: no images");
  EvalScope scope(model);
  std::optional<EvalScope> scorer_scope;
  if (rerank_model) scorer_scope.emplace(scorer_model);
  const int size = model->config().image_size;
  std::vector<at::Tensor> feats, kept, pix;
  std::vector<std::string> captions;
  std::vector<int64_t> owner;
  auto flush = [&] {
    if (pix.empty()) return;
    const at::Tensor stacked = at::stack(pix);
    feats.push_back(encode_images(model, stacked, batch));
    if (rerank_k > 0) kept.push_back(stacked);
    pix.clear();
  };
  for (size_t i = 0; i < images.size(); ++i) {
    pix.push_back(eval_transform(load(images[i].path), size));
    if (static_cast<int64_t>(pix.size()) == batch) flush();
    for (const auto& c : images[i].captions) captions.push_back(c), owner.push_back(static_cast<int64_t>(i));
  }
  flush();
  if (captions.empty()) throw Error("evaluate_retrieval: the images have no captions");
  const auto [ids, masks] = encode_batch(tok, captions, model->config().max_text_len);
  const at::Tensor scores = at::matmul(at::cat(feats), encode_texts(model, ids, masks, batch).t());  // (Ni, Nt)
  RetrievalEvaluation out;
  out.images = static_cast<int64_t>(images.size());
  out.captions = static_cast<int64_t>(captions.size());
  out.recall = retrieval_recall(scores, owner);
  if (rerank_k > 0) {
    out.rerank_k = rerank_k;
    out.logits_dual_weight = model->logit_scale.detach().exp().item<double>();
    const std::vector<Recall> r = rerank_recall(scores, owner, rerank_k, itm_pair_scorer(scorer_model, at::cat(kept), ids, masks),
                                                {1.0, out.logits_dual_weight});
    out.reranked = r[0], out.reranked_logits = r[1];
  }
  return out;
}

}  // namespace vlmo
