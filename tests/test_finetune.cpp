// Fine-tuning plans (vlmo/finetune.h): what each task trains, the plans read from the official
// data files, the model made from pre-trained weights, and the recipe's schedule.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "test_util.h"
#include "vlmo/finetune.h"

using namespace vlmo;
using vlmo::test::expect_error;

namespace {

std::shared_ptr<const Tokenizer> bert_ptr() { return std::make_shared<const Tokenizer>(test::bert()); }

// VQAv2 files of `n` questions on images 1..n, every answer `answer_of(i)` ten times.
void write_vqa(const std::string& dir, const std::string& name, int n, const std::function<std::string(int)>& answer_of) {
  nlohmann::json q = {{"questions", nlohmann::json::array()}}, a = {{"annotations", nlohmann::json::array()}};
  for (int i = 0; i < n; ++i) {
    q["questions"].push_back({{"question_id", 100 + i}, {"image_id", 1 + i}, {"question", "what shape?"}});
    nlohmann::json answers = nlohmann::json::array();
    for (int k = 0; k < 10; ++k) answers.push_back({{"answer", answer_of(i)}});
    a["annotations"].push_back(
        {{"question_id", 100 + i}, {"image_id", 1 + i}, {"multiple_choice_answer", answer_of(i)}, {"answers", answers}});
  }
  test::write_file(dir + "/" + name + "_q.json", q.dump());
  test::write_file(dir + "/" + name + "_a.json", a.dump());
}

}  // namespace

TEST(FinetunePlan, EachTaskNamesItsHeadsObjectiveAndRecords) {
  const Config base = test::tiny_config();
  const FinetunePlan vqa = vqa_plan({"circle", "square", "two"}, {});
  EXPECT_EQ(vqa.name, "finetune-vqa");
  const Config vc = vqa.model_config(base);
  EXPECT_EQ(vc.heads, (std::vector<std::string>{"vqa"}));
  EXPECT_EQ(vc.vqav2_label_size, 3);
  EXPECT_EQ(vc.num_token_types, base.num_token_types);
  EXPECT_EQ(vqa.metadata.at("vqa_answers"), "[\"circle\",\"square\",\"two\"]");
  EXPECT_TRUE(vqa.objective && !vqa.step_objective && !vqa.validate);
  expect_error([] { vqa_plan({"a"}, {}, std::vector<VqaQuestion>(1)); }, {"needs a tokenizer"});

  const FinetunePlan nlvr2 = nlvr2_plan({});
  EXPECT_EQ(nlvr2.name, "finetune-nlvr2");
  const Config nc = nlvr2.model_config(base);
  EXPECT_EQ(nc.heads, (std::vector<std::string>{"nlvr2"}));
  EXPECT_EQ(nc.num_token_types, 3);
  EXPECT_TRUE(nlvr2.metadata.empty());

  const FinetunePlan itc = retrieval_plan({}, false, std::nullopt), global = retrieval_plan({}, true, 7);
  EXPECT_EQ(itc.name, "finetune-retrieval");
  EXPECT_EQ(itc.model_config(base).heads, (std::vector<std::string>{"itc", "itm"}));
  EXPECT_FALSE(itc.step_objective);
  EXPECT_TRUE(global.step_objective);
  // The official ITC only, or with ITM on hard negatives (one tiny forward each).
  VLMo m = finetune_model(itc.model_config(base), {}, 3);
  at::manual_seed(1);
  Batch b;
  b.image = at::randn({3, 3, base.image_size, base.image_size});
  b.text_ids = at::randint(1000, 2000, {3, base.max_text_len}, at::kLong);
  b.text_masks = at::ones({3, base.max_text_len}, at::kLong);
  EXPECT_EQ(itc.objective(m, b, nullptr).count("itm_loss"), 0u);
  EXPECT_EQ(global.objective(m, b, nullptr).count("itm_loss"), 1u);

  TrainOptions t;
  t.metadata["vocab"] = "v";
  vqa.apply(t);
  EXPECT_EQ(t.name, "finetune-vqa");
  EXPECT_EQ(t.metadata.size(), 2u);
}

