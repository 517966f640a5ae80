#include <attnkit/modules/residual_epilogue.h>

namespace attnkit {

torch::Tensor forward_add_relu(torch::nn::AnyModule& block, const torch::Tensor& x, const torch::Tensor& shortcut) {
  if (block.is_empty()) return detail::add_relu(x, shortcut);
  if (auto* epilogue = dynamic_cast<ResidualEpilogue*>(block.ptr().get()))
    return epilogue->forward_add_relu(x, shortcut);
  return detail::add_relu(block.forward(x), shortcut);
}

namespace detail {
torch::Tensor add_relu(const torch::Tensor& y, const torch::Tensor& shortcut) {
  if (!shortcut.defined()) return y;
  // The same rules as the fused op's residual: no broadcast, no type promotion, no device move.
  TORCH_CHECK(shortcut.sizes() == y.sizes(), "forward_add_relu: shortcut of shape ", shortcut.sizes(),
              " does not match the block's output of shape ", y.sizes());
  TORCH_CHECK(shortcut.scalar_type() == y.scalar_type(), "forward_add_relu: shortcut of dtype ",
              shortcut.scalar_type(), " does not match the block's output of dtype ", y.scalar_type());
  TORCH_CHECK(shortcut.device() == y.device(), "forward_add_relu: shortcut on ", shortcut.device(),
              " but the block's output is on ", y.device());
  // In place on the sum, a fresh tensor: ReLU's backward needs only its output.
  return (y + shortcut).relu_();
}
}  // namespace detail

}  // namespace attnkit
