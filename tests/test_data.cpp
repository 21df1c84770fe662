// src/data/: WebDataset shards (streaming, splitting by rank and worker, pipe: URLs).
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <set>

#include "test_util.h"
#include "train_util.h"
#include "vlmo/checkpoint.h"
#include "vlmo/data.h"
#include "vlmo/distributed.h"
#include "vlmo/masking.h"
#include "demo.h"
#include "demo_diagnostics.h"
#include "vlmo/image_tensor.h"
#include "demo_world.h"
#include "vlmo/pretrain.h"
#include "vlmo/retrieval.h"
#include "vlmo/sources.h"
#include "vlmo/tasks.h"
#include "model/model_internals.h"

using namespace vlmo;
using namespace vlmo::test;

TEST(WebDataset, BraceExpansion) {
  EXPECT_EQ(expand_braces("s-{000..002}.tar"), (std::vector<std::string>{"s-000.tar", "s-001.tar", "s-002.tar"}));
  EXPECT_EQ(expand_braces("{a,b}/{1..2}"), (std::vector<std::string>{"a/1", "a/2", "b/1", "b/2"}));
  EXPECT_EQ(expand_braces("plain.tar"), (std::vector<std::string>{"plain.tar"}));
  expect_error([] { expand_braces("x-{1..}"); }, {"numeric"});
  expect_error([] { expand_braces("x-{1..3"); }, {"unmatched"});
}

TEST(WebDataset, StreamsShardsSkippingCorruptSamplesAndTruncatedShards) {
  const std::string dir = vlmo::test::temp_dir();
  const std::string jpg = vlmo::test::read_file(vlmo::test::fixture("images/messi5.jpg"));
  const std::string png = vlmo::test::read_file(vlmo::test::fixture("images/camera.png"));
  std::string a, b;
  tar_add(a, "x/000001.jpg", jpg);
  tar_add(a, "x/000001.txt", "a football player");
  tar_add(a, "x/000002.png", png);
  tar_add(a, "x/000002.json", R"({"caption": "a man with a camera", "id": 2})");
  tar_add(a, "x/000003.jpg", jpg.substr(0, 500) + std::string(300, 'z'));  // corrupt image
  tar_add(a, "x/000003.txt", "broken");
  tar_add(a, "x/000004.jpg", jpg);                                        // no caption
  tar_add(a, "x/000005.jpg", jpg);
  tar_add(a, "x/000005.txt", "fifth");
  a.append(1024, '\0');
  tar_add(b, "y/000010.jpg", jpg);
  tar_add(b, "y/000010.txt", "first of the truncated shard");
  tar_add(b, "y/000011.jpg", jpg);
  tar_add(b, "y/000011.txt", "lost");
  b.resize(b.size() - 700);  // cut inside the last file
  vlmo::test::write_file(dir + "/s-000.tar", a);
  vlmo::test::write_file(dir + "/s-001.tar", b);
  SkipCounters counters;
  WebDatasetStream stream(expand_braces(dir + "/s-{000..001}.tar"), 1, 0, 1, 0, 1, &counters);
  std::multiset<std::string> captions;
  while (stream.epoch() < 1) {
    const Example e = stream.next();
    if (stream.epoch() >= 1) break;
    EXPECT_GT(e.image.width, 0);
    captions.insert(e.text);
  }
  EXPECT_EQ(captions, (std::multiset<std::string>{"a football player", "a man with a camera", "fifth",
                                                  "first of the truncated shard"}));
  EXPECT_EQ(counters.counts(), (std::map<std::string, int64_t>{{"corrupt_image", 1}, {"empty_caption", 1}, {"truncated_shard", 1}}));
  const auto log = counters.take_new();
  ASSERT_EQ(log.size(), 3u);
  bool names_member = false;
  for (const auto& [reason, what] : log)
    if (reason == "corrupt_image") names_member = what.find("s-000.tar: sample \"x/000003\"") != std::string::npos;
  EXPECT_TRUE(names_member) << "the log names the shard and the member";
  // Two workers see disjoint shards.
  WebDatasetStream w0({dir + "/s-000.tar", dir + "/s-001.tar"}, 1, 0, 1, 0, 2);
  WebDatasetStream w1({dir + "/s-000.tar", dir + "/s-001.tar"}, 1, 0, 1, 1, 2);
  const std::string c0 = w0.next().text, c1 = w1.next().text;
  const bool zero_has_a = c0 == "a football player";
  EXPECT_EQ(c1 == "a football player", !zero_has_a);
}

