#include <attnkit/backbones/calibration.h>

#include <torch/torch.h>

#include <cmath>
#include <utility>

namespace attnkit {

namespace {

void check_temperature(double temperature, const char* fn) {
  TORCH_CHECK(std::isfinite(temperature) && temperature > 0, fn, ": temperature must be a finite number > 0, got ", temperature);
}

/// The logits in float64 and the labels as int64 on the logits' device, after checking shapes and range.
std::pair<torch::Tensor, torch::Tensor> checked(const torch::Tensor& logits, const torch::Tensor& labels, const char* fn) {
  TORCH_CHECK(logits.dim() == 2 && logits.size(0) > 0 && logits.size(1) > 0, fn,
              ": logits must be [N, K] with N, K >= 1, got ", logits.sizes());
  TORCH_CHECK(logits.is_floating_point(), fn, ": logits must be floating point, got ", logits.scalar_type());
  TORCH_CHECK(labels.dim() == 1 && labels.size(0) == logits.size(0), fn, ": labels must be [N] = [", logits.size(0),
              "], got ", labels.sizes());
  TORCH_CHECK(!labels.is_floating_point() && !labels.is_complex(), fn, ": labels must be integers, got ", labels.scalar_type());
  auto y = labels.to(logits.device(), torch::kLong);
  TORCH_CHECK(y.min().item<int64_t>() >= 0 && y.max().item<int64_t>() < logits.size(1), fn, ": labels must be in [0, ",
              logits.size(1), ")");
  return {logits.to(torch::kDouble), y};
}

/// The true class's logit of each row, [N].
torch::Tensor label_logits(const torch::Tensor& z, const torch::Tensor& y) { return z.gather(1, y.unsqueeze(1)).squeeze(1); }

/// First and second derivative in beta = 1/T of the mean NLL of softmax(beta · z):
/// mean(E_p[z] − z_label) and mean(Var_p[z]) ≥ 0, the latter being why the NLL is convex in beta.
struct Slope {
  double first = 0, second = 0;
};

Slope nll_slope(const torch::Tensor& z, const torch::Tensor& zy, double beta) {
  const auto p = torch::softmax(z * beta, 1);
  const auto mean = (p * z).sum(1, true);
  const auto variance = (p * (z - mean).square()).sum(1);  // centred: no cancellation of two large sums
  return {(mean.squeeze(1) - zy).mean().item<double>(), variance.mean().item<double>()};
}

}  // namespace

torch::Tensor calibrated_softmax(const torch::Tensor& logits, double temperature) {
  check_temperature(temperature, "calibrated_softmax");
  return torch::softmax(temperature == 1.0 ? logits : logits / temperature, 1);
}

double negative_log_likelihood(const torch::Tensor& logits, const torch::Tensor& labels, double temperature) {
  check_temperature(temperature, "negative_log_likelihood");
  const auto [z, y] = checked(logits, labels, "negative_log_likelihood");
  const auto scaled = z / temperature;
  return (torch::logsumexp(scaled, 1) - label_logits(scaled, y)).mean().item<double>();
}

ReliabilityDiagram reliability_diagram(const torch::Tensor& logits, const torch::Tensor& labels, double temperature,
                                       int64_t bins) {
  check_temperature(temperature, "reliability_diagram");
  TORCH_CHECK(bins >= 1, "reliability_diagram: bins must be >= 1, got ", bins);
  const auto [z, y] = checked(logits, labels, "reliability_diagram");
  const auto [confidence, prediction] = torch::softmax(z / temperature, 1).max(1);
  const auto correct = (prediction == y).to(torch::kDouble);
  // Bin b is (b / bins, (b + 1) / bins]: ceil(c · bins) − 1; a confidence is at least 1/K > 0.
  const auto bin = (confidence * static_cast<double>(bins)).ceil().to(torch::kLong).sub(1).clamp(0, bins - 1);
  const auto count = torch::bincount(bin, {}, bins).to(torch::kCPU);
  const auto conf_sum = torch::bincount(bin, confidence, bins).to(torch::kCPU, torch::kDouble);
  const auto correct_sum = torch::bincount(bin, correct, bins).to(torch::kCPU, torch::kDouble);
  ReliabilityDiagram d;
  d.images = z.size(0);
  for (int64_t b = 0; b < bins; ++b) {
    const int64_t n = count[b].item<int64_t>();
    const double conf = conf_sum[b].item<double>(), right = correct_sum[b].item<double>();
    d.count.push_back(n);
    d.confidence.push_back(n > 0 ? conf / static_cast<double>(n) : std::nan(""));
    d.accuracy.push_back(n > 0 ? right / static_cast<double>(n) : std::nan(""));
    // count/N · |accuracy − confidence| = |correct − confidence sums| / N.
    d.ece += std::abs(right - conf) / static_cast<double>(d.images);
  }
  return d;
}

double fit_temperature(const torch::Tensor& logits, const torch::Tensor& labels) {
  const auto [z, y] = checked(logits, labels, "fit_temperature");
  const auto zy = label_logits(z, y);
  TORCH_CHECK(nll_slope(z, zy, 0).first < 0, "fit_temperature: the logits rank the true class no higher than the average "
              "class, so no positive temperature lowers the NLL below that of uniform probabilities");
  TORCH_CHECK(!z.argmax(1).eq(y).all().item<bool>(), "fit_temperature: every one of the ", z.size(0),
              " images is classified correctly, so the NLL keeps falling as the temperature goes to 0 and no temperature "
              "minimises it; calibrate on more (or harder) data");
  // Bracket the zero of the slope in beta = 1/T: slope(lo) < 0 < slope(hi). beta grows by doubling; with
  // at least one wrong top-1 the slope turns positive for a large enough beta.
  double lo = 0, hi = 1;
  for (int doublings = 0; nll_slope(z, zy, hi).first < 0; ++doublings) {
    TORCH_CHECK(doublings < 200, "fit_temperature: the NLL still falls at temperature ", 1.0 / hi,
                "; the logits separate the labels too well to fit a temperature");
    lo = hi;
    hi *= 2;
  }
  // Newton on the slope, kept inside the bracket (bisection when a step would leave it).
  double beta = lo > 0 ? lo : hi / 2;
  for (int step = 0; step < 200; ++step) {
    const Slope s = nll_slope(z, zy, beta);
    if (s.first == 0) break;
    (s.first < 0 ? lo : hi) = beta;
    double next = s.second > 0 ? beta - s.first / s.second : (lo + hi) / 2;
    if (!(next > lo && next < hi)) next = (lo + hi) / 2;
    const bool converged = std::abs(next - beta) <= 1e-12 * beta || hi - lo <= 1e-12 * hi;
    beta = next;
    if (converged) break;
  }
  return 1.0 / beta;
}

}  // namespace attnkit
