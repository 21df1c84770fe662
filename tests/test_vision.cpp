#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <png.h>
#include <webp/encode.h>

#include <cstdio>
#include <random>

#include "test_util.h"
#include "vlmo/image.h"
#include "vlmo/image_tensor.h"
#include "vlmo/safetensors.h"

using namespace vlmo;
using vlmo::test::expect_error;
using vlmo::test::fixture;

namespace {

// Writes a PNG with libpng: `rows` hold packed samples of the given type and depth.
std::string write_png(int w, int h, int depth, int color_type, const std::vector<std::vector<uint8_t>>& rows,
                      const std::vector<png_color>& palette = {}, bool interlace = false) {
  const std::string path = vlmo::test::temp_dir() + "/x.png";
  FILE* f = std::fopen(path.c_str(), "wb");
  png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, nullptr, nullptr, nullptr);
  png_infop info = png_create_info_struct(png);
  png_init_io(png, f);
  png_set_IHDR(png, info, w, h, depth, color_type, interlace ? PNG_INTERLACE_ADAM7 : PNG_INTERLACE_NONE,
               PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
  if (!palette.empty()) png_set_PLTE(png, info, palette.data(), static_cast<int>(palette.size()));
  png_write_info(png, info);
  std::vector<png_bytep> ptrs;
  for (auto& r : rows) ptrs.push_back(const_cast<uint8_t*>(r.data()));
  png_write_image(png, ptrs.data());
  png_write_end(png, nullptr);
  png_destroy_write_struct(&png, &info);
  std::fclose(f);
  return path;
}

std::vector<uint8_t> pixel(const Image& img, int x, int y) {
  const uint8_t* p = img.row(y) + 3 * x;
  return {p[0], p[1], p[2]};
}

using Px = std::vector<uint8_t>;

}  // namespace

// `vlmo preprocess` on the real photographs: PIL's pixels exactly (README bound: 2/255 max,
// 0.5/255 mean after normalisation; we are bit-exact).
TEST(Image, PreprocessMatchesPilGoldens) {
  const TensorMap golden = load_safetensors(fixture("images/expected.safetensors"));
  ASSERT_EQ(golden.size(), 13u);
  std::map<std::string, std::vector<std::string>> by_size;
  for (const auto& [name, t] : golden) {
    const auto at = name.find('@');
    by_size[name.substr(at + 1)].push_back(name.substr(0, at));
  }
  const std::string dir = vlmo::test::temp_dir();
  for (const auto& [size, files] : by_size) {
    std::string cmd = std::string(VLMO_BINARY) + " preprocess --size " + size + " --out " + dir + "/" + size + ".safetensors";
    for (const auto& f : files) cmd += " " + fixture("images/" + f);
    ASSERT_EQ(std::system((cmd + " 2>/dev/null").c_str()), 0) << cmd;
    const TensorMap got = load_safetensors(dir + "/" + size + ".safetensors");
    for (const auto& f : files) {
      const std::string name = f + "@" + size;
      ASSERT_TRUE(got.count(name)) << name;
      const at::Tensor diff = (got.at(name) - golden.at(name)).abs();
      EXPECT_LE(diff.max().item<double>(), 2.0 / 255) << name;
      EXPECT_LE(diff.mean().item<double>(), 0.5 / 255) << name;
      EXPECT_EQ(diff.max().item<double>(), 0.0) << name << " is no longer bit-exact with PIL";
    }
  }
}

TEST(Image, PngVariantsConvertLikePil) {
  // Palette (2-bit) -> palette colours.
  const std::vector<png_color> pal = {{10, 20, 30}, {200, 100, 50}, {0, 0, 0}, {255, 255, 255}};
  Image p = read_image(write_png(4, 1, 2, PNG_COLOR_TYPE_PALETTE, {{0b00011011}}, pal));
  EXPECT_EQ(pixel(p, 0, 0), (Px{10, 20, 30}));
  EXPECT_EQ(pixel(p, 1, 0), (Px{200, 100, 50}));
  EXPECT_EQ(pixel(p, 3, 0), (Px{255, 255, 255}));
  // Grey + alpha: the grey value, alpha dropped (not composited).
  Image la = read_image(write_png(2, 1, 8, PNG_COLOR_TYPE_GRAY_ALPHA, {{77, 0, 200, 128}}));
  EXPECT_EQ(pixel(la, 0, 0), (Px{77, 77, 77}));
  EXPECT_EQ(pixel(la, 1, 0), (Px{200, 200, 200}));
  // RGBA: alpha dropped, even where fully transparent.
  Image rgba = read_image(write_png(1, 1, 8, PNG_COLOR_TYPE_RGBA, {{9, 8, 7, 0}}));
  EXPECT_EQ(pixel(rgba, 0, 0), (Px{9, 8, 7}));
  // 16-bit RGB keeps the high byte (PIL's RGB;16B).
  Image rgb16 = read_image(write_png(1, 1, 16, PNG_COLOR_TYPE_RGB, {{0x12, 0xFF, 0xAB, 0x01, 0x00, 0x80}}));
  EXPECT_EQ(pixel(rgb16, 0, 0), (Px{0x12, 0xAB, 0x00}));
  // 16-bit grey opens as PIL mode "I" and convert("RGB") clamps to 0..255.
  Image g16 = read_image(write_png(2, 1, 16, PNG_COLOR_TYPE_GRAY, {{0x00, 0x64, 0x12, 0x34}}));
  EXPECT_EQ(pixel(g16, 0, 0), (Px{100, 100, 100}));
  EXPECT_EQ(pixel(g16, 1, 0), (Px{255, 255, 255}));
  // 4-bit grey is scaled by 17, as PIL's L;4.
  Image g4 = read_image(write_png(2, 1, 4, PNG_COLOR_TYPE_GRAY, {{0x3F}}));
  EXPECT_EQ(pixel(g4, 0, 0), (Px{51, 51, 51}));
  EXPECT_EQ(pixel(g4, 1, 0), (Px{255, 255, 255}));
  // Interlaced files decode to the same pixels.
  std::vector<std::vector<uint8_t>> rows(9, std::vector<uint8_t>(27));
  for (int y = 0; y < 9; ++y)
    for (int i = 0; i < 27; ++i) rows[y][i] = static_cast<uint8_t>(y * 27 + i);
  const Image a = read_image(write_png(9, 9, 8, PNG_COLOR_TYPE_RGB, rows));
  const Image b = read_image(write_png(9, 9, 8, PNG_COLOR_TYPE_RGB, rows, {}, true));
  EXPECT_EQ(a.rgb, b.rgb);
}

