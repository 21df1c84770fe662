// Helpers shared by the tests: the tiny model, fixture paths, temporary folders, error expectations.
#pragma once
#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <functional>
#include <sstream>
#include <string>
#include <vector>

#include "vlmo/batch.h"
#include "vlmo/config.h"
#include "vlmo/error.h"
#include "vlmo/image.h"
#include "vlmo/model.h"
#include "vlmo/tokenizer.h"

namespace vlmo::test {

// The small model of the unit tests: 2 blocks of width 32, 2 heads, 32-px images, 16 tokens,
// the VL-FFN in the top block; `adjust` changes what a test needs (depth, heads, vocabulary...).
inline Config tiny_config(std::vector<std::string> heads = {"mlm", "itm", "itc"},
                          const std::function<void(Config&)>& adjust = {}) {
  Config c;
  c.embed_dim = 32;
  c.depth = 2;
  c.num_heads = 2;
  c.image_size = 32;
  c.vlffn_start_layer_index = 1;
  c.max_text_len = 16;
  c.heads = std::move(heads);
  if (adjust) adjust(c);
  return c;
}

// Adjustments of tiny_config for tests that run every head (all_heads()), shared by several files.
// 3 blocks of 4 heads (the VL-FFN in the top one), 8 tokens of a 50-token vocabulary, 3 token
// types (NLVR2), 5 VQA labels, no drop path: the model and objective tests.
inline void small_vocab(Config& c) {
  c.depth = 3;
  c.num_heads = 4;
  c.max_text_len = 8;
  c.vocab_size = 50;
  c.vlffn_start_layer_index = 2;
  c.vqav2_label_size = 5;
  c.num_token_types = 3;
  c.drop_path_rate = 0;
}
// The model and objective tests draw the relative-position bias table from N(0, kRelativeBiasStd)
// (tiny_model's `relative_bias_std`), so that the bias takes part in every comparison.
constexpr double kRelativeBiasStd = 0.5;
// 4 heads, 8 tokens of BERT's vocabulary, 3 token types (NLVR2), 4 VQA labels, no drop path: the
// tests that feed real text (evaluation loops, model files).
inline void bert_vocab(Config& c) {
  c.num_heads = 4;
  c.max_text_len = 8;
  c.vocab_size = 30522;
  c.vqav2_label_size = 4;
  c.num_token_types = 3;
  c.drop_path_rate = 0;
}

// A model of `c` with the official initialisation from `seed`; `relative_bias_std` > 0 then draws
// the relative-position bias table (where the config has one) from N(0, std) with the global
// generator, so that the bias takes part in what a test compares.
inline VLMo tiny_model(const Config& c, uint64_t seed = 1, double relative_bias_std = 0) {
  VLMo m(c);
  init_weights(m, seed);
  at::NoGradGuard g;
  if (relative_bias_std > 0 && m->relative_position_bias_table.defined())
    m->relative_position_bias_table.normal_(0, relative_bias_std);
  return m;
}

// `B` random samples for a config: text of random ids with the last 2 positions padded, images
// uniform in [-1, 1).
inline Batch tiny_batch(const Config& c, int64_t B = 3) {
  Batch b;
  b.text_ids = at::randint(1, c.vocab_size, {B, c.max_text_len});
  b.text_masks = at::ones({B, c.max_text_len}, at::kLong);
  b.text_masks.narrow(1, c.max_text_len - 2, 2).zero_();
  b.text_ids.narrow(1, c.max_text_len - 2, 2).zero_();
  b.image = at::rand({B, 3, c.image_size, c.image_size}) * 2 - 1;
  return b;
}

// In-memory images by reference: "img/<k>" is a 40x30 image of colour k.
inline Image coloured(int k) {
  Image im;
  im.width = 40;
  im.height = 30;
  im.rgb.resize(40 * 30 * 3);
  for (size_t i = 0; i < im.rgb.size(); ++i) im.rgb[i] = static_cast<uint8_t>((k * 53 + (i % 3) * 71 + i / 97) % 256);
  return im;
}
inline Image load_coloured(const std::string& ref) { return coloured(std::stoi(ref.substr(4))); }
inline std::string ref(int k) { return "img/" + std::to_string(k); }

// The BERT uncased tokenizer of the set-up.
inline const Tokenizer& bert() {
  static const Tokenizer t = Tokenizer::from_file(Tokenizer::default_vocab_path());
  return t;
}

// Appends one file to a tar archive in memory (ustar header, padded to 512 bytes).
inline void tar_add(std::string& tar, const std::string& name, const std::string& data) {
  char h[512] = {0};
  std::snprintf(h, 100, "%s", name.c_str());
  std::snprintf(h + 100, 8, "%07o", 0644);
  std::snprintf(h + 108, 8, "%07o", 0);
  std::snprintf(h + 116, 8, "%07o", 0);
  std::snprintf(h + 124, 12, "%011lo", static_cast<unsigned long>(data.size()));
  std::snprintf(h + 136, 12, "%011o", 0);
  h[156] = '0';
  std::memcpy(h + 257, "ustar", 6);
  std::memcpy(h + 263, "00", 2);
  std::memset(h + 148, ' ', 8);
  unsigned sum = 0;
  for (int i = 0; i < 512; ++i) sum += static_cast<unsigned char>(h[i]);
  std::snprintf(h + 148, 8, "%06o", sum);
  tar.append(h, 512);
  tar += data;
  tar.append((512 - data.size() % 512) % 512, '\0');
}

inline std::string shared_dir() { return VLMO_SHARED_DIR; }
inline std::string fixture(const std::string& rel) { return shared_dir() + "/fixtures/" + rel; }

// A fresh temporary folder per call, removed by the OS's tmp cleaning, named after the test.
inline std::string temp_dir() {
  std::string tmpl = "/tmp/vlmo-test-XXXXXX";
  if (!::mkdtemp(tmpl.data())) throw std::runtime_error("mkdtemp failed");
  return tmpl;
}

inline std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

inline void write_file(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary);
  out << bytes;
}

