// FAISS indexes over embedding collections: exact flat search equals brute force; approximate
// kinds over 100,000 synthetic embeddings report build time, latency and recall@10; files round-trip.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <chrono>
#include <cstdio>
#include <nlohmann/json.hpp>

#include "test_util.h"
#include "vlmo/safetensors.h"
#include "vlmo/vector_index.h"

using namespace vlmo;
using vlmo::test::expect_error;

namespace {

// N clustered unit vectors (as real embeddings are: near neighbours exist), written as shards.
EmbeddingSet synthetic(int64_t n, int64_t d, uint64_t seed) {
  at::manual_seed(seed);
  const at::Tensor centres = at::randn({256, d});
  const at::Tensor raw = centres.index_select(0, at::randint(256, {n}, at::kLong)) + 0.35 * at::randn({n, d});
  const at::Tensor x = (raw / raw.norm(2, {1}, true)).contiguous();
  EmbeddingSet s;
  s.dim = d;
  s.modality = "image";
  s.vectors.assign(x.data_ptr<float>(), x.data_ptr<float>() + x.numel());
  for (int64_t i = 0; i < n; ++i) s.ids.push_back("img" + std::to_string(i) + ".jpg");
  return s;
}

double ms_since(std::chrono::steady_clock::time_point t0) {
  return 1000 * std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace

TEST(Index, FlatIsExactAndApproximateIndexesOver100kReportRecall) {
  const int64_t n = 100000, d = 64, nq = 200;
  const EmbeddingSet set = synthetic(n, d, 3);
  const float* queries = set.vectors.data() + 12345 * d;  // 200 vectors of the collection
  // Brute force, independently: top 10 of X q.
  const at::Tensor X = at::from_blob(const_cast<float*>(set.vectors.data()), {n, d});
  const auto [bf_scores, bf_index] = at::matmul(X.narrow(0, 12345, nq), X.t()).topk(10, 1);

  auto t0 = std::chrono::steady_clock::now();
  const VectorIndex flat = VectorIndex::build(set);
  const double flat_build = ms_since(t0);
  t0 = std::chrono::steady_clock::now();
  const auto exact = flat.search(queries, nq, 10);
  const double flat_query = ms_since(t0) / nq;
  for (int64_t q = 0; q < nq; ++q)
    for (int j = 0; j < 10; ++j) {
      EXPECT_NEAR(exact[q][j].score, bf_scores[q][j].item<float>(), 1e-4) << q << "," << j;
      if (j == 0) EXPECT_EQ(exact[q][0].index, 12345 + q);  // each vector finds itself first
    }
  std::printf("[index] %lld x %lld-d: flat build %.0f ms, %.3f ms/query\n", static_cast<long long>(n),
              static_cast<long long>(d), flat_build, flat_query);
  for (IndexKind kind : {IndexKind::kIvfPq, IndexKind::kHnsw}) {
    IndexOptions o;
    o.kind = kind;
    t0 = std::chrono::steady_clock::now();
    const VectorIndex approx = VectorIndex::build(set, o);
    const double build = ms_since(t0);
    t0 = std::chrono::steady_clock::now();
    const auto hits = approx.search(queries, nq, 10);
    const double query = ms_since(t0) / nq;
    const double recall = recall_at_k(hits, exact, 10);
    std::printf("[index] %s: build %.0f ms, %.3f ms/query, recall@10 %.4f\n", index_kind_name(kind), build, query, recall);
    EXPECT_GT(recall, kind == IndexKind::kHnsw ? 0.9 : 0.5) << index_kind_name(kind);
    EXPECT_LE(recall, 1.0);
  }
}

TEST(Index, FilesRoundTripAndShardsConcatenate) {
  const std::string dir = vlmo::test::temp_dir();
  const EmbeddingSet set = synthetic(600, 16, 5);
  // Two shards as vlmo embed writes them.
  for (int s = 0; s < 2; ++s) {
    const at::Tensor e = at::from_blob(const_cast<float*>(set.vectors.data()) + s * 300 * 16, {300, 16}).clone();
    std::vector<std::string> ids(set.ids.begin() + s * 300, set.ids.begin() + (s + 1) * 300);
    write_safetensors(dir + "/e" + std::to_string(s) + ".safetensors", {{"embeddings", e}},
                      {{"ids", nlohmann::json(ids).dump()}, {"modality", "image"}});
  }
  const EmbeddingSet back = read_embedding_shards({dir + "/e0.safetensors", dir + "/e1.safetensors"});
  EXPECT_EQ(back.ids, set.ids);
  EXPECT_EQ(back.vectors, set.vectors);
  for (IndexKind kind : {IndexKind::kFlat, IndexKind::kIvfPq, IndexKind::kHnsw}) {
    IndexOptions o;
    o.kind = kind;
    const VectorIndex built = VectorIndex::build(back, o);
    built.save(dir + "/i.safetensors");
    EXPECT_TRUE(VectorIndex::is_index_file(dir + "/i.safetensors"));
    const VectorIndex loaded = VectorIndex::load(dir + "/i.safetensors");
    EXPECT_EQ(loaded.ids(), set.ids);
    EXPECT_EQ(loaded.kind(), kind);
    const auto a = built.search(set.vectors.data(), 20, 5), b = loaded.search(set.vectors.data(), 20, 5);
    for (size_t q = 0; q < a.size(); ++q)
      for (size_t j = 0; j < a[q].size(); ++j) EXPECT_EQ(a[q][j].index, b[q][j].index) << index_kind_name(kind);
  }
  EXPECT_FALSE(VectorIndex::is_index_file(dir + "/e0.safetensors"));
  // Shards that do not fit together, and files that are not embeddings, are named.
  write_safetensors(dir + "/other.safetensors", {{"embeddings", at::zeros({2, 8})}}, {{"ids", R"(["a","b"])"}, {"modality", "image"}});
  expect_error([&] { read_embedding_shards({dir + "/e0.safetensors", dir + "/other.safetensors"}); }, {"other.safetensors", "8-d", "16-d"});
  expect_error([&] { VectorIndex::load(dir + "/e0.safetensors"); }, {"e0.safetensors", "not an index"});
  expect_error([&] { parse_index_kind("lsh"); }, {"lsh", "flat, ivfpq or hnsw"});
}
