#include <gtest/gtest.h>

#include "vlmo/vqa_eval.h"
#include "vlmo/retrieval.h"
#include <ATen/ATen.h>
#include "test_util.h"

using namespace vlmo;

TEST(VqaEval, NormalisationOfTheOfficialEvaluation) {
  EXPECT_EQ(normalize_vqa_answer("Two"), "2");
  EXPECT_EQ(normalize_vqa_answer("the dog"), "dog");
  EXPECT_EQ(normalize_vqa_answer("A Red Car"), "red car");
  EXPECT_EQ(normalize_vqa_answer("dont"), "don't");
  EXPECT_EQ(normalize_vqa_answer("yes."), "yes");
  EXPECT_EQ(normalize_vqa_answer("2.5"), "2.5");
  EXPECT_EQ(normalize_vqa_answer("1,000"), "1000");       // thousands comma: punctuation removed
  EXPECT_EQ(normalize_vqa_answer("black/white"), "black white");  // no space around: replaced
  EXPECT_EQ(normalize_vqa_answer("black / white"), "black white"); // touches a space: removed
  EXPECT_EQ(normalize_vqa_answer("  none\t"), "0");
  EXPECT_EQ(normalize_vqa_answer("what's up?"), "what's up");
}

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

TEST(VqaEval, SoftScores) {
  EXPECT_DOUBLE_EQ(vqa_soft_score(0), 0.0);
  EXPECT_DOUBLE_EQ(vqa_soft_score(1), 0.3);
  EXPECT_DOUBLE_EQ(vqa_soft_score(2), 0.6);
  EXPECT_DOUBLE_EQ(vqa_soft_score(3), 0.9);
  EXPECT_DOUBLE_EQ(vqa_soft_score(4), 1.0);
  EXPECT_DOUBLE_EQ(vqa_soft_score(10), 1.0);
}

TEST(Nlvr2Eval, AccuracyAndConsistency) {
  // Sentence 0 of set 850 with pairs 0,1,2 (one wrong); sentence 1 with pairs 0,1 (all right).
  const std::vector<std::string> ids = {"dev-850-0-0", "dev-850-1-0", "dev-850-2-0", "dev-850-0-1", "dev-850-1-1"};
  const Nlvr2Score s = nlvr2_score(ids, {true, false, true, true, true});
  EXPECT_DOUBLE_EQ(s.accuracy, 0.8);
  EXPECT_DOUBLE_EQ(s.consistency, 0.5);
}

#include <fstream>

#include "test_util.h"
#include "vlmo/downstream_data.h"

