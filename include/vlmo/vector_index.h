// Collections of embeddings at scale: FAISS indexes (exact flat inner product by default,
// IVF-PQ or HNSW as approximate options) over the L2-normalised vectors `vlmo embed` writes,
// possibly in several shard files. An index is saved as one safetensors file (the FAISS bytes as
// a U8 tensor, the ids, modality and kind as metadata), written atomically with a checksum.
// Built as its own target (vlmo_index) so that libvlmo does not depend on FAISS.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace faiss {
struct Index;
}

namespace vlmo {

struct SafetensorsFile;

// Embedding files of `vlmo embed` (tensor "embeddings" [N, D], metadata "ids" and "modality"),
// concatenated in order; all must share D and the modality. A folder stands for its chunk files
// (in the order of its manifest.json, else sorted by name).
struct EmbeddingSet {
  std::vector<std::string> ids;
  std::vector<float> vectors;  // N x dim, row-major
  int64_t dim = 0;
  std::string modality;
  int64_t size() const { return static_cast<int64_t>(ids.size()); }
};
EmbeddingSet read_embedding_shards(const std::vector<std::string>& files);
std::vector<std::string> embedding_files(const std::string& file_or_folder);

enum class IndexKind { kFlat, kIvfPq, kHnsw };
IndexKind parse_index_kind(const std::string& name);  // "flat", "ivfpq", "hnsw"
const char* index_kind_name(IndexKind kind);

struct IndexOptions {
  IndexKind kind = IndexKind::kFlat;
  int nlist = 0;        // IVF lists (0: sqrt(N), at most N / 39)
  int pq_m = 0;         // PQ sub-quantisers (0: the most, up to 64, that divide dim into parts of >= 2)
  int nprobe = 32;      // IVF lists searched
  int hnsw_m = 32;      // HNSW neighbours per node
  int ef_search = 128;  // HNSW search depth
};

// One search hit: the vector's position in the collection and its inner product (cosine).
struct Hit {
  int64_t index;
  float score;
};

class VectorIndex {
 public:
  static VectorIndex build(const EmbeddingSet& set, const IndexOptions& options = {});
  static VectorIndex load(const std::string& path);
  static bool is_index_file(const std::string& path);  // a file save() wrote
  // What a --index option names: a file save() wrote, or an embedding file or folder of `vlmo
  // embed` (searched exactly through an in-memory flat index).
  static VectorIndex open(const std::string& path);
  void save(const std::string& path) const;

  // Top-k hits of each of `n` queries (n x dim, row-major), best first.
  std::vector<std::vector<Hit>> search(const float* queries, int64_t n, int k) const;

  const std::vector<std::string>& ids() const { return ids_; }
  const std::string& modality() const { return modality_; }
  IndexKind kind() const { return kind_; }
  int64_t dim() const;
  int64_t size() const;

  VectorIndex(VectorIndex&&) noexcept;
  VectorIndex& operator=(VectorIndex&&) noexcept;
  ~VectorIndex();

 private:
  VectorIndex() = default;
  static VectorIndex from_file(SafetensorsFile& file, const std::string& path);  // a file save() wrote
  std::unique_ptr<faiss::Index> index_;
  std::vector<std::string> ids_;
  std::string modality_;
  IndexKind kind_ = IndexKind::kFlat;
  IndexOptions options_;
};

// Mean fraction of each query's exact top-k that `approx` found (recall@k).
double recall_at_k(const std::vector<std::vector<Hit>>& approx, const std::vector<std::vector<Hit>>& exact, int k);

}  // namespace vlmo
