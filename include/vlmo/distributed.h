// Data-parallel training on torch.distributed (c10d): one process per device, launched the way
// torchrun, Slurm or Open MPI launch them; rendezvous through a TCPStore on MASTER_ADDR:
// MASTER_PORT; ProcessGroupGloo on CPU, ProcessGroupNCCL on CUDA builds (LaunchInfo::backend). A
// process started without those variables is a world of one and none of this does anything.
//
// What the objectives see (reference §2.1, §2.2): gather() concatenates a tensor of every rank
// along dim 0 with the local chunk first, without autograd (as the official all_gather), so the
// ITC loss is computed over the whole gathered matrix on every rank while its gradient flows
// only through the local features. After the gradient all-reduce (a mean over ranks, as DDP),
// the ITC gradient of the encoders is therefore the full-batch gradient divided by the world
// size; logit_scale, used by every rank's whole matrix, gets the full gradient.
#pragma once
#include <ATen/Tensor.h>

#include <chrono>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "vlmo/model.h"

namespace vlmo {

// Gathers a tensor from every rank along dim 0, the local chunk first, without autograd
// (as the official all_gather). The identity on one process.
using GatherFn = std::function<at::Tensor(const at::Tensor&)>;
at::Tensor gather_local(const at::Tensor& t);

// Who this process is, from the launcher's environment:
//   torchrun / torch.distributed.launch: RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT;
//   Slurm (srun): SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID (MASTER_ADDR must be set);
//   Open MPI (mpirun): OMPI_COMM_WORLD_RANK, OMPI_COMM_WORLD_SIZE, OMPI_COMM_WORLD_LOCAL_RANK.
// MASTER_ADDR defaults to 127.0.0.1 and MASTER_PORT to 29500. Malformed values are errors
// naming the variable.
struct LaunchInfo {
  int rank = 0, world_size = 1, local_rank = 0;
  std::string master_addr = "127.0.0.1";
  int master_port = 29500;
  std::string launcher = "none";  // "torchrun", "slurm", "openmpi", "none"
  // "nccl" when this build has NCCL and a CUDA device is visible, else "gloo"; the variable
  // VLMO_DIST_BACKEND=gloo|nccl chooses. NCCL runs on cuda:(LOCAL_RANK mod devices); tensors on
  // the CPU are copied there and back for each collective.
  std::string backend = "gloo";
};
LaunchInfo launch_info_from_env();
// Whether this build can use ProcessGroupNCCL (LibTorch built with CUDA).
bool nccl_available();

class ProcessGroupHandle;  // c10d, kept out of this header

class Distributed {
 public:
  // Rendezvous (rank 0 hosts the TCPStore) and a Gloo process group. Every collective fails
  // with vlmo::Error after `timeout` when a rank does not answer (died or hung). The group lives
  // as long as the returned pointer's owners.
  static std::shared_ptr<Distributed> init(const LaunchInfo& info, std::chrono::milliseconds timeout);
  ~Distributed();

  int rank() const { return info_.rank; }
  int world_size() const { return info_.world_size; }
  const LaunchInfo& info() const { return info_; }

  // All ranks' `t` (same shape on every rank) along dim 0, local chunk first, then the other
  // ranks in rank order; no autograd.
  at::Tensor gather(const at::Tensor& t) const;
  GatherFn gather_fn() const;
  // In place: the sum over ranks.
  void all_reduce_sum(std::vector<at::Tensor>& tensors) const;
  // In place: rank `root`'s values everywhere.
  void broadcast(std::vector<at::Tensor>& tensors, int root = 0) const;
  void barrier() const;

  // Every parameter and buffer of rank 0, so all ranks start from the same weights.
  void broadcast_model(VLMo& model) const;
  // The gradients of `model`, averaged over ranks (DDP's mean), flattened into buckets of at
  // most `bucket_bytes`; parameters without a gradient on this rank count as zeros (so every
  // rank sends the same buckets).
  void average_gradients(VLMo& model, size_t bucket_bytes = 25u << 20) const;

 private:
  Distributed() = default;
  LaunchInfo info_;
  std::unique_ptr<ProcessGroupHandle> pg_;
};

// The gather of the processes `group` (nullptr: one process): gather_local for one process,
// else the group's gather. Nothing here remembers a group: whoever made it (Distributed::init)
// passes it on, as TrainOptions::group and the objectives' `group` argument.
GatherFn gather_over(const Distributed* group);

}  // namespace vlmo
