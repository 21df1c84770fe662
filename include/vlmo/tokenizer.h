// BERT WordPiece tokenizer with HuggingFace BertTokenizer (uncased) behaviour: text cleaning,
// CJK splitting, lower-casing + accent stripping (NFD), punctuation splitting by Unicode category,
// greedy longest-match WordPiece with "##" and the 100-character limit, the five special tokens
// matched literally, [CLS] ... [SEP], truncation and padding. Unicode data from utf8proc.
// Not here: MLM masking (vlmo/masking.h).
#pragma once
#include <cstdint>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace vlmo {

// The byte offset of the first invalid UTF-8 sequence in `text`, or std::string_view::npos when
// it is valid (the same decoder the tokenizer uses).
size_t invalid_utf8_at(std::string_view text);

struct Encoding {
  std::vector<int64_t> ids;   // [CLS] ... [SEP] (+ [PAD]s when padded)
  std::vector<int64_t> mask;  // 1 for real tokens, 0 for padding
};

class Tokenizer {
 public:
  // Reads a vocab.txt (one token per line, the line number is the id). Throws naming the file.
  static Tokenizer from_file(const std::string& vocab_path);
  // The default vocabulary: $VLMO_VOCAB, else the file the set-up script wrote (or its
  // installed copy).
  static std::string default_vocab_path();
  // A vocabulary as vocab.txt's text (one token per line); `source` names it in errors.
  static Tokenizer from_text(const std::string& text, std::string source);
  explicit Tokenizer(std::vector<std::string> vocab, std::string source = "<memory>");

  // Word pieces of `text` without [CLS]/[SEP]. Throws vlmo::Error on invalid UTF-8.
  std::vector<std::string> tokenize(std::string_view text) const;
  std::vector<int64_t> tokenize_ids(std::string_view text) const;
  // [CLS] pieces [SEP]; max_len > 0 truncates the pieces to max_len - 2, and `pad` pads to max_len.
  Encoding encode(std::string_view text, int max_len = 0, bool pad = false) const;

  int64_t id(const std::string& token) const;  // throws if absent
  const std::string& token(int64_t id) const;
  int64_t vocab_size() const { return static_cast<int64_t>(vocab_.size()); }
  const std::vector<std::string>& vocab() const { return vocab_; }
  std::string vocab_text() const;  // as vocab.txt: one token per line
  const std::string& source() const { return source_; }
  int64_t pad_id() const { return pad_; }
  int64_t unk_id() const { return unk_; }
  int64_t cls_id() const { return cls_; }
  int64_t sep_id() const { return sep_; }
  int64_t mask_id() const { return mask_; }
  bool is_special(int64_t id) const;

 private:
  void basic_words(std::string_view text, std::vector<std::string>& words) const;
  void wordpiece(const std::string& word, std::vector<int64_t>& out) const;
  void tokenize_into(std::string_view text, std::vector<int64_t>& out) const;

  std::vector<std::string> vocab_;
  std::unordered_map<std::string, int64_t> start_;  // pieces that may begin a word
  std::unordered_map<std::string, int64_t> cont_;   // "##" pieces, stored without "##"
  size_t max_piece_bytes_ = 0;
  int64_t pad_ = 0, unk_ = 100, cls_ = 101, sep_ = 102, mask_ = 103;
  std::string source_;
};

}  // namespace vlmo
