// src/index/: FAISS indexes over embedding collections (exact flat search equals brute force;
// approximate kinds over 100,000 synthetic embeddings report build time, latency and recall@10;
// files round-trip), image collections and their resumable embedding folders.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "test_util.h"
#include "vlmo/image_collection.h"
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
  std::printf("[index] %lld x %lld-d: flat build %.0f ms, %.3f ms/query\n", static_cast<long long>(n), static_cast<long long>(d),
              flat_build, flat_query);
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
  write_safetensors(dir + "/other.safetensors", {{"embeddings", at::zeros({2, 8})}},
                    {{"ids", R"(["a","b"])"}, {"modality", "image"}});
  expect_error(
      [&] {
        read_embedding_shards({dir + "/e0.safetensors", dir + "/other.safetensors"});
      },
      {"other.safetensors", "8-d", "16-d"});
  expect_error([&] { VectorIndex::load(dir + "/e0.safetensors"); }, {"e0.safetensors", "not an index"});
  expect_error([&] { parse_index_kind("lsh"); }, {"lsh", "flat, ivfpq or hnsw"});
}

TEST(Collection, IdsNameFilesAndShardMembers) {
  EXPECT_EQ(parse_collection_id("a/b.jpg").file, "a/b.jpg");
  EXPECT_EQ(parse_collection_id("a/b.jpg").member, "");
  const CollectionId m = parse_collection_id("d/s-01.tar/x/000001.jpg");
  EXPECT_EQ(m.file, "d/s-01.tar");
  EXPECT_EQ(m.member, "x/000001.jpg");
  EXPECT_EQ(shard_member_id("d/s-01.tar", "x/000001.jpg"), "d/s-01.tar/x/000001.jpg");
  EXPECT_TRUE(is_shard_file("d/s-01.tar"));
  EXPECT_FALSE(is_shard_file("d/s-01.tar.gz"));
}

TEST(Collection, FilesFoldersAndShardsInAFixedOrder) {
  namespace fs = std::filesystem;
  const std::string dir = test::temp_dir();
  const std::string png = test::read_file(test::fixture("images/camera.png"));
  fs::create_directories(dir + "/f");
  test::write_file(dir + "/f/b.png", png);
  test::write_file(dir + "/f/a.png", png);
  test::write_file(dir + "/f/notes.txt", "not an image");
  test::write_file(dir + "/one.png", png);
  std::string tar;
  test::tar_add(tar, "x/1.png", png);
  test::tar_add(tar, "x/1.txt", "a caption");
  test::tar_add(tar, "x/2.png", png);
  tar.append(1024, '\0');
  test::write_file(dir + "/s.tar", tar);
  const ImageCollection files({dir + "/one.png", dir + "/f"});
  EXPECT_EQ(files.size_if_known(), 3);
  const ImageCollection col({dir + "/one.png", dir + "/f", dir + "/s.tar"});
  EXPECT_EQ(col.size_if_known(), -1);  // shards are counted only by reading them
  std::vector<std::string> ids, bytes_of;
  col.each(0, [&](const std::string& id, const std::string& path, const std::string& bytes) {
    ids.push_back(id);
    bytes_of.push_back(bytes.empty() ? "file " + path : "member of " + path);
  });
  EXPECT_EQ(ids, (std::vector<std::string>{dir + "/one.png", dir + "/f/a.png", dir + "/f/b.png", dir + "/s.tar/x/1.png",
                                           dir + "/s.tar/x/2.png"}));
  EXPECT_EQ(bytes_of[0], "file " + dir + "/one.png");
  EXPECT_EQ(bytes_of[3], "member of " + dir + "/s.tar");
  std::vector<std::string> rest;
  col.each(3, [&](const std::string& id, const std::string&, const std::string&) { rest.push_back(id); });
  EXPECT_EQ(rest, (std::vector<std::string>{dir + "/s.tar/x/1.png", dir + "/s.tar/x/2.png"}));
  expect_error([&] { ImageCollection({dir + "/missing"}); }, {"missing: no such file or folder"});
}

// Chunks end at multiples of the chunk size in input items; a second writer on the same folder
// resumes after the last chunk written; a folder of another run is refused.
TEST(Collection, EmbeddingFolderWritesChunksAndResumes) {
  const std::string dir = test::temp_dir() + "/emb";
  const std::vector<std::string> inputs = {"in"};
  auto row = [](float v) { return at::full({1, 4}, v); };
  {
    EmbeddingFolderWriter w(dir, "m.safetensors", inputs, 2);
    EXPECT_FALSE(w.complete());
    EXPECT_EQ(w.items_done(), 0);
    w.add({"i0"}, row(0));
    w.consume();
    EXPECT_FALSE(w.at_chunk_end());
    w.skip("i1", "cannot decode");
    w.consume();
    ASSERT_TRUE(w.at_chunk_end());
    w.write_chunk();
    w.write_chunk();  // nothing new since the last: no second chunk
    w.add({"i2"}, row(2));
    w.consume();  // then killed: item 2 is not in a chunk
    EXPECT_EQ(w.manifest()["chunks"].size(), 1u);
  }
  expect_error([&] { EmbeddingFolderWriter(dir, "other.safetensors", inputs, 2); },
               {"holds embeddings of other inputs, model or --chunk"});
  {
    EmbeddingFolderWriter w(dir, "m.safetensors", inputs, 2);
    EXPECT_EQ(w.items_done(), 2);
    EXPECT_EQ(w.consumed(), 2);
    w.add({"i2", "i3"}, at::cat({row(2), row(3)}));
    w.consume();
    w.consume();
    w.finish();
    EXPECT_TRUE(w.complete());
    EXPECT_EQ(w.vectors(), 3);
    EXPECT_EQ(w.manifest()["skipped"][0]["id"], "i1");
  }
  const EmbeddingSet set = read_embedding_shards(embedding_files(dir));
  EXPECT_EQ(set.ids, (std::vector<std::string>{"i0", "i2", "i3"}));
  EXPECT_EQ(set.dim, 4);
  EXPECT_FLOAT_EQ(set.vectors[4], 2.0f);
  test::write_file(dir + "/manifest.json",
                   "{\"format\": \"vlmo-embeddings\", \"inputs\": [\"in\"], \"chunk\": 2, \"model\": \"m.safetensors\"}");
  expect_error([&] { EmbeddingFolderWriter(dir, "m.safetensors", inputs, 2); }, {"expected \"items_done\""});
}
