#include "vlmo/tokenizer.h"

#include <utf8proc.h>

#include <cstdlib>
#include <fstream>
#include <sstream>

#include "vlmo/error.h"
#include "vlmo/files.h"

#ifndef VLMO_DATA_DIR
#define VLMO_DATA_DIR "data"
#endif

namespace vlmo {
namespace {

constexpr int kMaxWordChars = 100;  // longer words become [UNK]
const char* const kSpecials[] = {"[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"};

// Strict UTF-8 decoding: returns the code point and advances `i`, or -1 on invalid input.
int32_t decode(std::string_view s, size_t& i) {
  const auto b0 = static_cast<unsigned char>(s[i]);
  if (b0 < 0x80) {
    ++i;
    return b0;
  }
  int len;
  int32_t cp;
  if ((b0 & 0xE0) == 0xC0) {
    len = 2;
    cp = b0 & 0x1F;
  } else if ((b0 & 0xF0) == 0xE0) {
    len = 3;
    cp = b0 & 0x0F;
  } else if ((b0 & 0xF8) == 0xF0) {
    len = 4;
    cp = b0 & 0x07;
  } else return -1;
  if (i + len > s.size()) return -1;
  for (int k = 1; k < len; ++k) {
    const auto b = static_cast<unsigned char>(s[i + k]);
    if ((b & 0xC0) != 0x80) return -1;
    cp = (cp << 6) | (b & 0x3F);
  }
  static const int32_t kMin[5] = {0, 0, 0x80, 0x800, 0x10000};
  if (cp < kMin[len] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return -1;
  i += len;
  return cp;
}

void append_utf8(std::string& out, int32_t cp) {
  uint8_t buf[4];
  const auto n = utf8proc_encode_char(cp, buf);
  out.append(reinterpret_cast<const char*>(buf), static_cast<size_t>(n));
}

utf8proc_category_t category(int32_t cp) { return utf8proc_category(cp); }

bool is_control(int32_t cp) {  // HF _is_control: category C*, except \t \n \r
  if (cp == '\t' || cp == '\n' || cp == '\r') return false;
  if (cp < 0x80) return cp < 0x20 || cp == 0x7F;
  const auto c = category(cp);
  return c == UTF8PROC_CATEGORY_CC || c == UTF8PROC_CATEGORY_CF || c == UTF8PROC_CATEGORY_CS || c == UTF8PROC_CATEGORY_CO ||
         c == UTF8PROC_CATEGORY_CN;
}

// HF _is_whitespace (space, \t \n \r, Zs) plus what Python's str.split() also splits on and
// cleaning keeps: the line and paragraph separators (Zl, Zp).
bool is_space(int32_t cp) {
  if (cp == ' ' || cp == '\t' || cp == '\n' || cp == '\r') return true;
  if (cp < 0x80) return false;
  const auto c = category(cp);
  return c == UTF8PROC_CATEGORY_ZS || c == UTF8PROC_CATEGORY_ZL || c == UTF8PROC_CATEGORY_ZP;
}

bool is_cjk(int32_t cp) {
  return (cp >= 0x4E00 && cp <= 0x9FFF) || (cp >= 0x3400 && cp <= 0x4DBF) || (cp >= 0x20000 && cp <= 0x2A6DF) ||
         (cp >= 0x2A700 && cp <= 0x2B73F) || (cp >= 0x2B740 && cp <= 0x2B81F) || (cp >= 0x2B820 && cp <= 0x2CEAF) ||
         (cp >= 0xF900 && cp <= 0xFAFF) || (cp >= 0x2F800 && cp <= 0x2FA1F);
}

bool is_punct(int32_t cp) {  // HF _is_punctuation: ASCII non-alphanumeric printables, or P*
  if ((cp >= 33 && cp <= 47) || (cp >= 58 && cp <= 64) || (cp >= 91 && cp <= 96) || (cp >= 123 && cp <= 126)) return true;
  if (cp < 0x80) return false;
  const auto c = category(cp);
  return c >= UTF8PROC_CATEGORY_PC && c <= UTF8PROC_CATEGORY_PO;
}

}  // namespace

size_t invalid_utf8_at(std::string_view text) {
  for (size_t i = 0; i < text.size();) {
    const size_t at = i;
    if (decode(text, i) < 0) return at;
  }
  return std::string_view::npos;
}

std::string Tokenizer::default_vocab_path() {
  if (const char* env = std::getenv("VLMO_VOCAB")) return env;
  const std::string name = "/bert-base-uncased-vocab.txt";
#ifdef VLMO_INSTALLED_DATA_DIR
  // An installed library uses the vocabulary installed beside it when the source tree's is gone.
  if (!std::ifstream(std::string(VLMO_DATA_DIR) + name) && std::ifstream(std::string(VLMO_INSTALLED_DATA_DIR) + name))
    return std::string(VLMO_INSTALLED_DATA_DIR) + name;
#endif
  return std::string(VLMO_DATA_DIR) + name;
}

Tokenizer Tokenizer::from_file(const std::string& path) {
  std::ifstream in;
  try {
    in = open_input(path, "vocabulary", true);
  } catch (const Error& e) {
    throw Error(cat(e.what(), "; run scripts/fetch_vocab.sh, or give --vocab / $VLMO_VOCAB"));
  }
  std::ostringstream text;
  text << in.rdbuf();
  return from_text(text.str(), path);
}

Tokenizer Tokenizer::from_text(const std::string& text, std::string source) {
  std::vector<std::string> vocab;
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    vocab.push_back(line);
  }
  return Tokenizer(std::move(vocab), std::move(source));
}

std::string Tokenizer::vocab_text() const {
  std::string out;
  for (const auto& t : vocab_) out += t + "\n";
  return out;
}

Tokenizer::Tokenizer(std::vector<std::string> vocab, std::string source) : vocab_(std::move(vocab)), source_(std::move(source)) {
  if (vocab_.empty()) throw Error(cat(source_, ": the vocabulary is empty"));
  for (size_t i = 0; i < vocab_.size(); ++i) {
    const std::string& t = vocab_[i];
    size_t pos = 0;
    while (pos < t.size())
      if (decode(t, pos) < 0) throw Error(cat(source_, ":", i + 1, ": entry is not valid UTF-8"));
    if (t.size() > 2 && t.compare(0, 2, "##") == 0) cont_.emplace(t.substr(2), static_cast<int64_t>(i));
    else start_.emplace(t, static_cast<int64_t>(i));
    max_piece_bytes_ = std::max(max_piece_bytes_, t.size());
  }
  int64_t* ids[] = {&pad_, &unk_, &cls_, &sep_, &mask_};
  for (int k = 0; k < 5; ++k) {
    auto it = start_.find(kSpecials[k]);
    if (it == start_.end()) throw Error(cat(source_, ": vocabulary lacks the special token ", kSpecials[k]));
    *ids[k] = it->second;
  }
}

int64_t Tokenizer::id(const std::string& token) const {
  if (token.size() > 2 && token.compare(0, 2, "##") == 0) {
    auto it = cont_.find(token.substr(2));
    if (it != cont_.end()) return it->second;
  } else {
    auto it = start_.find(token);
    if (it != start_.end()) return it->second;
  }
  throw Error(cat("token \"", token, "\" is not in the vocabulary ", source_));
}

const std::string& Tokenizer::token(int64_t id) const {
  if (id < 0 || id >= vocab_size()) throw Error(cat("token id ", id, " is outside the vocabulary"));
  return vocab_[static_cast<size_t>(id)];
}

bool Tokenizer::is_special(int64_t id) const { return id == pad_ || id == unk_ || id == cls_ || id == sep_ || id == mask_; }

// HF BasicTokenizer on a text without special tokens: clean, split CJK, split on whitespace,
// lower-case, strip accents (NFD, drop Mn), split off punctuation.
void Tokenizer::basic_words(std::string_view text, std::vector<std::string>& words) const {
  std::string raw;  // one whitespace-delimited token, cleaned
  auto flush = [&] {
    if (raw.empty()) return;
    std::string word;
    size_t i = 0;
    while (i < raw.size()) {
      const int32_t cp = decode(raw, i);
      // Lower-case, then canonical decomposition without nonspacing marks.
      const int32_t lower = cp < 0x80 ? (cp >= 'A' && cp <= 'Z' ? cp + 32 : cp) : utf8proc_tolower(cp);
      utf8proc_int32_t parts[8];
      int n = 1;
      parts[0] = lower;
      if (lower >= 0x80) {
        int last = 0;
        n = static_cast<int>(utf8proc_decompose_char(lower, parts, 8, UTF8PROC_DECOMPOSE, &last));
        if (n < 0 || n > 8) {
          n = 1;
          parts[0] = lower;
        }
      }
      for (int k = 0; k < n; ++k) {
        const int32_t c = parts[k];
        if (c >= 0x80 && category(c) == UTF8PROC_CATEGORY_MN) continue;
        if (is_punct(c)) {
          if (!word.empty()) words.push_back(std::move(word));
          word.clear();
          std::string p;
          append_utf8(p, c);
          words.push_back(std::move(p));
        } else {
          append_utf8(word, c);
        }
      }
    }
    if (!word.empty()) words.push_back(std::move(word));
    raw.clear();
  };
  size_t i = 0;
  while (i < text.size()) {
    const size_t at = i;
    const int32_t cp = decode(text, i);
    if (cp < 0) throw Error(cat("invalid UTF-8 at byte ", at, " of the text"));
    if (cp == 0 || cp == 0xFFFD || is_control(cp)) continue;
    if (is_space(cp)) {
      flush();
    } else if (is_cjk(cp)) {
      flush();
      append_utf8(raw, cp);
      flush();
    } else {
      raw.append(text.data() + at, i - at);
    }
  }
  flush();
}

// Greedy longest-match-first WordPiece.
void Tokenizer::wordpiece(const std::string& word, std::vector<int64_t>& out) const {
  std::vector<size_t> bounds;  // byte offsets of code point starts, plus the end
  for (size_t i = 0; i < word.size();) {
    bounds.push_back(i);
    decode(word, i);
  }
  bounds.push_back(word.size());
  if (bounds.size() - 1 > static_cast<size_t>(kMaxWordChars)) {
    out.push_back(unk_);
    return;
  }
  const size_t before = out.size();
  size_t s = 0;  // index into bounds
  std::string key;
  while (s + 1 < bounds.size()) {
    const auto& table = s == 0 ? start_ : cont_;
    int64_t found = -1;
    size_t e = bounds.size() - 1;
    for (; e > s; --e) {
      const size_t len = bounds[e] - bounds[s];
      if (len > max_piece_bytes_) continue;
      key.assign(word, bounds[s], len);
      auto it = table.find(key);
      if (it != table.end()) {
        found = it->second;
        break;
      }
    }
    if (found < 0) {
      out.resize(before);
      out.push_back(unk_);
      return;
    }
    out.push_back(found);
    s = e;
  }
}

void Tokenizer::tokenize_into(std::string_view text, std::vector<int64_t>& out) const {
  // Special tokens are matched literally (case-sensitively) before anything else.
  std::vector<std::string> words;
  size_t begin = 0, i = 0;
  while (i < text.size()) {
    int64_t special = -1;
    size_t special_len = 0;
    if (text[i] == '[') {
      for (int k = 0; k < 5; ++k) {
        const std::string_view sp(kSpecials[k]);
        if (text.compare(i, sp.size(), sp) == 0) {
          special = k == 0 ? pad_ : k == 1 ? unk_ : k == 2 ? cls_ : k == 3 ? sep_ : mask_;
          special_len = sp.size();
          break;
        }
      }
    }
    if (special < 0) {
      ++i;
      continue;
    }
    words.clear();
    basic_words(text.substr(begin, i - begin), words);
    for (const auto& w : words) wordpiece(w, out);
    out.push_back(special);
    i += special_len;
    begin = i;
  }
  words.clear();
  basic_words(text.substr(begin), words);
  for (const auto& w : words) wordpiece(w, out);
}

std::vector<int64_t> Tokenizer::tokenize_ids(std::string_view text) const {
  std::vector<int64_t> out;
  tokenize_into(text, out);
  return out;
}

std::vector<std::string> Tokenizer::tokenize(std::string_view text) const {
  std::vector<std::string> out;
  for (int64_t id : tokenize_ids(text)) out.push_back(vocab_[static_cast<size_t>(id)]);
  return out;
}

Encoding Tokenizer::encode(std::string_view text, int max_len, bool pad) const {
  if (max_len != 0 && max_len < 2) throw Error(cat("max_len ", max_len, " leaves no room for [CLS] and [SEP]"));
  Encoding e;
  e.ids.push_back(cls_);
  tokenize_into(text, e.ids);
  if (max_len > 0 && static_cast<int>(e.ids.size()) > max_len - 1) e.ids.resize(max_len - 1);
  e.ids.push_back(sep_);
  e.mask.assign(e.ids.size(), 1);
  if (pad && max_len > 0) {
    e.ids.resize(max_len, pad_);
    e.mask.resize(max_len, 0);
  }
  return e;
}

}  // namespace vlmo
