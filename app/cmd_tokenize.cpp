// vlmo tokenize: JSON lines with a "text" field -> JSON lines {"ids": [...], "tokens": [...]}.
#include <cstring>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>

#include "cli.h"
#include "vlmo/error.h"
#include "vlmo/files.h"
#include "vlmo/tokenizer.h"

namespace vlmo::cli {
namespace {

int run_tokenize(const Args& a) {
  const std::string vocab = a.get("vocab").empty() ? Tokenizer::default_vocab_path() : a.get("vocab");
  const Tokenizer tok = Tokenizer::from_file(vocab);
  const int max_len = a.get_int("max-len");
  if (max_len < 0 || max_len == 1) throw Error("--max-len must be 0 (no limit) or at least 2");
  const std::string& input = a.get("input");
  if (input.empty()) throw Error("vlmo tokenize: --input FILE.jsonl is required");
  std::ifstream in_file;
  std::istream* in = &std::cin;
  if (input != "-") {
    in_file = open_input(input, "JSON-lines input", true);
    in = &in_file;
  }
  std::ofstream out_file;
  std::ostream* out = &std::cout;
  const std::string out_name = a.get("output").empty() ? "standard output" : a.get("output");
  if (!a.get("output").empty()) {
    check_output_path(a.get("output"), "--output");
    out_file.open(a.get("output"), std::ios::binary);
    if (!out_file) throw Error(cat(a.get("output"), ": cannot create (", std::strerror(errno), ")"));
    out = &out_file;
  }
  std::string line;
  size_t lineno = 0;
  while (std::getline(*in, line)) {
    ++lineno;
    if (line.empty() || line == "\r") continue;
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(line);
    } catch (const std::exception& e) {
      throw Error(cat(input, ":", lineno, ": not valid JSON (", e.what(), ")"));
    }
    if (!j.is_object() || !j.contains("text") || !j["text"].is_string())
      throw Error(cat(input, ":", lineno, ": expected an object with a string field \"text\""));
    Encoding e;
    try {
      e = tok.encode(j["text"].get<std::string>(), max_len, max_len > 0);
    } catch (const Error& err) {
      throw Error(cat(input, ":", lineno, ": ", err.what()));
    }
    nlohmann::json o;
    o["ids"] = e.ids;
    std::vector<std::string> tokens;
    for (int64_t id : e.ids) tokens.push_back(tok.token(id));
    o["tokens"] = tokens;
    if (max_len > 0) o["attention_mask"] = e.mask;
    *out << o.dump() << "\n";
    if (!*out) flush_checked(*out, out_name);  // a full disk: stop at once, naming the file
  }
  flush_checked(*out, out_name);
  if (out_file.is_open()) {
    out_file.close();
    if (!out_file) throw Error(cat(out_name, ": write failed on close (", std::strerror(errno), ")"));
  }
  return 0;
}

}  // namespace

Command tokenize_command() {
  Command c;
  c.name = "tokenize";
  c.summary = "Tokenize JSON lines with a \"text\" field into {\"ids\", \"tokens\"} lines (BERT uncased "
              "WordPiece, [CLS] ... [SEP]).\nWith --max-len N the pieces are truncated and padded to N, as "
              "VLMo feeds the model, and \"attention_mask\" is added.";
  c.usage = "vlmo tokenize --input FILE.jsonl [--max-len N] [--vocab vocab.txt]";
  c.options = {{"input", "", "JSON-lines input file, - for standard input"},
               {"output", "", "output file (default: standard output)"},
               integer_option("max-len", "0", "truncate and pad to this many tokens (0: no limit, no padding)", 0, 1048576),
               {"vocab", "", "vocab.txt (default: $VLMO_VOCAB, else data/bert-base-uncased-vocab.txt)"}};
  c.run = run_tokenize;
  return c;
}

}  // namespace vlmo::cli
