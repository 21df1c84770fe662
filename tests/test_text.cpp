// src/text/: the BERT tokenizer, whole-word and blockwise masking, the VQA answers' normalisation.
#include <gtest/gtest.h>

#include <cstdio>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <random>

#include "test_util.h"
#include "vlmo/data.h"
#include "vlmo/masking.h"
#include "vlmo/tokenizer.h"
#include "vlmo/vqa_answer.h"

using namespace vlmo;
using vlmo::test::expect_error;

namespace {
using vlmo::test::bert;

std::vector<nlohmann::json> read_jsonl(const std::string& path) {
  std::ifstream in(path);
  std::vector<nlohmann::json> out;
  std::string line;
  while (std::getline(in, line)) out.push_back(nlohmann::json::parse(line));
  return out;
}
}  // namespace

TEST(Tokenizer, VocabularyIsBertBaseUncased) {
  EXPECT_EQ(bert().vocab_size(), 30522);
  EXPECT_EQ(bert().pad_id(), 0);
  EXPECT_EQ(bert().unk_id(), 100);
  EXPECT_EQ(bert().cls_id(), 101);
  EXPECT_EQ(bert().sep_id(), 102);
  EXPECT_EQ(bert().mask_id(), 103);
}

// The CLI reproduces every golden line (ids and tokens) of the reference tokenizer.
TEST(Tokenizer, CliReproducesEveryGoldenLine) {
  const std::string cases = vlmo::test::fixture("tokenizer/cases.jsonl");
  const std::string out = vlmo::test::temp_dir() + "/tok.jsonl";
  const std::string cmd = std::string(VLMO_BINARY) + " tokenize --input " + cases + " --output " + out;
  ASSERT_EQ(std::system(cmd.c_str()), 0) << cmd;
  const auto want = read_jsonl(cases), got = read_jsonl(out);
  ASSERT_EQ(want.size(), 2084u);
  ASSERT_EQ(got.size(), want.size());
  int mismatches = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    if (got[i]["ids"] != want[i]["ids"] || got[i]["tokens"] != want[i]["tokens"]) {
      if (++mismatches <= 5) ADD_FAILURE() << "line " << i + 1 << ": " << want[i]["text"].dump();
    }
  }
  EXPECT_EQ(mismatches, 0);
}

TEST(Tokenizer, HandWorkedCases) {
  const Tokenizer& t = bert();
  EXPECT_EQ(t.tokenize("Hello, WORLD!"), (std::vector<std::string>{"hello", ",", "world", "!"}));
  EXPECT_EQ(t.tokenize("Café naïve"), (std::vector<std::string>{"cafe", "naive"}));
  EXPECT_EQ(t.tokenize("blurry"), (std::vector<std::string>{"blur", "##ry"}));
  EXPECT_EQ(t.tokenize("a[MASK]b [mask]"), (std::vector<std::string>{"a", "[MASK]", "b", "[", "mask", "]"}));
  EXPECT_EQ(t.tokenize(std::string("a\0b\xEF\xBF\xBD"
                                   "c\td",
                                   9)),
            (std::vector<std::string>{"abc", "d"}));
  EXPECT_EQ(t.tokenize("中文"), (std::vector<std::string>{"中", "文"}));
  EXPECT_TRUE(t.tokenize("   ").empty());
  // Words of more than 100 characters are [UNK]; 100 are split into pieces.
  EXPECT_EQ(t.tokenize(std::string(101, 'a')), (std::vector<std::string>{"[UNK]"}));
  EXPECT_NE(t.tokenize(std::string(100, 'a'))[0], "[UNK]");
}

