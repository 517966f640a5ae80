#include <attnkit/modules/multihead_attention.h>

#include <ATen/ATen.h>
#include <torch/nn/init.h>

#include <limits>
#include <ostream>

namespace attnkit {
namespace {

// Validates a mask's dtype and device against the query (bool, or floating of the query's dtype).
void check_mask_type(const torch::Tensor& mask, const char* name, const torch::Tensor& query) {
  TORCH_CHECK(mask.scalar_type() == torch::kBool || mask.scalar_type() == query.scalar_type(), "MultiheadAttention: ",
              name, " must be bool (true = ignore) or of the query's dtype ", query.scalar_type(), ", got ",
              mask.scalar_type());
  TORCH_CHECK(mask.device() == query.device(), "MultiheadAttention: ", name, " must be on the query's device ",
              query.device(), ", got ", mask.device());
}

// torch.nn.MultiheadAttention's masks as an additive float mask: bool true (ignore) -> -inf, false -> 0.
torch::Tensor to_additive(const torch::Tensor& mask, const torch::Tensor& query) {
  if (mask.scalar_type() != torch::kBool) return mask;
  return at::zeros(mask.sizes(), query.options()).masked_fill(mask, -std::numeric_limits<double>::infinity());
}

// Appends one "attend" (0) column for an extra key (bias_k or the zero key).
torch::Tensor pad_key(const torch::Tensor& additive_mask) {
  return additive_mask.defined() ? at::constant_pad_nd(additive_mask, {0, 1}, 0.0) : additive_mask;
}

}  // namespace

MultiheadAttentionImpl::MultiheadAttentionImpl(const MultiheadAttentionOptions& options) : options(options) {
  reset();
}

void MultiheadAttentionImpl::reset() {
  const int64_t E = options.embed_dim(), H = options.num_heads();
  TORCH_CHECK(E > 0, "MultiheadAttention: embed_dim must be positive, got ", E);
  TORCH_CHECK(H > 0, "MultiheadAttention: num_heads must be positive, got ", H);
  TORCH_CHECK(E % H == 0, "MultiheadAttention: embed_dim (", E, ") must be divisible by num_heads (", H, ")");
  TORCH_CHECK(options.dropout() >= 0.0 && options.dropout() < 1.0,
              "MultiheadAttention: dropout must be in [0, 1), got ", options.dropout());
  TORCH_CHECK(kdim() > 0, "MultiheadAttention: kdim must be positive, got ", kdim());
  TORCH_CHECK(vdim() > 0, "MultiheadAttention: vdim must be positive, got ", vdim());

  if (packed_in_proj()) {
    in_proj_weight = register_parameter("in_proj_weight", torch::empty({3 * E, E}));
  } else {
    q_proj_weight = register_parameter("q_proj_weight", torch::empty({E, E}));
    k_proj_weight = register_parameter("k_proj_weight", torch::empty({E, kdim()}));
    v_proj_weight = register_parameter("v_proj_weight", torch::empty({E, vdim()}));
  }
  if (options.bias()) in_proj_bias = register_parameter("in_proj_bias", torch::empty({3 * E}));
  out_proj = register_module("out_proj", torch::nn::Linear(torch::nn::LinearOptions(E, E).bias(options.bias())));
  if (options.add_bias_kv()) {
    bias_k = register_parameter("bias_k", torch::empty({1, 1, E}));
    bias_v = register_parameter("bias_v", torch::empty({1, 1, E}));
  }
  reset_parameters();
}

void MultiheadAttentionImpl::reset_parameters() {
  namespace init = torch::nn::init;
  torch::NoGradGuard no_grad;
  if (packed_in_proj()) {
    init::xavier_uniform_(in_proj_weight);
  } else {
    init::xavier_uniform_(q_proj_weight);
    init::xavier_uniform_(k_proj_weight);
    init::xavier_uniform_(v_proj_weight);
  }
  if (options.bias()) {
    in_proj_bias.zero_();
    out_proj->bias.zero_();
  }
  if (options.add_bias_kv()) {
    init::xavier_normal_(bias_k);
    init::xavier_normal_(bias_v);
  }
}

void MultiheadAttentionImpl::pretty_print(std::ostream& stream) const {
  stream << "attnkit::MultiheadAttention(embed_dim=" << options.embed_dim() << ", num_heads=" << options.num_heads()
         << ", dropout=" << options.dropout() << ", bias=" << (options.bias() ? "true" : "false");
  if (options.add_bias_kv()) stream << ", add_bias_kv=true";
  if (options.add_zero_attn()) stream << ", add_zero_attn=true";
  if (!packed_in_proj()) stream << ", kdim=" << kdim() << ", vdim=" << vdim();
  stream << ", batch_first=" << (options.batch_first() ? "true" : "false") << ")";
}

AttentionOutput MultiheadAttentionImpl::forward(const torch::Tensor& query, const torch::Tensor& key,
                                                const torch::Tensor& value, const torch::Tensor& key_padding_mask,
                                                bool need_weights, const torch::Tensor& attn_mask,
                                                bool average_attn_weights) {
  const int64_t E = options.embed_dim(), H = options.num_heads(), hd = E / H;
  TORCH_CHECK(query.defined() && key.defined() && value.defined(),
              "MultiheadAttention: query, key and value must be defined tensors");
  TORCH_CHECK((query.dim() == 3 || query.dim() == 2) && query.size(-1) == E, "MultiheadAttention: query must be ",
              options.batch_first() ? "[B, L, " : "[L, B, ", "embed_dim=", E, "] (or [L, embed_dim=", E,
              "] unbatched), got shape ", query.sizes());
  const bool batched = query.dim() == 3;
  TORCH_CHECK(key.dim() == query.dim() && key.size(-1) == kdim(), "MultiheadAttention: key must be ",
              !batched ? "[S, " : options.batch_first() ? "[B, S, " : "[S, B, ", "kdim=", kdim(),
              "] (the query's rank ", query.dim(), "), got shape ", key.sizes());
  TORCH_CHECK(value.dim() == query.dim() && value.size(-1) == vdim(), "MultiheadAttention: value must be ",
              !batched ? "[S, " : options.batch_first() ? "[B, S, " : "[S, B, ", "vdim=", vdim(),
              "] (the query's rank ", query.dim(), "), got shape ", value.sizes());
  const auto& w = out_proj->weight;
  for (const auto* t : {&query, &key, &value}) {
    const char* name = t == &query ? "query" : t == &key ? "key" : "value";
    TORCH_CHECK(t->scalar_type() == w.scalar_type(), "MultiheadAttention: ", name,
                " dtype must equal the parameters' dtype ", w.scalar_type(), ", got ", t->scalar_type());
    TORCH_CHECK(t->device() == w.device(), "MultiheadAttention: ", name, " must be on the parameters' device ",
                w.device(), ", got ", t->device());
  }

  // Work batch first: [B, L, E], [B, S, kdim], [B, S, vdim].
  auto to_batch_first = [&](const torch::Tensor& t) {
    return !batched ? t.unsqueeze(0) : options.batch_first() ? t : t.transpose(0, 1);
  };
  auto q = to_batch_first(query), k = to_batch_first(key), v = to_batch_first(value);
  const int64_t B = q.size(0), L = q.size(1), S = k.size(1);
  TORCH_CHECK(k.size(0) == B, "MultiheadAttention: key's batch size must equal the query's B=", B, ", got ",
              k.size(0));
  TORCH_CHECK(v.size(0) == B && v.size(1) == S, "MultiheadAttention: value must have the key's batch size B=", B,
              " and length S=", S, ", got shape ", value.sizes());

  // Masks, as additive float masks broadcastable to [B, H, L, S].
  torch::Tensor attn, kpm;
  if (attn_mask.defined()) {
    check_mask_type(attn_mask, "attn_mask", query);
    const bool is2d = attn_mask.dim() == 2 && attn_mask.size(0) == L && attn_mask.size(1) == S;
    const bool is3d = attn_mask.dim() == 3 && attn_mask.size(0) == B * H && attn_mask.size(1) == L &&
                      attn_mask.size(2) == S;
    TORCH_CHECK(is2d || is3d, "MultiheadAttention: attn_mask must be [L=", L, ", S=", S, "] or [B*num_heads=", B * H,
                ", L=", L, ", S=", S, "], got shape ", attn_mask.sizes());
    attn = to_additive(is3d ? attn_mask.reshape({B, H, L, S}) : attn_mask, query);
  }
  if (key_padding_mask.defined()) {
    check_mask_type(key_padding_mask, "key_padding_mask", query);
    if (batched) {
      TORCH_CHECK(key_padding_mask.dim() == 2 && key_padding_mask.size(0) == B && key_padding_mask.size(1) == S,
                  "MultiheadAttention: key_padding_mask must be [B=", B, ", S=", S, "], got shape ",
                  key_padding_mask.sizes());
    } else {
      TORCH_CHECK(key_padding_mask.dim() == 1 && key_padding_mask.size(0) == S,
                  "MultiheadAttention: key_padding_mask must be [S=", S, "] for unbatched input, got shape ",
                  key_padding_mask.sizes());
    }
    kpm = to_additive(key_padding_mask, query).reshape({B, 1, 1, S});
  }

  // Input projections.
  torch::Tensor wq, wk, wv, bq, bk, bv;
  if (packed_in_proj()) {
    auto ws = in_proj_weight.chunk(3);
    wq = ws[0], wk = ws[1], wv = ws[2];
  } else {
    wq = q_proj_weight, wk = k_proj_weight, wv = v_proj_weight;
  }
  if (options.bias()) {
    auto bs = in_proj_bias.chunk(3);
    bq = bs[0], bk = bs[1], bv = bs[2];
  }
  auto qp = at::linear(q, wq, bq), kp = at::linear(k, wk, bk), vp = at::linear(v, wv, bv);
  if (options.add_bias_kv()) {
    kp = at::cat({kp, bias_k.expand({B, 1, E})}, 1);
    vp = at::cat({vp, bias_v.expand({B, 1, E})}, 1);
    attn = pad_key(attn), kpm = pad_key(kpm);
  }
  // Split heads: [B, H, len, hd].
  auto qh = qp.reshape({B, L, H, hd}).transpose(1, 2);
  auto kh = kp.reshape({B, kp.size(1), H, hd}).transpose(1, 2);
  auto vh = vp.reshape({B, vp.size(1), H, hd}).transpose(1, 2);
  if (options.add_zero_attn()) {
    kh = at::cat({kh, at::zeros({B, H, 1, hd}, kh.options())}, 2);
    vh = at::cat({vh, at::zeros({B, H, 1, hd}, vh.options())}, 2);
    attn = pad_key(attn), kpm = pad_key(kpm);
  }
  torch::Tensor mask = attn.defined() && kpm.defined() ? attn + kpm : attn.defined() ? attn : kpm;

  auto res = functional::scaled_dot_product_attention(
      qh, kh, vh,
      functional::AttentionFuncOptions().mask(mask).need_weights(need_weights).dropout(
          is_training() ? options.dropout() : 0.0));
  auto out = out_proj(res.output.transpose(1, 2).reshape({B, L, E}));
  auto weights = res.weights;
  if (need_weights && average_attn_weights) weights = weights.mean(1);
  if (!batched) {
    out = out.squeeze(0);
    if (need_weights) weights = weights.squeeze(0);
  } else if (!options.batch_first()) {
    out = out.transpose(0, 1);
  }
  return {out, need_weights ? weights : torch::Tensor()};
}

}  // namespace attnkit
