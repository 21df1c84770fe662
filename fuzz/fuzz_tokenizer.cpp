// The WordPiece tokenizer on arbitrary bytes (invalid UTF-8 must be an error, never a crash).
#include "fuzz_util.h"
#include "vlmo/tokenizer.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const vlmo::Tokenizer tok = vlmo::Tokenizer::from_file(vlmo::Tokenizer::default_vocab_path());
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  vlmo::fuzz::expect_only_errors([&] {
    const vlmo::Encoding e = tok.encode(text, 40, true);
    if (e.ids.size() != 40 || e.mask.size() != 40) std::abort();
    for (int64_t id : e.ids)
      if (id < 0 || id >= tok.vocab_size()) std::abort();
  });
  const bool valid = vlmo::invalid_utf8_at(text) == std::string_view::npos;
  bool threw = false;
  try {
    tok.tokenize(text);
  } catch (const vlmo::Error&) {
    threw = true;
  }
  if (threw == valid) std::abort();  // an error exactly for invalid UTF-8
  return 0;
}
