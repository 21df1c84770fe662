// Images: decoding (JPEG via libjpeg-turbo, PNG via libpng, WebP via libwebp) to 8-bit RGB the
// way PIL's Image.open(f).convert("RGB") gives it, PIL's exact antialiased bicubic resize, and
// VLMo's transforms (reference §4). Torch-free; vlmo/image_tensor.h turns images into tensors.
#pragma once
#include <cstdint>
#include <random>
#include <string>
#include <vector>

namespace vlmo {

struct Image {
  int width = 0, height = 0;
  std::vector<uint8_t> rgb;  // height x width x 3, row-major
  uint8_t* row(int y) { return rgb.data() + static_cast<size_t>(y) * width * 3; }
  const uint8_t* row(int y) const { return rgb.data() + static_cast<size_t>(y) * width * 3; }
};

struct DecodeOptions {
  // Decompression-bomb guard: images with more pixels are refused before decoding
  // (PIL refuses above 2 x 89,478,485).
  int64_t max_pixels = 178956970;
  // Longest side accepted, checked with max_pixels before decoding (0: no limit). Resizing a
  // side of n pixels keeps a coefficient table of about 4n taps (PIL's bicubic support), so a
  // thin image under max_pixels (1 x 40,000,000) can still cost gigabytes; this bounds it.
  int64_t max_side = 0;
  // Fast mode (not PIL-exact): let libjpeg decode at 1/2, 1/4 or 1/8 scale when the image is at
  // least that many times larger than `target_size` on its shorter side, with the fast integer
  // IDCT and plain chroma upsampling. 0 = exact decoding (libjpeg defaults, as PIL).
  int target_size = 0;
};

// Decodes a JPEG, PNG or WebP held in memory; `name` is used in error messages.
Image decode_image(const std::string& bytes, const std::string& name, const DecodeOptions& opt = {});
Image read_image(const std::string& path, const DecodeOptions& opt = {});
// A PNG file's bytes (8-bit RGB, lossless): decode_image gives the image back exactly.
std::string encode_png(const Image& img);

// PIL Image.resize((w, h), BICUBIC) on RGB, bit-exact: a = -0.5 kernel, antialiasing support,
// 22-bit fixed-point weights, horizontal pass first, rounding and clamping after each pass.
Image resize_bicubic(const Image& in, int width, int height);
Image crop(const Image& in, int x, int y, int width, int height);
Image flip_horizontal(const Image& in);

// torchvision RandomResizedCrop(size, scale=(0.5, 1), ratio=(3/4, 4/3), bicubic).
Image random_resized_crop(const Image& in, int size, std::mt19937_64& rng, double min_scale = 0.5, double max_scale = 1.0);

// ALBEF/VLMo RandomAugment(N=2, M=7): N ops drawn with replacement from Identity, AutoContrast,
// Equalize, Brightness, Sharpness, ShearX/Y, TranslateX/Y, Rotate, each applied with p = 0.5;
// fill (128,128,128). Affine ops use bilinear sampling.
Image random_augment(const Image& in, std::mt19937_64& rng, int n = 2, int magnitude = 7);

// The individual operations (exposed for tests). `factor`/`offset`/`degrees` as the official.
Image autocontrast(const Image& in);
Image equalize(const Image& in);
Image brightness(const Image& in, double factor);
Image sharpness(const Image& in, double factor);
// dst(x, y) = src(M^-1 (x, y)) with M the 2x3 forward matrix, bilinear, constant fill.
Image warp_affine(const Image& in, const double m[6], uint8_t fill = 128);
Image rotate(const Image& in, double degrees, uint8_t fill = 128);

}  // namespace vlmo
