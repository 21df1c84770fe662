// Image collections and the folder format `vlmo embed` writes them into, beside the vector
// index that searches them (vlmo/vector_index.h).
//
// A collection is image files, folders of them and WebDataset .tar shards. Every image has an
// id: its path, or "SHARD.tar/MEMBER" for a member of a shard. The ids are what an index
// returns and what `vlmo serve` looks images up by.
//
// Embedding folder: chunk files embeddings-NNNNN.safetensors (tensor "embeddings" [n, D],
// metadata "ids", "modality", "model") and manifest.json (format "vlmo-embeddings", the model,
// inputs and chunk size, the items done, the chunks, the skipped images with reasons, complete).
// A chunk ends at a multiple of the chunk size in input items, and the manifest is rewritten
// atomically after each chunk file, so an interrupted run resumes after its last chunk with the
// same items in the same chunks.
#pragma once
#include <ATen/Tensor.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace vlmo {

// An id's parts: the file, and the member of a shard ("" for a plain file).
struct CollectionId {
  std::string file;
  std::string member;
};
CollectionId parse_collection_id(const std::string& id);
std::string shard_member_id(const std::string& shard, const std::string& member);
bool is_shard_file(const std::string& path);  // a .tar

// The images of a collection, in a fixed order: image files as given, every image file below a
// folder (sorted), the image members of shards in archive order. A missing input is an error
// naming it.
class ImageCollection {
 public:
  explicit ImageCollection(std::vector<std::string> inputs);
  const std::vector<std::string>& inputs() const { return inputs_; }
  // The number of images, or -1 when the collection has shards (counted only by reading them).
  int64_t size_if_known() const;
  // visit(id, path, bytes) for the items from number `skip` on: bytes are set for shard members,
  // files are left for the callee to read. A shard is read only when some of its items are to come.
  void each(int64_t skip,
            const std::function<void(const std::string& id, const std::string& path, const std::string& bytes)>& visit) const;

 private:
  std::vector<std::string> inputs_, files_;  // files_: image files (given or found), shards
};

// Writes, or resumes, an embedding folder. Not thread-safe; holds the folder's lock while alive.
class EmbeddingFolderWriter {
 public:
  // Makes the folder if needed; resumes it when its manifest records the same model, inputs and
  // chunk size; throws naming the folder when it holds another run's embeddings.
  EmbeddingFolderWriter(const std::string& folder, const std::string& model, const std::vector<std::string>& inputs,
                        int64_t chunk);
  ~EmbeddingFolderWriter();
  bool complete() const;
  int64_t items_done() const;  // input items covered by the chunks written (where a resumed run starts)
  // Embedded items (their ids and L2-normalised rows) and skipped ones, in input order; each
  // input item is either added or skipped.
  void add(const std::vector<std::string>& ids, const at::Tensor& embeddings);
  void skip(const std::string& id, const std::string& reason);
  // Input items handled so far (added or skipped), counting from the collection's start.
  int64_t consumed() const { return consumed_; }
  void consume() { ++consumed_; }
  bool at_chunk_end() const { return consumed_ % chunk_ == 0; }
  // The chunk of what was added since the last one, then the manifest (after the chunk: a kill
  // in between redoes the chunk). Nothing when no item was consumed since the last.
  void write_chunk();
  void finish();  // the last chunk, and the manifest marked complete
  const nlohmann::json& manifest() const { return manifest_; }
  int64_t vectors() const;  // embeddings in the chunks written

 private:
  std::string folder_, manifest_path_;
  int64_t chunk_;
  nlohmann::json manifest_;
  std::unique_ptr<class FileLock> lock_;
  std::vector<std::string> ids_;
  std::vector<at::Tensor> rows_;
  int64_t consumed_ = 0, written_up_to_ = -1;
};

}  // namespace vlmo
