// src/data/: WebDataset shards (streaming, splitting by rank and worker, pipe: URLs); unusable
// samples skipped and named; the downstream data (VQAv2, NLVR2, the VQAv2 val split and answer list)
// and its batch builders.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <set>

#include "demo.h"
#include "demo_diagnostics.h"
#include "demo_world.h"
#include "model/model_internals.h"
#include "test_util.h"
#include "train_util.h"
#include "vlmo/checkpoint.h"
#include "vlmo/data.h"
#include "vlmo/distributed.h"
#include "vlmo/downstream_data.h"
#include "vlmo/image_tensor.h"
#include "vlmo/masking.h"
#include "vlmo/pretrain.h"
#include "vlmo/retrieval.h"
#include "vlmo/sources.h"
#include "vlmo/tasks.h"

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
  tar_add(a, "x/000004.jpg", jpg);  // no caption
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
  EXPECT_EQ(captions,
            (std::multiset<std::string>{"a football player", "a man with a camera", "fifth", "first of the truncated shard"}));
  EXPECT_EQ(counters.counts(),
            (std::map<std::string, int64_t>{{"corrupt_image", 1}, {"empty_caption", 1}, {"truncated_shard", 1}}));
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
  expect_error([] { TarReader r("pipe:printf abc; exit 3"); },
               {"pipe:printf abc; exit 3", "exited with status 3", "after 3 bytes"});
  // In a stream, a failing command is a skipped shard, counted and named.
  SkipCounters counters;
  WebDatasetStream s({"pipe:exit 7", "pipe:cat '" + dir + "/x.tar'"}, 1, 0, 1, 0, 1, &counters);
  expect_error([&] { s.next(); }, {"no usable sample"});  // (text only: no image member)
  EXPECT_GT(counters.count("truncated_shard"), 0);        // the failing command, once per epoch tried
  EXPECT_EQ(counters.count("missing_image"), 2 * counters.count("truncated_shard"));
  bool named = false;
  for (const auto& [reason, what] : counters.take_new())
    named =
        named || (reason == "truncated_shard" && what.find("pipe:exit 7: the command exited with status 7") != std::string::npos);
  EXPECT_TRUE(named);
}

// ---- unusable samples (faults a long run meets) ----

TEST(Data, UnusableCorpusLinesAreSkippedNamingFileAndLine) {
  const std::string dir = vlmo::test::temp_dir();
  vlmo::test::write_file(dir + "/c.txt", "a cat sits\n\xff\xfe broken\nthe dog runs\n   \n\nbirds fly\n");
  SourceSpec spec;
  spec.text = dir + "/c.txt";
  CollateOptions co;
  co.max_text_len = 16;
  const BatchFn batches = source_batches(spec, ExampleKind::kText, std::make_shared<const Tokenizer>(bert()), co, 3, 1);
  int64_t bad = 0;
  bool named = false;
  for (int64_t i = 0; i < 8; ++i) {
    const Batch b = batches(i);
    EXPECT_EQ(b.text_ids.size(0), 3);  // always full: the unusable line is replaced
    for (const auto& [reason, n] : b.skipped) {
      EXPECT_EQ(reason, "bad_utf8");
      bad += n;
    }
    for (const auto& line : b.skip_log) named = named || line.find(dir + "/c.txt:2:") != std::string::npos;
  }
  EXPECT_GT(bad, 0);
  EXPECT_TRUE(named);
  // Nothing usable at all: a clear error, not a hang.
  vlmo::test::write_file(dir + "/all-bad.txt", "\xff\n\xfe\n");
  spec.text = dir + "/all-bad.txt";
  const BatchFn none = source_batches(spec, ExampleKind::kText, std::make_shared<const Tokenizer>(bert()), co, 2, 1);
  expect_error([&] { none(0); }, {"samples in a row could not be used", "all-bad.txt:", "bad_utf8"});
}

