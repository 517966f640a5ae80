// Faithfulness of a saliency map: does the model's score for the explained class follow the map?
// The scores are pytorch-grad-cam's (PyPI grad-cam 1.5.7, pytorch_grad_cam/metrics), with s(x) the
// target class's logit (its ClassifierOutputTarget) and cam [H, W] in [0, 1] at the input's size:
//
//   confidence change  Δ = s(x ⊙ cam) − s(x)                     (CamMultImageConfidenceChange)
//   drop               max(−Δ, 0)                                (DropInConfidence)
//   increase           1 if Δ > 0 else 0                         (IncreaseInConfidence)
//   ROAD               Rong et al. 2022, "A Consistent and Efficient Evaluation Strategy for
//                      Attribution Methods" (remove and debias). At percentile p of the map's values:
//                      MoRF keeps the pixels whose cam is below the percentile and imputes the rest
//                      (the most relevant first); LeRF does the same with 1 − cam (the least
//                      relevant first). Score: s(imputed) − s(x); averaged over p = 10, 20, …, 90
//                      (ROADMostRelevantFirstAverage, ROADLeastRelevantFirstAverage);
//                      combined = (LeRF − MoRF) / 2 (ROADCombined). A faithful map has a low MoRF
//                      (removing what it points at hurts) and a high LeRF.
//   percentile         NumPy's (linear interpolation between the sorted values).
//   imputation         noisy linear imputation: every imputed pixel is the weighted mean of its 8
//                      neighbours (weights 1/6 for the edge neighbours, 1/12 for the corners; only
//                      those inside the image), one sparse linear system per channel, plus Gaussian
//                      noise of standard deviation `noise` on the imputed pixels. pytorch-grad-cam
//                      solves the system directly (scipy's spsolve); here it is conjugate gradients
//                      in float64 on the image grid (the system is symmetric positive definite
//                      wherever an imputed region touches a kept pixel), batched over images and
//                      channels, to a relative residual of 1e-12.
// The noise is the one part that cannot match pytorch-grad-cam bit for bit (another random stream):
// with noise = 0 the scores agree to float32 rounding (tests/test_faithfulness.cpp).
#pragma once

#include <attnkit/backbones/resnet.h>

#include <torch/types.h>

#include <cstdint>
#include <functional>
#include <optional>
#include <vector>

namespace attnkit {

struct FaithfulnessOptions {
  /// ROAD's percentiles, each in (0, 100).
  std::vector<double> percentiles = {10, 20, 30, 40, 50, 60, 70, 80, 90};
  /// Standard deviation of the noise added to the imputed pixels (pytorch-grad-cam: 0.01).
  double noise = 0.01;
  /// Seed of the noise (the scores are reproducible).
  uint64_t seed = 0;
  /// Perturbed images per forward pass (≥ 1).
  int64_t batch_size = 32;
};

/// Every score per image ([N] float32 tensors on the CPU; morf/lerf: [P, N], one row per percentile).
struct FaithfulnessScores {
  torch::Tensor score;              ///< s(x)
  torch::Tensor confidence_change;  ///< s(x ⊙ cam) − s(x)
  torch::Tensor drop, increase;
  torch::Tensor morf, lerf;                         ///< s(imputed) − s(x) per percentile
  torch::Tensor morf_mean, lerf_mean, road_combined;
};

/// Scores `cams` [N, H, W] (values in [0, 1], the input's height and width) for `input` [N, C, H, W]
/// and `targets` [N], running `logits_of` (a batch → [B, classes]) on the perturbed images. Errors
/// name the argument: shapes, a target outside the logits, a percentile outside (0, 100).
FaithfulnessScores faithfulness(const std::function<torch::Tensor(const torch::Tensor&)>& logits_of,
                                const torch::Tensor& input, const torch::Tensor& cams, const torch::Tensor& targets,
                                const FaithfulnessOptions& options = {});

/// The same for a model (its forward under NoGradGuard; the inputs are moved to its device).
FaithfulnessScores faithfulness(Backbone& model, const torch::Tensor& input, const torch::Tensor& cams,
                                const torch::Tensor& targets, const FaithfulnessOptions& options = {});

/// NumPy's percentile (linear) of each row of `values` [N, L] at `percentile` ∈ [0, 100] → [N].
torch::Tensor percentile_rows(const torch::Tensor& values, double percentile);

/// Noisy linear imputation of `image` [N, C, H, W] where `keep` [N, H, W] is false; kept pixels are
/// returned as they are. `generator` (a CPU generator: the noise is drawn on the CPU and moved)
/// feeds the noise; nullopt: the default generator.
torch::Tensor noisy_linear_impute(const torch::Tensor& image, const torch::Tensor& keep, double noise,
                                  std::optional<at::Generator> generator = std::nullopt);

}  // namespace attnkit
