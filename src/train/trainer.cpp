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
#include <cstdio>
#include <exception>
#include <fstream>
#include <mutex>
#include <nlohmann/json.hpp>
#include <thread>

#include "vlmo/checkpoint.h"
#include "vlmo/error.h"
#include "vlmo/train.h"

namespace vlmo {

bool official_no_decay(const std::string& name) {
  for (const char* s : {"bias", "LayerNorm.bias", "LayerNorm.weight", "norm.bias", "norm.weight",
                        "norm1.bias", "norm1.weight", "norm2.bias", "norm2.weight"})
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

AdamW::AdamW(torch::nn::Module& model, double weight_decay, double head_lr_mult, double beta1, double beta2,
             double eps)
    : beta1_(beta1), beta2_(beta2), eps_(eps) {
  for (const auto& p : model.named_parameters()) {
    if (!p.value().requires_grad()) continue;
    params_.push_back({p.key(), p.value(), at::zeros_like(p.value()), at::zeros_like(p.value()),
                       official_no_decay(p.key()) ? 0.0 : weight_decay, is_task_head(p.key()) ? head_lr_mult : 1.0});
  }
}

void AdamW::zero_grad() {
  for (auto& q : params_)
    if (q.p.grad().defined()) q.p.mutable_grad() = at::Tensor();
}

void AdamW::step(double lr) {
  at::NoGradGuard guard;
  ++steps_;
  const double bc1 = 1 - std::pow(beta1_, static_cast<double>(steps_));
  const double bc2 = 1 - std::pow(beta2_, static_cast<double>(steps_));
  for (auto& q : params_) {
    const at::Tensor& g = q.p.grad();
    if (!g.defined()) continue;  // frozen by use (no gradient this step): untouched, as torch
    const double plr = lr * q.lr_mult;
    if (q.weight_decay > 0) q.p.mul_(1 - plr * q.weight_decay);
    q.exp_avg.mul_(beta1_).add_(g, 1 - beta1_);
    q.exp_avg_sq.mul_(beta2_).addcmul_(g, g, 1 - beta2_);
    const at::Tensor denom = (q.exp_avg_sq / bc2).sqrt_().add_(eps_);
    q.p.addcdiv_(q.exp_avg, denom, -plr / bc1);
  }
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
    if (a == state.end() || b == state.end())
      throw Error(cat("checkpoint has no optimizer state for \"", q.name, "\""));
    q.exp_avg.copy_(a->second);
    q.exp_avg_sq.copy_(b->second);
  }
  steps_ = steps;
}

void save_checkpoint(const std::string& path, VLMo& model, const AdamW& opt, const std::string& config_json,
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
  meta["step"] = std::to_string(opt.steps());
  meta["stage"] = stage;
  meta["config"] = config_json;
  write_safetensors(path, all, meta);
}


namespace {

// Builds batches index, index+1, ... on background threads, at most `depth` ahead.
class Prefetcher {
 public:
  Prefetcher(const BatchFn& fn, int64_t first, int threads, int depth)
      : fn_(fn), next_(first), depth_(std::max(1, depth)) {
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

TrainResult train(VLMo& model, const ObjectiveFn& objective, const BatchFn& batches, const TrainOptions& o,
                  const std::string& resume_from) {
  AdamW optim(*model, o.weight_decay, o.head_lr_mult);
  int64_t start = 0;
  if (!resume_from.empty()) {
    SafetensorsFile ck = read_safetensors(resume_from);
    if (ck.metadata["format"] != "vlmo-train-checkpoint")
      throw Error(cat(resume_from, ": not a training checkpoint (no optimizer state to resume from)"));
    TensorMap weights, state;
    for (auto& [k, v] : ck.tensors) {
      if (k.rfind("model.", 0) == 0) weights[k.substr(6)] = v;
      else if (k.rfind("optim.", 0) == 0) state[k.substr(6)] = v;
    }
    load_weights(model, weights, /*strict=*/true);
    start = std::stoll(ck.metadata["step"]);
    optim.load_state(state, start);
    auto it = ck.tensors.find("rng.torch");
    if (it != ck.tensors.end()) {
      auto gen = at::detail::getDefaultCPUGenerator();
      std::lock_guard<std::mutex> lock(gen.mutex());
      gen.set_state(it->second);
    }
  }
  model->train();
  std::ofstream metrics;
  if (!o.metrics_path.empty()) {
    metrics.open(o.metrics_path, start > 0 ? std::ios::app : std::ios::trunc);
    if (!metrics) throw Error(cat(o.metrics_path, ": cannot write metrics"));
  }
  const bool tty = o.progress && ::isatty(2);
  TrainResult result;
  const auto t_begin = std::chrono::steady_clock::now();
  Prefetcher loader(batches, start * o.accumulate, o.loader_threads, o.prefetch);
  double window_time = 0, window_data = 0;
  int64_t window_steps = 0;
  for (int64_t step = start; step < o.max_steps; ++step) {
    const auto t0 = std::chrono::steady_clock::now();
    optim.zero_grad();
    std::map<std::string, double> logged;
    double data_time = 0;
    for (int micro = 0; micro < o.accumulate; ++micro) {
      double waited = 0;
      Batch b = loader.next(&waited);
      data_time += waited;
      Outputs out = objective(model, b);
      at::Tensor total;
      for (const auto& [k, v] : out) {
        if (k.size() >= 4 && k.compare(k.size() - 4, 4, "loss") == 0) total = total.defined() ? total + v : v;
        logged[k] += v.item<double>() / o.accumulate;
      }
      if (!total.defined()) throw Error("objective returned no loss");
      logged["loss"] += total.item<double>() / o.accumulate;
      (total / o.accumulate).backward();
    }
    const double lr = learning_rate(step, o.max_steps, o.warmup_steps, o.lr);
    optim.step(lr);
    const double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    logged["lr"] = lr;
    logged["step"] = static_cast<double>(step + 1);
    logged["samples_per_s"] = o.batch_size * o.accumulate / dt;
    logged["data_s"] = data_time;
    logged["step_s"] = dt;
    result.history.push_back(logged);
    window_time += dt;
    window_data += data_time;
    ++window_steps;
    if (metrics.is_open()) {
      nlohmann::json j = logged;
      j["stage"] = o.name;
      metrics << j.dump() << "\n";
      metrics.flush();
    }
    const bool last = step + 1 == o.max_steps;
    if (tty || (o.progress && ((step + 1) % o.log_every == 0 || last))) {
      const double per_step = window_time / window_steps;
      const double eta = per_step * static_cast<double>(o.max_steps - step - 1);
      char line[256];
      std::snprintf(line, sizeof line, "[%s] step %lld/%lld %3.0f%% | loss %.4f | lr %.2e | %.1f samples/s | data %.0f%% | eta %s",
                    o.name.c_str(), static_cast<long long>(step + 1), static_cast<long long>(o.max_steps),
                    100.0 * (step + 1) / o.max_steps, logged["loss"], lr, o.batch_size * o.accumulate / per_step,
                    100.0 * window_data / std::max(1e-9, window_time), duration(eta).c_str());
      std::fprintf(stderr, tty ? "\r%s\033[K" : "%s\n", line);
      if (tty && last) std::fprintf(stderr, "\n");
      if ((step + 1) % o.log_every == 0) window_time = window_data = 0, window_steps = 0;
    }
    if (o.validate && (last || (o.validate_every > 0 && (step + 1) % o.validate_every == 0))) {
      result.validation = o.validate(model);
      model->train();
      nlohmann::json j = {{"step", step + 1}, {"stage", o.name}};
      std::string shown;
      for (const auto& [k, v] : result.validation) {
        j["val_" + k] = v;
        shown += cat(" ", k, " ", v);
      }
      if (metrics.is_open()) metrics << j.dump() << "\n" << std::flush;
      if (o.progress) std::fprintf(stderr, "[%s] validation after step %lld:%s\n", o.name.c_str(),
                                   static_cast<long long>(step + 1), shown.c_str());
    }
    const bool stop_now = o.stop_after > 0 && step + 1 - start >= o.stop_after;
    if (!o.checkpoint_path.empty() &&
        (last || stop_now || (o.checkpoint_every > 0 && (step + 1) % o.checkpoint_every == 0)))
      save_checkpoint(o.checkpoint_path, model, optim, o.config_json, o.name, o.metadata);
    result.steps = step + 1;
    if (stop_now) break;
  }
  result.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t_begin).count();
  return result;
}

}  // namespace vlmo
