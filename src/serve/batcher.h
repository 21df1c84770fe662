// The bounded queue in front of the model and the model thread that drains it. Request threads
// submit prepared requests; run() (one thread) takes the oldest request's task and every queued
// request of that task, up to max_batch, after waiting up to `wait` for the batch to fill, and
// answers them with one call of the task's run. Requests of one task are answered in the order
// they came; a task waits behind at most the batches of requests queued before its own.
#pragma once
#include <chrono>
#include <condition_variable>
#include <deque>
#include <future>
#include <memory>
#include <mutex>

#include "serve/answerers.h"
#include "serve/metrics.h"

namespace vlmo::serve {

class Batcher {
 public:
  Batcher(size_t capacity, size_t max_batch, std::chrono::microseconds wait, Metrics& metrics);

  // Queues one prepared request; throws Refusal kBusy when the queue is full, kStopping when stopping.
  std::future<Answer> submit(const Task& task, Prepared input);
  size_t depth();
  size_t capacity() const { return capacity_; }

  // The model thread: runs until stop() and the queue is empty.
  void run();
  void stop();
  // stop(), and every queued request is refused now (kStopping) instead of answered by the model.
  void abandon();

 private:
  struct Job {
    const Task* task;
    Prepared input;
    std::promise<Answer> done;
  };
  size_t count_of(const Task* task) const;
  std::vector<std::unique_ptr<Job>> next_batch();  // empty when stopping and nothing is left
  const size_t capacity_, max_batch_;
  const std::chrono::microseconds wait_;
  Metrics& metrics_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::unique_ptr<Job>> queue_;
  bool stopping_ = false;
};

}  // namespace vlmo::serve
