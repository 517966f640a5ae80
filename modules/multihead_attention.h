// Multi-head attention with the math, parameter names and layout of torch.nn.MultiheadAttention.
//
//   head_h = softmax(Q W_q^h (K W_k^h)ᵀ / √head_dim + mask) · V W_v^h,   h = 1..num_heads
//   output = concat(head_1, ..., head_H) · W_oᵀ + b_o
// From "Attention Is All You Need" (Vaswani et al., NeurIPS 2017), section 3.2.2. Built from ATen ops
// and functional::scaled_dot_product_attention; independent of torch::nn::MultiheadAttention, and
// tested to match Python's torch.nn.MultiheadAttention given the same state dict.
//
// Same as torch.nn.MultiheadAttention (so state dicts load by name):
//   - parameters: in_proj_weight [3E, E] when kdim == vdim == embed_dim, otherwise q_proj_weight
//     [E, E], k_proj_weight [E, kdim], v_proj_weight [E, vdim]; in_proj_bias [3E] (with bias);
//     out_proj.weight [E, E], out_proj.bias [E] (with bias); bias_k, bias_v [1, 1, E] (add_bias_kv).
//     Initialisation as torch: xavier-uniform projections, zero biases, xavier-normal bias_k/v.
//   - layout: [L, B, E] (sequence first) by default, [B, L, E] with batch_first; unbatched [L, E].
//   - masks: key_padding_mask [B, S] and attn_mask [L, S] or [B·num_heads, L, S]; a bool mask means
//     true = IGNORE that key (the opposite of functional.h and torch SDPA), a floating mask (query
//     dtype) is added to the scores. Both masks may be given; they are summed, as in torch.
//   - add_bias_kv appends bias_k/bias_v to the keys/values, add_zero_attn appends a zero key/value
//     per head; masks are padded with "attend" for those positions.
//   - dropout on the attention weights in training mode; returned weights are after dropout.
//   - need_weights returns the weights averaged over heads [B, L, S] (average_attn_weights) or per
//     head [B, num_heads, L, S] (batch first in either layout, as torch).
// Departures:
//   - a query whose keys are all masked out gets a zero attention output (so the result is
//     out_proj.bias) and zero weights; torch gives NaN there when need_weights is true.
//   - no is_causal hint (pass a causal attn_mask), no static_k/static_v, no fast path.
//   - forward returns AttentionOutput{output, weights} instead of a tuple; weights are undefined
//     when need_weights is false.
//   - work is done batch first; a sequence-first output is a transposed (non-contiguous) view of
//     it rather than a copy: call .contiguous() before .view() if needed.
#pragma once

#include <attnkit/modules/functional.h>

#include <torch/nn/cloneable.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/pimpl.h>

#include <optional>

namespace attnkit {

struct MultiheadAttentionOptions {
  MultiheadAttentionOptions(int64_t embed_dim, int64_t num_heads) : embed_dim_(embed_dim), num_heads_(num_heads) {}
  /// Model width E (query feature size, and output feature size).
  TORCH_ARG(int64_t, embed_dim);
  /// Number of heads; must divide embed_dim.
  TORCH_ARG(int64_t, num_heads);
  /// Dropout probability on the attention weights, applied in training mode only.
  TORCH_ARG(double, dropout) = 0.0;
  /// Whether the input and output projections have biases.
  TORCH_ARG(bool, bias) = true;
  /// Whether to learn an extra key and value (bias_k, bias_v) appended to every sequence.
  TORCH_ARG(bool, add_bias_kv) = false;
  /// Whether to append an all-zero key and value per head.
  TORCH_ARG(bool, add_zero_attn) = false;
  /// Key feature size; unset means embed_dim.
  TORCH_ARG(std::optional<int64_t>, kdim) = std::nullopt;
  /// Value feature size; unset means embed_dim.
  TORCH_ARG(std::optional<int64_t>, vdim) = std::nullopt;
  /// Whether inputs and output are [batch, length, E]; false (torch's default) means [length, batch, E].
  TORCH_ARG(bool, batch_first) = false;
};

class MultiheadAttentionImpl : public torch::nn::Cloneable<MultiheadAttentionImpl> {
 public:
  MultiheadAttentionImpl(int64_t embed_dim, int64_t num_heads)
      : MultiheadAttentionImpl(MultiheadAttentionOptions(embed_dim, num_heads)) {}
  explicit MultiheadAttentionImpl(const MultiheadAttentionOptions& options);

  void reset() override;
  /// Re-initialises the parameters as torch.nn.MultiheadAttention._reset_parameters does.
  void reset_parameters();
  void pretty_print(std::ostream& stream) const override;

  /// query [L, B, E], key [S, B, kdim], value [S, B, vdim] ([B, ·, ·] with batch_first; [L, E],
  /// [S, kdim], [S, vdim] unbatched). Arguments in the order of torch's forward. Returns output
  /// shaped like the query and, with need_weights, weights [B, L, S] or [B, num_heads, L, S].
  AttentionOutput forward(const torch::Tensor& query, const torch::Tensor& key, const torch::Tensor& value,
                          const torch::Tensor& key_padding_mask = {}, bool need_weights = true,
                          const torch::Tensor& attn_mask = {}, bool average_attn_weights = true);

  int64_t kdim() const { return options.kdim().value_or(options.embed_dim()); }
  int64_t vdim() const { return options.vdim().value_or(options.embed_dim()); }
  /// Whether q, k and v share one packed in_proj_weight (kdim == vdim == embed_dim).
  bool packed_in_proj() const { return kdim() == options.embed_dim() && vdim() == options.embed_dim(); }

  MultiheadAttentionOptions options;
  torch::Tensor in_proj_weight;  // [3E, E], packed_in_proj() only
  torch::Tensor q_proj_weight, k_proj_weight, v_proj_weight;  // otherwise
  torch::Tensor in_proj_bias;    // [3E], with bias
  torch::Tensor bias_k, bias_v;  // [1, 1, E], with add_bias_kv
  torch::nn::Linear out_proj{nullptr};
};

TORCH_MODULE(MultiheadAttention);

}  // namespace attnkit
