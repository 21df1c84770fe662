// src/eval/: the official VQAv2 accuracy, NLVR2 accuracy and consistency, retrieval recall and
// ITM re-ranking by hand; the evaluation loops against the task forwards and those metrics.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "test_util.h"
#include "vlmo/evaluate.h"
#include "vlmo/image_tensor.h"
#include "vlmo/retrieval.h"
#include "vlmo/tasks.h"
#include "vlmo/vqa_eval.h"

using namespace vlmo;
using vlmo::test::bert;
using vlmo::test::bert_vocab;
using vlmo::test::coloured;
using vlmo::test::expect_error;
using vlmo::test::load_coloured;
using vlmo::test::ref;
using vlmo::test::tiny_config;
using vlmo::test::tiny_model;

TEST(VqaEval, AccuracyIsMinOneMatchesOverThreeAveragedOverLeaveOneOut) {
  const std::vector<std::string> ten_yes(10, "yes");
  EXPECT_DOUBLE_EQ(vqa_accuracy("yes", ten_yes), 1.0);
  EXPECT_DOUBLE_EQ(vqa_accuracy("no", ten_yes), 0.0);
  // Two humans said "2", eight "3". Predicting "2": for the 8 subsets dropping a "3" answer two
  // matches -> 2/3; for the 2 subsets dropping a "2" answer one match -> 1/3.
  std::vector<std::string> a = {"2", "two", "3", "3", "3", "3", "3", "3", "3", "3"};
  EXPECT_NEAR(vqa_accuracy("2", a), (8 * (2.0 / 3) + 2 * (1.0 / 3)) / 10, 1e-12);
  // Three humans agree: every subset has >= 2 matches; 7 subsets keep all three -> 1.
  std::vector<std::string> b = {"red", "red", "Red.", "blue", "blue", "blue", "blue", "blue", "blue", "blue"};
  EXPECT_NEAR(vqa_accuracy("red", b), (7 * 1.0 + 3 * (2.0 / 3)) / 10, 1e-12);
  // Answers are only normalised when humans disagree: unanimous "Yes." must match exactly.
  EXPECT_DOUBLE_EQ(vqa_accuracy("yes", std::vector<std::string>(10, "Yes.")), 0.0);
}

