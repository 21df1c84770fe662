// What each HTTP request of `vlmo serve` is answered, without sockets: the routes of a Service,
// /health and /metrics, the web page, the OpenAI-style /v1/ routes (serve/openai_api.h), and the
// checks every request passes before it reaches a task (method, Content-Type and Origin of POSTs,
// UTF-8, JSON nesting). HEAD is answered as GET (the server sends no body). The HTTP server feeds
// it parsed requests, and asks refusal_before_body() about a head whose body is still to come;
// the fuzz target and the tests call it directly.
#pragma once
#include <chrono>
#include <ctime>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "serve/batcher.h"
#include "serve/http_request.h"
#include "serve/http_response.h"
#include "serve/metrics.h"
#include "serve/refusal.h"
#include "serve/service.h"

namespace vlmo::serve {

// {"error": why} with `status`; the JSON is written even when `why` holds invalid UTF-8. A 503
// carries Retry-After.
HttpResponse json_error(int status, const std::string& why);
// The error answer for a request to `path`: json_error, or on /v1/ the OpenAI API's error object.
HttpResponse error_for(const std::string& path, int status, const std::string& why);
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
  // For a head whose body is still to come: the answer that handle() would give whatever the
  // body (no such route, a wrong method, a POST that is not JSON or from another origin), so the
  // body need not be read (and "100 Continue" is not sent); nullopt when the body is wanted.
  std::optional<HttpResponse> refusal_before_body(const HttpRequest& head, std::string& endpoint) const;

 private:
  // The route's checks that need no body; nullopt when the request may go on.
  std::optional<HttpResponse> check(const HttpRequest& req, std::string& endpoint, bool& is_post) const;
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
  std::time_t started_unix_;
};

// Whether a POST may drive the server: a JSON Content-Type ("" when fine, else why), and an
// Origin, when sent, naming the same host and port as the Host header (a page of another site
// cannot make the browser call a local server).
std::string post_refusal(const HttpRequest& req, int& status);

}  // namespace vlmo::serve
