#include "calibration.h"

#include <attnkit/backbones/calibration.h>

#include <cstdio>

namespace attnkit::train {

namespace {
std::string printed(const char* format, double value) {
  char buf[64];
  std::snprintf(buf, sizeof buf, format, value);
  return buf;
}
}  // namespace

Calibration fit_calibration(const torch::Tensor& logits, const torch::Tensor& labels, const std::string& split) {
  Calibration c;
  c.temperature = fit_temperature(logits, labels);
  c.split = split;
  c.images = logits.size(0);
  c.bins = kCalibrationBins;
  c.nll_before = negative_log_likelihood(logits, labels);
  c.nll_after = negative_log_likelihood(logits, labels, c.temperature);
  c.ece_before = reliability_diagram(logits, labels, 1.0, c.bins).ece;
  c.ece_after = reliability_diagram(logits, labels, c.temperature, c.bins).ece;
  return c;
}

double calibrate(Checkpoint& checkpoint, const CheckpointNetwork& net, const Dataset& data, const std::string& split,
                 int64_t batch_size) {
  const auto r = evaluate_network(net, checkpoint, data, batch_size);
  checkpoint.calibration = fit_calibration(r.logits, data.labels, split);
  return accuracy_from_confusion(r.confusion).overall;
}

std::string describe_fit(const Calibration& c, const std::string& what) {
  return "temperature " + printed("%.4g", c.temperature) + ": NLL " + printed("%.4f", c.nll_before) + " -> " +
         printed("%.4f", c.nll_after) + ", ECE " + printed("%.2f%%", 100 * c.ece_before) + " -> " +
         printed("%.2f%%", 100 * c.ece_after) + " on the " + std::to_string(c.images) + " " + what + " images";
}

std::string calibration_note(const Checkpoint& info) {
  return info.calibration ? "calibrated, T=" + printed("%.3g", info.calibration->temperature) : "uncalibrated";
}

}  // namespace attnkit::train
