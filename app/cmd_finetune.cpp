// vlmo finetune: a pre-trained checkpoint fine-tuned with the official recipe of a task
// (vlmo/recipes.h) on VQAv2, NLVR2 or COCO / Flickr30K retrieval data, validated with the
// official metric on the official validation split. The library assembles it (vlmo/finetune.h).
#include <iostream>

#include "common.h"
#include "vlmo/error.h"
#include "vlmo/finetune.h"

namespace vlmo::cli {
namespace {

FinetuneSpec finetune_spec(const Args& a) {
  FinetuneSpec s;
  s.task = parse_finetune_task(a.get("task"));
  s.global_batch = global_contrastive_batch(a, is_retrieval(s.task), "the retrieval tasks (coco, f30k)");
  s.recipe = official_recipe(s.task, a.get("preset"));
  s.with_itm = a.get_flag("with-itm");
  if (s.with_itm && !is_retrieval(s.task))
    throw Error(cat("--with-itm is for the retrieval tasks (coco, f30k), not ", finetune_task_name(s.task)));
  s.init = a.get("init");
  if (s.init.empty()) throw Error("--init CHECKPOINT (the pre-trained weights) is required");
  // The model: --config, else --preset if given, else the config the --init checkpoint records.
  s.model = {a.get("config"), a.given.count("preset") ? a.get("preset") : "", a.get_int("image-size")};
  FinetuneFiles& f = s.files;
  f.images = a.get("images");
  f.questions = a.get("questions"), f.annotations = a.get("annotations"), f.image_split = a.get("image-split");
  f.val_questions = a.get("val-questions"), f.val_annotations = a.get("val-annotations"), f.val_images = a.get("val-images");
  f.val_image_split = a.get("val-image-split"), f.rest_val_images = a.get_int("rest-val-images");
  f.answers = a.get("answers"), f.min_answer_count = a.get_int("min-answer-count");
  f.nlvr2_train = a.get("train"), f.nlvr2_dev = a.get("dev"), f.karpathy = a.get("karpathy");
  s.batch = a.get_int64("batch-size"), s.seed = a.get_uint64("seed");
  s.steps = a.get_int64("steps"), s.lr = a.get_double("lr"), s.accumulate = a.get_int("accumulate");
  return s;
}

int run_finetune(const Args& a) {
  TrainOptions t;
  prepare_training(a, t);  // outputs checked before the weights and the data are read
  const FinetuneSpec s = finetune_spec(a);
  FinetuneStart start = read_finetune_start(s);
  auto tok = std::make_shared<const Tokenizer>(tokenizer_from(a, &start.config, &start.weights.metadata));
  record_vocab(*tok, t.metadata);
  Finetuning f = prepare_finetuning(s, std::move(start), tok, t);
  std::cerr << "initialised from " << s.init << " (missing tensors keep their fresh initialisation)\n" << f.loaded.describe();
  f.model->to(training_device(a, t.group.get()));
  apply_runtime_options(a, f.model);
  if (s.recipe.init == "coco")
    std::cerr << "note: the official " << finetune_task_name(s.task)
              << " recipe starts from the COCO-fine-tuned retrieval weights\n";
  t.checkpoint_every = a.get_int64("checkpoint-every"), t.validate_every = a.get_int64("val-every"),
  t.loader_threads = a.get_int("loader-threads");
  if (!t.group || t.group->rank() == 0) {
    if (!f.length.step.note.empty()) std::cerr << "note: " << f.length.step.note << "\n";
    std::cerr << t.name << ": " << f.plan.train.examples << " examples; " << f.length.describe() << "; lr " << t.lr << ", image "
              << f.config.image_size << " px\n";
  }
  train(f.model, f.plan.objective, f.plan.train.batches, t, a.get("resume"));
  return 0;
}

}  // namespace

Command finetune_command() {
  Command c{
      "finetune",
      "Fine-tune a pre-trained checkpoint with the official recipe of a task: vqa (480 px, head lr x20, soft-score BCE; train + trainable_val, validated on rest_val), nlvr2 (384 px, three token types), coco / f30k retrieval (384 px, contrastive). Position tables are resized on load.",
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
                "for `vlmo evaluate --rerank K`; the official recipe trains the contrastive loss only)",
                true},
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
