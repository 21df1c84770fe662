// vlmo serve: the model over HTTP (cpp-httplib), with a web page. The models load once; the
// request threads decode and check their input, then queue it; one model thread takes queued
// requests of the same task together (up to --max-batch, waiting --batch-wait-ms for more) and
// runs the same task code as the CLI commands (answerers.h). A full queue answers 503, a too
// large body 413, bad input 400 with a JSON message. SIGINT / SIGTERM stop accepting, finish
// what was accepted, and exit 0.
#include <ATen/ATen.h>
#include <httplib.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <deque>
#include <filesystem>
#include <fstream>
#include <future>
#include <iostream>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <thread>

#include "common.h"
#include "vlmo/error.h"
#include "vlmo/files.h"
#include "vlmo/image.h"
#include "vlmo/image_tensor.h"
#include "vlmo/sources.h"
#include "vlmo/tasks.h"
#include "vlmo/train.h"
#include "vlmo/vector_index.h"
#include "web_assets.h"

namespace vlmo::cli {
namespace {

using Clock = std::chrono::steady_clock;

// ---- Request-level errors: a status and a message for the JSON body.
struct HttpError : Error {
  int status;
  HttpError(int s, const std::string& m) : Error(m), status(s) {}
};

// ---- base64 (RFC 4648) of data: URLs. Hand-written: 20 lines; no Debian library offers it
// without a larger dependency (NOTES.md).
std::string base64_decode(const std::string& in, size_t begin) {
  static const auto table = [] {
    std::array<int8_t, 256> t{};
    t.fill(-1);
    const char* alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    for (int i = 0; i < 64; ++i) t[static_cast<uint8_t>(alphabet[i])] = static_cast<int8_t>(i);
    return t;
  }();
  std::string out;
  out.reserve((in.size() - begin) / 4 * 3);
  uint32_t acc = 0;
  int bits = 0;
  for (size_t i = begin; i < in.size(); ++i) {
    const char c = in[i];
    if (c == '=') break;
    if (c == '\n' || c == '\r' || c == ' ') continue;
    const int8_t v = table[static_cast<uint8_t>(c)];
    if (v < 0) throw HttpError(400, cat("\"image\": not valid base64 at character ", i));
    acc = (acc << 6) | static_cast<uint32_t>(v);
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out.push_back(static_cast<char>((acc >> bits) & 0xFF));
    }
  }
  return out;
}

// ---- Counters for /health and /metrics.
class Metrics {
 public:
  static constexpr double kBucketsMs[] = {5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000};

  void request(const std::string& endpoint, int status, double ms) {
    std::lock_guard<std::mutex> lock(mu_);
    auto& e = endpoints_[endpoint];
    ++e.requests;
    if (status >= 400) ++e.errors;
    ++e.by_status[status];
    e.seconds_sum += ms / 1000;
    size_t b = 0;
    while (b < std::size(kBucketsMs) && ms > kBucketsMs[b]) ++b;
    ++e.buckets[b];
    recent_[recent_next_++ % recent_.size()] = ms;
    recent_count_ = std::min(recent_count_ + 1, recent_.size());
  }
  void batch(size_t size) {
    std::lock_guard<std::mutex> lock(mu_);
    ++batches_;
    batched_ += size;
    max_batch_ = std::max(max_batch_, size);
  }
  void rejected() { ++rejected_; }

  nlohmann::json summary() {
    std::lock_guard<std::mutex> lock(mu_);
    uint64_t requests = 0, errors = 0;
    for (const auto& [name, e] : endpoints_) requests += e.requests, errors += e.errors;
    std::vector<double> v(recent_.begin(), recent_.begin() + static_cast<std::ptrdiff_t>(recent_count_));
    std::sort(v.begin(), v.end());
    auto pct = [&](double p) { return v.empty() ? 0.0 : v[std::min(v.size() - 1, static_cast<size_t>(p * static_cast<double>(v.size())))]; };
    return {{"requests", requests},
            {"errors", errors},
            {"rejected_queue_full", rejected_.load()},
            {"batches", batches_},
            {"mean_batch_size", batches_ ? static_cast<double>(batched_) / static_cast<double>(batches_) : 0.0},
            {"max_batch_size", max_batch_},
            {"latency_ms_p50", pct(0.5)},
            {"latency_ms_p99", pct(0.99)}};
  }

