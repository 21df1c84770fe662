// Inference commands on a fine-tuned model: vqa, nlvr2, itm. Each answers one request given by
// flags, or a JSON-lines batch (--input) in batches of --batch-size, and prints text for people or
// JSON lines for programs (--json). The model: a vlmo checkpoint, or an official checkpoint with
// --config / --preset (and --answers for VQA).
#include <ATen/ATen.h>

#include <cstdio>

#include "common.h"
#include "vlmo/data.h"
#include "vlmo/error.h"
#include "vlmo/tasks.h"

namespace vlmo::cli {
namespace {

// The model and tokenizer of a command, and the stacked inputs of a batch.
struct Session {
  LoadedModel m;
  Tokenizer tok;
  explicit Session(const Args& a) : m(load_model_from(a)), tok(tokenizer_from(a, &m.model->config())) {}
  int image_size() const { return m.model->config().image_size; }
  std::pair<at::Tensor, at::Tensor> texts(const std::vector<Prepared>& in) const {
    std::vector<std::string> t;
    for (const auto& p : in) t.push_back(p.text);
    return encode_batch(tok, t, m.model->config().max_text_len);
  }
  static at::Tensor images(const std::vector<Prepared>& in, bool second = false) {
    std::vector<at::Tensor> v;
    for (const auto& p : in) v.push_back(second ? p.image1 : p.image);
    return at::stack(v);
  }
};

std::string percent(const char* format, double p) {
  char buf[256];
  std::snprintf(buf, sizeof buf, format, 100 * p);
  return buf;
}

int run_vqa(const Args& a) {
  Session s(a);
  require_head(s.m.model, "vqa");
  if (s.m.vqa_answers.empty())
    throw Error(cat(a.get("model"), ": no VQA answer list recorded; give --answers ANSWERS.json (vlmo vqa-answers)"));
  const int64_t top = std::min<int64_t>(a.get_int("top"), static_cast<int64_t>(s.m.vqa_answers.size()));
  at::NoGradGuard guard;
  return answer_requests(
      a, read_requests(a, {"image", "question"}),
      [&](const nlohmann::json& r) {
        return Prepared{prepared_image(r["image"].get<std::string>(), s.image_size()), {}, prepared_text(r["question"].get<std::string>())};
      },
      [&](const std::vector<Prepared>& in) {
        const auto [ids, masks] = s.texts(in);
        const at::Tensor probs = at::sigmoid(vqa_logits(s.m.model, ids, masks, Session::images(in)));
        const auto [p, idx] = probs.topk(top, 1);
        std::vector<std::pair<nlohmann::json, std::string>> out;
        for (size_t i = 0; i < in.size(); ++i) {
          nlohmann::json answers = nlohmann::json::array();
          std::string human = "Q: " + in[i].text + "\n";
          for (int64_t k = 0; k < top; ++k) {
            const std::string& ans = s.m.vqa_answers.at(idx[i][k].item<int64_t>());
            const double prob = p[i][k].item<double>();
            answers.push_back({{"answer", ans}, {"probability", prob}});
            char line[160];
            std::snprintf(line, sizeof line, "  %-24s %5.1f%%\n", ans.c_str(), 100 * prob);
            human += line;
          }
          out.emplace_back(nlohmann::json{{"answers", answers}}, human);
        }
        return out;
      });
}

int run_nlvr2(const Args& a) {
  Session s(a);
  require_head(s.m.model, "nlvr2");
  at::NoGradGuard guard;
  return answer_requests(
      a, read_requests(a, {"image0", "image1", "sentence"}),
      [&](const nlohmann::json& r) {
        return Prepared{prepared_image(r["image0"].get<std::string>(), s.image_size()), prepared_image(r["image1"].get<std::string>(), s.image_size()),
                        prepared_text(r["sentence"].get<std::string>())};
      },
      [&](const std::vector<Prepared>& in) {
        const auto [ids, masks] = s.texts(in);
        const at::Tensor p_true =
            at::softmax(nlvr2_logits(s.m.model, ids, masks, Session::images(in), Session::images(in, true)), -1)
                .select(1, 1);
        std::vector<std::pair<nlohmann::json, std::string>> out;
        for (size_t i = 0; i < in.size(); ++i) {
          const double p = p_true[i].item<double>();
          out.emplace_back(nlohmann::json{{"label", p >= 0.5}, {"probability_true", p}},
                           std::string(p >= 0.5 ? "True" : "False") + percent(" (probability true %.1f%%)\n", p));
        }
        return out;
      });
}

int run_itm(const Args& a) {
  Session s(a);
  require_head(s.m.model, "itm");
  at::NoGradGuard guard;
  return answer_requests(
      a, read_requests(a, {"image", "text"}),
      [&](const nlohmann::json& r) {
        return Prepared{prepared_image(r["image"].get<std::string>(), s.image_size()), {}, prepared_text(r["text"].get<std::string>())};
      },
      [&](const std::vector<Prepared>& in) {
        const auto [ids, masks] = s.texts(in);
        const at::Tensor p_match = at::softmax(itm_logits(s.m.model, ids, masks, Session::images(in)), -1).select(1, 1);
        std::vector<std::pair<nlohmann::json, std::string>> out;
        for (size_t i = 0; i < in.size(); ++i) {
          const double p = p_match[i].item<double>();
          out.emplace_back(nlohmann::json{{"match_probability", p}}, percent("match probability %.1f%%\n", p));
        }
        return out;
      });
}

std::vector<Option> options(std::vector<Option> own) {
  std::vector<Option> o = model_options();
  o.insert(o.end(), own.begin(), own.end());
  for (const auto& r : request_options()) o.push_back(r);
  return o;
}

}  // namespace

Command vqa_command() {
  Command c{"vqa", "Answer a question about an image: the top answers with probabilities.",
            "vlmo vqa --model M --image I --question Q  |  --input batch.jsonl ({\"image\", \"question\"})"};
  c.options = options({{"image", "", "image file"}, {"question", "", "the question"}, integer_option("top", "5", "answers to show", 1)});
  c.run = run_vqa;
  return c;
}

Command nlvr2_command() {
  Command c{"nlvr2", "Is a sentence true of a pair of images? (NLVR2 head)",
            "vlmo nlvr2 --model M --image0 A --image1 B --sentence S  |  --input batch.jsonl"};
  c.options = options({{"image0", "", "left image"}, {"image1", "", "right image"}, {"sentence", "", "the statement"}});
  c.run = run_nlvr2;
  return c;
}

Command itm_command() {
  Command c{"itm", "Does a text describe an image? (image-text matching head)",
            "vlmo itm --model M --image I --text T  |  --input batch.jsonl"};
  c.options = options({{"image", "", "image file"}, {"text", "", "the text"}});
  c.run = run_itm;
  return c;
}

}  // namespace vlmo::cli
