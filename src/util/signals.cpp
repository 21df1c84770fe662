#include "vlmo/signals.h"

#include <csignal>

namespace vlmo {
namespace {
volatile std::sig_atomic_t g_stop_signal = 0, g_stop_count = 0, g_second_exits = 1;

extern "C" void on_stop_signal(int sig) {
  if (g_stop_count < 1000) g_stop_count = g_stop_count + 1;
  if (g_stop_signal != 0 && g_second_exits) {  // the second signal: stop now
    std::signal(sig, SIG_DFL);
    std::raise(sig);
    return;
  }
  g_stop_signal = sig;
}
}  // namespace

void install_stop_handlers(bool second_signal_exits) {
  g_second_exits = second_signal_exits ? 1 : 0;
  struct sigaction sa {};
  sa.sa_handler = on_stop_signal;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = SA_RESTART;
  sigaction(SIGINT, &sa, nullptr);
  sigaction(SIGTERM, &sa, nullptr);
}
void request_stop(int signal) { g_stop_signal = signal; }
int stop_requested() { return g_stop_signal; }
int stop_signal_count() { return g_stop_count; }
void clear_stop_request() { g_stop_signal = 0, g_stop_count = 0; }

Interrupted::Interrupted(int sig, int64_t step_, std::string checkpoint_)
    : Error(cat("interrupted by ",
                sig == SIGINT    ? "SIGINT"
                : sig == SIGTERM ? "SIGTERM"
                                 : "signal " + std::to_string(sig),
                " after step ", step_,
                checkpoint_.empty() ? std::string("; this run has no checkpoint path, nothing was saved")
                                    : cat("; checkpoint saved to ", checkpoint_, " (continue with --resume ", checkpoint_, ")"))),
      signal(sig),
      step(step_),
      checkpoint(std::move(checkpoint_)) {}

}  // namespace vlmo
