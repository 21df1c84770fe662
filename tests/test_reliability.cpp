// Faults a long run meets: outputs that cannot be written, a second run on the same outputs,
// temporaries of killed runs, corrupt checkpoints, non-finite losses and gradients, unusable
// data, and a resume after more metrics than checkpoint were written.
#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmath>
#include <csignal>
#include <filesystem>
#include <limits>
#include <nlohmann/json.hpp>

#include "test_util.h"
#include "vlmo/checkpoint.h"
#include "vlmo/data.h"
#include "vlmo/downstream_data.h"
#include "vlmo/files.h"
#include "vlmo/objectives.h"
#include "vlmo/pretrain.h"
#include "vlmo/safetensors.h"
#include "vlmo/sources.h"
#include "vlmo/train.h"

using namespace vlmo;
using vlmo::test::expect_error;

namespace {

Config tiny() { return vlmo::test::tiny_config(); }

using vlmo::test::bert;

// Text-only batches of fixed sentences (stage 2), a pure function of the index.
BatchFn text_batches(int batch) {
  CollateOptions co;
  co.max_text_len = 16;
  return [co, batch](int64_t index) {
    static const char* kText[] = {"a red circle on the left", "two blue squares", "a green triangle at the top",
                                  "the yellow star is small", "a large white circle", "three black dots"};
    std::vector<Example> ex;
    for (int j = 0; j < batch; ++j) ex.push_back({Image{}, kText[(index * batch + j) % 6]});
    return collate(ex, bert(), co, static_cast<uint64_t>(index));
  };
}

TrainOptions quiet(int64_t steps) {
  TrainOptions t;
  t.max_steps = steps;
  t.warmup_steps = 1;
  t.lr = 1e-3;
  t.batch_size = 4;
  t.progress = false;
  return t;
}

TensorMap snapshot(VLMo& m) {
  TensorMap out;
  for (const auto& [k, v] : model_state_dict(*m)) out[k] = v.clone();
  return out;
}

bool same_weights(const TensorMap& a, const TensorMap& b) {
  for (const auto& [k, v] : a)
    if (!at::equal(v, b.at(k))) return false;
  return true;
}

pid_t dead_pid() {
  const pid_t pid = ::fork();
  if (pid == 0) ::_exit(0);
  int status = 0;
  ::waitpid(pid, &status, 0);
  return pid;  // reaped: no process has it (until the pid wraps around)
}

int count_lines_with(const std::string& path, const std::string& needle) {
  std::ifstream in(path);
  std::string line;
  int n = 0;
  while (std::getline(in, line)) n += line.find(needle) != std::string::npos;
  return n;
}

}  // namespace

TEST(Files, OutputPathsAreCheckedBeforeWork) {
  const std::string dir = vlmo::test::temp_dir();
  expect_error([&] { check_output_path(dir + "/missing/ck.safetensors", "checkpoint (--out)"); },
               {"checkpoint (--out)", "/missing/ck.safetensors", "does not exist"});
  expect_error([&] { check_output_path(dir, "metrics file"); }, {dir, "is a folder"});
  expect_error([&] { check_output_path("", "checkpoint"); }, {"checkpoint", "no path"});
  check_output_path(dir + "/fine.safetensors", "checkpoint");  // a new file in an existing folder
}

TEST(Files, InputsNameThePathAndWhatWasExpected) {
  const std::string dir = vlmo::test::temp_dir();
  expect_error([&] { open_input(dir, "text corpus"); }, {dir, "is a folder", "text corpus"});
  expect_error([&] { open_input(dir + "/nope.txt", "text corpus"); }, {"nope.txt", "No such file"});
  expect_error([&] { open_input("", "model config JSON"); }, {"no model config JSON file given"});
  // The library's readers use them: a folder given as a config or a vocabulary is named.
  expect_error([&] { load_config(dir); }, {dir, "is a folder", "model config JSON"});
  expect_error([&] { Tokenizer::from_file(dir); }, {dir, "is a folder", "vocabulary"});
}

TEST(Files, ASecondHolderOfTheLockIsRefused) {
  const std::string path = vlmo::test::temp_dir() + "/run.safetensors";
  {
    FileLock first(path, "the checkpoint");
    expect_error([&] { FileLock second(path, "the checkpoint"); },
                 {path, "in use by another running process", "pid " + std::to_string(::getpid())});
  }
  FileLock again(path, "the checkpoint");  // released with its holder
}