// tiny_config(heads) as a config file for the vlmo program (--config): `dir`/tiny.json.
inline std::string write_tiny_config(const std::string& dir, std::vector<std::string> heads = all_heads()) {
  const std::string path = dir + "/tiny.json";
  write_file(path, config_to_json_text(tiny_config(std::move(heads))));
  return path;
}

// Runs `fn`, expecting vlmo::Error whose message contains every one of `parts`.
template <typename Fn>
void expect_error(Fn fn, std::initializer_list<std::string> parts) {
  try {
    fn();
  } catch (const vlmo::Error& e) {
    const std::string msg = e.what();
    for (const auto& p : parts) EXPECT_NE(msg.find(p), std::string::npos) << "message: " << msg << "\nmissing: " << p;
    return;
  }
  ADD_FAILURE() << "expected vlmo::Error";
}

// Runs the vlmo program with `args` (each shell-quoted here); captures stdout, stderr, status.
struct CliResult {
  int status = -1;
  std::string out, err;
};
inline std::string shell_quote(const std::string& s) {
  std::string q = "'";
  for (char c : s) q += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return q + "'";
}
inline CliResult run_cli(const std::vector<std::string>& args) {
  static int counter = 0;
  const std::string base = temp_dir() + "/cli" + std::to_string(counter++);
  std::string cmd = shell_quote(VLMO_BINARY);
  for (const auto& a : args) cmd += " " + shell_quote(a);
  cmd += " >" + base + ".out 2>" + base + ".err";
  CliResult r;
  const int rc = std::system(cmd.c_str());
  r.status = WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
  r.out = read_file(base + ".out");
  r.err = read_file(base + ".err");
  return r;
}

}  // namespace vlmo::test
