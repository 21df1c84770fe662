// Inference commands on a fine-tuned model: vqa, nlvr2, itm. Each answers one request given by
// flags, or a JSON-lines batch (--input) in batches of --batch-size, and prints text for people or
// JSON lines for programs (--json). The model: a vlmo checkpoint, or an official checkpoint with
// --config / --preset (and --answers for VQA).
#include <ATen/ATen.h>

#include "common.h"
#include "vlmo/data.h"
#include "vlmo/error.h"
#include "vlmo/tasks.h"

namespace vlmo::cli {
namespace {

// The model and tokenizer of a command; the task runs with file paths as images.
struct Session {
  LoadedModel m;
  Tokenizer tok;
  explicit Session(const Args& a) : m(load_model_from(a)), tok(tokenizer_for(a, m)) {}
};

int run_vqa(const Args& a) {
  Session s(a);
  require_head(s.m.model, "vqa");
  if (s.m.vqa_answers.empty())
    throw Error(cat(a.get("model"), ": no VQA answer list recorded; give --answers ANSWERS.json (vlmo vqa-answers)"));
  at::NoGradGuard guard;
  return answer_requests(a, vqa_task(s.m, s.tok, prepared_image, a.get_int("top"), 1 << 20));
}

int run_nlvr2(const Args& a) {
  Session s(a);
  at::NoGradGuard guard;
  return answer_requests(a, nlvr2_task(s.m, s.tok, prepared_image));
}

int run_itm(const Args& a) {
  Session s(a);
  at::NoGradGuard guard;
  return answer_requests(a, itm_task(s.m, s.tok, prepared_image));
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
  c.options =
      options({{"image", "", "image file"}, {"question", "", "the question"}, integer_option("top", "5", "answers to show", 1)});
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
