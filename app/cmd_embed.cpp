// The dual encoder from the command line: vlmo embed (images or texts -> L2-normalised vectors
// in a safetensors file with their ids) and vlmo search (top-k of such a file for text or image
// queries, by cosine similarity).
#include <ATen/ATen.h>

#include <cstdio>
#include <iostream>

#include "common.h"
#include "vlmo/vector_index.h"
#include "vlmo/data.h"
#include "vlmo/error.h"
#include "vlmo/safetensors.h"
#include "vlmo/tasks.h"

namespace vlmo::cli {
namespace {

int run_embed(const Args& a) {
  if (a.get("out").empty()) throw Error("--out EMBEDDINGS.safetensors is required");
  const bool images = !a.positional.empty();
  if (images == !a.get("input").empty()) throw Error("give image files or --input texts.jsonl (exactly one of them)");
  LoadedModel m = load_model_from(a);
  require_head(m.model, "itc");
  const Tokenizer tok = tokenizer_from(a, &m.model->config());
  const int64_t batch = a.get_int64("batch-size");
  std::vector<std::string> ids;
  std::vector<at::Tensor> feats;
  at::NoGradGuard guard;
  if (images) {
    for (size_t i = 0; i < a.positional.size(); i += batch) {
      std::vector<at::Tensor> pix;
      for (size_t j = i; j < std::min(a.positional.size(), i + batch); ++j) {
        pix.push_back(prepared_image(a.positional[j], m.model->config().image_size));
        ids.push_back(a.positional[j]);
      }
      feats.push_back(encode_images(m.model, at::stack(pix), batch));
    }
  } else {
    std::vector<std::string> texts;
    for (const auto& r : read_requests(a, {"text"})) {
      if (!r.error.empty()) throw Error(cat(a.get("input"), ":", r.line, ": ", r.error));
      texts.push_back(prepared_text(r.value["text"].get<std::string>()));
      const auto& id = r.value.contains("id") ? r.value["id"] : nlohmann::json(std::to_string(ids.size()));
      ids.push_back(id.is_string() ? id.get<std::string>() : id.dump());
    }
    const auto [t, mask] = encode_batch(tok, texts, m.model->config().max_text_len);
    feats.push_back(encode_texts(m.model, t, mask, batch));
  }
  const at::Tensor all = at::cat(feats);
  const std::string modality = images ? "image" : "text";
  write_safetensors(a.get("out"), {{"embeddings", all}},
                    {{"ids", nlohmann::json(ids).dump()}, {"modality", modality}, {"model", a.get("model")}});
  if (a.get_flag("json"))
    std::cout << nlohmann::json{{"embedded", ids.size()}, {"modality", modality}, {"dim", all.size(1)}, {"out", a.get("out")}}.dump() << "\n";
  else
    std::cout << "embedded " << ids.size() << " " << modality << "s (" << all.size(1) << "-d, L2-normalised) into " << a.get("out") << "\n";
  return 0;
}

int run_search(const Args& a) {
  LoadedModel m = load_model_from(a);
  const Tokenizer tok = tokenizer_from(a, &m.model->config());
  if (a.get("index").empty()) throw Error("--index EMBEDDINGS.safetensors (from vlmo embed or vlmo index build) is required");
  const VectorIndex index = VectorIndex::open(a.get("index"));
  at::NoGradGuard guard;
  return answer_requests(a, search_task(m, tok, index, prepared_image, a.get_int64("top-k"), 1 << 20));
}

}  // namespace

Command embed_command() {
  Command c{"embed", "Embed images (positional paths) or texts (--input JSON lines with \"text\", optional \"id\") with the dual encoder into L2-normalised vectors.",
            "vlmo embed --model M --out EMB.safetensors (IMAGE... | --input texts.jsonl)"};
  c.options = model_options();
  for (const auto& o : request_options()) c.options.push_back(o);
  c.options.push_back({"out", "", "output embedding file"});
  c.max_positional = 1u << 30;
  c.run = run_embed;
  return c;
}

Command search_command() {
  Command c{"search", "Search an embedded collection with a text (image index) or an image (text index): top-k ids with cosine scores.",
            "vlmo search --model M --index EMB.safetensors (--text Q | --image I | --input queries.jsonl)"};
  c.options = model_options();
  for (const auto& o : request_options()) c.options.push_back(o);
  for (const Option& o : std::vector<Option>{{"index", "", "embedding file from vlmo embed"}, {"text", "", "text query"},
                                             {"image", "", "image query"}, integer_option("top-k", "5", "results to show", 1)})
    c.options.push_back(o);
  c.run = run_search;
  return c;
}

}  // namespace vlmo::cli
