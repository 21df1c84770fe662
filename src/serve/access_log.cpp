#include "serve/access_log.h"

#include <poll.h>
#include <pthread.h>
#include <unistd.h>

#include <cerrno>
#include <csignal>

namespace vlmo::serve {

AccessLog::AccessLog(int fd, size_t capacity) : fd_(fd), capacity_(capacity) {
  writer_ = std::thread([this] { run(); });
}

void AccessLog::write(std::string line) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (closing_ || broken_ || lines_.size() >= capacity_) {
      dropped_.fetch_add(1, std::memory_order_relaxed);
      return;
    }
    line += '\n';
    lines_.push_back(std::move(line));
  }
  cv_.notify_one();
}

void AccessLog::close(std::chrono::milliseconds wait) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (!closing_) close_deadline_ = std::chrono::steady_clock::now() + wait;
    closing_ = true;
  }
  cv_.notify_all();
  if (writer_.joinable()) writer_.join();
}

void AccessLog::run() {
  // A reader that went away makes write() fail with EPIPE here instead of ending the process.
  sigset_t pipe;
  sigemptyset(&pipe);
  sigaddset(&pipe, SIGPIPE);
  pthread_sigmask(SIG_BLOCK, &pipe, nullptr);
  std::unique_lock<std::mutex> lock(mu_);
  for (;;) {
    cv_.wait(lock, [&] { return !lines_.empty() || closing_; });
    if (lines_.empty()) return;
    std::string line = std::move(lines_.front());
    lines_.pop_front();
    lock.unlock();
    const bool ok = write_line(line);
    lock.lock();
    if (ok) {
      written_.fetch_add(1, std::memory_order_relaxed);
      continue;
    }
    // The descriptor is gone or the stop ran out of time: this line and the queued ones are dropped.
    dropped_.fetch_add(1 + lines_.size(), std::memory_order_relaxed);
    lines_.clear();
    if (closing_) return;
    broken_ = true;
  }
}

bool AccessLog::write_line(const std::string& line) {
  size_t sent = 0;
  while (sent < line.size()) {
    // Wait for room in slices, so that a stop is noticed while the descriptor is full.
    pollfd p{fd_, POLLOUT, 0};
    const int ready = ::poll(&p, 1, 100);
    if (ready < 0 && errno != EINTR) return false;
    if (ready <= 0 || !(p.revents & (POLLOUT | POLLERR | POLLHUP))) {
      std::lock_guard<std::mutex> lock(mu_);
      if (closing_ && std::chrono::steady_clock::now() >= close_deadline_) return false;
      continue;
    }
    const ssize_t n = ::write(fd_, line.data() + sent, line.size() - sent);
    if (n > 0) sent += static_cast<size_t>(n);
    else if (n < 0 && errno != EINTR && errno != EAGAIN) return false;
  }
  return true;
}

}  // namespace vlmo::serve
