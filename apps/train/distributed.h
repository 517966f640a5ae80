// Data-parallel training and evaluation on PyTorch's own distributed engine (c10d), launched by torchrun:
//
//   torchrun --nproc-per-node 2 --no-python attnkit train ...
//
// torchrun starts one process per device and tells each where it stands through the environment (RANK,
// WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT; TORCHELASTIC_* when its agent hosts the store).
// Distributed::join reads it, meets the others through c10d's TCPStore and opens a Gloo process group
// (CPU tensors). Without those variables nothing here runs and the program is the one-process program.
//
// GradientSync is what DistributedDataParallel does in Python: c10d's Reducer puts the gradients in
// buckets (25 MB, the first 1 MB) and all-reduces each bucket as soon as backward has filled it, so
// the communication overlaps the rest of backward; the sum is divided by the world size. The model's
// parameters and buffers are broadcast from rank 0 first.
//
// Errors: a collective that fails (a process died: its sockets close; or hung: nothing arrives within
// --dist-timeout) throws inside LibTorch (c10::DistError, or Gloo's own std::runtime_error); every call
// below that communicates turns that into a CollectiveError whose message is the one line to print.
#pragma once

#include <attnkit/modules/batch_norm.h>
#include <torch/nn/module.h>
#include <torch/types.h>

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>

namespace attnkit::train {

/// A collective failed: another process died or hung past the timeout, or the network broke. The
/// message names this process's rank and what c10d said (first line).
class CollectiveError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

/// Where this process stands, as torchrun's environment says.
struct LaunchEnvironment {
  int rank = 0;
  int world_size = 1;
  int local_rank = 0;
  std::string master_addr;
  int master_port = 0;
  /// TORCHELASTIC_USE_AGENT_STORE=True: torchrun's agent hosts the TCPStore (every worker is a client,
  /// keys under /worker/attempt_N); otherwise rank 0 hosts it.
  bool agent_store = false;
  /// TORCHELASTIC_RESTART_COUNT: how many times torchrun restarted the workers (--max-restarts).
  int restart_count = 0;
};

/// The launch described by the environment; nullopt when RANK and WORLD_SIZE are both absent (one
/// process). Throws std::runtime_error naming the variable when one is missing or malformed.
std::optional<LaunchEnvironment> launch_environment();

struct DistributedOptions {
  /// "auto" (Gloo on CPU; NCCL on CUDA), "gloo" or "nccl".
  std::string backend = "auto";
  /// How long a rendezvous or a collective may wait for the other processes.
  std::chrono::milliseconds timeout = std::chrono::minutes(5);
};

/// One process of a data-parallel group. Every collective below must be called by every process, in
/// the same order.
class Distributed {
 public:
  /// Joins the group `launch` describes on `device` ("cpu" or "cuda"); blocks until every process has
  /// arrived or the timeout has passed (then throws).
  static std::shared_ptr<Distributed> join(const LaunchEnvironment& launch, const std::string& device,
                                           const DistributedOptions& options);
  ~Distributed();
  Distributed(const Distributed&) = delete;
  Distributed& operator=(const Distributed&) = delete;

  int rank() const { return launch_.rank; }
  int world_size() const { return launch_.world_size; }
  int local_rank() const { return launch_.local_rank; }
  /// Rank 0 writes files and prints; the others stay quiet.
  bool is_main() const { return launch_.rank == 0; }
  const LaunchEnvironment& launch() const { return launch_; }
  const std::string& backend() const { return backend_; }
  std::chrono::milliseconds timeout() const { return options_.timeout; }
  /// "gloo, 2 processes (rank 0), timeout 300 s": for the plan line.
  std::string describe() const;

  /// Sums `t` over the processes, in place (blocking).
  void all_reduce_sum(torch::Tensor& t) const;
  /// Overwrites `t` with rank 0's (blocking); same shape and dtype on every rank.
  void broadcast(torch::Tensor& t) const;
  /// Rank 0's `s` on every rank.
  void broadcast(std::string& s) const;
  /// Every parameter and buffer of `module` set to rank 0's.
  void broadcast(torch::nn::Module& module) const;
  void barrier() const;

  /// The c10d process group (an opaque c10d::ProcessGroup), for GradientSync.
  struct Group;
  const Group& group() const { return *group_; }

 private:
  Distributed(LaunchEnvironment launch, DistributedOptions options);
  LaunchEnvironment launch_;
  DistributedOptions options_;
  std::string backend_;
  std::unique_ptr<Group> group_;
};

/// Throws the error rank 0 reports: every rank calls it with its own view of `message` (empty = fine on
/// rank 0), so that a check only rank 0 can make (the files in --out) stops all processes together.
void throw_if_rank0_failed(const Distributed& dist, std::string message);


/// The sync that makes BatchNorm use the statistics of the global batch (attnkit/modules/batch_norm.h):
/// its all-reduces go through `dist`'s process group. Install it with attnkit::BatchNormSyncGuard.
std::shared_ptr<const attnkit::BatchNormSync> batch_norm_sync_of(std::shared_ptr<const Distributed> dist);

/// Gradients of `module` averaged over the processes during backward, as DistributedDataParallel does
/// (c10d::Reducer). Make it after the parameters are final (built, loaded, broadcast); each step calls
/// before_forward(), runs the forward pass, then backward() instead of loss.backward().
class GradientSync {
 public:
  GradientSync(const Distributed& dist, torch::nn::Module& module, int64_t bucket_bytes = 25 << 20);
  ~GradientSync();
  GradientSync(const GradientSync&) = delete;
  GradientSync& operator=(const GradientSync&) = delete;

  /// Before the forward pass (after the first step, re-orders the buckets in the order backward
  /// produced the gradients, as DDP does).
  void before_forward();
  /// loss.backward() with the gradients averaged over the processes: `mean_loss` is this process's mean
  /// over its `images` of a global batch of `global_images`. Where the batch does not split evenly, the
  /// loss is weighted by the process's share, so the average is the gradient of the global batch's mean.
  void backward(const torch::Tensor& mean_loss, int64_t images, int64_t global_images);
  /// Bytes of the gradients all-reduced per step, and the number of buckets.
  int64_t gradient_bytes() const { return gradient_bytes_; }
  /// Milliseconds one all-reduce of all gradients takes alone (no overlap): the mean of `repeats`
  /// all-reduces of a buffer of gradient_bytes(). A collective: every rank must call it.
  double time_allreduce_ms(int repeats = 5) const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
  int64_t gradient_bytes_ = 0;
};

}  // namespace attnkit::train
