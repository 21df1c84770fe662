// What several commands share: the option groups that load a model and a tokenizer, and the
// batched answering of JSON-lines requests (in input order, a bad line reported with its number
// while the others are still answered).
#pragma once
#include <ATen/Tensor.h>

#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <utility>
#include <vector>

#include "cli.h"
#include "serve/answerers.h"
#include "vlmo/checkpoint.h"
#include "vlmo/tokenizer.h"
#include "vlmo/train.h"

namespace vlmo::cli {

// The inference tasks (prepare / run) that the commands share with the server.
using namespace vlmo::serve;

// --model, --config, --preset, --image-size, --max-text-len, --answers, --vocab: a vlmo
// checkpoint, or an official .pt / .ckpt with --config or --preset (and --answers for VQA).
std::vector<Option> model_options();
Option vocab_option();
// --device: cpu, cuda or cuda:N (parse_device checks it).
Option device_option();
// --precision: fp32, or bf16 (the transformer blocks under bf16 autocast).
Option precision_option();
// --attention: fused (the default) or plain.
Option attention_option();
// --activation-checkpointing (training commands): recompute each block in the backward pass.
Option checkpointing_option();
// The run policy (vlmo/run_policy.h) of a model on `device` from --precision and --attention
// (those the command declares; a --precision of "auto" is left to the command), the environment's
// documented overrides and the platform. Errors name the option or variable.
RunPolicy run_policy_from(const Args& a, c10::Device device);
// Prints "run: <the policy>" to stderr, once per process.
void announce_run_policy(const RunPolicy& policy);
// Sets the model's run-time settings from the options above (those the command declares): its
// run policy (announced) and activation checkpointing.
void apply_runtime_options(const Args& a, VLMo& model);
// The --device of a training command; plain "cuda" with a `group` of several processes means
// cuda:LOCAL_RANK.
c10::Device training_device(const Args& a, const Distributed* group);
// --quantize: true for int8, false for none; anything else is an error naming the option.
bool quantize_int8_option(const Args& a);
// The model those options name (the file of option `path_option`: --model unless another, as
// evaluate's --rerank-model); unexpected tensors of the file are listed on stderr.
LoadedModel load_model_from(const Args& a, const std::string& path_option = "model");
// The tokenizer: --vocab, else the vocabulary a checkpoint records in its metadata ("vocab", as
// the demo's models do), else BERT uncased; with a config, its size must match vocab_size.
Tokenizer tokenizer_from(const Args& a, const Config* cfg = nullptr,
                         const std::map<std::string, std::string>* checkpoint_metadata = nullptr);
// Records the tokenizer's vocabulary in a checkpoint's metadata when it is not the default one,
// so that the commands that later load the checkpoint tokenize with it.
void record_vocab(const Tokenizer& tok, std::map<std::string, std::string>& metadata);
// tokenizer_from for a loaded model: its config and its checkpoint's vocabulary.
Tokenizer tokenizer_for(const Args& a, const LoadedModel& m);

// Exit status of a batch in which some requests failed (the others were answered).
constexpr int kSomeRequestsFailed = 3;

// One request: a JSON-lines line of --input, or the one the command's flags make (line 0).
struct Request {
  size_t line = 0;
  nlohmann::json value;
  std::string error;  // why it cannot be answered; empty when fine
};
// --input FILE.jsonl (each line an object with the string `fields`), else the flags named by
// `fields`. Bad lines become requests with an error; an empty file is an error.
std::vector<Request> read_requests(const Args& a, const std::vector<std::string>& fields);

// --batch-size requests at a time through `run`; prints each result (--json: the request plus
// the fields, one line each) in input order. Returns 0, or kSomeRequestsFailed when a line
// failed (printed as {"line", "error"} with --json, and on stderr). A failing single request
// (no --input) throws.
int answer_requests(const Args& a, std::vector<Request> requests, const PrepareFn& prepare, const RunFn& run);
// The task's requests (read_requests with its fields) through answer_requests.
int answer_requests(const Args& a, const Task& task);
// Options of the training commands for faults: --max-bad-steps, --max-skip-rate, --skip-window.
std::vector<Option> fault_options();
// Before any work of a training command: sets `t`'s checkpoint and metrics paths from --out and
// --metrics and checks that they can be written (a missing folder is found now, not after the
// training), copies the fault options into `t`,
// installs the SIGINT / SIGTERM handlers (checkpoint at the next step boundary, then exit 130 /
// 143; a second signal exits at once) and joins the processes a launcher started (t.group).
void prepare_training(const Args& a, TrainOptions& t);
// The c10d group of the processes a launcher started (torchrun, srun, mpirun), joined now; a
// collective waits at most `timeout_s` for another rank. nullptr on a single process. The
// command keeps it for its run and passes it to whatever trains (TrainOptions::group).
std::shared_ptr<Distributed> join_distributed(double timeout_s);
// --contrastive-batch: true for "global", false for "local"; "global" where `applies` is false
// is an error that says where it applies (`where`).
bool global_contrastive_batch(const Args& a, bool applies, const std::string& where);

// --input, --batch-size, --json.
std::vector<Option> request_options();

}  // namespace vlmo::cli
