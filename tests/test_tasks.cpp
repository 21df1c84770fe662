// src/tasks/: the heads a model carries decide which task forwards it can run, and model files
// carry their heads: they follow the weights (saved, loaded, adapted), and a missing head is a
// clear error naming it.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include "test_util.h"
#include "vlmo/checkpoint.h"
#include "vlmo/tasks.h"

using namespace vlmo;
using vlmo::test::bert_vocab;
using vlmo::test::expect_error;
using vlmo::test::tiny_config;
using vlmo::test::tiny_model;

TEST(ModelFiles, HeadsFollowTheWeights) {
  const std::string dir = test::temp_dir();
  Config c = tiny_config(all_heads(), bert_vocab);
  c.heads = {"vqa"};
  VLMo m = tiny_model(c, 3);
  save_model(dir + "/vqa.safetensors", m, {"yes", "no", "red", "2"});
  LoadedModel l = load_model(dir + "/vqa.safetensors");
  EXPECT_EQ(l.model->config().heads, std::vector<std::string>{"vqa"});
  EXPECT_EQ(l.vqa_answers, (std::vector<std::string>{"yes", "no", "red", "2"}));
  EXPECT_FALSE(l.model->is_training());
  expect_error([&] { require_head(l.model, "itm"); }, {"\"itm\" head", "itm_score"});
  expect_error([&] { encode_images(l.model, at::zeros({1, 3, 32, 32})); }, {"\"itc\" head"});
  // A state dict without the MLM / ITC heads loads into a config that lists them all.
  TensorMap weights = model_state_dict(*m);
  Config all = tiny_config(all_heads(), bert_vocab);
  adapt_config_to_weights(all, weights);
  EXPECT_EQ(all.heads, std::vector<std::string>{"vqa"});
  EXPECT_EQ(all.vqav2_label_size, 4);
  EXPECT_EQ(all.num_token_types, 3);
  // Official-style file (no config): an error that says what to give; then with --config.
  write_safetensors(dir + "/bare.safetensors", weights);
  expect_error([&] { load_model(dir + "/bare.safetensors"); }, {"bare.safetensors", "--config", "--preset"});
  test::write_file(dir + "/config.json", config_to_json_text(tiny_config(all_heads(), bert_vocab)));
  ModelSpec spec;
  spec.config_path = dir + "/config.json";
  test::write_file(dir + "/answers.json", "[\"a\", \"b\", \"c\", \"d\"]");
  spec.answers_path = dir + "/answers.json";
  l = load_model(dir + "/bare.safetensors", spec);
  EXPECT_EQ(l.vqa_answers.size(), 4u);
  EXPECT_TRUE(
      at::equal(l.model->vqa_classifier->named_parameters()["3.weight"], m->vqa_classifier->named_parameters()["3.weight"]));
  test::write_file(dir + "/dup.json", "[\"a\", \"b\", \"a\", \"d\"]");
  spec.answers_path = dir + "/dup.json";
  expect_error([&] { load_model(dir + "/bare.safetensors", spec); }, {"dup.json", "entry 2", "repeats"});
  spec.answers_path.clear();
  spec.preset = "base";
  spec.config_path.clear();
  expect_error([&] { load_model(dir + "/bare.safetensors", spec); }, {"do not fit", "mis-shaped"});
}
