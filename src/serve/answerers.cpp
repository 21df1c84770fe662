#include "serve/answerers.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cstdio>

#include "vlmo/data.h"
#include "vlmo/error.h"
#include "vlmo/image.h"
#include "vlmo/image_tensor.h"
#include "vlmo/tasks.h"
#include "vlmo/vector_index.h"

namespace vlmo::serve {
namespace {

std::string percent(const char* format, double p) {
  char buf[256];
  std::snprintf(buf, sizeof buf, format, 100 * p);
  return buf;
}

std::pair<at::Tensor, at::Tensor> texts_of(const Tokenizer& tok, LoadedModel& m, const std::vector<Prepared>& in) {
  std::vector<std::string> t;
  for (const auto& p : in) t.push_back(p.text);
  return encode_batch(tok, t, m.model->config().max_text_len);
}

at::Tensor images_of(const std::vector<Prepared>& in, bool second = false) {
  std::vector<at::Tensor> v;
  for (const auto& p : in) v.push_back(second ? p.image1 : p.image);
  return at::stack(v);
}

// The request's "top" / "top_k" (a whole number 1..max), else the default.
int64_t top_of(const nlohmann::json& r, const char* key, int64_t fallback, int64_t max) {
  if (!r.contains(key)) return fallback;
  const auto& v = r[key];
  if (!v.is_number_integer() || v.get<int64_t>() < 1 || v.get<int64_t>() > max)
    throw Error(cat("\"", key, "\" must be a whole number from 1 to ", max));
  return v.get<int64_t>();
}

int64_t max_top(const std::vector<Prepared>& in) {
  int64_t k = 0;
  for (const auto& p : in) k = std::max(k, p.top);
  return k;
}

}  // namespace

std::string request_error(const nlohmann::json& request, const std::vector<std::string>& fields) {
  if (!request.is_object()) return "expected a JSON object";
  for (const auto& f : fields)
    if (!request.contains(f) || !request[f].is_string()) return cat("expected a string field \"", f, "\"");
  return "";
}

at::Tensor prepared_image(const std::string& path, int image_size) { return eval_transform(read_image(path), image_size); }

std::string prepared_text(const std::string& text) {
  if (text.find_first_not_of(" \t\r\n") == std::string::npos) throw Error("empty text (question, sentence or query)");
  return text;
}

Task vqa_task(LoadedModel& m, const Tokenizer& tok, ImageFn image, int64_t top, int64_t max_top_answers) {
  require_head(m.model, "vqa");
  if (m.vqa_answers.empty()) throw Error("the VQA model records no answer list; give --answers ANSWERS.json (vlmo vqa-answers)");
  const int64_t labels = static_cast<int64_t>(m.vqa_answers.size());
  const int64_t limit = std::min(max_top_answers, labels);
  top = std::min(top, labels);
  const int size = m.model->config().image_size;
  Task t{"vqa", {"image", "question"}, {}, {}};
  t.prepare = [=](const nlohmann::json& r) {
    return Prepared{image(r["image"].get<std::string>(), size),
                    {},
                    prepared_text(r["question"].get<std::string>()),
                    top_of(r, "top", top, limit)};
  };
  t.run = [&m, &tok](const std::vector<Prepared>& in) {
    const auto [ids, masks] = texts_of(tok, m, in);
    const at::Tensor probs = at::sigmoid(vqa_logits(m.model, ids, masks, images_of(in))).cpu();
    const auto [p, idx] = probs.topk(max_top(in), 1);
    std::vector<Answer> out;
    for (size_t i = 0; i < in.size(); ++i) {
      nlohmann::json answers = nlohmann::json::array();
      std::string human = "Q: " + in[i].text + "\n";
      for (int64_t k = 0; k < in[i].top; ++k) {
        const std::string& ans = m.vqa_answers.at(idx[i][k].item<int64_t>());
        const double prob = p[i][k].item<double>();
        answers.push_back({{"answer", ans}, {"probability", prob}});
        char line[160];
        std::snprintf(line, sizeof line, "  %-24s %5.1f%%\n", ans.c_str(), 100 * prob);
        human += line;
      }
      out.push_back({nlohmann::json{{"answers", answers}}, human});
    }
    return out;
  };
  return t;
}

Task nlvr2_task(LoadedModel& m, const Tokenizer& tok, ImageFn image) {
  require_head(m.model, "nlvr2");
  const int size = m.model->config().image_size;
  Task t{"nlvr2", {"image0", "image1", "sentence"}, {}, {}};
  t.prepare = [=](const nlohmann::json& r) {
    return Prepared{image(r["image0"].get<std::string>(), size), image(r["image1"].get<std::string>(), size),
                    prepared_text(r["sentence"].get<std::string>())};
  };
  t.run = [&m, &tok](const std::vector<Prepared>& in) {
    const auto [ids, masks] = texts_of(tok, m, in);
    const at::Tensor p_true =
        at::softmax(nlvr2_logits(m.model, ids, masks, images_of(in), images_of(in, true)), -1).select(1, 1).cpu();
    std::vector<Answer> out;
    for (size_t i = 0; i < in.size(); ++i) {
      const double p = p_true[i].item<double>();
      out.push_back({nlohmann::json{{"label", p >= 0.5}, {"probability_true", p}},
                     std::string(p >= 0.5 ? "True" : "False") + percent(" (probability true %.1f%%)\n", p)});
    }
    return out;
  };
  return t;
}

Task itm_task(LoadedModel& m, const Tokenizer& tok, ImageFn image) {
  require_head(m.model, "itm");
  const int size = m.model->config().image_size;
  Task t{"itm", {"image", "text"}, {}, {}};
  t.prepare = [=](const nlohmann::json& r) {
    return Prepared{image(r["image"].get<std::string>(), size), {}, prepared_text(r["text"].get<std::string>())};
  };
  t.run = [&m, &tok](const std::vector<Prepared>& in) {
    const auto [ids, masks] = texts_of(tok, m, in);
    const at::Tensor p_match = at::softmax(itm_logits(m.model, ids, masks, images_of(in)), -1).select(1, 1).cpu();
    std::vector<Answer> out;
    for (size_t i = 0; i < in.size(); ++i) {
      const double p = p_match[i].item<double>();
      out.push_back({nlohmann::json{{"match_probability", p}}, percent("match probability %.1f%%\n", p)});
    }
    return out;
  };
  return t;
}

Task search_task(LoadedModel& m, const Tokenizer& tok, const VectorIndex& index, ImageFn image, int64_t top_k,
                 int64_t max_top_hits) {
  require_head(m.model, "itc");
  const bool index_images = index.modality() == "image";
  const int64_t limit = std::min(max_top_hits, index.size());
  top_k = std::min(top_k, index.size());
  const std::string field = index_images ? "text" : "image";
  const int size = m.model->config().image_size;
  Task t{"search", {field}, {}, {}};
  t.prepare = [=](const nlohmann::json& r) {
    const std::string q = r[field].get<std::string>();
    const int64_t k = top_of(r, "top_k", top_k, limit);
    return index_images ? Prepared{{}, {}, prepared_text(q), k} : Prepared{image(q, size), {}, {}, k};
  };
  t.run = [&m, &tok, &index, index_images](const std::vector<Prepared>& in) {
    std::vector<at::Tensor> pix;
    for (const auto& p : in)
      if (!index_images) pix.push_back(p.image);
    at::Tensor q;
    if (index_images) {
      const auto [ids, masks] = texts_of(tok, m, in);
      q = encode_texts(m.model, ids, masks);
    } else {
      q = encode_images(m.model, at::stack(pix));
    }
    if (q.size(1) != index.dim())
      throw Error(cat("the index has ", index.dim(), "-d embeddings but the model makes ", q.size(1)));
    const at::Tensor qf = q.to(at::kFloat).contiguous();
    const auto hits = index.search(qf.data_ptr<float>(), qf.size(0), static_cast<int>(max_top(in)));
    std::vector<Answer> out;
    for (size_t i = 0; i < in.size(); ++i) {
      nlohmann::json results = nlohmann::json::array();
      std::string human;
      for (size_t j = 0; j < hits[i].size() && static_cast<int64_t>(j) < in[i].top; ++j) {
        const std::string& id = index.ids().at(hits[i][j].index);
        const double score = hits[i][j].score;
        results.push_back({{"id", id}, {"score", score}});
        char line[512];
        std::snprintf(line, sizeof line, "%2lld. %.4f  %s\n", static_cast<long long>(j + 1), score, id.c_str());
        human += line;
      }
      out.push_back({nlohmann::json{{"results", results}}, human});
    }
    return out;
  };
  return t;
}

Task embed_task(LoadedModel& m, const Tokenizer& tok, ImageFn image) {
  require_head(m.model, "itc");
  const int size = m.model->config().image_size;
  Task t{"embed", {}, {}, {}};
  t.prepare = [=](const nlohmann::json& r) {
    const bool has_text = r.contains("text"), has_image = r.contains("image");
    if (has_text == has_image) throw Error("give exactly one of the string fields \"text\" and \"image\"");
    const std::string field = has_text ? "text" : "image";
    if (!r[field].is_string()) throw Error(cat("expected a string field \"", field, "\""));
    return has_text ? Prepared{{}, {}, prepared_text(r["text"].get<std::string>())}
                    : Prepared{image(r["image"].get<std::string>(), size), {}, {}};
  };
  t.run = [&m, &tok](const std::vector<Prepared>& in) {
    // Texts and images of one batch are encoded separately, each in its order.
    std::vector<size_t> text_at, image_at;
    std::vector<Prepared> texts;
    std::vector<at::Tensor> pix;
    for (size_t i = 0; i < in.size(); ++i) {
      if (in[i].image.defined()) {
        image_at.push_back(i);
        pix.push_back(in[i].image);
      } else {
        text_at.push_back(i);
        texts.push_back(in[i]);
      }
    }
    std::vector<Answer> out(in.size());
    auto fill = [&](const at::Tensor& feats, const std::vector<size_t>& where, const char* modality) {
      const at::Tensor f = feats.to(at::kFloat).contiguous();
      for (size_t j = 0; j < where.size(); ++j) {
        const float* row = f[static_cast<int64_t>(j)].data_ptr<float>();
        std::vector<float> v(row, row + f.size(1));
        out[where[j]] = {nlohmann::json{{"embedding", v}, {"dim", f.size(1)}, {"modality", modality}},
                         cat(modality, " embedding, ", f.size(1), "-d\n")};
      }
    };
    if (!texts.empty()) {
      const auto [ids, masks] = texts_of(tok, m, texts);
      fill(encode_texts(m.model, ids, masks), text_at, "text");
      // The tokens the model read of each text ([CLS] and [SEP] included, cut at max_text_len).
      const at::Tensor counts = masks.sum(1).to(at::kLong).cpu();
      for (size_t j = 0; j < text_at.size(); ++j)
        out[text_at[j]].fields["tokens"] = counts[static_cast<int64_t>(j)].item<int64_t>();
    }
    if (!pix.empty()) fill(encode_images(m.model, at::stack(pix)), image_at, "image");
    return out;
  };
  return t;
}

}  // namespace vlmo::serve
