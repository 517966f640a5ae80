// The memory-bound passes of the fused CBAM op (and of the SE / channel gates), one table per device.
//
// CBAM touches the big feature map x only in these passes. The rest (the channel MLP on [N, C]
// descriptors, the k×k convolution on the [N, 2, H, W] pooled map) is tiny: a table may run it in
// direct loops (optional entries), else the op composes it from ATen ops. Direct loops matter at
// batch 1, where a dozen ATen calls on tensors of a few kB cost more than a pass over x. Forward:  channel_pool (read x) -> gated_pool (read x) -> apply_gates (read x, write y):
// four passes of memory traffic, against ten or more for the same math composed from ATen ops.
// Backward: backward_spatial (read dy, x) -> backward_gate (read dy, x) -> backward_input
// (read dy, x, write dx).
//
// Every kernel takes x as [N, C, HW] (nhwc == false) or [N, HW, C] (nhwc == true), contiguous, of
// any floating dtype; the small per-channel / per-position tensors are contiguous [N, C] or
// [N, HW] of the accumulation dtype (double for double inputs, float otherwise). Optional tensors
// may be undefined: no spatial gate means s, dzmax, dzmean and best_c are undefined.
//
// CPU: modules/ops/cpu/cbam_kernel.cpp, compiled once per CPU capability; cpu::cbam_kernels() picks
// the best one for the running CPU (and honours ATEN_CPU_CAPABILITY, like ATen).
// CUDA: modules/ops/cuda/cbam_kernel.cu; cuda::cbam_kernels() (only in builds with CUDA kernels).
#pragma once

#include <ATen/core/Tensor.h>

namespace attnkit::ops {

struct CbamKernelTable {
  /// avg[n, c] = mean over positions, max[n, c] = max over positions.
  void (*channel_pool)(const at::Tensor& x, bool nhwc, at::Tensor& avg, at::Tensor& max);
  /// For y = x * g[n, c]: zmax[n, p] = max over channels of y, zmean[n, p] = mean over channels of y.
  void (*gated_pool)(const at::Tensor& x, bool nhwc, const at::Tensor& g, at::Tensor& zmax, at::Tensor& zmean);
  /// out = x * g[n, c] * s[n, p] (s undefined: no spatial factor), plus residual (undefined: none),
  /// then max(., 0) when `relu` (NaN stays NaN, as torch.relu). out and residual have x's layout.
  /// The residual and ReLU finish a residual unit in this pass instead of two more over the map.
  void (*apply_gates)(const at::Tensor& x, bool nhwc, const at::Tensor& g, const at::Tensor& s,
                      const at::Tensor& residual, bool relu, at::Tensor& out);
  /// ds[n, p] = sum over c of dy * x * g[n, c]; best_c[n, p] = first channel maximising x * g (int32).
  void (*backward_spatial)(const at::Tensor& dy, const at::Tensor& x, bool nhwc, const at::Tensor& g,
                           at::Tensor& ds, at::Tensor& best_c);
  /// dg[n, c] = sum over p of x * (dy * s + dzmean / C + [c == best_c] * dzmax);
  /// argmax_p[n, c] = first position where x equals max[n, c] (int32).
  void (*backward_gate)(const at::Tensor& dy, const at::Tensor& x, bool nhwc, const at::Tensor& s,
                        const at::Tensor& dzmax, const at::Tensor& dzmean, const at::Tensor& best_c,
                        const at::Tensor& max, at::Tensor& dg, at::Tensor& argmax_p);
  /// dx = g * (dy * s + dzmean / C + [c == best_c] * dzmax) + davg / HW + [p == argmax_p] * dmax.
  void (*backward_input)(const at::Tensor& dy, const at::Tensor& x, bool nhwc, const at::Tensor& g,
                         const at::Tensor& s, const at::Tensor& dzmax, const at::Tensor& dzmean,
                         const at::Tensor& best_c, const at::Tensor& davg, const at::Tensor& dmax,
                         const at::Tensor& argmax_p, at::Tensor& dx);
  /// Optional (nullptr: the op runs ATen's conv2d). The spatial gate's k×k convolution, zero padded,
  /// with an affine epilogue: a[n, p] = scale * conv[n, p] + shift, then sigmoid(a) when `sigmoid`.
  /// conv[n, p] = sum over (i, dy, dx) of weight[i, dy, dx] * z_i[n, p shifted by (dy, dx)] with
  /// z_0 = zmax, z_1 = zmean; zmax, zmean [N, H*W], weight [2, k, k], a [N, H*W], all contiguous in
  /// the accumulation dtype. The epilogue carries the conv bias and an eval-mode BatchNorm folded
  /// into one scale and shift, so the gate's small map is written once.
  void (*spatial_conv)(const at::Tensor& zmax, const at::Tensor& zmean, int64_t H, int64_t W,
                       const at::Tensor& weight, double scale, double shift, bool sigmoid, at::Tensor& a);
  /// Optional (nullptr: ATen ops). CBAM's / SE's channel gate from the pooled descriptors:
  /// g[n, :] = sigmoid(f(avg[n, :]) + f(max[n, :])), f(d) = w2 relu(w1 d + b1) + b2; an undefined
  /// avg or max drops its term. w1 [R, C], w2 [C, R], b1 [R] and b2 [C] (or undefined), avg, max and
  /// g [N, C]: contiguous, accumulation dtype.
  void (*mlp_gate)(const at::Tensor& avg, const at::Tensor& max, const at::Tensor& w1, const at::Tensor& b1,
                   const at::Tensor& w2, const at::Tensor& b2, at::Tensor& g);
  /// Optional (nullptr: ATen ops). ECA's channel gate: g[n, :] = sigmoid(conv(avg[n, :]) +
  /// conv(max[n, :])), conv the zero-padded 1-D convolution across channels with weight [k] (k odd);
  /// an undefined avg or max drops its term. Contiguous, accumulation dtype.
  void (*eca_gate)(const at::Tensor& avg, const at::Tensor& max, const at::Tensor& weight, at::Tensor& g);

