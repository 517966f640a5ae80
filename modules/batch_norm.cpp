#include <attnkit/modules/batch_norm.h>

#include <ATen/core/ivalue.h>
#include <torch/autograd.h>
#include <torch/custom_class.h>

#include <atomic>

namespace attnkit {

namespace {

// One process-wide slot: the trainer installs the sync once, before its first step, from the thread
// that runs the forward passes; atomic so that a reader on another thread never sees a torn pointer.
std::shared_ptr<const BatchNormSync>& sync_slot() {
  static std::shared_ptr<const BatchNormSync> slot;
  return slot;
}

// The sync travels to backward inside the autograd context, which stores IValues: a capsule holds it.
struct SyncCapsule : torch::CustomClassHolder {
  explicit SyncCapsule(std::shared_ptr<const BatchNormSync> s) : sync(std::move(s)) {}
  std::shared_ptr<const BatchNormSync> sync;
};

// Every dimension of x but the channels (1).
std::vector<int64_t> reduced_dims(const torch::Tensor& x) {
  std::vector<int64_t> dims{0};
  for (int64_t d = 2; d < x.dim(); ++d) dims.push_back(d);
  return dims;
}

// The dtype BatchNorm computes in: float64 for float64 input, float32 for the rest (as ATen's kernels
// accumulate bfloat16 and half in float).
torch::ScalarType compute_dtype(const torch::Tensor& x) {
  return x.scalar_type() == torch::kDouble ? torch::kDouble : torch::kFloat;
}

// [C] -> [1, C, 1, ...] to broadcast against x.
torch::Tensor per_channel(const torch::Tensor& v, const torch::Tensor& x) {
  std::vector<int64_t> shape(static_cast<size_t>(x.dim()), 1);
  shape[1] = v.size(0);
  return v.view(shape);
}

// The mean and biased variance of x per channel over every process (float64), and the number of values
// each channel has in all. Per process: count, sum, and the sum of squared deviations from the local
// mean (exact in float where sum(x^2) - n*mean^2 would cancel); over the processes
//   M2 = sum_r [M2_r + n_r (mean_r - mean)^2] = sum_r M2_r + sum_r n_r mean_r^2 - N mean^2,
// whose last two terms cancel only in float64, at the scale of the means.
struct GlobalMoments {
  torch::Tensor mean, var;
  double count = 0;
};

GlobalMoments global_moments(const torch::Tensor& x, const BatchNormSync& sync) {
  torch::NoGradGuard no_grad;
  const double count = static_cast<double>(x.numel() / x.size(1));
  const auto [var_local, mean_local] = torch::var_mean(x.to(compute_dtype(x)), reduced_dims(x), /*correction=*/0);
  const auto mean_d = mean_local.to(torch::kDouble);
  auto stats = torch::stack({torch::full_like(mean_d, count), count * mean_d, count * var_local.to(torch::kDouble),
                             count * mean_d * mean_d});
  sync.all_reduce_sum(stats);
  const auto n = stats[0];
  GlobalMoments m;
  m.count = n[0].item<double>();
  m.mean = stats[1] / n;
  m.var = ((stats[2] + stats[3] - n * m.mean * m.mean) / n).clamp_min(0);
  return m;
}

// y = (x - mean) * invstd * weight + bias with mean and invstd given (the global ones). Its backward
// differentiates through them as functions of x on every process: the two per-channel sums of the
// BatchNorm gradient are all-reduced.
class SyncBatchNormFunction : public torch::autograd::Function<SyncBatchNormFunction> {
 public:
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, const torch::Tensor& x,
                               const std::optional<torch::Tensor>& weight, const std::optional<torch::Tensor>& bias,
                               const torch::Tensor& mean, const torch::Tensor& invstd, double count,
                               const std::shared_ptr<const BatchNormSync>& sync) {
    const auto dtype = compute_dtype(x);
    auto scale = weight ? invstd * weight->to(dtype) : invstd;
    auto shift = bias ? bias->to(dtype) - mean * scale : -mean * scale;
    ctx->save_for_backward({x, weight.value_or(torch::Tensor()), mean, invstd});
    ctx->saved_data["count"] = count;
    ctx->saved_data["sync"] = c10::IValue::make_capsule(c10::make_intrusive<SyncCapsule>(sync));
    return (x.to(dtype) * per_channel(scale, x) + per_channel(shift, x)).to(x.scalar_type());
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad_outputs) {
    const auto saved = ctx->get_saved_variables();
    const auto &x = saved[0], &weight = saved[1], &mean = saved[2], &invstd = saved[3];
    const double count = ctx->saved_data["count"].toDouble();
    const auto sync = c10::static_intrusive_pointer_cast<SyncCapsule>(ctx->saved_data["sync"].toCapsule())->sync;
    const auto dtype = compute_dtype(x);
    const auto dy = grad_outputs[0].to(dtype);
    const auto dims = reduced_dims(x);
    const auto xhat = (x.to(dtype) - per_channel(mean, x)) * per_channel(invstd, x);
    const auto sum_dy = dy.sum(dims);
    const auto sum_dy_xhat = (dy * xhat).sum(dims);
    // Weight and bias gradients stay this process's own: the gradient sync averages them like any other.
    torch::Tensor grad_weight, grad_bias;
    if (weight.defined()) {
      grad_weight = sum_dy_xhat.to(weight.scalar_type());
      grad_bias = sum_dy.to(weight.scalar_type());
    }
    torch::Tensor grad_x;
    if (ctx->needs_input_grad(0)) {
      auto sums = torch::stack({sum_dy, sum_dy_xhat}).to(torch::kDouble);
      sync->all_reduce_sum(sums);
      const auto mean_dy = (sums[0] / count).to(dtype), mean_dy_xhat = (sums[1] / count).to(dtype);
      const auto scale = weight.defined() ? invstd * weight.to(dtype) : invstd;
      grad_x = ((dy - per_channel(mean_dy, x) - xhat * per_channel(mean_dy_xhat, x)) * per_channel(scale, x))
                   .to(x.scalar_type());
    }
    return {grad_x, grad_weight, grad_bias, {}, {}, {}, {}};
  }
};

}  // namespace

