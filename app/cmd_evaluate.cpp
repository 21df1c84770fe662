// vlmo evaluate: the official metric of a fine-tuned model on a split (vlmo/evaluate.h), printed
// as JSON; for VQA also the EvalAI submission file.
#include <iostream>
#include <optional>

#include "common.h"
#include "vlmo/downstream_data.h"
#include "vlmo/error.h"
#include "vlmo/evaluate.h"

namespace vlmo::cli {
namespace {

nlohmann::json recall_json(const Recall& r) {
  return {{"tr_r1", r.tr1}, {"tr_r5", r.tr5}, {"tr_r10", r.tr10}, {"ir_r1", r.ir1}, {"ir_r5", r.ir5}, {"ir_r10", r.ir10}};
}

int run_evaluate(const Args& a) {
  const std::string task = a.get("task");
  if (task != "vqa" && task != "nlvr2" && task != "irtr")
    throw Error(cat("unknown task \"", task, "\" (expected vqa, nlvr2 or irtr)"));
  LoadedModel m = load_model_from(a);
  const Tokenizer tok = tokenizer_for(a, m);
  const int64_t batch = a.get_int64("batch-size");
  nlohmann::json out;
  out["task"] = task;
  if (task == "vqa") {
    if (m.vqa_answers.empty()) throw Error(cat(a.get("model"), ": no VQA answer list recorded; give --answers"));
    auto qs = read_vqav2(a.get("questions"), a.get("annotations"));
    attach_coco_images(qs, a.get("images"), a.get("image-split"));
    const VqaEvaluation e = evaluate_vqa(m.model, tok, qs, m.vqa_answers, file_image_loader(), batch);
    if (!a.get("submission").empty()) write_vqa_submission(a.get("submission"), e.predictions);
    out["questions"] = qs.size();
    if (e.score_questions) out["score"] = e.score, out["score_questions"] = e.score_questions;
    if (e.scored) out["accuracy"] = e.accuracy;
  } else if (task == "nlvr2") {
    const auto ex = read_nlvr2(a.get("data"), a.get("images"), a.get("split"));
    const Nlvr2Evaluation e = evaluate_nlvr2(m.model, tok, ex, file_image_loader(), batch);
    out["examples"] = ex.size();
    out["accuracy"] = e.score.accuracy;
    out["consistency"] = e.score.consistency;
  } else {
    std::vector<KarpathyImage> images;
    for (auto& k : read_karpathy(a.get("karpathy"), a.get("images")))
      if (k.split == a.get("split")) images.push_back(std::move(k));
    if (images.empty()) throw Error(cat(a.get("karpathy"), ": no image in split \"", a.get("split"), "\""));
    const int64_t k = a.get_int64("rerank");
    std::optional<VLMo> reranker;
    if (!a.get("rerank-model").empty()) {
      if (k <= 0) throw Error("--rerank-model needs --rerank K (K > 0): the number of candidates it re-scores");
      const LoadedModel r = load_model_from(a, "rerank-model");
      if (const auto it = r.metadata.find(kVocabMetadataKey); it != r.metadata.end() && it->second != tok.vocab_text())
        throw Error(cat(a.get("rerank-model"), ": records another vocabulary than the one ", a.get("model"), " is read with (",
                        tok.source(), "): both models must share one tokenizer"));
      reranker = r.model;
    }
    const RetrievalEvaluation e = evaluate_retrieval(m.model, tok, images, file_image_loader(), k, batch, reranker);
    out["images"] = e.images;
    out["captions"] = e.captions;
    out["recall"] = recall_json(e.recall);
    if (k > 0) {
      out["recall_itm_rerank"] = recall_json(e.reranked), out["recall_itm_rerank"]["k"] = k;
      out["recall_itm_rerank_logits"] = recall_json(e.reranked_logits), out["recall_itm_rerank_logits"]["k"] = k;
      out["recall_itm_rerank_logits"]["dual_weight"] = e.logits_dual_weight;
      if (reranker)
        for (const char* key : {"recall_itm_rerank", "recall_itm_rerank_logits"})
          out[key]["rerank_model"] = a.get("rerank-model");
    }
  }
  std::cout << out.dump(2) << "\n";
  return 0;
}

}  // namespace

Command evaluate_command() {
  Command c{
      "evaluate",
      "Official metrics of a fine-tuned model: vqa (score: the official in-training VQA score over soft targets, over the questions with an answer in the model's list; accuracy: the VQA evaluation's, with its normalisation, over every annotated question; EvalAI submission file), nlvr2 (accuracy, consistency), irtr (TR/IR R@1/5/10, optional ITM re-ranking).",
      "vlmo evaluate --task {vqa,nlvr2,irtr} --model CKPT [data options]"};
  c.options = model_options();
  for (
      const Option& o : std::vector<Option>{
          {"task", "vqa", "vqa, nlvr2 or irtr"},
          {"questions", "", "vqa: questions JSON"},
          {"annotations", "", "vqa: annotations JSON (none for test-dev: submission only)"},
          {"image-split", "val2014", "vqa: COCO file-name split"},
          {"submission", "", "vqa: write the EvalAI submission JSON here"},
          {"data", "", "nlvr2: dev.json or test1.json"},
          {"split", "test", "nlvr2: dev or test1; irtr: Karpathy split (test, val)"},
          {"karpathy", "", "irtr: Karpathy JSON"},
          integer_option("rerank", "0", "irtr: re-rank the dual encoder's top K with the ITM head (0: off)", 0, 1000000),
          {"rerank-model", "",
           "irtr: with --rerank, score the pairs with this checkpoint's fusion encoder and ITM head instead of --model's (e.g. the pre-trained model after an ITC-only fine-tuning); same tokenizer, image size and text length"},
          {"images", ".", "image folder / root"},
          integer_option("batch-size", "32", "samples per forward pass", 1, 1048576)})
    c.options.push_back(o);
  c.run = run_evaluate;
  return c;
}

}  // namespace vlmo::cli
