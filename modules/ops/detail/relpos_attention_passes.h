// relpos_attention's forward and backward for any device over a kernel table
// (relpos_attention_kernels.h): input checks, dtypes and layouts. Each device's file registers them
// for its dispatch key with its own table (cpu/relpos_attention_dispatch.cpp,
// cuda/relpos_attention_dispatch.cpp): the device is decided once, by the dispatcher.
#pragma once

#include "relpos_attention_kernels.h"

#include <torch/library.h>

#include <optional>
#include <tuple>

namespace attnkit::ops::detail {

using OptTensor = std::optional<at::Tensor>;

void check_relpos_attention_inputs(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                   const at::Tensor& table, int64_t height, int64_t width);

/// Forward: the output in the kernels' dtype (float32 for bfloat16/half on the CPU) and the
/// logsumexp backward needs.
std::tuple<at::Tensor, at::Tensor> relpos_attention_forward(const RelposAttentionKernelTable& kt, const at::Tensor& q,
                                                            const at::Tensor& k, const at::Tensor& v,
                                                            const OptTensor& table, int64_t height, int64_t width,
                                                            std::optional<double> scale);

/// Backward: dq, dk, dv in q's dtype, and dtable in the table's dtype (undefined unless want_table).
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> relpos_attention_backward(
    const RelposAttentionKernelTable& kt, const at::Tensor& grad, const at::Tensor& q, const at::Tensor& k,
    const at::Tensor& v, const at::Tensor& out, const at::Tensor& lse, const OptTensor& table, int64_t height,
    int64_t width, std::optional<double> scale, bool want_table);

// ---- a device's kernels, given its table -----------------------------------------------------------
template <const RelposAttentionKernelTable& (*Table)()>
at::Tensor relpos_attention_output(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                   const OptTensor& table, int64_t height, int64_t width, std::optional<double> scale) {
  return std::get<0>(relpos_attention_forward(Table(), q, k, v, table, height, width, scale)).to(q.scalar_type());
}
template <const RelposAttentionKernelTable& (*Table)()>
std::tuple<at::Tensor, at::Tensor> relpos_attention_forward_kernel(const at::Tensor& q, const at::Tensor& k,
                                                                   const at::Tensor& v, const OptTensor& table,
                                                                   int64_t height, int64_t width,
                                                                   std::optional<double> scale) {
  return relpos_attention_forward(Table(), q, k, v, table, height, width, scale);
}
template <const RelposAttentionKernelTable& (*Table)()>
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> relpos_attention_backward_kernel(
    const at::Tensor& grad, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& out,
    const at::Tensor& lse, const OptTensor& table, int64_t height, int64_t width, std::optional<double> scale,
    bool want_table) {
  return relpos_attention_backward(Table(), grad, q, k, v, out, lse, table, height, width, scale, want_table);
}

/// Registers attnkit::relpos_attention and its _forward / _backward for one device's dispatch key.
template <const RelposAttentionKernelTable& (*Table)()>
void register_relpos_attention_kernels(torch::Library& m) {
  m.impl("relpos_attention", &relpos_attention_output<Table>);
  m.impl("_relpos_attention_forward", &relpos_attention_forward_kernel<Table>);
  m.impl("_relpos_attention_backward", &relpos_attention_backward_kernel<Table>);
}

}  // namespace attnkit::ops::detail
