// CLI habits: typed, range-checked numeric flags with one clear line; command-line flags win over
// a --train-config file.
#include <gtest/gtest.h>

#include "test_util.h"

using vlmo::test::run_cli;

TEST(Cli, NumbersAreTypedAndRangeChecked) {
  struct Case {
    std::vector<std::string> args;
    std::string message;
  };
  const std::vector<Case> cases = {
      {{"pretrain", "--steps", "1.5"}, "option --steps: expected a whole number, got \"1.5\""},
      {{"pretrain", "--steps", "0"}, "option --steps: must be at least 1, got 0"},
      {{"pretrain", "--accumulate", "-1"}, "option --accumulate: must be between 0 and"},
      {{"pretrain", "--global-batch", "0"}, "option --global-batch: must be between 1 and"},
      {{"pretrain", "--seed", "-3"}, "option --seed: must be at least 0, got -3"},
      {{"pretrain", "--lr", "abc"}, "option --lr: expected a finite number, got \"abc\""},
      {{"pretrain", "--steps", "99999999999999999999"}, "option --steps: 99999999999999999999 is out of range"},
      {{"preprocess", "--size", "100000", "--out", "x.safetensors", "a.jpg"}, "option --size: must be between 1 and 8192"},
      {{"demo", "--step-scale", "-1"}, "option --step-scale: must be between"},
      {{"info", "--image-size", "12x"}, "option --image-size: expected a whole number, got \"12x\""},
      {{"pretrain", "--stage", "text", "--contrastive-batch", "global", "--out", "/tmp/x.safetensors"},
       "--contrastive-batch global applies to --stage vl"},
      {{"pretrain", "--contrastive-batch", "all", "--out", "/tmp/x.safetensors"},
       "--contrastive-batch: expected local or global, got \"all\""},
      {{"pretrain", "--resample", "--text", "x.txt", "--stage", "text", "--out", "/tmp/x.safetensors"},
       "--resample applies to --webdataset shards only"},
  };
  for (const auto& c : cases) {
    const auto r = run_cli(c.args);
    EXPECT_EQ(r.status, 2) << c.args[0] << " " << c.args[1];
    EXPECT_NE(r.err.find(c.message), std::string::npos) << "got: " << r.err << "\nwant: " << c.message;
    EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;  // one line
  }
}

TEST(Cli, FlagsOverrideTheTrainConfigFile) {
  const std::string dir = vlmo::test::temp_dir();
  vlmo::test::write_tiny_config(dir, {"mlm"});
  vlmo::test::write_file(dir + "/corpus.txt", "a man rides a horse\nthe cat sleeps on a sofa\ntwo dogs play\n");
  vlmo::test::write_file(dir + "/train.json", R"({"steps": 4, "batch_size": 2, "warmup": 1, "accumulate": 1})");
  const auto r = run_cli({"pretrain", "--stage", "text", "--config", dir + "/tiny.json", "--text", dir + "/corpus.txt",
                          "--train-config", dir + "/train.json", "--steps", "2", "--out", dir + "/ck.safetensors", "--metrics",
                          dir + "/m.jsonl", "--max-text-len", "16"});
  ASSERT_EQ(r.status, 0) << r.err;
  const std::string metrics = vlmo::test::read_file(dir + "/m.jsonl");
  EXPECT_EQ(std::count(metrics.begin(), metrics.end(), '\n'), 2) << metrics;  // --steps 2, not the file's 4
  EXPECT_NE(r.err.find("step 2/2"), std::string::npos) << r.err;
}
