// The training loop, top to bottom: batches come from a prefetching pool of loader threads,
// each optimizer step accumulates micro-batches, steps AdamW on the schedule, logs, and
// checkpoints atomically. Resumption restores weights, optimizer moments, the step (hence the
// schedule and the data position) and the torch RNG, so a resumed run repeats the losses exactly.
#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <condition_variable>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <deque>
#include <exception>
#include <fstream>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <thread>

#include "vlmo/checkpoint.h"
#include "vlmo/distributed.h"
#include "vlmo/error.h"
#include "vlmo/files.h"
#include "vlmo/train.h"

namespace vlmo {

bool official_no_decay(const std::string& name) {
  for (const char* s : {"bias", "LayerNorm.bias", "LayerNorm.weight", "norm.bias", "norm.weight", "norm1.bias", "norm1.weight",
                        "norm2.bias", "norm2.weight"})
    if (name.find(s) != std::string::npos) return true;
  return false;
}

bool is_task_head(const std::string& name) {
  return name.find("vqa_classifier") != std::string::npos || name.find("nlvr2_classifier") != std::string::npos;
}

double learning_rate(int64_t step, int64_t total, int64_t warmup, double peak) {
  if (step < warmup) return peak * static_cast<double>(step) / std::max<int64_t>(1, warmup);
  if (step >= total) return 0.0;
  return peak * static_cast<double>(total - step) / std::max<int64_t>(1, total - warmup);
}

bool takes_head_lr(const std::string& name, const std::vector<std::string>& heads) {
  if (heads.empty()) return is_task_head(name);
  for (const auto& h : heads)
    if (name.rfind(h, 0) == 0) return true;
  return false;
}

AdamW::AdamW(torch::nn::Module& model, double weight_decay, double head_lr_mult, const std::vector<std::string>& heads,
             double beta1, double beta2, double eps)
    : beta1_(beta1), beta2_(beta2), eps_(eps) {
  for (const auto& p : model.named_parameters()) {
    if (!p.value().requires_grad()) continue;
    params_.push_back({p.key(), p.value(), at::zeros_like(p.value()), at::zeros_like(p.value()),
                       official_no_decay(p.key()) ? 0.0 : weight_decay, takes_head_lr(p.key(), heads) ? head_lr_mult : 1.0});
  }
}

void AdamW::zero_grad() {
  for (auto& q : params_)
    if (q.p.grad().defined()) q.p.mutable_grad() = at::Tensor();
}

bool AdamW::gradients_finite() const {
  at::NoGradGuard guard;
  std::vector<at::Tensor> flags;
  for (const auto& q : params_)
    if (q.p.grad().defined()) flags.push_back(at::isfinite(q.p.grad()).all().reshape({1}));
  return flags.empty() || at::cat(flags).all().item<bool>();
}

void AdamW::scale_gradients(double factor) {
  at::NoGradGuard guard;
  std::vector<at::Tensor> g;
  for (auto& q : params_)
    if (q.p.grad().defined()) g.push_back(q.p.grad());
  if (!g.empty()) at::_foreach_mul_(g, factor);
}

void LossScaler::update(bool overflow) {
  if (overflow) {
    scale *= backoff_factor;
    good_steps = 0;
  } else if (++good_steps >= growth_interval) {
    scale *= growth_factor;
    good_steps = 0;
  }
}

namespace {
thread_local double active_loss_scale = 1.0;
}  // namespace

double current_loss_scale() { return active_loss_scale; }
LossScaleScope::LossScaleScope(double scale) : previous_(active_loss_scale) { active_loss_scale = scale; }
LossScaleScope::~LossScaleScope() { active_loss_scale = previous_; }

void AdamW::step(double lr) {
  at::NoGradGuard guard;
  ++steps_;
  const double bc1 = 1 - std::pow(beta1_, static_cast<double>(steps_));
  const double bc2 = 1 - std::pow(beta2_, static_cast<double>(steps_));
  // Multi-tensor (foreach) form: one call per operation over every parameter with a gradient
  // (one fused kernel launch per operation and dtype on CUDA; a loop on the CPU). Per element
  // the same operations in the same order as the per-tensor form:
  //   p *= 1 - lr*wd;  m = b1*m + (1-b1)*g;  v = b2*v + (1-b2)*g*g;  p -= lr/bc1 * m / (sqrt(v/bc2) + eps)
  std::vector<at::Tensor> p, g, m, v;
  std::vector<at::Scalar> decay, step_size;
  for (auto& q : params_) {
    if (!q.p.grad().defined()) continue;  // frozen by use (no gradient this step): untouched, as torch
    const double plr = lr * q.lr_mult;
    p.push_back(q.p), g.push_back(q.p.grad()), m.push_back(q.exp_avg), v.push_back(q.exp_avg_sq);
    decay.emplace_back(1 - plr * q.weight_decay);
    step_size.emplace_back(-plr / bc1);
  }
  if (p.empty()) return;
  at::_foreach_mul_(p, at::ArrayRef<at::Scalar>(decay));
  at::_foreach_mul_(m, beta1_);
  at::_foreach_add_(m, g, 1 - beta1_);
  at::_foreach_mul_(v, beta2_);
  at::_foreach_addcmul_(v, g, g, 1 - beta2_);
  std::vector<at::Tensor> denom = at::_foreach_div(v, bc2);
  at::_foreach_sqrt_(denom);
  at::_foreach_add_(denom, eps_);
  at::_foreach_addcdiv_(p, m, denom, at::ArrayRef<at::Scalar>(step_size));
}

TensorMap AdamW::state() const {
  TensorMap out;
  for (const auto& q : params_) {
    out["exp_avg." + q.name] = q.exp_avg;
    out["exp_avg_sq." + q.name] = q.exp_avg_sq;
  }
  return out;
}

void AdamW::load_state(const TensorMap& state, int64_t steps) {
  at::NoGradGuard guard;
  for (auto& q : params_) {
    auto a = state.find("exp_avg." + q.name), b = state.find("exp_avg_sq." + q.name);
    if (a == state.end() || b == state.end()) throw Error(cat("checkpoint has no optimizer state for \"", q.name, "\""));
    q.exp_avg.copy_(a->second);
    q.exp_avg_sq.copy_(b->second);
  }
  steps_ = steps;
}

void save_checkpoint(const std::string& path, VLMo& model, const AdamW& opt, int64_t step, const std::string& config_json,
                     const std::string& stage, const std::map<std::string, std::string>& extra) {
  TensorMap all;
  for (const auto& [k, v] : model_state_dict(*model)) all["model." + k] = v;
  for (const auto& [k, v] : opt.state()) all["optim." + k] = v;
  {
    auto gen = at::detail::getDefaultCPUGenerator();
    std::lock_guard<std::mutex> lock(gen.mutex());
    all["rng.torch"] = gen.get_state();
  }
  std::map<std::string, std::string> meta = extra;
  meta["format"] = "vlmo-train-checkpoint";
  meta["step"] = std::to_string(step);
  meta["optimizer_steps"] = std::to_string(opt.steps());
  meta["stage"] = stage;
  meta["config"] = config_json;
  write_safetensors(path, all, meta);
}

namespace {

// Builds batches index, index+1, ... on background threads, at most `depth` ahead.
class Prefetcher {
 public:
  Prefetcher(const BatchFn& fn, int64_t first, int threads, int depth) : fn_(fn), next_(first), depth_(std::max(1, depth)) {
    for (int w = 0; w < std::max(1, threads); ++w)
      workers_.emplace_back([this, first, w, threads] { run(first + w, std::max(1, threads)); });
  }
  ~Prefetcher() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    for (auto& t : workers_) t.join();
  }
  Batch next(double* waited) {
    const auto t0 = std::chrono::steady_clock::now();
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait(lock, [&] { return ready_.count(next_) || error_; });
    if (error_ && !ready_.count(next_)) std::rethrow_exception(error_);
    Batch b = std::move(ready_[next_]);
    ready_.erase(next_++);
    lock.unlock();
    cv_.notify_all();
    *waited = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    return b;
  }

