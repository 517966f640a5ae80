#include "frozen_conv.h"

#include <attnkit/backbones/inference_model.h>

#include <ATen/Context.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/util/string_view.h>
#include <torch/nn/functional/conv.h>

#include <optional>
#include <string>
#include <variant>

namespace attnkit::detail {

namespace {

using OptTensor = std::optional<at::Tensor>;
using Scalars = c10::List<std::optional<at::Scalar>>;
using OptString = std::optional<c10::string_view>;

// oneDNN's fused convolutions as ATen registers them (aten/src/ATen/native/mkldnn/Conv.cpp), reached
// through the dispatcher: they are operators (mkldnn::...), not functions in LibTorch's headers.
using ConvPointwise = at::Tensor(const at::Tensor&, const at::Tensor&, const OptTensor&, c10::IntArrayRef,
                                 c10::IntArrayRef, c10::IntArrayRef, int64_t, c10::string_view, Scalars, OptString);
using ConvBinary = at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, const OptTensor&, c10::IntArrayRef,
                              c10::IntArrayRef, c10::IntArrayRef, int64_t, c10::string_view, std::optional<at::Scalar>,
                              OptString, Scalars, OptString);
using ConvBinaryInto = at::Tensor&(at::Tensor&, const at::Tensor&, const at::Tensor&, const OptTensor&, c10::IntArrayRef,
                                   c10::IntArrayRef, c10::IntArrayRef, int64_t, c10::string_view,
                                   std::optional<at::Scalar>, OptString, Scalars, OptString);
using ReorderWeight = at::Tensor(const at::Tensor&, c10::IntArrayRef, c10::IntArrayRef, c10::IntArrayRef, int64_t,
                                 at::OptionalIntArrayRef);

template <typename Signature>
c10::TypedOperatorHandle<Signature> mkldnn_op(const char* name, const char* overload) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, overload).typed<Signature>();
}

const c10::TypedOperatorHandle<ConvPointwise>& conv_pointwise() {
  static const auto op = mkldnn_op<ConvPointwise>("mkldnn::_convolution_pointwise", "");
  return op;
}
const c10::TypedOperatorHandle<ConvBinary>& conv_binary() {
  static const auto op = mkldnn_op<ConvBinary>("mkldnn::_convolution_pointwise", "binary");
  return op;
}
const c10::TypedOperatorHandle<ConvBinaryInto>& conv_binary_into() {
  static const auto op = mkldnn_op<ConvBinaryInto>("mkldnn::_convolution_pointwise_", "binary");
  return op;
}
const c10::TypedOperatorHandle<ReorderWeight>& reorder_weight() {
  static const auto op = mkldnn_op<ReorderWeight>("mkldnn::_reorder_convolution_weight", "");
  return op;
}

std::vector<int64_t> explicit_padding(const torch::nn::detail::ConvNdOptions<2>& o) {
  const auto* pad = std::get_if<torch::ExpandingArray<2>>(&o.padding());
  TORCH_CHECK(pad != nullptr, "InferenceModel: convolutions with padding 'same' or 'valid' are not supported");
  TORCH_CHECK(std::holds_alternative<torch::enumtype::kZeros>(o.padding_mode()),
              "InferenceModel: only zero-padded convolutions can be frozen");
  return {(*pad)->at(0), (*pad)->at(1)};
}

