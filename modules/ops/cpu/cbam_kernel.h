// What the two files of the CPU CBAM kernels share (both compiled once per CPU capability, in the
// capability's namespace): cbam_kernel.cpp (the passes over the feature map, and the table) calls
// the small math of cbam_gates_kernel.cpp (the spatial conv, the MLP and ECA gates, their backward).
#pragma once

#include "../detail/cbam_kernels.h"

#include <ATen/core/Tensor.h>

#include <algorithm>
#include <cstdint>

namespace attnkit::ops::cpu {
inline namespace CPU_CAPABILITY {

// Aim for tasks of about this many elements so that small maps are not split needlessly.
constexpr int64_t kGrainElements = 32768;
// Units (rows, blocks, samples) per task when each unit touches `row_len` elements: small tensors
// run inline, without waking the other threads (which costs more than a pass over a few kB).
inline int64_t grain_for(int64_t row_len) {
  return std::max<int64_t>(1, kGrainElements / std::max<int64_t>(1, row_len));
}

// The table's small-math entries (CbamKernelTable in detail/cbam_kernels.h says what each computes).
void spatial_conv(const at::Tensor& zmax, const at::Tensor& zmean, int64_t H, int64_t W, const at::Tensor& weight,
                  double scale, double shift, bool sigmoid, at::Tensor& a);
void mlp_gate(const at::Tensor& avg, const at::Tensor& max, const at::Tensor& w1, const at::Tensor& b1,
              const at::Tensor& w2, const at::Tensor& b2, at::Tensor& g);
void eca_gate(const at::Tensor& avg, const at::Tensor& max, const at::Tensor& weight, at::Tensor& g);
void spatial_conv_backward(const at::Tensor& zmax, const at::Tensor& zmean, int64_t H, int64_t W,
                           const at::Tensor& weight, const at::Tensor& da, at::Tensor& dweight, at::Tensor& dzmax,
                           at::Tensor& dzmean);
void mlp_gate_backward(const at::Tensor& avg, const at::Tensor& max, const at::Tensor& w1, const at::Tensor& b1,
                       const at::Tensor& w2, const at::Tensor& g, const at::Tensor& dg, at::Tensor& davg,
                       at::Tensor& dmax, at::Tensor& dw1, at::Tensor& db1, at::Tensor& dw2, at::Tensor& db2);
void eca_gate_backward(const at::Tensor& avg, const at::Tensor& max, const at::Tensor& weight, const at::Tensor& g,
                       const at::Tensor& dg, at::Tensor& davg, at::Tensor& dmax, at::Tensor& dweight);

}  // namespace CPU_CAPABILITY
}  // namespace attnkit::ops::cpu
