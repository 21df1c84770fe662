// Training-time transforms: RandomResizedCrop and ALBEF's RandomAugment as VLMo uses them.
// The official RandomAugment runs OpenCV/numpy code; these are our own implementations of the
// same operations and magnitudes. Differences: affine warps use float bilinear sampling (OpenCV
// quantises to 1/32 pixel), and Sharpness clamps to 0..255 where numpy's uint8 cast wraps.
#include <algorithm>
#include <array>
#include <cmath>

#include "vlmo/error.h"
#include "vlmo/image.h"

namespace vlmo {
namespace {

Image map_channels(const Image& in, const std::array<std::array<uint8_t, 256>, 3>& table) {
  Image out = in;
  for (size_t i = 0; i < out.rgb.size(); ++i) out.rgb[i] = table[i % 3][in.rgb[i]];
  return out;
}

}  // namespace

Image autocontrast(const Image& in) {
  std::array<std::array<uint8_t, 256>, 3> table;
  for (int c = 0; c < 3; ++c) {
    int lo = 255, hi = 0;
    for (size_t i = c; i < in.rgb.size(); i += 3) {
      lo = std::min<int>(lo, in.rgb[i]);
      hi = std::max<int>(hi, in.rgb[i]);
    }
    for (int v = 0; v < 256; ++v) {
      if (hi <= lo) {
        table[c][v] = static_cast<uint8_t>(v);
        continue;
      }
      const double scale = 255.0 / (hi - lo);
      const double t = std::clamp(v * scale - lo * scale, 0.0, 255.0);
      table[c][v] = static_cast<uint8_t>(t);  // numpy astype(uint8) truncates
    }
  }
  return map_channels(in, table);
}

Image equalize(const Image& in) {
  std::array<std::array<uint8_t, 256>, 3> table;
  for (int c = 0; c < 3; ++c) {
    std::array<int64_t, 256> hist{};
    for (size_t i = c; i < in.rgb.size(); i += 3) ++hist[in.rgb[i]];
    // step = sum of the non-zero bins except the last non-zero one, // 255
    int last = 255;
    while (last > 0 && hist[last] == 0) --last;
    int64_t total = 0;
    for (int v = 0; v < last; ++v) total += hist[v];
    const int64_t step = total / 255;
    if (step == 0) {
      for (int v = 0; v < 256; ++v) table[c][v] = static_cast<uint8_t>(v);
      continue;
    }
    int64_t cum = step / 2;
    for (int v = 0; v < 256; ++v) {
      table[c][v] = static_cast<uint8_t>(std::min<int64_t>(cum / step, 255));
      cum += hist[v];
    }
  }
  return map_channels(in, table);
}

Image brightness(const Image& in, double factor) {
  std::array<uint8_t, 256> t;
  for (int v = 0; v < 256; ++v)
    t[v] = static_cast<uint8_t>(std::clamp(static_cast<float>(v) * static_cast<float>(factor), 0.0f, 255.0f));
  return map_channels(in, {t, t, t});
}

Image sharpness(const Image& in, double factor) {
  if (factor == 1.0 || in.width < 3 || in.height < 3) return in;
  // Degenerate image: 3x3 smoothing with weights 1 (centre 5) / 13, rounded; borders kept.
  Image out = in;
  const int W = in.width, H = in.height;
  for (int y = 1; y < H - 1; ++y)
    for (int x = 1; x < W - 1; ++x)
      for (int c = 0; c < 3; ++c) {
        float s = 0;
        for (int dy = -1; dy <= 1; ++dy)
          for (int dx = -1; dx <= 1; ++dx) s += in.row(y + dy)[3 * (x + dx) + c] * (dx == 0 && dy == 0 ? 5.0f : 1.0f);
        const float degenerate = std::nearbyint(s / 13.0f);
        const float orig = in.row(y)[3 * x + c];
        const float v = degenerate + static_cast<float>(factor) * (orig - degenerate);
        out.row(y)[3 * x + c] = static_cast<uint8_t>(std::clamp(v, 0.0f, 255.0f));
      }
  return out;
}

Image warp_affine(const Image& in, const double m[6], uint8_t fill) {
  // Invert the forward map [a b c; d e f].
  const double det = m[0] * m[4] - m[1] * m[3];
  if (det == 0) throw Error("warp_affine: singular matrix");
  const double ia = m[4] / det, ib = -m[1] / det, id = -m[3] / det, ie = m[0] / det;
  const double ic = -(ia * m[2] + ib * m[5]), iff = -(id * m[2] + ie * m[5]);
  Image out;
  out.width = in.width;
  out.height = in.height;
  out.rgb.resize(in.rgb.size());
  auto px = [&](int x, int y, int c) -> double {
    if (x < 0 || y < 0 || x >= in.width || y >= in.height) return fill;
    return in.row(y)[3 * x + c];
  };
  for (int y = 0; y < in.height; ++y)
    for (int x = 0; x < in.width; ++x) {
      const double sx = ia * x + ib * y + ic, sy = id * x + ie * y + iff;
      const int x0 = static_cast<int>(std::floor(sx)), y0 = static_cast<int>(std::floor(sy));
      const double fx = sx - x0, fy = sy - y0;
      for (int c = 0; c < 3; ++c) {
        const double v = (1 - fy) * ((1 - fx) * px(x0, y0, c) + fx * px(x0 + 1, y0, c)) +
                         fy * ((1 - fx) * px(x0, y0 + 1, c) + fx * px(x0 + 1, y0 + 1, c));
        out.row(y)[3 * x + c] = static_cast<uint8_t>(std::clamp(std::nearbyint(v), 0.0, 255.0));
      }
    }
  return out;
}

Image rotate(const Image& in, double degrees, uint8_t fill) {
  // cv2.getRotationMatrix2D((W/2, H/2), degrees, 1): counter-clockwise for positive angles.
  const double a = degrees * M_PI / 180.0, al = std::cos(a), be = std::sin(a);
  const double cx = in.width / 2.0, cy = in.height / 2.0;
  const double m[6] = {al, be, (1 - al) * cx - be * cy, -be, al, be * cx + (1 - al) * cy};
  return warp_affine(in, m, fill);
}

Image random_resized_crop(const Image& in, int size, std::mt19937_64& rng, double min_scale, double max_scale) {
  const double area = static_cast<double>(in.width) * in.height;
  std::uniform_real_distribution<double> scale_d(min_scale, max_scale);
  std::uniform_real_distribution<double> log_ratio(std::log(3.0 / 4.0), std::log(4.0 / 3.0));
  for (int attempt = 0; attempt < 10; ++attempt) {
    const double target = area * scale_d(rng);
    const double ratio = std::exp(log_ratio(rng));
    const int w = static_cast<int>(std::lround(std::sqrt(target * ratio)));
    const int h = static_cast<int>(std::lround(std::sqrt(target / ratio)));
    if (w > 0 && h > 0 && w <= in.width && h <= in.height) {
      const int y = std::uniform_int_distribution<int>(0, in.height - h)(rng);
      const int x = std::uniform_int_distribution<int>(0, in.width - w)(rng);
      return resize_bicubic(crop(in, x, y, w, h), size, size);
    }
  }
  // Fallback: the central crop with the ratio clamped to [3/4, 4/3] (torchvision).
  const double r = static_cast<double>(in.width) / in.height;
  int w = in.width, h = in.height;
  if (r < 3.0 / 4.0) h = static_cast<int>(std::lround(w / (3.0 / 4.0)));
  else if (r > 4.0 / 3.0) w = static_cast<int>(std::lround(h * (4.0 / 3.0)));
  return resize_bicubic(crop(in, (in.width - w) / 2, (in.height - h) / 2, w, h), size, size);
}

Image random_augment(const Image& in, std::mt19937_64& rng, int n, int magnitude) {
  constexpr double kMaxLevel = 10;
  std::uniform_int_distribution<int> pick(0, 9);
  std::uniform_real_distribution<double> u(0, 1);
  Image img = in;
  for (int k = 0; k < n; ++k) {
    const int op = pick(rng);
    if (u(rng) > 0.5) continue;  // each sampled op is applied with probability 0.5
    const double level = magnitude / kMaxLevel;
    auto sign = [&](double v) { return u(rng) > 0.5 ? -v : v; };
    // clang-format off
    switch (op) {
      case 0: break;  // Identity
      case 1: img = autocontrast(img); break;
      case 2: img = equalize(img); break;
      case 3: img = brightness(img, level * 1.8 + 0.1); break;
      case 4: img = sharpness(img, level * 1.8 + 0.1); break;
      case 5: { const double s = sign(level * 0.3); const double m[6] = {1, s, 0, 0, 1, 0}; img = warp_affine(img, m); break; }
      case 6: { const double s = sign(level * 0.3); const double m[6] = {1, 0, 0, s, 1, 0}; img = warp_affine(img, m); break; }
      case 7: { const double t = sign(level * 10); const double m[6] = {1, 0, -t, 0, 1, 0}; img = warp_affine(img, m); break; }
      case 8: { const double t = sign(level * 10); const double m[6] = {1, 0, 0, 0, 1, -t}; img = warp_affine(img, m); break; }
      case 9: img = rotate(img, sign(level * 30)); break;
    }
    // clang-format on
  }
  return img;
}

}  // namespace vlmo