  // Prometheus text exposition format.
  std::string prometheus(size_t queue_depth, size_t queue_capacity) {
    std::lock_guard<std::mutex> lock(mu_);
    std::string s;
    s += "# HELP vlmo_requests_total HTTP requests by endpoint and status.\n# TYPE vlmo_requests_total counter\n";
    for (const auto& [name, e] : endpoints_)
      for (const auto& [status, n] : e.by_status)
        s += cat("vlmo_requests_total{endpoint=\"", name, "\",status=\"", status, "\"} ", n, "\n");
    s += "# HELP vlmo_request_errors_total Responses with status >= 400.\n# TYPE vlmo_request_errors_total counter\n";
    for (const auto& [name, e] : endpoints_) s += cat("vlmo_request_errors_total{endpoint=\"", name, "\"} ", e.errors, "\n");
    s += "# HELP vlmo_request_duration_seconds Time from request read to response written.\n"
         "# TYPE vlmo_request_duration_seconds histogram\n";
    for (const auto& [name, e] : endpoints_) {
      uint64_t cum = 0;
      for (size_t b = 0; b <= std::size(kBucketsMs); ++b) {
        cum += e.buckets[b];
        const std::string le = b < std::size(kBucketsMs) ? cat(kBucketsMs[b] / 1000) : "+Inf";
        s += cat("vlmo_request_duration_seconds_bucket{endpoint=\"", name, "\",le=\"", le, "\"} ", cum, "\n");
      }
      s += cat("vlmo_request_duration_seconds_sum{endpoint=\"", name, "\"} ", e.seconds_sum, "\n");
      s += cat("vlmo_request_duration_seconds_count{endpoint=\"", name, "\"} ", e.requests, "\n");
    }
    s += "# HELP vlmo_batches_total Model batches run.\n# TYPE vlmo_batches_total counter\n";
    s += cat("vlmo_batches_total ", batches_, "\n");
    s += "# HELP vlmo_batched_requests_total Requests run in those batches.\n# TYPE vlmo_batched_requests_total counter\n";
    s += cat("vlmo_batched_requests_total ", batched_, "\n");
    s += cat("# HELP vlmo_batch_size_max Largest batch so far.\n# TYPE vlmo_batch_size_max gauge\nvlmo_batch_size_max ", max_batch_, "\n");
    s += cat("# HELP vlmo_rejected_total Requests refused with 503 (queue full).\n# TYPE vlmo_rejected_total counter\nvlmo_rejected_total ",
             rejected_.load(), "\n");
    s += cat("# HELP vlmo_queue_depth Requests waiting for the model.\n# TYPE vlmo_queue_depth gauge\nvlmo_queue_depth ", queue_depth, "\n");
    s += cat("# HELP vlmo_queue_capacity Queue bound (--queue).\n# TYPE vlmo_queue_capacity gauge\nvlmo_queue_capacity ", queue_capacity, "\n");
    return s;
  }

 private:
  struct Endpoint {
    uint64_t requests = 0, errors = 0;
    std::map<int, uint64_t> by_status;
    std::array<uint64_t, std::size(kBucketsMs) + 1> buckets{};
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

// ---- The bounded queue in front of the model, and the model thread that drains it.
class Batcher {
 public:
  Batcher(size_t capacity, size_t max_batch, std::chrono::microseconds wait, Metrics& metrics)
      : capacity_(capacity), max_batch_(max_batch), wait_(wait), metrics_(metrics) {}

  // Queues one prepared request; throws HttpError 503 when the queue is full or stopping.
  std::future<Answer> submit(const Task& task, Prepared input) {
    auto job = std::make_unique<Job>(Job{&task, std::move(input), {}});
    std::future<Answer> f = job->done.get_future();
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (stopping_) throw HttpError(503, "the server is stopping");
      if (queue_.size() >= capacity_) {
        metrics_.rejected();
        throw HttpError(503, cat("the server is busy: ", capacity_, " requests are waiting (--queue); retry shortly"));
      }
      queue_.push_back(std::move(job));
    }
    cv_.notify_one();
    return f;
  }

