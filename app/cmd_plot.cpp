// vlmo plot: learning curves from JSON-lines metrics to PNG and SVG (vlmo/metrics_plot.h).
#include <iostream>
#include <nlohmann/json.hpp>

#include "cli.h"
#include "vlmo/error.h"
#include "vlmo/metrics_plot.h"

namespace vlmo::cli {
namespace {

int run_plot(const Args& a) {
  PlotOptions o;
  o.width = a.get_int("width");
  o.height = a.get_int("height");
  const std::vector<std::string> written = plot_metrics(a.positional, a.get("out"), o);
  if (a.get_flag("json")) {
    std::cout << nlohmann::json{{"out", a.get("out")}, {"files", written}}.dump() << "\n";
  } else {
    std::cout << "wrote " << written.size() / 2 << " charts (" << o.width << "x" << o.height << " px PNG + SVG) to "
              << a.get("out") << "/\n";
  }
  return 0;
}

}  // namespace

Command plot_command() {
  Command c{"plot",
            "Draw learning curves from JSON-lines metrics (pretrain / finetune --metrics, the demo's "
            "*.metrics.jsonl): one chart per metric (losses, accuracies, lr, samples/s, validation), "
            "every run overlaid, as PNG and SVG files.",
            "vlmo plot RUN_DIR_OR_METRICS.jsonl... [--out DIR]"};
  c.options = {{"out", "plots", "folder for the charts (created if missing)"},
               integer_option("width", "900", "chart width in pixels", 200, 10000),
               integer_option("height", "500", "chart height in pixels", 150, 10000),
               {"json", "false", "print the files written as JSON", true}};
  c.min_positional = 1;
  c.max_positional = 1u << 20;
  c.run = run_plot;
  return c;
}

}  // namespace vlmo::cli
