// src/io/: safetensors files and checkpoints (official containers, conversion, strict and
// resizing loads, corrupt files).

// ---- from the tests of safetensors ----
#include <ATen/ATen.h>
#include <dirent.h>
#include <gtest/gtest.h>

#include "test_util.h"
#include "vlmo/safetensors.h"

using namespace vlmo;
using vlmo::test::expect_error;

namespace {

std::string le64(uint64_t v) {
  std::string s(8, '\0');
  for (int i = 0; i < 8; ++i) s[i] = static_cast<char>((v >> (8 * i)) & 0xff);
  return s;
}

// A file image with the given JSON header and `data_bytes` zero bytes of data.
std::string image(const std::string& header, size_t data_bytes) {
  return le64(header.size()) + header + std::string(data_bytes, '\0');
}

}  // namespace

TEST(Safetensors, RoundTripsDtypesShapesAndMetadata) {
  const std::string dir = vlmo::test::temp_dir();
  TensorMap t;
  t["f32"] = at::randn({3, 4});
  t["f16"] = at::randn({5}).to(at::kHalf);
  t["bf16"] = at::randn({2, 2}).to(at::kBFloat16);
  t["i64"] = at::arange(7);
  t["bool"] = at::rand({4}) > 0.5;
  t["scalar"] = at::full({}, 2.5);
  t["empty"] = at::zeros({0, 3});
  t["noncontig"] = at::randn({4, 3}).t();
  write_safetensors(dir + "/a.safetensors", t, {{"format", "pt"}});
  const auto back = read_safetensors(dir + "/a.safetensors");
  EXPECT_EQ(back.metadata.at("format"), "pt");
  ASSERT_EQ(back.tensors.size(), t.size());
  for (const auto& [k, v] : t) {
    const at::Tensor& b = back.tensors.at(k);
    EXPECT_EQ(b.scalar_type(), v.scalar_type()) << k;
    EXPECT_EQ(b.sizes(), v.sizes()) << k;
    EXPECT_TRUE(at::equal(b, v)) << k;
  }
  // Atomic write: no temporary file left beside it.
  DIR* d = opendir(dir.c_str());
  int files = 0;
  while (dirent* e = readdir(d)) files += e->d_name[0] != '.';
  closedir(d);
  EXPECT_EQ(files, 1);
}

TEST(Safetensors, ReadsFixtureFile) {
  const auto f = read_safetensors(vlmo::test::fixture("reference/tiny-relpos/weights.safetensors"));
  EXPECT_EQ(f.metadata.at("format"), "vlmo-reference");
  EXPECT_EQ(f.tensors.at("relative_position_bias_table").sizes(), at::IntArrayRef({446, 16}));
  EXPECT_EQ(f.tensors.at("text_embeddings.position_ids").scalar_type(), at::kLong);
}