/// The folded weight and bias in float64 (on the conv's device): W · s and β + (b − μ) · s.
std::pair<torch::Tensor, torch::Tensor> fold(const torch::nn::Conv2dImpl& conv, const torch::nn::BatchNorm2dImpl* bn) {
  auto w = conv.weight.detach().to(torch::kDouble);
  const int64_t out = w.size(0);
  auto b = conv.options.bias() ? conv.bias.detach().to(torch::kDouble) : torch::zeros({out}, w.options());
  if (bn == nullptr) return {w, b};
  TORCH_CHECK(bn->options.track_running_stats() && bn->running_mean.defined() && bn->running_var.defined(),
              "InferenceModel: a BatchNorm without running statistics (track_running_stats=false) normalises with "
              "batch statistics even in eval mode and cannot be folded");
  TORCH_CHECK(bn->options.num_features() == out, "InferenceModel: BatchNorm of ", bn->options.num_features(),
              " features after a convolution of ", out, " output channels");
  const auto mean = bn->running_mean.detach().to(torch::kDouble), var = bn->running_var.detach().to(torch::kDouble);
  auto scale = (var + bn->options.eps()).rsqrt();
  auto shift = torch::zeros_like(scale);
  if (bn->options.affine()) {
    scale = scale * bn->weight.detach().to(torch::kDouble);
    shift = bn->bias.detach().to(torch::kDouble);
  }
  return {w * scale.view({out, 1, 1, 1}), shift + (b - mean) * scale};
}

}  // namespace

bool can_prepack(const torch::Device& device, torch::ScalarType dtype, bool prepack) {
  if (!prepack || !device.is_cpu() || !at::hasMKLDNN()) return false;
  return dtype == torch::kFloat || (dtype == torch::kBFloat16 && onednn_bfloat16_available());
}

FrozenConv::FrozenConv(const torch::nn::Conv2dImpl& conv, const torch::nn::BatchNorm2dImpl* bn, torch::ScalarType dtype,
                       const torch::Device& device, bool prepack, const std::vector<int64_t>& input_size) {
  const auto& o = conv.options;
  kernel_ = {o.kernel_size()->at(0), o.kernel_size()->at(1)};
  padding_ = explicit_padding(o);
  stride_ = {o.stride()->at(0), o.stride()->at(1)};
  dilation_ = {o.dilation()->at(0), o.dilation()->at(1)};
  groups_ = o.groups();
  out_channels_ = o.out_channels();
  auto [w, b] = fold(conv, bn);
  const auto options = torch::TensorOptions().dtype(dtype).device(device);
  weight_ = w.to(options).contiguous();
  bias_ = b.to(options).contiguous();
  prepacked_ = can_prepack(device, dtype, prepack);
  if (prepacked_) {
    weight_ = reorder_weight().call(weight_, padding_, stride_, dilation_, groups_, c10::IntArrayRef(input_size));
  } else {
    weight_ = weight_.contiguous(torch::MemoryFormat::ChannelsLast);
  }
}

int64_t FrozenConv::output_size(int64_t size, int dim) const {
  return (size + 2 * padding_[dim] - dilation_[dim] * (kernel_[dim] - 1) - 1) / stride_[dim] + 1;
}

torch::Tensor FrozenConv::conv_plain(const torch::Tensor& x) const {
  return at::conv2d(x, weight_, bias_, stride_, padding_, dilation_, groups_);
}

torch::Tensor FrozenConv::forward(const torch::Tensor& x, bool relu) const {
  if (prepacked_) return conv_pointwise().call(x, weight_, bias_, padding_, stride_, dilation_, groups_, relu ? "relu" : "none", Scalars(), std::nullopt);
  auto y = conv_plain(x);
  return relu ? y.relu_() : y;
}

torch::Tensor FrozenConv::forward_add_relu(const torch::Tensor& x, const torch::Tensor& shortcut) const {
  if (prepacked_)
    return conv_binary().call(x, shortcut, weight_, bias_, padding_, stride_, dilation_, groups_, "add", std::nullopt,
                              c10::string_view("relu"), Scalars(), std::nullopt);
  return conv_plain(x).add_(shortcut).relu_();
}

torch::Tensor FrozenConv::forward_add_relu_into(const torch::Tensor& x, torch::Tensor& shortcut) const {
  if (prepacked_)
    return conv_binary_into().call(shortcut, x, weight_, bias_, padding_, stride_, dilation_, groups_, "add",
                                   std::nullopt, c10::string_view("relu"), Scalars(), std::nullopt);
  return shortcut.add_(conv_plain(x)).relu_();
}

}  // namespace attnkit::detail
