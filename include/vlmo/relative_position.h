// The merged relative-position table's index layout (reference §1.4) and its resampling to
// another image size (BEiT geometric-progression bicubic spline, as the official loader does).
#pragma once
#include <ATen/Tensor.h>

namespace vlmo {

// Image-only index [W²+1, W²+1]: BEiT 2-D patch distances plus the three image-CLS rows.
at::Tensor image_relative_position_index(int grid);
// Text-only index [L, L]: 1-D distances counted from the first non-CLS token plus three
// text-CLS rows; `max_text_len_of_initckpt` fixes where the text rows sit in the table.
at::Tensor text_relative_position_index(int text_len, int grid, int max_text_len_of_initckpt);
// Fusion index [(L+W²+1)]²: text block, image block, and one constant row per direction.
at::Tensor fusion_relative_position_index(int text_len, int grid, int max_text_len_of_initckpt);

// Resamples the table's image rows from a grid of `src_grid` to `dst_grid` patches per side,
// keeping the remaining rows (CLS, cross-modal, text) unchanged; returns the new table.
at::Tensor resize_relative_position_table(const at::Tensor& table, int src_grid, int dst_grid);

// 1-D not-a-knot cubic spline through (x[i], y[i]) evaluated at `at` (clamped to the range):
// the interpolating spline FITPACK builds with s = 0, which scipy's interp2d(kind='cubic') uses.
// Exposed for tests.
std::vector<double> not_a_knot_spline(const std::vector<double>& x, const std::vector<double>& y, const std::vector<double>& at);

}  // namespace vlmo
