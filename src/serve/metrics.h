// The server's counters, for GET /health (a JSON summary) and GET /metrics (Prometheus text
// exposition format): requests by endpoint and status, latency histograms, batches, refusals.
// Thread-safe.
#pragma once
#include <array>
#include <atomic>
#include <cstdint>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>
#include <string>

namespace vlmo::serve {

class Metrics {
 public:
  static constexpr double kBucketsMs[] = {5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000};

  // One answered request: its endpoint, status and time from request read to response written.
  // `timed`: it reached a route; a request refused before (unparsable, too large, too slow) is
  // counted by status but kept out of the latencies, which would measure the client, not us.
  void request(const std::string& endpoint, int status, double ms, bool timed = true);
  void batch(size_t size);          // one model batch of `size` requests
  void rejected() { ++rejected_; }  // one request refused because the queue was full

  // The network side, kept by the HTTP server: open connections, body bytes held against
  // --max-inflight-mb, and what it turned away or dropped before any route.
  struct Network {
    std::atomic<uint64_t> connections{0}, body_bytes{0}, body_budget{0};
    std::atomic<uint64_t> log_lines_dropped{0};  // access-log lines that did not fit in its queue
    std::atomic<uint64_t> idle_closed{0};        // idle connections closed at --max-connections for a newcomer
    std::atomic<uint64_t> capacity_refused{0};   // newcomers answered 503 at --max-connections (none idle)
    std::atomic<uint64_t> bodies_refused{0};     // requests answered 503: the body budget was spent
    std::atomic<uint64_t> pending_refused{0};    // requests answered 503: every request thread busy and the wait list full
  };
  Network network;

  // requests, errors, rejected_queue_full, batches, mean / max batch size, latency p50 / p99
  // (over the last 10,000 requests), access-log lines dropped.
  nlohmann::json summary();
  std::string prometheus(size_t queue_depth, size_t queue_capacity);

 private:
  struct Endpoint {
    uint64_t requests = 0, errors = 0;
    std::map<int, uint64_t> by_status;
    std::array<uint64_t, std::size(kBucketsMs) + 1> buckets{};
    uint64_t timed = 0;
    double seconds_sum = 0;
  };
  std::mutex mu_;
  std::map<std::string, Endpoint> endpoints_;
  std::array<double, 10000> recent_{};
  size_t recent_next_ = 0, recent_count_ = 0;
  uint64_t batches_ = 0, batched_ = 0;
  size_t max_batch_ = 0;
  std::atomic<uint64_t> rejected_{0};
};

}  // namespace vlmo::serve
