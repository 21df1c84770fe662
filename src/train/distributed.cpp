#include "vlmo/distributed.h"

#include <ATen/ATen.h>
#include <c10/util/Exception.h>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>

#include <cstdlib>
#include <functional>
#include <map>

#include "vlmo/error.h"

namespace vlmo {

class ProcessGroupHandle {
 public:
  c10::intrusive_ptr<c10d::Store> store;
  c10::intrusive_ptr<c10d::ProcessGroupGloo> pg;
  std::chrono::milliseconds timeout;
};

namespace {

Distributed* g_current = nullptr;

const char* env(const char* name) {
  const char* v = std::getenv(name);
  return v && *v ? v : nullptr;
}

int env_int(const char* name, int min, int max) {
  const char* v = env(name);
  char* end = nullptr;
  errno = 0;
  const long x = std::strtol(v, &end, 10);
  if (errno || end == v || *end || x < min || x > max)
    throw Error(cat("environment variable ", name, "=\"", v, "\": expected a whole number from ", min, " to ", max));
  return static_cast<int>(x);
}

// Runs one collective, turning c10d's failures (a peer gone, the timeout passed) into one
// vlmo::Error that says what happened.
void wait(const c10::intrusive_ptr<c10d::Work>& work, const char* what, const ProcessGroupHandle& h, int rank) {
  try {
    work->wait(h.timeout);
  } catch (const std::exception& e) {
    std::string msg = e.what();
    if (const auto* ce = dynamic_cast<const c10::Error*>(&e)) msg = ce->what_without_backtrace();
    msg = msg.substr(0, msg.find('\n'));
    throw Error(cat("rank ", rank, ": ", what, " failed: another rank died or stopped answering within ", h.timeout.count() / 1000.0,
                    " s (--dist-timeout) (", msg, ")"));
  }
}

}  // namespace

LaunchInfo launch_info_from_env() {
  LaunchInfo info;
  if (env("WORLD_SIZE") || env("RANK")) {
    if (!env("WORLD_SIZE") || !env("RANK")) throw Error("set both RANK and WORLD_SIZE (as torchrun does), or neither");
    info.launcher = "torchrun";
    info.world_size = env_int("WORLD_SIZE", 1, 1 << 20);
    info.rank = env_int("RANK", 0, info.world_size - 1);
    info.local_rank = env("LOCAL_RANK") ? env_int("LOCAL_RANK", 0, info.world_size - 1) : 0;
  } else if (env("SLURM_NTASKS") && env("SLURM_PROCID")) {
    info.launcher = "slurm";
    info.world_size = env_int("SLURM_NTASKS", 1, 1 << 20);
    info.rank = env_int("SLURM_PROCID", 0, info.world_size - 1);
    info.local_rank = env("SLURM_LOCALID") ? env_int("SLURM_LOCALID", 0, info.world_size - 1) : 0;
  } else if (env("OMPI_COMM_WORLD_SIZE") && env("OMPI_COMM_WORLD_RANK")) {
    info.launcher = "openmpi";
    info.world_size = env_int("OMPI_COMM_WORLD_SIZE", 1, 1 << 20);
    info.rank = env_int("OMPI_COMM_WORLD_RANK", 0, info.world_size - 1);
    info.local_rank = env("OMPI_COMM_WORLD_LOCAL_RANK") ? env_int("OMPI_COMM_WORLD_LOCAL_RANK", 0, info.world_size - 1) : 0;
  }
  if (env("MASTER_ADDR")) info.master_addr = env("MASTER_ADDR");
  if (env("MASTER_PORT")) info.master_port = env_int("MASTER_PORT", 1, 65535);
  if (info.world_size > 1 && info.launcher == "slurm" && !env("MASTER_ADDR"))
    throw Error("under Slurm set MASTER_ADDR to the first node's address (e.g. $(scontrol show hostnames | head -n1))");
  return info;
}

std::shared_ptr<Distributed> Distributed::init(const LaunchInfo& info, std::chrono::milliseconds timeout) {
  std::shared_ptr<Distributed> d(new Distributed());
  d->info_ = info;
  d->pg_ = std::make_unique<ProcessGroupHandle>();
  d->pg_->timeout = timeout;
  try {
    c10d::TCPStoreOptions so;
    so.port = static_cast<uint16_t>(info.master_port);
    so.isServer = info.rank == 0;
    so.numWorkers = info.world_size;
    so.waitWorkers = true;
    so.timeout = timeout;
    d->pg_->store = c10::make_intrusive<c10d::TCPStore>(info.master_addr, so);
    auto opts = c10d::ProcessGroupGloo::Options::create(timeout);
    opts->devices.push_back(c10d::ProcessGroupGloo::createDeviceForHostname(info.master_addr));
    opts->threads = 2;
    d->pg_->pg = c10::make_intrusive<c10d::ProcessGroupGloo>(
        c10::make_intrusive<c10d::PrefixStore>("vlmo", d->pg_->store), info.rank, info.world_size, opts);
  } catch (const std::exception& e) {
    std::string msg = e.what();
    if (const auto* ce = dynamic_cast<const c10::Error*>(&e)) msg = ce->what_without_backtrace();
    throw Error(cat("rank ", info.rank, " of ", info.world_size, ": rendezvous at ", info.master_addr, ":", info.master_port,
                    " failed within ", timeout.count() / 1000.0, " s (", msg.substr(0, msg.find('\n')), ")"));
  }
  g_current = d.get();
  return d;
}

Distributed::~Distributed() {
  if (g_current == this) g_current = nullptr;
}

at::Tensor Distributed::gather(const at::Tensor& t) const {
  at::NoGradGuard guard;
  const at::Tensor local = t.detach().contiguous();
  std::vector<std::vector<at::Tensor>> out(1);
  for (int r = 0; r < world_size(); ++r) out[0].push_back(at::empty_like(local));
  std::vector<at::Tensor> in = {local};
  wait(pg_->pg->allgather(out, in), "all_gather", *pg_, rank());
  std::vector<at::Tensor> ordered = {out[0][static_cast<size_t>(rank())]};
  for (int r = 0; r < world_size(); ++r)
    if (r != rank()) ordered.push_back(out[0][static_cast<size_t>(r)]);
  return at::cat(ordered);
}

GatherFn Distributed::gather_fn() const {
  return [this](const at::Tensor& t) { return gather(t); };
}

void Distributed::all_reduce_sum(std::vector<at::Tensor>& tensors) const {
  for (auto& t : tensors) {
    std::vector<at::Tensor> one = {t};
    wait(pg_->pg->allreduce(one), "all_reduce", *pg_, rank());
  }
}

void Distributed::broadcast(std::vector<at::Tensor>& tensors, int root) const {
  c10d::BroadcastOptions o;
  o.rootRank = root;
  for (auto& t : tensors) {
    std::vector<at::Tensor> one = {t};
    wait(pg_->pg->broadcast(one, o), "broadcast", *pg_, rank());
  }
}

void Distributed::barrier() const { wait(pg_->pg->barrier(), "barrier", *pg_, rank()); }

namespace {

// Runs `collective` on one flat buffer holding every tensor of `ts` (one dtype), then copies the
// result back into them: few large collectives instead of one per tensor.
void through_flat(const std::vector<at::Tensor>& ts, const std::function<void(std::vector<at::Tensor>&)>& collective) {
  std::vector<at::Tensor> parts;
  for (const auto& t : ts) parts.push_back(t.reshape(-1));
  std::vector<at::Tensor> buf = {at::cat(parts)};
  collective(buf);
  int64_t off = 0;
  for (const auto& t : ts) {
    t.copy_(buf[0].narrow(0, off, t.numel()).view(t.sizes()));
    off += t.numel();
  }
}

}  // namespace

void Distributed::broadcast_model(VLMo& model) const {
  at::NoGradGuard guard;
  std::map<at::ScalarType, std::vector<at::Tensor>> by_type;
  for (auto& p : model->parameters()) by_type[p.scalar_type()].push_back(p);
  for (auto& b : model->buffers()) by_type[b.scalar_type()].push_back(b);
  for (auto& [type, ts] : by_type) through_flat(ts, [&](std::vector<at::Tensor>& buf) { broadcast(buf, 0); });
}

void Distributed::average_gradients(VLMo& model, size_t bucket_bytes) const {
  at::NoGradGuard guard;
  std::vector<at::Tensor> params;
  for (auto& p : model->parameters())
    if (p.requires_grad()) params.push_back(p);
  const double inv = 1.0 / world_size();
  size_t i = 0;
  while (i < params.size()) {
    // A bucket: consecutive parameters of one dtype up to bucket_bytes.
    std::vector<at::Tensor> grads;
    size_t bytes = 0;
    const auto type = params[i].scalar_type();
    for (; i < params.size() && params[i].scalar_type() == type && (grads.empty() || bytes < bucket_bytes); ++i) {
      at::Tensor& p = params[i];
      if (!p.grad().defined()) p.mutable_grad() = at::zeros_like(p);
      grads.push_back(p.grad());
      bytes += static_cast<size_t>(p.numel()) * p.element_size();
    }
    through_flat(grads, [&](std::vector<at::Tensor>& buf) {
      wait(pg_->pg->allreduce(buf), "gradient all_reduce", *pg_, rank());
      buf[0].mul_(inv);
    });
  }
}

Distributed* current_distributed() { return g_current; }

GatherFn current_gather() {
  Distributed* d = current_distributed();
  if (!d || d->world_size() == 1) return gather_local;
  return d->gather_fn();
}

}  // namespace vlmo
