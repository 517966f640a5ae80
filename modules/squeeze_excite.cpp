#include <attnkit/modules/squeeze_excite.h>
#include <attnkit/modules/fused_gates.h>

#include <ATen/autocast_mode.h>

#include <torch/nn/functional/activation.h>

#include <sstream>

namespace attnkit {

int64_t reduced_channels(int64_t channels, int64_t reduction, int64_t rd_divisor) {
  TORCH_CHECK(channels >= 1, "reduced_channels: channels must be >= 1, got ", channels);
  TORCH_CHECK(reduction >= 1, "reduced_channels: reduction must be >= 1, got ", reduction);
  TORCH_CHECK(rd_divisor >= 0, "reduced_channels: rd_divisor must be >= 0, got ", rd_divisor);
  if (rd_divisor == 0) return std::max<int64_t>(1, channels / reduction);
  // timm multiplies by rd_ratio = 1/r; doing the same keeps the rounding identical at ties.
  const double v = static_cast<double>(channels) * (1.0 / static_cast<double>(reduction));
  const auto d = static_cast<double>(rd_divisor);
  return std::max<int64_t>(rd_divisor, static_cast<int64_t>(v + d / 2.0) / rd_divisor * rd_divisor);
}

namespace detail {

void check_gate_input(const torch::Tensor& x, int64_t channels, const char* block, const torch::Tensor& like) {
  TORCH_CHECK(x.defined(), block, ": input is undefined");
  const std::string expected =
      channels < 0 ? std::string("[N, C, H, W]") : "[N, " + std::to_string(channels) + ", H, W]";
  TORCH_CHECK(x.dim() == 4, block, ": expected a 4-D input of shape ", expected, ", got ", x.sizes());
  TORCH_CHECK(channels < 0 || x.size(1) == channels, block, ": expected input of shape ", expected, ", got ",
              x.sizes());
  TORCH_CHECK(x.size(1) >= 1 && x.size(2) >= 1 && x.size(3) >= 1, block, ": expected input of shape ", expected,
              " with C, H, W >= 1, got ", x.sizes());
  TORCH_CHECK(x.is_floating_point(), block, ": expected a floating-point input, got dtype ", x.scalar_type());
  if (like.defined()) {
    TORCH_CHECK(x.device() == like.device(), block, ": expected input on ", like.device(),
                " (the parameters' device), got ", x.device());
    // Under autocast a block sees reduced-precision activations with float32 parameters, by design.
    TORCH_CHECK(x.scalar_type() == like.scalar_type() || at::autocast::is_autocast_enabled(x.device().type()), block,
                ": expected input of dtype ", like.scalar_type(), " (the parameters' dtype), got ", x.scalar_type());
  }
}

}  // namespace detail

namespace {

// The composite math of SE in one place: a fused kernel can replace this function alone.
// Returns (x · s, s) with s the N×C gate. The 1×1 convolutions act on 1×1 maps, so they are
// applied as matrix products on [N, C] (same result, no convolution machinery).
std::tuple<torch::Tensor, torch::Tensor> se_reference(const torch::Tensor& x, const torch::Tensor& w1,
                                                      const torch::Tensor& b1, const torch::Tensor& w2,
                                                      const torch::Tensor& b2) {
  auto s = x.mean({2, 3});
  s = torch::relu(torch::linear(s, w1.flatten(1), b1));
  s = torch::sigmoid(torch::linear(s, w2.flatten(1), b2));
  return {x * s.unsqueeze(-1).unsqueeze(-1), s};
}

}  // namespace

SqueezeExciteImpl::SqueezeExciteImpl(const SqueezeExciteOptions& options_) : options(options_) { reset(); }

void SqueezeExciteImpl::reset() {
  TORCH_CHECK(options.channels() >= 1, "SqueezeExcite: channels must be >= 1, got ", options.channels());
  TORCH_CHECK(options.reduction() >= 1, "SqueezeExcite: reduction must be >= 1, got ", options.reduction());
  TORCH_CHECK(options.rd_channels() >= 0, "SqueezeExcite: rd_channels must be >= 0 (0 = derive from reduction), got ",
              options.rd_channels());
  TORCH_CHECK(options.rd_divisor() >= 0, "SqueezeExcite: rd_divisor must be >= 0, got ", options.rd_divisor());
  const int64_t c = options.channels();
  hidden_ = options.rd_channels() > 0 ? options.rd_channels()
                                      : reduced_channels(c, options.reduction(), options.rd_divisor());
  fc1 = register_module("fc1", torch::nn::Conv2d(torch::nn::Conv2dOptions(c, hidden_, 1).bias(options.bias())));
  fc2 = register_module("fc2", torch::nn::Conv2d(torch::nn::Conv2dOptions(hidden_, c, 1).bias(options.bias())));
}

std::tuple<torch::Tensor, torch::Tensor> SqueezeExciteImpl::forward_with_attention(const torch::Tensor& x) {
  detail::check_gate_input(x, options.channels(), "SqueezeExcite", fc1->weight);
  auto result = se_reference(x, fc1->weight, fc1->bias, fc2->weight, fc2->bias);
  if (recording()) record(std::get<1>(result));
  return result;
}

torch::Tensor SqueezeExciteImpl::forward(const torch::Tensor& x) { return run(x, torch::Tensor()); }

torch::Tensor SqueezeExciteImpl::forward_add_relu(const torch::Tensor& x, const torch::Tensor& shortcut) {
  return run(x, shortcut);
}

torch::Tensor SqueezeExciteImpl::run(const torch::Tensor& x, const torch::Tensor& shortcut) {
  detail::check_gate_input(x, options.channels(), "SqueezeExcite", fc1->weight);
  // Auto runs fused: the same two passes over x as ATen's mean + multiply, so the forward gains little
  // (1.1x at 8x256x56x56, 1.3x at 3x67x15x15 on the 2-core AVX-512 machine, attnkit bench --op se);
  // forward+backward 1.2-1.5x at the large shape.
  if (!detail::use_fused(options.impl(), x, recording(), "SqueezeExcite"))
    return detail::add_relu(std::get<0>(forward_with_attention(x)), shortcut);
  // SE is the fused CBAM op with the average-pooled descriptor only and no spatial gate; the op
  // takes the 1×1-conv weights [out, in, 1, 1] as they are.
  return ops::cbam(x, {fc1->weight, fc1->bias, fc2->weight, fc2->bias},
                   detail::channel_gate_config(ChannelPool::Avg, shortcut), shortcut);
}

void SqueezeExciteImpl::pretty_print(std::ostream& stream) const {
  stream << "attnkit::SqueezeExcite(channels=" << options.channels() << ", hidden=" << hidden_
         << ", reduction=" << options.reduction() << ", rd_divisor=" << options.rd_divisor()
         << ", bias=" << (options.bias() ? "true" : "false") << ")";
}

}  // namespace attnkit
