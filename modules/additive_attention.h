// Additive (Bahdanau) attention over sequences [batch, length, dim].
//
// For every query i and key j:   score[i, j] = vᵀ · tanh(W_q · q_i + W_k · k_j)
//                                 weights[i, :] = softmax over the keys of score[i, :]
//                                 output[i] = Σ_j weights[i, j] · value_j
// From "Neural Machine Translation by Jointly Learning to Align and Translate" (Bahdanau, Cho,
// Bengio, ICLR 2015), eq. 6 and appendix A.1.2, where q_i is the decoder state s_{i-1} and the keys
// and values are both the annotations h_j.
//
// Departures from the paper:
//   - keys and values are separate inputs (pass the same tensor twice for the paper's form), and
//     there may be several queries per batch element (Lq), all scored in one call;
//   - `bias` (off by default, as in the paper) adds a learnt bias inside the tanh, on W_k;
//   - an optional mask and dropout on the weights (training only).
//
// Mask convention: boolean, true = KEEP (attend to this key), false = masked out; shape [B, Lk]
// (per key) or [B, Lq, Lk] (per query and key). This is the convention of torch SDPA's bool mask and
// the opposite of torch.nn.MultiheadAttention's key_padding_mask (true = ignore).
// A query whose keys are all masked out gets zero weights and a zero output (no NaN, zero gradient).
//
// Cost: the tanh is evaluated on a [B, Lq, Lk, hidden_dim] tensor; this block is meant for modest
// sequence lengths.
//
// Parameters: query_proj.weight [hidden_dim, query_dim], key_proj.weight [hidden_dim, key_dim]
// (+ key_proj.bias [hidden_dim] with bias), score_proj.weight [1, hidden_dim] (v).
#pragma once

#include <attnkit/modules/functional.h>

#include <torch/nn/cloneable.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/pimpl.h>

namespace attnkit {

struct AdditiveAttentionOptions {
  AdditiveAttentionOptions(int64_t query_dim, int64_t key_dim, int64_t hidden_dim)
      : query_dim_(query_dim), key_dim_(key_dim), hidden_dim_(hidden_dim) {}
  /// Feature size Dq of the query.
  TORCH_ARG(int64_t, query_dim);
  /// Feature size Dk of the key (the value's feature size Dv is free).
  TORCH_ARG(int64_t, key_dim);
  /// Size of the hidden layer inside the tanh (the length of v).
  TORCH_ARG(int64_t, hidden_dim);
  /// Whether to learn a bias inside the tanh (on key_proj); the paper has none.
  TORCH_ARG(bool, bias) = false;
  /// Dropout probability on the attention weights, applied in training mode only.
  TORCH_ARG(double, dropout) = 0.0;
};

class AdditiveAttentionImpl : public torch::nn::Cloneable<AdditiveAttentionImpl> {
 public:
  AdditiveAttentionImpl(int64_t query_dim, int64_t key_dim, int64_t hidden_dim)
      : AdditiveAttentionImpl(AdditiveAttentionOptions(query_dim, key_dim, hidden_dim)) {}
  explicit AdditiveAttentionImpl(const AdditiveAttentionOptions& options);

  void reset() override;
  void pretty_print(std::ostream& stream) const override;

  /// query [B, Lq, Dq], key [B, Lk, Dk], value [B, Lk, Dv], mask bool [B, Lk] or [B, Lq, Lk]
  /// (true = keep, optional). Returns output [B, Lq, Dv] and weights [B, Lq, Lk].
  AttentionOutput forward(const torch::Tensor& query, const torch::Tensor& key, const torch::Tensor& value,
                          const torch::Tensor& mask = {});

  AdditiveAttentionOptions options;
  torch::nn::Linear query_proj{nullptr};
  torch::nn::Linear key_proj{nullptr};
  torch::nn::Linear score_proj{nullptr};
};

TORCH_MODULE(AdditiveAttention);

}  // namespace attnkit