  size_t depth() {
    std::lock_guard<std::mutex> lock(mu_);
    return queue_.size();
  }
  size_t capacity() const { return capacity_; }

  // The model thread: runs until stop() and the queue is empty.
  void run() {
    at::NoGradGuard guard;
    for (;;) {
      std::vector<std::unique_ptr<Job>> batch;
      {
        std::unique_lock<std::mutex> lock(mu_);
        cv_.wait(lock, [&] { return !queue_.empty() || stopping_; });
        if (queue_.empty()) return;  // stopping, and nothing left
        const Task* task = queue_.front()->task;
        // Give concurrent requests of the same task a moment to join this batch.
        cv_.wait_until(lock, Clock::now() + wait_, [&] { return count_of(task) >= max_batch_ || stopping_; });
        for (auto it = queue_.begin(); it != queue_.end() && batch.size() < max_batch_;) {
          if ((*it)->task == task) {
            batch.push_back(std::move(*it));
            it = queue_.erase(it);
          } else {
            ++it;
          }
        }
      }
      std::vector<Prepared> inputs;
      for (auto& j : batch) inputs.push_back(std::move(j->input));
      metrics_.batch(batch.size());
      try {
        std::vector<Answer> answers = batch.front()->task->run(inputs);
        for (size_t i = 0; i < batch.size(); ++i) batch[i]->done.set_value(std::move(answers.at(i)));
      } catch (...) {
        for (auto& j : batch) j->done.set_exception(std::current_exception());
      }
    }
  }

  void stop() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stopping_ = true;
    }
    cv_.notify_all();
  }

 private:
  struct Job {
    const Task* task;
    Prepared input;
    std::promise<Answer> done;
  };
  size_t count_of(const Task* task) const {
    return static_cast<size_t>(std::count_if(queue_.begin(), queue_.end(), [&](const auto& j) { return j->task == task; }));
  }
  const size_t capacity_, max_batch_;
  const std::chrono::microseconds wait_;
  Metrics& metrics_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::unique_ptr<Job>> queue_;
  bool stopping_ = false;
};

// ---- What the server holds: models (one per distinct file), tokenizer, collection, tasks.
struct Service {
  std::map<std::string, std::unique_ptr<LoadedModel>> models;  // by path
  std::unique_ptr<Tokenizer> tok;
  std::unique_ptr<VectorIndex> index;
  std::string index_path;
  std::map<std::string, std::string> collection_files;  // id -> file, for an image collection
  std::map<std::string, Task> tasks;                    // by endpoint name
  std::map<std::string, std::string> task_models;       // endpoint -> model path
  std::map<std::string, std::string> unavailable;       // endpoint -> why
  int64_t max_pixels = 40'000'000;

  // The bytes of a collection image: its file, or a member of a WebDataset shard (an id
  // "SHARD.tar/MEMBER" of `vlmo embed`). The members of the last two shards read are kept.
  std::string image_bytes(const std::string& id) const {
    const auto it = collection_files.find(id);
    if (it == collection_files.end()) throw HttpError(404, cat("no image \"", id.substr(0, 200), "\" in the collection"));
    const std::string& path = it->second;
    const size_t tar = path.find(".tar/");
    if (tar == std::string::npos || std::filesystem::exists(path)) return read_input(path, "collection image");
    const std::string shard = path.substr(0, tar + 4), member = path.substr(tar + 5);
    std::lock_guard<std::mutex> lock(shard_mu);
    auto cached = std::find_if(shards.begin(), shards.end(), [&](const auto& s) { return s.first == shard; });
    if (cached == shards.end()) {
      std::map<std::string, std::string> members;
      TarReader reader(shard);
      TarEntry e;
      while (reader.next(e)) members[e.name] = std::move(e.data);
      if (shards.size() >= 2) shards.pop_front();
      shards.emplace_back(shard, std::move(members));
      cached = std::prev(shards.end());
    }
    const auto m = cached->second.find(member);
    if (m == cached->second.end()) throw HttpError(404, cat(shard, ": no member ", member));
    return m->second;
  }
  mutable std::mutex shard_mu;
  mutable std::deque<std::pair<std::string, std::map<std::string, std::string>>> shards;

