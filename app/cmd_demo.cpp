// vlmo demo: the built-in end-to-end run on the procedural shapes world.
#include <cstdio>

#include "cli.h"
#include "common.h"
#include "demo.h"
#include "vlmo/bench.h"
#include "vlmo/device.h"
#include "vlmo/distributed.h"
#include "vlmo/error.h"

namespace vlmo::cli {
namespace {

int run_demo_cmd(const Args& a) {
  DemoOptions o;
  o.seed = a.get_uint64("seed");
  o.out_dir = a.get("out");
  o.vocab = a.get("vocab");
  o.step_scale = a.get_double("step-scale");
  o.progress = !a.get_flag("quiet");
  o.pretrain_only = a.get_flag("pretrain-only");
  o.start_at = a.get("start-at");
  const bool auto_precision = a.get("precision") == "auto";
  // Options checked first (a bad --device or --precision); which GPU: below, once the processes are known.
  o.policy = run_policy_from(a, parse_device(a.get("device")));  // "auto": fp32 until measured below
  o.activation_checkpointing = a.get_flag("activation-checkpointing");
  o.start_weights = a.get("weights");
  if (!a.get("recipe").empty()) {
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(a.get("recipe"));
    } catch (const std::exception& e) {
      throw Error(cat("--recipe: not JSON (", e.what(), ")"));
    }
    o.recipe.apply(j);
  }
  o.group = join_distributed(a.get_double("dist-timeout"));  // torchrun --nproc_per_node N: data parallel, same global batches
  o.policy.device = training_device(a, o.group.get());
  if (auto_precision) {
    // bf16 where its matrix product pays; with several processes only if it pays on every one.
    double ratio = 0;
    bool bf16 = bf16_pays(o.policy.device, 1.5, &ratio);
    if (const Distributed* dist = o.group.get(); dist && dist->world_size() > 1) {
      std::vector<at::Tensor> votes = {at::tensor({bf16 ? 1.0 : 0.0}, at::kDouble)};
      dist->all_reduce_sum(votes);
      bf16 = votes[0].item<double>() == dist->world_size();
    }
    o.policy.precision = bf16 ? Precision::kBFloat16 : Precision::kFloat32;
    char note[160];
    std::snprintf(note, sizeof note, "auto: bf16 matrix product %.1fx the fp32 rate on %s", ratio, o.policy.device.str().c_str());
    o.precision_note = note;
    if (o.progress)
      std::fprintf(stderr, "demo: %s (%s; --precision fp32|bf16 to choose)\n", precision_name(o.policy.precision).c_str(), note);
  }
  if (o.progress) announce_run_policy(o.policy);
  run_demo(o);
  return 0;
}

}  // namespace

Command demo_command() {
  Command c;
  c.name = "demo";
  c.summary = "Run the built-in demo: a procedural world of coloured shapes with captions; pre-train a small "
              "VLMo in the three official stages (image MIM, text MLM with frozen attention, ITC+ITM+MLM), "
              "fine-tune the dual encoder for retrieval, evaluate on the held-out test split against chance, "
              "and write OUT/report.json.";
  c.usage = "vlmo demo [--seed N] [--out DIR]   (or: torchrun --no-python --nproc_per_node 2 vlmo demo ...)";
  c.options = {
      integer_option("seed", "1", "seed of the world, the initialisation and every random draw", 0),
      {"out", "demo-out", "output folder (report.json, metrics, checkpoints)"},
      {"vocab", "",
       "vocab.txt (default: the world's own: the special tokens and the BERT uncased pieces its texts use; the checkpoints record it)"},
      number_option("step-scale", "1.0", "multiply every stage's number of steps (quick checks)", 1e-6, 1e6),
      {"quiet", "false", "no progress lines", true},
      {"recipe", "",
       "JSON object overriding recipe fields, e.g. '{\"stage3_lr\":5e-4,\"layer_scale\":null}' "
       "(fields: report.json \"recipe\")"},
      {"pretrain-only", "false", "stop after pre-training and the zero-shot evaluation", true},
      device_option(),
      {"precision", "auto",
       "auto, fp32 or bf16: bf16 autocast for the blocks (auto: bf16 where a 1024^3 bf16 matrix product measures at least 1.5x fp32's, as on CPUs with AVX-512 BF16 or AMX and on recent GPUs; a timing, so the choice can differ between machines; fp32 or bf16 to fix it)"},
      attention_option(),
      checkpointing_option(),
      {"start-at", "", "experiments: begin at stage2, stage3 or finetune from --weights instead of training the stages before"},
      {"weights", "",
       "with --start-at: the checkpoint an earlier demo run wrote after the previous stage (e.g. OUT/stage2-text.safetensors)"},
      number_option("dist-timeout", "300", "several processes (torchrun): seconds to wait for another rank before failing", 1,
                    86400)};
  c.run = run_demo_cmd;
  return c;
}

}  // namespace vlmo::cli
