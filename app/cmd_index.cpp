// vlmo index build: a FAISS index over embedding files (vlmo/vector_index.h), with the build time
// and, for the approximate kinds, recall@10 against exact search printed.
#include <chrono>
#include <cstdio>
#include <iostream>
#include <nlohmann/json.hpp>
#include <random>

#include "cli.h"
#include "vlmo/error.h"
#include "vlmo/files.h"
#include "vlmo/vector_index.h"

namespace vlmo::cli {
namespace {

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

int run_index(const Args& a) {
  if (a.positional.empty() || a.positional[0] != "build")
    throw Error("usage: vlmo index build --embeddings E.safetensors... --out INDEX");
  std::vector<std::string> files(a.positional.begin() + 1, a.positional.end());
  if (!a.get("embeddings").empty()) files.insert(files.begin(), a.get("embeddings"));
  if (files.empty()) throw Error("give --embeddings E.safetensors (more shards may follow as arguments)");
  if (a.get("out").empty()) throw Error("--out INDEX.safetensors is required");
  check_output_path(a.get("out"), "--out");
  IndexOptions o;
  o.kind = parse_index_kind(a.get("type"));
  o.nlist = a.get_int("nlist");
  o.pq_m = a.get_int("pq-m");
  o.nprobe = a.get_int("nprobe");
  o.hnsw_m = a.get_int("hnsw-m");
  o.ef_search = a.get_int("ef-search");
  const EmbeddingSet set = read_embedding_shards(files);
  auto t0 = std::chrono::steady_clock::now();
  const VectorIndex index = VectorIndex::build(set, o);
  const double build_s = seconds_since(t0);
  index.save(a.get("out"));
  nlohmann::json report = {{"out", a.get("out")}, {"type", index_kind_name(o.kind)}, {"vectors", set.size()},
                           {"dim", set.dim},      {"modality", set.modality},        {"build_s", build_s}};
  // Recall of an approximate index: --check queries drawn from the collection, top 10 against
  // an exact flat index.
  const int64_t checks = std::min<int64_t>(a.get_int64("check"), set.size());
  if (o.kind != IndexKind::kFlat && checks > 0) {
    std::mt19937_64 rng(1);
    std::vector<float> q(static_cast<size_t>(checks * set.dim));
    for (int64_t i = 0; i < checks; ++i) {
      const int64_t r = static_cast<int64_t>(rng() % static_cast<uint64_t>(set.size()));
      std::copy_n(set.vectors.begin() + r * set.dim, set.dim, q.begin() + i * set.dim);
    }
    const VectorIndex exact = VectorIndex::build(set, IndexOptions{});
    t0 = std::chrono::steady_clock::now();
    const auto approx_hits = index.search(q.data(), checks, 10);
    const double approx_ms = 1000 * seconds_since(t0) / checks;
    t0 = std::chrono::steady_clock::now();
    const auto exact_hits = exact.search(q.data(), checks, 10);
    const double exact_ms = 1000 * seconds_since(t0) / checks;
    report["recall_at_10"] = recall_at_k(approx_hits, exact_hits, 10);
    report["query_ms"] = approx_ms;
    report["exact_query_ms"] = exact_ms;
    report["check_queries"] = checks;
  }
  if (a.get_flag("json")) {
    std::cout << report.dump() << "\n";
  } else {
    std::printf("indexed %lld %s embeddings (%lld-d) as %s in %.2f s -> %s\n", static_cast<long long>(set.size()),
                set.modality.c_str(), static_cast<long long>(set.dim), index_kind_name(o.kind), build_s, a.get("out").c_str());
    if (report.contains("recall_at_10"))
      std::printf("recall@10 vs exact search over %lld queries: %.4f; %.3f ms/query (exact: %.3f ms/query)\n",
                  static_cast<long long>(checks), report["recall_at_10"].get<double>(), report["query_ms"].get<double>(),
                  report["exact_query_ms"].get<double>());
  }
  return 0;
}

}  // namespace

Command index_command() {
  Command c{"index",
            "Build a FAISS index over embedding files of vlmo embed (several shards allowed): exact inner-product "
            "search (flat, default) or approximate (ivfpq, hnsw, with recall@10 against exact search printed). "
            "vlmo search --index takes the result.",
            "vlmo index build --embeddings E.safetensors [MORE.safetensors...] --out INDEX.safetensors [--type flat|ivfpq|hnsw]"};
  c.options = {{"embeddings", "", "embedding file from vlmo embed (more shards may follow as arguments)"},
               {"out", "", "index file to write"},
               {"type", "flat", "flat (exact), ivfpq or hnsw"},
               integer_option("nlist", "0", "ivfpq: inverted lists (0: sqrt(N))", 0, 1 << 24),
               integer_option("pq-m", "0", "ivfpq: sub-quantisers, dividing the dimension (0: automatic)", 0, 4096),
               integer_option("nprobe", "32", "ivfpq: lists searched per query", 1, 1 << 24),
               integer_option("hnsw-m", "32", "hnsw: neighbours per node", 2, 512),
               integer_option("ef-search", "128", "hnsw: search depth", 1, 1 << 20),
               integer_option("check", "1000", "queries for the recall check of an approximate index (0: none)", 0),
               {"json", "false", "print a JSON report", true}};
  c.min_positional = 1;
  c.max_positional = 1u << 20;
  c.run = run_index;
  return c;
}

}  // namespace vlmo::cli
