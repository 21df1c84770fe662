// The embeddings API that existing clients speak (OpenAI's: the official SDKs, LangChain, vector
// databases' importers), over the server's "embed" task, so that they need nothing but a base URL:
//   POST /v1/embeddings {"model", "input": string | [item, ...], "encoding_format"?: "float" |
//     "base64"} -> {"object": "list", "data": [{"object": "embedding", "index", "embedding"}],
//     "model", "usage": {"prompt_tokens", "total_tokens"}}. An item is a text, or {"image": a data:
//     URL or an id of the served collection}; "base64" is the little-endian float32 bytes.
//   GET /v1/models -> {"object": "list", "data": [{"id", "object": "model", "created", "owned_by"}]}
// Errors are that API's error object: {"error": {"message", "type", "param", "code"}}.
#pragma once
#include <ctime>
#include <nlohmann/json.hpp>
#include <string>

#include "serve/batcher.h"
#include "serve/http_response.h"
#include "serve/service.h"

namespace vlmo::serve {

constexpr size_t kMaxEmbeddingInputs = 2048;  // items of one request (OpenAI's own bound)

// `status` with {"error": {"message": why, "type", "param", "code"}}; a 503 carries Retry-After.
HttpResponse openai_error(int status, const std::string& why, const std::string& param = "", const std::string& code = "");
// The models the server runs (their file names), "created" at `created`.
nlohmann::json openai_models(const Service& service, std::time_t created);
// POST /v1/embeddings on the "embed" task: items are prepared and run `wave` at a time, so a
// request of 2,048 images holds at most `wave` decoded images and `wave` places in the queue.
HttpResponse openai_embeddings(const Service& service, const std::string& body, Batcher& batcher, size_t wave);

}  // namespace vlmo::serve
