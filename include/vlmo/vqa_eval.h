// Downstream metrics with the official semantics: the VQA evaluation (answers normalised as
// vlmo/vqa_answer.h says; accuracy min(1, #matching humans / 3)
// averaged over the ten leave-one-out subsets), NLVR2 accuracy and consistency.
#pragma once
#include <string>
#include <vector>

#include "vlmo/vqa_answer.h"

namespace vlmo {

// Accuracy of one predicted answer against the human answers (normally 10), as the official
// evaluation computes it: answers are normalised only when the humans disagree.
double vqa_accuracy(const std::string& predicted, const std::vector<std::string>& human_answers);

struct Nlvr2Score {
  double accuracy = 0;     // fraction correct
  double consistency = 0;  // fraction of sentences whose every image pair is correct
};
// identifiers as in NLVR2 ("dev-850-0-1": split-set-pair-sentence); a sentence is grouped over
// its pairs by split, set and sentence index.
Nlvr2Score nlvr2_score(const std::vector<std::string>& identifiers, const std::vector<bool>& correct);

}  // namespace vlmo
