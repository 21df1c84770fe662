#include "vlmo/relative_position.h"

#include <ATen/ATen.h>

#include <cmath>
#include <vector>

#include "vlmo/error.h"

namespace vlmo {

at::Tensor image_relative_position_index(int grid) {
  const int n = grid * grid;
  const int span = 2 * grid - 1;
  const int64_t nrd = static_cast<int64_t>(span) * span + 3;
  at::Tensor index = at::empty({n + 1, n + 1}, at::kLong);
  auto a = index.accessor<int64_t, 2>();
  for (int i = 0; i < n; ++i) {
    const int yi = i / grid, xi = i % grid;
    for (int j = 0; j < n; ++j) {
      const int yj = j / grid, xj = j % grid;
      a[i + 1][j + 1] = static_cast<int64_t>(yi - yj + grid - 1) * span + (xi - xj + grid - 1);
    }
  }
  for (int j = 0; j <= n; ++j) a[0][j] = nrd - 3;  // CLS query -> any key
  for (int i = 0; i <= n; ++i) a[i][0] = nrd - 2;  // any query -> CLS key
  a[0][0] = nrd - 1;
  return index;
}

at::Tensor text_relative_position_index(int text_len, int grid, int max_text_len_of_initckpt) {
  const int64_t nrd = static_cast<int64_t>(2 * grid - 1) * (2 * grid - 1) + 3;
  const int64_t all = nrd + 2 * max_text_len_of_initckpt + 2;
  const int64_t min_distance = 2 - max_text_len_of_initckpt;
  at::Tensor index = at::empty({text_len, text_len}, at::kLong);
  auto a = index.accessor<int64_t, 2>();
  for (int i = 1; i < text_len; ++i)
    for (int j = 1; j < text_len; ++j) a[i][j] = (j - i) - min_distance + nrd + 2;
  for (int j = 0; j < text_len; ++j) a[0][j] = all - 3;
  for (int i = 0; i < text_len; ++i) a[i][0] = all - 2;
  a[0][0] = all - 1;
  return index;
}

at::Tensor fusion_relative_position_index(int text_len, int grid, int max_text_len_of_initckpt) {
  const int64_t nrd = static_cast<int64_t>(2 * grid - 1) * (2 * grid - 1) + 3;
  const int img = grid * grid + 1;
  at::Tensor index = at::empty({text_len + img, text_len + img}, at::kLong);
  index.narrow(0, 0, text_len)
      .narrow(1, 0, text_len)
      .copy_(text_relative_position_index(text_len, grid, max_text_len_of_initckpt));
  index.narrow(0, text_len, img).narrow(1, text_len, img).copy_(image_relative_position_index(grid));
  index.narrow(0, 0, text_len).narrow(1, text_len, img).fill_(nrd);      // text -> image
  index.narrow(0, text_len, img).narrow(1, 0, text_len).fill_(nrd + 1);  // image -> text
  return index;
}

std::vector<double> not_a_knot_spline(const std::vector<double>& x, const std::vector<double>& y, const std::vector<double>& at) {
  const int n = static_cast<int>(x.size());
  if (n < 4 || y.size() != x.size()) throw Error("not_a_knot_spline: needs at least 4 points and as many values as abscissae");
  // Unknowns: second derivatives M[0..n-1]. Interior rows are the usual C2 conditions; the
  // first and last rows ask the third derivative to be continuous at x[1] and x[n-2].
  std::vector<double> h(n - 1);
  for (int i = 0; i + 1 < n; ++i) h[i] = x[i + 1] - x[i];
  std::vector<std::vector<double>> A(n, std::vector<double>(n, 0.0));
  std::vector<double> rhs(n, 0.0);
  A[0][0] = h[1];
  A[0][1] = -(h[0] + h[1]);
  A[0][2] = h[0];
  for (int i = 1; i + 1 < n; ++i) {
    A[i][i - 1] = h[i - 1];
    A[i][i] = 2 * (h[i - 1] + h[i]);
    A[i][i + 1] = h[i];
    rhs[i] = 6 * ((y[i + 1] - y[i]) / h[i] - (y[i] - y[i - 1]) / h[i - 1]);
  }
  A[n - 1][n - 3] = h[n - 2];
  A[n - 1][n - 2] = -(h[n - 3] + h[n - 2]);
  A[n - 1][n - 1] = h[n - 3];
  // Gaussian elimination with partial pivoting (n is small: at most a few dozen).
  for (int c = 0; c < n; ++c) {
    int p = c;
    for (int r = c + 1; r < n; ++r)
      if (std::fabs(A[r][c]) > std::fabs(A[p][c])) p = r;
    std::swap(A[c], A[p]);
    std::swap(rhs[c], rhs[p]);
    for (int r = c + 1; r < n; ++r) {
      const double f = A[r][c] / A[c][c];
      if (f == 0) continue;
      for (int k = c; k < n; ++k) A[r][k] -= f * A[c][k];
      rhs[r] -= f * rhs[c];
    }
  }
  std::vector<double> M(n);
  for (int r = n - 1; r >= 0; --r) {
    double s = rhs[r];
    for (int k = r + 1; k < n; ++k) s -= A[r][k] * M[k];
    M[r] = s / A[r][r];
  }
  std::vector<double> out;
  out.reserve(at.size());
  for (double t : at) {
    t = std::min(std::max(t, x.front()), x.back());
    int i = 0;
    while (i < n - 2 && t > x[i + 1]) ++i;
    const double a = x[i + 1] - t, b = t - x[i], hi = h[i];
    out.push_back(M[i] * a * a * a / (6 * hi) + M[i + 1] * b * b * b / (6 * hi) + (y[i] / hi - M[i] * hi / 6) * a +
                  (y[i + 1] / hi - M[i + 1] * hi / 6) * b);
  }
  return out;
}

at::Tensor resize_relative_position_table(const at::Tensor& table, int src_grid, int dst_grid) {
  const int src_size = 2 * src_grid - 1, dst_size = 2 * dst_grid - 1;
  const int64_t src_rows = static_cast<int64_t>(src_size) * src_size;
  if (table.dim() != 2 || table.size(0) < src_rows)
    throw Error(cat("relative_position_bias_table: shape ", table.sizes(), " has fewer rows than a ", src_grid, "x", src_grid,
                    " patch grid needs"));
  if (src_grid == dst_grid) return table.clone();
  // BEiT: find the ratio q of a geometric progression whose src_size/2 steps reach dst_size/2,
  // by bisection (the last midpoint is the q that is used, as in the official code).
  auto progression = [](double a, double r, int n) { return a * (1.0 - std::pow(r, n)) / (1.0 - r); };
  double left = 1.01, right = 1.5, q = 0;
  while (right - left > 1e-6) {
    q = (left + right) / 2.0;
    if (progression(1, q, src_size / 2) > dst_size / 2) right = q;
    else left = q;
  }
  std::vector<double> dis;
  double cur = 1;
  for (int i = 0; i < src_size / 2; ++i) {
    dis.push_back(cur);
    cur += std::pow(q, i + 1);
  }
  std::vector<double> coords;
  for (auto it = dis.rbegin(); it != dis.rend(); ++it) coords.push_back(-*it);
  coords.push_back(0);
  coords.insert(coords.end(), dis.begin(), dis.end());
  const double t = dst_size / 2;  // integer division, as the official `dst_size // 2.0`
  std::vector<double> targets;
  for (double v = -t; v < t + 0.1; v += 1.0) targets.push_back(v);
  if (static_cast<int>(targets.size()) != dst_size) throw Error("resize_relative_position_table: internal grid size mismatch");

  const int64_t cols = table.size(1);
  at::Tensor src = table.narrow(0, 0, src_rows).to(at::kDouble).contiguous();
  at::Tensor out = at::empty({static_cast<int64_t>(dst_size) * dst_size, cols}, at::kDouble);
  auto s = src.accessor<double, 2>();
  auto o = out.accessor<double, 2>();
  // The interpolating bicubic spline on a rectangular grid is the tensor product of 1-D
  // not-a-knot splines: interpolate every source row along x, then every column along y.
  for (int64_t c = 0; c < cols; ++c) {
    std::vector<std::vector<double>> rows(src_size);  // [src y][dst x]
    for (int yi = 0; yi < src_size; ++yi) {
      std::vector<double> v(src_size);
      for (int xi = 0; xi < src_size; ++xi) v[xi] = s[yi * src_size + xi][c];
      rows[yi] = not_a_knot_spline(coords, v, targets);
    }
    for (int xo = 0; xo < dst_size; ++xo) {
      std::vector<double> v(src_size);
      for (int yi = 0; yi < src_size; ++yi) v[yi] = rows[yi][xo];
      const auto col = not_a_knot_spline(coords, v, targets);
      for (int yo = 0; yo < dst_size; ++yo) o[yo * dst_size + xo][c] = col[yo];
    }
  }
  at::Tensor extra = table.narrow(0, src_rows, table.size(0) - src_rows);
  return at::cat({out.to(table.scalar_type()), extra}, 0);
}

}  // namespace vlmo
