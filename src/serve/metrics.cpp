#include "serve/metrics.h"

#include <algorithm>
#include <vector>

#include "vlmo/error.h"

namespace vlmo::serve {

void Metrics::request(const std::string& endpoint, int status, double ms, bool timed) {
  std::lock_guard<std::mutex> lock(mu_);
  auto& e = endpoints_[endpoint];
  ++e.requests;
  if (status >= 400) ++e.errors;
  ++e.by_status[status];
  if (!timed) return;
  ++e.timed;
  e.seconds_sum += ms / 1000;
  size_t b = 0;
  while (b < std::size(kBucketsMs) && ms > kBucketsMs[b]) ++b;
  ++e.buckets[b];
  recent_[recent_next_++ % recent_.size()] = ms;
  recent_count_ = std::min(recent_count_ + 1, recent_.size());
}

void Metrics::batch(size_t size) {
  std::lock_guard<std::mutex> lock(mu_);
  ++batches_;
  batched_ += size;
  max_batch_ = std::max(max_batch_, size);
}

nlohmann::json Metrics::summary() {
  std::lock_guard<std::mutex> lock(mu_);
  uint64_t requests = 0, errors = 0;
  for (const auto& [name, e] : endpoints_) requests += e.requests, errors += e.errors;
  std::vector<double> v(recent_.begin(), recent_.begin() + static_cast<std::ptrdiff_t>(recent_count_));
  std::sort(v.begin(), v.end());
  auto pct = [&](double p) {
    return v.empty() ? 0.0 : v[std::min(v.size() - 1, static_cast<size_t>(p * static_cast<double>(v.size())))];
  };
  return {{"requests", requests},
          {"errors", errors},
          {"rejected_queue_full", rejected_.load()},
          {"batches", batches_},
          {"mean_batch_size", batches_ ? static_cast<double>(batched_) / static_cast<double>(batches_) : 0.0},
          {"max_batch_size", max_batch_},
          {"latency_ms_p50", pct(0.5)},
          {"latency_ms_p99", pct(0.99)},
          {"log_lines_dropped", network.log_lines_dropped.load()}};
}

namespace {
std::string metric_head(const char* name, const char* help, const char* type) {
  return cat("# HELP ", name, " ", help, "\n# TYPE ", name, " ", type, "\n");
}
}  // namespace

std::string Metrics::prometheus(size_t queue_depth, size_t queue_capacity) {
  std::lock_guard<std::mutex> lock(mu_);
  std::string s = metric_head("vlmo_requests_total", "HTTP requests by endpoint and status.", "counter");
  for (const auto& [name, e] : endpoints_)
    for (const auto& [status, n] : e.by_status)
      s += cat("vlmo_requests_total{endpoint=\"", name, "\",status=\"", status, "\"} ", n, "\n");
  s += metric_head("vlmo_request_errors_total", "Responses with status >= 400.", "counter");
  for (const auto& [name, e] : endpoints_) s += cat("vlmo_request_errors_total{endpoint=\"", name, "\"} ", e.errors, "\n");
  s += metric_head("vlmo_request_duration_seconds", "Time from request read to response written.", "histogram");
  for (const auto& [name, e] : endpoints_) {
    if (e.timed == 0) continue;
    uint64_t cum = 0;
    for (size_t b = 0; b <= std::size(kBucketsMs); ++b) {
      cum += e.buckets[b];
      const std::string le = b < std::size(kBucketsMs) ? cat(kBucketsMs[b] / 1000) : "+Inf";
      s += cat("vlmo_request_duration_seconds_bucket{endpoint=\"", name, "\",le=\"", le, "\"} ", cum, "\n");
    }
    s += cat("vlmo_request_duration_seconds_sum{endpoint=\"", name, "\"} ", e.seconds_sum, "\n");
    s += cat("vlmo_request_duration_seconds_count{endpoint=\"", name, "\"} ", e.timed, "\n");
  }
  s += metric_head("vlmo_batches_total", "Model batches run.", "counter") + cat("vlmo_batches_total ", batches_, "\n");
  s += metric_head("vlmo_batched_requests_total", "Requests run in those batches.", "counter") +
       cat("vlmo_batched_requests_total ", batched_, "\n");
  s += metric_head("vlmo_batch_size_max", "Largest batch so far.", "gauge") + cat("vlmo_batch_size_max ", max_batch_, "\n");
  s += metric_head("vlmo_rejected_total", "Requests refused with 503 (queue full).", "counter") +
       cat("vlmo_rejected_total ", rejected_.load(), "\n");
  s += metric_head("vlmo_queue_depth", "Requests waiting for the model.", "gauge") + cat("vlmo_queue_depth ", queue_depth, "\n");
  s += metric_head("vlmo_connections", "Open connections.", "gauge") + cat("vlmo_connections ", network.connections.load(), "\n");
  s += metric_head("vlmo_request_body_bytes", "Request body bytes held (--max-inflight-mb bounds them).", "gauge") +
       cat("vlmo_request_body_bytes ", network.body_bytes.load(), "\n");
  s += metric_head("vlmo_request_body_budget_bytes", "The bound on them (--max-inflight-mb).", "gauge") +
       cat("vlmo_request_body_budget_bytes ", network.body_budget.load(), "\n");
  s += metric_head("vlmo_access_log_dropped_total", "Access-log lines dropped: the log's queue was full.", "counter") +
       cat("vlmo_access_log_dropped_total ", network.log_lines_dropped.load(), "\n");
  s += metric_head("vlmo_connections_closed_idle_total", "Idle connections closed at --max-connections to admit a newcomer.",
                   "counter") +
       cat("vlmo_connections_closed_idle_total ", network.idle_closed.load(), "\n");
  s += metric_head("vlmo_connections_refused_total", "Newcomers answered 503 at --max-connections (none idle).", "counter") +
       cat("vlmo_connections_refused_total ", network.capacity_refused.load(), "\n");
  s += metric_head("vlmo_bodies_refused_total", "Requests answered 503: request bodies in flight had spent --max-inflight-mb.",
                   "counter") +
       cat("vlmo_bodies_refused_total ", network.bodies_refused.load(), "\n");
  s += metric_head("vlmo_pending_refused_total", "Requests answered 503: every request thread busy and the wait list full.",
                   "counter") +
       cat("vlmo_pending_refused_total ", network.pending_refused.load(), "\n");
  s += metric_head("vlmo_queue_capacity", "Queue bound (--queue).", "gauge") + cat("vlmo_queue_capacity ", queue_capacity, "\n");
  return s;
}

}  // namespace vlmo::serve
