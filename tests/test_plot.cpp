// vlmo plot: learning curves as PNG and SVG of the requested size, every run overlaid.
#include <gtest/gtest.h>

#include <filesystem>
#include <regex>

#include "test_util.h"
#include "vlmo/image.h"
#include "vlmo/metrics_plot.h"

using namespace vlmo;
using vlmo::test::expect_error;

namespace {

uint32_t be32(const std::string& b, size_t at) {
  return (static_cast<uint32_t>(static_cast<unsigned char>(b[at])) << 24) |
         (static_cast<uint32_t>(static_cast<unsigned char>(b[at + 1])) << 16) |
         (static_cast<uint32_t>(static_cast<unsigned char>(b[at + 2])) << 8) | static_cast<unsigned char>(b[at + 3]);
}

bool has_pixel(const Image& img, int r, int g, int b) {
  for (int i = 0; i < img.width * img.height; ++i)
    if (img.rgb[3 * i] == r && img.rgb[3 * i + 1] == g && img.rgb[3 * i + 2] == b) return true;
  return false;
}

}  // namespace

TEST(Plot, OneChartPerMetricWithEveryRunAsValidPngAndSvg) {
  const std::string dir = vlmo::test::temp_dir();
  // Run a: two stages in one file, a NaN loss (logged as null), a validation line, an event line.
  vlmo::test::write_file(dir + "/a.metrics.jsonl",
                         R"({"stage":"s1","step":1,"loss":3.0,"lr":0.0}
{"stage":"s1","step":2,"loss":null,"lr":1e-4}
{"stage":"s1","step":3,"loss":2.0,"lr":2e-4}
{"stage":"s1","step":3,"val_acc":0.5}
{"stage":"s2","step":1,"loss":5.0,"lr":1e-4}
{"stage":"s1","step":3,"event":"interrupted","signal":15}
)");
  vlmo::test::write_file(dir + "/b.jsonl",
                         "{\"stage\":\"s1\",\"step\":1,\"loss\":4.0}\n{\"stage\":\"s1\",\"step\":2,\"loss\":1.5}\n");
  const auto series = read_metric_series({dir + "/a.metrics.jsonl", dir + "/b.jsonl"});
  ASSERT_EQ(series.at("loss").size(), 3u);  // a:s1, a:s2, b
  EXPECT_EQ(series.at("loss")[0].label, "a:s1");
  EXPECT_EQ(series.at("loss")[2].label, "b");
  EXPECT_TRUE(std::isnan(series.at("loss")[0].points[1].second));
  EXPECT_EQ(series.count("signal"), 0u);
  EXPECT_EQ(series.at("val_acc")[0].points, (std::vector<std::pair<double, double>>{{3, 0.5}}));

  PlotOptions o;
  o.width = 640;
  o.height = 360;
  const auto written = plot_metrics({dir}, dir + "/plots", o);  // the folder stands for its *.jsonl
  EXPECT_EQ(written.size(), 2u * 3);                            // loss, lr, val_acc
  const std::string png = vlmo::test::read_file(dir + "/plots/loss.png");
  ASSERT_GT(png.size(), 33u);
  EXPECT_EQ(png.substr(0, 8), std::string("\x89PNG\r\n\x1a\n", 8));
  EXPECT_EQ(png.substr(12, 4), "IHDR");
  EXPECT_EQ(be32(png, 16), 640u);
  EXPECT_EQ(be32(png, 20), 360u);
  // Decoded, it shows each run's legend swatch in its exact colour.
  const Image img = decode_image(png, "loss.png");
  EXPECT_EQ(img.width, 640);
  EXPECT_EQ(img.height, 360);
  EXPECT_TRUE(has_pixel(img, 31, 119, 180));
  EXPECT_TRUE(has_pixel(img, 255, 127, 14));
  EXPECT_TRUE(has_pixel(img, 44, 160, 44));
  EXPECT_FALSE(has_pixel(img, 214, 39, 40));  // no fourth run
  const std::string svg = vlmo::test::read_file(dir + "/plots/loss.svg");
  EXPECT_NE(svg.find("<svg"), std::string::npos);
  // Cairo 1.16 (Debian 12) writes the size in points, 1.18 (Debian 13) unitless: the same 640 x 360.
  EXPECT_TRUE(std::regex_search(svg, std::regex("width=\"640(pt)?\" height=\"360(pt)?\" viewBox=\"0 0 640 360\"")))
      << svg.substr(0, 300);
  EXPECT_NE(svg.find("</svg>"), std::string::npos);
}

TEST(Plot, BadInputsAreNamed) {
  const std::string dir = vlmo::test::temp_dir();
  vlmo::test::write_file(dir + "/bad.jsonl", "{\"step\":1,\"loss\":1}\n{\"step\":2,\n");
  expect_error([&] { read_metric_series({dir + "/bad.jsonl"}); }, {"bad.jsonl:2", "not valid JSON"});
  std::filesystem::create_directories(dir + "/empty");
  expect_error([&] { plot_metrics({dir + "/empty"}, dir + "/out"); }, {"no *.jsonl metrics files"});
  expect_error([&] { plot_metrics({dir + "/missing.jsonl"}, dir + "/out"); }, {"missing.jsonl", "cannot open"});
  vlmo::test::write_file(dir + "/nostep.jsonl", "{\"loss\":1}\n");
  expect_error([&] { plot_metrics({dir + "/nostep.jsonl"}, dir + "/out"); }, {"no numeric values with a step"});
}
