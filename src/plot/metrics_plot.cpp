// Learning curves with cairo (vlmo/metrics_plot.h): one drawing routine, two surfaces (image ->
// PNG, SVG).
#include "vlmo/metrics_plot.h"

#include <cairo-svg.h>
#include <cairo.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>

#include "vlmo/error.h"
#include "vlmo/files.h"

namespace vlmo {
namespace fs = std::filesystem;

namespace {

// Tableau-10 line colours (RGB 0-255).
constexpr unsigned char kPalette[][3] = {{31, 119, 180}, {255, 127, 14},  {44, 160, 44},   {214, 39, 40},  {148, 103, 189},
                                         {140, 86, 75},  {227, 119, 194}, {127, 127, 127}, {188, 189, 34}, {23, 190, 207}};

std::string run_label(const std::string& file) {
  std::string stem = fs::path(file).filename().string();
  for (const char* ext : {".jsonl", ".metrics"})
    if (stem.size() > std::strlen(ext) && stem.compare(stem.size() - std::strlen(ext), std::string::npos, ext) == 0)
      stem.resize(stem.size() - std::strlen(ext));
  return stem;
}

// "Nice" tick step for a range: 1, 2 or 5 times a power of ten, about `n` ticks.
double tick_step(double span, int n) {
  if (!(span > 0)) return 1;
  const double raw = span / n, mag = std::pow(10.0, std::floor(std::log10(raw)));
  const double f = raw / mag;
  return (f < 1.5 ? 1 : f < 3.5 ? 2 : f < 7.5 ? 5 : 10) * mag;
}

std::string tick_text(double v, double step) {
  char buf[32];
  if (v == 0) return "0";
  if (std::fabs(v) >= 1e5 || std::fabs(v) < 1e-3 || step < 1e-3) std::snprintf(buf, sizeof buf, "%.2g", v);
  else if (step >= 1) std::snprintf(buf, sizeof buf, "%.0f", v);
  else std::snprintf(buf, sizeof buf, "%.*f", static_cast<int>(std::ceil(-std::log10(step))), v);
  return buf;
}

void draw(cairo_t* cr, const std::string& title, const std::vector<Series>& series, const PlotOptions& o) {
  const double W = o.width, H = o.height, left = 70, right = 20, top = 40, bottom = 50;
  cairo_set_source_rgb(cr, 1, 1, 1);
  cairo_paint(cr);
  double x0 = INFINITY, x1 = -INFINITY, y0 = INFINITY, y1 = -INFINITY;
  for (const auto& s : series)
    for (const auto& [x, y] : s.points)
      if (std::isfinite(x) && std::isfinite(y))
        x0 = std::min(x0, x), x1 = std::max(x1, x), y0 = std::min(y0, y), y1 = std::max(y1, y);
  if (!std::isfinite(x0)) x0 = 0, x1 = 1, y0 = 0, y1 = 1;
  if (x1 == x0) x1 = x0 + 1;
  if (y1 == y0) y0 -= 0.5, y1 += 0.5;
  const double pad = (y1 - y0) * 0.05;
  y0 -= pad, y1 += pad;
  const double pw = W - left - right, ph = H - top - bottom;
  auto px = [&](double x) { return left + (x - x0) / (x1 - x0) * pw; };
  auto py = [&](double y) { return top + (1 - (y - y0) / (y1 - y0)) * ph; };

  cairo_select_font_face(cr, "sans-serif", CAIRO_FONT_SLANT_NORMAL, CAIRO_FONT_WEIGHT_NORMAL);
  cairo_set_font_size(cr, 12);
  // Grid and tick labels.
  cairo_set_line_width(cr, 1);
  const double xs = tick_step(x1 - x0, 8), ys = tick_step(y1 - y0, 6);
  for (double v = std::ceil(x0 / xs) * xs; v <= x1 + 1e-9 * xs; v += xs) {
    cairo_set_source_rgb(cr, 0.9, 0.9, 0.9);
    cairo_move_to(cr, px(v), top), cairo_line_to(cr, px(v), top + ph), cairo_stroke(cr);
    const std::string t = tick_text(v, xs);
    cairo_text_extents_t e;
    cairo_text_extents(cr, t.c_str(), &e);
    cairo_set_source_rgb(cr, 0.2, 0.2, 0.2);
    cairo_move_to(cr, px(v) - e.width / 2, top + ph + 16), cairo_show_text(cr, t.c_str());
  }
  for (double v = std::ceil(y0 / ys) * ys; v <= y1 + 1e-9 * ys; v += ys) {
    cairo_set_source_rgb(cr, 0.9, 0.9, 0.9);
    cairo_move_to(cr, left, py(v)), cairo_line_to(cr, left + pw, py(v)), cairo_stroke(cr);
    const std::string t = tick_text(v, ys);
    cairo_text_extents_t e;
    cairo_text_extents(cr, t.c_str(), &e);
    cairo_set_source_rgb(cr, 0.2, 0.2, 0.2);
    cairo_move_to(cr, left - 6 - e.width, py(v) + e.height / 2), cairo_show_text(cr, t.c_str());
  }
  cairo_set_source_rgb(cr, 0.3, 0.3, 0.3);
  cairo_rectangle(cr, left, top, pw, ph), cairo_stroke(cr);
  cairo_move_to(cr, left + pw / 2 - 12, H - 12), cairo_show_text(cr, "step");
  cairo_set_font_size(cr, 15);
  cairo_move_to(cr, left, 24), cairo_show_text(cr, title.c_str());

  // Lines, clipped to the plot area.
  cairo_save(cr);
  cairo_rectangle(cr, left, top, pw, ph), cairo_clip(cr);
  cairo_set_line_width(cr, 1.8);
  for (size_t i = 0; i < series.size(); ++i) {
    const auto* c = kPalette[i % 10];
    cairo_set_source_rgb(cr, c[0] / 255.0, c[1] / 255.0, c[2] / 255.0);
    bool open = false;
    for (const auto& [x, y] : series[i].points) {
      if (!std::isfinite(x) || !std::isfinite(y)) {
        open = false;
        continue;
      }
      if (open) cairo_line_to(cr, px(x), py(y));
      else cairo_move_to(cr, px(x), py(y)), open = true;
    }
    cairo_stroke(cr);
    if (series[i].points.size() == 1) {  // a single value (e.g. one validation): a dot
      cairo_arc(cr, px(series[i].points[0].first), py(series[i].points[0].second), 3, 0, 2 * M_PI);
      cairo_fill(cr);
    }
  }
  cairo_restore(cr);
  // Legend (top right): a filled swatch of the exact line colour and the run's label.
  cairo_set_font_size(cr, 12);
  for (size_t i = 0; i < series.size(); ++i) {
    cairo_text_extents_t e;
    cairo_text_extents(cr, series[i].label.c_str(), &e);
    const double ly = top + 10 + 18 * static_cast<double>(i), lx = left + pw - e.x_advance - 36;
    cairo_set_source_rgba(cr, 1, 1, 1, 0.85);
    cairo_rectangle(cr, lx - 4, ly - 2, e.x_advance + 36, 16), cairo_fill(cr);
    const auto* c = kPalette[i % 10];
    cairo_set_source_rgb(cr, c[0] / 255.0, c[1] / 255.0, c[2] / 255.0);
    cairo_rectangle(cr, lx, ly + 2, 20, 8), cairo_fill(cr);
    cairo_set_source_rgb(cr, 0.1, 0.1, 0.1);
    cairo_move_to(cr, lx + 26, ly + 11), cairo_show_text(cr, series[i].label.c_str());
  }
}

void check(cairo_status_t status, const std::string& path) {
  if (status != CAIRO_STATUS_SUCCESS) throw Error(cat(path, ": cannot write the chart (", cairo_status_to_string(status), ")"));
}

}  // namespace

std::map<std::string, std::vector<Series>> read_metric_series(const std::vector<std::string>& files) {
  // key -> (run label -> points), runs in first-seen order per key.
  std::map<std::string, std::vector<Series>> out;
  for (const auto& file : files) {
    std::ifstream in = open_input(file, "metrics (JSON lines)");
    std::map<std::string, std::map<std::string, std::vector<std::pair<double, double>>>> by_stage;  // stage -> key -> pts
    std::vector<std::string> stages;
    std::string line;
    for (size_t n = 1; std::getline(in, line); ++n) {
      if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
      nlohmann::json j;
      try {
        j = nlohmann::json::parse(line);
      } catch (const std::exception& e) {
        throw Error(cat(file, ":", n, ": not valid JSON (", e.what(), ")"));
      }
      if (!j.is_object()) throw Error(cat(file, ":", n, ": expected a JSON object"));
      if (!j.contains("step") || !j["step"].is_number()) continue;  // e.g. event lines without a step
      const double step = j["step"].get<double>();
      const std::string stage = j.contains("stage") && j["stage"].is_string() ? j["stage"].get<std::string>() : "";
      if (!by_stage.count(stage)) stages.push_back(stage);
      auto& keys = by_stage[stage];
      for (auto it = j.begin(); it != j.end(); ++it) {
        if (it.key() == "step" || it.key() == "signal") continue;
        if (it->is_number()) keys[it.key()].emplace_back(step, it->get<double>());
        else if (it->is_null() && keys.count(it.key())) keys[it.key()].emplace_back(step, NAN);  // NaN was logged as null
      }
    }
    for (const auto& stage : stages)
      for (auto& [key, points] : by_stage[stage]) {
        const std::string label = run_label(file) + (stages.size() > 1 && !stage.empty() ? ":" + stage : "");
        out[key].push_back({label, std::move(points)});
      }
  }
  return out;
}

void draw_chart(const std::string& title, const std::vector<Series>& series, const std::string& stem, const PlotOptions& o) {
  if (o.width < 200 || o.height < 150 || o.width > 10000 || o.height > 10000)
    throw Error(cat("chart size ", o.width, "x", o.height, ": expected 200..10000 x 150..10000"));
  {
    cairo_surface_t* s = cairo_image_surface_create(CAIRO_FORMAT_ARGB32, o.width, o.height);
    cairo_t* cr = cairo_create(s);
    draw(cr, title, series, o);
    cairo_destroy(cr);
    const cairo_status_t st = cairo_surface_write_to_png(s, (stem + ".png").c_str());
    cairo_surface_destroy(s);
    check(st, stem + ".png");
  }
  {
    cairo_surface_t* s = cairo_svg_surface_create((stem + ".svg").c_str(), o.width, o.height);
    cairo_t* cr = cairo_create(s);
    draw(cr, title, series, o);
    cairo_destroy(cr);
    cairo_surface_finish(s);
    const cairo_status_t st = cairo_surface_status(s);
    cairo_surface_destroy(s);
    check(st, stem + ".svg");
  }
}

std::vector<std::string> plot_metrics(const std::vector<std::string>& inputs, const std::string& out_dir, const PlotOptions& o) {
  std::vector<std::string> files;
  for (const auto& in : inputs) {
    std::error_code ec;
    if (fs::is_directory(in, ec)) {
      std::vector<std::string> found;
      for (const auto& e : fs::directory_iterator(in, ec))
        if (e.is_regular_file() && e.path().extension() == ".jsonl") found.push_back(e.path().string());
      std::sort(found.begin(), found.end());
      if (found.empty()) throw Error(cat(in, ": no *.jsonl metrics files in this folder"));
      files.insert(files.end(), found.begin(), found.end());
    } else {
      files.push_back(in);
    }
  }
  if (files.empty()) throw Error("no metrics files given");
  const auto series = read_metric_series(files);
  if (series.empty()) throw Error("the metrics files hold no numeric values with a step");
  std::error_code ec;
  fs::create_directories(out_dir, ec);
  if (ec) throw Error(cat(out_dir, ": cannot create the output folder (", ec.message(), ")"));
  std::vector<std::string> written;
  for (const auto& [key, runs] : series) {
    std::string name = key;
    for (char& c : name)
      if (!std::isalnum(static_cast<unsigned char>(c)) && c != '_' && c != '-') c = '_';
    const std::string stem = (fs::path(out_dir) / name).string();
    draw_chart(key, runs, stem, o);
    written.push_back(stem + ".png");
    written.push_back(stem + ".svg");
  }
  return written;
}

}  // namespace vlmo
