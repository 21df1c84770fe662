#include <ATen/ATen.h>

#include <algorithm>
#include <numeric>
#include <random>

#include "vlmo/data.h"
#include "vlmo/error.h"
#include "vlmo/image_tensor.h"
#include "vlmo/masking.h"

namespace vlmo {

uint64_t mix_seed(uint64_t a, uint64_t b) {  // splitmix64 of a combined value
  uint64_t z = a * 0x9E3779B97F4A7C15ull + b + 0x632BE59BD9B4E019ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

Batch to_device(const Batch& b, c10::Device device) {
  auto move = [&](const at::Tensor& t) -> at::Tensor {
    if (!t.defined() || t.device() == device) return t;
    if (device.is_cuda() && t.is_cpu()) return t.pin_memory().to(device, /*non_blocking=*/true);
    return t.to(device);
  };
  Batch out = b;
  for (at::Tensor* t : {&out.text_ids, &out.text_masks, &out.text_ids_mlm, &out.text_labels_mlm, &out.image, &out.image_0,
                        &out.image_1, &out.vqa_targets, &out.nlvr2_labels, &out.patch_mask})
    *t = move(*t);
  return out;
}

std::pair<at::Tensor, at::Tensor> encode_batch(const Tokenizer& tok, const std::vector<std::string>& texts, int max_len) {
  std::vector<int64_t> ids, masks;
  for (const auto& t : texts) {
    const Encoding e = tok.encode(t, max_len, true);
    ids.insert(ids.end(), e.ids.begin(), e.ids.end());
    masks.insert(masks.end(), e.mask.begin(), e.mask.end());
  }
  const int64_t n = static_cast<int64_t>(texts.size());
  return {at::tensor(at::ArrayRef<int64_t>(ids), at::kLong).reshape({n, max_len}),
          at::tensor(at::ArrayRef<int64_t>(masks), at::kLong).reshape({n, max_len})};
}

Batch collate(const std::vector<Example>& ex, const Tokenizer& tok, const CollateOptions& o, uint64_t seed,
              int64_t first_sample) {
  const int64_t B = static_cast<int64_t>(ex.size());
  if (B == 0) throw Error("collate: empty batch");
  // A batch has images (texts) when any sample has one, so an empty caption first does not drop
  // the batch's text; a text batch tokenises an empty caption as [CLS] [SEP].
  const bool images = ex[0].image.width > 0;
  const bool texts = std::any_of(ex.begin(), ex.end(), [](const Example& e) { return !e.text.empty(); });
  Batch b;
  std::vector<at::Tensor> pix;
  std::vector<int64_t> ids, masks, mlm_ids, mlm_labels;
  std::vector<uint8_t> patch_masks;
  const int grid = o.image_size / o.patch_size;
  for (int64_t i = 0; i < B; ++i) {
    std::mt19937_64 rng(mix_seed(seed, static_cast<uint64_t>(first_sample >= 0 ? first_sample + i : i)));
    if (images) {
      if (ex[i].image.width == 0) throw Error("collate: a batch mixes samples with and without images");
      pix.push_back(o.train_transform ? train_transform(ex[i].image, o.image_size, rng)
                                      : eval_transform(ex[i].image, o.image_size));
      if (o.patch_mask) {
        const auto m = blockwise_mask(grid, static_cast<int>(std::lround(o.patch_mask_ratio * grid * grid)), rng);
        patch_masks.insert(patch_masks.end(), m.begin(), m.end());
      }
    }
    if (texts) {
      const Encoding e = tok.encode(ex[i].text, o.max_text_len, true);
      ids.insert(ids.end(), e.ids.begin(), e.ids.end());
      masks.insert(masks.end(), e.mask.begin(), e.mask.end());
      const MaskedText m =
          o.whole_word_mask ? whole_word_mask(tok, e.ids, rng, o.mlm_prob) : token_mask(tok, e.ids, rng, o.mlm_prob);
      mlm_ids.insert(mlm_ids.end(), m.ids.begin(), m.ids.end());
      mlm_labels.insert(mlm_labels.end(), m.labels.begin(), m.labels.end());
    }
  }
  auto long_tensor = [&](const std::vector<int64_t>& v) {
    return at::tensor(at::ArrayRef<int64_t>(v), at::kLong).reshape({B, o.max_text_len});
  };
  if (images) b.image = at::stack(pix);
  if (o.patch_mask && images)
    b.patch_mask = at::tensor(at::ArrayRef<uint8_t>(patch_masks), at::kByte).reshape({B, grid * grid}).to(at::kBool);
  if (texts) {
    b.text_ids = long_tensor(ids);
    b.text_masks = long_tensor(masks);
    b.text_ids_mlm = long_tensor(mlm_ids);
    b.text_labels_mlm = long_tensor(mlm_labels);
  }
  return b;
}

EpochOrder::EpochOrder(size_t n, uint64_t seed, bool shuffle) : n_(n), seed_(seed), shuffle_(shuffle) {
  if (n == 0) throw Error("dataset is empty");
}

size_t EpochOrder::at(int64_t g) {
  const int64_t epoch = g / static_cast<int64_t>(n_);
  const size_t pos = static_cast<size_t>(g % static_cast<int64_t>(n_));
  if (!shuffle_) return pos;
  std::lock_guard<std::mutex> lock(mu_);
  if (epoch != epoch_) {
    perm_.resize(n_);
    std::iota(perm_.begin(), perm_.end(), size_t{0});
    std::mt19937_64 rng(mix_seed(seed_, static_cast<uint64_t>(epoch)));
    std::shuffle(perm_.begin(), perm_.end(), rng);
    epoch_ = epoch;
  }
  return perm_[pos];
}

}  // namespace vlmo