TEST(Files, StaleTemporariesOfDeadWritersAreRemoved) {
  const std::string dir = vlmo::test::temp_dir();
  const std::string path = dir + "/ck.safetensors";
  const std::string stale = path + ".tmp." + std::to_string(dead_pid());
  const std::string mine = path + ".tmp." + std::to_string(::getpid());
  const std::string other = dir + "/other.safetensors.tmp.1";
  for (const auto& f : {stale, mine, other}) vlmo::test::write_file(f, "partial");
  EXPECT_EQ(remove_stale_temporaries(path), 1);
  EXPECT_FALSE(std::filesystem::exists(stale));
  EXPECT_TRUE(std::filesystem::exists(mine));   // this process may be writing it
  EXPECT_TRUE(std::filesystem::exists(other));  // another file's
}

TEST(Files, CorruptedSafetensorsFailTheChecksumNamingTheFile) {
  const std::string path = vlmo::test::temp_dir() + "/w.safetensors";
  write_safetensors(path, {{"a", at::arange(64, at::kFloat)}}, {{"note", "x"}});
  SafetensorsFile ok = read_safetensors(path);
  EXPECT_EQ(ok.metadata, (std::map<std::string, std::string>{{"note", "x"}}));  // the checksum is not shown
  std::string bytes = vlmo::test::read_file(path);
  bytes[bytes.size() - 5] ^= 0x40;  // one flipped bit in the last tensor's data
  vlmo::test::write_file(path, bytes);
  expect_error([&] { read_safetensors(path); }, {path, "checksum mismatch"});
  vlmo::test::write_file(path, bytes.substr(0, bytes.size() - 16));  // truncated
  expect_error([&] { read_safetensors(path); }, {path});
}

TEST(Train, NonFiniteLossOrGradientSkipsTheStepWithoutAnUpdate) {
  at::manual_seed(3);
  VLMo m(tiny());
  init_weights(m, 3);
  set_trainable_for_stage(m, Stage::kText);
  int calls = 0;
  TensorMap before_bad;
  bool unchanged_over_bad_steps = false;
  const ObjectiveFn objective = [&](VLMo& model, const Batch& b, const Distributed*) {
    ++calls;
    Outputs out = text_mlm_objective(model, b);
    if (calls == 3) {  // step 3: NaN loss
      before_bad = snapshot(model);
      out["textmlm_loss"] = out["textmlm_loss"] * std::numeric_limits<double>::quiet_NaN();
    } else if (calls == 4) {  // step 4: finite loss (0), NaN gradient: d sqrt(0 * p) / dp
      const at::Tensor p = model->named_parameters()["transformer.blocks.0.mlp_text.fc1.weight"];
      out["textmlm_loss"] = out["textmlm_loss"] * 0 + (p * 0).sqrt().sum();
    } else if (calls == 5) {
      unchanged_over_bad_steps = same_weights(before_bad, snapshot(model));
    }
    return out;
  };
  TrainOptions t = quiet(6);
  t.metrics_path = vlmo::test::temp_dir() + "/m.jsonl";
  const TrainResult r = train(m, objective, text_batches(4), t);
  EXPECT_EQ(r.steps, 6);
  EXPECT_EQ(r.bad_steps, 2);
  EXPECT_TRUE(unchanged_over_bad_steps) << "a skipped step must not change the weights";
  EXPECT_TRUE(std::isnan(r.history[2].at("loss")));
  EXPECT_TRUE(std::isfinite(r.history[5].at("loss")));
  for (const auto& [k, v] : model_state_dict(*m)) EXPECT_TRUE(at::isfinite(v).all().item<bool>()) << k;
  EXPECT_EQ(count_lines_with(t.metrics_path, "\"skipped_step\":\"non-finite loss"), 1);
  EXPECT_EQ(count_lines_with(t.metrics_path, "\"skipped_step\":\"non-finite gradient\""), 1);
}