  // An image field: a data: URL (an upload) or an id of the image collection.
  at::Tensor image(const std::string& value, int size) const {
    DecodeOptions opt;
    opt.max_pixels = max_pixels;
    if (value.rfind("data:", 0) == 0) {
      const size_t comma = value.find(',');
      if (comma == std::string::npos || value.substr(0, comma).find(";base64") == std::string::npos)
        throw HttpError(400, "\"image\": a data: URL must be base64 (data:image/png;base64,...)");
      return eval_transform(decode_image(base64_decode(value, comma + 1), "uploaded image", opt), size);
    }
    if (!collection_files.count(value))
      throw HttpError(400, cat("\"image\": \"", value.substr(0, 200), "\" is neither an image of the collection nor a data: URL"));
    return eval_transform(decode_image(image_bytes(value), value, opt), size);
  }
};

// The file of a collection id: as written, else relative to the index file's folder.
// A member of a shard ("SHARD.tar/MEMBER") resolves its shard the same way.
std::string resolve_collection_file(const std::string& id, const std::string& index_path) {
  namespace fs = std::filesystem;
  const size_t tar = id.find(".tar/");
  const std::string file = tar == std::string::npos ? id : id.substr(0, tar + 4);
  const std::string rest = tar == std::string::npos ? "" : id.substr(tar + 4);
  if (fs::exists(file)) return id;
  const fs::path beside = fs::path(index_path).parent_path() / file;
  return fs::exists(beside) ? beside.string() + rest : id;
}

std::string content_type_of(const std::string& path) {
  const std::string ext = std::filesystem::path(path).extension().string();
  if (ext == ".png") return "image/png";
  if (ext == ".webp") return "image/webp";
  return "image/jpeg";
}

void send_json(httplib::Response& res, int status, const nlohmann::json& body) {
  res.status = status;
  res.set_content(body.dump(), "application/json");
}

thread_local Clock::time_point t_request_start;