TEST(Data, AnEmptyCaptionFirstInABatchKeepsTheBatchText) {
  CollateOptions co;
  co.max_text_len = 8;
  const Batch b = collate({{Image{}, ""}, {Image{}, "a cat"}}, bert(), co, 1);
  ASSERT_TRUE(b.text_ids.defined());
  EXPECT_EQ(b.text_ids.size(0), 2);
  EXPECT_EQ(b.text_masks[0].sum().item<int64_t>(), 2);  // [CLS] [SEP]
}

TEST(Data, FineTuningBatchesSkipMissingAndCorruptImages) {
  const std::string dir = vlmo::test::temp_dir();
  const std::string good = vlmo::test::fixture("images/messi5.jpg");
  vlmo::test::write_file(dir + "/corrupt.jpg", vlmo::test::read_file(good).substr(0, 300));
  auto pairs = std::make_shared<std::vector<ImageText>>(std::vector<ImageText>{{good, "a football player"},
                                                                               {dir + "/corrupt.jpg", "broken"},
                                                                               {good, "a man"},
                                                                               {dir + "/missing.jpg", "gone"},
                                                                               {good, "a pitch"}});
  CollateOptions co;
  co.image_size = 32;
  co.max_text_len = 8;
  const BatchFn batches = pair_batches(pairs, std::make_shared<const Tokenizer>(bert()), co, 2, 1, file_image_loader());
  std::map<std::string, int64_t> skipped;
  for (int64_t i = 0; i < 10; ++i) {
    const Batch b = batches(i);
    EXPECT_EQ(b.image.size(0), 2);
    EXPECT_EQ(b.text_ids.size(0), 2);
    for (const auto& [r, n] : b.skipped) skipped[r] += n;
    for (const auto& line : b.skip_log)
      EXPECT_TRUE(line.find("corrupt.jpg") != std::string::npos ||
                  line.find("missing.jpg: no such image file") != std::string::npos)
          << line;
  }
  EXPECT_GT(skipped["corrupt_image"], 0);
  EXPECT_GT(skipped["missing_file"], 0);
  EXPECT_EQ(skipped.size(), 2u);
}

// ---- the downstream data ----

TEST(VqaData, ReadsVqav2AndBuildsTheOfficialVocabularyAndTargets) {
  const std::string dir = vlmo::test::temp_dir();
  std::ofstream(dir + "/q.json") << R"({"questions": [
    {"image_id": 1, "question": "What color?", "question_id": 10},
    {"image_id": 1, "question": "How many?", "question_id": 11},
    {"image_id": 2, "question": "Is it?", "question_id": 20}]})";
  std::ofstream(dir + "/a.json") << R"({"annotations": [
    {"question_id": 10, "image_id": 1, "multiple_choice_answer": "Red", "answers": [
      {"answer": "red"}, {"answer": "red"}, {"answer": "red"}, {"answer": "red"}, {"answer": "dark red"},
      {"answer": "dark red"}, {"answer": "maroon"}, {"answer": "red"}, {"answer": "Red"}, {"answer": "red"}]},
    {"question_id": 11, "image_id": 1, "multiple_choice_answer": "two", "answers": [
      {"answer": "2"}, {"answer": "2"}, {"answer": "two"}, {"answer": "3"}, {"answer": "2"},
      {"answer": "2"}, {"answer": "2"}, {"answer": "2"}, {"answer": "2"}, {"answer": "2"}]},
    {"question_id": 20, "image_id": 2, "multiple_choice_answer": "yes", "answers": [
      {"answer": "yes"}, {"answer": "yes"}, {"answer": "yes"}, {"answer": "yes"}, {"answer": "yes"},
      {"answer": "yes"}, {"answer": "yes"}, {"answer": "yes"}, {"answer": "yes"}, {"answer": "no"}]}]})";
  const auto qs = read_vqav2(dir + "/q.json", dir + "/a.json");
  ASSERT_EQ(qs.size(), 3u);
  EXPECT_EQ(qs[1].answers.size(), 10u);
  // Normalised multiple-choice answers "red", "2", "yes", each once: min_count 1 keeps all.
  EXPECT_EQ(build_answer_vocab(qs, 1), (std::vector<std::string>{"red", "2", "yes"}));
  EXPECT_TRUE(build_answer_vocab(qs, 2).empty());
  const std::unordered_map<std::string, int64_t> a2l = {{"red", 0}, {"2", 1}, {"yes", 2}, {"dark red", 3}};
  // Raw answers are counted as given: "red" x6 -> 1.0, "dark red" x2 -> 0.6, "Red" unknown.
  const SoftTargets t = vqa_soft_targets(qs[0].answers, a2l);
  EXPECT_EQ(t.labels, (std::vector<int64_t>{0, 3}));
  EXPECT_EQ(t.scores, (std::vector<double>{1.0, 0.6}));
  EXPECT_TRUE(vqa_soft_targets({"purple", "teal"}, a2l).labels.empty());
  EXPECT_EQ(coco_image_path("/coco/val2014", "val2014", 42), "/coco/val2014/COCO_val2014_000000000042.jpg");
  write_vqa_submission(dir + "/sub.json", {{10, "red"}, {11, "2"}});
  EXPECT_EQ(vlmo::test::read_file(dir + "/sub.json"),
            "[{\"answer\":\"red\",\"question_id\":10},{\"answer\":\"2\",\"question_id\":11}]\n");
  std::ofstream(dir + "/bad.json") << R"({"questions": [{"image_id": 1}]})";
  vlmo::test::expect_error([&] { read_vqav2(dir + "/bad.json", ""); }, {"bad.json", "questions[0]"});
}