TEST(Image, WebpLosslessRoundTrip) {
  std::vector<uint8_t> rgb(5 * 4 * 3);
  for (size_t i = 0; i < rgb.size(); ++i) rgb[i] = static_cast<uint8_t>(i * 11);
  uint8_t* out = nullptr;
  const size_t n = WebPEncodeLosslessRGB(rgb.data(), 5, 4, 15, &out);
  ASSERT_GT(n, 0u);
  const std::string bytes(reinterpret_cast<char*>(out), n);
  WebPFree(out);
  const Image img = decode_image(bytes, "x.webp");
  EXPECT_EQ(img.width, 5);
  EXPECT_EQ(img.height, 4);
  EXPECT_EQ(img.rgb, rgb);
}

TEST(Image, PngEncodeRoundTrip) {
  Image img;
  img.width = 7;
  img.height = 3;
  for (int i = 0; i < 7 * 3 * 3; ++i) img.rgb.push_back(static_cast<uint8_t>(i * 37 + 5));
  const std::string bytes = encode_png(img);
  ASSERT_GT(bytes.size(), 8u);
  EXPECT_EQ(bytes.substr(1, 3), "PNG");
  const Image back = decode_image(bytes, "x.png");
  EXPECT_EQ(back.width, 7);
  EXPECT_EQ(back.height, 3);
  EXPECT_EQ(back.rgb, img.rgb);
  EXPECT_THROW(encode_png(Image{}), Error);
}

TEST(Image, BadInputGetsClearErrors) {
  const std::string jpeg = vlmo::test::read_file(fixture("images/messi5.jpg"));
  const std::string png = vlmo::test::read_file(fixture("images/chelsea.png"));
  const std::string progressive = vlmo::test::read_file(fixture("images/ela_original.jpg"));
  expect_error([] { decode_image("", "zero.jpg"); }, {"zero.jpg", "empty file"});
  expect_error([] { decode_image("GIF89a....", "a.gif"); }, {"a.gif", "unsupported image format"});
  expect_error([&] { decode_image(jpeg.substr(0, jpeg.size() / 2), "half.jpg"); }, {"half.jpg", "truncated"});
  expect_error([&] { decode_image(progressive.substr(0, progressive.size() / 2), "p.jpg"); }, {"p.jpg"});
  expect_error([&] { decode_image(jpeg.substr(0, 200), "head.jpg"); }, {"head.jpg"});
  expect_error([&] { decode_image(png.substr(0, png.size() / 2), "half.png"); }, {"half.png", "PNG"});
  expect_error([&] { decode_image(png.substr(0, 30), "head.png"); }, {"head.png"});
  expect_error([] { decode_image(std::string("RIFF\x10\0\0\0WEBPVP8 ", 16), "w.webp"); }, {"w.webp"});
  expect_error([] { read_image("/nonexistent.jpg"); }, {"/nonexistent.jpg", "cannot open"});
  // Decompression bombs: refused from the header, before any pixel is decoded.
  DecodeOptions small;
  small.max_pixels = 10000;
  expect_error([&] { decode_image(png, "big.png", small); }, {"big.png", "451x300", "over the limit of 10000"});
  std::string bomb = jpeg;  // patch the SOF0 frame size to 60000 x 60000
  const size_t sof = bomb.find("\xFF\xC0");
  ASSERT_NE(sof, std::string::npos);
  bomb[sof + 5] = bomb[sof + 7] = static_cast<char>(0xEA);
  bomb[sof + 6] = bomb[sof + 8] = static_cast<char>(0x60);
  expect_error([&] { decode_image(bomb, "bomb.jpg"); }, {"bomb.jpg", "60000x60000", "decompression bomb"});
}

