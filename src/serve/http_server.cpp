#include "serve/http_server.h"

#include <httplib.h>

#include <atomic>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <iostream>
#include <set>
#include <thread>

#include "serve/http_error.h"
#include "serve/web_assets.h"
#include "vlmo/files.h"
#include "vlmo/signals.h"

namespace vlmo::serve {
namespace {

using Clock = std::chrono::steady_clock;
thread_local Clock::time_point t_request_start;

void send_json(httplib::Response& res, int status, const nlohmann::json& body) {
  res.status = status;
  res.set_content(body.dump(), "application/json");
}

// Every error answer is JSON: {"error": "..."} (the handlers' own, or httplib's 404 / 413 / 400).
httplib::Server::HandlerResponse json_error(const httplib::Request& req, httplib::Response& res) {
  if (!res.body.empty()) return httplib::Server::HandlerResponse::Unhandled;
  std::string why = cat("HTTP status ", res.status);
  if (res.status == 400) why = "bad request";
  if (res.status == 404) why = cat("no such endpoint: ", req.method, " ", req.path, " (see GET /health)");
  if (res.status == 413) why = "request body too large (--max-body-mb)";
  send_json(res, res.status, {{"error", why}});
  return httplib::Server::HandlerResponse::Handled;
}

}  // namespace

HttpServer::HttpServer(HttpOptions options) : options_(std::move(options)), server_(std::make_unique<httplib::Server>()) {}
HttpServer::~HttpServer() = default;

int HttpServer::bind() {
  // The listening socket: SO_REUSEADDR only (httplib's default adds SO_REUSEPORT, with which a
  // second server could silently share the port), and its descriptor kept to widen the backlog.
  int listen_fd = -1;
  server_->set_socket_options([&listen_fd](socket_t sock) {
    int yes = 1;
    setsockopt(sock, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof(yes));
    listen_fd = sock;
  });
  const std::string& host = options_.host;
  bound_ = options_.port;
  if (options_.port == 0) {
    bound_ = server_->bind_to_any_port(host);
    if (bound_ < 0) throw Error(cat("cannot listen on ", host, " (any port)"));
  } else if (!server_->bind_to_port(host, options_.port)) {
    throw Error(cat("cannot listen on ", host, ":", options_.port, " (in use, or not an address of this machine)"));
  }
  // httplib listens with a backlog of 5: a burst of clients overflows it, the kernel drops their
  // handshakes, they retry a second later, and a request whose data arrives after httplib's
  // keep-alive wait is closed unanswered (seen as lost requests under load). listen() again on
  // the bound socket only widens the queue (the kernel caps it at net.core.somaxconn).
  if (listen_fd >= 0 && ::listen(listen_fd, 4096) != 0)
    throw Error(cat("cannot listen on ", host, ":", bound_, ": ", std::strerror(errno)));
  return bound_;
}

void HttpServer::log_requests(Metrics& metrics) {
  server_->set_pre_routing_handler([](const httplib::Request&, httplib::Response&) {
    t_request_start = Clock::now();
    return httplib::Server::HandlerResponse::Unhandled;
  });
  static const std::set<std::string> kKnown = {"/", "/health", "/metrics", "/api/image", "/api/search", "/api/vqa",
                                               "/api/itm", "/api/nlvr2", "/api/embed", "/app.js", "/style.css"};
  server_->set_logger([&metrics, quiet = options_.quiet](const httplib::Request& req, const httplib::Response& res) {
    const double ms = std::chrono::duration<double, std::milli>(Clock::now() - t_request_start).count();
    const std::string endpoint = kKnown.count(req.path) ? req.path : "other";
    metrics.request(endpoint, res.status, ms);
    if (!quiet)
      std::cerr << nlohmann::json{{"method", req.method}, {"path", endpoint}, {"status", res.status},
                                  {"ms", std::round(ms * 100) / 100}, {"bytes_in", req.body.size()}, {"bytes_out", res.body.size()}}
                       .dump()
                << "\n";
  });
}

void HttpServer::route(const Service& service, const nlohmann::json& model, Batcher& batcher, Metrics& metrics) {
  server_->Get("/health", [&, model](const httplib::Request&, httplib::Response& res) {
    nlohmann::json j = service.describe();
    j["status"] = "ok";
    j["uptime_s"] = std::chrono::duration<double>(Clock::now() - started_).count();
    j["queue"] = {{"depth", batcher.depth()}, {"capacity", batcher.capacity()}};
    j["max_batch"] = options_.max_batch;
    j["stats"] = metrics.summary();
    j["model"] = model;
    send_json(res, 200, j);
  });
  server_->Get("/metrics", [&](const httplib::Request&, httplib::Response& res) {
    res.set_content(metrics.prometheus(batcher.depth(), batcher.capacity()), "text/plain; version=0.0.4");
  });
  // The web page: the built-in copy, or the files of --web DIR (for editing it).
  auto page = [this](const std::string& name) {
    return [this, name](const httplib::Request&, httplib::Response& res) {
      const WebAsset* asset = find_web_asset(name);
      std::string body = asset ? std::string(asset->data, asset->size) : "";
      if (!options_.web_dir.empty()) body = read_input(options_.web_dir + "/" + name, "web page file");
      res.set_content(body, asset ? asset->content_type : "text/plain");
    };
  };
  server_->Get("/", page("index.html"));
  server_->Get("/app.js", page("app.js"));
  server_->Get("/style.css", page("style.css"));
  server_->Get("/api/image", [&](const httplib::Request& req, httplib::Response& res) {
    const std::string id = req.get_param_value("id");
    try {
      res.set_content(service.images().bytes(id), image_content_type(id));
    } catch (const HttpError& e) {
      send_json(res, e.status, {{"error", e.what()}});
    } catch (const Error& e) {
      send_json(res, 404, {{"error", e.what()}});
    }
  });
  for (const std::string name : {"search", "vqa", "itm", "nlvr2", "embed"}) {
    server_->Post("/api/" + name, [&, name](const httplib::Request& req, httplib::Response& res) {
      try {
        send_json(res, 200, service.answer(name, req.body, batcher));
      } catch (const HttpError& e) {
        send_json(res, e.status, {{"error", e.what()}});
      } catch (const Error& e) {
        send_json(res, 500, {{"error", e.what()}});
      }
    });
  }
}

nlohmann::json HttpServer::serve(const Service& service, const nlohmann::json& model, const std::function<void()>& ready) {
  if (bound_ < 0) bind();
  Metrics metrics;
  Batcher batcher(options_.queue, options_.max_batch, options_.batch_wait, metrics);
  started_ = Clock::now();
  server_->set_payload_max_length(options_.max_body_bytes);
  server_->set_read_timeout(10, 0);
  server_->set_write_timeout(10, 0);
  server_->set_keep_alive_max_count(1000);
  server_->set_keep_alive_timeout(2);  // short: stop() waits for idle kept-alive connections to time out
  // One thread per open connection (httplib's model): enough of them that kept-alive clients do
  // not make later ones wait for a free thread.
  const size_t threads = options_.http_threads;
  server_->new_task_queue = [threads] { return new httplib::ThreadPool(threads); };
  server_->set_error_handler(httplib::Server::HandlerWithResponse(json_error));
  server_->set_exception_handler([](const httplib::Request&, httplib::Response& res, std::exception_ptr ep) {
    std::string why = "internal error";
    try {
      std::rethrow_exception(ep);
    } catch (const std::exception& e) {
      why = e.what();
    } catch (...) {
    }
    send_json(res, 500, {{"error", why}});
  });
  log_requests(metrics);
  route(service, model, batcher, metrics);

  std::thread model_thread([&] { batcher.run(); });
  install_stop_handlers();
  std::atomic<bool> done{false};
  std::thread watcher([&] {  // stop() is retried: a signal may come before listening starts
    while (!done) {
      if (stop_requested()) server_->stop();
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
  });
  if (ready) ready();
  server_->listen_after_bind();  // returns after stop(), once the request threads have finished
  done = true;
  watcher.join();
  batcher.stop();
  model_thread.join();
  return metrics.summary();
}

}  // namespace vlmo::serve
