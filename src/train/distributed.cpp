#include "vlmo/distributed.h"

#include <ATen/ATen.h>
#include <ATen/detail/CUDAHooksInterface.h>
#include <c10/util/Exception.h>

#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#ifdef VLMO_WITH_NCCL  // CMake sets it (and USE_C10D_NCCL) when LibTorch is a CUDA build
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif
#include <cstdlib>
#include <functional>
#include <map>
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>

#include "vlmo/error.h"

namespace vlmo {

// The group's collectives, bound to the concrete c10d class (Gloo or NCCL: their common base
// differs between LibTorch 1.13 and 2.x), and the device their tensors must live on.
class ProcessGroupHandle {
 public:
  using WorkPtr = c10::intrusive_ptr<c10d::Work>;
  c10::intrusive_ptr<c10d::Store> store;
  std::function<WorkPtr(std::vector<std::vector<at::Tensor>>&, std::vector<at::Tensor>&)> allgather;
  std::function<WorkPtr(std::vector<at::Tensor>&)> allreduce;
  std::function<WorkPtr(std::vector<at::Tensor>&, const c10d::BroadcastOptions&)> broadcast;
  std::function<WorkPtr()> barrier;
  at::Device device = at::kCPU;
  std::chrono::milliseconds timeout{0};

  template <typename PG>
  void bind(const c10::intrusive_ptr<PG>& pg) {
    allgather = [pg](std::vector<std::vector<at::Tensor>>& out, std::vector<at::Tensor>& in) { return pg->allgather(out, in); };
    allreduce = [pg](std::vector<at::Tensor>& t) { return pg->allreduce(t); };
    broadcast = [pg](std::vector<at::Tensor>& t, const c10d::BroadcastOptions& o) { return pg->broadcast(t, o); };
    barrier = [pg] { return pg->barrier(); };
  }
};

namespace {

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
    throw Error(cat("rank ", rank, ": ", what, " failed: another rank died or stopped answering within ",
                    h.timeout.count() / 1000.0, " s (--dist-timeout) (", msg, ")"));
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
  info.backend = nccl_available() && at::detail::getCUDAHooks().getNumGPUs() > 0 ? "nccl" : "gloo";
  if (const char* b = env("VLMO_DIST_BACKEND")) {
    const std::string want = b;
    if (want != "gloo" && want != "nccl") throw Error(cat("VLMO_DIST_BACKEND=\"", want, "\": expected gloo or nccl"));
    if (want == "nccl" && !nccl_available())
      throw Error("VLMO_DIST_BACKEND=nccl: this build has no NCCL (it needs a LibTorch built with CUDA)");
    info.backend = want;
  }
  return info;
}

bool nccl_available() {
#ifdef VLMO_WITH_NCCL
  return true;
#else
  return false;
#endif
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
    auto store = c10::make_intrusive<c10d::PrefixStore>("vlmo", d->pg_->store);
    if (info.backend == "nccl") {
#ifdef VLMO_WITH_NCCL
      const int gpus = static_cast<int>(at::detail::getCUDAHooks().getNumGPUs());
      if (gpus < 1) throw Error("the NCCL backend needs a CUDA device, and none is visible");
      d->pg_->device = at::Device(at::kCUDA, static_cast<c10::DeviceIndex>(info.local_rank % gpus));
      auto opts = c10d::ProcessGroupNCCL::Options::create();
      opts->timeout = timeout;
      d->pg_->bind(c10::make_intrusive<c10d::ProcessGroupNCCL>(store, info.rank, info.world_size, opts));
#else
      throw Error("this build has no NCCL");
#endif
    } else {
      auto opts = c10d::ProcessGroupGloo::Options::create(timeout);
      opts->devices.push_back(c10d::ProcessGroupGloo::createDeviceForHostname(info.master_addr));
      opts->threads = 2;
      d->pg_->bind(c10::make_intrusive<c10d::ProcessGroupGloo>(store, info.rank, info.world_size, opts));
    }
  } catch (const std::exception& e) {
    std::string msg = e.what();
    if (const auto* ce = dynamic_cast<const c10::Error*>(&e)) msg = ce->what_without_backtrace();
    throw Error(cat("rank ", info.rank, " of ", info.world_size, ": rendezvous at ", info.master_addr, ":", info.master_port,
                    " failed within ", timeout.count() / 1000.0, " s (", msg.substr(0, msg.find('\n')), ")"));
  }
  return d;
}

Distributed::~Distributed() = default;

at::Tensor Distributed::gather(const at::Tensor& t) const {
  at::NoGradGuard guard;
  const at::Tensor local = t.detach().to(pg_->device).contiguous();
  std::vector<std::vector<at::Tensor>> out(1);
  for (int r = 0; r < world_size(); ++r) out[0].push_back(at::empty_like(local));
  std::vector<at::Tensor> in = {local};
  wait(pg_->allgather(out, in), "all_gather", *pg_, rank());
  std::vector<at::Tensor> ordered = {t.detach()};
  for (int r = 0; r < world_size(); ++r)
    if (r != rank()) ordered.push_back(out[0][static_cast<size_t>(r)].to(t.device()));
  return at::cat(ordered);
}

GatherFn Distributed::gather_fn() const {
  return [this](const at::Tensor& t) { return gather(t); };
}

namespace {
// Runs an in-place collective on `t`, through a copy on the group's device when `t` lives elsewhere.
void in_place(at::Tensor& t, const ProcessGroupHandle& h, const std::function<void(std::vector<at::Tensor>&)>& run) {
  const bool moved = t.device() != h.device || !t.is_contiguous();
  std::vector<at::Tensor> one = {moved ? t.to(h.device).contiguous() : t};
  run(one);
  if (moved) t.copy_(one[0]);
}
}  // namespace

void Distributed::all_reduce_sum(std::vector<at::Tensor>& tensors) const {
  for (auto& t : tensors)
    in_place(t, *pg_, [&](std::vector<at::Tensor>& one) { wait(pg_->allreduce(one), "all_reduce", *pg_, rank()); });
}

void Distributed::broadcast(std::vector<at::Tensor>& tensors, int root) const {
  c10d::BroadcastOptions o;
  o.rootRank = root;
  for (auto& t : tensors)
    in_place(t, *pg_, [&](std::vector<at::Tensor>& one) { wait(pg_->broadcast(one, o), "broadcast", *pg_, rank()); });
}

void Distributed::barrier() const { wait(pg_->barrier(), "barrier", *pg_, rank()); }

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
      in_place(buf[0], *pg_,
               [&](std::vector<at::Tensor>& one) { wait(pg_->allreduce(one), "gradient all_reduce", *pg_, rank()); });
      buf[0].mul_(inv);
    });
  }
}

at::Tensor gather_local(const at::Tensor& t) { return t; }

GatherFn gather_over(const Distributed* group) {
  if (!group || group->world_size() == 1) return gather_local;
  return group->gather_fn();
}

}  // namespace vlmo
