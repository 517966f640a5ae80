#include <attnkit/modules/batch_norm.h>
#include <attnkit/modules/ops/relpos_attention.h>
#include <attnkit/modules/relative_position.h>
#include <attnkit/modules/self_attention2d.h>

#include <torch/nn/init.h>

#include <cmath>
#include <ostream>

namespace attnkit {
namespace {

// timm's make_divisible: round to the nearest multiple of `divisor` (at least `divisor`), and never
// go more than 10% below v.
int64_t make_divisible(double v, int64_t divisor) {
  int64_t out = std::max<int64_t>(divisor, static_cast<int64_t>(v + divisor / 2.0) / divisor * divisor);
  if (out < 0.9 * v) out += divisor;
  return out;
}

torch::nn::Conv2d conv1x1(int64_t in, int64_t out, bool bias) {
  return torch::nn::Conv2d(torch::nn::Conv2dOptions(in, out, 1).bias(bias));
}

void check_input(const torch::Tensor& x, int64_t channels) {
  TORCH_CHECK(x.defined(), "SelfAttention2d: input x is undefined");
  TORCH_CHECK(x.dim() == 4, "SelfAttention2d: input x must be 4-D [N, C, H, W], got ", x.dim(), "-D ", x.sizes());
  TORCH_CHECK(x.size(1) == channels, "SelfAttention2d: input x must have channels = ", channels, ", got ",
              x.size(1));
  TORCH_CHECK(at::isFloatingType(x.scalar_type()), "SelfAttention2d: input x must be floating point, got ",
              x.scalar_type());
}

const char* variant_name(SelfAttention2dVariant v) {
  return v == SelfAttention2dVariant::NonLocal ? "non_local" : "mhsa";
}

}  // namespace

SelfAttention2dImpl::SelfAttention2dImpl(const SelfAttention2dOptions& options_) : options(options_) { reset(); }

void SelfAttention2dImpl::reset() {
  const auto& o = options;
  TORCH_CHECK(o.channels() > 0, "SelfAttention2d: channels must be positive, got ", o.channels());
  if (o.variant() == SelfAttention2dVariant::NonLocal) {
    TORCH_CHECK(!o.rel_pos(), "SelfAttention2d: rel_pos must be false for the non_local variant");
    TORCH_CHECK(o.rd_channels() >= 0, "SelfAttention2d: rd_channels must be >= 0, got ", o.rd_channels());
    TORCH_CHECK(o.rd_divisor() > 0, "SelfAttention2d: rd_divisor must be positive, got ", o.rd_divisor());
    TORCH_CHECK(o.rd_channels() > 0 || o.rd_ratio() > 0, "SelfAttention2d: rd_ratio must be positive, got ",
                o.rd_ratio());
    inner_dim_ = o.rd_channels() > 0 ? o.rd_channels() : make_divisible(o.channels() * o.rd_ratio(), o.rd_divisor());
    t = register_module("t", conv1x1(o.channels(), inner_dim_, true));
    p = register_module("p", conv1x1(o.channels(), inner_dim_, true));
    g = register_module("g", conv1x1(o.channels(), inner_dim_, true));
    z = register_module("z", conv1x1(inner_dim_, o.channels(), true));
    norm = register_module("norm", torch::nn::BatchNorm2d(o.channels()));
  } else {
    TORCH_CHECK(o.heads() > 0, "SelfAttention2d: heads must be positive, got ", o.heads());
    TORCH_CHECK(o.head_dim() >= 0, "SelfAttention2d: head_dim must be >= 0, got ", o.head_dim());
    TORCH_CHECK(o.head_dim() > 0 || o.channels() % o.heads() == 0, "SelfAttention2d: channels (", o.channels(),
                ") must be a multiple of heads (", o.heads(), ") unless head_dim is set");
    inner_dim_ = o.head_dim() > 0 ? o.head_dim() : o.channels() / o.heads();
    qkv = register_module("qkv", conv1x1(o.channels(), 3 * o.heads() * inner_dim_, o.qkv_bias()));
    proj = register_module("proj", conv1x1(o.heads() * inner_dim_, o.channels(), true));
    if (o.rel_pos()) {
      TORCH_CHECK(o.feat_size().size() == 2 && o.feat_size()[0] > 0 && o.feat_size()[1] > 0,
                  "SelfAttention2d: feat_size must be {H, W} with H, W > 0 when rel_pos is on, got ", o.feat_size());
      const int64_t rows = (2 * o.feat_size()[0] - 1) * (2 * o.feat_size()[1] - 1);
      relative_position_bias_table =
          register_parameter("relative_position_bias_table", torch::zeros({rows, o.heads()}));
    }
  }
  reset_parameters();
}

void SelfAttention2dImpl::reset_parameters() {
  torch::NoGradGuard no_grad;
  if (options.variant() == SelfAttention2dVariant::NonLocal) {
    // timm NonLocalAttn.reset_parameters: He init (fan_out) for the convs, zero biases, and a zero
    // norm so that the block starts as the identity.
    for (auto* conv : {&t, &p, &g, &z}) {
      torch::nn::init::kaiming_normal_((*conv)->weight, 0.0, torch::kFanOut, torch::kReLU);
      (*conv)->bias.zero_();
    }
    norm->weight.zero_();
    norm->bias.zero_();
  } else if (relative_position_bias_table.defined()) {
    // Swin's trunc_normal_(std=.02) truncates at ±2 absolute, i.e. 100σ: a plain normal.
    relative_position_bias_table.normal_(0.0, 0.02);
  }
}

torch::Tensor SelfAttention2dImpl::table_for(int64_t h, int64_t w) const {
  if (!relative_position_bias_table.defined()) return {};
  const auto& fs = options.feat_size();
  return resize_relative_position_table(relative_position_bias_table, fs[0], fs[1], h, w);
}

bool SelfAttention2dImpl::runs_fused(const torch::Tensor& x) const {
  const bool possible = ops::has_relpos_attention_kernel(x.device()) &&
                        (!x.is_cuda() || inner_dim_ <= ops::kRelposAttentionMaxCudaHeadDim);
  // Where Auto prefers the op (and kernel_verification() lists it for the device): multi-head with a
  // bias, the only O(H·W)-memory path. Without one: on the CPU the fused op too (ATen's SDPA is as
  // fast on contiguous q, k, v, but this block's q, k, v, views of the NCHW qkv output, send it to
  // its O((H·W)²) math fallback: 4x slower at 56×56, README); on CUDA SDPA, fed q, k, v with a
  // contiguous head dim, whose flash / memory-efficient kernels should beat ours (chosen by
  // reasoning, to be confirmed with `attnkit bench --op self --device cuda`). Non-local: SDPA (not
  // measured yet).
  const bool auto_fused = options.variant() == SelfAttention2dVariant::MultiHead &&
                          (relative_position_bias_table.defined() || !x.is_cuda());
  return detail::use_fused_kernel(options.impl(), FusedOp::RelposAttention, x.device(), possible, /*recording=*/false,
                                  "SelfAttention2d", auto_fused);
}

torch::Tensor SelfAttention2dImpl::position_bias(int64_t h, int64_t w, torch::ScalarType dtype) const {
  auto table = table_for(h, w);
  auto idx = relative_position_index(h, w, table.device());
  // table[idx]: [L, L, heads] → [heads, L, L]
  return table.index_select(0, idx.view(-1)).view({h * w, h * w, -1}).permute({2, 0, 1}).to(dtype);
}

torch::Tensor SelfAttention2dImpl::recorded_query_index(int64_t h, int64_t w, const torch::Device& device) const {
  std::vector<int64_t> flat;
  if (options.record_queries().empty()) {
    flat.push_back((h / 2) * w + w / 2);
  } else {
    for (const auto& [r, c] : options.record_queries()) {
      TORCH_CHECK(r >= 0 && r < h && c >= 0 && c < w, "SelfAttention2d: record_queries entry (", r, ", ", c,
                  ") must lie inside the ", h, "x", w, " map");
      flat.push_back(r * w + c);
    }
  }
  return torch::tensor(flat, torch::kLong).to(device);
}

void SelfAttention2dImpl::record_rows(const torch::Tensor& q, const torch::Tensor& k, double scale, int64_t h,
                                      int64_t w) {
  torch::NoGradGuard no_grad;
  auto qidx = recorded_query_index(h, w, q.device());
  // Only the Q recorded rows: [N, heads, Q, L], never the full L×L matrix.
  auto logits = torch::matmul(q.index_select(2, qidx), k.transpose(-1, -2)) * scale;
  if (relative_position_bias_table.defined()) {
    auto table = table_for(h, w);
    auto rows = relative_position_index(h, w, table.device()).index_select(0, qidx);  // [Q, L]
    auto bias = table.index_select(0, rows.reshape(-1)).view({rows.size(0), h * w, -1}).permute({2, 0, 1});
    logits = logits + bias.to(logits.scalar_type());
  }
  // Low-precision logits are normalised in float so the recorded rows sum to 1 to float accuracy.
  const auto acc = logits.scalar_type() == torch::kDouble ? torch::kDouble : torch::kFloat;
  auto weights = torch::softmax(logits.to(acc), -1);
  record(weights.view({q.size(0), q.size(1), qidx.size(0), h, w}));
}

torch::Tensor SelfAttention2dImpl::forward(const torch::Tensor& x) {
  check_input(x, options.channels());
  return options.variant() == SelfAttention2dVariant::NonLocal ? forward_non_local(x) : forward_multi_head(x);
}

torch::Tensor SelfAttention2dImpl::forward_multi_head(const torch::Tensor& x) {
  const int64_t n = x.size(0), h = x.size(2), w = x.size(3), l = h * w;
  const int64_t heads = options.heads(), d = inner_dim_;
  TORCH_CHECK(l > 0, "SelfAttention2d: input x must have H, W > 0, got ", x.sizes());
  const double scale = 1.0 / std::sqrt(static_cast<double>(d));
  const bool fused = runs_fused(x);
  torch::Tensor q, k, v, out;
  if (fused || x.is_cuda()) {
    // [N, 3·heads·d, H, W] → [N, L, 3, heads, d] (free for a channels-last map, one transpose
    // otherwise) → [3, N, heads, L, d] with d contiguous, which the fused op reads in place (and
    // SDPA's CUDA kernels need: they take a unit last stride only).
    auto qkv_out = qkv(x).permute({0, 2, 3, 1}).contiguous().view({n, l, 3, heads, d}).permute({2, 0, 3, 1, 4});
    q = qkv_out[0], k = qkv_out[1], v = qkv_out[2];
  } else {
    // [N, 3·heads·d, H, W] → [3, N, heads, L, d]
    auto qkv_out = qkv(x).reshape({n, 3, heads, d, l}).permute({1, 0, 2, 4, 3});
    q = qkv_out[0], k = qkv_out[1], v = qkv_out[2];
  }
  if (fused) {
    out = ops::relpos_attention(q, k, v, table_for(h, w), h, w, scale);
  } else {
    std::optional<torch::Tensor> mask;
    if (relative_position_bias_table.defined()) mask = position_bias(h, w, q.scalar_type()).unsqueeze(0);
    out = at::scaled_dot_product_attention(q, k, v, mask, 0.0, false, scale);
  }
  if (recording()) record_rows(q, k, scale, h, w);
  // [N, heads, L, d] → [N, heads·d, H, W] (the fused op's output makes this a channels-last view)
  return proj(out.transpose(-1, -2).reshape({n, heads * d, h, w}));
}

torch::Tensor SelfAttention2dImpl::forward_non_local(const torch::Tensor& x) {
  const int64_t n = x.size(0), h = x.size(2), w = x.size(3), l = h * w, rd = inner_dim_;
  TORCH_CHECK(l > 0, "SelfAttention2d: input x must have H, W > 0, got ", x.sizes());
  // Single head: [N, 1, L, rd]
  auto q = t(x).reshape({n, 1, rd, l}).transpose(-1, -2);
  auto k = p(x).reshape({n, 1, rd, l}).transpose(-1, -2);
  auto v = g(x).reshape({n, 1, rd, l}).transpose(-1, -2);
  const double scale = options.use_scale() ? 1.0 / std::sqrt(static_cast<double>(options.channels())) : 1.0;
  auto out = runs_fused(x) ? ops::relpos_attention(q, k, v, torch::Tensor(), h, w, scale)
                           : at::scaled_dot_product_attention(q, k, v, std::nullopt, 0.0, false, scale);
  if (recording()) record_rows(q, k, scale, h, w);
  return batch_norm(norm, z(out.transpose(-1, -2).reshape({n, rd, h, w}))) + x;
}

std::function<void()> SelfAttention2dImpl::prepare_spatial_map(int64_t h, int64_t w,
                                                               const std::optional<Position2d>& query) {
  std::vector<Position2d> queries;
  if (query) {
    queries.push_back(*query);
  } else {
    for (int64_t r = 0; r < h; ++r)
      for (int64_t c = 0; c < w; ++c) queries.emplace_back(r, c);
  }
  auto saved = options.record_queries();
  options.record_queries(std::move(queries));
  return [this, saved = std::move(saved)] { options.record_queries(saved); };
}

torch::Tensor SelfAttention2dImpl::spatial_map(const std::optional<Position2d>& /*query*/) const {
  return last_attention().mean({1, 2});  // [N, heads, Q, H, W]
}

void SelfAttention2dImpl::pretty_print(std::ostream& stream) const {
  const auto& o = options;
  stream << "attnkit::SelfAttention2d(channels=" << o.channels() << ", variant=" << variant_name(o.variant());
  if (o.variant() == SelfAttention2dVariant::NonLocal) {
    stream << ", rd_channels=" << inner_dim_ << ", use_scale=" << (o.use_scale() ? "true" : "false");
  } else {
    stream << ", heads=" << o.heads() << ", head_dim=" << inner_dim_ << ", qkv_bias=" << (o.qkv_bias() ? "true" : "false");
    if (o.rel_pos()) stream << ", rel_pos=true, feat_size=[" << o.feat_size()[0] << ", " << o.feat_size()[1] << "]";
  }
  if (o.impl() != Implementation::Auto) stream << ", impl=" << o.impl();
  stream << ")";
}

}  // namespace attnkit