// A VQAv2-shaped val set (questions and annotations files) with questions none of whose human
// answers is in the list: the official drops them (and image 3, left with none) before taking the
// last images as rest_val, and scores rest_val by the soft target of the predicted answer.
TEST(VqaEval, RestValAndBothMetricsAsTheOfficial) {
  struct Q {
    int64_t id, image;
    std::vector<std::pair<std::string, int>> answers;  // (raw answer, how many humans)
  };
  const std::vector<Q> val = {{10, 1, {{"yes", 10}}},
                              {11, 1, {{"purple", 10}}},  // no answer in the list: dropped
                              {20, 2, {{"2", 3}, {"two", 7}}},
                              {30, 3, {{"maybe", 10}}},  // dropped, and image 3 with it
                              {40, 4, {{"no", 2}, {"yes", 1}, {"nope", 7}}},
                              {41, 4, {{"yes", 10}}}};
  nlohmann::json qj = {{"questions", nlohmann::json::array()}}, aj = {{"annotations", nlohmann::json::array()}};
  for (const Q& q : val) {
    qj["questions"].push_back({{"question_id", q.id}, {"image_id", q.image}, {"question", "what?"}});
    nlohmann::json answers = nlohmann::json::array();
    for (const auto& [a, n] : q.answers)
      for (int k = 0; k < n; ++k) answers.push_back({{"answer", a}});
    aj["annotations"].push_back(
        {{"question_id", q.id}, {"image_id", q.image}, {"multiple_choice_answer", q.answers[0].first}, {"answers", answers}});
  }
  const std::string dir = vlmo::test::temp_dir();
  vlmo::test::write_file(dir + "/val_q.json", qj.dump());
  vlmo::test::write_file(dir + "/val_a.json", aj.dump());
  const std::vector<std::string> list = {"yes", "no", "2"};
  const VqaFinetuneData d = vqa_finetune_data({}, read_vqav2(dir + "/val_q.json", dir + "/val_a.json"), list, 9, 2);
  EXPECT_EQ(d.val_questions_dropped, 2);
  EXPECT_EQ(d.val_images_dropped, 1);
  // Images left, in order: 1, 2, 4; the last two are rest_val (unfiltered, they were 3 and 4).
  std::vector<int64_t> rest;
  for (const auto& q : d.rest_val) rest.push_back(q.question_id);
  EXPECT_EQ(rest, (std::vector<int64_t>{20, 40, 41}));
  ASSERT_EQ(d.train.size(), 1u);  // question 10 (trainable_val)
  EXPECT_EQ(d.train[0].targets.labels, (std::vector<int64_t>{0}));

  // Predicted "2", "yes", "no". Score: soft targets 0.9 ("2": three humans raw; "two" is another
  // string), 0.3 (one human), 0 -> 1.2 / 3. Accuracy (answers normalised when humans disagree, so
  // "two" is "2"): 1 (every leave-one-out subset keeps >= 3 matches), 9 x (1/3) / 10 = 0.3 (the
  // subset without the one "yes" has none), 0 -> 1.3 / 3.
  const VqaEvaluation e = score_vqa_predictions(d.rest_val, {"2", "yes", "no"}, list);
  EXPECT_EQ(e.score_questions, 3);
  EXPECT_NEAR(e.score, 1.2 / 3, 1e-12);
  EXPECT_EQ(e.scored, 3);
  EXPECT_NEAR(e.accuracy, 1.3 / 3, 1e-12);
  EXPECT_EQ(e.predictions[1], (std::pair<int64_t, std::string>{40, "yes"}));
  // Scoring the unfiltered questions too: the score keeps to the answerable ones, the accuracy
  // counts question 30 (predicted "yes": 0).
  std::vector<VqaQuestion> with_unanswerable = d.rest_val;
  for (const auto& q : read_vqav2(dir + "/val_q.json", dir + "/val_a.json"))
    if (q.question_id == 30) with_unanswerable.push_back(q);
  const VqaEvaluation all = score_vqa_predictions(with_unanswerable, {"2", "yes", "no", "yes"}, list);
  EXPECT_EQ(all.score_questions, 3);
  EXPECT_NEAR(all.score, 1.2 / 3, 1e-12);
  EXPECT_EQ(all.scored, 4);
  EXPECT_NEAR(all.accuracy, 1.3 / 4, 1e-12);
  expect_error([&] { score_vqa_predictions(d.rest_val, {"2"}, list); }, {"1 predictions for 3 questions"});
}

TEST(Nlvr2Eval, AccuracyAndConsistency) {
  // Sentence 0 of set 850 with pairs 0,1,2 (one wrong); sentence 1 with pairs 0,1 (all right).
  const std::vector<std::string> ids = {"dev-850-0-0", "dev-850-1-0", "dev-850-2-0", "dev-850-0-1", "dev-850-1-1"};
  const Nlvr2Score s = nlvr2_score(ids, {true, false, true, true, true});
  EXPECT_DOUBLE_EQ(s.accuracy, 0.8);
  EXPECT_DOUBLE_EQ(s.consistency, 0.5);
}

TEST(Retrieval, RecallByHand) {
  // 2 images, 4 captions: captions 0,1 -> image 0; 2,3 -> image 1.
  const at::Tensor scores = at::tensor({0.9, 0.1, 0.8, 0.2,  // image 0: best caption 0 (own)
                                        0.5, 0.6, 0.7, 0.1})
                                .reshape({2, 4});  // image 1: best caption 2 (own)
  const Recall r = retrieval_recall(scores, {0, 0, 1, 1});
  EXPECT_DOUBLE_EQ(r.tr1, 1.0);
  // IR: caption 0 -> image 0 (0.9 > 0.5) hit; caption 1 -> image 1 (0.6 > 0.1) miss;
  // caption 2 -> image 0 (0.8 > 0.7) miss; caption 3 -> image 0 (0.2 > 0.1) miss.
  EXPECT_DOUBLE_EQ(r.ir1, 0.25);
  EXPECT_DOUBLE_EQ(r.ir5, 1.0);
  const Recall c = chance_recall(2, {0, 0, 1, 1});
  EXPECT_DOUBLE_EQ(c.ir1, 0.5);
  EXPECT_NEAR(c.tr1, 0.5, 1e-12);
}