 private:
  void run(int64_t index, int stride) {
    for (;; index += stride) {
      {
        std::unique_lock<std::mutex> lock(mu_);
        cv_.wait(lock, [&] { return stop_ || index - next_ < depth_; });
        if (stop_) return;
      }
      try {
        Batch b = fn_(index);
        std::lock_guard<std::mutex> lock(mu_);
        ready_[index] = std::move(b);
      } catch (...) {
        std::lock_guard<std::mutex> lock(mu_);
        error_ = std::current_exception();
        cv_.notify_all();
        return;
      }
      cv_.notify_all();
    }
  }
  const BatchFn& fn_;
  int64_t next_;
  int64_t depth_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::map<int64_t, Batch> ready_;
  std::exception_ptr error_;
  bool stop_ = false;
  std::vector<std::thread> workers_;
};

std::string duration(double s) {
  char buf[32];
  if (s >= 3600) std::snprintf(buf, sizeof buf, "%dh%02dm", static_cast<int>(s / 3600), static_cast<int>(s / 60) % 60);
  else std::snprintf(buf, sizeof buf, "%dm%02ds", static_cast<int>(s / 60), static_cast<int>(s) % 60);
  return buf;
}

}  // namespace

namespace {

// On resume: drops this stage's metrics lines past the checkpoint's step (and a line torn by a
// kill), so each step appears once. Other stages' lines are kept. Rewritten atomically.
void truncate_metrics(const std::string& path, const std::string& stage, int64_t step) {
  std::ifstream in(path);
  if (!in) return;  // nothing written yet
  std::string line, kept;
  int64_t dropped = 0;
  while (std::getline(in, line)) {
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(line);
    } catch (const std::exception&) {
      ++dropped;  // torn by a kill mid-write
      continue;
    }
    if (j.is_object() && j.value("stage", "") == stage && j.contains("step") && j["step"].is_number() &&
        j["step"].get<double>() > static_cast<double>(step)) {
      ++dropped;
      continue;
    }
    kept += line + "\n";
  }
  if (dropped > 0) write_file_atomic(path, kept);
}

