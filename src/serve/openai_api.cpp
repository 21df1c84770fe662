#include "serve/openai_api.h"

#include <algorithm>
#include <cstring>
#include <future>
#include <set>
#include <vector>

#include "serve/data_url.h"
#include "serve/refusal.h"

namespace vlmo::serve {
namespace {

HttpResponse ok(const nlohmann::json& j) {
  return {200, "application/json", j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace), {}};
}

const char* error_type(int status) {
  if (status >= 500) return "server_error";
  if (status == 403 || status == 421) return "permission_error";
  return "invalid_request_error";
}

// The items of "input" as requests of the embed task ({"text"} or {"image"}), or why not (400).
std::string embedding_requests(const nlohmann::json& input, std::vector<nlohmann::json>& out) {
  const bool list = input.is_array();
  if (!list && !input.is_string()) return "\"input\" must be a string or an array of strings and {\"image\": ...} items";
  if (list && input.empty()) return "\"input\" is an empty array";
  if (list && input.size() > kMaxEmbeddingInputs)
    return cat("\"input\" has ", input.size(), " items; at most ", kMaxEmbeddingInputs);
  const nlohmann::json items = list ? input : nlohmann::json::array({input});
  for (size_t i = 0; i < items.size(); ++i) {
    const nlohmann::json& item = items[i];
    const std::string at = list ? cat("input[", i, "]") : "input";
    if (item.is_string()) {
      out.push_back({{"text", item}});
    } else if (item.is_object() && item.size() == 1 && item.contains("image") && item["image"].is_string()) {
      out.push_back({{"image", item["image"]}});
    } else if (item.is_number_integer() || item.is_array()) {
      return cat(at, ": token arrays are not supported; send the text");
    } else {
      return cat(at, ": expected a string or {\"image\": a data: URL or a collection id}");
    }
  }
  return "";
}

// The float32 values of an answer's "embedding", as little-endian bytes in base64.
std::string base64_floats(const nlohmann::json& embedding) {
  std::string bytes(embedding.size() * sizeof(float), '\0');
  for (size_t i = 0; i < embedding.size(); ++i) {
    const float f = embedding[i].get<float>();
    uint32_t u = 0;
    std::memcpy(&u, &f, sizeof u);
    for (size_t k = 0; k < 4; ++k) bytes[i * 4 + k] = static_cast<char>((u >> (8 * k)) & 0xFF);
  }
  return base64_encode(bytes);
}

}  // namespace

HttpResponse openai_error(int status, const std::string& why, const std::string& param, const std::string& code) {
  const nlohmann::json error = {{"message", why},
                                {"type", error_type(status)},
                                {"param", param.empty() ? nlohmann::json() : nlohmann::json(param)},
                                {"code", code.empty() ? nlohmann::json() : nlohmann::json(code)}};
  HttpResponse r = ok({{"error", error}});
  r.status = status;
  if (status == 503) r.headers.emplace_back("Retry-After", "1");
  return r;
}

nlohmann::json openai_models(const Service& service, std::time_t created) {
  std::set<std::string> names;
  for (const auto& [task, model] : service.task_models()) names.insert(model);
  nlohmann::json data = nlohmann::json::array();
  for (const std::string& name : names)
    data.push_back({{"id", name}, {"object", "model"}, {"created", static_cast<int64_t>(created)}, {"owned_by", "vlmo"}});
  return {{"object", "list"}, {"data", data}};
}

HttpResponse openai_embeddings(const Service& service, const std::string& body, Batcher& batcher, size_t wave) {
  nlohmann::json r;
  try {
    r = nlohmann::json::parse(body);
  } catch (const std::exception& e) {
    return openai_error(400, cat("request body: not valid JSON (", e.what(), ")"));
  }
  if (!r.is_object()) return openai_error(400, "request body: expected a JSON object");
  const auto task = service.tasks().find("embed");
  if (task == service.tasks().end()) {
    const auto why = service.unavailable().find("embed");
    return openai_error(404, cat("embeddings are not available", why == service.unavailable().end() ? "" : ": " + why->second),
                        "model", "model_not_found");
  }
  const std::string& model = service.task_models().at("embed");
  if (!r.contains("model") || !r["model"].is_string())
    return openai_error(400, cat("you must give \"model\" (this server's is \"", model, "\")"), "model");
  if (r["model"] != model)
    return openai_error(404,
                        cat("the model \"", r["model"].get<std::string>(), "\" is not served here; this server embeds with \"",
                            model, "\" (GET /v1/models)"),
                        "model", "model_not_found");
  const nlohmann::json format = r.value("encoding_format", nlohmann::json("float"));
  if (format != "float" && format != "base64")
    return openai_error(400, "\"encoding_format\" must be \"float\" or \"base64\"", "encoding_format");
  if (!r.contains("input")) return openai_error(400, "you must give \"input\"", "input");
  std::vector<nlohmann::json> requests;
  if (const std::string why = embedding_requests(r["input"], requests); !why.empty()) return openai_error(400, why, "input");

  // Prepared and run a wave at a time: at most `wave` decoded images and queue places at once.
  wave = std::max<size_t>(1, std::min(wave, batcher.capacity()));
  nlohmann::json data = nlohmann::json::array();
  int64_t tokens = 0, dim = 0;
  for (size_t begin = 0; begin < requests.size(); begin += wave) {
    std::vector<std::future<Answer>> answers;
    try {
      for (size_t i = begin; i < std::min(requests.size(), begin + wave); ++i) {
        Prepared in;
        try {
          in = task->second.prepare(requests[i]);
        } catch (const Error& e) {
          return openai_error(400, cat(r["input"].is_array() ? cat("input[", i, "]: ") : "input: ", e.what()), "input");
        }
        answers.push_back(batcher.submit(task->second, std::move(in)));
      }
      for (size_t k = 0; k < answers.size(); ++k) {
        const nlohmann::json fields = answers[k].get().fields;
        tokens += fields.value("tokens", int64_t{0});
        dim = fields.value("dim", int64_t{0});
        data.push_back(
            {{"object", "embedding"},
             {"index", begin + k},
             {"embedding", format == "base64" ? nlohmann::json(base64_floats(fields["embedding"])) : fields["embedding"]}});
      }
    } catch (const Refusal& e) {  // the queue is full or the server stopping (answers still due are dropped)
      return openai_error(e.kind == RefusalKind::kBadRequest ? 400 : 503, e.what());
    } catch (const Error& e) {
      return openai_error(500, e.what());
    }
  }
  if (r.contains("dimensions") && r["dimensions"] != dim)
    return openai_error(400, cat("\"dimensions\": this model's embeddings have ", dim, " (no other size is offered)"),
                        "dimensions");
  return ok(
      {{"object", "list"}, {"data", data}, {"model", model}, {"usage", {{"prompt_tokens", tokens}, {"total_tokens", tokens}}}});
}

}  // namespace vlmo::serve