TEST(Retrieval, ItmRerankingByHand) {
  const at::Tensor scores = at::tensor({0.9, 0.1, 0.8, 0.2, 0.5, 0.6, 0.7, 0.1}).reshape({2, 4});
  // The "ITM" strongly prefers (image 1, caption 1): image 1's row now ranks caption 1 (owned by
  // image 0) first, a TR miss; caption 1's column already ranked image 1 first.
  int calls = 0;
  const Recall r = rerank_recall(scores, {0, 0, 1, 1}, 2, [&](const at::Tensor& i, const at::Tensor& t) {
    ++calls;
    return (i.eq(1) & t.eq(1)).to(at::kFloat) * 5;
  });
  EXPECT_EQ(calls, 2);  // one batch per direction
  EXPECT_DOUBLE_EQ(r.tr1, 0.5);
  EXPECT_DOUBLE_EQ(r.ir1, 0.25);
  EXPECT_DOUBLE_EQ(r.tr5, 1.0);
  // Weighting the dual score by 100 (as a contrastive logit would be): image 1's row scores
  // caption 2 at 70 and caption 1 at 5 + 60, so caption 2 (its own) comes first. Pairs are scored
  // once for all weights.
  calls = 0;
  const std::vector<Recall> w = rerank_recall(
      scores, {0, 0, 1, 1}, 2,
      [&](const at::Tensor& i, const at::Tensor& t) {
        ++calls;
        return (i.eq(1) & t.eq(1)).to(at::kFloat) * 5;
      },
      std::vector<double>{1.0, 100.0});
  EXPECT_EQ(calls, 2);
  ASSERT_EQ(w.size(), 2u);
  EXPECT_DOUBLE_EQ(w[0].tr1, 0.5);
  EXPECT_DOUBLE_EQ(w[0].ir1, 0.25);
  EXPECT_DOUBLE_EQ(w[1].tr1, 1.0);
  EXPECT_DOUBLE_EQ(w[1].ir1, 0.25);  // caption 1's column: image 1 at 5 + 60 beats image 0 at 10
}

TEST(Evaluate, VqaPredictionsAreTheTaskForwardAndAccuracyIsOfficial) {
  VLMo m = tiny_model(tiny_config(all_heads(), bert_vocab), 3);
  const std::vector<std::string> answers = {"yes", "no", "red", "2"};
  std::vector<VqaQuestion> qs(3);
  for (int i = 0; i < 3; ++i) qs[i].question_id = 100 + i, qs[i].image = ref(i), qs[i].question = "is it red?";
  // The predictions first, from the task forward on the same inputs.
  std::vector<at::Tensor> pix;
  for (int i = 0; i < 3; ++i) pix.push_back(eval_transform(coloured(i), 32));
  const auto [ids, masks] = encode_batch(bert(), {"is it red?", "is it red?", "is it red?"}, 8);
  m->eval();
  at::Tensor pred;
  {
    at::NoGradGuard g;
    pred = vqa_logits(m, ids, masks, at::stack(pix)).argmax(1);
  }
  m->train();
  const std::string p0 = answers[pred[0].item<int64_t>()], p2 = answers[pred[2].item<int64_t>()];
  qs[0].answers.assign(10, p0);                                                                      // 1.0
  qs[1].answers.assign(10, "zebra");                                                                 // 0.0
  qs[2].answers = {p2, p2, "zebra", "zebra", "zebra", "zebra", "zebra", "zebra", "zebra", "zebra"};  // 0.6
  const VqaEvaluation e = evaluate_vqa(m, bert(), qs, answers, load_coloured, /*batch=*/2);
  ASSERT_EQ(e.predictions.size(), 3u);
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(e.predictions[i].first, 100 + i);
    EXPECT_EQ(e.predictions[i].second, answers[pred[i].item<int64_t>()]);
  }
  EXPECT_EQ(e.scored, 3);
  EXPECT_NEAR(e.accuracy, (1.0 + 0.0 + 0.6) / 3, 1e-12);
  EXPECT_TRUE(m->is_training());  // the training mode comes back
  expect_error([&] { evaluate_vqa(m, bert(), qs, {"yes"}, load_coloured); }, {"1 answers", "4 labels"});
}

