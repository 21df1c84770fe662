// FAISS indexes over embedding collections (vlmo/vector_index.h).
#include "vlmo/vector_index.h"

#include <ATen/ATen.h>
#include <faiss/IndexFlat.h>
#include <faiss/IndexHNSW.h>
#include <faiss/IndexIVFPQ.h>
#include <faiss/impl/FaissException.h>
#include <faiss/impl/io.h>
#include <faiss/index_io.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <set>

#include "vlmo/error.h"
#include "vlmo/files.h"
#include "vlmo/safetensors.h"

namespace vlmo {

namespace {
constexpr const char* kFormat = "vlmo-faiss-index";

// As many sub-quantisers as divide the dimension into parts of at least 2 (64 at most).
int default_pq_m(int64_t dim) {
  for (int m : {64, 32, 16, 8, 4, 2})
    if (dim % m == 0 && dim / m >= 2) return m;
  return 1;
}

// Codebooks are trained on an evenly spaced sample of at most this many vectors.
constexpr int64_t kMaxTrainVectors = 50000;
}  // namespace

IndexKind parse_index_kind(const std::string& name) {
  if (name == "flat") return IndexKind::kFlat;
  if (name == "ivfpq") return IndexKind::kIvfPq;
  if (name == "hnsw") return IndexKind::kHnsw;
  throw Error(cat("index type \"", name, "\": expected flat, ivfpq or hnsw"));
}

const char* index_kind_name(IndexKind kind) {
  return kind == IndexKind::kFlat ? "flat" : kind == IndexKind::kIvfPq ? "ivfpq" : "hnsw";
}

std::vector<std::string> embedding_files(const std::string& path) {
  namespace fs = std::filesystem;
  if (!fs::is_directory(path)) return {path};
  std::vector<std::string> files;
  const std::string manifest = path + "/manifest.json";
  if (fs::exists(manifest)) {
    const auto m = nlohmann::json::parse(read_input(manifest, "embedding manifest"), nullptr, false);
    if (m.is_discarded() || !m.contains("chunks") || !m["chunks"].is_array())
      throw Error(cat(manifest, ": not a manifest of vlmo embed (expected a \"chunks\" list)"));
    if (!m.value("complete", false))
      std::fprintf(stderr, "note: %s: the embedding run is not complete; using its %zu chunks so far\n", path.c_str(),
                   m["chunks"].size());
    for (const auto& c : m["chunks"]) files.push_back(path + "/" + c.at("file").get<std::string>());
  } else {
    for (const auto& e : fs::directory_iterator(path))
      if (e.path().extension() == ".safetensors") files.push_back(e.path().string());
    std::sort(files.begin(), files.end());
  }
  if (files.empty()) throw Error(cat(path, ": no embedding files in this folder"));
  return files;
}

// Adds the vectors and ids of one embedding file `f` (already read) to `out`, checking that its
// dimension and modality agree with the files before it.
static void append_embeddings(EmbeddingSet& out, SafetensorsFile& s, const std::string& f) {
  auto emb = s.tensors.find("embeddings");
  if (emb == s.tensors.end() || !s.metadata.count("ids"))
    throw Error(cat(f, ": not an embedding file written by vlmo embed (tensor \"embeddings\", metadata \"ids\")"));
  const at::Tensor e = emb->second.to(at::kFloat).contiguous();
  std::vector<std::string> ids;
  try {
    ids = nlohmann::json::parse(s.metadata["ids"]).get<std::vector<std::string>>();
  } catch (const std::exception&) {
    throw Error(cat(f, ": metadata \"ids\" is not a JSON list of strings"));
  }
  if (e.dim() != 2 || e.size(0) != static_cast<int64_t>(ids.size()) || e.size(1) < 1)
    throw Error(cat(f, ": ", ids.size(), " ids for embeddings of shape ", e.sizes()));
  const std::string modality = s.metadata.count("modality") ? s.metadata["modality"] : "";
  if (out.dim == 0) out.dim = e.size(1), out.modality = modality;
  if (e.size(1) != out.dim) throw Error(cat(f, ": ", e.size(1), "-d embeddings, the first file's are ", out.dim, "-d"));
  if (modality != out.modality) throw Error(cat(f, ": modality \"", modality, "\", the first file's is \"", out.modality, "\""));
  const float* p = e.data_ptr<float>();
  out.vectors.insert(out.vectors.end(), p, p + e.numel());
  for (auto& id : ids) out.ids.push_back(std::move(id));
}

EmbeddingSet read_embedding_shards(const std::vector<std::string>& paths) {
  if (paths.empty()) throw Error("no embedding files given");
  std::vector<std::string> files;
  for (const auto& p : paths)
    for (auto& f : embedding_files(p)) files.push_back(std::move(f));
  EmbeddingSet out;
  for (const auto& f : files) {
    SafetensorsFile s = read_safetensors(f);
    append_embeddings(out, s, f);
  }
  if (out.ids.empty()) throw Error("the embedding files hold no vectors");
  return out;
}

VectorIndex::VectorIndex(VectorIndex&&) noexcept = default;
VectorIndex& VectorIndex::operator=(VectorIndex&&) noexcept = default;
VectorIndex::~VectorIndex() = default;

int64_t VectorIndex::dim() const { return index_->d; }
int64_t VectorIndex::size() const { return index_->ntotal; }

VectorIndex VectorIndex::build(const EmbeddingSet& set, const IndexOptions& o) {
  const int64_t n = set.size(), d = set.dim;
  if (n == 0 || d == 0 || static_cast<int64_t>(set.vectors.size()) != n * d)
    throw Error("index: empty or inconsistent embedding set");
  VectorIndex out;
  out.ids_ = set.ids;
  out.modality_ = set.modality;
  out.kind_ = o.kind;
  out.options_ = o;
  try {
    if (o.kind == IndexKind::kFlat) {
      out.index_ = std::make_unique<faiss::IndexFlatIP>(d);
    } else if (o.kind == IndexKind::kHnsw) {
      auto h = std::make_unique<faiss::IndexHNSWFlat>(d, o.hnsw_m, faiss::METRIC_INNER_PRODUCT);
      h->hnsw.efSearch = o.ef_search;
      out.index_ = std::move(h);
    } else {
      const int nlist = o.nlist > 0 ? o.nlist
                                    : static_cast<int>(std::max<int64_t>(
                                          1, std::min<int64_t>(static_cast<int64_t>(std::sqrt(static_cast<double>(n))), n / 39)));
      const int m = o.pq_m > 0 ? o.pq_m : default_pq_m(d);
      if (d % m != 0) throw Error(cat("index: --pq-m ", m, " must divide the dimension ", d));
      if (n < 256) throw Error(cat("index: IVF-PQ needs at least 256 vectors to train its codebooks, got ", n, "; use flat"));
      auto quantizer = new faiss::IndexFlatIP(d);
      auto ivf = std::make_unique<faiss::IndexIVFPQ>(quantizer, d, nlist, m, 8, faiss::METRIC_INNER_PRODUCT);
      ivf->own_fields = true;  // deletes the quantizer
      ivf->nprobe = std::min(o.nprobe, nlist);
      if (n <= kMaxTrainVectors) {
        ivf->train(n, set.vectors.data());
      } else {
        std::vector<float> sample(static_cast<size_t>(kMaxTrainVectors * d));
        for (int64_t i = 0; i < kMaxTrainVectors; ++i)
          std::copy_n(set.vectors.begin() + (i * n / kMaxTrainVectors) * d, d, sample.begin() + i * d);
        ivf->train(kMaxTrainVectors, sample.data());
      }
      out.index_ = std::move(ivf);
    }
    out.index_->add(n, set.vectors.data());
  } catch (const faiss::FaissException& e) {
    throw Error(cat("index: FAISS could not build the ", index_kind_name(o.kind), " index: ", e.what()));
  }
  return out;
}

std::vector<std::vector<Hit>> VectorIndex::search(const float* queries, int64_t n, int k) const {
  k = static_cast<int>(std::min<int64_t>(k, size()));
  if (k < 1) throw Error("search: k must be at least 1");
  std::vector<float> scores(static_cast<size_t>(n) * k);
  // FAISS labels are int64_t: `faiss::Index::idx_t` in FAISS 1.7.3 (Debian 12), `faiss::idx_t` from
  // 1.7.4 on (Debian 13); both alias int64_t, so the type is named directly.
  std::vector<int64_t> labels(static_cast<size_t>(n) * k);
  try {
    index_->search(n, queries, k, scores.data(), labels.data());
  } catch (const faiss::FaissException& e) {
    throw Error(cat("search: FAISS failed: ", e.what()));
  }
  std::vector<std::vector<Hit>> out(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i)
    for (int j = 0; j < k; ++j) {
      const int64_t l = labels[static_cast<size_t>(i) * k + j];
      if (l >= 0) out[i].push_back({static_cast<int64_t>(l), scores[static_cast<size_t>(i) * k + j]});  // -1: fewer found
    }
  return out;
}

void VectorIndex::save(const std::string& path) const {
  faiss::VectorIOWriter w;
  try {
    faiss::write_index(index_.get(), &w);
  } catch (const faiss::FaissException& e) {
    throw Error(cat(path, ": FAISS could not serialise the index: ", e.what()));
  }
  at::Tensor bytes = at::empty({static_cast<int64_t>(w.data.size())}, at::kByte);
  if (!w.data.empty()) std::memcpy(bytes.data_ptr(), w.data.data(), w.data.size());
  write_safetensors(path, {{"faiss", bytes}},
                    {{"format", kFormat},
                     {"kind", index_kind_name(kind_)},
                     {"modality", modality_},
                     {"ids", nlohmann::json(ids_).dump()},
                     {"nprobe", std::to_string(options_.nprobe)},
                     {"ef_search", std::to_string(options_.ef_search)}});
}

VectorIndex VectorIndex::open(const std::string& path) {
  if (std::filesystem::is_directory(path)) return build(read_embedding_shards({path}));
  SafetensorsFile s = read_safetensors(path);  // read once, whichever kind of file it is
  if (s.metadata["format"] == kFormat) return from_file(s, path);
  EmbeddingSet set;
  append_embeddings(set, s, path);
  if (set.ids.empty()) throw Error("the embedding files hold no vectors");
  return build(set);
}

bool VectorIndex::is_index_file(const std::string& path) {
  try {
    return read_safetensors(path).metadata["format"] == kFormat;
  } catch (const Error&) {
    return false;
  }
}

VectorIndex VectorIndex::load(const std::string& path) {
  SafetensorsFile s = read_safetensors(path);
  return from_file(s, path);
}

VectorIndex VectorIndex::from_file(SafetensorsFile& s, const std::string& path) {
  if (s.metadata["format"] != kFormat || !s.tensors.count("faiss"))
    throw Error(cat(path, ": not an index written by vlmo index build"));
  VectorIndex out;
  try {
    out.ids_ = nlohmann::json::parse(s.metadata["ids"]).get<std::vector<std::string>>();
    out.kind_ = parse_index_kind(s.metadata["kind"]);
    out.options_.nprobe = std::stoi(s.metadata["nprobe"]);
    out.options_.ef_search = std::stoi(s.metadata["ef_search"]);
  } catch (const Error&) {
    throw;
  } catch (const std::exception& e) {
    throw Error(cat(path, ": corrupt index metadata (", e.what(), ")"));
  }
  out.modality_ = s.metadata["modality"];
  const at::Tensor b = s.tensors["faiss"].contiguous();
  faiss::VectorIOReader r;
  r.data.assign(b.data_ptr<uint8_t>(), b.data_ptr<uint8_t>() + b.numel());
  try {
    out.index_.reset(faiss::read_index(&r));
  } catch (const faiss::FaissException& e) {
    throw Error(cat(path, ": FAISS could not read the index: ", e.what()));
  }
  if (out.index_->ntotal != static_cast<int64_t>(out.ids_.size()))
    throw Error(cat(path, ": ", out.ids_.size(), " ids for an index of ", out.index_->ntotal, " vectors"));
  if (auto* ivf = dynamic_cast<faiss::IndexIVF*>(out.index_.get()))
    ivf->nprobe = std::min<size_t>(out.options_.nprobe, ivf->nlist);
  if (auto* h = dynamic_cast<faiss::IndexHNSW*>(out.index_.get())) h->hnsw.efSearch = out.options_.ef_search;
  return out;
}

double recall_at_k(const std::vector<std::vector<Hit>>& approx, const std::vector<std::vector<Hit>>& exact, int k) {
  if (approx.size() != exact.size() || exact.empty()) throw Error("recall: different or empty query sets");
  double sum = 0;
  for (size_t q = 0; q < exact.size(); ++q) {
    std::set<int64_t> truth;
    for (size_t j = 0; j < exact[q].size() && static_cast<int>(j) < k; ++j) truth.insert(exact[q][j].index);
    int found = 0;
    for (size_t j = 0; j < approx[q].size() && static_cast<int>(j) < k; ++j) found += truth.count(approx[q][j].index);
    sum += truth.empty() ? 1.0 : static_cast<double>(found) / static_cast<double>(truth.size());
  }
  return sum / static_cast<double>(exact.size());
}

}  // namespace vlmo
