// Official checkpoints end to end: the fixtures' Lightning .ckpt and bare .pt (official
// container formats holding the tiny-abspos reference weights) are converted with --config and
// --answers, or given directly, and every inference command run on real image files must give
// the numbers of the library's task forwards on a model built straight from the fixture weights
// and the same preprocessed tensors.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "test_util.h"
#include "vlmo/checkpoint.h"
#include "vlmo/data.h"
#include "vlmo/image.h"
#include "vlmo/image_tensor.h"
#include "vlmo/tasks.h"

using namespace vlmo;
using vlmo::test::fixture;
using vlmo::test::run_cli;

namespace {

const std::string kConfig = fixture("reference/tiny-abspos/config.json");
const std::vector<std::string> kWords = {"a",  "the",   "cat",   "dog", "is",   "on",    "what", "color", "red", "blue",
                                         "of", "image", "photo", "man", "ball", "there", "two",  "left",  "?",   "."};

// An 800-entry vocabulary (the fixture model's vocab_size) with BERT's special ids and some words.
std::string write_vocab(const std::string& dir) {
  std::string v;
  for (int i = 0; i < 800; ++i) {
    std::string tok = "[unused" + std::to_string(i) + "]";
    if (i == 0) tok = "[PAD]";
    else if (i == 100) tok = "[UNK]";
    else if (i == 101) tok = "[CLS]";
    else if (i == 102) tok = "[SEP]";
    else if (i == 103) tok = "[MASK]";
    else if (i >= 200 && i - 200 < static_cast<int>(kWords.size())) tok = kWords[i - 200];
    v += tok + "\n";
  }
  test::write_file(dir + "/vocab.txt", v);
  return dir + "/vocab.txt";
}

std::vector<std::string> answer_list() {
  std::vector<std::string> a;
  for (int i = 0; i < 37; ++i) a.push_back("answer " + std::to_string(i));
  return a;
}

struct Reference {
  VLMo model{nullptr};
  Tokenizer tok;
};

// The reference: the fixture config and weights, loaded directly (no convert, no load_model).
Reference reference(const std::string& vocab) {
  Reference r{VLMo(load_config(kConfig)), Tokenizer::from_file(vocab)};
  init_weights(r.model, 0);
  load_weights(r.model, load_safetensors(fixture("reference/tiny-abspos/weights.safetensors")), /*strict=*/true);
  r.model->eval();
  return r;
}

at::Tensor pixels(const std::vector<std::string>& files, int size) {
  std::vector<at::Tensor> v;
  for (const auto& f : files) v.push_back(eval_transform(read_image(f), size));
  return at::stack(v);
}

std::vector<nlohmann::json> json_lines(const std::string& out) {
  std::vector<nlohmann::json> v;
  std::istringstream in(out);
  for (std::string line; std::getline(in, line);)
    if (!line.empty()) v.push_back(nlohmann::json::parse(line));
  return v;
}

// Every inference command on `model_args` (a converted file, or a checkpoint with --config and
// --answers) against the reference forwards.
void check_every_command(const std::string& dir, const std::vector<std::string>& model_args) {
  const std::string vocab = write_vocab(dir);
  Reference ref = reference(vocab);
  const int S = ref.model->config().image_size, L = ref.model->config().max_text_len;
  const std::string img0 = fixture("images/chelsea.png"), img1 = fixture("images/messi5.jpg"),
                    img2 = fixture("images/camera.png");
  auto cli = [&](std::vector<std::string> args) {
    args.insert(args.begin() + 1, model_args.begin(), model_args.end());
    args.insert(args.end(), {"--vocab", vocab, "--json"});
    const auto r = run_cli(args);
    EXPECT_EQ(r.status, 0) << r.err;
    return json_lines(r.out);
  };
  at::NoGradGuard guard;
  const auto answers = answer_list();

  // vqa: a batch of two requests in one forward (--input), top 5.
  test::write_file(dir + "/vqa.jsonl", nlohmann::json{{"image", img0}, {"question", "what color is the cat?"}}.dump() + "\n" +
                                           nlohmann::json{{"image", img1}, {"question", "is there a ball?"}}.dump() + "\n");
  const auto vqa = cli({"vqa", "--input", dir + "/vqa.jsonl"});
  ASSERT_EQ(vqa.size(), 2u);
  const auto [ids, masks] = encode_batch(ref.tok, {"what color is the cat?", "is there a ball?"}, L);
  const at::Tensor probs = at::sigmoid(vqa_logits(ref.model, ids, masks, pixels({img0, img1}, S)));
  for (int i = 0; i < 2; ++i) {
    const auto [p, idx] = probs[i].topk(5);
    ASSERT_EQ(vqa[i]["answers"].size(), 5u);
    for (int k = 0; k < 5; ++k) {
      EXPECT_EQ(vqa[i]["answers"][k]["answer"], answers[idx[k].item<int64_t>()]);
      EXPECT_NEAR(vqa[i]["answers"][k]["probability"].get<double>(), p[k].item<double>(), 1e-5);
    }
  }

  // itm and nlvr2: single requests from flags.
  const auto itm = cli({"itm", "--image", img2, "--text", "a man on the left"});
  const auto [ti, tm] = encode_batch(ref.tok, {"a man on the left"}, L);
  ASSERT_EQ(itm.size(), 1u);
  EXPECT_NEAR(itm[0]["match_probability"].get<double>(),
              at::softmax(itm_logits(ref.model, ti, tm, pixels({img2}, S)), -1)[0][1].item<double>(), 1e-5);
  const auto nl = cli({"nlvr2", "--image0", img0, "--image1", img2, "--sentence", "the left image is a cat."});
  const auto [ni, nm] = encode_batch(ref.tok, {"the left image is a cat."}, L);
  const double p_true =
      at::softmax(nlvr2_logits(ref.model, ni, nm, pixels({img0}, S), pixels({img2}, S)), -1)[0][1].item<double>();
  ASSERT_EQ(nl.size(), 1u);
  EXPECT_NEAR(nl[0]["probability_true"].get<double>(), p_true, 1e-5);
  EXPECT_EQ(nl[0]["label"].get<bool>(), p_true >= 0.5);

  // embed images, then search them with a text: the stored vectors and the scores.
  const auto emb = cli({"embed", "--out", dir + "/emb.safetensors", img0, img1, img2});
  ASSERT_EQ(emb.size(), 1u);
  const SafetensorsFile f = read_safetensors(dir + "/emb.safetensors");
  const at::Tensor want = encode_images(ref.model, pixels({img0, img1, img2}, S));
  EXPECT_LT((f.tensors.at("embeddings") - want).abs().max().item<double>(), 1e-5);
  const auto hits = cli({"search", "--index", dir + "/emb.safetensors", "--text", "a red ball", "--top-k", "3"});
  const auto [si, sm] = encode_batch(ref.tok, {"a red ball"}, L);
  const at::Tensor scores = at::matmul(want, encode_texts(ref.model, si, sm)[0]);
  ASSERT_EQ(hits.size(), 1u);
  ASSERT_EQ(hits[0]["results"].size(), 3u);
  const std::vector<std::string> files = {img0, img1, img2};
  for (int k = 0; k < 3; ++k) {
    const std::string id = hits[0]["results"][k]["id"];
    const size_t which = std::find(files.begin(), files.end(), id) - files.begin();
    ASSERT_LT(which, files.size()) << id;
    EXPECT_NEAR(hits[0]["results"][k]["score"].get<double>(), scores[which].item<double>(), 1e-5);
  }
  // embed texts.
  test::write_file(dir + "/texts.jsonl",
                   "{\"id\": \"q1\", \"text\": \"a cat\"}\n{\"id\": 7, \"text\": \"two dogs on the left\"}\n");
  cli({"embed", "--out", dir + "/txt.safetensors", "--input", dir + "/texts.jsonl"});
  const SafetensorsFile ft = read_safetensors(dir + "/txt.safetensors");
  const auto [ei, em] = encode_batch(ref.tok, {"a cat", "two dogs on the left"}, L);
  EXPECT_LT((ft.tensors.at("embeddings") - encode_texts(ref.model, ei, em)).abs().max().item<double>(), 1e-5);
  EXPECT_EQ(ft.metadata.at("ids"), "[\"q1\",\"7\"]");
}

}  // namespace

