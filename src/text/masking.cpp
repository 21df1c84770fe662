#include "vlmo/masking.h"

#include <algorithm>
#include <cmath>

namespace vlmo {

MaskedText apply_mask(const Tokenizer& tok, const std::vector<int64_t>& ids, const std::vector<bool>& selected,
                      std::mt19937_64& rng) {
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

MaskedText whole_word_mask(const Tokenizer& tok, const std::vector<int64_t>& ids, std::mt19937_64& rng, double prob,
                           int max_predictions) {
  std::vector<std::vector<size_t>> words;
  for (size_t i = 0; i < ids.size(); ++i) {
    if (ids[i] == tok.cls_id() || ids[i] == tok.sep_id()) continue;
    const std::string& t = tok.token(ids[i]);
    if (!words.empty() && t.size() > 2 && t.compare(0, 2, "##") == 0) words.back().push_back(i);
    else words.push_back({i});
  }
  std::shuffle(words.begin(), words.end(), rng);
  // Python's round(): halves to even, which std::nearbyint does in the default rounding mode.
  const auto budget = static_cast<size_t>(
      std::min<double>(max_predictions, std::max(1.0, std::nearbyint(static_cast<double>(ids.size()) * prob))));
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

MaskedText token_mask(const Tokenizer& tok, const std::vector<int64_t>& ids, std::mt19937_64& rng, double prob) {
  std::bernoulli_distribution pick(prob);
  std::vector<bool> selected(ids.size());
  for (size_t i = 0; i < ids.size(); ++i) selected[i] = pick(rng);
  return apply_mask(tok, ids, selected, rng);
}

std::vector<bool> blockwise_mask(int grid, int num_masked, std::mt19937_64& rng) {
  const int n = grid * grid;
  num_masked = std::min(num_masked, n);
  std::vector<bool> mask(n, false);
  const double min_patches = std::max(1.0, n / 12.0);  // BEiT: 16 of 196
  std::uniform_real_distribution<double> log_aspect(std::log(0.3), std::log(1 / 0.3));
  int count = 0;
  while (count < num_masked) {
    const int budget = num_masked - count;
    int delta = 0;
    for (int attempt = 0; attempt < 10 && delta == 0; ++attempt) {
      const double area = std::uniform_real_distribution<double>(std::min(min_patches, double(budget)), budget)(rng);
      const double aspect = std::exp(log_aspect(rng));
      const int h = static_cast<int>(std::lround(std::sqrt(area * aspect)));
      const int w = static_cast<int>(std::lround(std::sqrt(area / aspect)));
      if (h < 1 || w < 1 || h > grid || w > grid) continue;
      const int top = std::uniform_int_distribution<int>(0, grid - h)(rng);
      const int left = std::uniform_int_distribution<int>(0, grid - w)(rng);
      int already = 0;
      for (int y = top; y < top + h; ++y)
        for (int x = left; x < left + w; ++x) already += mask[y * grid + x];
      const int fresh = h * w - already;
      if (fresh <= 0 || fresh > budget) continue;
      for (int y = top; y < top + h; ++y)
        for (int x = left; x < left + w; ++x)
          if (!mask[y * grid + x]) mask[y * grid + x] = true, ++delta;
    }
    if (delta == 0) break;
    count += delta;
  }
  return mask;
}

}  // namespace vlmo
