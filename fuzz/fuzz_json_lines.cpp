// JSON inputs: JSON-lines requests, Karpathy split files and NLVR2 annotation lines.
#include "fuzz_util.h"
#include "vlmo/downstream_data.h"
#include "vlmo/json_lines.h"
#include "vlmo/sources.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string& path = vlmo::fuzz::write_temp(data, size, ".json");
  vlmo::fuzz::expect_only_errors([&] { vlmo::read_json_lines(path); });
  vlmo::fuzz::expect_only_errors([&] { vlmo::read_karpathy(path, "root"); });
  vlmo::fuzz::expect_only_errors([&] { vlmo::read_nlvr2(path, "root", "dev"); });
  return 0;
}