// Samples read and skipped over the most recent `window` samples.
class SkipWindow {
 public:
  explicit SkipWindow(int64_t window) : window_(std::max<int64_t>(1, window)) {}
  void add(int64_t read, int64_t skipped) {
    parts_.push_back({read, skipped});
    read_ += read;
    skipped_ += skipped;
    while (parts_.size() > 1 && read_ - parts_.front().first >= window_) {
      read_ -= parts_.front().first;
      skipped_ -= parts_.front().second;
      parts_.pop_front();
    }
  }
  bool full() const { return read_ >= window_; }
  double rate() const { return read_ ? static_cast<double>(skipped_) / static_cast<double>(read_) : 0.0; }
  int64_t read() const { return read_; }
  int64_t skipped() const { return skipped_; }

 private:
  int64_t window_;
  std::deque<std::pair<int64_t, int64_t>> parts_;
  int64_t read_ = 0, skipped_ = 0;
};

// Keys ending in "loss" are summed and optimised; the others are only logged.
bool is_loss_key(const std::string& k) { return k.size() >= 4 && k.compare(k.size() - 4, 4, "loss") == 0; }

std::string skip_counts_json(const std::map<std::string, int64_t>& m) { return nlohmann::json(m).dump(); }

}  // namespace

namespace {

void check_options(const TrainOptions& o) {
  if (o.max_steps < 1) throw Error(cat("training needs at least 1 step, got ", o.max_steps));
  if (o.accumulate < 1) throw Error(cat("accumulate must be at least 1, got ", o.accumulate));
  if (o.batch_size < 1) throw Error(cat("batch size must be at least 1, got ", o.batch_size));
  if (o.lr < 0 || !std::isfinite(o.lr)) throw Error(cat("learning rate must be finite and >= 0, got ", o.lr));
  if (o.warmup_steps < 0 || o.checkpoint_every < 0) throw Error("warm-up and checkpoint interval must be >= 0");
}

// Outputs: checked and locked before any work, stale temporaries of killed runs removed.
std::vector<std::unique_ptr<FileLock>> lock_outputs(const TrainOptions& o) {
  std::vector<std::unique_ptr<FileLock>> locks;
  if (!o.checkpoint_path.empty()) {
    check_output_path(o.checkpoint_path, "checkpoint");
    locks.push_back(std::make_unique<FileLock>(o.checkpoint_path, "the checkpoint"));
    const int removed = remove_stale_temporaries(o.checkpoint_path);
    if (removed > 0 && o.progress)
      std::fprintf(stderr, "[%s] removed %d temporary file(s) left by a killed run\n", o.name.c_str(), removed);
  }
  if (!o.metrics_path.empty()) {
    check_output_path(o.metrics_path, "metrics file");
    if (o.metrics_path != o.checkpoint_path) locks.push_back(std::make_unique<FileLock>(o.metrics_path, "the metrics file"));
    remove_stale_temporaries(o.metrics_path);
  }
  return locks;
}

// What one optimizer step produced: the logged values, why it is skipped ("" when it is not;
// `overflow` for an fp16 overflow), the samples skipped by the loader and the time spent waiting
// for data.
struct StepRecord {
  std::map<std::string, double> logged;
  std::map<std::string, int64_t> skipped_now;
  std::string bad, overflow;
  double data_time = 0, loss_scale = 1, lr = 0, seconds = 0;
};

// One training run: the loop of train() with its parts as named steps.
class TrainingRun {
 public:
  TrainingRun(VLMo& model, const ObjectiveFn& objective, const BatchFn& batches_in, const TrainOptions& options)
      : model_(model), objective_(objective), o_(options) {
    // Data parallel (vlmo/distributed.h): rank r trains on micro-batches r, r + W, r + 2W, ... of
    // the map-style source; gradients are averaged over ranks before each update; only rank 0
    // writes checkpoints, metrics and progress; the step's metrics are means over ranks.
    dist_ = o_.group.get();
    multi_ = dist_ && dist_->world_size() > 1;
    world_ = multi_ ? dist_->world_size() : 1;
    rank_ = multi_ ? dist_->rank() : 0;
    if (rank_ != 0) {
      o_.checkpoint_path.clear();
      o_.metrics_path.clear();
      o_.progress = false;
    }
    batches_ = multi_ ? BatchFn([batches_in, w = world_, r = rank_](int64_t i) { return batches_in(i * w + r); }) : batches_in;
    check_options(o_);
    locks_ = lock_outputs(o_);
    optim_ = std::make_unique<AdamW>(*model_, o_.weight_decay, o_.head_lr_mult, o_.head_prefixes);
    scaling_ = o_.loss_scaling.value_or(model_->precision() == Precision::kFloat16);
    scaler_ = o_.loss_scaler;
    tty_ = o_.progress && ::isatty(2);
  }

