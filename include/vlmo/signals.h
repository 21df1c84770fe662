// Graceful stop of long work (training, embedding a collection, serving). After
// install_stop_handlers(), the first SIGINT or SIGTERM only records the signal: the work polls
// stop_requested() at its own safe points (a step boundary, a chunk, the accept loop), keeps what
// it did, and ends; a second signal ends the process at once (default action). A repeat within
// kStopRepeatWindowMs of the first is the same request and is neither counted nor acted on: GNU
// `timeout` signals its child and then the child's process group, and Slurm, container runtimes
// and torchrun's agent may deliver a stop signal more than once. request_stop() does what the
// handler does for a first signal.
#pragma once
#include <cstdint>
#include <string>

#include "vlmo/error.h"

namespace vlmo {

constexpr int64_t kStopRepeatWindowMs = 1000;

// `second_signal_exits` false: a second signal is only counted (stop_signal_count), for work
// that bounds its own stop and still wants to report.
void install_stop_handlers(bool second_signal_exits = true);
int stop_signal_count();
void request_stop(int signal);
int stop_requested();  // the signal number, 0 when none
void clear_stop_request();

// Work stopped by a signal; the message says what was kept and how to go on.
struct Interrupted : Error {
  // Training: `step` steps done and saved to `checkpoint` ("" when the run has no checkpoint path).
  Interrupted(int signal, int64_t step, std::string checkpoint);
  Interrupted(int signal, const std::string& message) : Error(message), signal(signal), step(0) {}
  int signal;
  int64_t step;
  std::string checkpoint;
};

}  // namespace vlmo