TEST(WebDataset, ShardsSplitByRankAndLoaderWorker) {
  // 4 shards of 4 samples, each shard's captions one colour word: with 2 ranks x 2 workers every
  // (rank, worker) reads one shard of its own per epoch (the assignment is reshuffled each epoch),
  // and batch i of a rank comes from worker i mod 2.
  const std::string dir = vlmo::test::temp_dir();
  const std::string png = vlmo::test::read_file(vlmo::test::fixture("images/camera.png"));
  const std::vector<std::string> words = {"red", "blue", "green", "yellow"};
  for (size_t k = 0; k < words.size(); ++k) {
    std::string t;
    for (int j = 0; j < 4; ++j) {
      const std::string key = "s" + std::to_string(k) + "/" + std::to_string(j);
      tar_add(t, key + ".png", png);
      tar_add(t, key + ".txt", words[k]);
    }
    t.append(1024, '\0');
    vlmo::test::write_file(dir + "/p-00" + std::to_string(k) + ".tar", t);
  }
  auto tok = std::make_shared<const Tokenizer>(bert());
  std::map<int64_t, int> shard_of;  // token id of the word -> shard
  for (size_t k = 0; k < words.size(); ++k) shard_of[tok->id(words[k])] = static_cast<int>(k);
  CollateOptions co;
  co.image_size = 32;
  co.max_text_len = 8;
  auto shards_in = [&](const Batch& b) {
    std::set<int> s;
    for (int64_t i = 0; i < b.text_ids.size(0); ++i) s.insert(shard_of.at(b.text_ids[i][1].item<int64_t>()));
    return s;
  };
  SourceSpec spec;
  spec.webdataset = dir + "/p-{000..003}.tar";
  spec.world = 2;
  spec.workers = 2;
  EXPECT_TRUE(webdataset_split_by_rank(spec));
  std::set<int> seen[2];
  for (int r = 0; r < 2; ++r) {
    spec.rank = r;
    const BatchFn fn = source_batches(spec, ExampleKind::kImageText, tok, co, 2, 5);
    std::set<int> worker_shards[2];
    for (int64_t i = 0; i < 4; ++i) {  // local batch i is global index i * 2 + r; 4 = one epoch
      const std::set<int> s = shards_in(fn(i * 2 + r));
      ASSERT_EQ(s.size(), 1u) << "a batch mixes shards";
      worker_shards[i % 2].insert(*s.begin());
      seen[r].insert(*s.begin());
    }
    EXPECT_EQ(worker_shards[0].size(), 1u);
    EXPECT_EQ(worker_shards[1].size(), 1u);
    EXPECT_NE(*worker_shards[0].begin(), *worker_shards[1].begin());
    expect_error([&] { fn(1 - r); }, {"belongs to rank"});
    expect_error([&] { fn(r); }, {"asked for after a later one"});
  }
  EXPECT_EQ(seen[0].size() + seen[1].size(), 4u);  // the ranks read disjoint shards, all four
  for (int k : seen[0]) EXPECT_EQ(seen[1].count(k), 0u);
  // Fewer shards than ranks x workers: without resampling every rank reads every shard (one
  // reader); with it each reader draws shards at random.
  spec.webdataset = dir + "/p-000.tar";
  spec.rank = 1;
  EXPECT_FALSE(webdataset_split_by_rank(spec));
  EXPECT_EQ(shards_in(source_batches(spec, ExampleKind::kImageText, tok, co, 2, 5)(3)), std::set<int>{0});
  spec.resample = true;
  EXPECT_TRUE(webdataset_split_by_rank(spec));
  EXPECT_EQ(shards_in(source_batches(spec, ExampleKind::kImageText, tok, co, 2, 5)(3)), std::set<int>{0});
}

TEST(WebDataset, PipeUrlsReadACommandsOutput) {
  const std::string dir = vlmo::test::temp_dir();
  std::string t;
  tar_add(t, "a/1.txt", "hello");
  tar_add(t, "a/2.txt", "world");
  t.append(1024, '\0');
  vlmo::test::write_file(dir + "/x.tar", t);
  TarReader direct(dir + "/x.tar"), piped("pipe:cat '" + dir + "/x.tar'");
  TarEntry a, b;
  int n = 0;
  while (direct.next(a)) {
    ASSERT_TRUE(piped.next(b));
    EXPECT_EQ(a.name, b.name);
    EXPECT_EQ(a.data, b.data);
    ++n;
  }
  EXPECT_FALSE(piped.next(b));
  EXPECT_EQ(n, 2);
  expect_error([] { TarReader r("pipe:printf abc; exit 3"); }, {"pipe:printf abc; exit 3", "exited with status 3", "after 3 bytes"});
  // In a stream, a failing command is a skipped shard, counted and named.
  SkipCounters counters;
  WebDatasetStream s({"pipe:exit 7", "pipe:cat '" + dir + "/x.tar'"}, 1, 0, 1, 0, 1, &counters);
  expect_error([&] { s.next(); }, {"no usable sample"});  // (text only: no image member)
  EXPECT_GT(counters.count("truncated_shard"), 0);  // the failing command, once per epoch tried
  EXPECT_EQ(counters.count("missing_image"), 2 * counters.count("truncated_shard"));
  bool named = false;
  for (const auto& [reason, what] : counters.take_new())
    named = named || (reason == "truncated_shard" && what.find("pipe:exit 7: the command exited with status 7") != std::string::npos);
  EXPECT_TRUE(named);
}