  TrainResult run(const std::string& resume_from) {
    if (!resume_from.empty()) resume(resume_from);
    if (multi_) dist_->broadcast_model(model_);  // the same start on every rank (fresh or resumed)
    model_->train();
    open_metrics();
    const auto t_begin = std::chrono::steady_clock::now();
    Prefetcher loader(batches_, start_ * o_.accumulate, o_.loader_threads, o_.prefetch);
    loader_ = &loader;
    for (int64_t step = start_; step < o_.max_steps; ++step)
      if (!run_step(step)) break;
    result_.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t_begin).count();
    result_.loss_scaler = scaler_;
    return result_;
  }

 private:
  void resume(const std::string& resume_from);
  void open_metrics();
  void write_metrics(const nlohmann::json& j);
  void save(int64_t steps_done);
  bool run_step(int64_t step);  // false: stop here (--stop-after)
  void forward_backward(int64_t step, StepRecord& r);
  void step_objective(StepRecord& r, std::vector<Batch>& step_batches);
  void reduce_across_ranks(StepRecord& r);
  void update(int64_t step, StepRecord& r);
  void record(int64_t step, const StepRecord& r);
  void check_limits(int64_t step, const StepRecord& r);
  void show_progress(int64_t step, const StepRecord& r);
  void maybe_validate(int64_t step);
  int stop_signal();

  VLMo& model_;
  const ObjectiveFn& objective_;
  TrainOptions o_;
  const Distributed* dist_ = nullptr;  // o_.group's
  bool multi_ = false, scaling_ = false, tty_ = false;
  int world_ = 1, rank_ = 0;
  BatchFn batches_;
  std::vector<std::unique_ptr<FileLock>> locks_;
  std::unique_ptr<AdamW> optim_;
  LossScaler scaler_;
  TrainResult result_;
  int64_t start_ = 0;
  std::ofstream metrics_;
  Prefetcher* loader_ = nullptr;
  double window_time_ = 0, window_data_ = 0;
  int64_t window_steps_ = 0;
  int consecutive_bad_ = 0;
  std::unique_ptr<SkipWindow> skips_ = std::make_unique<SkipWindow>(o_.skip_window);
};

