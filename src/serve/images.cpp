#include "serve/images.h"

#include <algorithm>
#include <filesystem>

#include "serve/data_url.h"
#include "serve/refusal.h"
#include "vlmo/files.h"
#include "vlmo/image.h"
#include "vlmo/image_collection.h"
#include "vlmo/image_tensor.h"
#include "vlmo/sources.h"

namespace vlmo::serve {
namespace fs = std::filesystem;

std::string resolve_collection_file(const std::string& id, const std::string& index_path) {
  const CollectionId parts = parse_collection_id(id);
  if (fs::exists(parts.file)) return id;
  const fs::path beside = fs::path(index_path).parent_path() / parts.file;
  if (!fs::exists(beside)) return id;
  return parts.member.empty() ? beside.string() : shard_member_id(beside.string(), parts.member);
}

std::string image_content_type(const std::string& path) {
  const std::string ext = fs::path(path).extension().string();
  if (ext == ".png") return "image/png";
  if (ext == ".webp") return "image/webp";
  return "image/jpeg";
}

void ServedImages::set_collection(const std::vector<std::string>& ids, const std::string& index_path) {
  files_.clear();
  for (const auto& id : ids) files_[id] = resolve_collection_file(id, index_path);
}

std::string ServedImages::bytes(const std::string& id) const {
  const auto it = files_.find(id);
  if (it == files_.end()) throw Refusal(RefusalKind::kNotFound, cat("no image \"", id.substr(0, 200), "\" in the collection"));
  const std::string& path = it->second;
  const CollectionId parts = parse_collection_id(path);
  if (parts.member.empty() || fs::exists(path)) return read_input(path, "collection image");
  std::lock_guard<std::mutex> lock(shard_mu_);
  auto cached = std::find_if(shards_.begin(), shards_.end(), [&](const auto& s) { return s.first == parts.file; });
  if (cached == shards_.end()) {
    std::map<std::string, std::string> members;
    TarReader reader(parts.file);
    TarEntry e;
    while (reader.next(e)) members[e.name] = std::move(e.data);
    if (shards_.size() >= 2) shards_.pop_front();
    shards_.emplace_back(parts.file, std::move(members));
    cached = std::prev(shards_.end());
  }
  const auto m = cached->second.find(parts.member);
  if (m == cached->second.end())
    throw Refusal(RefusalKind::kNotFound, cat(fs::path(parts.file).filename().string(), ": no member ", parts.member));
  return m->second;
}

at::Tensor ServedImages::tensor(const std::string& value, int size) const {
  DecodeOptions opt;
  opt.max_pixels = max_pixels_;
  opt.max_side = max_side_;
  if (is_data_url(value)) return eval_transform(decode_image(data_url_bytes(value), "uploaded image", opt), size);
  if (!contains(value))
    throw Refusal(RefusalKind::kBadRequest,
                  cat("\"image\": \"", value.substr(0, 200), "\" is neither an image of the collection nor a data: URL"));
  return eval_transform(decode_image(bytes(value), value, opt), size);
}

}  // namespace vlmo::serve
