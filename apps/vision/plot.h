// PNG pictures of training and evaluation, drawn with OpenCV (no plotting library needed):
// loss/accuracy curves per epoch, a confusion matrix as a heat map with counts, and reliability
// diagrams. Every picture is written atomically.
#pragma once

#include <attnkit/backbones/calibration.h>

#include <torch/types.h>

#include <string>
#include <utility>
#include <vector>

namespace attnkit::vision {

/// The numbers of one epoch that the curves show (accuracies in [0, 1]; NaN = no validation).
/// Its own type, so that drawing needs nothing from train/.
struct EpochPoint {
  double train_loss = 0, val_loss = 0, train_acc = 0, val_acc = 0;
};

/// Two panels side by side: loss (train, validation) and accuracy (train, validation) per epoch.
/// Throws std::runtime_error when the file cannot be written.
void plot_training_curves(const std::vector<EpochPoint>& history, const std::string& path);

/// Confusion matrix [K, K] (rows = true class) as a heat map normalised per row, with the counts
/// in the cells and the class names on the axes.
void plot_confusion(const torch::Tensor& confusion, const std::vector<std::string>& classes, const std::string& path);

/// Reliability diagrams side by side, one panel per (title, diagram): per confidence bin a bar of the
/// accuracy, the gap to the bin's mean confidence shaded, and the diagonal a calibrated model follows;
/// the ECE in each panel's title. Throws std::runtime_error when the file cannot be written.
void plot_reliability(const std::vector<std::pair<std::string, ReliabilityDiagram>>& panels, const std::string& path);

}  // namespace attnkit::vision