TEST(Tokenizer, TruncatesAndPadsLikeVlmo) {
  const Tokenizer& t = bert();
  const Encoding e = t.encode("a man riding a horse on the beach at sunset", 8, true);
  ASSERT_EQ(e.ids.size(), 8u);
  EXPECT_EQ(e.ids.front(), 101);
  EXPECT_EQ(e.ids.back(), 102);
  EXPECT_EQ(e.mask, std::vector<int64_t>(8, 1));
  const Encoding s = t.encode("a dog", 8, true);
  EXPECT_EQ(s.ids, (std::vector<int64_t>{101, 1037, 3899, 102, 0, 0, 0, 0}));
  EXPECT_EQ(s.mask, (std::vector<int64_t>{1, 1, 1, 1, 0, 0, 0, 0}));
  expect_error([&] { t.encode("x", 1); }, {"max_len 1"});
}

TEST(Tokenizer, InvalidUtf8IsAnErrorNamingTheByte) {
  expect_error([] { bert().tokenize("ok \xC3\x28 bad"); }, {"invalid UTF-8", "byte 3"});
  expect_error([] { bert().tokenize("\xED\xA0\x80"); }, {"invalid UTF-8"});  // surrogate
  expect_error([] { bert().tokenize("\xC0\xAF"); }, {"invalid UTF-8"});      // overlong
  expect_error([] { bert().tokenize("abc\xE2\x82"); }, {"invalid UTF-8"});   // truncated
}

TEST(Tokenizer, RandomInputNeverCrashes) {
  std::mt19937_64 rng(3);
  const Tokenizer& t = bert();
  int errors = 0;
  for (int trial = 0; trial < 3000; ++trial) {
    std::string s;
    const int n = static_cast<int>(rng() % 60);
    if (trial % 2) {
      for (int k = 0; k < n; ++k) s.push_back(static_cast<char>(rng()));
    } else {  // valid UTF-8 from random code points: must never throw
      for (int k = 0; k < n; ++k) {
        uint32_t cp = static_cast<uint32_t>(rng() % 0x30000);
        if (cp >= 0xD800 && cp <= 0xDFFF) cp = 'x';
        if (cp < 0x80) s.push_back(static_cast<char>(cp));
        else if (cp < 0x800) {
          s.push_back(static_cast<char>(0xC0 | (cp >> 6)));
          s.push_back(static_cast<char>(0x80 | (cp & 63)));
        } else if (cp < 0x10000) {
          s.push_back(static_cast<char>(0xE0 | (cp >> 12)));
          s.push_back(static_cast<char>(0x80 | ((cp >> 6) & 63)));
          s.push_back(static_cast<char>(0x80 | (cp & 63)));
        } else {
          s.push_back(static_cast<char>(0xF0 | (cp >> 18)));
          s.push_back(static_cast<char>(0x80 | ((cp >> 12) & 63)));
          s.push_back(static_cast<char>(0x80 | ((cp >> 6) & 63)));
          s.push_back(static_cast<char>(0x80 | (cp & 63)));
        }
      }
    }
    try {
      const Encoding e = t.encode(s, 40, true);
      ASSERT_EQ(e.ids.size(), 40u);
      for (int64_t id : e.ids) ASSERT_TRUE(id >= 0 && id < t.vocab_size());
    } catch (const vlmo::Error&) {
      ASSERT_EQ(trial % 2, 1) << "valid UTF-8 must not fail";
      ++errors;
    }
  }
  EXPECT_GT(errors, 0);
}

namespace {
// Word index of every position (a piece and its ## continuations share one), -1 for specials.
std::vector<int> word_of(const Tokenizer& t, const std::vector<int64_t>& ids) {
  std::vector<int> w(ids.size(), -1);
  int cur = -1;
  for (size_t i = 0; i < ids.size(); ++i) {
    if (ids[i] == t.cls_id() || ids[i] == t.sep_id()) continue;
    const std::string& s = t.token(ids[i]);
    if (!(s.size() > 2 && s.compare(0, 2, "##") == 0) || cur < 0) ++cur;
    w[i] = cur;
  }
  return w;
}
}  // namespace

