#include "heatmap.h"

#include <opencv2/imgproc.hpp>

#include <algorithm>
#include <cmath>
#include <sstream>
#include <stdexcept>
#include <utility>

namespace attnkit::vision {
namespace {

const std::vector<std::pair<std::string, int>>& colormaps() {
  static const std::vector<std::pair<std::string, int>> maps = {
      {"jet", cv::COLORMAP_JET},         {"turbo", cv::COLORMAP_TURBO}, {"viridis", cv::COLORMAP_VIRIDIS},
      {"inferno", cv::COLORMAP_INFERNO}, {"magma", cv::COLORMAP_MAGMA}, {"plasma", cv::COLORMAP_PLASMA},
      {"hot", cv::COLORMAP_HOT},         {"parula", cv::COLORMAP_PARULA}, {"gray", -1}};
  return maps;
}

}  // namespace

const std::vector<std::string>& colormap_names() {
  static const std::vector<std::string> names = [] {
    std::vector<std::string> n;
    for (const auto& [name, id] : colormaps()) n.push_back(name);
    return n;
  }();
  return names;
}

int colormap_from_name(const std::string& name) {
  for (const auto& [n, id] : colormaps())
    if (n == name) return id;
  std::ostringstream valid;
  for (const auto& n : colormap_names()) valid << (valid.tellp() ? ", " : "") << n;
  throw std::invalid_argument("unknown colormap \"" + name + "\" (valid: " + valid.str() + ")");
}

cv::Mat colorize(const cv::Mat& map01, int colormap) {
  CV_Assert(map01.type() == CV_32F);
  cv::Mat u8;
  map01.convertTo(u8, CV_8U, 255.0);  // saturating: values outside [0, 1] clamp
  cv::Mat bgr;
  if (colormap < 0) cv::cvtColor(u8, bgr, cv::COLOR_GRAY2BGR);
  else cv::applyColorMap(u8, bgr, colormap);
  return bgr;
}

cv::Mat overlay(const cv::Mat& bgr, const cv::Mat& map01, double alpha, int colormap) {
  CV_Assert(bgr.type() == CV_8UC3 && map01.type() == CV_32F && bgr.size() == map01.size());
  cv::Mat out;
  cv::addWeighted(bgr, 1.0 - alpha, colorize(map01, colormap), alpha, 0.0, out);
  return out;
}

void draw_label(cv::Mat& bgr, const std::string& text) {
  if (text.empty() || bgr.empty()) return;
  const int font = cv::FONT_HERSHEY_SIMPLEX;
  const double scale = std::clamp(std::min(bgr.cols, bgr.rows) / 600.0, 0.35, 1.2);
  const int thickness = scale > 0.8 ? 2 : 1;
  std::vector<std::string> lines;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) lines.push_back(line);
  int baseline = 0, width = 0, line_height = 0;
  for (const auto& line : lines) {
    const cv::Size s = cv::getTextSize(line, font, scale, thickness, &baseline);
    width = std::max(width, s.width);
    line_height = std::max(line_height, s.height + baseline + 4);
  }
  const int pad = 4;
  const cv::Rect box = cv::Rect(0, 0, width + 2 * pad, line_height * static_cast<int>(lines.size()) + pad) &
                       cv::Rect(0, 0, bgr.cols, bgr.rows);
  cv::Mat roi = bgr(box);
  cv::Mat dark(roi.size(), roi.type(), cv::Scalar::all(0));
  cv::addWeighted(roi, 0.4, dark, 0.6, 0.0, roi);
  for (size_t i = 0; i < lines.size(); ++i) {
    const cv::Point origin(pad, pad + line_height * static_cast<int>(i + 1) - baseline - 2);
    cv::putText(bgr, lines[i], origin, font, scale, cv::Scalar(255, 255, 255), thickness, cv::LINE_AA);
  }
}

cv::Mat make_grid(const std::vector<cv::Mat>& tiles, const std::vector<std::string>& labels, int columns) {
  if (tiles.empty()) throw std::invalid_argument("make_grid: no tiles");
  const int n = static_cast<int>(tiles.size());
  const int cols = columns > 0 ? std::min(columns, n) : static_cast<int>(std::ceil(std::sqrt(static_cast<double>(n))));
  const int rows = (n + cols - 1) / cols;
  const cv::Size tile = tiles.front().size();
  const int border = 4;
  cv::Mat grid(rows * tile.height + (rows + 1) * border, cols * tile.width + (cols + 1) * border, CV_8UC3,
               cv::Scalar(32, 32, 32));
  for (int i = 0; i < n; ++i) {
    cv::Mat t = tiles[i];
    if (t.size() != tile) cv::resize(t, t, tile, 0, 0, cv::INTER_AREA);
    else t = t.clone();
    if (static_cast<size_t>(i) < labels.size()) draw_label(t, labels[i]);
    const int r = i / cols, c = i % cols;
    t.copyTo(grid(cv::Rect(border + c * (tile.width + border), border + r * (tile.height + border), tile.width, tile.height)));
  }
  return grid;
}

cv::Mat upscale_for_display(const cv::Mat& image, int min_side) {
  const int side = std::min(image.cols, image.rows);
  if (side <= 0 || side >= min_side) return image;
  const int factor = (min_side + side - 1) / side;
  cv::Mat out;
  cv::resize(image, out, cv::Size(image.cols * factor, image.rows * factor), 0, 0, cv::INTER_NEAREST);
  return out;
}

}  // namespace attnkit::vision