TEST(VqaData, ReadsVqav2AndBuildsTheOfficialVocabularyAndTargets) {
  const std::string dir = vlmo::test::temp_dir();
  std::ofstream(dir + "/q.json") << R"({"questions": [
    {"image_id": 1, "question": "What color?", "question_id": 10},
    {"image_id": 1, "question": "How many?", "question_id": 11},
    {"image_id": 2, "question": "Is it?", "question_id": 20}]})";
  std::ofstream(dir + "/a.json") << R"({"annotations": [
    {"question_id": 10, "image_id": 1, "multiple_choice_answer": "Red", "answers": [
      {"answer": "red"}, {"answer": "red"}, {"answer": "red"}, {"answer": "red"}, {"answer": "dark red"},
      {"answer": "dark red"}, {"answer": "maroon"}, {"answer": "red"}, {"answer": "Red"}, {"answer": "red"}]},
    {"question_id": 11, "image_id": 1, "multiple_choice_answer": "two", "answers": [
      {"answer": "2"}, {"answer": "2"}, {"answer": "two"}, {"answer": "3"}, {"answer": "2"},
      {"answer": "2"}, {"answer": "2"}, {"answer": "2"}, {"answer": "2"}, {"answer": "2"}]},
    {"question_id": 20, "image_id": 2, "multiple_choice_answer": "yes", "answers": [
      {"answer": "yes"}, {"answer": "yes"}, {"answer": "yes"}, {"answer": "yes"}, {"answer": "yes"},
      {"answer": "yes"}, {"answer": "yes"}, {"answer": "yes"}, {"answer": "yes"}, {"answer": "no"}]}]})";
  const auto qs = read_vqav2(dir + "/q.json", dir + "/a.json");
  ASSERT_EQ(qs.size(), 3u);
  EXPECT_EQ(qs[1].answers.size(), 10u);
  // Normalised multiple-choice answers "red", "2", "yes", each once: min_count 1 keeps all.
  EXPECT_EQ(build_answer_vocab(qs, 1), (std::vector<std::string>{"red", "2", "yes"}));
  EXPECT_TRUE(build_answer_vocab(qs, 2).empty());
  const std::unordered_map<std::string, int64_t> a2l = {{"red", 0}, {"2", 1}, {"yes", 2}, {"dark red", 3}};
  // Raw answers are counted as given: "red" x6 -> 1.0, "dark red" x2 -> 0.6, "Red" unknown.
  const SoftTargets t = vqa_soft_targets(qs[0].answers, a2l);
  EXPECT_EQ(t.labels, (std::vector<int64_t>{0, 3}));
  EXPECT_EQ(t.scores, (std::vector<double>{1.0, 0.6}));
  EXPECT_TRUE(vqa_soft_targets({"purple", "teal"}, a2l).labels.empty());
  EXPECT_EQ(coco_image_path("/coco/val2014", "val2014", 42), "/coco/val2014/COCO_val2014_000000000042.jpg");
  write_vqa_submission(dir + "/sub.json", {{10, "red"}, {11, "2"}});
  EXPECT_EQ(vlmo::test::read_file(dir + "/sub.json"),
            "[{\"answer\":\"red\",\"question_id\":10},{\"answer\":\"2\",\"question_id\":11}]\n");
  std::ofstream(dir + "/bad.json") << R"({"questions": [{"image_id": 1}]})";
  vlmo::test::expect_error([&] { read_vqav2(dir + "/bad.json", ""); }, {"bad.json", "questions[0]"});
}

TEST(Nlvr2Data, ReadsJsonLinesWithImagePaths) {
  const std::string dir = vlmo::test::temp_dir();
  std::ofstream(dir + "/dev.json") << R"({"identifier": "dev-850-0-1", "sentence": "One image has dogs.", "label": "True"})" "\n"
                                   << R"({"identifier": "train-1-2-0", "sentence": "x", "label": "False", "directory": 7})" "\n";
  const auto ex = read_nlvr2(dir + "/dev.json", "/nlvr2/images", "dev");
  ASSERT_EQ(ex.size(), 2u);
  EXPECT_EQ(ex[0].image0, "/nlvr2/images/dev/dev-850-0-img0.png");
  EXPECT_EQ(ex[0].image1, "/nlvr2/images/dev/dev-850-0-img1.png");
  EXPECT_TRUE(ex[0].label);
  EXPECT_EQ(ex[1].image0, "/nlvr2/images/dev/7/train-1-2-img0.png");
  std::ofstream(dir + "/bad.json") << R"({"identifier": "dev-1-0-0", "sentence": "s", "label": "maybe"})" "\n";
  vlmo::test::expect_error([&] { read_nlvr2(dir + "/bad.json", "/r", "dev"); }, {"bad.json:1", "True"});
}

TEST(Retrieval, RecallByHand) {
  // 2 images, 4 captions: captions 0,1 -> image 0; 2,3 -> image 1.
  const at::Tensor scores = at::tensor({0.9, 0.1, 0.8, 0.2,    // image 0: best caption 0 (own)
                                        0.5, 0.6, 0.7, 0.1}).reshape({2, 4});  // image 1: best caption 2 (own)
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
  const std::vector<Recall> w = rerank_recall(scores, {0, 0, 1, 1}, 2, [&](const at::Tensor& i, const at::Tensor& t) {
    ++calls;
    return (i.eq(1) & t.eq(1)).to(at::kFloat) * 5;
  }, std::vector<double>{1.0, 100.0});
  EXPECT_EQ(calls, 2);
  ASSERT_EQ(w.size(), 2u);
  EXPECT_DOUBLE_EQ(w[0].tr1, 0.5);
  EXPECT_DOUBLE_EQ(w[0].ir1, 0.25);
  EXPECT_DOUBLE_EQ(w[1].tr1, 1.0);
  EXPECT_DOUBLE_EQ(w[1].ir1, 0.25);  // caption 1's column: image 1 at 5 + 60 beats image 0 at 10
}

