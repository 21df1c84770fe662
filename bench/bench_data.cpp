// Data pipeline throughput on one core: tokenizer (sentences/s, tokens/s) and image decode +
// resize (images/s) from photo-sized 640x480 JPEGs at 224 and 384 px, exact and fast modes.
// Usage: vlmo_bench_data [JPEG files...]   (default: synthetic 640x480 photos, quality 90, 4:2:0)
#include <cstddef>
#include <cstdio>
// clang-format off
#include <jpeglib.h>
// clang-format on

#include <ATen/Parallel.h>

#include <chrono>
#include <cmath>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "vlmo/image.h"
#include "vlmo/image_tensor.h"
#include "vlmo/tokenizer.h"

namespace {

double now() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }

// A photo-like 640x480 image (smooth shapes, texture, noise) encoded as a baseline JPEG.
std::string synthetic_jpeg(uint64_t seed) {
  const int W = 640, H = 480;
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> noise(0, 6);
  std::vector<uint8_t> rgb(W * H * 3);
  const double cx = 200 + seed % 200, cy = 150 + seed % 150;
  for (int y = 0; y < H; ++y)
    for (int x = 0; x < W; ++x) {
      const double r = std::hypot(x - cx, y - cy);
      const double base[3] = {120 + 80 * std::sin(x / 50.0), 100 + 60 * std::cos(y / 37.0), r < 120 ? 200.0 : 60 + y / 4.0};
      for (int c = 0; c < 3; ++c)
        rgb[(y * W + x) * 3 + c] =
            static_cast<uint8_t>(std::clamp(base[c] + 20 * std::sin((x + y) / 3.0 + c) + noise(rng), 0.0, 255.0));
    }
  jpeg_compress_struct cinfo;
  jpeg_error_mgr jerr;
  cinfo.err = jpeg_std_error(&jerr);
  jpeg_create_compress(&cinfo);
  unsigned char* buf = nullptr;
  unsigned long size = 0;
  jpeg_mem_dest(&cinfo, &buf, &size);
  cinfo.image_width = W;
  cinfo.image_height = H;
  cinfo.input_components = 3;
  cinfo.in_color_space = JCS_RGB;
  jpeg_set_defaults(&cinfo);
  jpeg_set_quality(&cinfo, 90, TRUE);
  jpeg_start_compress(&cinfo, TRUE);
  while (cinfo.next_scanline < cinfo.image_height) {
    JSAMPROW row = &rgb[cinfo.next_scanline * W * 3];
    jpeg_write_scanlines(&cinfo, &row, 1);
  }
  jpeg_finish_compress(&cinfo);
  jpeg_destroy_compress(&cinfo);
  std::string out(reinterpret_cast<char*>(buf), size);
  free(buf);
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  at::set_num_threads(1);
  std::vector<std::string> jpegs;
  for (int i = 1; i < argc; ++i) {
    std::ifstream in(argv[i], std::ios::binary);
    jpegs.emplace_back((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  }
  if (jpegs.empty())
    for (uint64_t s = 0; s < 8; ++s) jpegs.push_back(synthetic_jpeg(s));

  std::printf("%-44s %14s\n", "work (one core)", "throughput");
  // Images.
  for (int size : {224, 384}) {
    for (bool fast : {false, true}) {
      vlmo::DecodeOptions opt;
      if (fast) opt.target_size = size;
      int n = 0;
      const double t0 = now();
      while (now() - t0 < 2.0)
        for (const auto& j : jpegs) {
          const at::Tensor t = vlmo::eval_transform(vlmo::decode_image(j, "bench", opt), size);
          n += t.size(0) == 3;
        }
      const double dt = now() - t0;
      std::printf("decode + resize + normalise 640x480 -> %3d %-5s %9.1f images/s\n", size, fast ? "fast" : "exact", n / dt);
    }
  }
  // Decode alone, for reference.
  {
    int n = 0;
    const double t0 = now();
    while (now() - t0 < 1.0)
      for (const auto& j : jpegs) n += vlmo::decode_image(j, "bench").width > 0;
    std::printf("%-44s %9.1f images/s\n", "JPEG decode only (exact)", n / (now() - t0));
  }
  // Tokenizer.
  try {
    const vlmo::Tokenizer tok = vlmo::Tokenizer::from_file(vlmo::Tokenizer::default_vocab_path());
    const char* subjects[] = {"A man", "Two dogs", "A little girl", "Several zebras", "An old woman", "The red bus"};
    const char* verbs[] = {"is riding", "are playing with", "stands next to", "walks past", "looks at"};
    const char* objects[] = {"a wooden bench", "the snowy mountains", "colourful umbrellas", "a busy street", "two bicycles"};
    const char* tails[] = {".", " at sunset.", " in the park!", ", while people watch.", " near the café."};
    std::vector<std::string> sentences;
    for (int i = 0; i < 3000; ++i)
      sentences.push_back(std::string(subjects[i % 6]) + " " + verbs[(i / 6) % 5] + " " + objects[(i / 30) % 5] +
                          tails[(i / 150) % 5]);
    size_t tokens = 0, count = 0;
    const double t0 = now();
    while (now() - t0 < 2.0)
      for (const auto& s : sentences) {
        tokens += tok.encode(s, 40, true).ids.size() - 0;
        ++count;
      }
    const double dt = now() - t0;
    size_t real = 0;
    for (const auto& s : sentences) real += tok.tokenize_ids(s).size();
    const double tokens_per_sentence = static_cast<double>(real) / sentences.size();
    std::printf("%-44s %9.0f sentences/s\n", "tokenizer (captions, padded to 40)", count / dt);
    std::printf("%-44s %9.0f tokens/s (%.1f word pieces per caption)\n", "tokenizer word pieces",
                count / dt * tokens_per_sentence, tokens_per_sentence);
  } catch (const std::exception& e) {
    std::printf("tokenizer: skipped (%s)\n", e.what());
  }
  return 0;
}