TEST(FinetunePlan, FromTheOfficialFiles) {
  const std::string dir = test::temp_dir();
  write_vqa(dir, "train", 6, [](int i) { return i % 3 ? "circle" : "square"; });
  write_vqa(dir, "val", 4, [](int i) { return i % 2 ? "circle" : "triangle"; });
  const Config cfg = test::tiny_config();
  FinetuneSpec s;
  s.files.questions = dir + "/train_q.json", s.files.annotations = dir + "/train_a.json";
  s.files.min_answer_count = 1;
  s.batch = 2;
  FinetunePlan p = finetune_plan(s, cfg, bert_ptr());
  EXPECT_EQ(p.name, "finetune-vqa");
  EXPECT_EQ(p.train.examples, 6);
  EXPECT_EQ(p.metadata.at("vqa_answers"), "[\"square\",\"circle\"]");  // in order of first appearance
  EXPECT_FALSE(p.validate);
  // With val: its first 2 images train (trainable_val), the last 2 validate (rest_val).
  s.files.val_questions = dir + "/val_q.json", s.files.val_annotations = dir + "/val_a.json";
  s.files.rest_val_images = 2;
  p = finetune_plan(s, cfg, bert_ptr());
  EXPECT_EQ(p.train.examples, 8);
  EXPECT_EQ(p.model_config(cfg).vqav2_label_size, 3);
  EXPECT_TRUE(p.validate);
  s.with_itm = true;
  expect_error([&] { finetune_plan(s, cfg, bert_ptr()); }, {"retrieval tasks", "not vqa"});

  nlohmann::json k = {{"images", nlohmann::json::array()}};
  for (const char* split : {"train", "restval", "val", "test"})
    k["images"].push_back({{"filename", std::string(split) + ".jpg"},
                           {"split", split},
                           {"sentences", {{{"raw", "a red circle"}}, {{"raw", "a circle"}}}}});
  test::write_file(dir + "/karpathy.json", k.dump());
  FinetuneSpec r;
  r.task = FinetuneTask::kRetrievalF30k;
  r.files.karpathy = dir + "/karpathy.json";
  r.global_batch = true;
  p = finetune_plan(r, cfg, bert_ptr());
  EXPECT_EQ(p.name, "finetune-f30k");
  EXPECT_EQ(p.train.examples, 4);  // the train and restval captions
  EXPECT_TRUE(p.step_objective && p.validate);
}

TEST(FinetunePlan, PretrainedWeightsAndTheRecipesSchedule) {
  const Config cfg = test::tiny_config();
  VLMo pretrained = test::tiny_model(cfg, 11);
  const std::string dir = test::temp_dir();
  write_vqa(dir, "train", 20, [](int i) { return i % 2 ? "yes" : "no"; });
  FinetuneSpec s;
  s.recipe = official_recipe(FinetuneTask::kVqa, "base");  // batch 128, 10 epochs, lr 3e-5, heads x20
  s.files.questions = dir + "/train_q.json", s.files.annotations = dir + "/train_a.json";
  s.files.min_answer_count = 1;
  s.batch = 16;
  FinetuneStart start{{model_state_dict(*pretrained), {}}, cfg};
  TrainOptions t;
  const Finetuning f = prepare_finetuning(s, start, bert_ptr(), t);
  EXPECT_EQ(f.config.heads, (std::vector<std::string>{"vqa"}));
  // The encoder comes from the pre-trained weights, the new head keeps its initialisation.
  const auto got = f.model->named_parameters();
  EXPECT_TRUE(at::equal(got["transformer.patch_embed.proj.weight"],
                        pretrained->named_parameters()["transformer.patch_embed.proj.weight"]));
  ASSERT_FALSE(f.loaded.missing.empty());
  for (const auto& name : f.loaded.missing) EXPECT_EQ(name.rfind("vqa_classifier.", 0), 0u) << name;
  EXPECT_EQ(f.world, 1);
  EXPECT_EQ(t.accumulate, 8);    // 128 / 16
  EXPECT_EQ(t.max_steps, 2);     // ceil(10 epochs x 20 / 128)
  EXPECT_EQ(t.warmup_steps, 0);  // 10 % of 2, rounded down
  EXPECT_DOUBLE_EQ(t.lr, 3e-5);
  EXPECT_DOUBLE_EQ(t.head_lr_mult, 20);
  EXPECT_EQ(t.name, "finetune-vqa");
  EXPECT_TRUE(t.metadata.count("vqa_answers"));
  s.steps = 5, s.lr = 1e-4, s.accumulate = 3;  // the overrides
  prepare_finetuning(s, start, bert_ptr(), t);
  EXPECT_EQ(t.max_steps, 5);
  EXPECT_EQ(t.accumulate, 3);
  EXPECT_DOUBLE_EQ(t.lr, 1e-4);
}
