// A bar chart of per-channel weights (the channel gates' native view, channel_gates.h), drawn with
// OpenCV: one bar per channel in channel order, the y axis from 0 to 1, a title.
#pragma once

#include <opencv2/core.hpp>
#include <torch/types.h>

#include <string>

namespace attnkit::vision {

/// `weights` [C] in [0, 1] → a BGR picture about 720 × 300 pixels (wider for more than 640 channels,
/// at least one pixel per bar). Values outside [0, 1] are clipped for drawing.
cv::Mat channel_bar_chart(const torch::Tensor& weights, const std::string& title);

}  // namespace attnkit::vision
