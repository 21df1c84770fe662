// The library surface of the tasks: recipes as data, the VQAv2 val split and answer list, the
// downstream batch builders, the evaluation loops (against the task forwards and hand-computed
// metrics), self-describing model files whose heads follow the weights.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "test_util.h"
#include "vlmo/checkpoint.h"
#include "vlmo/data.h"
#include "vlmo/evaluate.h"
#include "vlmo/image_tensor.h"
#include "vlmo/recipes.h"
#include "vlmo/tasks.h"

using namespace vlmo;
using vlmo::test::expect_error;
using vlmo::test::run_cli;

namespace {

// Every head, 4 heads per block, BERT's vocabulary, 3 token types (NLVR2).
Config tiny_config() {
  return test::tiny_config(Config{}.heads, [](Config& c) {
    c.num_heads = 4;
    c.max_text_len = 8;
    c.vocab_size = 30522;
    c.vqav2_label_size = 4;
    c.num_token_types = 3;
    c.drop_path_rate = 0;
  });
}

VLMo tiny_model(const Config& c = tiny_config()) {
  VLMo m(c);
  init_weights(m, 3);
  return m;
}

// In-memory images by reference: "img/<k>" is a 40x30 image of colour k.
Image coloured(int k) {
  Image im;
  im.width = 40;
  im.height = 30;
  im.rgb.resize(40 * 30 * 3);
  for (size_t i = 0; i < im.rgb.size(); ++i) im.rgb[i] = static_cast<uint8_t>((k * 53 + (i % 3) * 71 + i / 97) % 256);
  return im;
}
Image load_coloured(const std::string& ref) { return coloured(std::stoi(ref.substr(4))); }
std::string ref(int k) { return "img/" + std::to_string(k); }

using vlmo::test::bert;

}  // namespace

