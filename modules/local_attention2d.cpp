#include <attnkit/modules/local_attention2d.h>
#include <attnkit/modules/ops/neighborhood_attention.h>
#include <attnkit/modules/relative_position.h>

#include <torch/nn/init.h>

#include <cmath>
#include <ostream>

namespace attnkit {

LocalAttention2dImpl::LocalAttention2dImpl(const LocalAttention2dOptions& options_) : options(options_) { reset(); }

void LocalAttention2dImpl::reset() {
  const auto& o = options;
  TORCH_CHECK(o.channels() > 0, "LocalAttention2d: channels must be positive, got ", o.channels());
  TORCH_CHECK(o.heads() > 0, "LocalAttention2d: heads must be positive, got ", o.heads());
  TORCH_CHECK(o.channels() % o.heads() == 0, "LocalAttention2d: channels (", o.channels(),
              ") must be a multiple of heads (", o.heads(), ")");
  TORCH_CHECK(o.kernel_size() >= 1 && o.kernel_size() % 2 == 1, "LocalAttention2d: kernel_size must be odd and >= 1, got ",
              o.kernel_size());
  TORCH_CHECK(o.dilation() >= 1, "LocalAttention2d: dilation must be >= 1, got ", o.dilation());
  qkv = register_module("qkv", torch::nn::Conv2d(torch::nn::Conv2dOptions(o.channels(), 3 * o.channels(), 1)
                                                     .bias(o.qkv_bias())));
  proj = register_module("proj", torch::nn::Conv2d(torch::nn::Conv2dOptions(o.channels(), o.channels(), 1)));
  if (o.rel_pos_bias()) {
    const int64_t side = 2 * o.kernel_size() - 1;
    rpb = register_parameter("rpb", torch::zeros({o.heads(), side, side}));
  } else {
    rpb = torch::Tensor();
  }
  reset_parameters();
}

void LocalAttention2dImpl::reset_parameters() {
  torch::NoGradGuard no_grad;
  // NAT's trunc_normal_(std=.02) truncates at ±2 absolute, i.e. 100σ: a plain normal.
  if (rpb.defined()) rpb.normal_(0.0, 0.02);
}

torch::Tensor LocalAttention2dImpl::forward(const torch::Tensor& x) {
  const auto& o = options;
  TORCH_CHECK(x.defined(), "LocalAttention2d: input x is undefined");
  TORCH_CHECK(x.dim() == 4, "LocalAttention2d: input x must be 4-D [N, C, H, W], got ", x.dim(), "-D ", x.sizes());
  TORCH_CHECK(x.size(1) == o.channels(), "LocalAttention2d: input x must have channels = ", o.channels(), ", got ",
              x.size(1));
  TORCH_CHECK(at::isFloatingType(x.scalar_type()), "LocalAttention2d: input x must be floating point, got ",
              x.scalar_type());
  const int64_t h = x.size(2), w = x.size(3), span = o.kernel_size() * o.dilation();
  TORCH_CHECK(h >= span && w >= span, "LocalAttention2d: input x of size ", h, "x", w,
              " is smaller than the window: H and W must be >= kernel_size*dilation = ", span);
  const bool kernel = ops::has_neighborhood_attention_kernel(x.device());
  if (detail::use_fused_kernel(o.impl(), FusedOp::NeighborhoodAttention, x.device(), kernel, recording(), "LocalAttention2d"))
    return forward_fused(x);
  return forward_composite(x);
}

torch::Tensor LocalAttention2dImpl::spatial_map(const std::optional<Position2d>& query) const {
  // [N, heads, H, W, k, k] → per query, the weights of its k² window slots, then onto key positions.
  const auto& rec = last_attention();
  const int64_t n = rec.size(0), h = rec.size(2), w = rec.size(3), l = h * w;
  const auto nb = neighborhood_index(h, w, options.kernel_size(), options.dilation(), rec.device());
  const auto p = rec.mean(1).reshape({n, l, -1});
  auto received = torch::zeros({n, l}, p.options());
  if (query) {
    const int64_t qi = query->first * w + query->second;
    received.index_add_(1, nb.keys[qi], p.select(1, qi));
  } else {
    received.index_add_(1, nb.keys.reshape(-1), p.reshape({n, -1}));
    received.div_(static_cast<double>(l));
  }
  return received.view({n, h, w});
}

namespace {

/// A 1×1 conv (weight [Cout, C, 1, 1]) on rows [N, H, W, C] (contiguous): one GEMM, [N, H, W, Cout].
torch::Tensor conv1x1_rows(const torch::Tensor& rows, const torch::nn::Conv2d& conv) {
  return torch::linear(rows, conv->weight.flatten(1), conv->bias);
}

}  // namespace

torch::Tensor LocalAttention2dImpl::forward_fused(const torch::Tensor& x) {
  const auto& o = options;
  // Rows [N, H, W, C] (a view of a channels-last x, else one copy of x: cheaper than GEMMs on a
  // transposed operand), then [N, H, W, 3C] rows which the op reads in place.
  auto qkv_rows = conv1x1_rows(x.permute({0, 2, 3, 1}).contiguous(), qkv);
  auto out = ops::neighborhood_attention_qkv(qkv_rows.permute({0, 3, 1, 2}), o.heads(), rpb, o.kernel_size(),
                                             o.dilation());
  // The op's output is stored [N, H, W, heads, head_dim]: rows of C for the output projection.
  auto y = conv1x1_rows(ops::merge_heads(out).permute({0, 2, 3, 1}), proj).permute({0, 3, 1, 2});
  return x.suggest_memory_format() == torch::MemoryFormat::ChannelsLast ? y : y.contiguous();
}

torch::Tensor LocalAttention2dImpl::forward_composite(const torch::Tensor& x) {
  const auto& o = options;
  const int64_t n = x.size(0), h = x.size(2), w = x.size(3), l = h * w;
  const int64_t k = o.kernel_size(), k2 = k * k, heads = o.heads(), d = o.channels() / heads;

  const auto nb = neighborhood_index(h, w, k, o.dilation(), x.device());
  // [N, 3C, H, W] → [3, N, heads, L, d]
  auto qkv_out = qkv(x).reshape({n, 3, heads, d, l}).permute({1, 0, 2, 4, 3});
  auto q = qkv_out[0] * (1.0 / std::sqrt(static_cast<double>(d)));
  // Gather each query's k² keys and values: [N, heads, L, k², d].
  auto gather = [&](const torch::Tensor& t) { return t.index_select(2, nb.keys.view(-1)).view({n, heads, l, k2, d}); };
  auto keys = gather(qkv_out[1]), values = gather(qkv_out[2]);
  // logits [N, heads, L, k²] = q · key per slot
  auto logits = torch::matmul(keys, q.unsqueeze(-1)).squeeze(-1);
  if (rpb.defined()) {
    auto bias = rpb.reshape({heads, -1}).index_select(1, nb.bias.view(-1)).view({heads, l, k2});
    logits = logits + bias.to(logits.scalar_type());
  }
  auto attn = torch::softmax(logits, -1);
  if (recording()) record(attn.view({n, heads, h, w, k, k}));
  // [N, heads, L, 1, k²] @ [N, heads, L, k², d] → [N, heads, L, d] → [N, C, H, W]
  auto out = torch::matmul(attn.unsqueeze(-2), values).squeeze(-2);
  return proj(out.transpose(-1, -2).reshape({n, heads * d, h, w}));
}

void LocalAttention2dImpl::pretty_print(std::ostream& stream) const {
  const auto& o = options;
  stream << "attnkit::LocalAttention2d(channels=" << o.channels() << ", heads=" << o.heads()
         << ", kernel_size=" << o.kernel_size() << ", dilation=" << o.dilation()
         << ", qkv_bias=" << (o.qkv_bias() ? "true" : "false") << ", rel_pos_bias=" << (o.rel_pos_bias() ? "true" : "false")
         << ")";
}

}  // namespace attnkit
