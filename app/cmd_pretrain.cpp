// vlmo pretrain: one pre-training stage on user data, with the official hyper-parameters as
// defaults (reference §3): image (built-in MIM), text (MLM, attention and vision experts frozen),
// vl (ITC + ITM with hard negatives + MLM).
#include <fstream>
#include <iostream>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>

#include "common.h"
#include "vlmo/checkpoint.h"
#include "vlmo/data.h"
#include "vlmo/error.h"
#include "vlmo/pretrain.h"
#include "vlmo/recipes.h"
#include "vlmo/sources.h"

namespace vlmo::cli {
namespace {

// Options a --train-config JSON may set (same names as the flags, with '-' or '_').
const char* kTrainKeys[] = {"steps", "batch-size", "accumulate", "lr", "warmup", "checkpoint-every",
                            "seed", "loader-threads", "image-size", "max-text-len"};

struct Source {
  // Map-style: n items, item(i) -> example (may throw vlmo::Error for a corrupt item).
  size_t n = 0;
  std::function<Example(size_t)> item;
  // Streaming (WebDataset): sequential examples.
  std::shared_ptr<WebDatasetStream> stream;
};

Source open_source(const Args& a, Stage stage) {
  Source s;
  const DecodeOptions decode;
  if (!a.get("webdataset").empty()) {
    s.stream = std::make_shared<WebDatasetStream>(expand_braces(a.get("webdataset")), a.get_uint64("seed"));
    return s;
  }
  if (!a.get("karpathy").empty()) {
    auto images = std::make_shared<std::vector<KarpathyImage>>();
    for (auto& k : read_karpathy(a.get("karpathy"), a.get("image-root")))
      if (k.split == "train" || k.split == "restval") images->push_back(std::move(k));
    auto pairs = std::make_shared<std::vector<std::pair<size_t, size_t>>>();
    for (size_t i = 0; i < images->size(); ++i)
      for (size_t c = 0; c < (*images)[i].captions.size(); ++c) pairs->emplace_back(i, c);
    s.n = stage == Stage::kImage ? images->size() : pairs->size();
    s.item = [images, pairs, stage, decode](size_t i) {
      if (stage == Stage::kImage) return Example{read_image((*images)[i].path, decode), ""};
      const auto& [img, cap] = (*pairs)[i];
      return Example{stage == Stage::kText ? Image{} : read_image((*images)[img].path, decode), (*images)[img].captions[cap]};
    };
    return s;
  }
  if (!a.get("text").empty()) {
    std::vector<std::string> files;
    std::string list = a.get("text");
    for (size_t start = 0; start <= list.size();) {
      const size_t comma = std::min(list.find(',', start), list.size());
      for (const auto& f : expand_braces(list.substr(start, comma - start))) files.push_back(f);
      start = comma + 1;
    }
    auto lines = std::make_shared<std::vector<std::string>>(read_text_corpus(files));
    s.n = lines->size();
    s.item = [lines](size_t i) { return Example{Image{}, (*lines)[i]}; };
    return s;
  }
  if (!a.get("images").empty()) {
    auto files = std::make_shared<std::vector<std::string>>(list_images(a.get("images")));
    s.n = files->size();
    s.item = [files, decode](size_t i) { return Example{read_image((*files)[i], decode), ""}; };
    return s;
  }
  throw Error("vlmo pretrain: give the data with --webdataset, --karpathy (+ --image-root), --text or --images");
}

int run_pretrain(const Args& args) {
  Args a = args;
  if (!a.get("train-config").empty()) {
    std::ifstream in(a.get("train-config"));
    if (!in) throw Error(cat(a.get("train-config"), ": cannot open"));
    nlohmann::json j;
    try {
      in >> j;
    } catch (const std::exception& e) {
      throw Error(cat(a.get("train-config"), ": not valid JSON (", e.what(), ")"));
    }
    for (auto it = j.begin(); it != j.end(); ++it) {
      std::string key = it.key();
      std::replace(key.begin(), key.end(), '_', '-');
      if (std::find_if(std::begin(kTrainKeys), std::end(kTrainKeys), [&](const char* k) { return key == k; }) == std::end(kTrainKeys))
        throw Error(cat(a.get("train-config"), ": unknown field \"", it.key(), "\""));
      if (!a.given.count(key)) a.values[key] = it->is_string() ? it->get<std::string>() : it->dump();  // flags win
    }
  }
  const Stage stage = parse_stage(a.get("stage"));
  Config cfg = a.get("config").empty() ? Config::preset(a.get("preset")) : load_config(a.get("config"));
  // Official per-stage settings unless given: text length 196 in stage 2, 40 otherwise.
  const int max_len = a.get_int("max-text-len", 0, 4096);
  cfg.max_text_len = max_len > 0 ? max_len : (stage == Stage::kText ? 196 : 40);
  if (a.get_int("image-size", 0, 8192) > 0) cfg.image_size = a.get_int("image-size");
  if (stage == Stage::kImage && !cfg.has_head("mim")) cfg.heads.push_back("mim");
  cfg.validate();
  const Tokenizer tok = tokenizer_from(a, &cfg);

  VLMo model(cfg);
  const uint64_t seed = a.get_uint64("seed");
  init_weights(model, seed);
  if (!a.get("init-beit").empty()) {
    const LoadReport r = load_weights(model, beit_to_vlmo(read_weights(a.get("init-beit")), cfg.relative_table_rows()), false);
    std::cerr << "initialised from BEiT " << a.get("init-beit") << "\n" << r.describe();
  }
  if (!a.get("init").empty()) {
    const LoadReport r = load_weights(model, read_weights(a.get("init")), false);
    std::cerr << "initialised from " << a.get("init") << "\n" << r.describe();
  }
  set_trainable_for_stage(model, stage);

  if (stage != Stage::kText && !a.get("text").empty())
    throw Error(cat("stage ", stage_name(stage), " needs images: a text corpus (--text) only feeds stage text"));
  if (stage != Stage::kImage && !a.get("images").empty())
    throw Error(cat("stage ", stage_name(stage), " needs captions: an image folder (--images) only feeds stage image"));
  Source src = open_source(a, stage);
  const int64_t batch = a.get_int64("batch-size", 1, 1 << 20);
  CollateOptions co;
  co.image_size = cfg.image_size;
  co.max_text_len = cfg.max_text_len;
  co.patch_size = cfg.patch_size;
  co.train_transform = true;
  co.patch_mask = stage == Stage::kImage;
  std::shared_ptr<EpochOrder> order = src.n ? std::make_shared<EpochOrder>(src.n, seed) : nullptr;
  auto skipped = std::make_shared<std::atomic<int64_t>>(0);
  auto stream_mu = std::make_shared<std::mutex>();
  auto stream_pos = std::make_shared<int64_t>(0);
  BatchFn batches = [=, &tok](int64_t index) {
    std::vector<Example> ex;
    if (src.stream) {
      std::lock_guard<std::mutex> lock(*stream_mu);
      for (; *stream_pos < index * batch; ++*stream_pos) src.stream->next();  // resume: skip ahead
      for (int64_t j = 0; j < batch; ++j, ++*stream_pos) ex.push_back(src.stream->next());
    } else {
      for (int64_t j = 0; j < batch; ++j) {
        for (int64_t g = index * batch + j;; g += static_cast<int64_t>(src.n)) {  // a corrupt item: the next epoch's
          try {
            ex.push_back(src.item(order->at(g)));
            break;
          } catch (const Error& e) {
            if (++*skipped > static_cast<int64_t>(src.n)) throw;
            std::cerr << "skipped corrupt sample: " << e.what() << "\n";
          }
        }
      }
    }
    for (auto& e : ex) {
      if (stage == Stage::kText) e.image = Image{};
      if (stage == Stage::kImage) e.text.clear();
    }
    return collate(ex, tok, co, mix_seed(seed, static_cast<uint64_t>(index)));
  };
  TrainOptions t;
  t.name = std::string("stage-") + stage_name(stage);
  t.max_steps = a.get_int64("steps", 1);
  t.warmup_steps = a.get_int64("warmup", 0);
  t.lr = a.get("lr").empty() ? pretrain_lr(a.get("preset")) : a.get_double("lr", 0);
  t.accumulate = a.get_int("accumulate", 1, 1 << 20);
  t.batch_size = batch;
  t.checkpoint_every = a.get_int64("checkpoint-every", 0);
  t.checkpoint_path = a.get("out");
  t.metrics_path = a.get("metrics");
  t.loader_threads = src.stream ? 1 : a.get_int("loader-threads", 1, 256);
  t.config_json = config_to_json_text(cfg);
  const ObjectiveFn objective = stage == Stage::kImage ? ObjectiveFn(mim_objective)
                                : stage == Stage::kText ? ObjectiveFn(text_mlm_objective)
                                                        : ObjectiveFn(vl_objective);
  const TrainResult r = train(model, objective, batches, t, a.get("resume"));
  std::cerr << "trained " << r.steps << " steps in " << r.seconds << " s; checkpoint: " << t.checkpoint_path << "\n";
  return 0;
}

}  // namespace

Command pretrain_command() {
  Command c;
  c.name = "pretrain";
  c.summary =
      "Run one pre-training stage: image (built-in masked image modelling), text (MLM with the "
      "official frozen set), vl (ITC + ITM with global hard negatives + MLM x 0.25).\nDefaults are "
      "the official recipe (lr by preset, 200k steps, 2.5k warm-up, AdamW 0.9/0.98, wd 0.01; text length "
      "196 in stage text, 40 otherwise); --train-config JSON may set the training fields.";
  c.usage = "vlmo pretrain --stage {image,text,vl} (--webdataset P | --karpathy J --image-root D | --text F | --images D) --out CKPT";
  c.options = {{"stage", "vl", "image, text or vl"},
               {"preset", "base", "model preset (base, base_plus, large)"},
               {"config", "", "model config JSON (overrides --preset)"},
               {"train-config", "", "JSON with training fields (steps, batch_size, lr, warmup, ...); flags given on the command line win"},
               {"webdataset", "", "tar shards, e.g. data/cc-{000000..000099}.tar"},
               {"karpathy", "", "Karpathy-split JSON (dataset_coco.json); uses train + restval"},
               {"image-root", ".", "folder the Karpathy file paths are relative to"},
               {"text", "", "text corpus files (comma-separated, braces allowed), one sentence per line"},
               {"images", "", "folder of images (stage image)"},
               vocab_option(),
               {"init", "", "weights to start from (checkpoint of the previous stage)"},
               {"init-beit", "", "BEiT checkpoint to start stage 1 from (official key mapping)"},
               {"resume", "", "training checkpoint to resume exactly"},
               {"out", "pretrain.safetensors", "checkpoint file (written atomically)"},
               {"metrics", "metrics.jsonl", "JSON-lines metrics file"},
               {"steps", "200000", "optimizer steps"},
               {"warmup", "2500", "warm-up steps"},
               {"lr", "", "peak learning rate (default: the preset's official one: base 2e-4, base_plus 1e-4, large 5e-5)"},
               {"batch-size", "32", "samples per micro-batch"},
               {"accumulate", "32", "micro-batches per optimizer step (1024 effective by default)"},
               {"checkpoint-every", "1000", "steps between checkpoints"},
               {"image-size", "0", "image size (0: the config's)"},
               {"max-text-len", "0", "text length (0: 196 for stage text, else 40)"},
               {"loader-threads", "2", "background loader threads"},
               {"seed", "1", "seed of the data order, augmentation and masking"}};
  c.run = run_pretrain;
  return c;
}

}  // namespace vlmo::cli
