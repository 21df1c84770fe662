// Typed option values: integers and numbers are parsed whole and range-checked as their option
// declares, with one message naming the option (see cli.h).
#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cmath>
#include <cstdlib>

#include "cli.h"
#include "vlmo/error.h"

namespace vlmo::cli {

Option integer_option(std::string name, std::string default_value, std::string help, int64_t min, int64_t max) {
  Option o{std::move(name), std::move(default_value), std::move(help)};
  o.kind = Option::Kind::kInteger;
  o.int_min = min;
  o.int_max = max;
  return o;
}

Option number_option(std::string name, std::string default_value, std::string help, double min, double max) {
  Option o{std::move(name), std::move(default_value), std::move(help)};
  o.kind = Option::Kind::kNumber;
  o.num_min = min;
  o.num_max = max;
  return o;
}

Option choice_option(std::string name, std::string default_value, std::string help, std::vector<std::string> choices) {
  Option o{std::move(name), std::move(default_value), std::move(help)};
  o.choices = std::move(choices);
  return o;
}

namespace {

[[noreturn]] void bad_number(const std::string& name, const std::string& v, const char* expected) {
  throw Error(cat("option --", name, ": expected ", expected, ", got \"", v, "\""));
}

int64_t parse_integer(const Option& o, const std::string& v) {
  errno = 0;
  char* end = nullptr;
  const long long x = v.empty() ? 0 : std::strtoll(v.c_str(), &end, 10);
  if (v.empty() || *end != '\0' || std::isspace(static_cast<unsigned char>(v[0]))) bad_number(o.name, v, "a whole number");
  if (errno == ERANGE || x < o.int_min || x > o.int_max) {
    if (o.int_max != std::numeric_limits<int64_t>::max())
      throw Error(cat("option --", o.name, ": must be between ", o.int_min, " and ", o.int_max, ", got ", v));
    if (errno != ERANGE && x < o.int_min) throw Error(cat("option --", o.name, ": must be at least ", o.int_min, ", got ", v));
    throw Error(cat("option --", o.name, ": ", v, " is out of range"));
  }
  return x;
}

double parse_number(const Option& o, const std::string& v) {
  errno = 0;
  char* end = nullptr;
  const double x = v.empty() ? 0 : std::strtod(v.c_str(), &end);
  if (v.empty() || *end != '\0' || std::isspace(static_cast<unsigned char>(v[0])) || !std::isfinite(x))
    bad_number(o.name, v, "a finite number");
  if (x < o.num_min || x > o.num_max)
    throw Error(cat("option --", o.name, ": must be between ", o.num_min, " and ", o.num_max, ", got ", v));
  return x;
}

}  // namespace

const Option& declared_option(const Args& a, const std::string& name, Option::Kind kind) {
  auto it = a.declared.find(name);
  if (it == a.declared.end() || it->second.kind != kind)
    throw Error(cat("internal: option --", name, " is not declared as a number of this kind"));
  return it->second;
}

int Args::get_int(const std::string& name) const {
  const Option& o = declared_option(*this, name, Option::Kind::kInteger);
  if (o.int_min < std::numeric_limits<int>::min() || o.int_max > std::numeric_limits<int>::max()) {
    const int64_t x = parse_integer(o, get(name));
    if (x < std::numeric_limits<int>::min() || x > std::numeric_limits<int>::max())
      throw Error(cat("option --", name, ": ", x, " is out of range"));
    return static_cast<int>(x);
  }
  return static_cast<int>(parse_integer(o, get(name)));
}

int64_t Args::get_int64(const std::string& name) const {
  return parse_integer(declared_option(*this, name, Option::Kind::kInteger), get(name));
}

uint64_t Args::get_uint64(const std::string& name) const {
  const Option& o = declared_option(*this, name, Option::Kind::kInteger);
  if (o.int_min < 0) throw Error(cat("internal: option --", name, " may be negative"));
  return static_cast<uint64_t>(parse_integer(o, get(name)));
}

double Args::get_double(const std::string& name) const {
  return parse_number(declared_option(*this, name, Option::Kind::kNumber), get(name));
}

void Args::check_numbers() const {
  for (const auto& [name, o] : declared) {
    const std::string& v = get(name);
    if (v.empty() && o.default_value.empty()) continue;  // not given, no default
    if (o.kind == Option::Kind::kInteger) parse_integer(o, v);
    if (o.kind == Option::Kind::kNumber) parse_number(o, v);
    if (!o.choices.empty() && std::find(o.choices.begin(), o.choices.end(), v) == o.choices.end()) {
      std::string expected;
      for (size_t i = 0; i < o.choices.size(); ++i)
        expected += cat(i == 0 ? "" : i + 1 == o.choices.size() ? " or " : ", ", o.choices[i]);
      throw Error(cat("option --", name, ": expected ", expected, ", got \"", v, "\""));
    }
  }
}

}  // namespace vlmo::cli
