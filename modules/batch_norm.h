// BatchNorm statistics over a data-parallel batch (synchronised BatchNorm).
//
// In data-parallel training every process normalises its own slice of the global batch, so BatchNorm's
// mean and variance are those of batch/world_size images: noisier than the one-process run's and, for
// small slices, harmful. With a BatchNormSync installed, every BatchNorm2d of attnkit's blocks and
// backbones in training mode normalises with the mean and variance of the whole global batch instead
// (PyTorch's torch.nn.SyncBatchNorm does the same), and its backward sums the two per-channel gradient
// terms over the processes too, so that K steps on W processes equal K steps of one process on the
// global batch. Evaluation (running statistics) is unchanged.
//
// The library knows nothing about processes: the caller (attnkit train, under torchrun) implements
// BatchNormSync::all_reduce_sum with its process group. Layers call attnkit::batch_norm(bn, x) instead of
// bn(x); without a sync that is exactly bn(x).
#pragma once

#include <torch/nn/modules/batchnorm.h>
#include <torch/types.h>

#include <memory>

namespace attnkit {

/// Sums tensors over the processes of a data-parallel group.
class BatchNormSync {
 public:
  virtual ~BatchNormSync() = default;
  /// Replaces `t` by its elementwise sum over the processes (blocking). Every process calls it in the
  /// same order with the same shape and dtype.
  virtual void all_reduce_sum(torch::Tensor& t) const = 0;
};

/// The process-wide sync, or null. While one is installed, training-mode BatchNorm in attnkit layers uses
/// global-batch statistics (and the fused gates fall back to their composite path, which has a
/// BatchNorm module to synchronise).
std::shared_ptr<const BatchNormSync> batch_norm_sync();

/// Installs `sync` (null: none) until the guard is destroyed, then restores the previous one.
class BatchNormSyncGuard {
 public:
  explicit BatchNormSyncGuard(std::shared_ptr<const BatchNormSync> sync);
  ~BatchNormSyncGuard();
  BatchNormSyncGuard(const BatchNormSyncGuard&) = delete;
  BatchNormSyncGuard& operator=(const BatchNormSyncGuard&) = delete;

 private:
  std::shared_ptr<const BatchNormSync> previous_;
};

/// The sync batch_norm(bn, ·) applies now: the installed one while `bn` is training, else null (then
/// batch_norm is bn(x)). Code that computes a BatchNorm its own way (the fused CBAM op) asks it too.
std::shared_ptr<const BatchNormSync> batch_norm_sync_for(const torch::nn::BatchNorm2dImpl& bn);

/// `bn(x)`, or, in training mode with a sync installed, the same BatchNorm with the statistics of the
/// global batch: running mean and (unbiased) variance updated from them, num_batches_tracked counted.
torch::Tensor batch_norm(torch::nn::BatchNorm2dImpl& bn, const torch::Tensor& x);

/// batch_norm(*bn, x) for a module holder.
inline torch::Tensor batch_norm(torch::nn::BatchNorm2d& bn, const torch::Tensor& x) { return batch_norm(*bn, x); }

/// The synchronised BatchNorm alone, for any sync (what batch_norm() calls): x [N, C, ...] normalised
/// per channel with the mean and biased variance of x over every process; running statistics (if
/// defined) moved towards the global mean and unbiased variance by `momentum`. Differentiable in x,
/// weight and bias; weight and bias may be undefined (no affine).
torch::Tensor sync_batch_norm(const torch::Tensor& x, const torch::Tensor& weight, const torch::Tensor& bias,
                              torch::Tensor running_mean, torch::Tensor running_var, double momentum, double eps,
                              std::shared_ptr<const BatchNormSync> sync);

}  // namespace attnkit
