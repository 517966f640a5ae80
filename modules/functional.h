// Dot-product attention as plain functions over tensors shaped [..., length, dim].
//
// Computes  weights = softmax(scale · Q Kᵀ + mask)  and  output = weights · V,  over the last two dims,
// with any number of leading batch dims (e.g. [batch, heads, L, D]).
//   - scaled_dot_product_attention: scale = 1/√D by default ("Attention Is All You Need",
//     Vaswani et al. 2017, eq. 1).
//   - dot_product_attention: scale = 1 by default (the "dot" score of Luong et al. 2015).
// Either default can be overridden with AttentionFuncOptions::scale.
//
// Same semantics as torch.nn.functional.scaled_dot_product_attention (and tested against it):
//   - a boolean mask means true = attend, false = masked out (the convention of torch SDPA's bool
//     attn_mask; note torch.nn.MultiheadAttention uses the opposite, see multihead_attention.h);
//   - a floating mask is added to the scores (use -inf to mask out);
//   - the mask broadcasts to [..., Lq, Lk];
//   - causal = true keeps key j for query i when j <= i (top-left aligned lower triangle, as torch).
// Departures from torch SDPA:
//   - causal may be combined with an explicit mask (torch rejects that); both then apply.
//   - the weights can be returned (need_weights); torch SDPA never returns them.
//   - the leading dims of query, key and value must be equal (no broadcasting between them), so a
//     shape error names the argument at fault.
// A query row whose keys are all masked out gets zero weights and a zero output (no NaN, gradients
// zero), exactly as torch SDPA does; plain softmax would give NaN.
// Reduced-precision inputs (fp16/bf16) have their softmax computed in float32.
#pragma once

#include <torch/arg.h>
#include <torch/types.h>

#include <optional>

namespace attnkit {

/// What an attention call returns: the attended values and (when asked for) the attention weights.
struct AttentionOutput {
  /// The attended values, e.g. [..., Lq, Dv].
  torch::Tensor output;
  /// The attention weights, e.g. [..., Lq, Lk]; undefined unless weights were asked for.
  torch::Tensor weights;
};

namespace functional {

/// Options of dot_product_attention and scaled_dot_product_attention.
struct AttentionFuncOptions {
  /// Multiplier of Q Kᵀ; unset means 1/√D for scaled_dot_product_attention and 1 for dot_product_attention.
  TORCH_ARG(std::optional<double>, scale) = std::nullopt;
  /// Mask broadcastable to [..., Lq, Lk]: bool (true = attend) or floating (added to the scores,
  /// same dtype as the query). Undefined = no mask.
  TORCH_ARG(torch::Tensor, mask) = {};
  /// Whether query i may only attend keys j <= i.
  TORCH_ARG(bool, causal) = false;
  /// Whether to return the attention weights in AttentionOutput::weights.
  TORCH_ARG(bool, need_weights) = false;
  /// Dropout probability applied to the weights (always applied when > 0: callers pass 0 in eval).
  /// The returned weights are the ones used, i.e. after dropout, as torch.nn.MultiheadAttention does.
  TORCH_ARG(double, dropout) = 0.0;
};

/// softmax(q·kᵀ·scale + mask)·v with scale = 1/√D unless options.scale() is set. See the file comment.
AttentionOutput scaled_dot_product_attention(const torch::Tensor& query, const torch::Tensor& key,
                                             const torch::Tensor& value,
                                             const AttentionFuncOptions& options = {});

/// softmax(q·kᵀ·scale + mask)·v with scale = 1 unless options.scale() is set. See the file comment.
AttentionOutput dot_product_attention(const torch::Tensor& query, const torch::Tensor& key,
                                      const torch::Tensor& value, const AttentionFuncOptions& options = {});

/// Softmax over the last dim where a row whose entries are all -inf gives zeros instead of NaN,
/// with a zero (not NaN) gradient for it. Reduced-precision input is computed in float32 and
/// returned in its own dtype.
torch::Tensor safe_softmax(const torch::Tensor& scores);

}  // namespace functional
}  // namespace attnkit
