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
  TORCH_CHECK(shortcut.sizes() == y.sizes(), "forward_add_relu: shortcut of shape ", shortcut.sizes(),
              " does not match the block's output of shape ", y.sizes());
  // In place on the sum, a fresh tensor: ReLU's backward needs only its output.
  return (y + shortcut).relu_();
}
}  // namespace detail

}  // namespace attnkit
