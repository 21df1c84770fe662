// `vlmo serve` over HTTP/1.1: one network thread reads every connection (epoll, non-blocking),
// feeds what it reads to Boost.Beast's parser (serve/http_request.h) under limits and deadlines,
// refuses a head that names another host (421) or that no route takes before its body is read,
// and hands each complete request to a pool of request threads, which answer it through Routes
// (checks, then the Service: decode, queue for the model thread, wait). A connection that is
// idle, slow or half-way through a request holds no request thread, only its socket; one that is
// too slow is answered 408 and closed. Request bodies in flight share one budget (503 past it);
// at --max-connections the longest-idle connection makes room for a newcomer, else the newcomer
// is answered 503. A failure while handling one connection (an allocation that fails) answers
// that connection 5xx and closes it; the server goes on. SIGINT / SIGTERM: stop accepting, give
// open connections 1 s to complete their request, answer every complete request, exit within a
// bound; a second signal stops waiting for the model. Every answer is JSON (or the page); the
// access log is JSON lines on stderr, written by a thread of its own (serve/access_log.h).
#pragma once
#include <chrono>
#include <functional>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "serve/service.h"

namespace vlmo::serve {

struct HttpOptions {
  std::string host = "127.0.0.1";
  int port = 8080;                // 0: any free port
  size_t http_threads = 64;       // requests handled at once
  size_t max_connections = 1024;  // open connections; beyond, the longest-idle one is closed, else 503
  size_t max_batch = 16;          // requests of one task per model batch
  std::chrono::microseconds batch_wait{5000};
  size_t queue = 64;  // requests that may wait for the model
  size_t max_body_bytes = 16u << 20;
  size_t max_inflight_bytes = 256u << 20;  // request bodies in flight together (at least max_body_bytes)
  std::vector<std::string> allowed_hosts;  // names answered beyond localhost, 127.0.0.1, [::1] and `host`
  std::string web_dir;                     // serve the page from here instead of the built-in copy
  bool quiet = false;                      // no access log
  int log_fd = 2;                          // where the access log goes
  size_t log_queue = 4096;                 // access-log lines that may wait to be written (beyond: dropped)
  // Deadlines: a kept-alive connection's wait for its next request; a request's head and its
  // whole body from its first byte; writing an answer; the drain after a stop signal.
  std::chrono::milliseconds idle_timeout{5000}, head_timeout{10000}, request_timeout{60000}, write_timeout{10000},
      drain_timeout{30000};
};

class HttpServer {
 public:
  explicit HttpServer(HttpOptions options);
  ~HttpServer();
  // Binds and listens (before the models load, so that a busy port is an error at once);
  // returns the port. Connections made before serve() wait in the listen backlog.
  int bind();
  // "host:port" for URLs (IPv6 addresses in brackets).
  std::string authority() const;
  // Serves `service` until SIGINT or SIGTERM, then finishes what was accepted. `model` is the
  // "model" field of GET /health; `ready` runs just before the server accepts. Returns the
  // final statistics (Metrics::summary).
  nlohmann::json serve(const Service& service, const nlohmann::json& model, const std::function<void()>& ready = {});

 private:
  HttpOptions options_;
  int listen_fd_ = -1, bound_ = -1;
};

}  // namespace vlmo::serve
