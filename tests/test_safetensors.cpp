#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <dirent.h>

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
  expect_error([] {
    parse_safetensors(image(R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})", 4), "f");
  }, {"tensor \"w\"", "outside the data section of 4 bytes"});
  // A header that lies about the size: offsets disagree with dtype x shape.
  expect_error([] {
    parse_safetensors(image(R"({"w":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", 8), "f");
  }, {"tensor \"w\"", "span 8 bytes", "need 12"});
  expect_error([] {
    parse_safetensors(image(R"({"w":{"dtype":"F99","shape":[1],"data_offsets":[0,4]}})", 4), "f");
  }, {"unsupported dtype", "F99"});
  expect_error([] {
    parse_safetensors(image(R"({"w":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}})", 4), "f");
  }, {"non-negative"});
  expect_error([] {
    parse_safetensors(image(R"({"w":{"dtype":"F32","shape":[1],"data_offsets":[8,4]}})", 8), "f");
  }, {"outside"});
  expect_error([] {
    parse_safetensors(image(R"({"w":{"dtype":"F32","shape":[1]}})", 4), "f");
  }, {"data_offsets"});
  expect_error([] {
    parse_safetensors(image(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                            R"("b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})", 12), "f");
  }, {"overlap"});
  expect_error([] {
    parse_safetensors(image(R"({"w":{"dtype":"F32","shape":[4611686018427387904, 8],"data_offsets":[0,4]}})", 4), "f");
  }, {"overflow"});
  expect_error([] { read_safetensors("/nonexistent/file.safetensors"); }, {"/nonexistent/file.safetensors", "cannot open"});
}

TEST(Safetensors, TruncatedRealFileFailsCleanly) {
  const std::string bytes = vlmo::test::read_file(vlmo::test::fixture("reference/tiny-abspos/inputs.safetensors"));
  for (size_t cut : {size_t(4), size_t(8), size_t(100), bytes.size() / 2, bytes.size() - 1}) {
    expect_error([&] { parse_safetensors(bytes.substr(0, cut), "cut"); }, {"cut"});
  }
}
