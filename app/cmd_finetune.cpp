// vlmo finetune: a pre-trained checkpoint fine-tuned with the official recipe of a task
// (vlmo/recipes.h) on VQAv2, NLVR2 or COCO / Flickr30K retrieval data, validated with the
// official metric on the official validation split.
#include <iostream>

#include "common.h"
#include "vlmo/device.h"
#include "vlmo/distributed.h"
#include "vlmo/downstream_data.h"
#include "vlmo/error.h"
#include "vlmo/evaluate.h"
#include "vlmo/pretrain.h"
#include "vlmo/recipes.h"

namespace vlmo::cli {
namespace {

int run_finetune(const Args& a) {
  TrainOptions t;
  t.checkpoint_path = a.get("out");
  t.metrics_path = a.get("metrics");
  prepare_training(a, t);  // outputs checked before the weights and the data are read
  const FinetuneTask task = parse_finetune_task(a.get("task"));
  const bool global_batch =
      global_contrastive_batch(a, task == FinetuneTask::kRetrievalCoco || task == FinetuneTask::kRetrievalF30k, "the retrieval tasks (coco, f30k)");
  const Recipe r = official_recipe(task, a.get("preset"));
  if (a.get_flag("with-itm") && task != FinetuneTask::kRetrievalCoco && task != FinetuneTask::kRetrievalF30k)
    throw Error(cat("--with-itm is for the retrieval tasks (coco, f30k), not ", finetune_task_name(task)));
  if (a.get("init").empty()) throw Error("--init CHECKPOINT (the pre-trained weights) is required");
  WeightsFile init = read_weights_file(a.get("init"));
  // The model: --config, else --preset if given, else the config the --init checkpoint records.
  ModelSpec spec;
  spec.config_path = a.get("config");
  if (a.given.count("preset")) spec.preset = a.get("preset");
  spec.image_size = a.get_int("image-size") > 0 ? a.get_int("image-size") : r.image_size;
  Config cfg = model_config(a.get("init"), init.metadata, spec);
  cfg.drop_path_rate = r.drop_path;
  auto tok = std::make_shared<const Tokenizer>(tokenizer_from(a, &cfg, &init.metadata));
  record_vocab(*tok, t.metadata);
  const uint64_t seed = a.get_uint64("seed");
  const int64_t batch = a.get_int64("batch-size");
  CollateOptions co;
  co.image_size = cfg.image_size;
  co.max_text_len = cfg.max_text_len;
  co.train_transform = true;  // square_transform_randaug
  t.name = std::string("finetune-") + finetune_task_name(task);
  BatchFn batches;
  ObjectiveFn objective;
  int64_t n = 0;
  if (task == FinetuneTask::kVqa) {
    // train + trainable_val for training, rest_val (the last 1000 val images) for validation.
    auto train = read_vqav2(a.get("questions"), a.get("annotations"));
    attach_coco_images(train, a.get("images"), a.get("image-split"));
    std::vector<VqaQuestion> val;
    if (!a.get("val-questions").empty()) {
      val = read_vqav2(a.get("val-questions"), a.get("val-annotations"));
      attach_coco_images(val, a.get("val-images").empty() ? a.get("images") : a.get("val-images"), a.get("val-image-split"));
    }
    VqaFinetuneData d = vqa_finetune_data(std::move(train), val, a.get("answers").empty() ? std::vector<std::string>{} : read_answer_list(a.get("answers")),
                                          a.get_int("min-answer-count"), a.get_int("rest-val-images"));
    const std::vector<std::string> answers = d.answers;
    auto examples = std::make_shared<const std::vector<VqaExample>>(std::move(d.train));
    n = static_cast<int64_t>(examples->size());
    cfg.heads = {"vqa"};
    cfg.vqav2_label_size = static_cast<int>(answers.size());
    batches = vqa_batches(examples, cfg.vqav2_label_size, tok, co, batch, seed);
    objective = vqa_objective;
    t.metadata["vqa_answers"] = nlohmann::json(answers).dump();
    if (!d.rest_val.empty())
      t.validate = [=, rest = std::move(d.rest_val)](VLMo& m) {
        return std::map<std::string, double>{{"vqa_accuracy", evaluate_vqa(m, *tok, rest, answers).accuracy}};
      };
  } else if (task == FinetuneTask::kNlvr2) {
    auto examples = std::make_shared<const std::vector<Nlvr2Example>>(read_nlvr2(a.get("train"), a.get("images"), "train"));
    n = static_cast<int64_t>(examples->size());
    cfg.heads = {"nlvr2"};
    cfg.num_token_types = 3;
    batches = nlvr2_batches(examples, tok, co, batch, seed);
    objective = nlvr2_objective;
    if (!a.get("dev").empty())
      t.validate = [=, dev = read_nlvr2(a.get("dev"), a.get("images"), "dev")](VLMo& m) {
        const Nlvr2Score s = evaluate_nlvr2(m, *tok, dev).score;
        return std::map<std::string, double>{{"nlvr2_accuracy", s.accuracy}, {"nlvr2_consistency", s.consistency}};
      };
  } else {
    const auto karpathy = read_karpathy(a.get("karpathy"), a.get("images"));
    auto pairs = std::make_shared<const std::vector<ImageText>>(karpathy_pairs(karpathy));
    n = static_cast<int64_t>(pairs->size());
    cfg.heads = {"itc", "itm"};
    batches = pair_batches(pairs, tok, co, batch, seed);
    const bool with_itm = a.get_flag("with-itm");
    objective = with_itm ? irtr_itm_objective : irtr_objective;
    if (global_batch) t.step_objective = irtr_global_step_objective(seed, with_itm);
    std::vector<KarpathyImage> val;
    for (const auto& k : karpathy)
      if (k.split == "val") val.push_back(k);
    if (!val.empty())
      t.validate = [=](VLMo& m) {
        const Recall rc = evaluate_retrieval(m, *tok, val).recall;
        return std::map<std::string, double>{{"tr_r1", rc.tr1}, {"tr_r5", rc.tr5}, {"tr_r10", rc.tr10},
                                             {"ir_r1", rc.ir1}, {"ir_r5", rc.ir5}, {"ir_r10", rc.ir10}};
      };
  }
  cfg.validate();
  VLMo model(cfg);
  init_weights(model, seed);
  const LoadReport rep = load_weights(model, std::move(init.tensors), false);
  std::cerr << "initialised from " << a.get("init") << " (missing tensors keep their fresh initialisation)\n" << rep.describe();
  model->to(training_device(a, t.group.get()));
  apply_runtime_options(a, model);
  if (r.init == "coco") std::cerr << "note: the official " << finetune_task_name(task) << " recipe starts from the COCO-fine-tuned retrieval weights\n";
  // Each optimizer step sees the recipe's batch over every process (the official divides by the
  // number of processes too); the step count is the recipe's, from that batch.
  const Distributed* dist = t.group.get();
  const int world = dist ? dist->world_size() : 1;
  const StepBatch sb = recipe_step_batch(r.batch_size, batch, world);
  if (a.get_int("accumulate") == 0 && !sb.note.empty() && (!dist || dist->rank() == 0)) std::cerr << "note: " << sb.note << "\n";
  t.accumulate = a.get_int("accumulate") > 0 ? a.get_int("accumulate") : sb.accumulate;
  t.max_steps = a.get_int64("steps") > 0 ? a.get_int64("steps") : r.total_steps(n);
  t.warmup_steps = r.warmup_steps(t.max_steps);
  t.lr = a.get_double("lr") > 0 ? a.get_double("lr") : r.lr;
  t.head_lr_mult = r.head_lr_mult;
  t.batch_size = batch;
  t.checkpoint_every = a.get_int64("checkpoint-every");
  t.validate_every = a.get_int64("val-every");
  t.loader_threads = a.get_int("loader-threads");
  t.config_json = config_to_json_text(cfg);
  std::cerr << t.name << ": " << n << " examples, " << t.max_steps << " steps of " << batch * t.accumulate * world
            << " samples (" << world << " process(es) x " << t.accumulate << " micro-batch(es) x " << batch << "), lr " << t.lr << ", image " << cfg.image_size << " px\n";
  train(model, objective, batches, t, a.get("resume"));
  return 0;
}

}  // namespace

Command finetune_command() {
  Command c{"finetune", "Fine-tune a pre-trained checkpoint with the official recipe of a task: vqa (480 px, head lr x20, soft-score BCE; train + trainable_val, validated on rest_val), nlvr2 (384 px, three token types), coco / f30k retrieval (384 px, contrastive). Position tables are resized on load.",
            "vlmo finetune --task {vqa,nlvr2,coco,f30k} --init PRETRAINED [data options] --out CKPT"};
  c.options = {{"task", "vqa", "vqa, nlvr2, coco or f30k (irtr = coco)"},
               device_option(),
               precision_option(),
               attention_option(),
               checkpointing_option(),
               {"init", "", "pre-trained checkpoint (e.g. a 224-px stage-3 checkpoint)"},
               {"preset", "base", "preset of the recipe (and of the model when --init records no config)"},
               {"config", "", "model config JSON (default: the one --init records)"},
               {"questions", "", "vqa: v2_OpenEnded_mscoco_train2014_questions.json"},
               {"annotations", "", "vqa: v2_mscoco_train2014_annotations.json"},
               {"image-split", "train2014", "vqa: COCO file-name split of --images"},
               {"val-questions", "", "vqa: val2014 questions (trainable_val trains, rest_val validates)"},
               {"val-annotations", "", "vqa: val2014 annotations"},
               {"val-images", "", "vqa: val2014 image folder (default: --images)"},
               {"val-image-split", "val2014", "vqa: COCO file-name split of the val images"},
               integer_option("rest-val-images", "1000", "vqa: val images held out as rest_val", 0),
               {"answers", "", "vqa: answer list (vlmo vqa-answers); default: built from the given annotations"},
               integer_option("min-answer-count", "9", "vqa: without --answers, answers kept in the vocabulary", 1),
               {"train", "", "nlvr2: train.json"},
               {"dev", "", "nlvr2: dev.json to validate on"},
               {"karpathy", "", "coco / f30k: dataset_coco.json / dataset_flickr30k.json (val split validates)"},
               {"images", ".", "image folder (COCO folder, NLVR2 images root, Karpathy image root)"},
               vocab_option(),
               integer_option("image-size", "0", "override the recipe's image size", 0, 8192),
               integer_option("steps", "0", "override the recipe's steps", 0),
               number_option("lr", "0", "override the recipe's learning rate", 0, 1),
               integer_option("batch-size", "16", "samples per micro-batch (accumulated to the recipe's batch)", 1, 1048576),
               integer_option("accumulate", "0", "micro-batches per step (0: the recipe's batch / --batch-size)", 0, 1048576),
               {"contrastive-batch", "local",
                "coco, f30k: local (official: the contrastive loss over each micro-batch, gathered across ranks) or global "
                "(over every sample of the optimizer step, by gradient caching: the exact full-step gradient)"},
               {"with-itm", "false",
                "coco, f30k: also train ITM with hard negatives from the dual encoder (the NeurIPS supplementary's variant, "
                "for `vlmo evaluate --rerank K`; the official recipe trains the contrastive loss only)", true},
               {"out", "finetune.safetensors", "checkpoint"},
               integer_option("checkpoint-every", "1000", "steps between checkpoints (0: only at the end)", 0),
               integer_option("val-every", "0", "steps between validations (0: only at the end)", 0),
               {"metrics", "finetune.metrics.jsonl", "JSON-lines metrics"},
               {"resume", "", "checkpoint to resume exactly"},
               integer_option("loader-threads", "2", "background loader threads", 1, 256),
               integer_option("seed", "1", "seed", 0)};
  for (auto& o : fault_options()) c.options.push_back(std::move(o));
  c.run = run_finetune;
  return c;
}

}  // namespace vlmo::cli
