#include <attnkit/modules/fused_gates.h>
#include <attnkit/modules/gate.h>

#include <ATen/autocast_mode.h>

#include <algorithm>
#include <string>

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

int64_t gate_hidden_channels(const char* block, int64_t channels, int64_t reduction, int64_t rd_channels,
                             int64_t rd_divisor) {
  TORCH_CHECK(channels >= 1, block, ": channels must be >= 1, got ", channels);
  TORCH_CHECK(reduction >= 1, block, ": reduction must be >= 1, got ", reduction);
  TORCH_CHECK(rd_channels >= 0, block, ": rd_channels must be >= 0 (0 = derive from reduction), got ", rd_channels);
  TORCH_CHECK(rd_divisor >= 0, block, ": rd_divisor must be >= 0, got ", rd_divisor);
  return rd_channels > 0 ? rd_channels : reduced_channels(channels, reduction, rd_divisor);
}

}  // namespace detail

std::tuple<torch::Tensor, torch::Tensor> Gate::forward_with_attention(const torch::Tensor& x) {
  check_input(x);
  auto result = forward_composite(x);
  if (recording()) record(std::get<1>(result));
  return result;
}

torch::Tensor Gate::run(const torch::Tensor& x, const torch::Tensor& shortcut, bool into_shortcut) {
  check_input(x);
  if (detail::use_fused(implementation(), x, records_maps(), name_)) {
    auto y = forward_fused(x, shortcut, into_shortcut);
    if (y.defined()) return y;
  }
  return detail::add_relu(std::get<0>(forward_with_attention(x)), shortcut);
}

}  // namespace attnkit