void TrainingRun::resume(const std::string& resume_from) {
  SafetensorsFile ck = read_safetensors(resume_from);
  if (ck.metadata["format"] != "vlmo-train-checkpoint")
    throw Error(cat(resume_from, ": not a training checkpoint (no optimizer state to resume from)"));
  TensorMap weights, state;
  for (auto& [k, v] : ck.tensors) {
    if (k.rfind("model.", 0) == 0) weights[k.substr(6)] = v;
    else if (k.rfind("optim.", 0) == 0) state[k.substr(6)] = v;
  }
  load_weights(model_, weights, /*strict=*/true);
  try {
    start_ = std::stoll(ck.metadata["step"]);
    const auto os = ck.metadata.find("optimizer_steps");
    optim_->load_state(state, os == ck.metadata.end() ? start_ : std::stoll(os->second));
    if (ck.metadata.count("skipped"))
      result_.skipped = nlohmann::json::parse(ck.metadata["skipped"]).get<std::map<std::string, int64_t>>();
    if (ck.metadata.count("bad_steps")) result_.bad_steps = std::stoll(ck.metadata["bad_steps"]);
    if (ck.metadata.count("overflow_steps")) result_.overflow_steps = std::stoll(ck.metadata["overflow_steps"]);
    if (ck.metadata.count("loss_scale")) {
      scaler_.scale = std::stod(ck.metadata["loss_scale"]);
      scaler_.good_steps = std::stoll(ck.metadata.at("loss_scale_good_steps"));
      if (!(scaler_.scale > 0) || !std::isfinite(scaler_.scale) || scaler_.good_steps < 0)
        throw Error(cat("loss_scale ", ck.metadata["loss_scale"], " / good steps ", scaler_.good_steps, " out of range"));
    }
  } catch (const Error&) {
    throw;
  } catch (const std::exception& e) {
    throw Error(cat(resume_from, ": corrupt checkpoint metadata (", e.what(), ")"));
  }
  if (start_ < 0 || start_ > o_.max_steps)
    throw Error(cat(resume_from, ": checkpoint is at step ", start_, ", outside this run's 0..", o_.max_steps, " steps"));
  auto it = ck.tensors.find("rng.torch");
  if (it != ck.tensors.end()) {
    auto gen = at::detail::getDefaultCPUGenerator();
    std::lock_guard<std::mutex> lock(gen.mutex());
    gen.set_state(it->second);
  }
}

void TrainingRun::open_metrics() {
  if (o_.metrics_path.empty()) return;
  if (start_ > 0) truncate_metrics(o_.metrics_path, o_.name, start_);
  metrics_.open(o_.metrics_path, start_ > 0 ? std::ios::app : std::ios::trunc);
  if (!metrics_) throw Error(cat(o_.metrics_path, ": cannot write metrics (", std::strerror(errno), ")"));
}

void TrainingRun::write_metrics(const nlohmann::json& j) {
  if (!metrics_.is_open()) return;
  metrics_ << j.dump() << "\n";
  flush_checked(metrics_, o_.metrics_path);
}

void TrainingRun::save(int64_t steps_done) {
  {  // never replace a good checkpoint with broken weights
    at::NoGradGuard guard;
    for (const auto& p : model_->named_parameters())
      if (!at::isfinite(p.value()).all().item<bool>())
        throw Error(cat("stopping: parameter ", p.key(), " is not finite after step ", steps_done, "; the last checkpoint ",
                        o_.checkpoint_path, " was left as it was"));
  }
  std::map<std::string, std::string> meta = o_.metadata;
  meta["skipped"] = skip_counts_json(result_.skipped);
  meta["bad_steps"] = std::to_string(result_.bad_steps);
  if (scaling_) {
    meta["overflow_steps"] = std::to_string(result_.overflow_steps);
    meta["loss_scale"] = cat(scaler_.scale);
    meta["loss_scale_good_steps"] = std::to_string(scaler_.good_steps);
  }
  save_checkpoint(o_.checkpoint_path, model_, *optim_, steps_done, o_.config_json, o_.name, meta);
}

