// What `vlmo serve` answers, without HTTP: the tasks by endpoint name (each on its model), the
// image lookup of requests, the collection, and the request -> answer handling of POST
// /api/NAME (parse, check, prepare, queue for the model thread, wait). The HTTP wiring is in
// serve/http_server.h; the command line only loads the models and fills a Service.
#pragma once
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>

#include "serve/answerers.h"
#include "serve/batcher.h"
#include "serve/images.h"

namespace vlmo {
class VectorIndex;
}

namespace vlmo::serve {

class Service {
 public:
  // Uploaded and collection images: at most `max_pixels`, no side over `max_side` (DecodeOptions).
  explicit Service(int64_t max_pixels, int64_t max_side = 16384);
  ~Service();

  // The collection that "search" runs over; an image collection's ids become image fields.
  void set_collection(std::unique_ptr<VectorIndex> index, const std::string& label, const std::string& index_path);
  const VectorIndex* collection() const { return index_.get(); }
  ServedImages& images() { return images_; }
  const ServedImages& images() const { return images_; }
  // Image fields of requests (for the tasks' prepare).
  ImageFn image_fn() const;

  // A task on the model `model_label` (how /health names it), or why the endpoint is unavailable.
  void add_task(const std::string& name, const std::string& model_label, Task task);
  void set_unavailable(const std::string& name, const std::string& why);
  const std::map<std::string, Task>& tasks() const { return tasks_; }
  const std::map<std::string, std::string>& unavailable() const { return unavailable_; }
  // The model label (file name) each task runs on.
  const std::map<std::string, std::string>& task_models() const { return task_models_; }

  // POST /api/NAME: the answer's JSON fields. Throws Refusal: kNotFound (no such task),
  // kBadRequest (bad body or input), kBusy / kStopping (from the Batcher); other errors are the
  // model's.
  nlohmann::json answer(const std::string& name, const std::string& body, Batcher& batcher) const;

  // The "tasks", "unavailable" and "collection" fields of GET /health.
  nlohmann::json describe() const;

 private:
  ServedImages images_;
  std::unique_ptr<VectorIndex> index_;
  std::string index_label_;
  std::map<std::string, Task> tasks_;
  std::map<std::string, std::string> task_models_, unavailable_;
};

}  // namespace vlmo::serve
