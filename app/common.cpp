#include "common.h"

#include <ATen/ATen.h>

#include <cstdio>
#include <fstream>
#include <iostream>
#include <mutex>

#include "vlmo/device.h"
#include "vlmo/distributed.h"
#include "vlmo/error.h"
#include "vlmo/files.h"
#include "vlmo/image.h"
#include "vlmo/image_tensor.h"
#include "vlmo/precision.h"

namespace vlmo::cli {

std::vector<Option> model_options() {
  std::vector<Option> o = {
      {"model", "", "model: a vlmo checkpoint / converted file, or an official .pt / .ckpt (then --config or --preset)"},
      {"config", "", "model config JSON for a checkpoint that records none (official names)"},
      {"preset", "", "preset for a checkpoint that records no config: base, base_plus, large"},
      integer_option("image-size", "0", "image size to run at (position tables resized; 0: the config's)", 0, 8192),
      integer_option("max-text-len", "0", "text length (0: the config's)", 0, 4096),
      {"answers", "", "VQA answer list: JSON array of strings in label order (vlmo vqa-answers)"},
      device_option(),
      precision_option(),
      attention_option(),
      {"quantize", "none",
       "none, or int8: dynamic int8 weights for the transformer's linear layers (CPU inference; see vlmo bench)"}};
  o.push_back(vocab_option());
  return o;
}

Option device_option() { return {"device", "cpu", "where the model runs: cpu, cuda or cuda:N"}; }

Option precision_option() {
  return choice_option("precision", "fp32",
                       "fp32, bf16 or fp16: bf16 / fp16 run the transformer blocks under autocast (matrix products in "
                       "bfloat16 / float16; weights, residual stream, norms and heads in fp32). bf16 is fast on GPUs and "
                       "on CPUs with AMX / AVX512-BF16; fp16 is for GPUs without bf16 (V100, T4) and trains with "
                       "dynamic loss scaling",
                       {"fp32", "bf16", "fp16"});
}

Option attention_option() {
  return choice_option(
      "attention", "fused",
      "fused, or plain: fused attention kernels where they apply (LibTorch >= 2: scaled_dot_product_attention "
      "in training and inference, but on the CPU in fp32 training and native bf16, where the plain path with oneDNN's "
      "products measured faster; the CPU's fp32 inference kernel), or the plain product-softmax-product everywhere",
      {"fused", "plain"});
}

Option checkpointing_option() {
  return {"activation-checkpointing", "false",
          "keep only each block's input in the forward pass and recompute the block in the backward pass "
          "(less activation memory for about one more forward pass; same losses and gradients)",
          true};
}

RunPolicy run_policy_from(const Args& a, c10::Device device) {
  RunOptions o;
  o.device = device;
  if (a.declared.count("precision") && a.get("precision") != "auto") o.precision = parse_precision(a.get("precision"));
  if (a.declared.count("attention")) {
    const std::string& v = a.get("attention");
    if (v != "fused" && v != "plain") throw Error(cat("option --attention: expected fused or plain, got \"", v, "\""));
    o.attention = parse_attention_path(v);
  }
  return resolve_run_policy(o);
}

void announce_run_policy(const RunPolicy& policy) {
  static std::once_flag once;
  std::call_once(once, [&] { std::cerr << "run: " << policy.summary() << "\n"; });
}

void apply_runtime_options(const Args& a, VLMo& model) {
  const RunPolicy policy = run_policy_from(a, model->device());
  model->set_run_policy(policy);
  if (a.declared.count("precision") || a.declared.count("attention")) announce_run_policy(policy);
  if (a.declared.count("activation-checkpointing")) model->set_activation_checkpointing(a.get_flag("activation-checkpointing"));
}

bool quantize_int8_option(const Args& a) {
  const std::string& q = a.get("quantize");
  if (q != "none" && q != "int8") throw Error(cat("--quantize: expected none or int8, got \"", q, "\""));
  return q == "int8";
}

c10::Device training_device(const Args& a, const Distributed* group) {
  c10::Device d = parse_device(a.get("device"));
  if (d.is_cuda() && !d.has_index() && group && group->world_size() > 1) {
    const int gpus = static_cast<int>(at::getNumGPUs());
    d = c10::Device(c10::kCUDA, static_cast<c10::DeviceIndex>(group->info().local_rank % std::max(1, gpus)));
  }
  return d;
}

Option vocab_option() {
  return {"vocab", "", "vocab.txt (default: the vocabulary the checkpoint records, else the BERT uncased one of the set-up)"};
}

LoadedModel load_model_from(const Args& a, const std::string& path_option) {
  const std::string path = a.get(path_option);
  if (path.empty()) throw Error(cat("--", path_option, " is required (a checkpoint)"));
  ModelSpec spec;
  spec.config_path = a.get("config");
  spec.preset = a.get("preset");
  spec.image_size = a.get_int("image-size");
  spec.max_text_len = a.get_int("max-text-len");
  spec.answers_path = a.get("answers");
  // Commands that only read the weights (convert, info) declare neither --device nor --quantize.
  auto option_or = [&a](const std::string& name, const std::string& fallback) {
    return a.declared.count(name) ? a.get(name) : fallback;
  };
  const c10::Device device = parse_device(option_or("device", "cpu"));  // a bad name fails before the file is read
  run_policy_from(a, device);  // likewise a bad --precision or --attention, or one this platform cannot run
  LoadedModel m = load_model(path, spec);
  const bool int8 = a.declared.count("quantize") && quantize_int8_option(a);
  m.model->to(device);
  apply_runtime_options(a, m.model);
  if (int8) {
    m.model->eval();
    quantize_int8(m.model);
  }
  if (!m.report.unexpected.empty()) {
    std::cerr << "note: " << path << ": " << m.report.unexpected.size() << " tensors the model does not use were ignored:";
    for (size_t i = 0; i < std::min<size_t>(5, m.report.unexpected.size()); ++i) std::cerr << " " << m.report.unexpected[i];
    std::cerr << (m.report.unexpected.size() > 5 ? " ...\n" : "\n");
  }
  return m;
}

Tokenizer tokenizer_from(const Args& a, const Config* cfg, const std::map<std::string, std::string>* checkpoint_metadata) {
  Tokenizer tok = [&] {
    if (!a.get("vocab").empty()) return Tokenizer::from_file(a.get("vocab"));
    if (checkpoint_metadata)
      if (const auto it = checkpoint_metadata->find(kVocabMetadataKey); it != checkpoint_metadata->end())
        return Tokenizer::from_text(it->second, "the checkpoint's vocabulary (metadata \"vocab\")");
    return Tokenizer::from_file(Tokenizer::default_vocab_path());
  }();
  if (cfg && tok.vocab_size() != cfg->vocab_size)
    throw Error(cat(tok.source(), ": the vocabulary has ", tok.vocab_size(), " entries but the model's vocab_size is ",
                    cfg->vocab_size, " (give the model's vocab.txt with --vocab)"));
  return tok;
}

void record_vocab(const Tokenizer& tok, std::map<std::string, std::string>& metadata) {
  if (tok.source() != Tokenizer::default_vocab_path()) metadata[kVocabMetadataKey] = tok.vocab_text();
}

Tokenizer tokenizer_for(const Args& a, const LoadedModel& m) { return tokenizer_from(a, &m.model->config(), &m.metadata); }

std::vector<Option> fault_options() {
  return {integer_option("max-bad-steps", "5",
                         "steps in a row with a non-finite loss or gradient (each skipped) that stop the run", 1),
          number_option("max-skip-rate", "0.5",
                        "stop when more than this fraction of the last --skip-window samples were unusable", 0, 1),
          integer_option("skip-window", "1000", "samples over which the skip rate is judged", 1),
          number_option("dist-timeout", "300", "several processes (torchrun): seconds to wait for another rank before failing", 1,
                        86400)};
}

void prepare_training(const Args& a, TrainOptions& t) {
  t.checkpoint_path = a.get("out");
  t.metrics_path = a.get("metrics");
  if (!t.checkpoint_path.empty()) check_output_path(t.checkpoint_path, "checkpoint (--out)");
  if (!t.metrics_path.empty()) check_output_path(t.metrics_path, "metrics file (--metrics)");
  t.max_bad_steps = a.get_int("max-bad-steps");
  t.max_skip_rate = a.get_double("max-skip-rate");
  t.skip_window = a.get_int64("skip-window");
  install_stop_handlers();
  t.group = join_distributed(a.get_double("dist-timeout"));
}

bool global_contrastive_batch(const Args& a, bool applies, const std::string& where) {
  const std::string mode = a.get("contrastive-batch");
  if (mode != "local" && mode != "global") throw Error(cat("--contrastive-batch: expected local or global, got \"", mode, "\""));
  if (mode == "global" && !applies) throw Error(cat("--contrastive-batch global applies to ", where, " only"));
  return mode == "global";
}

std::shared_ptr<Distributed> join_distributed(double timeout_s) {
  const LaunchInfo info = launch_info_from_env();
  if (info.world_size <= 1) return nullptr;
  auto group = Distributed::init(info, std::chrono::milliseconds(static_cast<int64_t>(timeout_s * 1000)));
  if (info.rank == 0)
    std::fprintf(stderr, "distributed: %d processes (%s, %s), rendezvous %s:%d; global batch = batch x accumulate x %d\n",
                 info.world_size, info.launcher.c_str(), info.backend == "nccl" ? "NCCL" : "Gloo", info.master_addr.c_str(),
                 info.master_port, info.world_size);
  return group;
}

}  // namespace vlmo::cli
