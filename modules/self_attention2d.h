// SelfAttention2d: global multi-head self-attention over the H·W positions of a feature map, and
// the non-local block.
//
// Multi-head variant ("mhsa"): the attention of Vaswani et al. 2017 applied to the H·W positions of
// an [N, C, H, W] map, as in BoTNet (Srinivas et al. 2021) and timm's BottleneckAttn: one 1×1 conv
// `qkv` (C → 3·heads·head_dim, output channels ordered [q|k|v][head][head_dim] like timm), scaled
// dot-product attention per head with scale head_dim^-0.5, then a 1×1 conv `proj` back to C. The
// output has the input's shape and no residual (the host block adds it).
// Departures: the optional position term is a learned Swin-style bias table
// `relative_position_bias_table` of (2H-1)(2W-1) × heads for a fixed size `feat_size` (Liu et al.
// 2021), not BoTNet's content-dependent relative logits. Where the input is not feat_size the
// table is resized by bicubic interpolation (Swin's rule for other resolutions), so any H, W works.
//
// Non-local variant ("non_local"): the embedded-Gaussian non-local block of Wang et al. 2018 in
// timm's formulation (timm/layers/non_local_attn.py, NonLocalAttn), with the same parameter names so
// its state dict loads unchanged: 1×1 convs `t`, `p`, `g` (C → rd), softmax(tᵀp · C^-0.5) applied to
// g, 1×1 conv `z` (rd → C), `norm` BatchNorm with weight and bias initialised to 0, plus the input:
// y = norm(z(attn)) + x. As in timm the scale uses the input channels C (not rd) and is single-head;
// heads/head_dim/qkv_bias/rel_pos do not apply to it.
//
// Implementation (options.impl, set_implementation): the attention core runs either attnkit's fused
// op ops::relpos_attention (tiled, online softmax, the bias looked up from the table on the fly:
// O(H·W) memory forward and backward, CPU and CUDA) or the composite path, ATen's
// scaled_dot_product_attention with, when rel_pos is on, the bias expanded into a
// heads×(H·W)×(H·W) mask (O((H·W)²) memory). Auto runs the fused op for the multi-head variant on
// the CPU, with or without rel_pos (measured faster both ways, see the README's bench table: SDPA
// takes its O((H·W)²) math path on this block's strided q, k, v); on CUDA the fused op with
// rel_pos and SDPA without it (SDPA's flash kernels, fed q, k, v with a contiguous head dim: a
// choice by reasoning, not yet measured); SDPA for non_local and on other devices. Fused runs the
// fused op for every variant (an error on devices without it, or on CUDA for head dims above
// 256); Composite always runs SDPA.
//
// Recording (AttentionMapRecorder): when on, the attention weights of the query positions
// `record_queries` (default: the centre (H/2, W/2)) are recomputed explicitly, for those rows only,
// and stored as [N, heads, Q, H, W] (heads = 1 for non_local): entry [n, h, q, y, x] is the weight
// query q gives to key (y, x); each [n, h, q] slice sums to 1.
#pragma once

#include <attnkit/modules/attention_map.h>
#include <attnkit/modules/implementation.h>

#include <torch/nn/cloneable.h>
#include <torch/nn/modules/batchnorm.h>
#include <torch/nn/modules/conv.h>
#include <torch/nn/pimpl.h>

#include <cstdint>
#include <utility>
#include <vector>

