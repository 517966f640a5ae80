// What the five gates of attnkit share (SqueezeExcite, ECA, ChannelAttention, SpatialAttention and
// CBAM): the hidden-width rounding of their bottleneck MLPs, the check of their input, and the one
// forward that picks the fused op or the composite math.
//
// A gate computes y = x · g(x) with g a channel gate (N×C), a spatial map (N×1×H×W) or both. Each
// has two paths with the same result: the composite math from stock ATen ops (the reference, and the
// only path that records the attention map) and the fused CBAM op (ops/cbam.h) where the block's
// Implementation and the input's device allow it (detail::use_fused_kernel). Gate runs that choice
// once for all five; a block supplies its two paths and its input check.
#pragma once

#include <attnkit/modules/attention_map.h>
#include <attnkit/modules/implementation.h>
#include <attnkit/modules/residual_epilogue.h>

#include <torch/types.h>

#include <cstdint>
#include <tuple>

namespace attnkit {

/// Hidden width of a gate's bottleneck MLP for `channels` inputs and a reduction ratio.
///  - `rd_divisor` > 0: timm's make_divisible(channels / reduction, rd_divisor, round_limit=0):
///    round to the nearest multiple of rd_divisor, at least rd_divisor.
///  - `rd_divisor` == 0: floor(channels / reduction) as the official SE and CBAM code (C // r),
///    but at least 1 (the official code would build an empty layer for C < r).
int64_t reduced_channels(int64_t channels, int64_t reduction, int64_t rd_divisor);

namespace detail {
/// Checks that `x` is a floating [N, channels, H, W] tensor (channels < 0: any count ≥ 1) with
/// H, W ≥ 1, and, when `like` is defined, that it has the device and dtype of `like` (a parameter).
/// Errors name the block, e.g. "CBAM: expected input of shape [N, 256, H, W], got [2, 128, 7, 7]".
void check_gate_input(const torch::Tensor& x, int64_t channels, const char* block,
                      const torch::Tensor& like = {});

/// The hidden width of an MLP gate's options (SE, ChannelAttention): rd_channels when positive,
/// else reduced_channels(channels, reduction, rd_divisor). Checks each option first; errors name
/// `block` and the option.
int64_t gate_hidden_channels(const char* block, int64_t channels, int64_t reduction, int64_t rd_channels,
                             int64_t rd_divisor);
}  // namespace detail

/// The shared base of the gates: forward, forward_add_relu and forward_with_attention, written once.
/// Not a module itself; each gate is `XxxImpl : Cloneable<XxxImpl>, Gate`, so that the Options /
/// Impl / TORCH_MODULE form stays the PyTorch frontend's.
class Gate : public AttentionMapRecorder, public ResidualEpilogue, public HasImplementation {
 public:
  /// x: [N, C, H, W] floating, on the parameters' device and dtype. Returns x gated, same shape.
  /// Runs the fused op where the block's Implementation allows it, else the composite math.
  torch::Tensor forward(const torch::Tensor& x) { return run(x, torch::Tensor(), /*into_shortcut=*/false); }
  /// relu(forward(x) + shortcut), the end of a residual block, in the fused op's last pass when
  /// forward runs fused (see residual_epilogue.h).
  torch::Tensor forward_add_relu(const torch::Tensor& x, const torch::Tensor& shortcut) final {
    return run(x, shortcut, /*into_shortcut=*/false);
  }
  /// forward_add_relu written into `shortcut` when the fused op runs and no gradient is wanted
  /// (ops::cbam_into_residual); see residual_epilogue.h.
  torch::Tensor forward_add_relu_into(const torch::Tensor& x, torch::Tensor& shortcut) final {
    return run(x, shortcut, /*into_shortcut=*/true);
  }
  /// forward(x) by the composite math, and the block's attention map (see its header); records the
  /// map when recording() is on.
  std::tuple<torch::Tensor, torch::Tensor> forward_with_attention(const torch::Tensor& x);

 protected:
  /// `name` is the block's name in error messages ("CBAM"); a string literal.
  explicit Gate(const char* name) : name_(name) {}

  /// The block's name in error messages.
  const char* block_name() const { return name_; }
  /// Throws unless x suits the block (detail::check_gate_input with its channels and parameters).
  virtual void check_input(const torch::Tensor& x) const = 0;
  /// The composite math: (x gated, attention map). Neither checks x nor records.
  virtual std::tuple<torch::Tensor, torch::Tensor> forward_composite(const torch::Tensor& x) = 0;
  /// The fused op on x, with the residual epilogue when shortcut is defined (written into it when
  /// `into_shortcut` and no gradient is wanted: detail::fused_op); an undefined tensor where the op
  /// cannot express the block's current state (the composite math runs instead).
  virtual torch::Tensor forward_fused(const torch::Tensor& x, const torch::Tensor& shortcut, bool into_shortcut) = 0;
  /// Whether this block or a gate inside it records a map (the fused op builds none).
  virtual bool records_maps() const { return recording(); }

 private:
  /// forward (shortcut undefined), forward_add_relu or forward_add_relu_into.
  torch::Tensor run(const torch::Tensor& x, const torch::Tensor& shortcut, bool into_shortcut);

  const char* name_;
};

}  // namespace attnkit