TEST(Nlvr2Data, ReadsJsonLinesWithImagePaths) {
  const std::string dir = vlmo::test::temp_dir();
  std::ofstream(dir + "/dev.json") << R"({"identifier": "dev-850-0-1", "sentence": "One image has dogs.", "label": "True"})"
                                      "\n"
                                   << R"({"identifier": "train-1-2-0", "sentence": "x", "label": "False", "directory": 7})"
                                      "\n";
  const auto ex = read_nlvr2(dir + "/dev.json", "/nlvr2/images", "dev");
  ASSERT_EQ(ex.size(), 2u);
  EXPECT_EQ(ex[0].image0, "/nlvr2/images/dev/dev-850-0-img0.png");
  EXPECT_EQ(ex[0].image1, "/nlvr2/images/dev/dev-850-0-img1.png");
  EXPECT_TRUE(ex[0].label);
  EXPECT_EQ(ex[1].image0, "/nlvr2/images/dev/7/train-1-2-img0.png");
  std::ofstream(dir + "/bad.json") << R"({"identifier": "dev-1-0-0", "sentence": "s", "label": "maybe"})"
                                      "\n";
  vlmo::test::expect_error([&] { read_nlvr2(dir + "/bad.json", "/r", "dev"); }, {"bad.json:1", "True"});
}

TEST(VqaData, OfficialValSplitHoldsOutTheLastImages) {
  std::vector<VqaQuestion> val;
  for (int64_t img : {5, 5, 7, 9, 7, 11}) {
    VqaQuestion q;
    q.question_id = static_cast<int64_t>(val.size());
    q.image_id = img;
    val.push_back(q);
  }
  // Images in order of first appearance: 5 7 9 11; the last two (9, 11) are rest_val.
  const VqaValSplit s = split_vqa_val(val, 2);
  std::vector<int64_t> rest, trainable;
  for (const auto& q : s.rest_val) rest.push_back(q.question_id);
  for (const auto& q : s.trainable_val) trainable.push_back(q.question_id);
  EXPECT_EQ(rest, (std::vector<int64_t>{3, 5}));
  EXPECT_EQ(trainable, (std::vector<int64_t>{0, 1, 2, 4}));
  EXPECT_EQ(split_vqa_val(val, 10).trainable_val.size(), 0u);

  // The fine-tuning data: train + trainable_val to train on, rest_val to validate on; the answer
  // list from train + all of val when none is given.
  for (size_t i = 0; i < val.size(); ++i) val[i].answers.assign(10, i < 3 ? "yes" : "no");  // "no" only in rest_val ...
  std::vector<VqaQuestion> train(1);
  train[0].answers.assign(10, "no");  // ... and once in train
  // No multiple_choice_answer anywhere: no answer list can be built.
  expect_error([&] { vqa_finetune_data(train, val, {}, /*min_count=*/1, /*rest_images=*/2); }, {"no answer occurs"});
  for (auto& q : val) q.multiple_choice_answer = q.answers[0];
  train[0].multiple_choice_answer = "no";
  const VqaFinetuneData e = vqa_finetune_data(train, val, {}, /*min_count=*/3, /*rest_images=*/2);
  EXPECT_EQ(e.answers, (std::vector<std::string>{"no", "yes"}));  // "no" 1 + 3 times, "yes" 3 times; train first
  EXPECT_EQ(e.train.size(), 5u);                                  // 1 train + 4 trainable_val
  ASSERT_EQ(e.rest_val.size(), 2u);
  EXPECT_EQ(e.rest_val[0].question_id, 3);
  // With the list {"yes"}: val's "no" questions go first (3, 4, 5, and images 9 and 11 with them),
  // so the last two images left (5, 7) are rest_val and nothing trains.
  const VqaFinetuneData given = vqa_finetune_data(train, val, {"yes"}, 9, 2);
  EXPECT_EQ(given.train.size(), 0u);
  EXPECT_EQ(given.rest_val.size(), 3u);
  EXPECT_EQ(given.val_questions_dropped, 3);
  EXPECT_EQ(given.val_images_dropped, 2);
}

