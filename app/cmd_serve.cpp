// vlmo serve: the options, the models and the tasks they answer; the server itself (routes,
// batching, metrics, the page) is src/serve/. SIGINT / SIGTERM stop accepting, finish what was
// accepted, and exit 0.
#include <filesystem>
#include <iostream>
#include <map>
#include <memory>

#include "common.h"
#include "serve/http_server.h"
#include "vlmo/error.h"
#include "vlmo/files.h"
#include "vlmo/tasks.h"
#include "vlmo/threads.h"
#include "vlmo/vector_index.h"

namespace vlmo::cli {
namespace {
namespace fs = std::filesystem;

serve::HttpOptions http_options(const Args& a) {
  serve::HttpOptions o;
  o.host = a.get("host");
  o.port = a.get_int("port");
  o.http_threads = static_cast<size_t>(a.get_int64("http-threads"));
  o.max_connections = static_cast<size_t>(a.get_int64("max-connections"));
  o.max_batch = static_cast<size_t>(a.get_int64("max-batch"));
  o.batch_wait = std::chrono::microseconds(static_cast<int64_t>(a.get_double("batch-wait-ms") * 1000));
  o.queue = static_cast<size_t>(a.get_int64("queue"));
  o.max_body_bytes = static_cast<size_t>(a.get_int64("max-body-mb")) << 20;
  o.max_inflight_bytes = static_cast<size_t>(a.get_int64("max-inflight-mb")) << 20;
  o.allowed_hosts = a.get_all("allowed-host");
  o.web_dir = a.get("web");
  if (!o.web_dir.empty() && !fs::is_regular_file(fs::path(o.web_dir) / "index.html"))
    throw Error(cat("--web ", o.web_dir, ": not a folder holding index.html (the page's files: index.html, app.js, style.css)"));
  o.quiet = a.get_flag("quiet");
  return o;
}

// What clients see of a server file: its name, never where it lives.
std::string public_name(const std::string& path) { return fs::path(path).filename().string(); }

// `text` with each of `paths` (and its absolute form) shown as its file name.
std::string without_paths(std::string text, const std::vector<std::string>& paths) {
  for (const std::string& p : paths) {
    if (p.empty()) continue;
    for (const std::string& form : {fs::absolute(p).lexically_normal().string(), p}) {
      for (size_t at = text.find(form); at != std::string::npos; at = text.find(form, at))
        text.replace(at, form.size(), public_name(p));
    }
  }
  return text;
}

// The models (one per distinct file: --model for every task, --vqa-model / --nlvr2-model for
// theirs) and the tasks they answer; a task whose model cannot answer it is unavailable, with why.
struct ServedModels {
  const Args& a;
  serve::Service& svc;
  std::map<std::string, std::unique_ptr<LoadedModel>> by_path;
  std::unique_ptr<Tokenizer> tok;

