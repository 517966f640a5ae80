// Temperature scaling of a checkpoint, as `attnkit train` does at the end of a run (on its validation
// split) and `attnkit calibrate` does for a saved checkpoint: the logits are computed once, T is fitted
// on them (attnkit::fit_temperature, float64), and NLL and 15-bin ECE are measured before (T = 1) and
// after, on the same images. The data must be held out of training and must never be the test data:
// a temperature fitted on the test set would make the ECE that eval reports on it meaningless.
#pragma once

#include "checkpoint_eval.h"

#include <attnkit/backbones/checkpoint.h>

#include <string>

namespace attnkit::train {

/// Confidence bins of every ECE the program reports (as in Guo et al. 2017).
constexpr int64_t kCalibrationBins = 15;

/// The temperature fitted to `logits` [N, K] and `labels` [N], with NLL and ECE before and after;
/// `split` says in words what the data is (stored in the checkpoint).
Calibration fit_calibration(const torch::Tensor& logits, const torch::Tensor& labels, const std::string& split);

/// Runs `net` over `data`, fits the temperature and stores it in `checkpoint.calibration` (replacing any
/// earlier one). Returns the network's accuracy on `data`.
double calibrate(Checkpoint& checkpoint, const CheckpointNetwork& net, const Dataset& data, const std::string& split,
                 int64_t batch_size);

/// "temperature 0.8123: NLL 0.3456 -> 0.1789, ECE 8.23% -> 1.02% on the 5000 <what> images".
std::string describe_fit(const Calibration& calibration, const std::string& what);

/// What the commands that show probabilities print once: "calibrated, T=0.812" or "uncalibrated".
std::string calibration_note(const Checkpoint& info);

}  // namespace attnkit::train