bool TrainingRun::run_step(int64_t step) {
  const auto t0 = std::chrono::steady_clock::now();
  optim_->zero_grad();
  StepRecord r;
  r.loss_scale = scaling_ ? scaler_.scale : 1.0;
  const LossScaleScope scale_scope(r.loss_scale);
  forward_backward(step, r);
  if (o_.after_backward) o_.after_backward(step, model_);
  if (multi_) reduce_across_ranks(r);
  update(step, r);
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  record(step, r);
  check_limits(step, r);
  show_progress(step, r);
  maybe_validate(step);
  const int signal = stop_signal();
  const bool last = step + 1 == o_.max_steps;
  const bool stop_now = o_.stop_after > 0 && step + 1 - start_ >= o_.stop_after;
  if (!o_.checkpoint_path.empty() &&
      (last || stop_now || signal || (o_.checkpoint_every > 0 && (step + 1) % o_.checkpoint_every == 0)))
    save(step + 1);
  result_.steps = step + 1;
  if (signal && !last) {
    if (tty_) std::fprintf(stderr, "\n");
    write_metrics({{"step", step + 1}, {"stage", o_.name}, {"event", "interrupted"}, {"signal", signal}});
    throw Interrupted(signal, step + 1, o_.checkpoint_path);
  }
  return !stop_now;
}

// The step's micro-batches: each through the objective and backward (or, with a whole-step
// objective, collected and run together).
void TrainingRun::forward_backward(int64_t step, StepRecord& r) {
  std::vector<Batch> step_batches;  // the step's micro-batches, for a whole-step objective
  for (int micro = 0; micro < o_.accumulate; ++micro) {
    double waited = 0;
    Batch b = loader_->next(&waited);  // every micro-batch is consumed, so the data position stays exact
    r.data_time += waited;
    b.first_sample = ((step * o_.accumulate + micro) * world_ + rank_) * o_.batch_size;
    b = to_device(b, model_->device());  // the loader builds batches on the host
    int64_t skipped_here = 0;
    for (const auto& [reason, n] : b.skipped) r.skipped_now[reason] += n, skipped_here += n;
    for (const auto& line : b.skip_log)
      std::fprintf(stderr, "%s[%s] skipped sample: %s\n", tty_ ? "\r\033[K" : "", o_.name.c_str(), line.c_str());
    const int64_t rows = b.text_ids.defined() ? b.text_ids.size(0) : b.image.defined() ? b.image.size(0) : o_.batch_size;
    skips_->add(rows + skipped_here, skipped_here);
    if (o_.step_objective) {
      step_batches.push_back(std::move(b));
      continue;
    }
    // After a bad micro-batch one process skips the rest of the step; with several ranks the
    // objective still runs (without backward), so that its collectives match the other ranks'.
    if (!r.bad.empty() && !multi_) continue;
    Outputs out;
    try {
      out = objective_(model_, b, dist_);
    } catch (const NonFiniteError& e) {
      if (r.bad.empty()) r.bad = cat("non-finite values (", e.what(), ")");
      continue;
    }
    if (!r.bad.empty()) continue;
    at::Tensor total;
    for (const auto& [k, v] : out) {
      if (is_loss_key(k)) total = total.defined() ? total + v : v;
      r.logged[k] += v.item<double>() / o_.accumulate;
    }
    if (!total.defined()) throw Error("objective returned no loss");
    const double value = total.item<double>();
    r.logged["loss"] += value / o_.accumulate;
    if (!std::isfinite(value)) {
      r.bad = cat("non-finite loss (", value, ")");
      continue;
    }
    ((scaling_ ? total * r.loss_scale : total) / o_.accumulate).backward();
  }
  if (o_.step_objective) step_objective(r, step_batches);
}

void TrainingRun::step_objective(StepRecord& r, std::vector<Batch>& step_batches) {
  try {
    const Outputs out = o_.step_objective(model_, step_batches, dist_);
    double total = 0;
    for (const auto& [k, v] : out) {
      const double value = v.item<double>();
      r.logged[k] = value;
      if (is_loss_key(k)) total += value;
    }
    r.logged["loss"] = total;
    if (!std::isfinite(total)) r.bad = cat("non-finite loss (", total, ")");
  } catch (const NonFiniteError& e) {
    r.bad = cat("non-finite values (", e.what(), ")");
  }
}

