// The memory every connection's request body may take together (--max-inflight-mb). A body is
// charged as its buffer grows with bytes that have arrived, never from a declared length, and
// gives its bytes back when its request has been answered (or its connection dropped); a charge
// that would pass the budget is refused, and the server answers that request 503 with
// Retry-After. Thread-safe: the network thread charges, request threads give back.
#pragma once
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <string>

namespace vlmo::serve {

class BodyBudget {
 public:
  explicit BodyBudget(size_t limit_bytes) : limit_(limit_bytes) {}
  bool charge(size_t n);  // false (nothing charged) when `n` more would pass the limit
  void release(size_t n) { used_.fetch_sub(n, std::memory_order_relaxed); }
  size_t used() const { return used_.load(std::memory_order_relaxed); }
  size_t limit() const { return limit_; }
  size_t refusals() const { return refusals_.load(std::memory_order_relaxed); }

 private:
  const size_t limit_;
  std::atomic<size_t> used_{0}, refusals_{0};
};

// One request's share of a BodyBudget (none: unlimited), given back when it is destroyed.
// Move-only.
class BodyLease {
 public:
  BodyLease() = default;
  explicit BodyLease(BodyBudget* budget) : budget_(budget) {}
  BodyLease(BodyLease&& o) noexcept : budget_(o.budget_), held_(o.held_) { o.held_ = 0; }
  BodyLease& operator=(BodyLease&& o) noexcept;
  BodyLease(const BodyLease&) = delete;
  BodyLease& operator=(const BodyLease&) = delete;
  ~BodyLease() { give_back(); }

  bool charge(size_t n);
  size_t held() const { return held_; }
  bool refused() const { return refused_; }  // a charge was refused
  void give_back() { give_back(held_); }
  void give_back(size_t n);  // part of what it holds

 private:
  BodyBudget* budget_ = nullptr;
  size_t held_ = 0;
  bool refused_ = false;
};

// A request body growing as its bytes arrive. Its buffer doubles, up to `most` (the declared
// length, else the body limit), and what is really allocated is charged to the lease before it
// is: while the bytes move to a larger buffer, both buffers are charged.
struct BudgetedBytes {
  std::string data;
  BodyLease lease;
  size_t limit = SIZE_MAX;  // the body limit (a chunked body's `most`)
  // Appends `n` bytes; false (nothing appended) when the lease refuses the growth.
  bool append(const char* p, size_t n, size_t most);
};

}  // namespace vlmo::serve