TEST(Train, StepsThatStayNonFiniteStopTheRunAndKeepTheLastCheckpoint) {
  const std::string dir = vlmo::test::temp_dir();
  at::manual_seed(3);
  VLMo m(tiny());
  init_weights(m, 3);
  set_trainable_for_stage(m, Stage::kText);
  TrainOptions t = quiet(4);
  t.checkpoint_path = dir + "/ck.safetensors";
  train(m, text_mlm_objective, text_batches(4), t);
  const std::string good = vlmo::test::read_file(t.checkpoint_path);
  // The weights blow up: every later step is non-finite.
  {
    at::NoGradGuard g;
    m->named_parameters()["transformer.blocks.0.mlp_text.fc1.weight"].fill_(std::nan(""));
  }
  t.max_steps = 50;
  t.max_bad_steps = 3;
  expect_error([&] { train(m, text_mlm_objective, text_batches(4), t); },
               {"3 steps in a row had a non-finite loss or gradient", "step 3", t.checkpoint_path, "left as it was"});
  EXPECT_TRUE(vlmo::test::read_file(t.checkpoint_path) == good) << "the good checkpoint was replaced";
  // A checkpoint is due while the weights are broken: it is not written.
  t.checkpoint_every = 1;
  expect_error([&] { train(m, text_mlm_objective, text_batches(4), t); },
               {"transformer.blocks.0.mlp_text.fc1.weight is not finite after step 1", "left as it was"});
  EXPECT_TRUE(vlmo::test::read_file(t.checkpoint_path) == good) << "the good checkpoint was replaced";
}

TEST(Objectives, NonFiniteHardNegativeWeightsAreReportedNotCrashed) {
  const at::Tensor w = hard_negative_weights(at::full({4, 4}, std::nan(""), at::kFloat));
  EXPECT_THROW(sample_hard_negatives(w), NonFiniteError);
  expect_error([] { sample_hard_negatives(hard_negative_weights(at::ones({1, 1}))); }, {"at least 2"});
  // A large logit scale: the positive's softmax weight is 1 and the others underflow to 0 in fp32
  // (exp(-200) < the smallest float); the error says so instead of asking for more candidates.
  const at::Tensor sim = at::eye(4) * 200.0;
  expect_error([&] { sample_hard_negatives(hard_negative_weights(sim)); }, {"row 0 (3 candidates) underflowed to 0", "logit"});
  expect_error([&] { keyed_sample_rows(hard_negative_weights(sim), at::arange(4), {1, 2, 3, 4}); },
               {"underflowed to 0", "logit scale"});
}

TEST(Train, UnusableSamplesAreCountedAndAHighSkipRateStopsTheRun) {
  at::manual_seed(3);
  VLMo m(tiny());
  init_weights(m, 3);
  set_trainable_for_stage(m, Stage::kText);
  const BatchFn inner = text_batches(4);
  // One corrupt image per batch (1 of 5 read), and from step 6 on 3 per batch (3 of 7).
  const BatchFn batches = [inner](int64_t index) {
    Batch b = inner(index);
    const int bad = index < 5 ? 1 : 3;
    b.skipped["corrupt_image"] = bad;
    for (int i = 0; i < bad; ++i) b.skip_log.push_back("img" + std::to_string(index) + ".jpg: not a JPEG");
    return b;
  };
  TrainOptions t = quiet(5);
  t.skip_window = 20;
  t.max_skip_rate = 0.3;
  TrainResult r = train(m, text_mlm_objective, batches, t);
  EXPECT_EQ(r.skipped.at("corrupt_image"), 5);  // 20 % skipped: the run goes on
  t.max_steps = 30;
  expect_error([&] { train(m, text_mlm_objective, batches, t); },
               {"of the last", "samples read were skipped", "> the limit of 30%", "corrupt_image"});
}

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

TEST(Train, ResumeDropsMetricsPastTheCheckpointAndATornLine) {
  const std::string dir = vlmo::test::temp_dir();
  auto run = [&](int64_t stop_after, const std::string& resume) {
    at::manual_seed(3);
    VLMo m(tiny());
    init_weights(m, 3);
    set_trainable_for_stage(m, Stage::kText);
    TrainOptions t = quiet(8);
    t.checkpoint_path = dir + "/ck.safetensors";
    t.metrics_path = dir + "/m.jsonl";
    t.stop_after = stop_after;
    return train(m, text_mlm_objective, text_batches(4), t, resume);
  };
  run(2, "");  // steps 1-2, checkpoint at 2
  std::filesystem::copy_file(dir + "/ck.safetensors", dir + "/ck2.safetensors");
  run(3, dir + "/ck.safetensors");  // steps 3-5 logged; then the "kill": back to the step-2 checkpoint
  { std::ofstream(dir + "/m.jsonl", std::ios::app) << "{\"stage\":\"train\",\"step\":6,\"lo"; }
  std::filesystem::rename(dir + "/ck2.safetensors", dir + "/ck.safetensors");
  run(0, dir + "/ck.safetensors");
  std::ifstream in(dir + "/m.jsonl");
  std::string line;
  std::vector<int> steps;
  while (std::getline(in, line)) {
    const auto j = nlohmann::json::parse(line);  // no torn line is left
    steps.push_back(j.at("step").get<int>());
  }
  EXPECT_EQ(steps, (std::vector<int>{1, 2, 3, 4, 5, 6, 7, 8}));
}