TEST(Safetensors, RejectsMalformedFiles) {
  expect_error([] { parse_safetensors("", "f"); }, {"f", "truncated", "0 bytes"});
  expect_error([] { parse_safetensors("abc", "f"); }, {"truncated"});
  expect_error([] { parse_safetensors(le64(1ull << 40) + "{}", "f"); }, {"exceeds the limit"});
  expect_error([] { parse_safetensors(le64(100) + "{}", "f"); }, {"header length 100", "only 2 bytes"});
  expect_error([] { parse_safetensors(image("{\"a\": ", 0), "f"); }, {"not valid JSON"});
  expect_error([] { parse_safetensors(image("[1]", 0), "f"); }, {"JSON object"});
  // Offsets past the end of the data section.
  expect_error([] { parse_safetensors(image(R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})", 4), "f"); },
               {"tensor \"w\"", "outside the data section of 4 bytes"});
  // A header that lies about the size: offsets disagree with dtype x shape.
  expect_error([] { parse_safetensors(image(R"({"w":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", 8), "f"); },
               {"tensor \"w\"", "span 8 bytes", "need 12"});
  expect_error([] { parse_safetensors(image(R"({"w":{"dtype":"F99","shape":[1],"data_offsets":[0,4]}})", 4), "f"); },
               {"unsupported dtype", "F99"});
  expect_error([] { parse_safetensors(image(R"({"w":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}})", 4), "f"); },
               {"non-negative"});
  expect_error([] { parse_safetensors(image(R"({"w":{"dtype":"F32","shape":[1],"data_offsets":[8,4]}})", 8), "f"); },
               {"outside"});
  expect_error([] { parse_safetensors(image(R"({"w":{"dtype":"F32","shape":[1]}})", 4), "f"); }, {"data_offsets"});
  expect_error(
      [] {
        parse_safetensors(image(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                                R"("b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
                                12),
                          "f");
      },
      {"overlap"});
  expect_error(
      [] { parse_safetensors(image(R"({"w":{"dtype":"F32","shape":[4611686018427387904, 8],"data_offsets":[0,4]}})", 4), "f"); },
      {"overflow"});
  expect_error([] { read_safetensors("/nonexistent/file.safetensors"); }, {"/nonexistent/file.safetensors", "cannot open"});
}

TEST(Safetensors, TruncatedRealFileFailsCleanly) {
  const std::string bytes = vlmo::test::read_file(vlmo::test::fixture("reference/tiny-abspos/inputs.safetensors"));
  for (size_t cut : {size_t(4), size_t(8), size_t(100), bytes.size() / 2, bytes.size() - 1}) {
    expect_error([&] { parse_safetensors(bytes.substr(0, cut), "cut"); }, {"cut"});
  }
}

// A corrupt file is caught by its checksum (a fault a long run meets).
TEST(Files, CorruptedSafetensorsFailTheChecksumNamingTheFile) {
  const std::string path = vlmo::test::temp_dir() + "/w.safetensors";
  write_safetensors(path, {{"a", at::arange(64, at::kFloat)}}, {{"note", "x"}});
  SafetensorsFile ok = read_safetensors(path);
  EXPECT_EQ(ok.metadata, (std::map<std::string, std::string>{{"note", "x"}}));  // the checksum is not shown
  std::string bytes = vlmo::test::read_file(path);
  bytes[bytes.size() - 5] ^= 0x40;  // one flipped bit in the last tensor's data
  vlmo::test::write_file(path, bytes);
  expect_error([&] { read_safetensors(path); }, {path, "checksum mismatch"});
  vlmo::test::write_file(path, bytes.substr(0, bytes.size() - 16));  // truncated
  expect_error([&] { read_safetensors(path); }, {path});
}

// ---- from the tests of checkpoint ----
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <random>

#include "test_util.h"
#include "vlmo/checkpoint.h"
#include "vlmo/safetensors.h"

using namespace vlmo;
using vlmo::test::expect_error;
using vlmo::test::fixture;

namespace {
const TensorMap& reference_weights() {
  static const TensorMap w = load_safetensors(fixture("reference/tiny-abspos/weights.safetensors"));
  return w;
}
const char* kCheckpoints[] = {"bare.pt", "deepspeed.pt", "lightning.ckpt"};
}  // namespace

TEST(Checkpoint, OfficialContainersLoadWithReferenceNamesAndValues) {
  const TensorMap& ref = reference_weights();
  for (const char* name : kCheckpoints) {
    SCOPED_TRACE(name);
    const TensorMap w = read_weights(fixture(std::string("checkpoints/") + name));
    EXPECT_EQ(w.size(), ref.size() + 4);
    for (const auto& [k, v] : ref) {
      ASSERT_TRUE(w.count(k)) << k;
      EXPECT_EQ(w.at(k).scalar_type(), v.scalar_type()) << k;
      EXPECT_TRUE(at::equal(w.at(k), v)) << k;
    }
    // Storage handling: a view, a non-contiguous tensor, fp16 and bf16.
    const at::Tensor& qkv = ref.at("transformer.blocks.0.attn.qkv.weight");
    EXPECT_TRUE(at::equal(w.at("extra.view_of_qkv"), qkv.narrow(0, 0, 8)));
    EXPECT_TRUE(at::equal(w.at("extra.transposed"), ref.at("transformer.blocks.0.attn.proj.weight").t()));
    EXPECT_FALSE(w.at("extra.transposed").is_contiguous());
    EXPECT_EQ(w.at("extra.half").scalar_type(), at::kHalf);
    EXPECT_EQ(w.at("extra.bf16").scalar_type(), at::kBFloat16);
    EXPECT_TRUE(at::equal(w.at("extra.half"), ref.at("transformer.norm.weight").to(at::kHalf)));
    EXPECT_TRUE(at::equal(w.at("extra.bf16"), ref.at("transformer.norm.weight").to(at::kBFloat16)));
  }
}

TEST(Checkpoint, ConvertedFileRoundTrips) {
  const std::string out = vlmo::test::temp_dir() + "/w.safetensors";
  const TensorMap w = read_weights(fixture("checkpoints/lightning.ckpt"));
  write_safetensors(out, w);
  const TensorMap back = read_weights(out);
  ASSERT_EQ(back.size(), w.size());
  for (const auto& [k, v] : w) EXPECT_TRUE(at::equal(back.at(k), v)) << k;
}

TEST(Checkpoint, StrictAndNonStrictLoading) {
  const Config cfg = load_config(fixture("reference/tiny-abspos/config.json"));
  TensorMap w = read_weights(fixture("checkpoints/deepspeed.pt"));
  {
    VLMo model(cfg);
    expect_error([&] { load_weights(model, w, true); },
                 {"4 unexpected", "extra.view_of_qkv", "extra.transposed", "extra.half", "extra.bf16"});
    const LoadReport r = load_weights(model, w, false);
    EXPECT_EQ(r.unexpected.size(), 4u);
    EXPECT_TRUE(r.missing.empty());
    EXPECT_TRUE(at::equal(model->pooler->dense->weight, reference_weights().at("pooler.dense.weight")));
  }
  for (const char* k : {"extra.view_of_qkv", "extra.transposed", "extra.half", "extra.bf16"}) w.erase(k);
  {
    VLMo model(cfg);
    EXPECT_TRUE(load_weights(model, w, true).clean());
  }
  // Missing and mis-shaped tensors are named, with both shapes.
  TensorMap bad = w;
  bad.erase("pooler.dense.bias");
  bad["vqa_classifier.3.weight"] = at::zeros({5, 128});
  VLMo model(cfg);
  expect_error([&] { load_weights(model, bad, true); },
               {"1 missing", "pooler.dense.bias", "vqa_classifier.3.weight", "[5, 128]", "[37, 128]"});
  const at::Tensor before = model->vqa_classifier->named_parameters()["3.weight"].clone();
  const LoadReport r = load_weights(model, bad, false);
  EXPECT_EQ(r.missing, std::vector<std::string>{"pooler.dense.bias"});
  EXPECT_EQ(r.mismatched.size(), 1u);
  EXPECT_TRUE(at::equal(model->vqa_classifier->named_parameters()["3.weight"], before));  // untouched
  // Index buffers that old checkpoints carry are ignored, not unexpected.
  TensorMap with_index = w;
  with_index["relative_position_index"] = at::zeros({10, 10}, at::kLong);
  with_index["text_imag_relative_position_index"] = at::zeros({20, 20}, at::kLong);
  const LoadReport ri = load_weights(model, with_index, true);
  EXPECT_EQ(ri.ignored.size(), 2u);
}

TEST(Checkpoint, LoadingAtAnotherImageSizeResizesTables) {
  Config cfg = load_config(fixture("reference/tiny-relpos/config.json"));
  cfg.image_size = 96;  // 4x4 -> 6x6 patches
  VLMo model(cfg);
  const LoadReport r = load_weights(model, load_safetensors(fixture("reference/tiny-relpos/weights.safetensors")), true);
  ASSERT_EQ(r.resized.size(), 1u);
  EXPECT_NE(r.resized[0].find("4x4 -> 6x6"), std::string::npos);
  EXPECT_EQ(model->relative_position_bias_table.size(0), cfg.relative_table_rows());
  // The non-image rows are carried over unchanged.
  const at::Tensor src =
      load_safetensors(fixture("reference/tiny-relpos/weights.safetensors")).at("relative_position_bias_table");
  const int64_t extra = src.size(0) - 49;
  EXPECT_TRUE(at::equal(model->relative_position_bias_table.narrow(0, 121, extra), src.narrow(0, 49, extra)));
}

TEST(Checkpoint, CorruptFilesGetClearErrors) {
  const std::string dir = vlmo::test::temp_dir();
  const std::string good = vlmo::test::read_file(fixture("checkpoints/bare.pt"));
  // Truncated anywhere: never a crash, always an error naming the file.
  for (size_t cut : {size_t(10), size_t(100), good.size() / 3, good.size() / 2, good.size() - 30}) {
    const std::string p = dir + "/cut.pt";
    vlmo::test::write_file(p, good.substr(0, cut));
    expect_error([&] { read_weights(p); }, {p});
  }
  // Bad magic: neither zip nor safetensors.
  vlmo::test::write_file(dir + "/junk.pt", "this is not a checkpoint at all, just text");
  expect_error([&] { read_weights(dir + "/junk.pt"); }, {"junk.pt"});
  // Legacy pickle (pre-zip) format.
  vlmo::test::write_file(dir + "/legacy.pt", std::string("\x80\x02\x8a\x0a", 4) + std::string(60, 'x'));
  expect_error([&] { read_weights(dir + "/legacy.pt"); }, {"legacy"});
  // Zero bytes.
  vlmo::test::write_file(dir + "/empty.pt", "");
  expect_error([&] { read_weights(dir + "/empty.pt"); }, {"empty.pt"});
}

// A safetensors file starts with its header's length (8 bytes, little endian): when the low byte
// is 0x80 it must not be taken for a legacy pickle's PROTO opcode (the demo's checkpoints met it).
TEST(Checkpoint, SafetensorsOfAnyHeaderLengthLoads) {
  const std::string dir = vlmo::test::temp_dir();
  const TensorMap w = {{"x", at::arange(6, at::kFloat).reshape({2, 3})}};
  bool met_0x80 = false;
  for (size_t pad = 0; pad < 300; ++pad) {
    const std::string p = dir + "/pad.safetensors";
    write_safetensors(p, w, {{"note", std::string(pad, 'n')}});
    met_0x80 = met_0x80 || static_cast<unsigned char>(vlmo::test::read_file(p)[0]) == 0x80;
    const WeightsFile f = read_weights_file(p);
    ASSERT_EQ(f.tensors.count("x"), 1u) << "padding " << pad;
    EXPECT_TRUE(at::equal(f.tensors.at("x"), w.at("x"))) << "padding " << pad;
  }
  EXPECT_TRUE(met_0x80);
}

TEST(Checkpoint, RandomByteCorruptionNeverCrashes) {
  const std::string good = vlmo::test::read_file(fixture("checkpoints/lightning.ckpt"));
  const std::string dir = vlmo::test::temp_dir();
  // Corrupt the pickle (data.pkl sits right after the first local header) and the directory.
  const size_t pkl = good.find("data.pkl");
  const size_t cd = good.rfind(std::string("PK\x01\x02", 4));
  ASSERT_NE(pkl, std::string::npos);
  std::mt19937 rng(7);
  int errors = 0;
  for (int trial = 0; trial < 200; ++trial) {
    std::string bad = good;
    const size_t base = trial % 2 ? pkl : cd;
    for (int k = 0; k < 3; ++k) bad[std::min(base + rng() % 400, bad.size() - 1)] = static_cast<char>(rng());
    const std::string p = dir + "/bad.ckpt";
    vlmo::test::write_file(p, bad);
    try {
      read_weights(p);
    } catch (const vlmo::Error&) {
      ++errors;
    }
  }
  EXPECT_GT(errors, 0);
}

TEST(Checkpoint, BeitKeysMapToVlmo) {
  // A BEiT-shaped state_dict for a 2-layer, 2-head, 32-px (2x2 patches) model.
  const int D = 8, H = 2, rows = 3 * 3 + 3;
  TensorMap beit;
  beit["cls_token"] = at::randn({1, 1, D});
  beit["patch_embed.proj.weight"] = at::randn({D, 3, 16, 16});
  beit["fc_norm.weight"] = at::randn({D});
  for (int i = 0; i < 2; ++i) {
    const std::string b = "blocks." + std::to_string(i) + ".";
    beit[b + "mlp.fc1.weight"] = at::randn({4 * D, D});
    beit[b + "norm2.weight"] = at::randn({D});
    beit[b + "attn.qkv.weight"] = at::randn({3 * D, D});
    beit[b + "attn.relative_position_bias_table"] = at::full({rows, H}, static_cast<double>(i + 1));
    beit[b + "attn.relative_position_index"] = at::zeros({5, 5}, at::kLong);
  }
  const TensorMap v = beit_to_vlmo(beit, 100);
  EXPECT_TRUE(at::equal(v.at("transformer.blocks.1.mlp_imag.fc1.weight"), beit.at("blocks.1.mlp.fc1.weight")));
  EXPECT_TRUE(at::equal(v.at("transformer.blocks.0.norm2_imag.weight"), beit.at("blocks.0.norm2.weight")));
  EXPECT_TRUE(at::equal(v.at("transformer.blocks.0.attn.qkv.weight"), beit.at("blocks.0.attn.qkv.weight")));
  EXPECT_TRUE(v.count("transformer.cls_token"));
  EXPECT_TRUE(v.count("transformer.fc_norm.weight"));  // unexpected on load, as in the official
  const at::Tensor& t = v.at("relative_position_bias_table");
  ASSERT_EQ(t.sizes(), at::IntArrayRef({100, 4}));
  EXPECT_EQ(t[0][0].item<float>(), 1.0f);     // layer 0 -> columns 0, 1
  EXPECT_EQ(t[0][2].item<float>(), 2.0f);     // layer 1 -> columns 2, 3
  EXPECT_EQ(t[rows][0].item<float>(), 0.0f);  // text rows untouched
  for (const auto& [k, x] : v) EXPECT_EQ(k.find("relative_position_index"), std::string::npos) << k;
}

// A corrupt answer list in a model file (a fault a long run meets).
TEST(Files, CorruptVqaAnswerMetadataIsAnErrorNamingTheFile) {
  const std::string dir = vlmo::test::temp_dir();
  Config c = vlmo::test::tiny_config();
  c.heads = {"vqa"};
  c.vqav2_label_size = 3;
  VLMo m = vlmo::test::tiny_model(c);
  save_model(dir + "/ok.safetensors", m, {"yes", "no", "two"});
  SafetensorsFile f = read_safetensors(dir + "/ok.safetensors");
  EXPECT_EQ(load_model(dir + "/ok.safetensors").vqa_answers.size(), 3u);
  f.metadata["vqa_answers"] = R"(["yes", "no"])";  // one answer short of the classifier
  write_safetensors(dir + "/short.safetensors", f.tensors, f.metadata);
  expect_error([&] { load_model(dir + "/short.safetensors"); }, {"short.safetensors", "2 answers", "3"});
  f.metadata["vqa_answers"] = R"(["yes", "no", )";  // not JSON
  write_safetensors(dir + "/torn.safetensors", f.tensors, f.metadata);
  expect_error([&] { load_model(dir + "/torn.safetensors"); }, {"torn.safetensors", "vqa_answers"});
}
