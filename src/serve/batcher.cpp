#include "serve/batcher.h"

#include <ATen/core/grad_mode.h>

#include <algorithm>

#include "serve/refusal.h"

namespace vlmo::serve {

Batcher::Batcher(size_t capacity, size_t max_batch, std::chrono::microseconds wait, Metrics& metrics)
    : capacity_(capacity), max_batch_(max_batch), wait_(wait), metrics_(metrics) {}

std::future<Answer> Batcher::submit(const Task& task, Prepared input) {
  auto job = std::make_unique<Job>(Job{&task, std::move(input), {}});
  std::future<Answer> f = job->done.get_future();
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stopping_) throw Refusal(RefusalKind::kStopping, "the server is stopping");
    if (queue_.size() >= capacity_) {
      metrics_.rejected();
      throw Refusal(RefusalKind::kBusy, cat("the server is busy: ", capacity_, " requests are waiting (--queue); retry shortly"));
    }
    queue_.push_back(std::move(job));
  }
  cv_.notify_one();
  return f;
}

size_t Batcher::depth() {
  std::lock_guard<std::mutex> lock(mu_);
  return queue_.size();
}

size_t Batcher::count_of(const Task* task) const {
  return static_cast<size_t>(std::count_if(queue_.begin(), queue_.end(), [&](const auto& j) { return j->task == task; }));
}

std::vector<std::unique_ptr<Batcher::Job>> Batcher::next_batch() {
  std::vector<std::unique_ptr<Job>> batch;
  std::unique_lock<std::mutex> lock(mu_);
  cv_.wait(lock, [&] { return !queue_.empty() || stopping_; });
  if (queue_.empty()) return batch;  // stopping, and nothing left
  const Task* task = queue_.front()->task;
  // Give concurrent requests of the same task a moment to join this batch.
  cv_.wait_until(lock, std::chrono::steady_clock::now() + wait_, [&] { return count_of(task) >= max_batch_ || stopping_; });
  for (auto it = queue_.begin(); it != queue_.end() && batch.size() < max_batch_;) {
    if ((*it)->task == task) {
      batch.push_back(std::move(*it));
      it = queue_.erase(it);
    } else {
      ++it;
    }
  }
  return batch;
}

void Batcher::run() {
  at::NoGradGuard guard;
  for (;;) {
    std::vector<std::unique_ptr<Job>> batch = next_batch();
    if (batch.empty()) return;
    std::vector<Prepared> inputs;
    for (auto& j : batch) inputs.push_back(std::move(j->input));
    metrics_.batch(batch.size());
    try {
      std::vector<Answer> answers = batch.front()->task->run(inputs);
      if (answers.size() != batch.size())
        throw Error(cat("task ", batch.front()->task->name, " answered ", answers.size(), " of ", batch.size(), " requests"));
      for (size_t i = 0; i < batch.size(); ++i) batch[i]->done.set_value(std::move(answers.at(i)));
    } catch (...) {
      for (auto& j : batch) j->done.set_exception(std::current_exception());
    }
  }
}

void Batcher::abandon() {
  std::deque<std::unique_ptr<Job>> dropped;
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
    dropped.swap(queue_);
  }
  cv_.notify_all();
  for (auto& j : dropped)
    j->done.set_exception(std::make_exception_ptr(Refusal(RefusalKind::kStopping, "the server is stopping")));
}

void Batcher::stop() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
}

}  // namespace vlmo::serve
