// What each HTTP request of `vlmo serve` is answered, without sockets: the routes of a Service,
// /health and /metrics, the web page, and the checks every request passes before it reaches a
// task (method, Content-Type and Origin of POSTs, UTF-8, JSON nesting). The HTTP server feeds
// it parsed requests; the fuzz target and the tests call it directly.
#pragma once
#include <chrono>
#include <nlohmann/json.hpp>
#include <string>
#include <utility>
#include <vector>

#include "serve/batcher.h"
#include "serve/http_request.h"
#include "serve/metrics.h"
#include "serve/refusal.h"
#include "serve/service.h"

namespace vlmo::serve {

struct HttpResponse {
  int status = 200;
  std::string content_type = "application/json";
  std::string body;
  std::vector<std::pair<std::string, std::string>> headers;  // extra ones (Allow, ...)
};

// {"error": why} with `status`; the JSON is written even when `why` holds invalid UTF-8.
HttpResponse json_error(int status, const std::string& why);
// A JSON body, invalid UTF-8 replaced rather than thrown on.
std::string json_text(const nlohmann::json& j);

// The HTTP status of each kind of refusal of the serving core: the one place where the core's
// refusals become status codes (bad request 400, not found 404, busy and stopping 503).
int http_status(RefusalKind kind);
// What a refused request is answered: that status, and the refusal's message as {"error": ...}.
HttpResponse refused(const Refusal& r);

constexpr size_t kMaxJsonNesting = 32;

class Routes {
 public:
  // `model`: the "model" field of GET /health; `web_dir`: serve the page from this folder.
  Routes(const Service& service, nlohmann::json model, Batcher& batcher, Metrics& metrics, size_t max_batch, std::string web_dir);

  // The answer to `req`. `endpoint` gets the route's path for the metrics, "other" when none
  // matched.
  HttpResponse handle(const HttpRequest& req, std::string& endpoint) const;

 private:
  HttpResponse health() const;
  HttpResponse page(const std::string& name) const;
  HttpResponse image(const HttpRequest& req) const;
  HttpResponse task(const std::string& name, const HttpRequest& req) const;

  const Service& service_;
  nlohmann::json model_;
  Batcher& batcher_;
  Metrics& metrics_;
  size_t max_batch_;
  std::string web_dir_;
  std::chrono::steady_clock::time_point started_;
};

// Whether a POST may drive the server: a JSON Content-Type ("" when fine, else why), and an
// Origin, when sent, naming the same host and port as the Host header (a page of another site
// cannot make the browser call a local server).
std::string post_refusal(const HttpRequest& req, int& status);

}  // namespace vlmo::serve
