// The server's request handling, from the bytes of a connection to the answer: the HTTP/1.1
// parser (limits, chunked bodies), then each complete request through Routes (method, Content-
// Type, Origin, UTF-8, JSON nesting), the Service (JSON body, field checks, data-URL and image
// decoding, the request queue) and the tasks on a tiny random model (ITM, VQA, embedding).
// Nothing may crash or throw; every answer must be a status with a JSON or page body.
#include <torch/torch.h>

#include <cstdlib>
#include <memory>
#include <thread>

#include "serve/answerers.h"
#include "serve/batcher.h"
#include "serve/http_request.h"
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

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static Server server;
  HttpLimits limits;
  limits.max_body_bytes = 64 << 10;
  limits.max_head_bytes = 4096;
  limits.max_uri_bytes = 1024;
  limits.max_headers = 16;
  RequestParser parser(limits);
  const char* p = reinterpret_cast<const char*>(data);
  size_t left = size;
  while (left > 0) {  // every request the bytes hold, as a kept-alive connection would send them
    const size_t used = parser.feed(p, left);
    p += used, left -= used;
    if (parser.failed()) {
      const HttpResponse r = json_error(parser.error_status(), parser.error());
      if (r.status < 400 || r.body.empty()) std::abort();
      break;
    }
    if (!parser.done()) break;
    std::string endpoint;
    const HttpResponse r = server.routes->handle(parser.take(), endpoint);
    if (r.status < 200 || r.status > 599 || (r.content_type == "application/json" && !nlohmann::json::accept(r.body)))
      std::abort();
    if (used == 0) break;
  }
  return 0;
}
