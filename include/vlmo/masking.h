// MLM masking as the official collators do it (reference §2.3): whole-word masking
// (HF DataCollatorForWholeWordMask, transformers 4.8.1) and plain token masking
// (DataCollatorForLanguageModeling), each followed by the 80 % [MASK] / 10 % random / 10 % kept
// rule; and BEiT's blockwise image-patch masking. Reproducible from the caller's random
// generator. Torch-free.
#pragma once
#include <cstdint>
#include <random>
#include <vector>

#include "vlmo/tokenizer.h"

namespace vlmo {

struct MaskedText {
  std::vector<int64_t> ids;     // input ids with masked positions replaced
  std::vector<int64_t> labels;  // original id where a prediction is asked, else -100
};

// Whole words (a piece plus its "##" continuations) are masked together. The budget is
// round(prob * len(ids)) over the *padded* length (at least 1, at most max_predictions); [CLS]
// and [SEP] are never candidates; special tokens and padding chosen as candidates are unmasked
// afterwards, so short captions get fewer than prob of their tokens masked (as the official).
MaskedText whole_word_mask(const Tokenizer& tok, const std::vector<int64_t>& ids, std::mt19937_64& rng, double prob = 0.15,
                           int max_predictions = 512);

// Every non-special position independently with probability `prob`.
MaskedText token_mask(const Tokenizer& tok, const std::vector<int64_t>& ids, std::mt19937_64& rng, double prob = 0.15);

// The 80/10/10 replacement on positions selected by `selected` (exposed for tests).
MaskedText apply_mask(const Tokenizer& tok, const std::vector<int64_t>& ids, const std::vector<bool>& selected,
                      std::mt19937_64& rng);

// BEiT blockwise masking of `num_masked` patches on a grid x grid patch grid (stage-1 masked
// image modelling): rectangles of random area and aspect until the budget is reached.
std::vector<bool> blockwise_mask(int grid, int num_masked, std::mt19937_64& rng);

}  // namespace vlmo