  // Backward of the small math (optional: nullptr, or any of them missing, and the op differentiates
  // the ATen composition instead). Tensors as in the forward entries; outputs are written whole.
  /// spatial_conv without its epilogue: from da [N, H*W], dweight [2, k, k], dzmax and dzmean [N, H*W].
  void (*spatial_conv_backward)(const at::Tensor& zmax, const at::Tensor& zmean, int64_t H, int64_t W,
                                const at::Tensor& weight, const at::Tensor& da, at::Tensor& dweight,
                                at::Tensor& dzmax, at::Tensor& dzmean);
  /// mlp_gate: from the gate g and dg, the gradients of avg and max (each written where both it and
  /// its gradient are defined), w1, w2 and the biases (db1, db2 undefined: not wanted).
  void (*mlp_gate_backward)(const at::Tensor& avg, const at::Tensor& max, const at::Tensor& w1,
                            const at::Tensor& b1, const at::Tensor& w2, const at::Tensor& g, const at::Tensor& dg,
                            at::Tensor& davg, at::Tensor& dmax, at::Tensor& dw1, at::Tensor& db1, at::Tensor& dw2,
                            at::Tensor& db2);
  /// eca_gate: from g and dg, the gradients of avg, max (as above) and the weight [k].
  void (*eca_gate_backward)(const at::Tensor& avg, const at::Tensor& max, const at::Tensor& weight,
                            const at::Tensor& g, const at::Tensor& dg, at::Tensor& davg, at::Tensor& dmax,
                            at::Tensor& dweight);
};

namespace cpu {
/// The kernels for the best instruction set this CPU supports.
const CbamKernelTable& cbam_kernels();
}  // namespace cpu

namespace cuda {
/// The CUDA kernels (defined only when attnkit is built with CUDA kernels).
const CbamKernelTable& cbam_kernels();
}  // namespace cuda

}  // namespace attnkit::ops
