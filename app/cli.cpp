#include "cli.h"

#include <cctype>
#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <sstream>

#include "vlmo/error.h"

namespace vlmo::cli {

const std::string& Args::get(const std::string& name) const {
  auto it = values.find(name);
  if (it == values.end()) throw Error(cat("internal: option --", name, " is not declared"));
  return it->second;
}

namespace {
[[noreturn]] void bad_number(const std::string& name, const std::string& v, const char* expected) {
  throw Error(cat("option --", name, ": expected ", expected, ", got \"", v, "\""));
}

// `upper`: max is a real bound (not the type's largest value), so the message names it.
int64_t parse_integer(const std::string& name, const std::string& v, int64_t min, int64_t max, bool upper) {
  errno = 0;
  char* end = nullptr;
  const long long x = v.empty() ? 0 : std::strtoll(v.c_str(), &end, 10);
  if (v.empty() || *end != '\0' || std::isspace(static_cast<unsigned char>(v[0])))
    bad_number(name, v, "an integer");
  if (errno == ERANGE || x < min || x > max) {
    if (upper) throw Error(cat("option --", name, ": must be between ", min, " and ", max, ", got ", v));
    if (x < min) throw Error(cat("option --", name, ": must be at least ", min, ", got ", v));
    throw Error(cat("option --", name, ": ", v, " is too large"));
  }
  return x;
}
}  // namespace

int Args::get_int(const std::string& name, int min, int max) const {
  return static_cast<int>(parse_integer(name, get(name), min, max, max < std::numeric_limits<int>::max()));
}

int64_t Args::get_int64(const std::string& name, int64_t min, int64_t max) const {
  return parse_integer(name, get(name), min, max, max < std::numeric_limits<int64_t>::max());
}

uint64_t Args::get_uint64(const std::string& name) const {
  const std::string& v = get(name);
  errno = 0;
  char* end = nullptr;
  const unsigned long long x = v.empty() ? 0 : std::strtoull(v.c_str(), &end, 10);
  if (v.empty() || *end != '\0' || v[0] == '-' || std::isspace(static_cast<unsigned char>(v[0])))
    bad_number(name, v, "a non-negative integer");
  if (errno == ERANGE) throw Error(cat("option --", name, ": ", v, " is too large"));
  return x;
}

double Args::get_double(const std::string& name, double min, double max) const {
  const std::string& v = get(name);
  errno = 0;
  char* end = nullptr;
  const double x = v.empty() ? 0 : std::strtod(v.c_str(), &end);
  if (v.empty() || *end != '\0' || std::isspace(static_cast<unsigned char>(v[0])) || !std::isfinite(x))
    bad_number(name, v, "a finite number");
  if (x < min || x > max) {
    if (std::isinf(max)) throw Error(cat("option --", name, ": must be at least ", min, ", got ", v));
    throw Error(cat("option --", name, ": must be between ", min, " and ", max, ", got ", v));
  }
  return x;
}

std::vector<Option> common_options() {
  return {{"threads", "0", "CPU threads (0: OMP_NUM_THREADS, else every core)"},
          {"help", "false", "show this help and exit", true}};
}

std::string Command::help() const {
  std::ostringstream s;
  s << "usage: " << usage << "\n\n" << summary << "\n\noptions:\n";
  auto all = options;
  for (const auto& o : common_options()) all.push_back(o);
  for (const auto& o : all) {
    std::string left = "  --" + o.name + (o.flag ? "" : " VALUE");
    if (left.size() < 28) left.append(28 - left.size(), ' ');
    else left += "  ";
    s << left << o.help;
    if (!o.flag) s << " (default: " << (o.default_value.empty() ? "none" : o.default_value) << ")";
    s << "\n";
  }
  return s.str();
}

Args Command::parse(const std::vector<std::string>& argv) const {
  Args args;
  args.command = name;
  auto all = options;
  for (const auto& o : common_options()) all.push_back(o);
  for (const auto& o : all) args.values[o.name] = o.flag ? "false" : o.default_value;
  for (size_t i = 0; i < argv.size(); ++i) {
    const std::string& a = argv[i];
    if (a.size() > 2 && a.compare(0, 2, "--") == 0) {
      std::string name = a.substr(2), value;
      const size_t eq = name.find('=');
      const bool has_value = eq != std::string::npos;
      if (has_value) {
        value = name.substr(eq + 1);
        name = name.substr(0, eq);
      }
      const Option* opt = nullptr;
      for (const auto& o : all)
        if (o.name == name) opt = &o;
      if (!opt) throw Error(cat("vlmo ", this->name, ": unknown option --", name, " (see --help)"));
      args.given.insert(name);
      if (opt->flag) {
        if (has_value) throw Error(cat("vlmo ", this->name, ": option --", name, " takes no value"));
        args.values[name] = "true";
      } else if (has_value) {
        args.values[name] = value;
      } else {
        if (i + 1 >= argv.size())
          throw Error(cat("vlmo ", this->name, ": option --", name, " needs a value"));
        args.values[name] = argv[++i];
      }
    } else {
      args.positional.push_back(a);
    }
  }
  if (args.get_flag("help")) return args;
  if (args.positional.size() < min_positional || args.positional.size() > max_positional)
    throw Error(cat("vlmo ", name, ": expected ", min_positional == max_positional ? "" : "between ",
                    min_positional,
                    min_positional == max_positional ? "" : cat(" and ", max_positional),
                    " positional argument(s), got ", args.positional.size(), "\nusage: ", usage));
  return args;
}

std::vector<Command> all_commands() {
  return {demo_command(),   pretrain_command(), finetune_command(),  evaluate_command(), vqa_command(),
          nlvr2_command(),  itm_command(),      embed_command(),     search_command(),   convert_command(),
          info_command(),   vqa_answers_command(), check_reference_command(), tokenize_command(),
          preprocess_command()};
}

}  // namespace vlmo::cli
