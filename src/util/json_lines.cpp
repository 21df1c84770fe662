#include "vlmo/json_lines.h"

#include <fstream>

#include "vlmo/error.h"
#include "vlmo/files.h"

namespace vlmo {

std::vector<JsonLine> read_json_lines(const std::string& path) {
  std::ifstream in = open_input(path, "JSON-lines");
  std::vector<JsonLine> out;
  std::string line;
  for (size_t n = 1; std::getline(in, line); ++n) {
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    try {
      out.push_back({n, nlohmann::json::parse(line)});
    } catch (const std::exception& e) {
      throw Error(cat(path, ":", n, ": not valid JSON (", e.what(), ")"));
    }
  }
  return out;
}

}  // namespace vlmo
