// JSON-lines files: one JSON value per non-blank line; errors name the file and the line.
#pragma once
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace vlmo {

struct JsonLine {
  size_t line;  // 1-based line number, for error messages
  nlohmann::json value;
};

std::vector<JsonLine> read_json_lines(const std::string& path);

}  // namespace vlmo
