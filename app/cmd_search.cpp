// vlmo search: top-k of an embedded collection or index for text or image queries, by cosine
// similarity (the same task as the server's /api/search).
#include "common.h"
#include "vlmo/error.h"
#include "vlmo/vector_index.h"

namespace vlmo::cli {
namespace {

int run_search(const Args& a) {
  LoadedModel m = load_model_from(a);
  const Tokenizer tok = tokenizer_for(a, m);
  if (a.get("index").empty()) throw Error("--index EMBEDDINGS.safetensors (from vlmo embed or vlmo index build) is required");
  const VectorIndex index = VectorIndex::open(a.get("index"));
  at::NoGradGuard guard;
  return answer_requests(a, search_task(m, tok, index, prepared_image, a.get_int64("top-k"), 1 << 20));
}

}  // namespace

Command search_command() {
  Command c{"search",
            "Search an embedded collection with a text (image index) or an image (text index): top-k ids with cosine scores.",
            "vlmo search --model M --index EMB.safetensors (--text Q | --image I | --input queries.jsonl)"};
  c.options = model_options();
  for (const auto& o : request_options()) c.options.push_back(o);
  for (const Option& o : std::vector<Option>{{"index", "", "embedding file from vlmo embed"},
                                             {"text", "", "text query"},
                                             {"image", "", "image query"},
                                             integer_option("top-k", "5", "results to show", 1)})
    c.options.push_back(o);
  c.run = run_search;
  return c;
}

}  // namespace vlmo::cli