TEST(Recipes, OfficialFineTuningSettings) {
  Recipe r = official_recipe(FinetuneTask::kVqa, "base");
  EXPECT_EQ(r.image_size, 480);
  EXPECT_DOUBLE_EQ(r.lr, 3e-5);
  EXPECT_DOUBLE_EQ(r.head_lr_mult, 20);
  EXPECT_DOUBLE_EQ(r.drop_path, 0.15);
  EXPECT_EQ(r.batch_size, 128);
  EXPECT_DOUBLE_EQ(r.epochs, 10);
  EXPECT_DOUBLE_EQ(official_recipe(FinetuneTask::kVqa, "large").lr, 1.5e-5);
  EXPECT_DOUBLE_EQ(official_recipe(FinetuneTask::kVqa, "base_plus").lr, 3e-5);
  // 1000 examples, 10 epochs of 128: ceil(10000 / 128) = 79 steps, 10 % warm-up = 7.
  EXPECT_EQ(r.total_steps(1000), 79);
  EXPECT_EQ(r.warmup_steps(79), 7);

  r = official_recipe(FinetuneTask::kNlvr2, "base");
  EXPECT_EQ(r.image_size, 384);
  EXPECT_DOUBLE_EQ(r.lr, 5e-5);
  EXPECT_DOUBLE_EQ(r.drop_path, 0.1);
  EXPECT_DOUBLE_EQ(r.head_lr_mult, 1);
  EXPECT_DOUBLE_EQ(official_recipe(FinetuneTask::kNlvr2, "base-plus").drop_path, 0.2);
  EXPECT_DOUBLE_EQ(official_recipe(FinetuneTask::kNlvr2, "base_plus").lr, 3e-5);
  EXPECT_DOUBLE_EQ(official_recipe(FinetuneTask::kNlvr2, "large").drop_path, 0.15);

  r = official_recipe(FinetuneTask::kRetrievalCoco, "base");
  EXPECT_EQ(r.batch_size, 3072);
  EXPECT_EQ(r.total_steps(123456), 3000);  // fixed steps, whatever the data size
  EXPECT_EQ(r.warmup_steps(3000), 300);
  EXPECT_DOUBLE_EQ(r.drop_path, 0.2);
  EXPECT_EQ(r.init, "pretrained");
  EXPECT_DOUBLE_EQ(official_recipe(FinetuneTask::kRetrievalCoco, "large").lr, 2e-5);

  r = official_recipe(FinetuneTask::kRetrievalF30k, "base");
  EXPECT_EQ(r.total_steps(10), 1500);
  EXPECT_EQ(r.warmup_steps(1500), 150);
  EXPECT_DOUBLE_EQ(r.drop_path, 0.15);
  EXPECT_EQ(r.init, "coco");  // F30K base starts from the COCO-fine-tuned weights
  EXPECT_EQ(official_recipe(FinetuneTask::kRetrievalF30k, "large").init, "coco");
  EXPECT_EQ(official_recipe(FinetuneTask::kRetrievalF30k, "base_plus").init, "pretrained");
  EXPECT_DOUBLE_EQ(official_recipe(FinetuneTask::kRetrievalF30k, "large").lr, 2e-5);

  EXPECT_DOUBLE_EQ(pretrain_lr("base"), 2e-4);
  EXPECT_DOUBLE_EQ(pretrain_lr("base_plus"), 1e-4);
  EXPECT_DOUBLE_EQ(pretrain_lr("large"), 5e-5);
  EXPECT_EQ(parse_finetune_task("irtr"), FinetuneTask::kRetrievalCoco);
  expect_error([] { official_recipe(FinetuneTask::kVqa, "huge"); }, {"huge", "base_plus"});
  expect_error([] { parse_finetune_task("caption"); }, {"caption", "f30k"});
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
  const VqaFinetuneData given = vqa_finetune_data(train, val, {"yes"}, 9, 2);
  EXPECT_EQ(given.train.size(), 3u);  // only questions with an answer in the given list
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
      a["annotations"].push_back({{"question_id", i}, {"image_id", i}, {"multiple_choice_answer", mca[i]},
                                  {"answers", {{{"answer", mca[i]}}}}});
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
  for (int k = 0; k < 6; ++k) pairs->push_back({"dev-" + std::to_string(k) + "-0-0", "the left one is red.", ref(k), ref(k + 10), k % 2 == 0});
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

TEST(Evaluate, VqaPredictionsAreTheTaskForwardAndAccuracyIsOfficial) {
  VLMo m = tiny_model();
  const std::vector<std::string> answers = {"yes", "no", "red", "2"};
  std::vector<VqaQuestion> qs(3);
  for (int i = 0; i < 3; ++i) qs[i].question_id = 100 + i, qs[i].image = ref(i), qs[i].question = "is it red?";
  // The predictions first, from the task forward on the same inputs.
  std::vector<at::Tensor> pix;
  for (int i = 0; i < 3; ++i) pix.push_back(eval_transform(coloured(i), 32));
  const auto [ids, masks] = encode_batch(bert(), {"is it red?", "is it red?", "is it red?"}, 8);
  m->eval();
  at::Tensor pred;
  {
    at::NoGradGuard g;
    pred = vqa_logits(m, ids, masks, at::stack(pix)).argmax(1);
  }
  m->train();
  const std::string p0 = answers[pred[0].item<int64_t>()], p2 = answers[pred[2].item<int64_t>()];
  qs[0].answers.assign(10, p0);                        // 1.0
  qs[1].answers.assign(10, "zebra");                   // 0.0
  qs[2].answers = {p2, p2, "zebra", "zebra", "zebra", "zebra", "zebra", "zebra", "zebra", "zebra"};  // 0.6
  const VqaEvaluation e = evaluate_vqa(m, bert(), qs, answers, load_coloured, /*batch=*/2);
  ASSERT_EQ(e.predictions.size(), 3u);
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(e.predictions[i].first, 100 + i);
    EXPECT_EQ(e.predictions[i].second, answers[pred[i].item<int64_t>()]);
  }
  EXPECT_EQ(e.scored, 3);
  EXPECT_NEAR(e.accuracy, (1.0 + 0.0 + 0.6) / 3, 1e-12);
  EXPECT_TRUE(m->is_training());  // the training mode comes back
  expect_error([&] { evaluate_vqa(m, bert(), qs, {"yes"}, load_coloured); }, {"1 answers", "4 labels"});
}

