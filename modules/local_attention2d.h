// LocalAttention2d: (dilated) neighborhood attention over a feature map.
//
// Neighborhood Attention (Hassani et al., "Neighborhood Attention Transformer", CVPR 2023) and its
// dilated form (Hassani & Shi, "Dilated Neighborhood Attention Transformer", 2022), with NATTEN's
// window definition: every position attends to a k×k window of keys, k odd; with dilation d the
// window takes every d-th position of the query's dilation group (positions congruent to it mod d),
// and at the borders the window shifts inward (not clipped, not padded) so that every query sees
// exactly k×k keys. Multi-head with scale head_dim^-0.5 and, optionally, NATTEN's relative position
// bias `rpb` of shape [heads, 2k-1, 2k-1], indexed by (key - query)/d + k - 1 per axis.
// Departures from NAT: q/k/v come from one 1×1 conv `qkv` (C → 3C, output channels ordered
// [q|k|v][head][head_dim]) and the output from a 1×1 conv `proj` (C → C) — the same maps as NAT's
// per-token Linear layers, but in NCHW so the block drops into a CNN. No residual (the host adds it).
//
// Two implementations of the same math (options.impl). Composite, the reference: the key index
// [H·W, k·k] is built once per (H, W, k, d, device) and cached (relative_position.h), and keys/values
// are gathered, i.e. it materialises k²·C values per position. Fused (CPU, and CUDA in builds with
// CUDA kernels): both 1×1 convs run as GEMMs on [N, H, W, C] rows (channels-last), around the fused
// op attnkit::ops::neighborhood_attention (ops/neighborhood_attention.h), which reads q, k, v in
// place and never builds the windows. Auto picks fused wherever the op has a kernel (CPU: measured
// faster, README and `attnkit bench --op local`; CUDA: not yet measured) unless the block records
// its attention map, and composite elsewhere. The fused path's output keeps x's memory format
// (channels-last in, channels-last out); the composite one is NCHW. Any H, W with H, W >= k·d works;
// smaller maps are an error.
//
// Recording (AttentionMapRecorder): the attention weights, [N, heads, H, W, k, k]; entry
// [n, h, y, x, i, j] is the weight that query (y, x) gives to window slot (i, j), i.e. key
// (sy + i·d, sx + j·d) with (sy, sx) the window start (neighborhood_window_start). Each [n, h, y, x]
// slice sums to 1.
#pragma once

#include <attnkit/modules/attention_map.h>
#include <attnkit/modules/implementation.h>

#include <torch/nn/cloneable.h>
#include <torch/nn/modules/conv.h>
#include <torch/nn/pimpl.h>

#include <cstdint>

namespace attnkit {

struct LocalAttention2dOptions {
  explicit LocalAttention2dOptions(int64_t channels) : channels_(channels) {}
  /// Input and output channels C; must be a multiple of heads.
  TORCH_ARG(int64_t, channels);
  /// Number of heads; head_dim = C / heads.
  TORCH_ARG(int64_t, heads) = 4;
  /// Window side k (odd, >= 1).
  TORCH_ARG(int64_t, kernel_size) = 7;
  /// Step between window positions (>= 1); H and W must be at least kernel_size · dilation.
  TORCH_ARG(int64_t, dilation) = 1;
  /// Whether the qkv conv has a bias (the proj conv always has one).
  TORCH_ARG(bool, qkv_bias) = true;
  /// Adds the learned relative position bias `rpb` [heads, 2k-1, 2k-1].
  TORCH_ARG(bool, rel_pos_bias) = true;
  /// Fused op or composite ATen ops (see above); the results agree to rounding.
  TORCH_ARG(Implementation, impl) = Implementation::Auto;
};

class LocalAttention2dImpl : public torch::nn::Cloneable<LocalAttention2dImpl>,
                             public AttentionMapRecorder,
                             public HasImplementation,
                             public SpatialMapSource {
 public:
  explicit LocalAttention2dImpl(const LocalAttention2dOptions& options_);
  explicit LocalAttention2dImpl(int64_t channels) : LocalAttention2dImpl(LocalAttention2dOptions(channels)) {}

  void reset() override;
  /// Re-initialises weights: default conv init, rpb ~ N(0, 0.02²) as in NAT.
  void reset_parameters();
  /// [N, C, H, W] → [N, C, H, W].
  torch::Tensor forward(const torch::Tensor& x);
  void pretty_print(std::ostream& stream) const override;
  Implementation implementation() const override { return options.impl(); }
  void set_implementation(Implementation impl) override { options.impl(impl); }
  /// The attention each key position received in the last recorded forward, [N, H, W], averaged
  /// over heads: from the query `query` (zero outside its window), or on average over all H·W
  /// queries; each image's map sums to 1.
  torch::Tensor spatial_map(const std::optional<Position2d>& query) const override;

 private:
  torch::Tensor forward_fused(const torch::Tensor& x);
  torch::Tensor forward_composite(const torch::Tensor& x);

 public:

  LocalAttention2dOptions options;
  torch::nn::Conv2d qkv{nullptr}, proj{nullptr};
  torch::Tensor rpb;  ///< [heads, 2k-1, 2k-1], undefined when rel_pos_bias is off.
};

TORCH_MODULE(LocalAttention2d);

}  // namespace attnkit
