// PIL's ImagingResample for 8-bit RGB with the bicubic filter, reproduced step by step:
// double-precision weights per output pixel, normalised, converted to 22-bit fixed point;
// the horizontal pass runs first over just the rows the vertical pass needs; each pass rounds
// (acc + 2^21) >> 22 and clamps to 0..255.
#include <cmath>
#include <cstring>

#include "vlmo/error.h"
#include "vlmo/image.h"

namespace vlmo {
namespace {

constexpr int kPrecisionBits = 32 - 8 - 2;

double bicubic(double x) {
  constexpr double a = -0.5;
  if (x < 0) x = -x;
  if (x < 1) return ((a + 2) * x - (a + 3)) * x * x + 1;
  if (x < 2) return (((x - 5) * x + 8) * x - 4) * a;
  return 0;
}

struct Coefficients {
  int ksize = 0;
  std::vector<int> bounds;  // per output pixel: first input index, tap count
  std::vector<int32_t> k;   // out_size x ksize fixed-point weights
};

Coefficients precompute(int in_size, int out_size) {
  const double scale = static_cast<double>(in_size) / out_size;
  const double filterscale = std::max(scale, 1.0);
  const double support = 2.0 * filterscale;
  Coefficients c;
  c.ksize = static_cast<int>(std::ceil(support)) * 2 + 1;
  c.bounds.resize(2 * out_size);
  c.k.assign(static_cast<size_t>(out_size) * c.ksize, 0);
  std::vector<double> w(c.ksize);
  for (int xx = 0; xx < out_size; ++xx) {
    const double center = (xx + 0.5) * scale;
    const double ss = 1.0 / filterscale;
    int xmin = static_cast<int>(center - support + 0.5);
    if (xmin < 0) xmin = 0;
    int xmax = static_cast<int>(center + support + 0.5);
    if (xmax > in_size) xmax = in_size;
    xmax -= xmin;
    double ww = 0;
    for (int x = 0; x < xmax; ++x) {
      w[x] = bicubic((x + xmin - center + 0.5) * ss);
      ww += w[x];
    }
    for (int x = 0; x < xmax; ++x) {
      const double v = ww != 0.0 ? w[x] / ww : w[x];
      c.k[static_cast<size_t>(xx) * c.ksize + x] =
          static_cast<int32_t>(v < 0 ? -0.5 + v * (1 << kPrecisionBits) : 0.5 + v * (1 << kPrecisionBits));
    }
    c.bounds[2 * xx] = xmin;
    c.bounds[2 * xx + 1] = xmax;
  }
  return c;
}

inline uint8_t clip8(int32_t v) {
  if (v >= (1 << kPrecisionBits << 8)) return 255;
  if (v <= 0) return 0;
  return static_cast<uint8_t>(v >> kPrecisionBits);
}

// Rows [row0, row0 + rows) of `in`, resampled horizontally to `width`.
Image horizontal(const Image& in, int row0, int rows, int width, const Coefficients& c) {
  Image out;
  out.width = width;
  out.height = rows;
  out.rgb.resize(static_cast<size_t>(width) * rows * 3);
  for (int y = 0; y < rows; ++y) {
    const uint8_t* src = in.row(row0 + y);
    uint8_t* dst = out.row(y);
    for (int xx = 0; xx < width; ++xx) {
      const int xmin = c.bounds[2 * xx], n = c.bounds[2 * xx + 1];
      const int32_t* k = &c.k[static_cast<size_t>(xx) * c.ksize];
      int32_t s0 = 1 << (kPrecisionBits - 1), s1 = s0, s2 = s0;
      const uint8_t* p = src + 3 * xmin;
      for (int x = 0; x < n; ++x, p += 3) {
        s0 += p[0] * k[x];
        s1 += p[1] * k[x];
        s2 += p[2] * k[x];
      }
      dst[3 * xx] = clip8(s0);
      dst[3 * xx + 1] = clip8(s1);
      dst[3 * xx + 2] = clip8(s2);
    }
  }
  return out;
}

Image vertical(const Image& in, int height, const Coefficients& c, int row_shift) {
  Image out;
  out.width = in.width;
  out.height = height;
  out.rgb.resize(static_cast<size_t>(in.width) * height * 3);
  const size_t stride = static_cast<size_t>(in.width) * 3;
  std::vector<int32_t> acc(stride);
  for (int yy = 0; yy < height; ++yy) {
    const int ymin = c.bounds[2 * yy] - row_shift, n = c.bounds[2 * yy + 1];
    const int32_t* k = &c.k[static_cast<size_t>(yy) * c.ksize];
    std::fill(acc.begin(), acc.end(), 1 << (kPrecisionBits - 1));
    for (int y = 0; y < n; ++y) {
      const uint8_t* src = in.row(ymin + y);
      const int32_t ky = k[y];
      for (size_t i = 0; i < stride; ++i) acc[i] += src[i] * ky;
    }
    uint8_t* dst = out.row(yy);
    for (size_t i = 0; i < stride; ++i) dst[i] = clip8(acc[i]);
  }
  return out;
}

}  // namespace

Image resize_bicubic(const Image& in, int width, int height) {
  if (width <= 0 || height <= 0) throw Error(cat("resize: target size ", width, "x", height, " is empty"));
  if (in.width <= 0 || in.height <= 0) throw Error("resize: the input image is empty");
  const bool need_h = width != in.width, need_v = height != in.height;
  if (!need_h && !need_v) return in;
  const Coefficients cv = precompute(in.height, height);
  if (!need_h) return vertical(in, height, cv, 0);
  const Coefficients ch = precompute(in.width, width);
  if (!need_v) return horizontal(in, 0, in.height, width, ch);
  // Only the input rows the vertical pass reads go through the horizontal pass.
  const int first = cv.bounds[0];
  const int last = cv.bounds[2 * height - 2] + cv.bounds[2 * height - 1];
  const Image tmp = horizontal(in, first, last - first, width, ch);
  return vertical(tmp, height, cv, first);
}

Image crop(const Image& in, int x, int y, int width, int height) {
  if (x < 0 || y < 0 || width <= 0 || height <= 0 || x + width > in.width || y + height > in.height)
    throw Error(cat("crop (", x, ", ", y, ", ", width, "x", height, ") lies outside the ", in.width, "x", in.height, " image"));
  Image out;
  out.width = width;
  out.height = height;
  out.rgb.resize(static_cast<size_t>(width) * height * 3);
  for (int r = 0; r < height; ++r) std::memcpy(out.row(r), in.row(y + r) + 3 * x, static_cast<size_t>(width) * 3);
  return out;
}

Image flip_horizontal(const Image& in) {
  Image out = in;
  for (int y = 0; y < in.height; ++y) {
    const uint8_t* s = in.row(y);
    uint8_t* d = out.row(y);
    for (int x = 0; x < in.width; ++x) std::memcpy(d + 3 * x, s + 3 * (in.width - 1 - x), 3);
  }
  return out;
}

}  // namespace vlmo
