// What an image field of a server request names: an uploaded data: URL, or an image of the
// served collection by its id (vlmo/image_collection.h), whose file is looked up as written,
// else beside the index file. Shard members are read from their shard; the members of the last
// two shards read are kept. Thread-safe.
#pragma once
#include <ATen/Tensor.h>

#include <cstdint>
#include <deque>
#include <map>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

namespace vlmo::serve {

class ServedImages {
 public:
  ServedImages(int64_t max_pixels, int64_t max_side) : max_pixels_(max_pixels), max_side_(max_side) {}
  // The ids of an image collection and the index file they came with.
  void set_collection(const std::vector<std::string>& ids, const std::string& index_path);
  bool contains(const std::string& id) const { return files_.count(id) > 0; }

  // The bytes of a collection image; Refusal kNotFound naming the id when it is not one.
  std::string bytes(const std::string& id) const;
  // An image field through the evaluation transform at `size`; Refusal kBadRequest when it is neither
  // a data: URL nor an id of the collection, or does not decode.
  at::Tensor tensor(const std::string& value, int size) const;

 private:
  int64_t max_pixels_, max_side_;
  std::map<std::string, std::string> files_;  // id -> file (or SHARD.tar/MEMBER with the shard resolved)
  mutable std::mutex shard_mu_;
  mutable std::deque<std::pair<std::string, std::map<std::string, std::string>>> shards_;
};

// The file of a collection id: as written, else relative to the index file's folder; a shard
// member's shard resolves the same way.
std::string resolve_collection_file(const std::string& id, const std::string& index_path);

// The Content-Type of an image file by its extension (JPEG when unknown).
std::string image_content_type(const std::string& path);

}  // namespace vlmo::serve
