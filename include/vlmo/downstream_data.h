// Downstream data in the formats people have: VQAv2 (questions + annotations JSON, COCO image
// folders) with the official answer vocabulary and soft scores, NLVR2 JSON lines, and the EvalAI
// VQA submission file; and the batch builders of the fine-tuning tasks. (Karpathy retrieval
// splits: vlmo/sources.h.)
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "vlmo/batch.h"
#include "vlmo/data.h"
#include "vlmo/image.h"
#include "vlmo/sources.h"

namespace vlmo {

struct VqaQuestion {
  int64_t question_id = 0, image_id = 0;
  std::string question;
  std::string multiple_choice_answer;  // empty without annotations (test splits)
  std::vector<std::string> answers;    // the ten raw human answers
  std::string image;                   // image file (or reference for an ImageLoader); may be empty
};

// v2_OpenEnded_mscoco_*_questions.json (+ v2_mscoco_*_annotations.json, empty path for test).
std::vector<VqaQuestion> read_vqav2(const std::string& questions_json, const std::string& annotations_json);
// v2_mscoco_*_annotations.json alone: question_id, image_id, multiple_choice_answer, answers.
std::vector<VqaQuestion> read_vqa_annotations(const std::string& annotations_json);
// COCO image path of a question: folder/COCO_<split>_<12-digit id>.jpg (split e.g. "train2014").
std::string coco_image_path(const std::string& folder, const std::string& split, int64_t image_id);
// Sets every question's `image` to its COCO image path.
void attach_coco_images(std::vector<VqaQuestion>& questions, const std::string& folder, const std::string& split);
// The official split of VQAv2 val (reference §4): rest_val = the questions of the last
// `rest_images` distinct images (in order of first appearance), trainable_val = the others.
struct VqaValSplit {
  std::vector<VqaQuestion> trainable_val, rest_val;
};
VqaValSplit split_vqa_val(const std::vector<VqaQuestion>& val, int rest_images = 1000);

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
// answer -> its label (its position in the list).
std::unordered_map<std::string, int64_t> answer_labels(const std::vector<std::string>& answers);

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

// Where batch builders get images: a file path (or another reference) -> decoded image.
using ImageLoader = std::function<Image(const std::string& ref)>;
ImageLoader file_image_loader(const DecodeOptions& decode = {});

// A VQA training example: image, question and its soft targets over the answer list.
struct VqaExample {
  std::string image, question;
  SoftTargets targets;
};
// Questions with soft targets against `answers` (label order); questions none of whose human
// answers is in the list are dropped, as the official does.
std::vector<VqaExample> vqa_training_examples(const std::vector<VqaQuestion>& questions, const std::vector<std::string>& answers);

// The official VQA fine-tuning data (reference §4, write_vqa): val's questions none of whose human
// answers is in the answer list are dropped first (and with them images left with no question);
// then rest_val = the last `rest_images` remaining images (split_vqa_val), and the model trains on
// train + trainable_val (vqa_training_examples: likewise without such questions). The answer list
// is `answers` when given, else built from train + all of val (build_answer_vocab, `min_count`).
struct VqaFinetuneData {
  std::vector<VqaExample> train;
  std::vector<VqaQuestion> rest_val;
  std::vector<std::string> answers;
  int64_t val_questions_dropped = 0, val_images_dropped = 0;  // val's, for want of an answer in the list
};
VqaFinetuneData vqa_finetune_data(std::vector<VqaQuestion> train, const std::vector<VqaQuestion>& val,
                                  std::vector<std::string> answers = {}, int min_count = 9, int rest_images = 1000);

// An image-text pair (retrieval fine-tuning, pre-training on Karpathy splits).
struct ImageText {
  std::string image, text;
};
// Every (image, caption) pair of the images whose split is in `splits`.
std::vector<ImageText> karpathy_pairs(const std::vector<KarpathyImage>& images,
                                      const std::vector<std::string>& splits = {"train", "restval"});

// Batch makers over a fixed example list in a fresh order per epoch (seed), each batch a pure
// function of its index (the trainer's contract). Images go through `co` (train transform or
// square resize), text is padded to co.max_text_len.
// VQA: text_ids, text_masks, image, vqa_targets (B, num_labels).
BatchFn vqa_batches(std::shared_ptr<const std::vector<VqaExample>> examples, int num_labels, std::shared_ptr<const Tokenizer> tok,
                    const CollateOptions& co, int64_t batch, uint64_t seed, ImageLoader load = file_image_loader());
// NLVR2: text_ids, text_masks, image_0, image_1, nlvr2_labels.
BatchFn nlvr2_batches(std::shared_ptr<const std::vector<Nlvr2Example>> examples, std::shared_ptr<const Tokenizer> tok,
                      const CollateOptions& co, int64_t batch, uint64_t seed, ImageLoader load = file_image_loader());
// Image-text pairs: image, text_ids, text_masks and the MLM fields.
BatchFn pair_batches(std::shared_ptr<const std::vector<ImageText>> pairs, std::shared_ptr<const Tokenizer> tok,
                     const CollateOptions& co, int64_t batch, uint64_t seed, ImageLoader load = file_image_loader());

}  // namespace vlmo