// Every rank skips or steps together; then the gradient mean and the metrics' means.
void TrainingRun::reduce_across_ranks(StepRecord& r) {
  std::vector<at::Tensor> flag = {at::tensor({r.bad.empty() ? 0.0 : 1.0}, at::kDouble)};
  dist_->all_reduce_sum(flag);
  if (r.bad.empty() && flag[0].item<double>() > 0) r.bad = "a non-finite loss on another rank";
  if (flag[0].item<double>() != 0) return;  // (a skipping rank may lack some metrics: nothing to average then)
  dist_->average_gradients(model_);
  std::vector<double> values;
  for (const auto& [k, v] : r.logged) values.push_back(v);
  std::vector<at::Tensor> sums = {at::tensor(values, at::kDouble)};
  if (!values.empty()) dist_->all_reduce_sum(sums);
  size_t i = 0;
  for (auto& [k, v] : r.logged) v = sums[0][static_cast<int64_t>(i++)].item<double>() / world_;
}

// Loss scaling: the gradient (averaged over ranks, so every rank decides alike) is unscaled; an
// overflow skips the step and halves the scale. It is a bad step only when the scale has fallen
// below 1, where the unscaled gradient itself is not finite.
void TrainingRun::update(int64_t step, StepRecord& r) {
  if (scaling_ && r.bad.empty()) optim_->scale_gradients(1.0 / r.loss_scale);
  if (r.bad.empty() && !optim_->gradients_finite()) {
    if (scaling_ && r.loss_scale >= 1)
      r.overflow = cat("fp16 gradient overflow: loss scale ", r.loss_scale, " -> ", r.loss_scale * scaler_.backoff_factor);
    else r.bad = "non-finite gradient";
  }
  r.lr = learning_rate(step, o_.max_steps, o_.warmup_steps, o_.lr);
  if (scaling_ && r.bad.empty()) scaler_.update(!r.overflow.empty());
  if (!r.overflow.empty()) {
    optim_->zero_grad();
    ++result_.overflow_steps;
    if (o_.progress)
      std::fprintf(stderr, "%s[%s] step %lld skipped: %s\n", tty_ ? "\r\033[K" : "", o_.name.c_str(),
                   static_cast<long long>(step + 1), r.overflow.c_str());
  } else if (r.bad.empty()) {
    optim_->step(r.lr);
    consecutive_bad_ = 0;
  } else {
    optim_->zero_grad();
    ++result_.bad_steps;
    ++consecutive_bad_;
    std::fprintf(stderr, "%s[%s] step %lld skipped: %s (%d in a row, limit %d)\n", tty_ ? "\r\033[K" : "", o_.name.c_str(),
                 static_cast<long long>(step + 1), r.bad.c_str(), consecutive_bad_, o_.max_bad_steps);
  }
}

// The step into the history and the metrics file.
void TrainingRun::record(int64_t step, const StepRecord& r) {
  for (const auto& [reason, n] : r.skipped_now) result_.skipped[reason] += n;
  std::map<std::string, double> logged = r.logged;
  logged["lr"] = r.lr;
  logged["step"] = static_cast<double>(step + 1);
  logged["samples"] = static_cast<double>(o_.batch_size * o_.accumulate * world_);  // in this optimizer step, every process
  logged["samples_per_s"] = static_cast<double>(o_.batch_size * o_.accumulate * world_) / r.seconds;
  logged["data_s"] = r.data_time;
  logged["step_s"] = r.seconds;
  result_.history.push_back(logged);
  window_time_ += r.seconds;
  window_data_ += r.data_time;
  ++window_steps_;
  nlohmann::json j = logged;  // NaN values are written as null
  j["stage"] = o_.name;
  if (!r.bad.empty()) j["skipped_step"] = r.bad;
  if (scaling_) {
    j["loss_scale"] = r.loss_scale;
    j["overflow_steps_total"] = result_.overflow_steps;
    if (!r.overflow.empty()) j["skipped_step"] = r.overflow;
  }
  for (const auto& [reason, n] : r.skipped_now) j["skipped_" + reason] = n;
  int64_t total_skipped = 0;
  for (const auto& [reason, n] : result_.skipped) total_skipped += n;
  j["skipped_samples_total"] = total_skipped;
  j["bad_steps_total"] = result_.bad_steps;
  write_metrics(j);
}

