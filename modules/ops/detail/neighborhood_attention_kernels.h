// The passes of the fused neighborhood attention op (attnkit::ops::neighborhood_attention), one
// table per device. See neighborhood_attention.h for the op's semantics and layouts.
//
// Forward: one pass per query: k² dot products q·key, softmax, weighted sum of the k² values;
// writes the output and the log-sum-exp of the logits (one number per query and head), nothing else.
// Backward recomputes the attention weights from the log-sum-exp (as FlashAttention does) instead of
// saving the k² weights per query, one task per (n, head) plane, in two passes without atomics:
//   query pass: P and dS = P·(dO·v - Σ_j P_j dO·v_j) for every (query, slot) of the plane into a
//     per-task buffer (2·H·W·k² numbers, reused plane after plane), dq, and per-plane partial sums of
//     the bias gradient (added up afterwards in a fixed order);
//   key pass: dk and dv, gathering P and dS from the queries whose windows hold each key (the inverse
//     window rule: a contiguous range of the key's dilation group along each axis).
// Every output element is written by exactly one task in a fixed order: results do not depend on
// the thread count.
//
// Tensors: q, k, v, out, dout, dq, dk, dv are [N, heads, H, W, head_dim] of one floating dtype,
// any strides with head_dim contiguous (stride 1); lse is contiguous [N, heads, H, W]
// and rpb / drpb contiguous [heads, 2k-1, 2k-1], all in the accumulation dtype (double for double
// inputs, float otherwise); rpb and drpb may be undefined (no bias).
//
// CPU: modules/ops/cpu/neighborhood_attention_kernel.cpp, compiled once per CPU capability;
// cpu::neighborhood_attention_kernels() picks the best one for the running CPU.
// CUDA: modules/ops/cuda/neighborhood_attention_kernel.cu; cuda::neighborhood_attention_kernels()
// (only in builds with CUDA kernels). Same passes, except that its backward recomputes P and dS
// where it needs them instead of keeping them per plane (see that file).
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <vector>

namespace attnkit::ops {

/// The windows along one axis of length L (NATTEN's rule, see relative_position.h).
struct WindowAxis {
  std::vector<int64_t> start;        ///< [L] first key position of query i's window
  std::vector<int64_t> first_query;  ///< [L] first query whose window holds key i (same dilation group)
  std::vector<int64_t> last_query;   ///< [L] last such query; the ones between step by the dilation
};

struct NeighborhoodGeometry {
  int64_t kernel_size = 1, dilation = 1;
  double scale = 1.0;  ///< logits = scale · q·k + rpb
  WindowAxis rows, cols;
};

struct NeighborhoodAttentionKernelTable {
  /// out = softmax(scale·q·k_window + rpb) · v_window per query; lse = log Σ exp(logits).
  void (*forward)(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& rpb,
                  const NeighborhoodGeometry& g, at::Tensor& out, at::Tensor& lse);
  /// dq, dk, dv (dk, dv undefined: not wanted) and drpb (undefined rpb: drpb untouched).
  void (*backward)(const at::Tensor& dout, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                   const at::Tensor& rpb, const at::Tensor& lse, const NeighborhoodGeometry& g, at::Tensor& dq,
                   at::Tensor& dk, at::Tensor& dv, at::Tensor& drpb);
};

namespace cpu {
/// The kernels for the best instruction set this CPU supports.
const NeighborhoodAttentionKernelTable& neighborhood_attention_kernels();
}  // namespace cpu

namespace cuda {
/// The CUDA kernels (defined only when attnkit is built with CUDA kernels).
const NeighborhoodAttentionKernelTable& neighborhood_attention_kernels();
}  // namespace cuda

}  // namespace attnkit::ops
