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
  require_head(m.model, "itc");
  const Tokenizer tok = tokenizer_from(a, &m.model->config());
  if (a.get("index").empty()) throw Error("--index EMBEDDINGS.safetensors (from vlmo embed or vlmo index build) is required");
  // A FAISS index (vlmo index build), or an embedding file searched exactly (an in-memory flat
  // index over it): the same code path either way.
  const VectorIndex index = VectorIndex::is_index_file(a.get("index"))
                                ? VectorIndex::load(a.get("index"))
                                : VectorIndex::build(read_embedding_shards({a.get("index")}));
  const std::vector<std::string>& ids = index.ids();
  const bool index_images = index.modality() == "image";
  const int k = static_cast<int>(std::min<int64_t>(a.get_int64("top-k"), index.size()));
  const std::string field = index_images ? "text" : "image";
  at::NoGradGuard guard;
  return answer_requests(
      a, read_requests(a, {field}),
      [&](const nlohmann::json& r) {
        const std::string q = r[field].get<std::string>();
        return index_images ? Prepared{{}, {}, prepared_text(q)} : Prepared{prepared_image(q, m.model->config().image_size), {}, {}};
      },
      [&](const std::vector<Prepared>& in) {
        std::vector<std::string> texts;
        std::vector<at::Tensor> pix;
        for (const auto& p : in) index_images ? texts.push_back(p.text) : pix.push_back(p.image);
        at::Tensor q;
        if (index_images) {
          const auto [t, mask] = encode_batch(tok, texts, m.model->config().max_text_len);
          q = encode_texts(m.model, t, mask);
        } else {
          q = encode_images(m.model, at::stack(pix));
        }
        if (q.size(1) != index.dim())
          throw Error(cat("the index has ", index.dim(), "-d embeddings but the model makes ", q.size(1)));
        const at::Tensor qf = q.to(at::kFloat).contiguous();
        const auto hits = index.search(qf.data_ptr<float>(), qf.size(0), k);
        std::vector<std::pair<nlohmann::json, std::string>> out;
        for (size_t i = 0; i < in.size(); ++i) {
          nlohmann::json results = nlohmann::json::array();
          std::string human;
          for (size_t j = 0; j < hits[i].size(); ++j) {
            const std::string& id = ids.at(hits[i][j].index);
            const double score = hits[i][j].score;
            results.push_back({{"id", id}, {"score", score}});
            char line[512];
            std::snprintf(line, sizeof line, "%2lld. %.4f  %s\n", static_cast<long long>(j + 1), score, id.c_str());
            human += line;
          }
          out.emplace_back(nlohmann::json{{"results", results}}, human);
        }
        return out;
      });
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