TEST(Masking, WholeWordMaskingInvariantsAndRates) {
  const Tokenizer& t = bert();
  const std::vector<std::string> captions = {
      "an unbelievably photogenic skateboarder performing tricks",
      "a dog",
      "two giraffes standing near a eucalyptus tree in the zoo enclosure at dusk with tourists",
  };
  std::mt19937_64 rng(11);
  std::map<std::string, int> kinds;
  int masked_total = 0, samples = 0;
  for (int trial = 0; trial < 3000; ++trial) {
    const Encoding e = t.encode(captions[trial % 3], 40, true);
    const MaskedText m = whole_word_mask(t, e.ids, rng);
    const auto words = word_of(t, e.ids);
    std::map<int, std::pair<int, int>> per_word;  // word -> (pieces, labelled pieces)
    int masked = 0;
    for (size_t i = 0; i < e.ids.size(); ++i) {
      if (t.is_special(e.ids[i])) {
        ASSERT_EQ(m.labels[i], -100);
        ASSERT_EQ(m.ids[i], e.ids[i]);  // specials and padding untouched
        continue;
      }
      auto& pw = per_word[words[i]];
      ++pw.first;
      if (m.labels[i] == -100) {
        ASSERT_EQ(m.ids[i], e.ids[i]);  // nothing changes where nothing is predicted
        continue;
      }
      ASSERT_EQ(m.labels[i], e.ids[i]);
      ++pw.second;
      ++masked;
      kinds[m.ids[i] == t.mask_id() ? "mask" : m.ids[i] == e.ids[i] ? "kept" : "random"]++;
    }
    for (const auto& [w, c] : per_word) ASSERT_TRUE(c.second == 0 || c.second == c.first) << "word split";
    ASSERT_LE(masked, 6);  // budget round(0.15 * 40) = 6 over the padded length
    masked_total += masked;
    ++samples;
  }
  const double n = masked_total;
  EXPECT_NEAR(kinds["mask"] / n, 0.8, 0.02);
  EXPECT_NEAR(kinds["random"] / n, 0.1, 0.015);  // a random id may equal the original (rare)
  EXPECT_NEAR(kinds["kept"] / n, 0.1, 0.015);
  EXPECT_GT(samples, 0);
  // Same seed, same masking.
  std::mt19937_64 a(5), b(5);
  const Encoding e = t.encode(captions[0], 40, true);
  EXPECT_EQ(whole_word_mask(t, e.ids, a).ids, whole_word_mask(t, e.ids, b).ids);
}

TEST(Masking, PaddingDilutesTheBudgetAsTheOfficial) {
  const Tokenizer& t = bert();
  std::mt19937_64 rng(4);
  // "a dog" padded to 40: 38 single-token candidates (2 words + 36 [PAD]), 6 drawn uniformly,
  // so on average 6 * 2 / 38 = 0.316 real tokens are masked; unpadded, exactly 6 always are.
  const Encoding short_caption = t.encode("a dog", 40, true);
  const Encoding full = t.encode("a b c d e f g h i j k l m n o p q r s t u v w x y z a b c d e f g h i j k l m n", 40, true);
  double sum = 0;
  const int trials = 100000;
  for (int k = 0; k < trials; ++k) {
    for (int64_t l : whole_word_mask(t, short_caption.ids, rng).labels) sum += l != -100;
    int masked = 0;
    for (int64_t l : whole_word_mask(t, full.ids, rng).labels) masked += l != -100;
    ASSERT_EQ(masked, 6);
  }
  EXPECT_NEAR(sum / trials, 6.0 * 2 / 38, 0.012);
}

TEST(Masking, BudgetRoundsHalfToEvenOverThePaddedLength) {
  const Tokenizer& t = bert();
  std::mt19937_64 rng(2);
  // 30 positions: round(4.5) = 4 (Python rounds halves to even); 10 single-piece words fit.
  const Encoding e = t.encode("a b c d e f g h i j k l m n o p q r s t u v w x y z a b", 30, true);
  for (int trial = 0; trial < 200; ++trial) {
    const MaskedText m = whole_word_mask(t, e.ids, rng);
    int masked = 0;
    for (int64_t l : m.labels) masked += l != -100;
    ASSERT_EQ(masked, 4);
  }
}

