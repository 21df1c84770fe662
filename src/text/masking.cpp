#include "vlmo/masking.h"

#include <algorithm>
#include <cmath>

namespace vlmo {

MaskedText apply_mask(const Tokenizer& tok, const std::vector<int64_t>& ids,
                      const std::vector<bool>& selected, std::mt19937_64& rng) {
  std::uniform_real_distribution<double> u(0.0, 1.0);
  std::uniform_int_distribution<int64_t> random_id(0, tok.vocab_size() - 1);
  MaskedText out{ids, std::vector<int64_t>(ids.size(), -100)};
  for (size_t i = 0; i < ids.size(); ++i) {
    if (!selected[i] || tok.is_special(ids[i])) continue;  // specials and padding never predicted
    out.labels[i] = ids[i];
    if (u(rng) < 0.8) out.ids[i] = tok.mask_id();
    else if (u(rng) < 0.5) out.ids[i] = random_id(rng);
  }
  return out;
}

MaskedText whole_word_mask(const Tokenizer& tok, const std::vector<int64_t>& ids, std::mt19937_64& rng,
                           double prob, int max_predictions) {
  std::vector<std::vector<size_t>> words;
  for (size_t i = 0; i < ids.size(); ++i) {
    if (ids[i] == tok.cls_id() || ids[i] == tok.sep_id()) continue;
    const std::string& t = tok.token(ids[i]);
    if (!words.empty() && t.size() > 2 && t.compare(0, 2, "##") == 0) words.back().push_back(i);
    else words.push_back({i});
  }
  std::shuffle(words.begin(), words.end(), rng);
  // Python's round(): halves to even, which std::nearbyint does in the default rounding mode.
  const auto budget = static_cast<size_t>(std::min<double>(
      max_predictions, std::max(1.0, std::nearbyint(static_cast<double>(ids.size()) * prob))));
  std::vector<bool> selected(ids.size(), false);
  size_t chosen = 0;
  for (const auto& word : words) {
    if (chosen >= budget) break;
    if (chosen + word.size() > budget) continue;  // a whole word would overshoot: skip it
    for (size_t i : word) selected[i] = true;
    chosen += word.size();
  }
  return apply_mask(tok, ids, selected, rng);
}

MaskedText token_mask(const Tokenizer& tok, const std::vector<int64_t>& ids, std::mt19937_64& rng,
                      double prob) {
  std::bernoulli_distribution pick(prob);
  std::vector<bool> selected(ids.size());
  for (size_t i = 0; i < ids.size(); ++i) selected[i] = pick(rng);
  return apply_mask(tok, ids, selected, rng);
}

}  // namespace vlmo
