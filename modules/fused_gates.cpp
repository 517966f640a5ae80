#include <attnkit/modules/batch_norm.h>
#include <attnkit/modules/fused_gates.h>

namespace attnkit::detail {

bool use_fused(Implementation impl, const torch::Tensor& x, bool recording, const char* who, bool auto_fused) {
  return use_fused_kernel(impl, FusedOp::Cbam, x.device(), ops::has_fused_kernels(x.device()), recording, who, auto_fused);
}

torch::Tensor fused_op(const torch::Tensor& x, const ops::CbamWeights& w, const ops::CbamConfig& cfg,
                       const torch::Tensor& shortcut, bool into_shortcut) {
  if (!into_shortcut || !shortcut.defined() || ops::cbam_needs_gradient(x, w, shortcut))
    return ops::cbam(x, w, cfg, shortcut);
  torch::Tensor out = shortcut;  // the same tensor: the op writes its storage
  return ops::cbam_into_residual(out, x, w, cfg);
}

ops::CbamConfig channel_gate_config(ChannelPool pool, const torch::Tensor& shortcut) {
  ops::CbamConfig cfg;
  cfg.relu = shortcut.defined();
  cfg.pool_avg = pool != ChannelPool::Max;
  cfg.pool_max = pool != ChannelPool::Avg;
  return cfg;
}

bool add_spatial_gate(SpatialAttentionImpl& spatial, ops::CbamWeights& w, ops::CbamConfig& cfg) {
  w.spatial_weight = spatial.conv->weight;
  w.spatial_bias = spatial.conv->options.bias() ? spatial.conv->bias : torch::Tensor();
  cfg.spatial_max_first = spatial.options.pool_order() == PoolOrder::MaxMean;
  cfg.use_bn = !spatial.bn.is_empty();
  if (cfg.use_bn) {
    auto& bn = *spatial.bn;
    if (!bn.options.momentum().has_value()) return false;
    // Synchronised statistics need the other processes' sums between pooling and normalising.
    if (batch_norm_sync_for(bn)) return false;
    cfg.bn_momentum = *bn.options.momentum();
    cfg.bn_eps = bn.options.eps();
    cfg.bn_training = bn.is_training() || !bn.options.track_running_stats();
    w.bn_weight = bn.options.affine() ? bn.weight : torch::Tensor();
    w.bn_bias = bn.options.affine() ? bn.bias : torch::Tensor();
    w.bn_running_mean = bn.options.track_running_stats() ? bn.running_mean : torch::Tensor();
    w.bn_running_var = bn.options.track_running_stats() ? bn.running_var : torch::Tensor();
  }
  return true;
}

void count_batch(SpatialAttentionImpl& spatial, const ops::CbamConfig& cfg) {
  if (cfg.use_bn && cfg.bn_training && spatial.bn->num_batches_tracked.defined()) {
    torch::NoGradGuard no_grad;
    spatial.bn->num_batches_tracked.add_(1);
  }
}

}  // namespace attnkit::detail
