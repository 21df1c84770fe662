// vlmo: the command-line program. Each subcommand lives in its own cmd_*.cpp file.
#include <c10/util/Exception.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <iostream>

#include "cli.h"
#include "vlmo/error.h"
#include "vlmo/precision.h"
#include "vlmo/run_policy.h"
#include "vlmo/threads.h"
#include "vlmo/train.h"

namespace {

void print_usage(std::ostream& out) {
  out << "vlmo: VLMo (vision-language pre-training with mixture-of-modality-experts) in C++\n\n"
         "usage: vlmo COMMAND [options] [arguments]\n\ncommands:\n";
  for (const auto& c : vlmo::cli::all_commands()) {
    std::string name = "  " + c.name;
    name.append(name.size() < 20 ? 20 - name.size() : 2, ' ');
    out << name << c.summary.substr(0, c.summary.find('\n')) << "\n";
  }
  out << "\nRun `vlmo COMMAND --help` for a command's options and their defaults.\n";
}

}  // namespace

int main(int argc, char** argv) {
  vlmo::keep_freed_host_memory();
  if (argc < 2) {
    print_usage(std::cerr);
    return 2;
  }
  const std::string name = argv[1];
  if (name == "--help" || name == "-h" || name == "help") {
    print_usage(std::cout);
    return 0;
  }
  for (const auto& cmd : vlmo::cli::all_commands()) {
    if (cmd.name != name) continue;
    try {
      const auto args = cmd.parse(std::vector<std::string>(argv + 2, argv + argc));
      if (args.get_flag("help")) {
        std::cout << cmd.help();
        return 0;
      }
      vlmo::init_threads(args.get_int("threads"));
      // The environment's overrides (VLMO_CPU_BF16, VLMO_CPU_BATCHED_MATMUL) are checked here, so
      // that a bad value stops the command before any work.
      (void)vlmo::resolve_run_policy();
      const int status = cmd.run(args);
      // Results written to a full disk or a closed pipe must not end in exit 0.
      std::cout.flush();
      if (!std::cout || std::fflush(stdout) != 0 || std::ferror(stdout)) {
        std::cerr << "error: writing the results to standard output failed (" << std::strerror(errno) << ")\n";
        return 1;
      }
      return status;
    } catch (const vlmo::Interrupted& e) {
      std::cerr << "stopped: " << e.what() << "\n";
      return 128 + e.signal;  // the shell's convention: 130 for SIGINT, 143 for SIGTERM
    } catch (const vlmo::Error& e) {
      std::cerr << "error: " << e.what() << "\n";
      return 2;
    } catch (const c10::Error& e) {  // LibTorch: its message without the C++ backtrace
      std::string msg = e.what_without_backtrace();
      while (!msg.empty() && (msg.back() == '\n' || msg.back() == ' ')) msg.pop_back();
      std::cerr << "error: " << (msg.find('\n') == std::string::npos ? msg : msg.substr(0, msg.find('\n'))) << "\n";
      return 1;
    } catch (const std::bad_alloc&) {
      std::cerr << "error: out of memory (lower --batch-size or --image-size)\n";
      return 1;
    } catch (const std::exception& e) {
      std::cerr << "error: " << e.what() << "\n";
      return 1;
    }
  }
  std::cerr << "error: unknown command \"" << name << "\"\n\n";
  print_usage(std::cerr);
  return 2;
}