int run_serve(const Args& a) {
  if (a.get("model").empty()) throw Error("--model is required (a checkpoint)");
  const std::string host = a.get("host");
  const int port = a.get_int("port");
  if (!a.get("port-file").empty()) check_output_path(a.get("port-file"), "port file (--port-file)");
  Service svc;
  svc.max_pixels = a.get_int64("max-pixels");
  httplib::Server server;
  // The listening socket: SO_REUSEADDR only (httplib's default adds SO_REUSEPORT, with which a
  // second server could silently share the port), and its descriptor kept to widen the backlog.
  int listen_fd = -1;
  server.set_socket_options([&listen_fd](socket_t sock) {
    int yes = 1;
    setsockopt(sock, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof(yes));
    listen_fd = sock;
  });
  // Bind before the models load: a busy port is an error at once. Connections made while they
  // load wait in the listen backlog and are served once ready.
  int bound = port;
  if (port == 0) {
    bound = server.bind_to_any_port(host);
    if (bound < 0) throw Error(cat("cannot listen on ", host, " (any port)"));
  } else if (!server.bind_to_port(host, port)) {
    throw Error(cat("cannot listen on ", host, ":", port, " (in use, or not an address of this machine)"));
  }
  // httplib listens with a backlog of 5: a burst of clients overflows it, the kernel drops their
  // handshakes, they retry a second later, and a request whose data arrives after httplib's
  // keep-alive wait is closed unanswered (seen as lost requests under load). listen() again on
  // the bound socket only widens the queue (the kernel caps it at net.core.somaxconn).
  if (listen_fd >= 0 && ::listen(listen_fd, 4096) != 0)
    throw Error(cat("cannot listen on ", host, ":", bound, ": ", std::strerror(errno)));

  // Models: --model for every task, --vqa-model / --nlvr2-model for theirs.
  auto model_at = [&](const std::string& path, const std::string& answers) -> LoadedModel& {
    auto& slot = svc.models[path];
    if (!slot) {
      Args b = a;
      b.values["model"] = path;
      b.values["answers"] = answers;
      std::cerr << "loading " << path << "\n";
      slot = std::make_unique<LoadedModel>(load_model_from(b));
    }
    return *slot;
  };
  LoadedModel& main_model = model_at(a.get("model"), a.get("vqa-model").empty() ? a.get("answers") : "");
  svc.tok = std::make_unique<Tokenizer>(tokenizer_for(a, main_model));
  if (!a.get("index").empty()) {
    svc.index_path = a.get("index");
    svc.index = std::make_unique<VectorIndex>(VectorIndex::open(svc.index_path));
    if (svc.index->modality() == "image")
      for (const auto& id : svc.index->ids()) svc.collection_files[id] = resolve_collection_file(id, svc.index_path);
  }
  const ImageFn image = [&svc](const std::string& v, int size) { return svc.image(v, size); };
  const int64_t top = a.get_int64("top-k");
  auto add = [&](const std::string& name, const std::string& path, const std::function<Task(LoadedModel&)>& make,
                 const std::string& answers = "") {
    try {
      LoadedModel& m = model_at(path, answers);
      if (m.model->config().vocab_size != svc.tok->vocab_size())
        throw Error(cat(path, ": vocab_size ", m.model->config().vocab_size, " differs from the tokenizer's ", svc.tok->vocab_size()));
      if (const auto v = m.metadata.find(kVocabMetadataKey); a.get("vocab").empty() && v != m.metadata.end() && v->second != svc.tok->vocab_text())
        throw Error(cat(path, ": records a vocabulary other than the one of ", a.get("model"), " (give --vocab)"));
      svc.tasks.emplace(name, make(m));
      svc.task_models[name] = path;
    } catch (const Error& e) {
      svc.unavailable[name] = e.what();
    }
  };
  const std::string vqa_path = a.get("vqa-model").empty() ? a.get("model") : a.get("vqa-model");
  const std::string nlvr2_path = a.get("nlvr2-model").empty() ? a.get("model") : a.get("nlvr2-model");
  add("vqa", vqa_path, [&](LoadedModel& m) { return vqa_task(m, *svc.tok, image, 5, 100); }, a.get("answers"));
  add("nlvr2", nlvr2_path, [&](LoadedModel& m) { return nlvr2_task(m, *svc.tok, image); });
  add("itm", a.get("model"), [&](LoadedModel& m) { return itm_task(m, *svc.tok, image); });
  add("embed", a.get("model"), [&](LoadedModel& m) { return embed_task(m, *svc.tok, image); });
  if (svc.index)
    add("search", a.get("model"), [&](LoadedModel& m) { return search_task(m, *svc.tok, *svc.index, image, top, 100); });
  else
    svc.unavailable["search"] = "no collection: start the server with --index";
  if (svc.tasks.empty()) {
    std::string why;
    for (const auto& [name, w] : svc.unavailable) why += cat("\n  ", name, ": ", w);
    throw Error(cat("the models answer no task:", why));
  }
  for (auto& [path, m] : svc.models) m->model->eval();

  Metrics metrics;
  Batcher batcher(static_cast<size_t>(a.get_int64("queue")), static_cast<size_t>(a.get_int64("max-batch")),
                  std::chrono::microseconds(static_cast<int64_t>(a.get_double("batch-wait-ms") * 1000)), metrics);
  const auto started = Clock::now();
  const bool quiet = a.get_flag("quiet");
  const std::string web_dir = a.get("web");

  server.set_payload_max_length(static_cast<size_t>(a.get_int64("max-body-mb")) << 20);
  server.set_read_timeout(10, 0);
  server.set_write_timeout(10, 0);
  server.set_keep_alive_max_count(1000);
  server.set_keep_alive_timeout(2);  // short: stop() waits for idle kept-alive connections to time out
  // One thread per open connection (httplib's model): enough of them that kept-alive clients do
  // not make later ones wait for a free thread.
  const size_t http_threads = static_cast<size_t>(a.get_int64("http-threads"));
  server.new_task_queue = [http_threads] { return new httplib::ThreadPool(http_threads); };
  server.set_pre_routing_handler([](const httplib::Request&, httplib::Response&) {
    t_request_start = Clock::now();
    return httplib::Server::HandlerResponse::Unhandled;
  });
  // Every error answer is JSON: {"error": "..."} (the handlers' own, or httplib's 404 / 413 / 400).
  server.set_error_handler(httplib::Server::HandlerWithResponse([](const httplib::Request& req, httplib::Response& res) {
    if (!res.body.empty()) return httplib::Server::HandlerResponse::Unhandled;
    std::string why = cat("HTTP status ", res.status);
    if (res.status == 400) why = "bad request";
    if (res.status == 404) why = cat("no such endpoint: ", req.method, " ", req.path, " (see GET /health)");
    if (res.status == 413) why = "request body too large (--max-body-mb)";
    send_json(res, res.status, {{"error", why}});
    return httplib::Server::HandlerResponse::Handled;
  }));
  server.set_exception_handler([](const httplib::Request&, httplib::Response& res, std::exception_ptr ep) {
    std::string why = "internal error";
    try {
      std::rethrow_exception(ep);
    } catch (const std::exception& e) {
      why = e.what();
    } catch (...) {
    }
    send_json(res, 500, {{"error", why}});
  });
  static const std::set<std::string> kKnown = {"/", "/health", "/metrics", "/api/image", "/api/search", "/api/vqa",
                                               "/api/itm", "/api/nlvr2", "/api/embed", "/app.js", "/style.css"};
  server.set_logger([&](const httplib::Request& req, const httplib::Response& res) {
    const double ms = std::chrono::duration<double, std::milli>(Clock::now() - t_request_start).count();
    const std::string endpoint = kKnown.count(req.path) ? req.path : "other";
    metrics.request(endpoint, res.status, ms);
    if (!quiet)
      std::cerr << nlohmann::json{{"method", req.method}, {"path", endpoint}, {"status", res.status},
                                  {"ms", std::round(ms * 100) / 100}, {"bytes_in", req.body.size()}, {"bytes_out", res.body.size()}}
                       .dump()
                << "\n";
  });

  auto info = [&] {
    nlohmann::json models = nlohmann::json::object();
    for (const auto& [name, path] : svc.task_models) models[name] = path;
    nlohmann::json j = {{"status", "ok"},
                        {"tasks", models},
                        {"unavailable", svc.unavailable},
                        {"uptime_s", std::chrono::duration<double>(Clock::now() - started).count()},
                        {"queue", {{"depth", batcher.depth()}, {"capacity", batcher.capacity()}}},
                        {"max_batch", a.get_int64("max-batch")},
                        {"stats", metrics.summary()}};
    if (svc.index)
      j["collection"] = {{"path", svc.index_path}, {"size", svc.index->size()}, {"modality", svc.index->modality()},
                         {"kind", index_kind_name(svc.index->kind())}, {"dim", svc.index->dim()}};
    const Config& c = main_model.model->config();
    j["model"] = {{"path", a.get("model")}, {"image_size", c.image_size}, {"max_text_len", c.max_text_len},
                  {"embed_dim", c.embed_dim}, {"depth", c.depth}};
    return j;
  };
  server.Get("/health", [&](const httplib::Request&, httplib::Response& res) { send_json(res, 200, info()); });
  server.Get("/metrics", [&](const httplib::Request&, httplib::Response& res) {
    res.set_content(metrics.prometheus(batcher.depth(), batcher.capacity()), "text/plain; version=0.0.4");
  });
  // The web page: the built-in copy, or the files of --web DIR (for editing it).
  auto page = [&](const std::string& name) {
    return [&, name](const httplib::Request&, httplib::Response& res) {
      const WebAsset* asset = find_web_asset(name);
      std::string body = asset ? std::string(asset->data, asset->size) : "";
      if (!web_dir.empty()) body = read_input(web_dir + "/" + name, "web page file");
      res.set_content(body, asset ? asset->content_type : "text/plain");
    };
  };
  server.Get("/", page("index.html"));
  server.Get("/app.js", page("app.js"));
  server.Get("/style.css", page("style.css"));
  server.Get("/api/image", [&](const httplib::Request& req, httplib::Response& res) {
    const std::string id = req.get_param_value("id");
    try {
      res.set_content(svc.image_bytes(id), content_type_of(id));
    } catch (const HttpError& e) {
      send_json(res, e.status, {{"error", e.what()}});
    } catch (const Error& e) {
      send_json(res, 404, {{"error", e.what()}});
    }
  });
  for (const std::string name : {"search", "vqa", "itm", "nlvr2", "embed"}) {
    server.Post("/api/" + name, [&, name](const httplib::Request& req, httplib::Response& res) {
      try {
        const auto t = svc.tasks.find(name);
        if (t == svc.tasks.end()) throw HttpError(404, cat("/api/", name, " is not available: ", svc.unavailable.at(name)));
        nlohmann::json body;
        try {
          body = nlohmann::json::parse(req.body);
        } catch (const std::exception& e) {
          throw HttpError(400, cat("request body: not valid JSON (", e.what(), ")"));
        }
        if (const std::string why = request_error(body, t->second.fields); !why.empty()) throw HttpError(400, why);
        Prepared in;
        try {
          in = t->second.prepare(body);
        } catch (const HttpError&) {
          throw;
        } catch (const Error& e) {
          throw HttpError(400, e.what());
        }
        std::future<Answer> answer = batcher.submit(t->second, std::move(in));
        send_json(res, 200, answer.get().fields);
      } catch (const HttpError& e) {
        send_json(res, e.status, {{"error", e.what()}});
      } catch (const Error& e) {
        send_json(res, 500, {{"error", e.what()}});
      }
    });
  }

  if (host != "127.0.0.1" && host != "localhost" && host != "::1")
    std::cerr << "note: listening on " << host << ": the server has no authentication; anyone who can reach this port can use it\n";
  std::thread model_thread([&] { batcher.run(); });
  install_stop_handlers();
  std::atomic<bool> done{false};
  std::thread watcher([&] {  // stop() is retried: a signal may come before listening starts
    while (!done) {
      if (stop_requested()) server.stop();
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
  });
  if (!a.get("port-file").empty()) write_file_atomic(a.get("port-file"), cat(bound, "\n"));
  std::string tasks;
  for (const auto& [name, t] : svc.tasks) tasks += (tasks.empty() ? "" : ", ") + name;
  std::cout << "serving " << a.get("model") << " (" << tasks << ")"
            << (svc.index ? cat(" over ", svc.index->size(), " ", svc.index->modality(), "s of ", svc.index_path) : "")
            << " at http://" << host << ":" << bound << "/" << std::endl;
  server.listen_after_bind();  // returns after stop(), once the request threads have finished
  done = true;
  watcher.join();
  batcher.stop();
  model_thread.join();
  const nlohmann::json s = metrics.summary();
  std::cout << "stopped: " << s["requests"] << " requests (" << s["errors"] << " errors), p50 "
            << s["latency_ms_p50"].get<double>() << " ms, p99 " << s["latency_ms_p99"].get<double>() << " ms" << std::endl;
  return 0;
}

}  // namespace

