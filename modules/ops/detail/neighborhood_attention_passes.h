// neighborhood_attention's forward and backward for any device over a kernel table
// (neighborhood_attention_kernels.h): checks, window geometry, layouts. Each device's file registers
// them for its dispatch key with its own table (cpu/neighborhood_attention_dispatch.cpp,
// cuda/neighborhood_attention_dispatch.cpp): the device is decided once, by the dispatcher.
#pragma once

#include "neighborhood_attention_kernels.h"

#include <torch/library.h>

#include <optional>
#include <tuple>
#include <vector>

namespace attnkit::ops::detail {

using OptTensor = std::optional<at::Tensor>;

/// q, k, v [N, heads, H, W, head_dim] views of the rows [N, H, W, 3·C] (channels [q|k|v][head][head_dim]).
std::vector<at::Tensor> split_rows(const at::Tensor& rows, int64_t heads);
/// [N, 3C, H, W] as contiguous rows [N, H, W, 3C] (a view when qkv is channels-last).
at::Tensor qkv_rows(const at::Tensor& qkv, int64_t heads);
/// [N, heads, H, W, head_dim] stored as [N, H, W, heads, head_dim] (see neighborhood_attention.h).
at::Tensor empty_heads_last(const at::Tensor& like);

/// Forward: the output and the logsumexp backward needs.
std::tuple<at::Tensor, at::Tensor> neighborhood_attention_forward(const NeighborhoodAttentionKernelTable& kt,
                                                                  const at::Tensor& q, const at::Tensor& k,
                                                                  const at::Tensor& v, const OptTensor& rpb,
                                                                  int64_t kernel_size, int64_t dilation,
                                                                  std::optional<double> scale);

/// Backward into dq, dk, dv (any layout with head_dim contiguous; dk and dv undefined: not wanted).
/// Returns the gradient of rpb (undefined without rpb).
at::Tensor neighborhood_attention_backward(const NeighborhoodAttentionKernelTable& kt, const at::Tensor& grad,
                                           const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                           const OptTensor& rpb, const at::Tensor& lse, int64_t kernel_size,
                                           int64_t dilation, std::optional<double> scale, const at::Tensor& dq,
                                           const OptTensor& dk, const OptTensor& dv);

// ---- a device's kernels, given its table -----------------------------------------------------------
template <const NeighborhoodAttentionKernelTable& (*Table)()>
at::Tensor neighborhood_attention_output(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                         const OptTensor& rpb, int64_t kernel_size, int64_t dilation,
                                         std::optional<double> scale) {
  return std::get<0>(neighborhood_attention_forward(Table(), q, k, v, rpb, kernel_size, dilation, scale));
}
template <const NeighborhoodAttentionKernelTable& (*Table)()>
at::Tensor neighborhood_attention_qkv_output(const at::Tensor& qkv, int64_t heads, const OptTensor& rpb,
                                             int64_t kernel_size, int64_t dilation, std::optional<double> scale) {
  const auto views = split_rows(qkv_rows(qkv, heads), heads);
  return std::get<0>(
      neighborhood_attention_forward(Table(), views[0], views[1], views[2], rpb, kernel_size, dilation, scale));
}
template <const NeighborhoodAttentionKernelTable& (*Table)()>
std::tuple<at::Tensor, at::Tensor> neighborhood_attention_forward_kernel(const at::Tensor& q, const at::Tensor& k,
                                                                         const at::Tensor& v, const OptTensor& rpb,
                                                                         int64_t kernel_size, int64_t dilation,
                                                                         std::optional<double> scale) {
  return neighborhood_attention_forward(Table(), q, k, v, rpb, kernel_size, dilation, scale);
}
template <const NeighborhoodAttentionKernelTable& (*Table)()>
at::Tensor neighborhood_attention_backward_kernel(const at::Tensor& grad, const at::Tensor& q, const at::Tensor& k,
                                                  const at::Tensor& v, const OptTensor& rpb, const at::Tensor& lse,
                                                  int64_t kernel_size, int64_t dilation, std::optional<double> scale,
                                                  const at::Tensor& dq, const OptTensor& dk, const OptTensor& dv) {
  return neighborhood_attention_backward(Table(), grad, q, k, v, rpb, lse, kernel_size, dilation, scale, dq, dk, dv);
}

/// Registers attnkit::neighborhood_attention(_qkv) and _forward / _backward for one dispatch key.
template <const NeighborhoodAttentionKernelTable& (*Table)()>
void register_neighborhood_attention_kernels(torch::Library& m) {
  m.impl("neighborhood_attention", &neighborhood_attention_output<Table>);
  m.impl("neighborhood_attention_qkv", &neighborhood_attention_qkv_output<Table>);
  m.impl("_neighborhood_attention_forward", &neighborhood_attention_forward_kernel<Table>);
  m.impl("_neighborhood_attention_backward", &neighborhood_attention_backward_kernel<Table>);
}

}  // namespace attnkit::ops::detail
