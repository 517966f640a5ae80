#include <attnkit/modules/additive_attention.h>

#include <ATen/ATen.h>

#include <limits>
#include <ostream>

namespace attnkit {

AdditiveAttentionImpl::AdditiveAttentionImpl(const AdditiveAttentionOptions& options) : options(options) {
  reset();
}

void AdditiveAttentionImpl::reset() {
  TORCH_CHECK(options.query_dim() > 0, "AdditiveAttention: query_dim must be positive, got ", options.query_dim());
  TORCH_CHECK(options.key_dim() > 0, "AdditiveAttention: key_dim must be positive, got ", options.key_dim());
  TORCH_CHECK(options.hidden_dim() > 0, "AdditiveAttention: hidden_dim must be positive, got ",
              options.hidden_dim());
  TORCH_CHECK(options.dropout() >= 0.0 && options.dropout() < 1.0, "AdditiveAttention: dropout must be in [0, 1), got ",
              options.dropout());
  // W_q and W_k are summed inside the tanh, so one bias (on W_k) is as expressive as two.
  query_proj = register_module(
      "query_proj",
      torch::nn::Linear(torch::nn::LinearOptions(options.query_dim(), options.hidden_dim()).bias(false)));
  key_proj = register_module(
      "key_proj",
      torch::nn::Linear(torch::nn::LinearOptions(options.key_dim(), options.hidden_dim()).bias(options.bias())));
  score_proj = register_module("score_proj",
                               torch::nn::Linear(torch::nn::LinearOptions(options.hidden_dim(), 1).bias(false)));
}

void AdditiveAttentionImpl::pretty_print(std::ostream& stream) const {
  stream << "attnkit::AdditiveAttention(query_dim=" << options.query_dim() << ", key_dim=" << options.key_dim()
         << ", hidden_dim=" << options.hidden_dim() << ", bias=" << (options.bias() ? "true" : "false")
         << ", dropout=" << options.dropout() << ")";
}

AttentionOutput AdditiveAttentionImpl::forward(const torch::Tensor& query, const torch::Tensor& key,
                                               const torch::Tensor& value, const torch::Tensor& mask) {
  TORCH_CHECK(query.defined() && key.defined() && value.defined(),
              "AdditiveAttention: query, key and value must be defined tensors");
  TORCH_CHECK(query.dim() == 3 && query.size(2) == options.query_dim(),
              "AdditiveAttention: query must be [batch, Lq, query_dim=", options.query_dim(), "], got shape ",
              query.sizes());
  TORCH_CHECK(key.dim() == 3 && key.size(2) == options.key_dim(), "AdditiveAttention: key must be [batch, Lk, key_dim=",
              options.key_dim(), "], got shape ", key.sizes());
  TORCH_CHECK(value.dim() == 3, "AdditiveAttention: value must be [batch, Lk, Dv], got shape ", value.sizes());
  const int64_t B = query.size(0), Lq = query.size(1), Lk = key.size(1);
  TORCH_CHECK(key.size(0) == B, "AdditiveAttention: key's batch size must equal the query's B=", B, ", got ",
              key.size(0));
  TORCH_CHECK(value.size(0) == B && value.size(1) == Lk, "AdditiveAttention: value must be [B=", B, ", Lk=", Lk,
              ", Dv] like the key, got shape ", value.sizes());
  const auto& w = query_proj->weight;
  TORCH_CHECK(query.scalar_type() == w.scalar_type(), "AdditiveAttention: query dtype must equal the parameters' dtype ",
              w.scalar_type(), ", got ", query.scalar_type());
  TORCH_CHECK(key.scalar_type() == w.scalar_type(), "AdditiveAttention: key dtype must equal the parameters' dtype ",
              w.scalar_type(), ", got ", key.scalar_type());
  TORCH_CHECK(value.scalar_type() == w.scalar_type(),
              "AdditiveAttention: value dtype must equal the parameters' dtype ", w.scalar_type(), ", got ",
              value.scalar_type());
  TORCH_CHECK(query.device() == w.device(), "AdditiveAttention: query must be on the parameters' device ", w.device(),
              ", got ", query.device());
  TORCH_CHECK(key.device() == w.device(), "AdditiveAttention: key must be on the parameters' device ", w.device(),
              ", got ", key.device());
  TORCH_CHECK(value.device() == w.device(), "AdditiveAttention: value must be on the parameters' device ", w.device(),
              ", got ", value.device());
  torch::Tensor keep;
  if (mask.defined()) {
    TORCH_CHECK(mask.scalar_type() == torch::kBool, "AdditiveAttention: mask must be bool (true = keep), got dtype ",
                mask.scalar_type());
    TORCH_CHECK(mask.device() == w.device(), "AdditiveAttention: mask must be on the parameters' device ", w.device(),
                ", got ", mask.device());
    const bool per_key = mask.dim() == 2 && mask.size(0) == B && mask.size(1) == Lk;
    const bool per_query = mask.dim() == 3 && mask.size(0) == B && mask.size(1) == Lq && mask.size(2) == Lk;
    TORCH_CHECK(per_key || per_query, "AdditiveAttention: mask must be [B=", B, ", Lk=", Lk, "] or [B=", B,
                ", Lq=", Lq, ", Lk=", Lk, "], got shape ", mask.sizes());
    keep = per_key ? mask.unsqueeze(1) : mask;
  }

  // [B, Lq, 1, H] + [B, 1, Lk, H] -> tanh -> v -> [B, Lq, Lk]
  auto hidden = at::tanh(query_proj(query).unsqueeze(2) + key_proj(key).unsqueeze(1));
  auto scores = score_proj(hidden).squeeze(-1);
  torch::Tensor weights;
  if (keep.defined()) {
    scores = scores.masked_fill(keep.logical_not(), -std::numeric_limits<double>::infinity());
    weights = functional::safe_softmax(scores);
  } else if (at::isReducedFloatingType(scores.scalar_type())) {
    weights = at::softmax(scores, -1, at::kFloat).to(scores.scalar_type());
  } else {
    weights = at::softmax(scores, -1);
  }
  if (is_training() && options.dropout() > 0.0) weights = at::dropout(weights, options.dropout(), /*train=*/true);
  return {at::matmul(weights, value), weights};
}

}  // namespace attnkit