TEST(Evaluate, Nlvr2AndRetrievalMatchTheirForwards) {
  VLMo m = tiny_model();
  m->eval();
  std::vector<Nlvr2Example> ex;
  for (int k = 0; k < 5; ++k) ex.push_back({"dev-" + std::to_string(k / 2) + "-" + std::to_string(k % 2) + "-0", "a red one.", ref(k), ref(k + 5), false});
  at::Tensor pred;
  {
    at::NoGradGuard g;
    std::vector<at::Tensor> a, b;
    for (int k = 0; k < 5; ++k) a.push_back(eval_transform(coloured(k), 32)), b.push_back(eval_transform(coloured(k + 5), 32));
    const auto [ids, masks] = encode_batch(bert(), std::vector<std::string>(5, "a red one."), 8);
    pred = nlvr2_logits(m, ids, masks, at::stack(a), at::stack(b)).argmax(1);
  }
  // Labels equal to the prediction for examples 0, 1, 2; the opposite for 3, 4.
  for (int k = 0; k < 5; ++k) ex[k].label = (pred[k].item<int64_t>() == 1) == (k < 3);
  const Nlvr2Evaluation n = evaluate_nlvr2(m, bert(), ex, load_coloured, 2);
  EXPECT_NEAR(n.score.accuracy, 3.0 / 5, 1e-12);
  // Sentences: dev-0-*-0 = {0, 1} both right; dev-1-*-0 = {2 right, 3 wrong}; dev-2 = {4 wrong}.
  EXPECT_NEAR(n.score.consistency, 1.0 / 3, 1e-12);
  EXPECT_FALSE(m->is_training());

  std::vector<KarpathyImage> images = {{ref(1), "test", {"a red one", "a blue one"}}, {ref(2), "test", {"the cat"}},
                                       {ref(3), "test", {"two dogs", "a man", "the sea"}}};
  const RetrievalEvaluation r = evaluate_retrieval(m, bert(), images, load_coloured, /*rerank_k=*/2, /*batch=*/2);
  EXPECT_EQ(r.images, 3);
  EXPECT_EQ(r.captions, 6);
  std::vector<at::Tensor> pix;
  for (int k : {1, 2, 3}) pix.push_back(eval_transform(coloured(k), 32));
  const auto [ids, masks] = encode_batch(bert(), {"a red one", "a blue one", "the cat", "two dogs", "a man", "the sea"}, 8);
  const at::Tensor scores = at::matmul(encode_images(m, at::stack(pix)), encode_texts(m, ids, masks).t());
  const Recall want = retrieval_recall(scores, {0, 0, 1, 2, 2, 2});
  EXPECT_DOUBLE_EQ(r.recall.tr1, want.tr1);
  EXPECT_DOUBLE_EQ(r.recall.ir1, want.ir1);
  EXPECT_DOUBLE_EQ(r.recall.ir5, want.ir5);
  EXPECT_EQ(r.rerank_k, 2);
  EXPECT_DOUBLE_EQ(r.reranked.ir10, 1.0);  // 3 images: every caption's image is in its top 10
}

TEST(Evaluate, RetrievalReRanksWithAnotherModelsItm) {
  // The dual scores come from `m`, the ITM pair scores from `other` (another init): the result is
  // rerank_recall over m's scores with other's scorer, and differs from m's own re-ranking.
  VLMo m = tiny_model(), other(tiny_config());
  init_weights(other, 11);
  {
    at::NoGradGuard g;  // a loud ITM head that ranks against m's, so that the re-rankings differ
    for (auto& p : other->named_parameters())
      if (p.key().rfind("itm_score.", 0) == 0) p.value().mul_(-1000);
  }
  m->eval(), other->eval();
  std::vector<KarpathyImage> images;
  std::vector<std::string> captions;
  std::vector<int64_t> owner;
  const std::vector<std::string> words = {"a red one", "a blue one", "the cat", "two dogs", "a man", "the sea", "a car", "one tree"};
  for (int k = 0; k < 8; ++k) {
    images.push_back({ref(k), "test", {words[k], words[(k + 3) % 8] + " again"}});
    for (const auto& c : images.back().captions) captions.push_back(c), owner.push_back(k);
  }
  const RetrievalEvaluation own = evaluate_retrieval(m, bert(), images, load_coloured, /*rerank_k=*/4, /*batch=*/3);
  const RetrievalEvaluation r = evaluate_retrieval(m, bert(), images, load_coloured, /*rerank_k=*/4, /*batch=*/3, other);
  std::vector<at::Tensor> pix;
  for (int k = 0; k < 8; ++k) pix.push_back(eval_transform(coloured(k), 32));
  at::NoGradGuard g;
  const at::Tensor px = at::stack(pix);
  const auto [ids, masks] = encode_batch(bert(), captions, 8);
  const at::Tensor scores = at::matmul(encode_images(m, px), encode_texts(m, ids, masks).t());
  const double w = m->logit_scale.exp().item<double>();
  const std::vector<Recall> want = rerank_recall(scores, owner, 4, itm_pair_scorer(other, px, ids, masks), {1.0, w});
  const std::vector<Recall> mine = rerank_recall(scores, owner, 4, itm_pair_scorer(m, px, ids, masks), {1.0, w});
  EXPECT_DOUBLE_EQ(r.recall.tr1, own.recall.tr1);  // the dual encoder is m's either way
  EXPECT_DOUBLE_EQ(r.reranked.tr1, want[0].tr1);
  EXPECT_DOUBLE_EQ(r.reranked.ir1, want[0].ir1);
  EXPECT_DOUBLE_EQ(r.reranked.ir5, want[0].ir5);
  EXPECT_DOUBLE_EQ(r.reranked_logits.tr1, want[1].tr1);
  EXPECT_DOUBLE_EQ(r.reranked_logits.ir1, want[1].ir1);
  EXPECT_DOUBLE_EQ(r.logits_dual_weight, w);
  EXPECT_DOUBLE_EQ(own.reranked.ir1, mine[0].ir1);
  // On these models the two scorers, and so the two re-rankings, differ: the checks above tell
  // the scorers apart.
  auto key = [](const Recall& x) { return std::vector<double>{x.tr1, x.tr5, x.ir1, x.ir5}; };
  EXPECT_NE(key(want[0]), key(mine[0]));
  const at::Tensor pairs_i = at::arange(8, at::kLong).repeat_interleave(2), pairs_t = at::arange(16, at::kLong);
  EXPECT_FALSE(at::allclose(itm_pair_scorer(other, px, ids, masks)(pairs_i, pairs_t), itm_pair_scorer(m, px, ids, masks)(pairs_i, pairs_t)));
  // A re-ranker at another image size is refused, naming both.
  Config big = tiny_config();
  big.image_size = 48;
  expect_error([&] { evaluate_retrieval(m, bert(), images, load_coloured, 4, 3, tiny_model(big)); },
               {"re-ranking model runs at image size 48", "retrieval model at 32"});
}

