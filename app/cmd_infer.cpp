// Inference commands on a trained model: embed, search, vqa, nlvr2, itm. Each takes one query on
// the command line or a JSON-lines batch (--input), and prints text for people or JSON lines for
// programs (--json). The model file must record its config (vlmo training checkpoints do).
#include <ATen/ATen.h>

#include <cstdio>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>

#include "cli.h"
#include "vlmo/data.h"
#include "vlmo/error.h"
#include "vlmo/image_tensor.h"
#include "vlmo/json_lines.h"
#include "vlmo/safetensors.h"
#include "vlmo/tokenizer.h"
#include "vlmo/train.h"

namespace vlmo::cli {
namespace {

struct Loaded {
  VLMo model{nullptr};
  std::map<std::string, std::string> meta;
  Tokenizer tok;
};

Loaded load(const Args& a) {
  if (a.get("model").empty()) throw Error("--model CHECKPOINT is required");
  std::map<std::string, std::string> meta;
  VLMo m = load_model(a.get("model"), &meta);
  return {m, meta, Tokenizer::from_file(a.get("vocab").empty() ? Tokenizer::default_vocab_path() : a.get("vocab"))};
}

at::Tensor image_batch(const Loaded& l, const std::vector<std::string>& paths) {
  std::vector<at::Tensor> pix;
  for (const auto& p : paths) pix.push_back(eval_transform(read_image(p), l.model->config().image_size));
  return at::stack(pix);
}

std::pair<at::Tensor, at::Tensor> text_batch(const Loaded& l, const std::vector<std::string>& texts) {
  for (const auto& t : texts)
    if (t.find_first_not_of(" \t\r\n") == std::string::npos) throw Error("empty text (question, sentence or query)");
  return encode_batch(l.tok, texts, l.model->config().max_text_len);
}

// Requests: from --input JSON lines, or the single one given by flags.
std::vector<nlohmann::json> requests(const Args& a, const std::vector<std::string>& fields) {
  std::vector<nlohmann::json> out;
  if (!a.get("input").empty()) {
    for (auto& [n, j] : read_json_lines(a.get("input"))) {
      for (const auto& f : fields)
        if (!j.contains(f) || !j[f].is_string())
          throw Error(cat(a.get("input"), ":", n, ": expected a string field \"", f, "\""));
      out.push_back(std::move(j));
    }
    return out;
  }
  nlohmann::json j;
  for (const auto& f : fields) {
    if (a.get(f).empty()) throw Error(cat("give --", f, " (or --input FILE.jsonl)"));
    j[f] = a.get(f);
  }
  out.push_back(j);
  return out;
}

void emit(const Args& a, const nlohmann::json& result, const std::string& human) {
  if (a.get_flag("json")) std::cout << result.dump() << "\n";
  else std::cout << human;
}

std::vector<Option> with_common(std::vector<Option> o) {
  o.insert(o.begin(), {{"model", "", "model checkpoint (e.g. demo-out/finetune-vqa.safetensors)"},
                       {"vocab", "", "vocab.txt (default: the BERT uncased vocabulary)"},
                       {"input", "", "JSON-lines batch of requests instead of one"},
                       {"json", "false", "print JSON lines", true}});
  return o;
}

// ---- vqa --------------------------------------------------------------------------------------
int run_vqa(const Args& a) {
  Loaded l = load(a);
  if (l.model->vqa_classifier.is_empty()) throw Error(cat(a.get("model"), ": the model has no VQA head"));
  auto it = l.meta.find("vqa_answers");
  if (it == l.meta.end()) throw Error(cat(a.get("model"), ": no answer vocabulary (metadata vqa_answers)"));
  const auto answers = nlohmann::json::parse(it->second).get<std::vector<std::string>>();
  const int top = a.get_int("top");
  at::NoGradGuard guard;
  for (const auto& r : requests(a, {"image", "question"})) {
    const auto [ids, masks] = text_batch(l, {r["question"].get<std::string>()});
    const at::Tensor img = image_batch(l, {r["image"].get<std::string>()});
    const at::Tensor p = at::sigmoid(l.model->vqa_classifier->forward(l.model->infer(ids, masks, img).cls_feats))[0];
    const auto best = p.topk(std::min<int64_t>(top, p.size(0)));
    nlohmann::json out = r;
    std::string human = "Q: " + r["question"].get<std::string>() + "\n";
    for (int64_t k = 0; k < std::get<1>(best).size(0); ++k) {
      const std::string ans = answers.at(std::get<1>(best)[k].item<int64_t>());
      const double prob = std::get<0>(best)[k].item<double>();
      out["answers"].push_back({{"answer", ans}, {"probability", prob}});
      char line[128];
      std::snprintf(line, sizeof line, "  %-20s %5.1f%%\n", ans.c_str(), 100 * prob);
      human += line;
    }
    emit(a, out, human);
  }
  return 0;
}

// ---- nlvr2 ------------------------------------------------------------------------------------
int run_nlvr2(const Args& a) {
  Loaded l = load(a);
  if (l.model->nlvr2_classifier.is_empty()) throw Error(cat(a.get("model"), ": the model has no NLVR2 head"));
  at::NoGradGuard guard;
  for (const auto& r : requests(a, {"image0", "image1", "sentence"})) {
    const auto [ids, masks] = text_batch(l, {r["sentence"].get<std::string>()});
    const at::Tensor i0 = image_batch(l, {r["image0"].get<std::string>()}), i1 = image_batch(l, {r["image1"].get<std::string>()});
    const at::Tensor c0 = l.model->infer(ids, masks, i0, 1).cls_feats, c1 = l.model->infer(ids, masks, i1, 2).cls_feats;
    const double p_true = at::softmax(l.model->nlvr2_classifier->forward(at::cat({c0, c1}, -1)), -1)[0][1].item<double>();
    nlohmann::json out = r;
    out["label"] = p_true >= 0.5;
    out["probability_true"] = p_true;
    char human[160];
    std::snprintf(human, sizeof human, "%s (probability true %.1f%%)\n", p_true >= 0.5 ? "True" : "False", 100 * p_true);
    emit(a, out, human);
  }
  return 0;
}

// ---- itm --------------------------------------------------------------------------------------
int run_itm(const Args& a) {
  Loaded l = load(a);
  if (l.model->itm_score.is_empty()) throw Error(cat(a.get("model"), ": the model has no ITM head"));
  at::NoGradGuard guard;
  for (const auto& r : requests(a, {"image", "text"})) {
    const auto [ids, masks] = text_batch(l, {r["text"].get<std::string>()});
    const at::Tensor img = image_batch(l, {r["image"].get<std::string>()});
    const double p = at::softmax(l.model->itm_score->forward(l.model->infer(ids, masks, img).cls_feats), -1)[0][1].item<double>();
    nlohmann::json out = r;
    out["match_probability"] = p;
    char human[96];
    std::snprintf(human, sizeof human, "match probability %.1f%%\n", 100 * p);
    emit(a, out, human);
  }
  return 0;
}

// ---- embed ------------------------------------------------------------------------------------
int run_embed(const Args& a) {
  Loaded l = load(a);
  if (l.model->itc_image_proj.is_empty()) throw Error(cat(a.get("model"), ": the model has no retrieval (ITC) heads"));
  if (a.get("out").empty()) throw Error("--out EMBEDDINGS.safetensors is required");
  std::vector<std::string> ids;
  std::vector<at::Tensor> feats;
  at::NoGradGuard guard;
  std::string modality;
  if (!a.positional.empty()) {
    modality = "image";
    for (size_t i = 0; i < a.positional.size(); i += 32) {
      std::vector<std::string> chunk(a.positional.begin() + i, a.positional.begin() + std::min(a.positional.size(), i + 32));
      feats.push_back(l.model->infer_image_ft(image_batch(l, chunk)).cls_feats);
      ids.insert(ids.end(), chunk.begin(), chunk.end());
    }
  } else {
    modality = "text";
    const auto rs = requests(a, {"text"});
    for (size_t i = 0; i < rs.size(); i += 32) {
      std::vector<std::string> chunk;
      for (size_t j = i; j < std::min(rs.size(), i + 32); ++j) {
        chunk.push_back(rs[j]["text"].get<std::string>());
        ids.push_back(rs[j].contains("id") ? (rs[j]["id"].is_string() ? rs[j]["id"].get<std::string>() : rs[j]["id"].dump())
                                           : std::to_string(j));
      }
      const auto [t, m] = text_batch(l, chunk);
      feats.push_back(l.model->infer_text_ft(t, m).cls_feats);
    }
  }
  const at::Tensor all = at::cat(feats);
  write_safetensors(a.get("out"), {{"embeddings", all}},
                    {{"ids", nlohmann::json(ids).dump()}, {"modality", modality}, {"model", a.get("model")}});
  emit(a, {{"embedded", ids.size()}, {"modality", modality}, {"dim", all.size(1)}, {"out", a.get("out")}},
       cat("embedded ", ids.size(), " ", modality, "s (", all.size(1), "-d, L2-normalised) into ", a.get("out"), "\n"));
  return 0;
}

// ---- search -----------------------------------------------------------------------------------
int run_search(const Args& a) {
  Loaded l = load(a);
  if (l.model->itc_image_proj.is_empty()) throw Error(cat(a.get("model"), ": the model has no retrieval (ITC) heads"));
  if (a.get("index").empty()) throw Error("--index EMBEDDINGS.safetensors (from vlmo embed) is required");
  SafetensorsFile idx = read_safetensors(a.get("index"));
  if (!idx.tensors.count("embeddings") || !idx.metadata.count("ids"))
    throw Error(cat(a.get("index"), ": not an embedding file written by vlmo embed"));
  const at::Tensor emb = idx.tensors["embeddings"].to(at::kFloat);
  const auto ids = nlohmann::json::parse(idx.metadata["ids"]).get<std::vector<std::string>>();
  const bool index_images = idx.metadata["modality"] == "image";
  const int64_t k = std::min<int64_t>(a.get_int("top-k"), emb.size(0));
  at::NoGradGuard guard;
  const std::string field = index_images ? "text" : "image";
  for (const auto& r : requests(a, {field})) {
    at::Tensor q;
    if (index_images) {
      const auto [t, m] = text_batch(l, {r["text"].get<std::string>()});
      q = l.model->infer_text_ft(t, m).cls_feats;
    } else {
      q = l.model->infer_image_ft(image_batch(l, {r["image"].get<std::string>()})).cls_feats;
    }
    if (q.size(1) != emb.size(1)) throw Error(cat("the index has ", emb.size(1), "-d embeddings but the model makes ", q.size(1)));
    const auto best = at::matmul(emb, q[0]).topk(k);
    nlohmann::json out = r;
    std::string human;
    for (int64_t i = 0; i < k; ++i) {
      const std::string id = ids.at(std::get<1>(best)[i].item<int64_t>());
      const double score = std::get<0>(best)[i].item<double>();
      out["results"].push_back({{"id", id}, {"score", score}});
      char line[256];
      std::snprintf(line, sizeof line, "%2lld. %.4f  %s\n", static_cast<long long>(i + 1), score, id.c_str());
      human += line;
    }
    emit(a, out, human);
  }
  return 0;
}

}  // namespace

Command vqa_command() {
  Command c{"vqa", "Answer a question about an image: the top answers with probabilities.",
            "vlmo vqa --model M --image I --question Q  |  --input batch.jsonl ({\"image\", \"question\"})"};
  c.options = with_common({{"image", "", "image file"}, {"question", "", "the question"}, {"top", "5", "answers to show"}});
  c.run = run_vqa;
  return c;
}

Command nlvr2_command() {
  Command c{"nlvr2", "Is a sentence true of a pair of images? (NLVR2 head)",
            "vlmo nlvr2 --model M --image0 A --image1 B --sentence S  |  --input batch.jsonl"};
  c.options = with_common({{"image0", "", "left image"}, {"image1", "", "right image"}, {"sentence", "", "the statement"}});
  c.run = run_nlvr2;
  return c;
}

Command itm_command() {
  Command c{"itm", "Does a text describe an image? (image-text matching head)",
            "vlmo itm --model M --image I --text T  |  --input batch.jsonl"};
  c.options = with_common({{"image", "", "image file"}, {"text", "", "the text"}});
  c.run = run_itm;
  return c;
}

Command embed_command() {
  Command c{"embed", "Embed images (positional paths) or texts (--input JSON lines with \"text\", optional \"id\") with the dual encoder into L2-normalised vectors.",
            "vlmo embed --model M --out EMB.safetensors (IMAGE... | --input texts.jsonl)"};
  c.options = with_common({{"out", "", "output embedding file"}});
  c.max_positional = 1u << 30;
  c.run = run_embed;
  return c;
}

Command search_command() {
  Command c{"search", "Search an embedded collection with a text (image index) or an image (text index): top-k ids with cosine scores.",
            "vlmo search --model M --index EMB.safetensors (--text Q | --image I | --input queries.jsonl)"};
  c.options = with_common({{"index", "", "embedding file from vlmo embed"}, {"text", "", "text query"},
                           {"image", "", "image query"}, {"top-k", "5", "results to show"}});
  c.run = run_search;
  return c;
}

}  // namespace vlmo::cli
