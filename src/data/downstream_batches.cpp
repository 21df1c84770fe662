// Batch makers of the fine-tuning tasks (VQAv2, NLVR2, image-text pairs) over fixed example lists.
#include <ATen/ATen.h>

#include <unordered_set>

#include "usable.h"
#include "vlmo/downstream_data.h"
#include "vlmo/error.h"

namespace vlmo {

ImageLoader file_image_loader(const DecodeOptions& decode) {
  return [decode](const std::string& path) { return read_image(path, decode); };
}

std::vector<VqaExample> vqa_training_examples(const std::vector<VqaQuestion>& questions,
                                              const std::vector<std::string>& answers) {
  const auto label = answer_labels(answers);
  std::vector<VqaExample> out;
  for (const auto& q : questions) {
    SoftTargets t = vqa_soft_targets(q.answers, label);
    if (!t.labels.empty()) out.push_back({q.image, q.question, std::move(t)});
  }
  return out;
}

VqaFinetuneData vqa_finetune_data(std::vector<VqaQuestion> train, const std::vector<VqaQuestion>& val,
                                  std::vector<std::string> answers, int min_count, int rest_images) {
  VqaFinetuneData out;
  if (answers.empty()) {
    std::vector<VqaQuestion> all = train;
    all.insert(all.end(), val.begin(), val.end());
    answers = build_answer_vocab(all, min_count);
    if (answers.empty()) throw Error(cat("no answer occurs at least ", min_count, " times: the answer list is empty"));
  }
  const auto label = answer_labels(answers);
  std::vector<VqaQuestion> answerable;
  std::unordered_set<int64_t> images, kept_images;
  for (const auto& q : val) {
    images.insert(q.image_id);
    if (vqa_soft_targets(q.answers, label).labels.empty()) continue;
    answerable.push_back(q);
    kept_images.insert(q.image_id);
  }
  out.val_questions_dropped = static_cast<int64_t>(val.size() - answerable.size());
  out.val_images_dropped = static_cast<int64_t>(images.size() - kept_images.size());
  VqaValSplit split = split_vqa_val(answerable, rest_images);
  train.insert(train.end(), split.trainable_val.begin(), split.trainable_val.end());
  out.train = vqa_training_examples(train, answers);
  out.rest_val = std::move(split.rest_val);
  out.answers = std::move(answers);
  return out;
}

std::vector<ImageText> karpathy_pairs(const std::vector<KarpathyImage>& images, const std::vector<std::string>& splits) {
  std::vector<ImageText> out;
  for (const auto& k : images)
    if (std::find(splits.begin(), splits.end(), k.split) != splits.end())
      for (const auto& c : k.captions) out.push_back({k.path, c});
  return out;
}

namespace {
void check(size_t n, int64_t batch, const char* what) {
  if (n == 0) throw Error(cat("no ", what, " examples to train on"));
  if (batch < 1) throw Error(cat("batch size must be at least 1, got ", batch));
}
}  // namespace

BatchFn vqa_batches(std::shared_ptr<const std::vector<VqaExample>> examples, int num_labels, std::shared_ptr<const Tokenizer> tok,
                    const CollateOptions& co, int64_t batch, uint64_t seed, ImageLoader load) {
  check(examples->size(), batch, "VQA");
  auto order = std::make_shared<EpochOrder>(examples->size(), seed);
  return [=](int64_t index) {
    std::vector<Example> ex;
    at::Tensor targets = at::zeros({batch, static_cast<int64_t>(num_labels)});
    auto acc = targets.accessor<float, 2>();
    detail::SkipNotes notes;
    for (int64_t j = 0; j < batch; ++j) {
      const VqaExample* picked = nullptr;
      detail::fill_position(
          *order, index * batch + j,
          [&](size_t i) {
            Image img;
            auto bad = detail::try_image(load, (*examples)[i].image, img);
            if (!bad) ex.push_back({std::move(img), (*examples)[i].question}), picked = &(*examples)[i];
            return bad;
          },
          notes);
      const VqaExample& e = *picked;
      for (size_t k = 0; k < e.targets.labels.size(); ++k) {
        if (e.targets.labels[k] < 0 || e.targets.labels[k] >= num_labels)
          throw Error(cat("VQA label ", e.targets.labels[k], " is outside the classifier's ", num_labels, " labels"));
        acc[j][e.targets.labels[k]] = static_cast<float>(e.targets.scores[k]);
      }
    }
    Batch b = collate(ex, *tok, co, mix_seed(seed, 0x717661), index * batch);  // draws keyed by sample
    b.vqa_targets = targets;
    notes.attach(b);
    return b;
  };
}

BatchFn nlvr2_batches(std::shared_ptr<const std::vector<Nlvr2Example>> examples, std::shared_ptr<const Tokenizer> tok,
                      const CollateOptions& co, int64_t batch, uint64_t seed, ImageLoader load) {
  check(examples->size(), batch, "NLVR2");
  auto order = std::make_shared<EpochOrder>(examples->size(), seed);
  return [=](int64_t index) {
    std::vector<Example> left, right;
    std::vector<int64_t> labels;
    detail::SkipNotes notes;
    for (int64_t j = 0; j < batch; ++j)
      detail::fill_position(
          *order, index * batch + j,
          [&](size_t i) {
            const Nlvr2Example& e = (*examples)[i];
            Image a, b;
            auto bad = detail::try_image(load, e.image0, a);
            if (!bad) bad = detail::try_image(load, e.image1, b);
            if (bad) return bad;
            left.push_back({std::move(a), e.sentence});
            right.push_back({std::move(b), e.sentence});
            labels.push_back(e.label ? 1 : 0);
            return bad;
          },
          notes);
    Batch b = collate(left, *tok, co, mix_seed(seed, 0x6e6c30), index * batch);  // draws keyed by sample
    b.image_0 = b.image;
    b.image = at::Tensor();
    b.image_1 = collate(right, *tok, co, mix_seed(seed, 0x6e6c31), index * batch).image;
    b.nlvr2_labels = at::tensor(at::ArrayRef<int64_t>(labels), at::kLong);
    notes.attach(b);
    return b;
  };
}

BatchFn pair_batches(std::shared_ptr<const std::vector<ImageText>> pairs, std::shared_ptr<const Tokenizer> tok,
                     const CollateOptions& co, int64_t batch, uint64_t seed, ImageLoader load) {
  check(pairs->size(), batch, "image-text");
  auto order = std::make_shared<EpochOrder>(pairs->size(), seed);
  return [=](int64_t index) {
    std::vector<Example> ex;
    detail::SkipNotes notes;
    for (int64_t j = 0; j < batch; ++j)
      detail::fill_position(
          *order, index * batch + j,
          [&](size_t i) {
            const ImageText& p = (*pairs)[i];
            Image img;
            auto bad = detail::try_image(load, p.image, img);
            if (!bad) ex.push_back({std::move(img), p.text});
            return bad;
          },
          notes);
    Batch b = collate(ex, *tok, co, mix_seed(seed, 0x697274), index * batch);  // draws keyed by sample
    notes.attach(b);
    return b;
  };
}

}  // namespace vlmo