TEST(ModelFiles, HeadsFollowTheWeights) {
  const std::string dir = test::temp_dir();
  Config c = tiny_config();
  c.heads = {"vqa"};
  VLMo m = tiny_model(c);
  save_model(dir + "/vqa.safetensors", m, {"yes", "no", "red", "2"});
  LoadedModel l = load_model(dir + "/vqa.safetensors");
  EXPECT_EQ(l.model->config().heads, std::vector<std::string>{"vqa"});
  EXPECT_EQ(l.vqa_answers, (std::vector<std::string>{"yes", "no", "red", "2"}));
  EXPECT_FALSE(l.model->is_training());
  expect_error([&] { require_head(l.model, "itm"); }, {"\"itm\" head", "itm_score"});
  expect_error([&] { encode_images(l.model, at::zeros({1, 3, 32, 32})); }, {"\"itc\" head"});
  // A state dict without the MLM / ITC heads loads into a config that lists them all.
  TensorMap weights = model_state_dict(*m);
  Config all = tiny_config();
  adapt_config_to_weights(all, weights);
  EXPECT_EQ(all.heads, std::vector<std::string>{"vqa"});
  EXPECT_EQ(all.vqav2_label_size, 4);
  EXPECT_EQ(all.num_token_types, 3);
  // Official-style file (no config): an error that says what to give; then with --config.
  write_safetensors(dir + "/bare.safetensors", weights);
  expect_error([&] { load_model(dir + "/bare.safetensors"); }, {"bare.safetensors", "--config", "--preset"});
  test::write_file(dir + "/config.json", config_to_json_text(tiny_config()));
  ModelSpec spec;
  spec.config_path = dir + "/config.json";
  test::write_file(dir + "/answers.json", "[\"a\", \"b\", \"c\", \"d\"]");
  spec.answers_path = dir + "/answers.json";
  l = load_model(dir + "/bare.safetensors", spec);
  EXPECT_EQ(l.vqa_answers.size(), 4u);
  EXPECT_TRUE(at::equal(l.model->vqa_classifier->named_parameters()["3.weight"], m->vqa_classifier->named_parameters()["3.weight"]));
  test::write_file(dir + "/dup.json", "[\"a\", \"b\", \"a\", \"d\"]");
  spec.answers_path = dir + "/dup.json";
  expect_error([&] { load_model(dir + "/bare.safetensors", spec); }, {"dup.json", "entry 2", "repeats"});
  spec.answers_path.clear();
  spec.preset = "base";
  spec.config_path.clear();
  expect_error([&] { load_model(dir + "/bare.safetensors", spec); }, {"do not fit", "mis-shaped"});
}
