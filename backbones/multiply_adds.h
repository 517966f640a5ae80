// How much arithmetic a network's forward pass is: the multiply-adds of its convolutions and matrix
// products, the number papers and model cards quote ("MACs", "FLOPs" / 2).
//
// Counted from the ATen ops one forward pass actually runs (observed through ATen's RecordFunction
// callbacks on the calling thread), so the count follows the model as built, attention included:
//   convolution            N · C_out · H_out · W_out · (C_in / groups) · kH · kW
//   linear, addmm, mm      rows · in_features · out_features
//   bmm, baddbmm           batch · n · k · m
// An op inside one already counted (linear's addmm, convolution's backend call) is not counted again.
// Gates run their composite math while counting (their fused op computes the same products in one
// kernel ATen cannot see into); elementwise work, pooling, softmax and fused attention kernels
// (neighborhood attention, scaled_dot_product_attention's fused paths) are not counted.
#pragma once

#include <attnkit/backbones/resnet.h>

#include <torch/types.h>

#include <cstdint>

namespace attnkit {

/// Multiply-adds of `model.forward(input)` for the whole batch (divide by N for one image). Runs the
/// model once in eval mode without autograd and leaves its mode and implementations as they were.
int64_t count_multiply_adds(Backbone& model, const torch::Tensor& input);

/// Parameters of the model (every element of every parameter tensor).
int64_t count_parameters(Backbone& model);

}  // namespace attnkit
