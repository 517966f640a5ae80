// CBAM's forward and backward for any device, as passes of a kernel table (cbam_kernels.h) plus
// the small math on the pooled descriptors and maps. Each device's kernel file registers these for
// its dispatch key with its own table (cpu/cbam_dispatch.cpp, cuda/cbam_dispatch.cpp), so the
// device is decided once, by the dispatcher, and the inputs are checked once, here.
#pragma once

#include "cbam_args.h"
#include "cbam_kernels.h"

#include <torch/library.h>

#include <vector>

namespace attnkit::ops::detail {

/// Shapes, dtypes, devices and the gate combination, with messages naming the argument.
void check_cbam_inputs(const CbamArgs& a);

/// The forward pass: the output and what backward needs.
CbamSaved cbam_forward(const CbamKernelTable& k, const CbamArgs& a);

/// The forward pass written into a.residual (defined, checked): cbam_into_residual.
void cbam_forward_into_residual(const CbamKernelTable& k, const CbamArgs& a);

/// The backward pass from the output's gradient: one gradient per kGrad* slot (cbam_args.h), for
/// the slots whose bit is set in `needs_grad` (undefined otherwise).
std::vector<at::Tensor> cbam_backward(const CbamKernelTable& k, const at::Tensor& grad, const at::Tensor& x,
                                      const CbamSaved& saved, const CbamWeights& w, const CbamConfig& cfg,
                                      bool has_residual, int64_t needs_grad);

// ---- a device's kernels for the three ops, given its table -----------------------------------------
template <const CbamKernelTable& (*Table)()>
at::Tensor cbam_output(const CbamArgs& a) {
  check_cbam_inputs(a);
  return cbam_forward(Table(), a).out;
}
template <const CbamKernelTable& (*Table)()>
CbamForwardResult cbam_forward_saving(const CbamArgs& a) {
  check_cbam_inputs(a);
  return to_tuple(cbam_forward(Table(), a));
}
template <const CbamKernelTable& (*Table)()>
void cbam_into_residual_kernel(const CbamArgs& a) {
  check_cbam_inputs(a);
  cbam_forward_into_residual(Table(), a);
}
template <const CbamKernelTable& (*Table)()>
std::vector<at::Tensor> cbam_backward_kernel(const at::Tensor& grad, const at::Tensor& x, const OptTensorList& saved,
                                             const OptTensorList& weights, bool pool_avg, bool pool_max,
                                             bool spatial_max_first, bool use_bn, bool bn_training, double bn_eps,
                                             bool relu, bool has_residual, int64_t needs_grad) {
  const CbamConfig cfg{pool_avg, pool_max, spatial_max_first, use_bn, bn_training, /*bn_momentum=*/0.1, bn_eps, relu};
  return cbam_backward(Table(), grad, x, saved_from(saved), weights_from(weights), cfg, has_residual, needs_grad);
}

/// Registers attnkit::cbam, _cbam_into_residual, _cbam_forward and _cbam_backward for one device's
/// dispatch key.
template <const CbamKernelTable& (*Table)()>
void register_cbam_kernels(torch::Library& m) {
  m.impl("cbam", &cbam_kernel<at::Tensor, &cbam_output<Table>>);
  m.impl("_cbam_into_residual", &cbam_kernel<void, &cbam_into_residual_kernel<Table>>);
  m.impl("_cbam_forward", &cbam_kernel<CbamForwardResult, &cbam_forward_saving<Table>>);
  m.impl("_cbam_backward", &cbam_backward_kernel<Table>);
}

}  // namespace attnkit::ops::detail
