// The inference tasks, once, for the command line and the server: each task turns a JSON request
// into model inputs (prepare: decode and transform images, check texts; any thread) and a batch
// of prepared requests into answers (run: one forward; the model's thread). `vlmo vqa|itm|nlvr2|
// search` and `vlmo serve` both call these, so their answers are the same numbers.
#pragma once
#include <ATen/Tensor.h>

#include <functional>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "vlmo/checkpoint.h"
#include "vlmo/tokenizer.h"

namespace vlmo {
class VectorIndex;
}

namespace vlmo::serve {

// A request's model inputs.
struct Prepared {
  at::Tensor image, image1;  // (3, S, S)
  std::string text;
  int64_t top = 0;  // answers / hits wanted (search, vqa)
};
// One answer: the JSON fields added to the request, and the text shown to people.
struct Answer {
  nlohmann::json fields;
  std::string human;
};
using PrepareFn = std::function<Prepared(const nlohmann::json& request)>;
using RunFn = std::function<std::vector<Answer>(const std::vector<Prepared>&)>;

// How a request's image field becomes a (3, S, S) tensor: a file path on the command line; a
// collection id or an uploaded data: URL in the server.
using ImageFn = std::function<at::Tensor(const std::string& value, int image_size)>;

struct Task {
  std::string name;                 // "vqa", "nlvr2", "itm", "search", "embed"
  std::vector<std::string> fields;  // string fields every request must have
  PrepareFn prepare;
  RunFn run;
};

// Each checks that the model has the task's head. The model, tokenizer and index must outlive
// the task. `top` / `top_k`: the default number of answers / hits; a request may ask for fewer or
// more with "top" (vqa) or "top_k" (search), up to `max_top`.
Task vqa_task(LoadedModel& m, const Tokenizer& tok, ImageFn image, int64_t top, int64_t max_top);
Task nlvr2_task(LoadedModel& m, const Tokenizer& tok, ImageFn image);
Task itm_task(LoadedModel& m, const Tokenizer& tok, ImageFn image);
// Text queries over an image index, image queries over a text index.
Task search_task(LoadedModel& m, const Tokenizer& tok, const VectorIndex& index, ImageFn image, int64_t top_k, int64_t max_top);
// {"text"} or {"image"} -> {"embedding": [...], "dim", "modality"} (L2-normalised dual encoder), and
// for a text "tokens": how many tokens the model read.
Task embed_task(LoadedModel& m, const Tokenizer& tok, ImageFn image);

// Checks a request object: an object with each of `fields` a string; returns the reason when
// not ("" when fine).
std::string request_error(const nlohmann::json& request, const std::vector<std::string>& fields);

// Helpers: an image file through the evaluation transform; a non-empty text.
at::Tensor prepared_image(const std::string& path, int image_size);
std::string prepared_text(const std::string& text);

}  // namespace vlmo::serve