TEST(Evaluate, Nlvr2AndRetrievalMatchTheirForwards) {
  VLMo m = tiny_model(tiny_config(all_heads(), bert_vocab), 3);
  m->eval();
  std::vector<Nlvr2Example> ex;
  for (int k = 0; k < 5; ++k)
    ex.push_back({"dev-" + std::to_string(k / 2) + "-" + std::to_string(k % 2) + "-0", "a red one.", ref(k), ref(k + 5), false});
  at::Tensor pred;
  {
    at::NoGradGuard g;
    std::vector<at::Tensor> a, b;
    for (int k = 0; k < 5; ++k) a.push_back(eval_transform(coloured(k), 32)), b.push_back(eval_transform(coloured(k + 5), 32));
    const auto [ids, masks] = encode_batch(bert(), std::vector<std::string>(5, "a red one."), 8);
    pred = nlvr2_logits(m, ids, masks, at::stack(a), at::stack(b)).argmax(1);
  }
  // Labels equal to the prediction for examples 0, 1, 2; the opposite for 3, 4.
  for (int k = 0; k < 5; ++k) ex[k].label = (pred[k].item<int64_t>() == 1) == (k < 3);
  const Nlvr2Evaluation n = evaluate_nlvr2(m, bert(), ex, load_coloured, 2);
  EXPECT_NEAR(n.score.accuracy, 3.0 / 5, 1e-12);
  // Sentences: dev-0-*-0 = {0, 1} both right; dev-1-*-0 = {2 right, 3 wrong}; dev-2 = {4 wrong}.
  EXPECT_NEAR(n.score.consistency, 1.0 / 3, 1e-12);
  EXPECT_FALSE(m->is_training());

  std::vector<KarpathyImage> images = {{ref(1), "test", {"a red one", "a blue one"}},
                                       {ref(2), "test", {"the cat"}},
                                       {ref(3), "test", {"two dogs", "a man", "the sea"}}};
  const RetrievalEvaluation r = evaluate_retrieval(m, bert(), images, load_coloured, /*rerank_k=*/2, /*batch=*/2);
  EXPECT_EQ(r.images, 3);
  EXPECT_EQ(r.captions, 6);
  std::vector<at::Tensor> pix;
  for (int k : {1, 2, 3}) pix.push_back(eval_transform(coloured(k), 32));
  const auto [ids, masks] = encode_batch(bert(), {"a red one", "a blue one", "the cat", "two dogs", "a man", "the sea"}, 8);
  const at::Tensor scores = at::matmul(encode_images(m, at::stack(pix)), encode_texts(m, ids, masks).t());
  const Recall want = retrieval_recall(scores, {0, 0, 1, 2, 2, 2});
  EXPECT_DOUBLE_EQ(r.recall.tr1, want.tr1);
  EXPECT_DOUBLE_EQ(r.recall.ir1, want.ir1);
  EXPECT_DOUBLE_EQ(r.recall.ir5, want.ir5);
  EXPECT_EQ(r.rerank_k, 2);
  EXPECT_DOUBLE_EQ(r.reranked.ir10, 1.0);  // 3 images: every caption's image is in its top 10
}

