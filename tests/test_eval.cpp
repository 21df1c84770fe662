#include <gtest/gtest.h>

#include "vlmo/vqa_eval.h"

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
