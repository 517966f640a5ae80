#include "optim.h"

#include <torch/optim/adamw.h>
#include <torch/optim/sgd.h>

#include <cmath>
#include <stdexcept>

namespace attnkit::train {

double learning_rate(const ScheduleOptions& o, int64_t step) {
  if (o.total_steps < 1) throw std::runtime_error("schedule: total steps must be >= 1");
  if (o.warmup_steps < 0) throw std::runtime_error("schedule: warm-up steps must be >= 0");
  if (step < o.warmup_steps) return o.base_lr * static_cast<double>(step + 1) / static_cast<double>(o.warmup_steps);
  if (o.kind == "cosine") {
    const double span = static_cast<double>(std::max<int64_t>(o.total_steps - o.warmup_steps, 1));
    const double t = std::min(static_cast<double>(step - o.warmup_steps) / span, 1.0);
    return o.min_lr + 0.5 * (o.base_lr - o.min_lr) * (1.0 + std::cos(M_PI * t));
  }
  if (o.kind == "step") {
    double lr = o.base_lr;
    for (const auto m : o.milestones) {
      if (step >= m) lr *= o.gamma;
    }
    return lr;
  }
  throw std::runtime_error("schedule '" + o.kind + "': expected cosine or step");
}

std::unique_ptr<torch::optim::Optimizer> make_optimizer(torch::nn::Module& module, const OptimizerOptions& o) {
  std::vector<torch::Tensor> decay, no_decay;
  for (const auto& p : module.parameters()) {
    if (!p.requires_grad()) continue;
    (p.dim() >= 2 ? decay : no_decay).push_back(p);
  }
  if (o.kind == "sgd") {
    auto opts = torch::optim::SGDOptions(o.lr).momentum(o.momentum).nesterov(o.nesterov).weight_decay(o.weight_decay);
    if (o.nesterov && o.momentum <= 0) throw std::runtime_error("--nesterov needs --momentum > 0");
    auto no_decay_opts = std::make_unique<torch::optim::SGDOptions>(opts);
    no_decay_opts->weight_decay(0.0);
    std::vector<torch::optim::OptimizerParamGroup> groups;
    groups.emplace_back(decay, std::make_unique<torch::optim::SGDOptions>(opts));
    groups.emplace_back(no_decay, std::move(no_decay_opts));
    return std::make_unique<torch::optim::SGD>(std::move(groups), opts);
  }
  if (o.kind == "adamw") {
    auto opts = torch::optim::AdamWOptions(o.lr).betas({o.beta1, o.beta2}).eps(o.eps).weight_decay(o.weight_decay);
    auto no_decay_opts = std::make_unique<torch::optim::AdamWOptions>(opts);
    no_decay_opts->weight_decay(0.0);
    std::vector<torch::optim::OptimizerParamGroup> groups;
    groups.emplace_back(decay, std::make_unique<torch::optim::AdamWOptions>(opts));
    groups.emplace_back(no_decay, std::move(no_decay_opts));
    return std::make_unique<torch::optim::AdamW>(std::move(groups), opts);
  }
  throw std::runtime_error("optimizer '" + o.kind + "': expected sgd or adamw");
}

void set_learning_rate(torch::optim::Optimizer& optimizer, double lr) {
  for (auto& group : optimizer.param_groups()) group.options().set_lr(lr);
}

}  // namespace attnkit::train