TEST(Image, RandomCorruptionNeverCrashes) {
  std::mt19937_64 rng(5);
  int errors = 0, decoded = 0;
  for (const char* f : {"messi5.jpg", "ela_original.jpg", "camera.png", "opencv-logo.png"}) {
    const std::string good = vlmo::test::read_file(fixture(std::string("images/") + f));
    for (int trial = 0; trial < 40; ++trial) {
      std::string bad = good;
      for (int k = 0; k < 1 + trial % 8; ++k) bad[rng() % std::min<size_t>(bad.size(), 4000)] = static_cast<char>(rng());
      if (trial % 4 == 0) bad.resize(rng() % bad.size());
      try {
        const Image img = decode_image(bad, f);
        ASSERT_EQ(img.rgb.size(), static_cast<size_t>(img.width) * img.height * 3);
        ++decoded;
      } catch (const vlmo::Error&) {
        ++errors;
      }
    }
  }
  EXPECT_GT(errors, 0);
  EXPECT_GT(decoded + errors, 0);
}

TEST(Image, ResizeInvariants) {
  Image flat;
  flat.width = 37;
  flat.height = 23;
  flat.rgb.assign(37 * 23 * 3, 0);
  for (size_t i = 0; i < flat.rgb.size(); i += 3) {
    flat.rgb[i] = 10;
    flat.rgb[i + 1] = 128;
    flat.rgb[i + 2] = 250;
  }
  for (int s : {7, 23, 64}) {
    const Image r = resize_bicubic(flat, s, s);
    for (size_t i = 0; i < r.rgb.size(); i += 3) {
      ASSERT_EQ(r.rgb[i], 10);
      ASSERT_EQ(r.rgb[i + 1], 128);
      ASSERT_EQ(r.rgb[i + 2], 250);
    }
  }
  EXPECT_EQ(resize_bicubic(flat, 37, 23).rgb, flat.rgb);
  expect_error([&] { resize_bicubic(flat, 0, 5); }, {"empty"});
}

TEST(Image, AugmentOperations) {
  Image img;
  img.width = 16;
  img.height = 12;
  img.rgb.resize(16 * 12 * 3);
  for (size_t i = 0; i < img.rgb.size(); ++i) img.rgb[i] = static_cast<uint8_t>(60 + (i * 7) % 100);
  // AutoContrast stretches each channel to 0..255.
  const Image ac = autocontrast(img);
  for (int c = 0; c < 3; ++c) {
    int lo = 255, hi = 0;
    for (size_t i = c; i < ac.rgb.size(); i += 3) {
      lo = std::min<int>(lo, ac.rgb[i]);
      hi = std::max<int>(hi, ac.rgb[i]);
    }
    EXPECT_EQ(lo, 0);
    EXPECT_EQ(hi, 255);
  }
  EXPECT_EQ(brightness(img, 1.0).rgb, img.rgb);
  EXPECT_EQ(brightness(img, 0.0).rgb, std::vector<uint8_t>(img.rgb.size(), 0));
  EXPECT_EQ(sharpness(img, 1.0).rgb, img.rgb);
  EXPECT_EQ(rotate(img, 0).rgb, img.rgb);
  // Translating right by 3 px moves pixels and fills the uncovered band with 128.
  const double m[6] = {1, 0, 3, 0, 1, 0};
  const Image t = warp_affine(img, m);
  EXPECT_EQ(pixel(t, 5, 4), pixel(img, 2, 4));
  EXPECT_EQ(pixel(t, 1, 4), (Px{128, 128, 128}));
  // Equalize on a two-level 64x64 image (2048 pixels each at 50 and 200): step = 2048 // 255
  // = 8, table[50] = (8 / 2) // 8 = 0, table[200] = (4 + 2048) // 8 = 256 -> 255.
  Image two;
  two.width = two.height = 64;
  two.rgb.resize(64 * 64 * 3);
  for (size_t i = 0; i < two.rgb.size(); ++i) two.rgb[i] = (i / 3) % 2 ? 200 : 50;
  const Image eq = equalize(two);
  EXPECT_EQ(eq.rgb[0], 0);
  EXPECT_EQ(eq.rgb[3], 255);
  // Too few pixels for a step: unchanged.
  Image tiny = two;
  tiny.height = 1;
  tiny.rgb.resize(64 * 3);
  EXPECT_EQ(equalize(tiny).rgb, tiny.rgb);
  // Random augmentation: same size, reproducible from the seed.
  std::mt19937_64 r1(3), r2(3);
  const Image a1 = random_augment(img, r1), a2 = random_augment(img, r2);
  EXPECT_EQ(a1.rgb, a2.rgb);
  EXPECT_EQ(a1.width, img.width);
  std::mt19937_64 r3(4);
  const at::Tensor t224 = train_transform(img, 24, r3);
  EXPECT_EQ(t224.sizes(), at::IntArrayRef({3, 24, 24}));
  EXPECT_LE(t224.abs().max().item<double>(), 1.0);
}
