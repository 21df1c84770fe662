#include "vlmo/signals.h"

#include <atomic>
#include <csignal>
#include <ctime>

namespace vlmo {
namespace {
volatile std::sig_atomic_t g_stop_signal = 0, g_stop_count = 0, g_second_exits = 1;
// When the request began (CLOCK_MONOTONIC, ns); lock-free, so the handler may read and write it.
std::atomic<int64_t> g_request_ns{0};
static_assert(std::atomic<int64_t>::is_always_lock_free, "the signal handler needs a lock-free clock reading");

int64_t monotonic_ns() {
  timespec ts{};
  clock_gettime(CLOCK_MONOTONIC, &ts);  // async-signal-safe (POSIX)
  return static_cast<int64_t>(ts.tv_sec) * 1000000000 + ts.tv_nsec;
}

extern "C" void on_stop_signal(int sig) {
  const int64_t now = monotonic_ns();
  // A repeat within the window is the same request (a launcher's signal to the process and then
  // to its group) and is not counted; a later one is the user insisting.
  if (g_stop_signal != 0 && now - g_request_ns.load() < kStopRepeatWindowMs * int64_t{1000000}) return;
  if (g_stop_count < 1000) g_stop_count = g_stop_count + 1;
  if (g_stop_signal != 0) {
    if (g_second_exits) {
      std::signal(sig, SIG_DFL);
      std::raise(sig);
    }
    return;
  }
  g_request_ns.store(now);
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
void request_stop(int signal) {
  g_request_ns.store(monotonic_ns());
  g_stop_signal = signal;
}
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
