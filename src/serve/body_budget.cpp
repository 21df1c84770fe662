#include "serve/body_budget.h"

#include <algorithm>

namespace vlmo::serve {

bool BodyBudget::charge(size_t n) {
  size_t used = used_.load(std::memory_order_relaxed);
  do {
    if (n > limit_ || used > limit_ - n) {
      refusals_.fetch_add(1, std::memory_order_relaxed);
      return false;
    }
  } while (!used_.compare_exchange_weak(used, used + n, std::memory_order_relaxed));
  return true;
}

BodyLease& BodyLease::operator=(BodyLease&& o) noexcept {
  if (this != &o) {
    give_back();
    budget_ = o.budget_;
    held_ = o.held_;
    refused_ = o.refused_;
    o.held_ = 0;
  }
  return *this;
}

bool BodyLease::charge(size_t n) {
  if (budget_ && !budget_->charge(n)) {
    refused_ = true;
    return false;
  }
  held_ += n;
  return true;
}

void BodyLease::give_back(size_t n) {
  n = std::min(n, held_);
  if (budget_ && n) budget_->release(n);
  held_ -= n;
}

bool BudgetedBytes::append(const char* p, size_t n, size_t most) {
  const size_t need = data.size() + n;
  if (need > data.capacity()) {
    // Double what has arrived (never to a length only declared), up to `most`, so that a body
    // of known length ends in a buffer of that size; once past half of it, straight to it (not
    // one more copy for the last few bytes). A body of B bytes so holds at most 1.5 B while it
    // moves. A new buffer is reserved from empty: a string's own reserve() would round a growth
    // of less than twice up to twice.
    size_t grown = std::max(need, data.capacity() * 2);
    if (most >= need && grown >= most / 2) grown = most;
    const size_t old = lease.held();
    if (!lease.charge(grown)) return false;
    std::string bigger;
    bigger.reserve(grown);
    if (bigger.capacity() > grown && !lease.charge(bigger.capacity() - grown)) {
      lease.give_back(grown);
      return false;
    }
    bigger.append(data);
    data.swap(bigger);
    bigger = std::string();
    lease.give_back(old);  // the old buffer is gone
  }
  data.append(p, n);
  return true;
}

}  // namespace vlmo::serve
