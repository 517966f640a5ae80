// The arithmetic of the class-activation-map family, on whole batches, any device: what each method
// makes of a layer's activation A [N, C, h, w] and the target score's gradient G = ∂y/∂A (same
// shape). explain.cpp runs the passes that produce A, G and the perturbation scores; this file only
// combines them. The formulas are pytorch-grad-cam 1.5.7's (PyPI grad-cam), including its small
// constants, so that the maps agree with it to float32 rounding; explain.h lists them.
#pragma once

#include <torch/types.h>

namespace attnkit::detail {

/// Channel weights [N, C, 1, 1] of the weighted-sum CAMs, from A and G.
torch::Tensor gradcam_weights(const torch::Tensor& g);
torch::Tensor gradcam_plus_plus_weights(const torch::Tensor& a, const torch::Tensor& g);
torch::Tensor xgradcam_weights(const torch::Tensor& a, const torch::Tensor& g);

/// Score-CAM's masks: each channel of A upsampled to `size` (bilinear, corners aligned, as
/// torch.nn.UpsamplingBilinear2d) and min-max scaled per channel with 1e-8 added to the range.
/// [N, C, H, W].
torch::Tensor scorecam_masks(const torch::Tensor& a, at::IntArrayRef size);

/// The value Ablation-CAM writes into an ablated channel of one image's activation `a` [C, h, w]:
/// 0 where the smallest activation is 0 (a ReLU output), else that minimum − 1e7.
double ablation_value(const torch::Tensor& a);

/// The first principal component of x [N, C, h, w] per image: x as [hw, C] with each channel's mean
/// removed, projected on its first right singular vector → [N, h, w] (not rectified). The SVD's
/// sign is arbitrary; it is chosen so that the projection correlates positively with Σ_c x_c (the
/// map the projection smooths). Computed in float32 at least.
torch::Tensor first_component(const torch::Tensor& x);

/// [N, h, w] → each image min-max scaled to [0, 1]; (near-)constant images (range ≤ 1e-6 of the
/// largest magnitude) become 0.
torch::Tensor normalize01(const torch::Tensor& map);

}  // namespace attnkit::detail
