#include "serve/service.h"

#include "serve/refusal.h"
#include "vlmo/vector_index.h"

namespace vlmo::serve {

Service::Service(int64_t max_pixels, int64_t max_side) : images_(max_pixels, max_side) {}
Service::~Service() = default;

void Service::set_collection(std::unique_ptr<VectorIndex> index, const std::string& label, const std::string& index_path) {
  index_ = std::move(index);
  index_label_ = label;
  if (index_ && index_->modality() == "image") images_.set_collection(index_->ids(), index_path);
}

ImageFn Service::image_fn() const {
  return [this](const std::string& value, int size) { return images_.tensor(value, size); };
}

void Service::add_task(const std::string& name, const std::string& model_label, Task task) {
  tasks_.insert_or_assign(name, std::move(task));
  task_models_[name] = model_label;
  unavailable_.erase(name);
}

void Service::set_unavailable(const std::string& name, const std::string& why) { unavailable_[name] = why; }

nlohmann::json Service::answer(const std::string& name, const std::string& body, Batcher& batcher) const {
  const auto t = tasks_.find(name);
  if (t == tasks_.end()) {
    const auto why = unavailable_.find(name);
    throw Refusal(RefusalKind::kNotFound,
                  cat("/api/", name, " is not available", why == unavailable_.end() ? "" : ": " + why->second));
  }
  nlohmann::json request;
  try {
    request = nlohmann::json::parse(body);
  } catch (const std::exception& e) {
    throw Refusal(RefusalKind::kBadRequest, cat("request body: not valid JSON (", e.what(), ")"));
  }
  if (const std::string why = request_error(request, t->second.fields); !why.empty())
    throw Refusal(RefusalKind::kBadRequest, why);
  Prepared in;
  try {
    in = t->second.prepare(request);
  } catch (const Refusal&) {
    throw;
  } catch (const Error& e) {
    throw Refusal(RefusalKind::kBadRequest, e.what());
  }
  return batcher.submit(t->second, std::move(in)).get().fields;
}

nlohmann::json Service::describe() const {
  nlohmann::json j = {{"tasks", task_models_}, {"unavailable", unavailable_}};
  if (j["tasks"].is_null()) j["tasks"] = nlohmann::json::object();
  if (index_)
    j["collection"] = {{"path", index_label_},
                       {"size", index_->size()},
                       {"modality", index_->modality()},
                       {"kind", index_kind_name(index_->kind())},
                       {"dim", index_->dim()}};
  return j;
}

}  // namespace vlmo::serve