TEST(Masking, CollateMasksAtItsMlmProbability) {
  // 38 one-piece words fill the 40 positions: the whole-word budget is round(prob x 40) of them,
  // 6 at the official 0.15 and 20 at 0.5, in every sample of the batch.
  const Tokenizer& t = bert();
  const std::string caption = "a b c d e f g h i j k l m n o p q r s t u v w x y z a b c d e f g h i j k l";
  CollateOptions co;
  co.max_text_len = 40;
  for (const auto& [prob, expected] : std::vector<std::pair<double, int>>{{0.15, 6}, {0.5, 20}}) {
    co.mlm_prob = prob;
    const Batch b = collate({{Image{}, caption}, {Image{}, caption}, {Image{}, caption}}, t, co, 3);
    const at::Tensor per_row = b.text_labels_mlm.ne(-100).sum(1);
    for (int64_t i = 0; i < per_row.size(0); ++i) EXPECT_EQ(per_row[i].item<int64_t>(), expected) << "prob " << prob;
  }
}

TEST(Masking, TokenMaskingRate) {
  const Tokenizer& t = bert();
  std::mt19937_64 rng(9);
  const Encoding e = t.encode("a man riding a horse on the beach at sunset with his dog", 40, true);
  int real = 0;
  for (int64_t id : e.ids) real += !t.is_special(id);
  int masked = 0, trials = 4000;
  for (int k = 0; k < trials; ++k) {
    const MaskedText m = token_mask(t, e.ids, rng);
    for (size_t i = 0; i < m.labels.size(); ++i) {
      if (t.is_special(e.ids[i])) ASSERT_EQ(m.labels[i], -100);
      masked += m.labels[i] != -100;
    }
  }
  EXPECT_NEAR(masked / static_cast<double>(real * trials), 0.15, 0.005);
}

TEST(Data, BlockwiseMaskHitsItsTargetAndIsReproducible) {
  for (int grid : {4, 14}) {
    const int target = static_cast<int>(0.4 * grid * grid + 0.5);
    std::mt19937_64 r1(1), r2(1);
    for (int k = 0; k < 50; ++k) {
      const auto m = blockwise_mask(grid, target, r1);
      EXPECT_EQ(m, blockwise_mask(grid, target, r2));
      int n = 0;
      for (bool b : m) n += b;
      EXPECT_EQ(n, target);
    }
  }
}

// ---- VQA answers: the official evaluation's normalisation and soft scores ----

TEST(VqaEval, NormalisationOfTheOfficialEvaluation) {
  EXPECT_EQ(normalize_vqa_answer("Two"), "2");
  EXPECT_EQ(normalize_vqa_answer("the dog"), "dog");
  EXPECT_EQ(normalize_vqa_answer("A Red Car"), "red car");
  EXPECT_EQ(normalize_vqa_answer("dont"), "don't");
  EXPECT_EQ(normalize_vqa_answer("yes."), "yes");
  EXPECT_EQ(normalize_vqa_answer("2.5"), "2.5");
  EXPECT_EQ(normalize_vqa_answer("1,000"), "1000");                 // thousands comma: punctuation removed
  EXPECT_EQ(normalize_vqa_answer("black/white"), "black white");    // no space around: replaced
  EXPECT_EQ(normalize_vqa_answer("black / white"), "black white");  // touches a space: removed
  EXPECT_EQ(normalize_vqa_answer("  none\t"), "0");
  EXPECT_EQ(normalize_vqa_answer("what's up?"), "what's up");
}

TEST(VqaEval, SoftScores) {
  EXPECT_DOUBLE_EQ(vqa_soft_score(0), 0.0);
  EXPECT_DOUBLE_EQ(vqa_soft_score(1), 0.3);
  EXPECT_DOUBLE_EQ(vqa_soft_score(2), 0.6);
  EXPECT_DOUBLE_EQ(vqa_soft_score(3), 0.9);
  EXPECT_DOUBLE_EQ(vqa_soft_score(4), 1.0);
  EXPECT_DOUBLE_EQ(vqa_soft_score(10), 1.0);
}
