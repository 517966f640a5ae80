// Optimisers and learning-rate schedules of `attnkit train`.
//
// The schedule is a pure function of the global step (iteration), so resuming needs only the step
// counter: linear warm-up from 0 over `warmup_steps`, then either a half cosine from the base rate
// down to `min_lr` at `total_steps` (Loshchilov & Hutter, SGDR, without restarts), or a step decay
// multiplying by `gamma` at each milestone.
// Weight decay is applied to convolution and linear weights only: BatchNorm parameters and biases
// (every tensor with fewer than 2 dimensions) are not decayed, which is the common practice for
// ResNets (Goyal et al. 2017) and helps small data sets.
#pragma once

#include <torch/nn/module.h>
#include <torch/optim/optimizer.h>

#include <memory>
#include <string>
#include <vector>

namespace attnkit::train {

struct ScheduleOptions {
  /// "cosine" or "step".
  std::string kind = "cosine";
  double base_lr = 0.1;
  /// Final rate of the cosine schedule.
  double min_lr = 0.0;
  int64_t warmup_steps = 0;
  int64_t total_steps = 1;
  /// Step schedule: the steps at which the rate is multiplied by gamma.
  std::vector<int64_t> milestones;
  double gamma = 0.1;
};

/// Learning rate at 0-based `step`. Throws std::runtime_error on inconsistent options.
double learning_rate(const ScheduleOptions& options, int64_t step);

struct OptimizerOptions {
  /// "sgd" or "adamw".
  std::string kind = "sgd";
  double lr = 0.1;
  double momentum = 0.9;
  bool nesterov = true;
  double weight_decay = 5e-4;
  double beta1 = 0.9, beta2 = 0.999, eps = 1e-8;
};

/// An optimiser over `module`'s parameters in two groups: decayed (dim ≥ 2) and not decayed.
std::unique_ptr<torch::optim::Optimizer> make_optimizer(torch::nn::Module& module, const OptimizerOptions& options);

/// Sets the learning rate of every parameter group.
void set_learning_rate(torch::optim::Optimizer& optimizer, double lr);

}  // namespace attnkit::train
