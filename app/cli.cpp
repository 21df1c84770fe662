#include "cli.h"

#include <sstream>

#include "vlmo/error.h"

namespace vlmo::cli {

const std::string& Args::get(const std::string& name) const {
  auto it = values.find(name);
  if (it == values.end()) throw Error(cat("internal: option --", name, " is not declared"));
  return it->second;
}

std::vector<std::string> Args::get_all(const std::string& name) const {
  get(name);  // declared
  const auto it = repeated.find(name);
  return it == repeated.end() ? std::vector<std::string>{} : it->second;
}

std::vector<Option> common_options() {
  return {integer_option("threads", "0", "CPU threads (0: OMP_NUM_THREADS, else every core)", 0, 1024),
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
  for (const auto& o : all) {
    args.values[o.name] = o.flag ? "false" : o.default_value;
    args.declared[o.name] = o;
  }
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
      } else {
        if (!has_value && i + 1 >= argv.size()) throw Error(cat("vlmo ", this->name, ": option --", name, " needs a value"));
        args.values[name] = has_value ? value : argv[++i];
        args.repeated[name].push_back(args.values[name]);
      }
    } else {
      args.positional.push_back(a);
    }
  }
  if (args.get_flag("help")) return args;
  args.check_numbers();
  if (args.positional.size() < min_positional || args.positional.size() > max_positional)
    throw Error(cat("vlmo ", name, ": expected ", min_positional == max_positional ? "" : "between ", min_positional,
                    min_positional == max_positional ? "" : cat(" and ", max_positional), " positional argument(s), got ",
                    args.positional.size(), "\nusage: ", usage));
  return args;
}

std::vector<Command> all_commands() {
  return {demo_command(),  pretrain_command(),    finetune_command(),        evaluate_command(), vqa_command(),
          nlvr2_command(), itm_command(),         embed_command(),           search_command(),   convert_command(),
          info_command(),  vqa_answers_command(), check_reference_command(), tokenize_command(), preprocess_command(),
          plot_command(),  index_command(),       serve_command(),           bench_command()};
}

}  // namespace vlmo::cli
