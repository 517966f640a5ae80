// PNG pictures of training and evaluation, drawn with OpenCV (no plotting library needed):
// loss/accuracy curves per epoch, and a confusion matrix as a heat map with counts.
#pragma once

#include "train/metrics.h"

#include <string>
#include <vector>

namespace attnkit::vision {

/// Two panels side by side: loss (train, validation) and accuracy (train, validation) per epoch.
/// Throws std::runtime_error when the file cannot be written.
void plot_training_curves(const std::vector<train::EpochRecord>& history, const std::string& path);

/// Confusion matrix [K, K] (rows = true class) as a heat map normalised per row, with the counts
/// in the cells and the class names on the axes.
void plot_confusion(const torch::Tensor& confusion, const std::vector<std::string>& classes, const std::string& path);

}  // namespace attnkit::vision
