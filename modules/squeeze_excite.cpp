#include <attnkit/modules/fused_gates.h>
#include <attnkit/modules/squeeze_excite.h>

namespace attnkit {

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

SqueezeExciteImpl::SqueezeExciteImpl(const SqueezeExciteOptions& options_)
    : Gate("SqueezeExcite"), options(options_) {
  reset();
}

void SqueezeExciteImpl::reset() {
  const int64_t c = options.channels();
  hidden_ = detail::gate_hidden_channels(block_name(), c, options.reduction(), options.rd_channels(), options.rd_divisor());
  fc1 = register_module("fc1", torch::nn::Conv2d(torch::nn::Conv2dOptions(c, hidden_, 1).bias(options.bias())));
  fc2 = register_module("fc2", torch::nn::Conv2d(torch::nn::Conv2dOptions(hidden_, c, 1).bias(options.bias())));
}

void SqueezeExciteImpl::check_input(const torch::Tensor& x) const {
  detail::check_gate_input(x, options.channels(), block_name(), fc1->weight);
}

std::tuple<torch::Tensor, torch::Tensor> SqueezeExciteImpl::forward_composite(const torch::Tensor& x) {
  return se_reference(x, fc1->weight, fc1->bias, fc2->weight, fc2->bias);
}

// Auto runs fused: the same two passes over x as ATen's mean + multiply, so the forward gains little
// (1.1x at 8x256x56x56, 1.3x at 3x67x15x15 on the 2-core AVX-512 machine, attnkit bench --op se);
// forward+backward 1.2-1.5x at the large shape.
torch::Tensor SqueezeExciteImpl::forward_fused(const torch::Tensor& x, const torch::Tensor& shortcut, bool into_shortcut) {
  // SE is the fused CBAM op with the average-pooled descriptor only and no spatial gate; the op
  // takes the 1×1-conv weights [out, in, 1, 1] as they are.
  return detail::fused_op(x, {fc1->weight, fc1->bias, fc2->weight, fc2->bias},
                          detail::channel_gate_config(ChannelPool::Avg, shortcut), shortcut, into_shortcut);
}

void SqueezeExciteImpl::pretty_print(std::ostream& stream) const {
  stream << "attnkit::SqueezeExcite(channels=" << options.channels() << ", hidden=" << hidden_
         << ", reduction=" << options.reduction() << ", rd_divisor=" << options.rd_divisor()
         << ", bias=" << (options.bias() ? "true" : "false") << ")";
}

}  // namespace attnkit
