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
#include "vlmo/device.h"
#include "vlmo/distributed.h"
#include "vlmo/error.h"
#include "vlmo/files.h"
#include "vlmo/pretrain.h"
#include "vlmo/recipes.h"
#include "vlmo/sources.h"

namespace vlmo::cli {
namespace {

// Options a --train-config JSON may set (same names as the flags, with '-' or '_').
const char* kTrainKeys[] = {"steps",      "batch-size",       "accumulate",        "global-batch",  "lr",
                            "warmup",     "checkpoint-every", "contrastive-batch", "seed",          "loader-threads",
                            "image-size", "max-text-len",     "max-bad-steps",     "max-skip-rate", "skip-window"};

int run_pretrain(const Args& args) {
  Args a = args;
  if (!a.get("train-config").empty()) {
    std::ifstream in = open_input(a.get("train-config"), "training config JSON");
    nlohmann::json j;
    try {
      in >> j;
    } catch (const std::exception& e) {
      throw Error(cat(a.get("train-config"), ": not valid JSON (", e.what(), ")"));
    }
    for (auto it = j.begin(); it != j.end(); ++it) {
      std::string key = it.key();
      std::replace(key.begin(), key.end(), '_', '-');
      if (std::find(std::begin(kTrainKeys), std::end(kTrainKeys), key) == std::end(kTrainKeys))
        throw Error(cat(a.get("train-config"), ": unknown field \"", it.key(), "\""));
      if (!a.given.count(key)) a.values[key] = it->is_string() ? it->get<std::string>() : it->dump();  // flags win
    }
    try {
      a.check_numbers();  // values from the file are held to the same rules as flags
    } catch (const Error& e) {
      throw Error(cat(a.get("train-config"), ": ", e.what()));
    }
  }
  const Stage stage = parse_stage(a.get("stage"));
  const bool global_batch =
      global_contrastive_batch(a, stage == Stage::kVL, "--stage vl (the other stages have no contrastive loss)");
  if (a.get_flag("resample") && a.get("webdataset").empty()) throw Error("--resample applies to --webdataset shards only");
  TrainOptions t;
  prepare_training(a, t);  // outputs checked before the model and the data are loaded
  Config cfg = a.get("config").empty() ? Config::preset(a.get("preset")) : load_config(a.get("config"));
  // Text length: --max-text-len, else a --config file's own, else 196 in stage text, 40 otherwise.
  const int max_len = a.get_int("max-text-len");
  std::string len_from = "--max-text-len";
  if (max_len > 0) cfg.max_text_len = max_len;
  else if (!a.get("config").empty()) len_from = "max_text_len of " + a.get("config");
  else cfg.max_text_len = stage == Stage::kText ? 196 : 40, len_from = "the official value for this stage";
  std::cerr << "text length " << cfg.max_text_len << " tokens (" << len_from << ")\n";
  if (a.get_int("image-size") > 0) cfg.image_size = a.get_int("image-size");
  if (stage == Stage::kImage && !cfg.has_head("mim")) cfg.heads.push_back("mim");
  cfg.validate();
  const Tokenizer tok = tokenizer_from(a, &cfg);
  record_vocab(tok, t.metadata);

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
  model->to(training_device(a, t.group.get()));
  apply_runtime_options(a, model);

  CollateOptions co;
  co.image_size = cfg.image_size, co.max_text_len = cfg.max_text_len, co.patch_size = cfg.patch_size;
  co.train_transform = true, co.patch_mask = stage == Stage::kImage;
  SourceSpec spec;
  spec.webdataset = a.get("webdataset"), spec.karpathy = a.get("karpathy");
  spec.image_root = a.get("image-root");
  spec.text = a.get("text");
  spec.images = a.get("images");
  if (t.group) spec.rank = t.group->rank(), spec.world = t.group->world_size();
  spec.workers = a.get_int("loader-threads");
  spec.resample = a.get_flag("resample");
  const bool split = webdataset_split_by_rank(spec);
  if (!spec.webdataset.empty() && spec.rank == 0) {
    const size_t shards = expand_braces(spec.webdataset).size();
    if (split)
      std::cerr << "webdataset: " << shards << " shard(s), " << (spec.resample ? "resampled by" : "split over") << " "
                << spec.world << " rank(s) x " << spec.workers << " loader thread(s)\n";
    else
      std::cerr << "webdataset: " << shards << " shard(s) for " << spec.world << " rank(s) x " << spec.workers
                << " loader thread(s): one reader per rank, every rank reads every shard and keeps its own batches "
                   "(give at least ranks x loader threads shards, or --resample)\n";
  }
  const ExampleKind kind = stage == Stage::kImage  ? ExampleKind::kImage
                           : stage == Stage::kText ? ExampleKind::kText
                                                   : ExampleKind::kImageText;
  const int64_t batch = a.get_int64("batch-size");
  const BatchFn batches = source_batches(spec, kind, std::make_shared<const Tokenizer>(tok), co, batch, seed);
  t.name = std::string("stage-") + stage_name(stage);
  t.max_steps = a.get_int64("steps");
  t.warmup_steps = a.get_int64("warmup");
  t.lr = a.get("lr").empty() ? pretrain_lr(a.get("preset")) : a.get_double("lr");
  // The recipe's batch is global, as the official's batch_size; --accumulate overrides it.
  const int world = t.group ? t.group->world_size() : 1;
  const StepBatch step = recipe_step_batch(a.get_int64("global-batch"), batch, world);
  t.accumulate = a.get_int("accumulate") > 0 ? a.get_int("accumulate") : step.accumulate;
  if (!t.group || t.group->rank() == 0)
    std::cerr << (a.get_int("accumulate") == 0 && !step.note.empty() ? "note: --global-batch: " + step.note + "\n" : "")
              << "optimizer steps of " << step_samples_text(batch, t.accumulate, world) << "\n";
  t.batch_size = batch;
  t.checkpoint_every = a.get_int64("checkpoint-every");
  t.loader_threads = spec.webdataset.empty() || split ? a.get_int("loader-threads") : 1;  // one reader: sequential
  t.config_json = config_to_json_text(cfg);
  const ObjectiveFn objective = stage == Stage::kImage  ? ObjectiveFn(mim_objective)
                                : stage == Stage::kText ? ObjectiveFn(text_mlm_objective)
                                                        : ObjectiveFn(vl_objective);
  if (global_batch) t.step_objective = vl_global_step_objective(seed);
  const TrainResult r = train(model, objective, batches, t, a.get("resume"));
  std::cerr << "trained " << r.steps << " steps in " << r.seconds << " s; checkpoint: " << t.checkpoint_path << "\n";
  return 0;
}

}  // namespace

Command pretrain_command() {
  Command c;
  c.name = "pretrain";
  c.summary = "Run one pre-training stage: image (built-in masked image modelling), text (MLM with the "
              "official frozen set), vl (ITC + ITM with global hard negatives + MLM x 0.25).\nDefaults are "
              "the official recipe (lr by preset, 200k steps, 2.5k warm-up, AdamW 0.9/0.98, wd 0.01; text length "
              "196 in stage text, 40 otherwise); --train-config JSON may set the training fields.";
  c.usage =
      "vlmo pretrain --stage {image,text,vl} (--webdataset P | --karpathy J --image-root D | --text F | --images D) --out CKPT";
  c.options = {
      {"stage", "vl", "image, text or vl"},
      device_option(),
      precision_option(),
      attention_option(),
      checkpointing_option(),
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
      integer_option("steps", "200000", "optimizer steps", 1),
      integer_option("warmup", "2500", "warm-up steps", 0),
      number_option("lr", "", "peak learning rate (default: the preset's official one: base 2e-4, base_plus 1e-4, large 5e-5)", 0,
                    1),
      integer_option("batch-size", "32", "samples per micro-batch", 1, 1048576),
      integer_option(
          "global-batch", "1024",
          "samples per step over all processes (the official's batch_size): accumulate = this / (--batch-size x processes)", 1,
          int64_t{1} << 40),
      integer_option("accumulate", "0", "micro-batches per optimizer step (0: from --global-batch)", 0, 1048576),
      integer_option("checkpoint-every", "1000", "steps between checkpoints", 0),
      {"contrastive-batch", "local",
       "stage vl: local (official: ITC and ITM hard negatives over each micro-batch, gathered across ranks) or "
       "global (over every sample of the optimizer step, all ranks x --accumulate micro-batches, by gradient "
       "caching: exact full-step gradient, one extra encoder forward)"},
      integer_option("image-size", "0", "image size (0: the config's)", 0, 8192),
      integer_option("max-text-len", "0", "text length (0: the --config file's, else 196 for stage text and 40 otherwise)", 0,
                     4096),
      integer_option("loader-threads", "2", "background loader threads (WebDataset: each reads its own shards)", 1, 256),
      {"resample", "false",
       "WebDataset: each rank and loader thread draws shards at random with replacement "
       "(for fewer shards than ranks x loader threads, or unequal shard sizes)",
       true},
      integer_option("seed", "1", "seed of the data order, augmentation and masking", 0)};
  for (auto& o : fault_options()) c.options.push_back(std::move(o));
  c.run = run_pretrain;
  return c;
}

}  // namespace vlmo::cli
