#include "cam_math.h"

#include <ATen/ops/linalg_svd.h>
#include <torch/nn/functional/upsampling.h>

namespace attnkit::detail {

torch::Tensor gradcam_weights(const torch::Tensor& g) { return g.mean({2, 3}, true); }

torch::Tensor gradcam_plus_plus_weights(const torch::Tensor& a, const torch::Tensor& g) {
  // Chattopadhay et al. eq. 19 with pytorch-grad-cam's guard: 1e-6 added to the denominator, and α = 0
  // wherever the gradient is exactly 0.
  const auto g2 = g * g, g3 = g2 * g;
  const auto sum_a = a.sum({2, 3}, true);
  auto alpha = g2 / (2 * g2 + sum_a * g3 + 1e-6);
  alpha = torch::where(g != 0, alpha, torch::zeros_like(alpha));
  return (torch::relu(g) * alpha).sum({2, 3}, true);
}

torch::Tensor xgradcam_weights(const torch::Tensor& a, const torch::Tensor& g) {
  // Fu et al. 2020: w_c = Σ_hw G·A / (Σ_hw A + 1e-7).
  return (g * a / (a.sum({2, 3}, true) + 1e-7)).sum({2, 3}, true);
}

torch::Tensor scorecam_masks(const torch::Tensor& a, at::IntArrayRef size) {
  namespace F = torch::nn::functional;
  const auto up = F::interpolate(a, F::InterpolateFuncOptions()
                                        .size(std::vector<int64_t>(size.begin(), size.end()))
                                        .mode(torch::kBilinear)
                                        .align_corners(true));
  const auto flat = up.flatten(2);
  const auto lo = std::get<0>(flat.min(2)).unsqueeze(-1).unsqueeze(-1);
  const auto hi = std::get<0>(flat.max(2)).unsqueeze(-1).unsqueeze(-1);
  return (up - lo) / (hi - lo + 1e-8);
}

double ablation_value(const torch::Tensor& a) {
  const double lo = a.min().item<double>();
  // pytorch-grad-cam subtracts 1e7 once more for every further image of an ablation batch (it
  // reads the minimum of the batch it is editing); every ablated channel gets the same value here.
  return lo == 0 ? 0.0 : lo - 1e7;
}

torch::Tensor first_component(const torch::Tensor& x) {
  const int64_t n = x.size(0), c = x.size(1), h = x.size(2), w = x.size(3);
  // No half-precision SVD; float64 stays float64.
  const auto acc = x.scalar_type() == torch::kDouble ? torch::kDouble : torch::kFloat;
  const auto xa = x.to(acc);
  const auto xs = torch::where(torch::isnan(xa), torch::zeros_like(xa), xa);  // pytorch-grad-cam zeroes NaNs first
  auto m = xs.reshape({n, c, h * w}).transpose(1, 2);         // [N, hw, C]
  m = m - m.mean(1, true);
  const auto vh = std::get<2>(at::linalg_svd(m, /*full_matrices=*/false));  // [N, k, C]
  const auto proj = torch::matmul(m, vh.select(1, 0).unsqueeze(-1)).squeeze(-1);  // [N, hw]
  const auto total = xs.sum(1).reshape({n, h * w});
  const auto sign = torch::where((proj * total).sum(1, true) < 0, -torch::ones({1}, proj.options()),
                                 torch::ones({1}, proj.options()));
  return (proj * sign).view({n, h, w});
}

torch::Tensor normalize01(const torch::Tensor& map) {
  const auto flat = map.flatten(1);
  const auto lo = std::get<0>(flat.min(1, true)), hi = std::get<0>(flat.max(1, true));
  const auto range = hi - lo;
  const auto scale = torch::maximum(hi.abs(), lo.abs());
  const auto flat_ok = range > scale * 1e-6;
  auto out = torch::where(flat_ok, (flat - lo) / torch::where(flat_ok, range, torch::ones_like(range)),
                          torch::zeros_like(flat));
  return out.view_as(map);
}

}  // namespace attnkit::detail
