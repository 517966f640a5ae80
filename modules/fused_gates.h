// How the gate modules (SqueezeExcite, ChannelAttention, CBAM) hand their parameters to the fused
// op attnkit::ops::cbam, and when they do.
#pragma once

#include <attnkit/modules/channel_attention.h>
#include <attnkit/modules/implementation.h>
#include <attnkit/modules/ops/cbam.h>
#include <attnkit/modules/spatial_attention.h>

namespace attnkit::detail {

/// Whether a block asked for `impl` runs the fused op attnkit::ops::cbam on `x`: use_fused_kernel
/// (implementation.h) with the devices that op has kernels for.
bool use_fused(Implementation impl, const torch::Tensor& x, bool recording, const char* who, bool auto_fused = true);

/// ops::cbam(x, w, cfg, shortcut), or, with `into_shortcut` where no gradient is wanted,
/// ops::cbam_into_residual into the shortcut (returned then).
torch::Tensor fused_op(const torch::Tensor& x, const ops::CbamWeights& w, const ops::CbamConfig& cfg,
                       const torch::Tensor& shortcut, bool into_shortcut);

/// The op's configuration for a channel gate pooling with `pool` (no spatial gate yet), with the
/// residual epilogue's ReLU when a shortcut is given (forward_add_relu).
ops::CbamConfig channel_gate_config(ChannelPool pool, const torch::Tensor& shortcut = {});

/// Adds the spatial gate's conv and BatchNorm to the op's weights and config. Returns false where the
/// fused op cannot express this gate (BatchNorm with cumulative-average momentum, or training with
/// synchronised statistics: batch_norm.h).
bool add_spatial_gate(SpatialAttentionImpl& spatial, ops::CbamWeights& w, ops::CbamConfig& cfg);

/// After a fused forward in training mode: what torch::nn::BatchNorm2d's own forward would also
/// have done (count the batch).
void count_batch(SpatialAttentionImpl& spatial, const ops::CbamConfig& cfg);

}  // namespace attnkit::detail
