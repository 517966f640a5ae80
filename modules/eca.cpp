#include <attnkit/modules/eca.h>
#include <attnkit/modules/fused_gates.h>

#include <cmath>

namespace attnkit {

int64_t eca_kernel_size(int64_t channels, double gamma, double beta, int64_t min_kernel_size) {
  TORCH_CHECK(channels >= 1, "eca_kernel_size: channels must be >= 1, got ", channels);
  TORCH_CHECK(gamma > 0, "eca_kernel_size: gamma must be > 0, got ", gamma);
  TORCH_CHECK(min_kernel_size >= 1, "eca_kernel_size: min_kernel_size must be >= 1, got ", min_kernel_size);
  const auto t = static_cast<int64_t>(std::abs(std::log2(static_cast<double>(channels)) + beta) / gamma);
  const int64_t k = t % 2 ? t : t + 1;
  return std::max(k, min_kernel_size);
}

namespace {

// The composite math of ECA in one place: a fused kernel can replace this function alone.
// Returns (x · s, s) with s the N×C gate; the channel axis is the 1-D conv's length axis.
std::tuple<torch::Tensor, torch::Tensor> eca_reference(const torch::Tensor& x, const torch::Tensor& w) {
  const int64_t k = w.size(-1);
  auto s = x.mean({2, 3}).unsqueeze(1);  // [N, 1, C]
  s = torch::sigmoid(torch::conv1d(s, w, {}, /*stride=*/1, /*padding=*/(k - 1) / 2)).squeeze(1);
  return {x * s.unsqueeze(-1).unsqueeze(-1), s};
}

}  // namespace

ECAImpl::ECAImpl(const ECAOptions& options_) : Gate("ECA"), options(options_) { reset(); }

void ECAImpl::reset() {
  TORCH_CHECK(options.channels() >= 1, "ECA: channels must be >= 1, got ", options.channels());
  TORCH_CHECK(options.kernel_size() >= 0 && (options.kernel_size() == 0 || options.kernel_size() % 2 == 1),
              "ECA: kernel_size must be odd and positive (or 0 = from channels), got ", options.kernel_size());
  TORCH_CHECK(options.gamma() > 0, "ECA: gamma must be > 0, got ", options.gamma());
  TORCH_CHECK(options.min_kernel_size() >= 1 && options.min_kernel_size() % 2 == 1,
              "ECA: min_kernel_size must be odd and positive, got ", options.min_kernel_size());
  kernel_size_ = options.kernel_size() > 0
                     ? options.kernel_size()
                     : eca_kernel_size(options.channels(), options.gamma(), options.beta(), options.min_kernel_size());
  conv = register_module("conv", torch::nn::Conv1d(torch::nn::Conv1dOptions(1, 1, kernel_size_)
                                                       .padding((kernel_size_ - 1) / 2)
                                                       .bias(false)));
}

void ECAImpl::check_input(const torch::Tensor& x) const {
  detail::check_gate_input(x, options.channels(), block_name(), conv->weight);
}

std::tuple<torch::Tensor, torch::Tensor> ECAImpl::forward_composite(const torch::Tensor& x) {
  return eca_reference(x, conv->weight);
}

torch::Tensor ECAImpl::forward_fused(const torch::Tensor& x, const torch::Tensor& shortcut, bool into_shortcut) {
  // ECA is the fused CBAM op with the average-pooled descriptor, ECA's 1-D conv in place of the MLP
  // and no spatial gate.
  ops::CbamWeights w;
  w.eca_weight = conv->weight;
  return detail::fused_op(x, w, detail::channel_gate_config(ChannelPool::Avg, shortcut), shortcut, into_shortcut);
}

void ECAImpl::pretty_print(std::ostream& stream) const {
  stream << "attnkit::ECA(channels=" << options.channels() << ", kernel_size=" << kernel_size_ << ")";
}

}  // namespace attnkit