TEST(VqaData, TrainingExamplesCarrySoftTargetsAndDropUnanswerable) {
  std::vector<VqaQuestion> qs(2);
  qs[0].image = "a.jpg";
  qs[0].question = "what?";
  qs[0].answers = {"red", "red", "blue", "red", "green", "red", "red", "blue", "red", "red"};
  qs[1].answers = std::vector<std::string>(10, "purple");
  const auto ex = vqa_training_examples(qs, {"blue", "red"});
  ASSERT_EQ(ex.size(), 1u);  // nobody answered "purple" in the list: dropped
  EXPECT_EQ(ex[0].image, "a.jpg");
  // red: 7 humans -> 1.0 (label 1), first; blue: 2 -> 0.6 (label 0); green not in the list.
  EXPECT_EQ(ex[0].targets.labels, (std::vector<int64_t>{1, 0}));
  EXPECT_EQ(ex[0].targets.scores, (std::vector<double>{1.0, 0.6}));
}

TEST(VqaAnswers, TheOfficialListByHand) {
  const std::string dir = test::temp_dir();
  auto annotations = [](std::vector<std::string> mca) {
    nlohmann::json a = {{"annotations", nlohmann::json::array()}};
    for (size_t i = 0; i < mca.size(); ++i)
      a["annotations"].push_back(
          {{"question_id", i}, {"image_id", i}, {"multiple_choice_answer", mca[i]}, {"answers", {{{"answer", mca[i]}}}}});
    return a.dump();
  };
  test::write_file(dir + "/train.json", annotations({"Yes", "two", "yes", "2", "a dog", "dog", "Dog.", "cat", "red", "blue"}));
  test::write_file(dir + "/val.json", annotations({"red", "cat", "no", "Yes", "the cat"}));
  // Normalised: yes 2 yes 2 dog dog dog cat red blue | red cat no yes cat. Counts over both files:
  // yes 3, 2 2, dog 3, cat 3, red 2, blue 1, no 1; first-occurrence order yes 2 dog cat red blue no.
  auto run = [&](std::vector<std::string> files, const std::string& min) {
    std::vector<std::string> args = {"vqa-answers", "--annotations"};
    args.insert(args.end(), files.begin(), files.end());
    args.insert(args.end(), {"--min-count", min, "--out", dir + "/answers.json"});
    const auto r = run_cli(args);
    EXPECT_EQ(r.status, 0) << r.err;
    return nlohmann::json::parse(test::read_file(dir + "/answers.json")).get<std::vector<std::string>>();
  };
  EXPECT_EQ(run({dir + "/train.json", dir + "/val.json"}, "2"), (std::vector<std::string>{"yes", "2", "dog", "cat", "red"}));
  EXPECT_EQ(run({dir + "/train.json", dir + "/val.json"}, "3"), (std::vector<std::string>{"yes", "dog", "cat"}));
  EXPECT_EQ(run({dir + "/train.json"}, "2"), (std::vector<std::string>{"yes", "2", "dog"}));  // cat needs val
  const auto bad = run_cli({"vqa-answers", "--annotations", dir + "/nope.json", "--out", dir + "/x.json"});
  EXPECT_EQ(bad.status, 2);
  EXPECT_NE(bad.err.find("nope.json"), std::string::npos) << bad.err;
}

