#include <attnkit/backbones/faithfulness.h>

#include <ATen/CPUGeneratorImpl.h>

#include <algorithm>
#include <cmath>

namespace attnkit {

namespace {

/// Σ_neighbours w·v of every pixel of v [B, 1, H, W] (zero outside the image), with ROAD's weights:
/// 1/6 for the 4 edge neighbours, 1/12 for the corners. That kernel is ([1 2 1] ⊗ [1 2 1]) / 12 minus
/// its centre 4/12: two separable passes of shifted adds, cheaper than a 3×3 convolution in float64
/// (which has no fast kernel on the CPU).
torch::Tensor neighbour_sum(const torch::Tensor& v) {
  const int64_t h = v.size(2), w = v.size(3);
  const auto rows = torch::constant_pad_nd(v, {0, 0, 1, 1}, 0);
  const auto vertical = rows.slice(2, 0, h) + 2 * rows.slice(2, 1, h + 1) + rows.slice(2, 2, h + 2);
  const auto cols = torch::constant_pad_nd(vertical, {1, 1, 0, 0}, 0);
  const auto both = cols.slice(3, 0, w) + 2 * cols.slice(3, 1, w + 1) + cols.slice(3, 2, w + 2);
  return both * (1.0 / 12) - v * (1.0 / 3);
}

void check_scores_args(const torch::Tensor& input, const torch::Tensor& cams, const torch::Tensor& targets,
                       const FaithfulnessOptions& options) {
  TORCH_CHECK(input.dim() == 4, "faithfulness: input must be [N, C, H, W], got ", input.sizes());
  TORCH_CHECK(cams.dim() == 3 && cams.size(0) == input.size(0) && cams.size(1) == input.size(2) &&
                  cams.size(2) == input.size(3),
              "faithfulness: cams must be [N, H, W] = [", input.size(0), ", ", input.size(2), ", ", input.size(3),
              "] (the input's size), got ", cams.sizes());
  TORCH_CHECK(targets.dim() == 1 && targets.size(0) == input.size(0), "faithfulness: targets must be [N] = [",
              input.size(0), "], got ", targets.sizes());
  TORCH_CHECK(options.batch_size >= 1, "faithfulness: batch_size must be at least 1, got ", options.batch_size);
  TORCH_CHECK(options.noise >= 0 && std::isfinite(options.noise), "faithfulness: noise must be a finite number >= 0, got ",
              options.noise);
  for (double p : options.percentiles)
    TORCH_CHECK(p > 0 && p < 100, "faithfulness: percentile ", p, " is outside (0, 100)");
}

}  // namespace

torch::Tensor percentile_rows(const torch::Tensor& values, double percentile) {
  TORCH_CHECK(values.dim() == 2 && values.size(1) > 0, "percentile_rows: values must be [N, L] with L > 0, got ",
              values.sizes());
  TORCH_CHECK(percentile >= 0 && percentile <= 100, "percentile_rows: percentile ", percentile, " is outside [0, 100]");
  const auto sorted = std::get<0>(values.to(torch::kDouble).sort(1));
  const double position = percentile / 100.0 * static_cast<double>(values.size(1) - 1);
  const auto lo = static_cast<int64_t>(std::floor(position));
  const int64_t hi = std::min<int64_t>(lo + 1, values.size(1) - 1);
  const double t = position - static_cast<double>(lo);
  const auto a = sorted.select(1, lo), b = sorted.select(1, hi);
  // NumPy's _lerp: from the nearer end, so that t = 0 and t = 1 return the values exactly.
  return t >= 0.5 ? b - (b - a) * (1 - t) : a + (b - a) * t;
}

torch::Tensor noisy_linear_impute(const torch::Tensor& image, const torch::Tensor& keep, double noise,
                                  std::optional<at::Generator> generator) {
  TORCH_CHECK(image.dim() == 4, "noisy_linear_impute: image must be [N, C, H, W], got ", image.sizes());
  TORCH_CHECK(keep.dim() == 3 && keep.size(0) == image.size(0) && keep.size(1) == image.size(2) &&
                  keep.size(2) == image.size(3),
              "noisy_linear_impute: keep must be [N, H, W] matching the image, got ", keep.sizes());
  const int64_t n = image.size(0), c = image.size(1), h = image.size(2), w = image.size(3);
  const auto f64 = image.options().dtype(torch::kDouble);
  const auto known = keep.to(f64).unsqueeze(1);  // [N, 1, H, W]
  const auto unknown = 1 - known;
  // Every channel is its own system on the same pixels: [N·C, 1, H, W].
  const auto img = image.to(torch::kDouble).reshape({n * c, 1, h, w});
  const auto u = unknown.repeat_interleave(c, 0);
  const auto diag = neighbour_sum(torch::ones({1, 1, h, w}, f64));  // Σ of the in-image neighbours' weights
  // L v = D v − Σ_unknown neighbours w v on the unknown pixels; b = Σ_known neighbours w x.
  auto apply = [&](const torch::Tensor& v) { return u * (diag * v - neighbour_sum(v)); };
  const auto b = u * neighbour_sum((1 - u) * img);
  auto x = torch::zeros_like(b);
  auto r = b.clone();
  auto p = r.clone();
  auto rs = (r * r).sum({1, 2, 3});
  const auto b_norm = rs.sqrt().clamp_min(1e-300);
  // CG converges in at most (unknown pixels) steps in exact arithmetic; in practice in O(√κ·log(1/ε))
  // with κ ~ the imputed regions' diameter²: a few hundred steps for 224×224.
  const int64_t max_iterations = std::max<int64_t>(100, 4 * (h + w) * 8);
  for (int64_t it = 0; it < max_iterations; ++it) {
    // Checked every 8 steps: each check waits for the device.
    if (it % 8 == 0 && (rs.sqrt() / b_norm).max().item<double>() < 1e-12) break;
    const auto ap = apply(p);
    const auto pap = (p * ap).sum({1, 2, 3});
    const auto alpha = torch::where(pap > 0, rs / pap.clamp_min(1e-300), torch::zeros_like(pap)).view({-1, 1, 1, 1});
    x = x + alpha * p;
    r = r - alpha * ap;
    const auto rs_new = (r * r).sum({1, 2, 3});
    const auto beta = torch::where(rs > 0, rs_new / rs.clamp_min(1e-300), torch::zeros_like(rs)).view({-1, 1, 1, 1});
    p = r + beta * p;
    rs = rs_new;
  }
  auto filled = ((1 - u) * img + u * x).to(image.scalar_type()).view({n, c, h, w});
  if (noise > 0) {
    // Drawn on the CPU, so that a seed gives the same noise on every device.
    const auto eps = at::randn({n, c, h, w}, generator, torch::dtype(torch::kFloat)).to(image.device(), image.scalar_type());
    filled = filled + unknown.to(image.scalar_type()) * (noise * eps);
  }
  return filled;
}

FaithfulnessScores faithfulness(const std::function<torch::Tensor(const torch::Tensor&)>& logits_of,
                                const torch::Tensor& input, const torch::Tensor& cams, const torch::Tensor& targets,
                                const FaithfulnessOptions& options) {
  check_scores_args(input, cams, targets, options);
  torch::NoGradGuard no_grad;
  const int64_t n = input.size(0);
  const auto cam = cams.to(input.device(), torch::kFloat);
  const auto target = targets.to(input.device(), torch::kLong).view({-1, 1});
  // Target scores of a batch of perturbed copies of the images, batch_size at a time.
  auto scores_of = [&](const torch::Tensor& images, const torch::Tensor& which) {
    std::vector<torch::Tensor> out;
    for (int64_t s = 0; s < images.size(0); s += options.batch_size) {
      const auto part = images.slice(0, s, std::min(images.size(0), s + options.batch_size));
      const auto logits = logits_of(part);
      TORCH_CHECK(target.max().item<int64_t>() < logits.size(1) && target.min().item<int64_t>() >= 0,
                  "faithfulness: a target is outside [0, ", logits.size(1), ")");
      out.push_back(logits.to(torch::kFloat).gather(1, which.slice(0, s, s + part.size(0))).view(-1));
    }
    return torch::cat(out).cpu();
  };
  FaithfulnessScores r;
  r.score = scores_of(input, target);
  r.confidence_change = scores_of(input * cam.unsqueeze(1).to(input.scalar_type()), target) - r.score;
  r.drop = torch::relu(-r.confidence_change);
  r.increase = (r.confidence_change > 0).to(torch::kFloat);

  // ROAD: every percentile × {MoRF, LeRF} imputed first, then scored in batches.
  at::Generator gen = at::detail::createCPUGenerator(options.seed);
  // One imputation for all of them: the systems are independent, and one conjugate-gradient loop over
  // every (copy, channel) runs its neighbour sums once per step for the whole batch.
  std::vector<torch::Tensor> keeps;
  const auto flat = cam.flatten(1);
  for (bool most_relevant_first : {true, false}) {
    const auto relevance = most_relevant_first ? cam : 1 - cam;
    for (double p : options.percentiles) {
      const auto threshold = percentile_rows(most_relevant_first ? flat : 1 - flat, p).to(torch::kFloat);
      keeps.push_back(relevance < threshold.view({-1, 1, 1}));
    }
  }
  const int64_t copies = static_cast<int64_t>(keeps.size());
  const auto all = noisy_linear_impute(input.repeat({copies, 1, 1, 1}), torch::cat(keeps), options.noise, gen);
  const int64_t np = static_cast<int64_t>(options.percentiles.size());
  const auto after = scores_of(all, target.repeat({2 * np, 1})).view({2, np, n});
  r.morf = after[0] - r.score;
  r.lerf = after[1] - r.score;
  r.morf_mean = r.morf.mean(0);
  r.lerf_mean = r.lerf.mean(0);
  r.road_combined = (r.lerf_mean - r.morf_mean) / 2;
  return r;
}

FaithfulnessScores faithfulness(Backbone& model, const torch::Tensor& input, const torch::Tensor& cams,
                                const torch::Tensor& targets, const FaithfulnessOptions& options) {
  torch::Device device = torch::kCPU;
  for (const auto& p : model.module().parameters()) {
    device = p.device();
    break;
  }
  return faithfulness([&model](const torch::Tensor& x) { return model.forward(x); }, input.to(device), cams, targets,
                      options);
}

}  // namespace attnkit