Command serve_command() {
  Command c{"serve",
            "Serve a model over HTTP with a web page: search (--index), VQA, image-text matching, NLVR2, embeddings.",
            "vlmo serve --model M [--index I] [--vqa-model V] [--nlvr2-model N] [--host 127.0.0.1] [--port 8080]"};
  c.options = model_options();
  for (const Option& o : std::vector<Option>{
           {"index", "", "collection to search: an index (vlmo index build), an embedding file or a folder of chunks (vlmo embed)"},
           {"vqa-model", "", "model for /api/vqa, else --model"},
           {"nlvr2-model", "", "model for /api/nlvr2, else --model"},
           {"host", "127.0.0.1", "address to listen on (0.0.0.0: every interface)"},
           integer_option("port", "8080", "port (0: any free port, printed)", 0, 65535),
           {"port-file", "", "write the port listened on to this file once ready"},
           integer_option("http-threads", "64", "connections served at once (each kept-alive client holds one)", 1, 4096),
           integer_option("max-batch", "16", "requests of one task run through the model together", 1, 4096),
           number_option("batch-wait-ms", "5", "how long the model thread waits for a batch to fill", 0, 10000),
           integer_option("queue", "64", "requests that may wait for the model; beyond it: 503", 1, 1 << 20),
           integer_option("max-body-mb", "16", "largest request body, MiB (beyond it: 413)", 1, 4096),
           integer_option("max-pixels", "40000000", "largest image accepted, pixels", 1),
           integer_option("top-k", "8", "search hits when a request gives no \"top_k\"", 1, 100),
           {"web", "", "serve the web page from this folder instead of the built-in copy"},
           {"quiet", "false", "no JSON access log on stderr", true}})
    c.options.push_back(o);
  c.run = run_serve;
  return c;
}

}  // namespace vlmo::cli
