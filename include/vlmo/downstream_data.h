// Downstream data in the formats people have: VQAv2 (questions + annotations JSON, COCO image
// folders) with the official answer vocabulary and soft scores, NLVR2 JSON lines, and the EvalAI
// VQA submission file. (Karpathy retrieval splits: vlmo/sources.h.)
#pragma once
#include <cstdint>
#include <string>
#include <unordered_map>
#include <vector>

namespace vlmo {

struct VqaQuestion {
  int64_t question_id = 0, image_id = 0;
  std::string question;
  std::string multiple_choice_answer;  // empty without annotations (test splits)
  std::vector<std::string> answers;    // the ten raw human answers
};

// v2_OpenEnded_mscoco_*_questions.json (+ v2_mscoco_*_annotations.json, empty path for test).
std::vector<VqaQuestion> read_vqav2(const std::string& questions_json, const std::string& annotations_json);
// COCO image path of a question: folder/COCO_<split>_<12-digit id>.jpg (split e.g. "train2014").
std::string coco_image_path(const std::string& folder, const std::string& split, int64_t image_id);

// The official vocabulary: normalised multiple_choice_answer counted over the given questions
// (train + val), answers with count >= min_count, in order of first appearance (3129 on VQAv2).
std::vector<std::string> build_answer_vocab(const std::vector<VqaQuestion>& questions, int min_count = 9);

// Soft targets of one question: each distinct raw answer in the vocabulary with its score
// 0.3 / 0.6 / 0.9 / 1 for 1 / 2 / 3 / >= 4 humans. Empty when no answer is in the vocabulary
// (such questions are dropped from training, as the official does).
struct SoftTargets {
  std::vector<int64_t> labels;
  std::vector<double> scores;
};
SoftTargets vqa_soft_targets(const std::vector<std::string>& raw_answers,
                             const std::unordered_map<std::string, int64_t>& answer_to_label);

// EvalAI submission: a JSON list of {"question_id", "answer"}.
void write_vqa_submission(const std::string& path, const std::vector<std::pair<int64_t, std::string>>& answers);

struct Nlvr2Example {
  std::string identifier, sentence, image0, image1;
  bool label = false;
};
// train.json / dev.json / test1.json: one JSON object per line with identifier, sentence, label
// ("True"/"False") and, for train, the image sub-directory; images are
// <image_root>/<split>[/<directory>]/<identifier without the sentence index>-img{0,1}.png.
std::vector<Nlvr2Example> read_nlvr2(const std::string& jsonl, const std::string& image_root, const std::string& split);

}  // namespace vlmo
