// The server's request handling, from the bytes of a connection to the answer, as the network
// thread does it: Boost.Beast's parser with the server's rules and limits (RequestParser: framing,
// chunked bodies, the body budget), the host allow-list and the checks of a head before its body
// (Routes::refusal_before_body), then each complete request through Routes (method, Content-Type,
// Origin, UTF-8, JSON nesting, /v1/ embeddings), the Service (JSON body, field checks, data-URL and
// image decoding, the request queue) and the tasks on a tiny random model (ITM, VQA, embedding),
// and every answer through Beast's serializer. Nothing may crash or throw; every answer must be a
// status with a JSON or page body.
#include <torch/torch.h>

#include <cstdlib>
#include <memory>
#include <thread>

#include "serve/allowed_hosts.h"
#include "serve/answerers.h"
#include "serve/batcher.h"
#include "serve/body_budget.h"
#include "serve/http_request.h"
#include "serve/http_response.h"
#include "serve/routes.h"
#include "serve/service.h"
#include "vlmo/checkpoint.h"
#include "vlmo/config.h"
#include "vlmo/model.h"
#include "vlmo/tokenizer.h"

namespace {

using namespace vlmo;
using namespace vlmo::serve;

struct Server {
  LoadedModel model;
  Tokenizer tok = Tokenizer::from_file(Tokenizer::default_vocab_path());
  Service service{1'000'000, 2048};
  Metrics metrics;
  Batcher batcher{8, 4, std::chrono::microseconds(0), metrics};
  std::unique_ptr<Routes> routes;
  std::thread model_thread;

  Server() {
    at::set_num_threads(1);
    Config c;
    c.embed_dim = 32, c.depth = 2, c.num_heads = 2, c.image_size = 32, c.vlffn_start_layer_index = 1, c.max_text_len = 16;
    c.heads = {"itm", "itc", "vqa"};
    c.vqav2_label_size = 3;
    torch::manual_seed(0);
    model.model = VLMo(c);
    model.model->eval();
    model.vqa_answers = {"yes", "no", "2"};
    const ImageFn image = service.image_fn();
    service.add_task("itm", "tiny", itm_task(model, tok, image));
    service.add_task("vqa", "tiny", vqa_task(model, tok, image, 2, 3));
    service.add_task("embed", "tiny", embed_task(model, tok, image));
    service.set_unavailable("search", "no collection");
    routes = std::make_unique<Routes>(service, nlohmann::json{{"path", "tiny"}}, batcher, metrics, 4, "");
    model_thread = std::thread([this] { batcher.run(); });
  }
  ~Server() {
    batcher.stop();
    model_thread.join();
  }
};

}  // namespace

// An answer as the server would send it: a status with a JSON body (or the page), serialised.
void check_answer(const HttpResponse& r, bool head) {
  if (r.status < 200 || r.status > 599 || (r.content_type == "application/json" && !nlohmann::json::accept(r.body))) std::abort();
  const std::string bytes = serialize_response(r, true, head);
  const size_t end = bytes.find("\r\n\r\n");  // an answer to HEAD ends with its head
  if (bytes.rfind("HTTP/1.1 ", 0) != 0 || end == std::string::npos || bytes.size() - end - 4 != (head ? 0 : r.body.size()))
    std::abort();
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static Server server;
  static const AllowedHosts hosts("127.0.0.1", {"vlmo.example"});
  HttpLimits limits;
  limits.max_body_bytes = 64 << 10;
  limits.max_head_bytes = 4096;
  limits.max_uri_bytes = 1024;
  limits.max_headers = 16;
  BodyBudget budget(96 << 10);
  RequestParser parser(limits, &budget);
  std::string in(reinterpret_cast<const char*>(data), size);  // what the connection has read, not yet used
  bool head_checked = false;
  while (!in.empty()) {  // every request the bytes hold, as a kept-alive connection would send them
    const size_t used = parser.feed(in.data(), in.size());
    in.erase(0, used);
    if (parser.failed()) {
      const HttpResponse r = error_for(parser.request().path, parser.error_status(), parser.error());
      if (r.status < 400 || r.body.empty()) std::abort();
      check_answer(r, false);
      break;
    }
    if (parser.head_done() && !head_checked) {
      head_checked = true;
      if (!hosts.allows(parser.request().host)) break;  // 421, then close
      std::string endpoint;
      if (parser.body_to_come())
        if (const auto r = server.routes->refusal_before_body(parser.request(), endpoint)) {
          check_answer(*r, parser.request().method == "HEAD");
          break;  // answered without the body, then close
        }
    }
    if (parser.done()) {
      head_checked = false;
      const HttpRequest req = parser.take();
      std::string endpoint;
      check_answer(server.routes->handle(req, endpoint), req.method == "HEAD");
      continue;
    }
    if (used == 0) break;  // the connection would wait for more
  }
  if (budget.used() > 0 && !parser.started()) std::abort();  // a finished request gave its share back
  return 0;
}