// Too many bad steps in a row, or too many skipped samples: stop with the reason.
void TrainingRun::check_limits(int64_t step, const StepRecord& r) {
  if (o_.max_bad_steps > 0 && consecutive_bad_ >= o_.max_bad_steps)
    throw Error(cat(
        "stopping: ", consecutive_bad_, " steps in a row had a non-finite loss or gradient (last: step ", step + 1, ", ", r.bad,
        "); no update was made from them",
        o_.checkpoint_path.empty() ? std::string() : cat(" and the last checkpoint ", o_.checkpoint_path, " was left as it was"),
        ". Lower the learning rate or check the data and the initial weights."));
  if (skips_->full() && skips_->rate() > o_.max_skip_rate) {
    std::string reasons;
    for (const auto& [reason, n] : result_.skipped) reasons += cat(reasons.empty() ? "" : ", ", reason, " ", n);
    throw Error(cat("stopping: ", skips_->skipped(), " of the last ", skips_->read(), " samples read were skipped (",
                    100.0 * skips_->rate(), "% > the limit of ", 100.0 * o_.max_skip_rate, "%); skipped in this run: ", reasons,
                    ". The log names each file."));
  }
}

void TrainingRun::show_progress(int64_t step, const StepRecord& r) {
  const bool last = step + 1 == o_.max_steps;
  if (!(tty_ || (o_.progress && ((step + 1) % o_.log_every == 0 || last)))) return;
  const double per_step = window_time_ / window_steps_;
  const double eta = per_step * static_cast<double>(o_.max_steps - step - 1);
  const auto loss = r.logged.find("loss");
  char line[256];
  std::snprintf(line, sizeof line, "[%s] step %lld/%lld %3.0f%% | loss %.4f | lr %.2e | %.1f samples/s | data %.0f%% | eta %s",
                o_.name.c_str(), static_cast<long long>(step + 1), static_cast<long long>(o_.max_steps),
                100.0 * (step + 1) / o_.max_steps, loss == r.logged.end() ? 0.0 : loss->second, r.lr,
                static_cast<double>(o_.batch_size * o_.accumulate * world_) / per_step,
                100.0 * window_data_ / std::max(1e-9, window_time_), duration(eta).c_str());
  std::fprintf(stderr, tty_ ? "\r%s\033[K" : "%s\n", line);
  if (tty_ && last) std::fprintf(stderr, "\n");
  if ((step + 1) % o_.log_every == 0) window_time_ = window_data_ = 0, window_steps_ = 0;
}

void TrainingRun::maybe_validate(int64_t step) {
  const bool last = step + 1 == o_.max_steps;
  if (!o_.validate || !(last || (o_.validate_every > 0 && (step + 1) % o_.validate_every == 0))) return;
  result_.validation = o_.validate(model_);
  model_->train();
  nlohmann::json j = {{"step", step + 1}, {"stage", o_.name}};
  std::string shown;
  for (const auto& [k, v] : result_.validation) {
    j["val_" + k] = v;
    shown += cat(" ", k, " ", v);
  }
  write_metrics(j);
  if (o_.progress)
    std::fprintf(stderr, "[%s] validation after step %lld:%s\n", o_.name.c_str(), static_cast<long long>(step + 1),
                 shown.c_str());
}

// The signal that stops the run after this step; a signal to any rank stops every rank.
int TrainingRun::stop_signal() {
  int signal = stop_requested();
  if (!multi_) return signal;
  std::vector<at::Tensor> sig = {at::tensor({static_cast<double>(signal)}, at::kDouble)};
  dist_->all_reduce_sum(sig);
  if (!signal && sig[0].item<double>() > 0) signal = SIGTERM;
  return signal;
}

}  // namespace

TrainResult train(VLMo& model, const ObjectiveFn& objective, const BatchFn& batches, const TrainOptions& options,
                  const std::string& resume_from) {
  return TrainingRun(model, objective, batches, options).run(resume_from);
}

}  // namespace vlmo
