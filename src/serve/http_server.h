// `vlmo serve` over HTTP (cpp-httplib): the routes of a Service, the web page, /health and
// /metrics, the JSON access log, and the stop on SIGINT / SIGTERM. Request threads decode and
// check their input and queue it; one model thread (Batcher) answers batches of one task. A
// full queue answers 503, a too large body 413, bad input 400, each with a JSON message.
#pragma once
#include <chrono>
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>

#include "serve/service.h"

namespace httplib {
class Server;
}

namespace vlmo::serve {

struct HttpOptions {
  std::string host = "127.0.0.1";
  int port = 8080;                // 0: any free port
  size_t http_threads = 64;       // connections served at once
  size_t max_batch = 16;          // requests of one task per model batch
  std::chrono::microseconds batch_wait{5000};
  size_t queue = 64;              // requests that may wait for the model
  size_t max_body_bytes = 16u << 20;
  std::string web_dir;            // serve the page from here instead of the built-in copy
  bool quiet = false;             // no access log
};

class HttpServer {
 public:
  explicit HttpServer(HttpOptions options);
  ~HttpServer();
  // Binds the port (before the models load, so that a busy port is an error at once); returns
  // it. Connections made before serve() wait in the listen backlog.
  int bind();
  // Serves `service` until SIGINT or SIGTERM, then finishes what was accepted. `model` is the
  // "model" field of GET /health; `ready` runs once the routes are set, just before the server
  // accepts. Returns the final statistics (Metrics::summary).
  nlohmann::json serve(const Service& service, const nlohmann::json& model, const std::function<void()>& ready = {});

 private:
  void route(const Service& service, const nlohmann::json& model, Batcher& batcher, Metrics& metrics);
  void log_requests(Metrics& metrics);
  HttpOptions options_;
  std::unique_ptr<httplib::Server> server_;
  int bound_ = -1;
  std::chrono::steady_clock::time_point started_;
};

}  // namespace vlmo::serve