TEST(Official, ConvertedLightningAndBareCheckpointsServeEveryCommand) {
  for (const char* ckpt : {"lightning.ckpt", "bare.pt"}) {
    SCOPED_TRACE(ckpt);
    const std::string dir = test::temp_dir();
    test::write_file(dir + "/answers.json", nlohmann::json(answer_list()).dump());
    const auto conv = run_cli({"convert", fixture(std::string("checkpoints/") + ckpt), dir + "/m.safetensors", "--config",
                               kConfig, "--answers", dir + "/answers.json"});
    ASSERT_EQ(conv.status, 0) << conv.err;
    EXPECT_NE(conv.err.find("37 VQA answers"), std::string::npos) << conv.err;
    check_every_command(dir, {"--model", dir + "/m.safetensors"});
  }
}

TEST(Official, CheckpointGivenDirectlyWithConfigAndAnswers) {
  const std::string dir = test::temp_dir();
  test::write_file(dir + "/answers.json", nlohmann::json(answer_list()).dump());
  check_every_command(
      dir, {"--model", fixture("checkpoints/lightning.ckpt"), "--config", kConfig, "--answers", dir + "/answers.json"});
}

TEST(Official, ClearErrorsForWhatIsMissing) {
  const std::string dir = test::temp_dir();
  const std::string vocab = write_vocab(dir);
  const std::string ckpt = fixture("checkpoints/bare.pt"), img = fixture("images/chelsea.png");
  // No config: the message says what to give.
  auto r = run_cli({"itm", "--model", ckpt, "--image", img, "--text", "a cat", "--vocab", vocab});
  EXPECT_EQ(r.status, 2);
  EXPECT_NE(r.err.find("--config"), std::string::npos) << r.err;
  // VQA without an answer list.
  r = run_cli({"vqa", "--model", ckpt, "--config", kConfig, "--image", img, "--question", "what?", "--vocab", vocab});
  EXPECT_EQ(r.status, 2);
  EXPECT_NE(r.err.find("--answers"), std::string::npos) << r.err;
  // An answer list of the wrong length names both counts.
  test::write_file(dir + "/short.json", "[\"yes\", \"no\"]");
  r = run_cli({"vqa", "--model", ckpt, "--config", kConfig, "--answers", dir + "/short.json", "--image", img, "--question",
               "what?", "--vocab", vocab});
  EXPECT_EQ(r.status, 2);
  EXPECT_NE(r.err.find("2 answers"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("37 labels"), std::string::npos) << r.err;
  // The wrong preset for the weights names the mis-shaped tensors.
  r = run_cli({"itm", "--model", ckpt, "--preset", "base", "--image", img, "--text", "a cat", "--vocab", vocab});
  EXPECT_EQ(r.status, 2);
  EXPECT_NE(r.err.find("mis-shaped"), std::string::npos) << r.err;
  // The BERT vocabulary does not fit an 800-token model.
  r = run_cli({"itm", "--model", ckpt, "--config", kConfig, "--image", img, "--text", "a cat"});
  EXPECT_EQ(r.status, 2);
  EXPECT_NE(r.err.find("vocab_size is 800"), std::string::npos) << r.err;
}

TEST(Official, BatchedRequestsKeepOrderAndReportBadLines) {
  const std::string dir = test::temp_dir();
  const std::string vocab = write_vocab(dir);
  const std::string img = fixture("images/chelsea.png");
  // clang-format off
  test::write_file(dir + "/req.jsonl",
                   nlohmann::json{{"image", img}, {"text", "a cat"}}.dump() + "\n" +          // line 1
                       "{not json\n" +                                                         // line 2
                       nlohmann::json{{"image", dir + "/missing.png"}, {"text", "x"}}.dump() + "\n" +  // line 3
                       "\n" +                                                                  // line 4: blank
                       nlohmann::json{{"image", img}, {"text", "   "}}.dump() + "\n" +            // line 5
                       nlohmann::json{{"image", img}}.dump() + "\n" +                          // line 6
                       nlohmann::json{{"image", img}, {"text", "the red dog"}}.dump() + "\n");  // line 7
  // clang-format on
  const auto r = run_cli({"itm", "--model", fixture("checkpoints/bare.pt"), "--config", kConfig, "--vocab", vocab, "--input",
                          dir + "/req.jsonl", "--batch-size", "2", "--json"});
  EXPECT_EQ(r.status, 3) << r.err;
  const auto lines = json_lines(r.out);
  ASSERT_EQ(lines.size(), 6u) << r.out;
  EXPECT_EQ(lines[0]["text"], "a cat");
  EXPECT_TRUE(lines[0].contains("match_probability"));
  for (int i = 1; i <= 4; ++i) EXPECT_TRUE(lines[i].contains("error")) << lines[i];
  EXPECT_EQ(lines[1]["line"], 2);
  EXPECT_EQ(lines[2]["line"], 3);
  EXPECT_EQ(lines[3]["line"], 5);
  EXPECT_EQ(lines[4]["line"], 6);
  EXPECT_EQ(lines[5]["text"], "the red dog");
  for (const char* part : {"req.jsonl:2: not valid JSON", "req.jsonl:3:", "missing.png", "req.jsonl:5: empty text",
                           "req.jsonl:6: expected a string field \"text\"", "4 of 6 requests failed"})
    EXPECT_NE(r.err.find(part), std::string::npos) << "missing: " << part << "\n" << r.err;
  // The answered lines equal single requests.
  const auto one = run_cli({"itm", "--model", fixture("checkpoints/bare.pt"), "--config", kConfig, "--vocab", vocab, "--image",
                            img, "--text", "the red dog", "--json"});
  ASSERT_EQ(one.status, 0) << one.err;
  EXPECT_NEAR(json_lines(one.out)[0]["match_probability"].get<double>(), lines[5]["match_probability"].get<double>(), 1e-5);
}
