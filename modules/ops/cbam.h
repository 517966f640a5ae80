// attnkit::ops::cbam — CBAM and its special cases (SE, ECA, CBAM's channel gate or spatial gate
// alone) as one fused op, registered as torch.ops.attnkit.cbam.
//
//   y = x * g[n, c] * s[n, h, w]
//   g = sigmoid(f(avgpool(x)) + f(maxpool(x)))               f = fc2(relu(fc1(.))): the MLP (CBAM, SE)
//                                                            f = conv1d_k across channels: ECA
//                                                            (no channel gate: g = 1)
//   s = sigmoid(bn(conv_k×k([max_c(x*g), mean_c(x*g)])))     (or [mean, max]; no spatial gate: s = 1)
//   optionally y = relu(y + residual): a ResNet block's end, folded into the op's last pass
//
// Why fused: composed from ATen ops, CBAM walks the feature map ten or more times (pool, pool,
// multiply, two channel reductions, multiply, and as many again backwards). Here the big tensor is
// read three times and written once forward (channel pooling; gated channel max/mean without
// writing x*g; the final scaling), and read three times and written once backward; without a
// channel gate the pooling pass is skipped, without a spatial gate the gated pass. The work on the
// small tensors (the MLP or 1-D conv on [N, C]; the k×k conv, BatchNorm and sigmoid on [N, H·W])
// runs in direct loops on the CPU, forward and backward (backward recomputes the conv from the
// pooled maps): as ATen ops it cost a dozen calls forward and an autograd graph with ATen's
// convolution backward, more than the passes over x at batch 1 and at CIFAR-sized maps. On CUDA
// those pieces are ATen ops, and backward differentiates them with autograd.
//
// Gradients flow to x and every parameter. BatchNorm follows at::batch_norm: in training mode it
// normalises with batch statistics and updates the running ones in place, once per forward.
// Double backward is not supported.
#pragma once

#include <ATen/core/Tensor.h>

namespace attnkit::ops {

/// The parameters of the gates. Optional tensors may be undefined.
struct CbamWeights {
  at::Tensor fc1_weight;  ///< [C_r, C] or [C_r, C, 1, 1] (1×1 convolution, as timm stores it); undefined:
                          ///< no MLP (ECA, or no channel gate)
  at::Tensor fc1_bias;    ///< [C_r] or undefined
  at::Tensor fc2_weight;  ///< [C, C_r] or [C, C_r, 1, 1]
  at::Tensor fc2_bias;    ///< [C] or undefined
  at::Tensor spatial_weight;  ///< [1, 2, k, k]; undefined: no spatial gate (SE / channel gate alone)
  at::Tensor spatial_bias;    ///< [1] or undefined
  at::Tensor bn_weight, bn_bias;              ///< [1] each, or undefined (no BatchNorm / not affine)
  at::Tensor bn_running_mean, bn_running_var;  ///< [1] each, or undefined (always batch statistics)
  at::Tensor eca_weight;  ///< [1, 1, k], k odd: ECA's channel gate in place of the MLP, or undefined
};

struct CbamConfig {
  bool pool_avg = true;           ///< average-pooled descriptor feeds the MLP
  bool pool_max = true;           ///< max-pooled descriptor feeds the MLP
  bool spatial_max_first = true;  ///< spatial conv input is [max, mean] (official CBAM) or [mean, max] (timm)
  bool use_bn = true;             ///< BatchNorm after the spatial conv
  bool bn_training = false;       ///< BatchNorm uses batch statistics (and updates running ones)
  double bn_momentum = 0.1;
  double bn_eps = 1e-5;
  bool relu = false;  ///< ReLU on the output (after adding the residual, if one is given)
};

/// The fused op: x is [N, C, H, W], float32/float64/bfloat16/float16, NCHW or channels-last (the
/// output keeps the layout). Validates shapes, dtypes and devices with messages naming the argument.
///
/// With a `residual` (x's shape, dtype and device) and cfg.relu, it returns relu(gates(x) + residual):
/// the end of a ResNet block, in the op's last pass over the map instead of an add and a ReLU pass
/// after it (and without the tensor in between). Both are optional and independent.
at::Tensor cbam(const at::Tensor& x, const CbamWeights& w, const CbamConfig& cfg, const at::Tensor& residual = {});

/// cbam(x, w, cfg, residual), written into `residual` instead of a new tensor, and returned: the end
/// of a ResNet block in inference without allocating the output (its buffer is the shortcut's, read
/// in the same pass). Inference only: an error where grad mode is on and x, the residual or a
/// weight requires a gradient. The residual is checked as in cbam(); in another layout than x it
/// receives a copy of the result.
at::Tensor& cbam_into_residual(at::Tensor& residual, const at::Tensor& x, const CbamWeights& w, const CbamConfig& cfg);

/// Whether autograd would record cbam(x, w, cfg, residual): grad mode is on and x, the residual or a
/// differentiable weight (not BatchNorm's running statistics) requires a gradient. Where it would,
/// cbam_into_residual refuses.
bool cbam_needs_gradient(const at::Tensor& x, const CbamWeights& w, const at::Tensor& residual = {});

/// True when attnkit has fused kernels for tensors on this device.
bool has_fused_kernels(const at::Device& device);

}  // namespace attnkit::ops
