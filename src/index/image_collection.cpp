#include "vlmo/image_collection.h"

#include <ATen/ATen.h>

#include <cstdio>
#include <filesystem>

#include "vlmo/error.h"
#include "vlmo/files.h"
#include "vlmo/safetensors.h"
#include "vlmo/sources.h"

namespace vlmo {
namespace fs = std::filesystem;

CollectionId parse_collection_id(const std::string& id) {
  const size_t tar = id.find(".tar/");
  if (tar == std::string::npos) return {id, ""};
  return {id.substr(0, tar + 4), id.substr(tar + 5)};
}

std::string shard_member_id(const std::string& shard, const std::string& member) { return shard + "/" + member; }

bool is_shard_file(const std::string& path) { return fs::path(path).extension() == ".tar"; }

ImageCollection::ImageCollection(std::vector<std::string> inputs) : inputs_(std::move(inputs)) {
  for (const auto& p : inputs_) {
    if (fs::is_directory(p)) {
      const std::vector<std::string> found = list_images(p);
      files_.insert(files_.end(), found.begin(), found.end());
    } else if (!fs::exists(p)) {
      throw Error(cat(p, ": no such file or folder"));
    } else {
      files_.push_back(p);
    }
  }
}

int64_t ImageCollection::size_if_known() const {
  for (const auto& f : files_)
    if (is_shard_file(f)) return -1;
  return static_cast<int64_t>(files_.size());
}

void ImageCollection::each(int64_t skip,
                           const std::function<void(const std::string&, const std::string&, const std::string&)>& visit) const {
  int64_t index = 0;
  for (const auto& p : files_) {
    if (!is_shard_file(p)) {
      if (index++ >= skip) visit(p, p, std::string());
      continue;
    }
    TarReader tar(p);
    TarEntry e;
    while (tar.next(e))
      if (is_image_file_name(e.name) && index++ >= skip) visit(shard_member_id(p, e.name), p, e.data);
  }
}

EmbeddingFolderWriter::EmbeddingFolderWriter(const std::string& folder, const std::string& model,
                                             const std::vector<std::string>& inputs, int64_t chunk)
    : folder_(folder), manifest_path_(folder + "/manifest.json"), chunk_(chunk) {
  std::error_code ec;
  fs::create_directories(folder, ec);
  if (!fs::is_directory(folder)) throw Error(cat(folder, ": cannot make the output folder (", ec.message(), ")"));
  lock_ = std::make_unique<FileLock>(manifest_path_, "embedding folder (--out)");
  manifest_ = {{"format", "vlmo-embeddings"},
               {"model", model},
               {"inputs", inputs},
               {"chunk", chunk},
               {"items_done", 0},
               {"chunks", nlohmann::json::array()},
               {"skipped", nlohmann::json::array()},
               {"complete", false}};
  if (fs::exists(manifest_path_)) {
    const nlohmann::json old = nlohmann::json::parse(read_input(manifest_path_, "embedding manifest"), nullptr, false);
    if (old.is_discarded() || !old.is_object() || old.value("format", "") != "vlmo-embeddings")
      throw Error(cat(manifest_path_, ": not a manifest of vlmo embed"));
    if (old.value("inputs", nlohmann::json()) != manifest_["inputs"] ||
        old.value("chunk", nlohmann::json()) != manifest_["chunk"] || old.value("model", nlohmann::json()) != manifest_["model"])
      throw Error(cat(folder, ": holds embeddings of other inputs, model or --chunk (see manifest.json); use another --out"));
    if (!old.contains("items_done") || !old["items_done"].is_number_integer() || !old.contains("chunks") ||
        !old["chunks"].is_array() || !old.contains("skipped") || !old["skipped"].is_array() || !old.contains("complete") ||
        !old["complete"].is_boolean())
      throw Error(cat(manifest_path_, ": expected \"items_done\", \"chunks\", \"skipped\" and \"complete\""));
    manifest_ = old;
  }
  consumed_ = items_done();
}

EmbeddingFolderWriter::~EmbeddingFolderWriter() = default;

bool EmbeddingFolderWriter::complete() const { return manifest_["complete"].get<bool>(); }
int64_t EmbeddingFolderWriter::items_done() const { return manifest_["items_done"].get<int64_t>(); }

int64_t EmbeddingFolderWriter::vectors() const {
  int64_t n = 0;
  for (const auto& c : manifest_["chunks"]) n += c["count"].get<int64_t>();
  return n;
}

void EmbeddingFolderWriter::add(const std::vector<std::string>& ids, const at::Tensor& embeddings) {
  if (ids.empty()) return;
  ids_.insert(ids_.end(), ids.begin(), ids.end());
  rows_.push_back(embeddings);
}

void EmbeddingFolderWriter::skip(const std::string& id, const std::string& reason) {
  manifest_["skipped"].push_back({{"id", id}, {"reason", reason}});
}

void EmbeddingFolderWriter::write_chunk() {
  if (consumed_ == written_up_to_) return;
  written_up_to_ = consumed_;
  if (!ids_.empty()) {
    char name[64];
    std::snprintf(name, sizeof name, "embeddings-%05zu.safetensors", manifest_["chunks"].size());
    write_safetensors(
        folder_ + "/" + name, {{"embeddings", at::cat(rows_)}},
        {{"ids", nlohmann::json(ids_).dump()}, {"modality", "image"}, {"model", manifest_["model"].get<std::string>()}});
    manifest_["chunks"].push_back({{"file", name}, {"count", ids_.size()}});
  }
  manifest_["items_done"] = consumed_;
  write_file_atomic(manifest_path_, manifest_.dump(1) + "\n");
  ids_.clear();
  rows_.clear();
}

void EmbeddingFolderWriter::finish() {
  write_chunk();
  manifest_["complete"] = true;
  write_file_atomic(manifest_path_, manifest_.dump(1) + "\n");
}

}  // namespace vlmo