TEST(Train, AStopRequestSavesACheckpointAndResumesExactly) {
  const std::string dir = vlmo::test::temp_dir();
  auto fresh = [] {
    at::manual_seed(3);
    VLMo m(tiny());
    init_weights(m, 3);
    set_trainable_for_stage(m, Stage::kText);
    return m;
  };
  TrainOptions t = quiet(6);
  t.checkpoint_path = dir + "/full.safetensors";
  VLMo a = fresh();
  train(a, text_mlm_objective, text_batches(4), t);

  VLMo b = fresh();
  t.checkpoint_path = dir + "/cut.safetensors";
  int calls = 0;
  const ObjectiveFn stop_at_3 = [&](VLMo& model, const Batch& batch, const Distributed*) {
    if (++calls == 3) request_stop(SIGTERM);  // as the handler does, during step 3
    return text_mlm_objective(model, batch);
  };
  try {
    train(b, stop_at_3, text_batches(4), t);
    ADD_FAILURE() << "expected vlmo::Interrupted";
  } catch (const Interrupted& e) {
    EXPECT_EQ(e.signal, SIGTERM);
    EXPECT_EQ(e.step, 3);
    EXPECT_EQ(e.checkpoint, t.checkpoint_path);
    EXPECT_NE(std::string(e.what()).find("--resume " + t.checkpoint_path), std::string::npos) << e.what();
  }
  clear_stop_request();
  VLMo c = fresh();
  train(c, text_mlm_objective, text_batches(4), t, t.checkpoint_path);
  const TensorMap wa = read_weights(dir + "/full.safetensors"), wc = read_weights(dir + "/cut.safetensors");
  for (const auto& [k, v] : wa) EXPECT_TRUE(at::equal(v, wc.at(k))) << k;
}

TEST(Files, CorruptVqaAnswerMetadataIsAnErrorNamingTheFile) {
  const std::string dir = vlmo::test::temp_dir();
  Config c = tiny();
  c.heads = {"vqa"};
  c.vqav2_label_size = 3;
  VLMo m(c);
  init_weights(m, 1);
  save_model(dir + "/ok.safetensors", m, {"yes", "no", "two"});
  SafetensorsFile f = read_safetensors(dir + "/ok.safetensors");
  EXPECT_EQ(load_model(dir + "/ok.safetensors").vqa_answers.size(), 3u);
  f.metadata["vqa_answers"] = R"(["yes", "no"])";  // one answer short of the classifier
  write_safetensors(dir + "/short.safetensors", f.tensors, f.metadata);
  expect_error([&] { load_model(dir + "/short.safetensors"); }, {"short.safetensors", "2 answers", "3"});
  f.metadata["vqa_answers"] = R"(["yes", "no", )";  // not JSON
  write_safetensors(dir + "/torn.safetensors", f.tensors, f.metadata);
  expect_error([&] { load_model(dir + "/torn.safetensors"); }, {"torn.safetensors", "vqa_answers"});
}

TEST(Data, FineTuningBatchesSkipMissingAndCorruptImages) {
  const std::string dir = vlmo::test::temp_dir();
  const std::string good = vlmo::test::fixture("images/messi5.jpg");
  vlmo::test::write_file(dir + "/corrupt.jpg", vlmo::test::read_file(good).substr(0, 300));
  auto pairs = std::make_shared<std::vector<ImageText>>(std::vector<ImageText>{
      {good, "a football player"}, {dir + "/corrupt.jpg", "broken"}, {good, "a man"},
      {dir + "/missing.jpg", "gone"}, {good, "a pitch"}});
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
      EXPECT_TRUE(line.find("corrupt.jpg") != std::string::npos || line.find("missing.jpg: no such image file") != std::string::npos) << line;
  }
  EXPECT_GT(skipped["corrupt_image"], 0);
  EXPECT_GT(skipped["missing_file"], 0);
  EXPECT_EQ(skipped.size(), 2u);
}
