// Learning curves from JSON-lines metrics (the trainer's --metrics files): one chart per metric
// (each loss and accuracy, the learning rate, samples/s, validation values), several runs
// overlaid, written as PNG and SVG with cairo. Built as its own target (vlmo_plot) so that
// libvlmo does not depend on cairo.
#pragma once
#include <map>
#include <string>
#include <utility>
#include <vector>

namespace vlmo {

// One line of a chart: (step, value) points of one run (a metrics file, and its stage when the
// file holds several); non-finite values break the line.
struct Series {
  std::string label;
  std::vector<std::pair<double, double>> points;
};

// Every numeric field but "step" of the metrics files, as series per run: key -> series.
// Files that cannot be read, or lines that are not JSON objects, are errors naming FILE:LINE.
std::map<std::string, std::vector<Series>> read_metric_series(const std::vector<std::string>& files);

struct PlotOptions {
  int width = 900, height = 500;  // pixels (PNG) / points (SVG)
};

// Draws one chart to `<path_stem>.png` and `<path_stem>.svg`.
void draw_chart(const std::string& title, const std::vector<Series>& series, const std::string& path_stem,
                const PlotOptions& options = {});

// The metrics files given (a folder stands for its *.jsonl files), one chart per metric into
// `out_dir` (created if missing); returns the files written.
std::vector<std::string> plot_metrics(const std::vector<std::string>& inputs, const std::string& out_dir,
                                      const PlotOptions& options = {});

}  // namespace vlmo