std::shared_ptr<const BatchNormSync> batch_norm_sync() { return std::atomic_load(&sync_slot()); }

BatchNormSyncGuard::BatchNormSyncGuard(std::shared_ptr<const BatchNormSync> sync)
    : previous_(std::atomic_exchange(&sync_slot(), std::move(sync))) {}

BatchNormSyncGuard::~BatchNormSyncGuard() { std::atomic_store(&sync_slot(), std::move(previous_)); }

torch::Tensor sync_batch_norm(const torch::Tensor& x, const torch::Tensor& weight, const torch::Tensor& bias,
                              torch::Tensor running_mean, torch::Tensor running_var, double momentum, double eps,
                              std::shared_ptr<const BatchNormSync> sync) {
  TORCH_CHECK(sync, "sync_batch_norm: sync is null");
  TORCH_CHECK(x.defined() && x.dim() >= 2 && x.is_floating_point(),
              "sync_batch_norm: expected a floating input x of shape [N, C, ...], got ",
              x.defined() ? x.sizes() : c10::IntArrayRef{});
  const int64_t c = x.size(1);
  const std::initializer_list<const torch::Tensor*> per_channel_args{&weight, &bias, &running_mean, &running_var};
  for (const torch::Tensor* t : per_channel_args)
    TORCH_CHECK(!t->defined() || (t->dim() == 1 && t->size(0) == c), "sync_batch_norm: expected per-channel tensors of ",
                c, " values for x ", x.sizes(), ", got ", t->sizes());
  TORCH_CHECK(running_mean.defined() == running_var.defined(),
              "sync_batch_norm: running_mean and running_var must both be given or both be undefined");
  TORCH_CHECK(momentum >= 0 && momentum <= 1, "sync_batch_norm: momentum must be in [0, 1], got ", momentum);
  TORCH_CHECK(eps > 0, "sync_batch_norm: eps must be > 0, got ", eps);
  const auto m = global_moments(x, *sync);
  TORCH_CHECK(m.count > 1, "sync_batch_norm: expected more than 1 value per channel over all processes when training, got ",
              m.count, " (input ", x.sizes(), ")");
  if (running_mean.defined()) {
    torch::NoGradGuard no_grad;
    running_mean.mul_(1 - momentum).add_(m.mean.to(running_mean.dtype()), momentum);
    running_var.mul_(1 - momentum).add_((m.var * (m.count / (m.count - 1))).to(running_var.dtype()), momentum);
  }
  const auto optional = [](const torch::Tensor& t) { return t.defined() ? std::optional<torch::Tensor>(t) : std::nullopt; };
  const auto dtype = compute_dtype(x);
  return SyncBatchNormFunction::apply(x, optional(weight), optional(bias), m.mean.to(dtype), (m.var + eps).rsqrt().to(dtype),
                                      m.count, sync);
}

std::shared_ptr<const BatchNormSync> batch_norm_sync_for(const torch::nn::BatchNorm2dImpl& bn) {
  return bn.is_training() ? batch_norm_sync() : nullptr;
}

torch::Tensor batch_norm(torch::nn::BatchNorm2dImpl& bn, const torch::Tensor& x) {
  auto sync = batch_norm_sync_for(bn);
  if (!sync) return bn.forward(x);
  TORCH_CHECK(x.dim() == 4, "batch_norm: expected a 4-D input [N, C, H, W], got ", x.sizes());
  const auto& o = bn.options;
  const bool track = o.track_running_stats();
  double momentum = o.momentum().value_or(0.0);
  if (track) {
    torch::NoGradGuard no_grad;
    bn.num_batches_tracked.add_(1);
    // momentum None: the cumulative average, as torch::nn::BatchNorm2d does.
    if (!o.momentum()) momentum = 1.0 / static_cast<double>(bn.num_batches_tracked.item<int64_t>());
  }
  return sync_batch_norm(x, o.affine() ? bn.weight : torch::Tensor(), o.affine() ? bn.bias : torch::Tensor(),
                         track ? bn.running_mean : torch::Tensor(), track ? bn.running_var : torch::Tensor(), momentum,
                         o.eps(), std::move(sync));
}

}  // namespace attnkit