TEST(Batches, DownstreamBuildersArePureFunctionsOfTheIndex) {
  auto tok = std::make_shared<const Tokenizer>(bert());
  CollateOptions co;
  co.image_size = 32;
  co.max_text_len = 8;
  co.train_transform = true;
  auto vqa = std::make_shared<std::vector<VqaExample>>();
  for (int k = 0; k < 5; ++k) vqa->push_back({ref(k), "what colour is it?", {{k % 3}, {0.3 * (k + 1)}}});
  const BatchFn vb = vqa_batches(vqa, 3, tok, co, 4, 11, load_coloured);
  const Batch b = vb(2);
  ASSERT_EQ(b.image.sizes(), at::IntArrayRef({4, 3, 32, 32}));
  ASSERT_EQ(b.text_ids.sizes(), at::IntArrayRef({4, 8}));
  ASSERT_EQ(b.vqa_targets.sizes(), at::IntArrayRef({4, 3}));
  EXPECT_NEAR(b.vqa_targets.sum().item<double>() > 0, 1, 0);
  EXPECT_TRUE(at::equal(b.image, vb(2).image));  // same index, same batch (augmentation included)
  EXPECT_TRUE(at::equal(b.vqa_targets, vb(2).vqa_targets));
  // Every row's targets are those of one example (one non-zero entry of 0.3 (k+1) at k % 3).
  for (int i = 0; i < 4; ++i) {
    const at::Tensor row = b.vqa_targets[i];
    ASSERT_EQ(row.nonzero().size(0), 1);
    const int64_t label = row.nonzero()[0][0].item<int64_t>();
    const double score = row[label].item<double>();
    const int k = static_cast<int>(std::lround(score / 0.3)) - 1;
    EXPECT_EQ(k % 3, label);
  }
  expect_error([&] { vqa_batches(vqa, 2, tok, co, 5, 11, load_coloured)(0); }, {"outside", "2 labels"});  // label 2 is drawn

  auto pairs = std::make_shared<std::vector<Nlvr2Example>>();
  for (int k = 0; k < 6; ++k)
    pairs->push_back({"dev-" + std::to_string(k) + "-0-0", "the left one is red.", ref(k), ref(k + 10), k % 2 == 0});
  const Batch n = nlvr2_batches(pairs, tok, co, 6, 5, load_coloured)(0);  // one epoch: a permutation
  ASSERT_EQ(n.image_0.sizes(), at::IntArrayRef({6, 3, 32, 32}));
  ASSERT_EQ(n.image_1.sizes(), at::IntArrayRef({6, 3, 32, 32}));
  EXPECT_EQ(n.nlvr2_labels.sum().item<int64_t>(), 3);
  EXPECT_FALSE(at::equal(n.image_0, n.image_1));

  auto it = std::make_shared<std::vector<ImageText>>();
  std::vector<KarpathyImage> kp = {{ref(1), "train", {"a", "b"}}, {ref(2), "val", {"c"}}, {ref(3), "restval", {"d"}}};
  *it = karpathy_pairs(kp);
  ASSERT_EQ(it->size(), 3u);  // train + restval captions, not val
  EXPECT_EQ((*it)[2].text, "d");
  const Batch p = pair_batches(it, tok, co, 2, 1, load_coloured)(0);
  EXPECT_TRUE(p.text_ids_mlm.defined());
  EXPECT_EQ(p.image.size(0), 2);
  expect_error([&] { pair_batches(std::make_shared<std::vector<ImageText>>(), tok, co, 2, 1); }, {"no image-text examples"});
}
