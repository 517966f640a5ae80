#include "bar_chart.h"

#include <opencv2/imgproc.hpp>

#include <algorithm>
#include <cmath>
#include <iomanip>
#include <sstream>

namespace attnkit::vision {

cv::Mat channel_bar_chart(const torch::Tensor& weights, const std::string& title) {
  TORCH_CHECK(weights.dim() == 1 && weights.numel() > 0, "channel_bar_chart: expected [C] weights, got ", weights.sizes());
  const auto w = weights.detach().to(torch::kCPU, torch::kFloat).clamp(0, 1).contiguous();
  const int channels = static_cast<int>(w.numel());
  const int left = 48, right = 16, top = 36, bottom = 32, plot_h = 232;
  const int plot_w = std::max(640, channels);
  cv::Mat img(top + plot_h + bottom, left + plot_w + right, CV_8UC3, cv::Scalar(255, 255, 255));
  const auto font = cv::FONT_HERSHEY_SIMPLEX;
  // Axes and the 0, 0.5, 1 grid lines.
  for (double v : {0.0, 0.5, 1.0}) {
    const int y = top + static_cast<int>(std::lround((1 - v) * plot_h));
    cv::line(img, {left, y}, {left + plot_w, y}, cv::Scalar(210, 210, 210), 1);
    std::ostringstream label;
    label << v;
    cv::putText(img, label.str(), {8, y + 5}, font, 0.45, cv::Scalar(60, 60, 60), 1, cv::LINE_AA);
  }
  const float* p = w.data_ptr<float>();
  const double step = static_cast<double>(plot_w) / channels;
  for (int c = 0; c < channels; ++c) {
    const int x0 = left + static_cast<int>(std::floor(c * step));
    const int x1 = std::max(x0 + 1, left + static_cast<int>(std::floor((c + 1) * step)) - (step >= 3 ? 1 : 0));
    const int y0 = top + static_cast<int>(std::lround((1 - p[c]) * plot_h));
    cv::rectangle(img, cv::Point(x0, y0), cv::Point(x1 - 1, top + plot_h), cv::Scalar(180, 110, 40), cv::FILLED);
  }
  cv::line(img, {left, top}, {left, top + plot_h}, cv::Scalar(0, 0, 0), 1);
  cv::line(img, {left, top + plot_h}, {left + plot_w, top + plot_h}, cv::Scalar(0, 0, 0), 1);
  std::ostringstream axis;
  axis << "channel 0.." << channels - 1;
  cv::putText(img, axis.str(), {left, top + plot_h + 22}, font, 0.45, cv::Scalar(60, 60, 60), 1, cv::LINE_AA);
  std::ostringstream head;
  head << title << "  (" << channels << " channels, mean " << std::fixed << std::setprecision(3) << w.mean().item<float>() << ")";
  cv::putText(img, head.str(), {left, 24}, font, 0.55, cv::Scalar(0, 0, 0), 1, cv::LINE_AA);
  return img;
}

}  // namespace attnkit::vision
