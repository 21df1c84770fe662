// Evaluation loops of the fine-tuned tasks with the official metrics (reference §5): VQA
// accuracy (and the predictions for an EvalAI submission), NLVR2 accuracy and consistency,
// retrieval recall of the dual encoder with optional ITM re-ranking. Each runs the model in eval
// mode without autograd, in batches, and restores the model's training mode afterwards.
#pragma once
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "vlmo/downstream_data.h"
#include "vlmo/model.h"
#include "vlmo/retrieval.h"
#include "vlmo/sources.h"
#include "vlmo/tokenizer.h"
#include "vlmo/vqa_eval.h"

namespace vlmo {

struct VqaEvaluation {
  std::vector<std::pair<int64_t, std::string>> predictions;  // (question_id, answer), input order
  // The official in-training VQA score (vqa/val/score): the soft target (0, .3, .6, .9, 1 for 0-3 or
  // more humans giving it, raw) of the predicted answer, mean over the questions with an answer in
  // the list: the questions the official's data keeps.
  double score = 0;
  int64_t score_questions = 0;
  // The VQA evaluation's accuracy (EvalAI's: min(1, humans / 3) over the leave-one-out subsets,
  // vqa_accuracy), mean over every question with human answers.
  double accuracy = 0;
  int64_t scored = 0;
};
// Both metrics of answers predicted for `questions` (one each, in order), `answers` the label list.
VqaEvaluation score_vqa_predictions(const std::vector<VqaQuestion>& questions, const std::vector<std::string>& predicted,
                                    const std::vector<std::string>& answers);
// `answers`: the classifier's labels in order. Images come from each question's `image`.
VqaEvaluation evaluate_vqa(VLMo& model, const Tokenizer& tok, const std::vector<VqaQuestion>& questions,
                           const std::vector<std::string>& answers, const ImageLoader& load = file_image_loader(),
                           int64_t batch = 32);

struct Nlvr2Evaluation {
  Nlvr2Score score;
  std::vector<bool> predictions;  // predicted "True", input order
};
Nlvr2Evaluation evaluate_nlvr2(VLMo& model, const Tokenizer& tok, const std::vector<Nlvr2Example>& examples,
                               const ImageLoader& load = file_image_loader(), int64_t batch = 16);

struct RetrievalEvaluation {
  Recall recall;                  // dual encoder
  Recall reranked;                // top rerank_k re-scored with ITM (when rerank_k > 0): the official sum
                                  // of the ITM "match" logit and the dual cosine
  Recall reranked_logits;         // the same pairs scored by the ITM logit plus the contrastive logit
                                  // (cosine x exp(logit_scale)), both experts on the scale they trained at
  double logits_dual_weight = 0;  // the cosine's weight in reranked_logits: the model's exp(logit_scale)
  int64_t rerank_k = 0;
  int64_t images = 0, captions = 0;
};
// Every caption of `images` is a text query and every image an image query (the official
// semantics). With rerank_k > 0 the model needs an ITM head (kept images: all in memory).
// `rerank_model`: another model's fusion encoder scores the pairs instead of `model`'s (for
// example the pre-trained model after an ITC-only fine-tuning, whose ITM head no longer fits);
// it must share the tokenizer, the image size and the text length; the logits re-ranking still
// weights the cosine by `model`'s exp(logit_scale).
RetrievalEvaluation evaluate_retrieval(VLMo& model, const Tokenizer& tok, const std::vector<KarpathyImage>& images,
                                       const ImageLoader& load = file_image_loader(), int64_t rerank_k = 0, int64_t batch = 64,
                                       std::optional<VLMo> rerank_model = std::nullopt);

}  // namespace vlmo
