#include "serve/routes.h"

#include <filesystem>

#include "serve/openai_api.h"
#include "serve/web_assets.h"
#include "vlmo/files.h"

namespace vlmo::serve {
namespace {

HttpResponse json_ok(const nlohmann::json& j) { return {200, "application/json", json_text(j), {}}; }

// The routes: GET (HEAD too) and POST, by path.
const std::vector<std::string>& get_paths() {
  static const std::vector<std::string> paths = {"/", "/health", "/metrics", "/api/image", "/app.js", "/style.css", "/v1/models"};
  return paths;
}
const std::vector<std::string>& post_paths() {
  static const std::vector<std::string> paths = {"/api/search", "/api/vqa",   "/api/itm",
                                                 "/api/nlvr2",  "/api/embed", "/v1/embeddings"};
  return paths;
}

HttpResponse not_allowed(const HttpRequest& req, const std::string& path, const char* allow) {
  HttpResponse r = error_for(path, 405, cat(req.method.substr(0, 32), " ", path, ": only ", allow));
  r.headers.emplace_back("Allow", allow);
  return r;
}

}  // namespace

std::string json_text(const nlohmann::json& j) { return j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace); }

HttpResponse json_error(int status, const std::string& why) {
  HttpResponse r{status, "application/json", json_text({{"error", why}}), {}};
  if (status == 503) r.headers.emplace_back("Retry-After", "1");
  return r;
}

HttpResponse error_for(const std::string& path, int status, const std::string& why) {
  return path.rfind("/v1/", 0) == 0 ? openai_error(status, why) : json_error(status, why);
}

int http_status(RefusalKind kind) {
  switch (kind) {
    case RefusalKind::kBadRequest: return 400;
    case RefusalKind::kNotFound: return 404;
    case RefusalKind::kBusy: return 503;
    case RefusalKind::kStopping: return 503;
  }
  return 500;  // not reached: every kind is named above (-Wswitch)
}

HttpResponse refused(const Refusal& r) { return json_error(http_status(r.kind), r.what()); }

std::string post_refusal(const HttpRequest& req, int& status) {
  const std::string* type = req.header("content-type");
  const std::string media = type ? trim_blanks(ascii_lower(type->substr(0, type->find(';')))) : "";
  if (media.rfind("application/json", 0) != 0) {
    status = 415;
    return "POST bodies must be JSON sent as Content-Type: application/json";
  }
  const std::string* origin = req.header("origin");
  if (!origin) return "";
  const std::string* host = req.header("host");
  const size_t scheme = origin->find("://");
  const std::string origin_host = scheme == std::string::npos ? "" : ascii_lower(origin->substr(scheme + 3));
  if (!host || origin_host.empty() || origin_host != ascii_lower(*host)) {
    status = 403;
    return "cross-origin request refused: the Origin is not this server";
  }
  return "";
}

Routes::Routes(const Service& service, nlohmann::json model, Batcher& batcher, Metrics& metrics, size_t max_batch,
               std::string web_dir)
    : service_(service),
      model_(std::move(model)),
      batcher_(batcher),
      metrics_(metrics),
      max_batch_(max_batch),
      web_dir_(std::move(web_dir)),
      started_(std::chrono::steady_clock::now()),
      started_unix_(std::time(nullptr)) {}

std::optional<HttpResponse> Routes::check(const HttpRequest& req, std::string& endpoint, bool& is_post) const {
  for (const std::string& p : get_paths()) {
    if (req.path != p) continue;
    endpoint = p;
    is_post = false;
    if (req.method != "GET" && req.method != "HEAD") return not_allowed(req, p, "GET, HEAD");
    return std::nullopt;
  }
  for (const std::string& p : post_paths()) {
    if (req.path != p) continue;
    endpoint = p;
    is_post = true;
    if (req.method != "POST") return not_allowed(req, p, "POST");
    int status = 400;
    if (const std::string why = post_refusal(req, status); !why.empty()) return error_for(p, status, why);
    return std::nullopt;
  }
  endpoint = "other";
  return error_for(req.path, 404,
                   cat("no such endpoint: ", req.method.substr(0, 32), " ", req.path.substr(0, 200), " (see GET /health)"));
}

std::optional<HttpResponse> Routes::refusal_before_body(const HttpRequest& head, std::string& endpoint) const {
  bool is_post = false;
  return check(head, endpoint, is_post);
}

HttpResponse Routes::handle(const HttpRequest& req, std::string& endpoint) const {
  bool is_post = false;
  if (std::optional<HttpResponse> refusal = check(req, endpoint, is_post)) return *refusal;
  const std::string& p = req.path;
  if (!is_post) {
    if (p == "/health") return health();
    if (p == "/metrics")
      return {200, "text/plain; version=0.0.4", metrics_.prometheus(batcher_.depth(), batcher_.capacity()), {}};
    if (p == "/api/image") return image(req);
    if (p == "/v1/models") return json_ok(openai_models(service_, started_unix_));
    return page(p == "/" ? "index.html" : p.substr(1));
  }
  size_t bad = 0;
  if (!valid_utf8(req.body, &bad)) return error_for(p, 400, cat("request body: not valid UTF-8 (byte ", bad, ")"));
  if (json_nesting(req.body, kMaxJsonNesting) > kMaxJsonNesting)
    return error_for(p, 400, cat("request body: JSON nested deeper than ", kMaxJsonNesting, " levels"));
  if (p == "/v1/embeddings") return openai_embeddings(service_, req.body, batcher_, max_batch_);
  return task(p.substr(5), req);
}

HttpResponse Routes::health() const {
  nlohmann::json j = service_.describe();
  j["status"] = "ok";
  j["uptime_s"] = std::chrono::duration<double>(std::chrono::steady_clock::now() - started_).count();
  j["queue"] = {{"depth", batcher_.depth()}, {"capacity", batcher_.capacity()}};
  j["max_batch"] = max_batch_;
  j["stats"] = metrics_.summary();
  j["model"] = model_;
  return json_ok(j);
}

HttpResponse Routes::page(const std::string& name) const {
  const WebAsset* asset = find_web_asset(name);
  const std::string type = asset ? asset->content_type : "text/plain";
  if (web_dir_.empty()) return {200, type, asset ? std::string(asset->data, asset->size) : "", {}};
  try {
    return {200, type, read_input(web_dir_ + "/" + name, "web page file"), {}};
  } catch (const Error&) {
    return json_error(404, cat("the web page folder (--web) has no ", name));
  }
}

HttpResponse Routes::image(const HttpRequest& req) const {
  const auto it = req.query.find("id");
  const std::string id = it == req.query.end() ? "" : it->second;
  size_t bad = 0;
  if (!valid_utf8(id, &bad)) return json_error(400, cat("\"id\": not valid UTF-8 (byte ", bad, ")"));
  try {
    const ServedImages& images = service_.images();
    return {200, image_content_type(id), images.bytes(id), {}};
  } catch (const Refusal& r) {
    return refused(r);
  } catch (const Error&) {
    return json_error(404, cat("image \"", id.substr(0, 200), "\" of the collection cannot be read"));
  }
}

HttpResponse Routes::task(const std::string& name, const HttpRequest& req) const {
  try {
    return json_ok(service_.answer(name, req.body, batcher_));
  } catch (const Refusal& r) {
    return refused(r);
  } catch (const Error& e) {
    return json_error(500, e.what());
  }
}

}  // namespace vlmo::serve
