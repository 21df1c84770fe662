// The access log of `vlmo serve`: one line per answer, written to a file descriptor (stderr) by
// a thread of its own through a bounded queue. Serving never waits for the log: when the queue
// is full (stderr is a pipe nobody reads, or a slow terminal) a line is dropped and counted
// (/metrics: vlmo_access_log_dropped_total), and the writer waits for its descriptor with poll,
// so that stopping the server never waits on a full pipe for longer than close() allows.
#pragma once
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <mutex>
#include <string>
#include <thread>

namespace vlmo::serve {

class AccessLog {
 public:
  // Lines go to `fd` (not closed here); at most `capacity` wait to be written.
  explicit AccessLog(int fd, size_t capacity = 4096);
  ~AccessLog() { close(std::chrono::milliseconds(0)); }
  AccessLog(const AccessLog&) = delete;
  AccessLog& operator=(const AccessLog&) = delete;

  // Queues `line` (a newline is added); never blocks. A line that does not fit is dropped.
  void write(std::string line);
  // Writes what is queued for up to `wait`, drops the rest, and ends the writer thread.
  void close(std::chrono::milliseconds wait);

  uint64_t written() const { return written_.load(std::memory_order_relaxed); }
  uint64_t dropped() const { return dropped_.load(std::memory_order_relaxed); }

 private:
  void run();
  bool write_line(const std::string& line);  // false: the descriptor is gone (EPIPE, EBADF) or closing ran out

  const int fd_;
  const size_t capacity_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::string> lines_;
  bool closing_ = false, broken_ = false;
  std::chrono::steady_clock::time_point close_deadline_{};
  std::atomic<uint64_t> written_{0}, dropped_{0};
  std::thread writer_;
};

}  // namespace vlmo::serve