  LoadedModel& at(const std::string& path, const std::string& answers) {
    if (const auto it = by_path.find(path); it != by_path.end()) return *it->second;
    Args b = a;
    b.values["model"] = path;
    b.values["answers"] = answers;
    std::cerr << "loading " << path << "\n";
    auto loaded = std::make_unique<LoadedModel>(load_model_from(b));  // no entry unless it loaded
    return *by_path.emplace(path, std::move(loaded)).first->second;
  }
  // A task on the model at `path`. When the model is one named for this task (`option`, e.g.
  // --vqa-model), a model that does not load or cannot answer it is an error; on --model, the
  // task is unavailable and /health says why.
  void add(const std::string& name, const std::string& path, const std::function<Task(LoadedModel&)>& make,
           const std::string& answers = "", const std::string& option = "") {
    try {
      LoadedModel& m = at(path, answers);
      if (m.model->config().vocab_size != tok->vocab_size())
        throw Error(
            cat(path, ": vocab_size ", m.model->config().vocab_size, " differs from the tokenizer's ", tok->vocab_size()));
      if (const auto v = m.metadata.find(kVocabMetadataKey);
          a.get("vocab").empty() && v != m.metadata.end() && v->second != tok->vocab_text())
        throw Error(cat(path, ": records a vocabulary other than the one of ", a.get("model"), " (give --vocab)"));
      svc.add_task(name, public_name(path), make(m));
    } catch (const Error& e) {
      if (!option.empty() && !a.get(option).empty()) throw Error(cat("--", option, ": ", e.what()));
      svc.set_unavailable(name, without_paths(e.what(), {path, a.get("model"), a.get("answers"), a.get("vocab")}));
    }
  }
};

int run_serve(const Args& a) {
  return_freed_host_memory();  // what hostile requests allocate must not stay (vlmo/threads.h)
  if (a.get("model").empty()) throw Error("--model is required (a checkpoint)");
  if (!a.get("port-file").empty()) check_output_path(a.get("port-file"), "port file (--port-file)");
  serve::HttpServer server(http_options(a));
  const int port = server.bind();  // before the models load: a busy port is an error at once

  serve::Service svc(a.get_int64("max-pixels"), a.get_int64("max-image-side"));
  ServedModels models{a, svc, {}, {}};
  LoadedModel& main_model = models.at(a.get("model"), a.get("vqa-model").empty() ? a.get("answers") : "");
  models.tok = std::make_unique<Tokenizer>(tokenizer_for(a, main_model));
  if (!a.get("index").empty())
    svc.set_collection(std::make_unique<VectorIndex>(VectorIndex::open(a.get("index"))), public_name(a.get("index")),
                       a.get("index"));
  const ImageFn image = svc.image_fn();
  const Tokenizer& tok = *models.tok;
  const std::string vqa_path = a.get("vqa-model").empty() ? a.get("model") : a.get("vqa-model");
  const std::string nlvr2_path = a.get("nlvr2-model").empty() ? a.get("model") : a.get("nlvr2-model");
  models.add(
      "vqa", vqa_path, [&](LoadedModel& m) { return vqa_task(m, tok, image, 5, 100); }, a.get("answers"), "vqa-model");
  models.add(
      "nlvr2", nlvr2_path, [&](LoadedModel& m) { return nlvr2_task(m, tok, image); }, "", "nlvr2-model");
  models.add("itm", a.get("model"), [&](LoadedModel& m) { return itm_task(m, tok, image); });
  models.add("embed", a.get("model"), [&](LoadedModel& m) { return embed_task(m, tok, image); });
  if (const VectorIndex* index = svc.collection())
    models.add("search", a.get("model"),
               [&](LoadedModel& m) { return search_task(m, tok, *index, image, a.get_int64("top-k"), 100); });
  else svc.set_unavailable("search", "no collection: start the server with --index");
  if (svc.tasks().empty()) {
    std::string why;
    for (const auto& [name, w] : svc.unavailable()) why += cat("\n  ", name, ": ", w);
    throw Error(cat("the models answer no task:", why));
  }
  for (auto& [path, m] : models.by_path) m->model->eval();

  const Config& c = main_model.model->config();
  const nlohmann::json model = {{"path", public_name(a.get("model"))},
                                {"image_size", c.image_size},
                                {"max_text_len", c.max_text_len},
                                {"embed_dim", c.embed_dim},
                                {"depth", c.depth}};
  const std::string host = a.get("host");
  if (host != "127.0.0.1" && host != "localhost" && host != "::1")
    std::cerr << "note: listening on " << host
              << ": the server has no authentication; anyone who can reach this port can use it (by the names it answers to:"
              << " --allowed-host)\n";
  const nlohmann::json s = server.serve(svc, model, [&] {
    if (!a.get("port-file").empty()) write_file_atomic(a.get("port-file"), cat(port, "\n"));
    std::string tasks;
    for (const auto& [name, t] : svc.tasks()) tasks += (tasks.empty() ? "" : ", ") + name;
    const VectorIndex* index = svc.collection();
    std::cout << "serving " << a.get("model") << " (" << tasks << ")"
              << (index ? cat(" over ", index->size(), " ", index->modality(), "s of ", a.get("index")) : "") << " at http://"
              << server.authority() << "/" << std::endl;
  });
  std::cout << "stopped: " << s["requests"] << " requests (" << s["errors"] << " errors), p50 "
            << s["latency_ms_p50"].get<double>() << " ms, p99 " << s["latency_ms_p99"].get<double>() << " ms" << std::endl;
  return 0;
}

}  // namespace

Command serve_command() {
  Command c{"serve", "Serve a model over HTTP with a web page: search (--index), VQA, image-text matching, NLVR2, embeddings.",
            "vlmo serve --model M [--index I] [--vqa-model V] [--nlvr2-model N] [--host 127.0.0.1] [--port 8080]"};
  c.options = model_options();
  for (const Option& o : std::vector<Option>{
           {"index", "",
            "collection to search: an index (vlmo index build), an embedding file or a folder of chunks (vlmo embed)"},
           {"vqa-model", "", "model for /api/vqa, else --model"},
           {"nlvr2-model", "", "model for /api/nlvr2, else --model"},
           {"host", "127.0.0.1", "address to listen on (0.0.0.0: every interface)"},
           integer_option("port", "8080", "port (0: any free port, printed)", 0, 65535),
           {"port-file", "", "write the port listened on to this file once ready"},
           integer_option("http-threads", "64", "requests handled at once (idle and slow connections hold none)", 1, 4096),
           integer_option("max-connections", "1024", "open connections at most; beyond, the longest idle makes room, else 503", 1,
                          1 << 20),
           integer_option("max-batch", "16", "requests of one task run through the model together", 1, 4096),
           number_option("batch-wait-ms", "5", "how long the model thread waits for a batch to fill", 0, 10000),
           integer_option("queue", "64", "requests that may wait for the model; beyond it: 503", 1, 1 << 20),
           integer_option("max-body-mb", "16", "largest request body, MiB (beyond it: 413)", 1, 4096),
           integer_option("max-inflight-mb", "256", "request bodies being read or answered, MiB together (beyond: 503)", 1,
                          1 << 20),
           {"allowed-host", "",
            "a name clients reach the server by, besides localhost, 127.0.0.1, [::1] and --host (repeatable)"},
           integer_option("max-pixels", "40000000", "largest image accepted, pixels", 1),
           integer_option("max-image-side", "16384",
                          "longest image side accepted, pixels (bounds the resizing work of thin images)", 1),
           integer_option("top-k", "8", "search hits when a request gives no \"top_k\"", 1, 100),
           {"web", "", "serve the web page from this folder instead of the built-in copy"},
           {"quiet", "false", "no JSON access log on stderr", true}})
    c.options.push_back(o);
  c.run = run_serve;
  return c;
}

}  // namespace vlmo::cli