TEST(Evaluate, RetrievalReRanksWithAnotherModelsItm) {
  // The dual scores come from `m`, the ITM pair scores from `other` (another init): the result is
  // rerank_recall over m's scores with other's scorer, and differs from m's own re-ranking.
  const Config cfg = tiny_config(all_heads(), bert_vocab);
  VLMo m = tiny_model(cfg, 3), other = tiny_model(cfg, 11);
  {
    at::NoGradGuard g;  // a loud ITM head that ranks against m's, so that the re-rankings differ
    for (auto& p : other->named_parameters())
      if (p.key().rfind("itm_score.", 0) == 0) p.value().mul_(-1000);
  }
  m->eval(), other->eval();
  std::vector<KarpathyImage> images;
  std::vector<std::string> captions;
  std::vector<int64_t> owner;
  const std::vector<std::string> words = {"a red one", "a blue one", "the cat", "two dogs",
                                          "a man",     "the sea",    "a car",   "one tree"};
  for (int k = 0; k < 8; ++k) {
    images.push_back({ref(k), "test", {words[k], words[(k + 3) % 8] + " again"}});
    for (const auto& c : images.back().captions) captions.push_back(c), owner.push_back(k);
  }
  const RetrievalEvaluation own = evaluate_retrieval(m, bert(), images, load_coloured, /*rerank_k=*/4, /*batch=*/3);
  const RetrievalEvaluation r = evaluate_retrieval(m, bert(), images, load_coloured, /*rerank_k=*/4, /*batch=*/3, other);
  std::vector<at::Tensor> pix;
  for (int k = 0; k < 8; ++k) pix.push_back(eval_transform(coloured(k), 32));
  at::NoGradGuard g;
  const at::Tensor px = at::stack(pix);
  const auto [ids, masks] = encode_batch(bert(), captions, 8);
  const at::Tensor scores = at::matmul(encode_images(m, px), encode_texts(m, ids, masks).t());
  const double w = m->logit_scale.exp().item<double>();
  const std::vector<Recall> want = rerank_recall(scores, owner, 4, itm_pair_scorer(other, px, ids, masks), {1.0, w});
  const std::vector<Recall> mine = rerank_recall(scores, owner, 4, itm_pair_scorer(m, px, ids, masks), {1.0, w});
  EXPECT_DOUBLE_EQ(r.recall.tr1, own.recall.tr1);  // the dual encoder is m's either way
  EXPECT_DOUBLE_EQ(r.reranked.tr1, want[0].tr1);
  EXPECT_DOUBLE_EQ(r.reranked.ir1, want[0].ir1);
  EXPECT_DOUBLE_EQ(r.reranked.ir5, want[0].ir5);
  EXPECT_DOUBLE_EQ(r.reranked_logits.tr1, want[1].tr1);
  EXPECT_DOUBLE_EQ(r.reranked_logits.ir1, want[1].ir1);
  EXPECT_DOUBLE_EQ(r.logits_dual_weight, w);
  EXPECT_DOUBLE_EQ(own.reranked.ir1, mine[0].ir1);
  // On these models the two scorers, and so the two re-rankings, differ: the checks above tell
  // the scorers apart.
  auto key = [](const Recall& x) { return std::vector<double>{x.tr1, x.tr5, x.ir1, x.ir5}; };
  EXPECT_NE(key(want[0]), key(mine[0]));
  const at::Tensor pairs_i = at::arange(8, at::kLong).repeat_interleave(2), pairs_t = at::arange(16, at::kLong);
  EXPECT_FALSE(at::allclose(itm_pair_scorer(other, px, ids, masks)(pairs_i, pairs_t),
                            itm_pair_scorer(m, px, ids, masks)(pairs_i, pairs_t)));
  // A re-ranker at another image size is refused, naming both.
  Config big = cfg;
  big.image_size = 48;
  expect_error([&] { evaluate_retrieval(m, bert(), images, load_coloured, 4, 3, tiny_model(big, 3)); },
               {"re-ranking model runs at image size 48", "retrieval model at 32"});
}
