// Calibrated probabilities by temperature scaling (Guo, Pleiss, Sun, Weinberger 2017, "On Calibration of
// Modern Neural Networks"): one number T > 0 for the whole network, probabilities softmax(logits / T),
// T chosen to minimise the negative log-likelihood (NLL) of held-out labels. Dividing by T keeps the
// order of the logits, so the top-1 class and the accuracy never change; only how sure the model says
// it is does. A checkpoint stores its T (checkpoint.h: Calibration).
//
//   const double t = attnkit::fit_temperature(val_logits, val_labels);  // validation data, never test
//   auto probs = attnkit::calibrated_softmax(test_logits, t);
//   auto diagram = attnkit::reliability_diagram(test_logits, test_labels, t);  // diagram.ece
//
// Everything is computed in float64 from logits [N, K] (any floating dtype, any device) and int64
// labels [N]. How the fit works: the NLL of softmax(beta · z) is convex in beta = 1/T (its second
// derivative is the mean variance of z under the softmax), so its minimum is where the first
// derivative, mean(E_p[z] − z_label), crosses zero. fit_temperature brackets that zero in beta > 0 and
// runs Newton steps inside the bracket, falling back to bisection whenever a step leaves it: it cannot
// diverge, and converges quadratically near the minimum.
//
// Departures from the paper: none in the math. The paper's ECE uses 15 equal-width confidence bins
// (0, 1/15], (1/15, 2/15], ..., as here; the bin count is a parameter.
#pragma once

#include <torch/types.h>

#include <cstdint>
#include <vector>

namespace attnkit {

/// softmax(logits / temperature) over dim 1, in the logits' dtype. `temperature` must be finite and > 0.
torch::Tensor calibrated_softmax(const torch::Tensor& logits, double temperature);

/// Mean negative log-likelihood of `labels` under softmax(logits / temperature), computed in float64.
double negative_log_likelihood(const torch::Tensor& logits, const torch::Tensor& labels, double temperature = 1.0);

/// Confidence (top-1 probability) against accuracy in equal-width bins: what a reliability diagram draws
/// and what the expected calibration error sums.
struct ReliabilityDiagram {
  /// Images per bin; bin b holds confidences in (b / bins, (b + 1) / bins].
  std::vector<int64_t> count;
  /// Mean confidence and fraction of correct top-1 predictions of each bin (NaN for an empty bin).
  std::vector<double> confidence, accuracy;
  /// Expected calibration error: sum over bins of count/N · |accuracy − confidence|, in [0, 1].
  double ece = 0;
  int64_t images = 0;

  int64_t bins() const { return static_cast<int64_t>(count.size()); }
};

/// The reliability diagram of softmax(logits / temperature) against `labels`, in `bins` bins (15, as in
/// the paper, by default).
ReliabilityDiagram reliability_diagram(const torch::Tensor& logits, const torch::Tensor& labels, double temperature = 1.0,
                                       int64_t bins = 15);

/// The temperature T > 0 that minimises negative_log_likelihood(logits, labels, T), to a relative
/// precision of about 1e-10. Throws c10::Error, saying why, where no finite T > 0 is a minimum: when the
/// logits rank the true class no higher than the average class (the NLL falls as T → ∞ or for T < 0),
/// or when every label is the top-1 by a margin (the NLL keeps falling as T → 0: use more or harder
/// calibration data).
double fit_temperature(const torch::Tensor& logits, const torch::Tensor& labels);

}  // namespace attnkit
