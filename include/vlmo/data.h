// From examples to model batches: the collate step (transforms, tokenisation, masking) and the
// per-epoch sample order. Each sample draws its randomness from a seed derived from its global
// position, so batches are the same whichever loader thread builds them, and resumption at any
// step reproduces the data exactly.
#pragma once
#include <cstdint>
#include <mutex>
#include <string>
#include <vector>

#include "vlmo/batch.h"
#include "vlmo/image.h"
#include "vlmo/tokenizer.h"

namespace vlmo {

struct Example {
  Image image;       // empty (0x0) for text-only samples
  std::string text;  // empty for image-only samples
};

struct CollateOptions {
  int image_size = 224;
  int max_text_len = 40;
  bool train_transform = false;  // RandomResizedCrop + flip + RandomAugment; else square resize
  bool whole_word_mask = true;   // MLM inputs by whole-word masking, else by token masking
  double mlm_prob = 0.15;        // MLM masking probability (the official mlm_prob)
  bool patch_mask = false;       // stage-1 blockwise patch mask
  int patch_size = 16;
  double patch_mask_ratio = 0.4;
};

// Builds one batch; `seed` is the batch's seed, sample i uses mix_seed(seed, i). With
// `first_sample` >= 0, sample i uses mix_seed(seed, first_sample + i) instead: its random draws
// (augmentation, masking) then depend only on its position in the whole run, however the run is
// split into batches and processes.
Batch collate(const std::vector<Example>& examples, const Tokenizer& tok, const CollateOptions& o, uint64_t seed,
              int64_t first_sample = -1);

uint64_t mix_seed(uint64_t a, uint64_t b);

// Token ids and attention masks of several texts, each [CLS] ... [SEP] padded to max_len: two
// (N, max_len) int64 tensors, as the model's text inputs.
std::pair<at::Tensor, at::Tensor> encode_batch(const Tokenizer& tok, const std::vector<std::string>& texts, int max_len);

// The order of a map-style dataset of n samples: a fresh permutation per epoch from the seed.
// at(g) is the dataset index of the g-th sample drawn overall (g counts across epochs).
class EpochOrder {
 public:
  EpochOrder(size_t n, uint64_t seed, bool shuffle = true);
  size_t at(int64_t g);
  size_t size() const { return n_; }

 private:
  size_t n_;
  uint64_t seed_;
  bool shuffle_;
  std::mutex mu_;
  int64_t epoch_ = -1;
  std::vector<size_t> perm_;
};

}  // namespace vlmo
