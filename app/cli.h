// A small command-line parser: each subcommand declares its options (with defaults and help),
// `--help` lists them, unknown options and missing values are errors that say what was expected.
// Every number goes through one typed, range-checked reader (Args::get_int and friends).
// Why not CLI11 (docs/design.md): the declarative option tables are also what --train-config files are
// checked against and overridden by, and the parser is ~150 lines with tests.
#pragma once
#include <cstdint>
#include <functional>
#include <limits>
#include <map>
#include <set>
#include <string>
#include <vector>

namespace vlmo::cli {

struct Option {
  std::string name;           // without the leading "--"
  std::string default_value;  // for flags: "false"
  std::string help;
  bool flag = false;
  // Numbers are checked when the command line is parsed (before any work starts): the whole
  // value must parse, and lie in the range. An empty value means "not given" only where the
  // default is empty.
  enum class Kind { kText, kInteger, kNumber } kind = Kind::kText;
  int64_t int_min = 0, int_max = 0;
  double num_min = 0, num_max = 0;
  // Text options with a fixed set of values: checked when the command line is parsed too.
  std::vector<std::string> choices;
};
Option integer_option(std::string name, std::string default_value, std::string help, int64_t min,
                      int64_t max = std::numeric_limits<int64_t>::max());
Option number_option(std::string name, std::string default_value, std::string help, double min, double max);
Option choice_option(std::string name, std::string default_value, std::string help, std::vector<std::string> choices);

struct Args {
  std::string command;  // for messages: "vlmo <command>"
  std::map<std::string, Option> declared;
  std::map<std::string, std::string> values;
  std::set<std::string> given;                               // options set on the command line
  std::map<std::string, std::vector<std::string>> repeated;  // every value given, in order (get() has the last)
  std::vector<std::string> positional;
  const std::string& get(const std::string& name) const;
  // Each value given for an option that may be repeated (--allowed-host A --allowed-host B).
  std::vector<std::string> get_all(const std::string& name) const;
  // Typed values of numeric options (range-checked as declared; errors name the option).
  int get_int(const std::string& name) const;
  int64_t get_int64(const std::string& name) const;
  uint64_t get_uint64(const std::string& name) const;  // integer options with min >= 0
  double get_double(const std::string& name) const;
  bool get_flag(const std::string& name) const { return get(name) == "true"; }
  // Checks every numeric value (after values were changed, e.g. from a config file).
  void check_numbers() const;
};

struct Command {
  std::string name;
  std::string summary;
  std::string usage;  // e.g. "vlmo convert [options] IN OUT.safetensors"
  std::vector<Option> options;
  size_t min_positional = 0, max_positional = 0;
  std::function<int(const Args&)> run;

  std::string help() const;
  // Parses argv after the subcommand name. Throws vlmo::Error on bad usage.
  Args parse(const std::vector<std::string>& argv) const;
};

// Options every command takes.
std::vector<Option> common_options();

// The registry, filled by the cmd_*.cpp files.
std::vector<Command> all_commands();
Command info_command();
Command convert_command();
Command check_reference_command();
Command tokenize_command();
Command preprocess_command();
Command demo_command();
Command pretrain_command();
Command vqa_command();
Command nlvr2_command();
Command itm_command();
Command embed_command();
Command search_command();
Command finetune_command();
Command serve_command();
Command evaluate_command();
Command vqa_answers_command();
Command plot_command();
Command index_command();
Command bench_command();

}  // namespace vlmo::cli