namespace attnkit {

/// Which formulation SelfAttention2d computes.
enum class SelfAttention2dVariant {
  MultiHead,  ///< qkv → multi-head scaled dot-product attention → proj (no residual).
  NonLocal,   ///< timm's NonLocalAttn: t/p/g → single-head attention → z → norm, plus the input.
};

struct SelfAttention2dOptions {
  explicit SelfAttention2dOptions(int64_t channels) : channels_(channels) {}
  /// Input and output channels C.
  TORCH_ARG(int64_t, channels);
  /// Number of heads (MultiHead); with head_dim 0, C must be a multiple of it.
  TORCH_ARG(int64_t, heads) = 4;
  /// Channels per head; 0 means C / heads.
  TORCH_ARG(int64_t, head_dim) = 0;
  /// Whether the qkv conv has a bias (the proj conv always has one).
  TORCH_ARG(bool, qkv_bias) = true;
  /// Adds a learned relative position bias (MultiHead only); needs feat_size.
  TORCH_ARG(bool, rel_pos) = false;
  /// Map size (H, W) the bias table is made for; other sizes interpolate the table.
  TORCH_ARG(std::vector<int64_t>, feat_size) = {};
  /// MultiHead or NonLocal.
  TORCH_ARG(SelfAttention2dVariant, variant) = SelfAttention2dVariant::MultiHead;
  /// NonLocal: reduced channels rd = make_divisible(C · rd_ratio, rd_divisor) unless rd_channels > 0.
  TORCH_ARG(double, rd_ratio) = 1.0 / 8;
  /// NonLocal: explicit reduced channels (0: from rd_ratio).
  TORCH_ARG(int64_t, rd_channels) = 0;
  /// NonLocal: rd is rounded to a multiple of this (timm's make_divisible).
  TORCH_ARG(int64_t, rd_divisor) = 8;
  /// NonLocal: scale the logits by C^-0.5 (timm's use_scale).
  TORCH_ARG(bool, use_scale) = true;
  /// Query positions (row, col) whose attention rows are recorded; empty = the centre (H/2, W/2).
  TORCH_ARG(std::vector<Position2d>, record_queries) = {};
  /// Fused attention core (ops::relpos_attention), composite (ATen SDPA + explicit bias mask), or Auto.
  TORCH_ARG(Implementation, impl) = Implementation::Auto;
};

class SelfAttention2dImpl : public torch::nn::Cloneable<SelfAttention2dImpl>,
                            public AttentionMapRecorder,
                            public HasImplementation,
                            public SpatialMapSource {
 public:
  explicit SelfAttention2dImpl(const SelfAttention2dOptions& options_);
  explicit SelfAttention2dImpl(int64_t channels) : SelfAttention2dImpl(SelfAttention2dOptions(channels)) {}

  void reset() override;
  /// Re-initialises weights: default conv init (MultiHead), timm's init (NonLocal), table ~ N(0, 0.02²) (Swin).
  void reset_parameters();
  /// [N, C, H, W] → [N, C, H, W].
  torch::Tensor forward(const torch::Tensor& x);
  void pretty_print(std::ostream& stream) const override;
  Implementation implementation() const override { return options.impl(); }
  void set_implementation(Implementation impl) override { options.impl(impl); }
  /// Sets record_queries to `query`, or to every position of the h×w map when nullopt (heads·(H·W)²
  /// floats per image while it runs); the returned function restores the previous record_queries.
  std::function<void()> prepare_spatial_map(int64_t h, int64_t w, const std::optional<Position2d>& query) override;
  /// The attention each key position received in the last recorded forward, [N, H, W], averaged
  /// over heads and the recorded queries (those prepare_spatial_map set); each image's map sums to 1.
  torch::Tensor spatial_map(const std::optional<Position2d>& query) const override;

  /// Channels per head (MultiHead) or the reduced channels rd (NonLocal).
  int64_t inner_dim() const { return inner_dim_; }

  SelfAttention2dOptions options;
  // MultiHead
  torch::nn::Conv2d qkv{nullptr}, proj{nullptr};
  torch::Tensor relative_position_bias_table;  ///< [(2H-1)(2W-1), heads] for feat_size (H, W).
  // NonLocal (timm names)
  torch::nn::Conv2d t{nullptr}, p{nullptr}, g{nullptr}, z{nullptr};
  torch::nn::BatchNorm2d norm{nullptr};

 private:
  torch::Tensor forward_multi_head(const torch::Tensor& x);
  torch::Tensor forward_non_local(const torch::Tensor& x);
  /// Whether the attention core runs the fused op on x (checked for Implementation::Fused).
  bool runs_fused(const torch::Tensor& x) const;
  /// The bias table resized to an h×w map (undefined without rel_pos).
  torch::Tensor table_for(int64_t h, int64_t w) const;
  /// Bias [heads, H·W, H·W] for an H×W map, in `dtype`.
  torch::Tensor position_bias(int64_t h, int64_t w, torch::ScalarType dtype) const;
  /// Flat indices of the recorded queries for an H×W map (checked).
  torch::Tensor recorded_query_index(int64_t h, int64_t w, const torch::Device& device) const;
  /// Records softmax(q_sel kᵀ · scale + bias_sel) as [N, heads, Q, H, W]; q, k: [N, heads, L, d].
  void record_rows(const torch::Tensor& q, const torch::Tensor& k, double scale, int64_t h, int64_t w);
  int64_t inner_dim_ = 0;
};

TORCH_MODULE(SelfAttention2d);

}  // namespace attnkit
