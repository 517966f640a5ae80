#include "plot.h"

#include "common/files.h"

#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <stdexcept>
#include <string>
#include <vector>

namespace attnkit::vision {
namespace {

const cv::Scalar kBlack(0, 0, 0), kGray(200, 200, 200), kBlue(180, 110, 30), kOrange(20, 130, 240);

std::string label(double v, const char* format) {
  char buf[32];
  std::snprintf(buf, sizeof buf, format, v);
  return buf;
}

/// Encodes in memory and writes atomically: a full disk or a kill leaves the previous picture (the
/// training curves of a resumed run, eval's --png) in place, never a truncated one.
void write_png(const cv::Mat& img, const std::string& path) {
  std::vector<uchar> png;
  bool ok = false;
  try {
    ok = cv::imencode(".png", img, png);
  } catch (const cv::Exception&) {
    ok = false;
  }
  if (!ok) throw std::runtime_error("cannot encode the picture for " + path);
  common::write_file_atomic(path, std::string(png.begin(), png.end()));
}

/// Horizontal grid lines over `plot` at `steps` + 1 values from `lo` to `hi`, labelled at x = `label_x`,
/// and the plot's frame.
void draw_value_grid(cv::Mat& img, const cv::Rect& plot, int label_x, double lo, double hi, int steps, const char* tick_format) {
  for (int i = 0; i <= steps; ++i) {
    const int y = plot.y + plot.height - plot.height * i / steps;
    cv::line(img, {plot.x, y}, {plot.x + plot.width, y}, kGray, 1);
    cv::putText(img, label(lo + (hi - lo) * i / steps, tick_format), {label_x, y + 4}, cv::FONT_HERSHEY_SIMPLEX, 0.4, kBlack, 1,
                cv::LINE_AA);
  }
  cv::rectangle(img, plot, kBlack, 1);
}

/// One legend entry at (x, y): a filled swatch (or a line where `line`) and its name.
void draw_legend_entry(cv::Mat& img, int x, int y, const cv::Scalar& color, const std::string& name, bool line) {
  if (line) cv::line(img, {x, y - 4}, {x + 20, y - 4}, color, 2, cv::LINE_AA);
  else cv::rectangle(img, cv::Rect(x, y - 10, 20, 10), color, cv::FILLED);
  cv::putText(img, name, {x + 25, y}, cv::FONT_HERSHEY_SIMPLEX, 0.45, kBlack, 1, cv::LINE_AA);
}

/// One reliability diagram in `area`: accuracy bars per confidence bin, the gap up or down to the bin's
/// mean confidence, the diagonal.
void draw_reliability_panel(cv::Mat& img, const cv::Rect& area, const std::string& title, const ReliabilityDiagram& d) {
  const cv::Rect plot(area.x + 60, area.y + 45, area.width - 80, area.height - 110);
  cv::putText(img, title + label(100 * d.ece, ": ECE %.2f%%"), {plot.x, area.y + 25}, cv::FONT_HERSHEY_SIMPLEX, 0.55, kBlack, 1,
              cv::LINE_AA);
  draw_value_grid(img, plot, area.x + 20, 0, 1, 5, "%.1f");
  cv::putText(img, "accuracy", {area.x + 10, plot.y - 8}, cv::FONT_HERSHEY_SIMPLEX, 0.45, kBlack, 1, cv::LINE_AA);
  const auto px = [&](double v) { return plot.x + static_cast<int>(std::lround(plot.width * v)); };
  const auto py = [&](double v) { return plot.y + plot.height - static_cast<int>(std::lround(plot.height * v)); };
  const int64_t bins = d.bins();
  // The gap is see-through: where the accuracy exceeds the confidence it lies over the bar's top.
  const double gap_opacity = 0.45;
  for (int64_t b = 0; b < bins; ++b) {
    if (d.count[b] == 0) continue;
    const int x0 = px(static_cast<double>(b) / bins) + 1, x1 = px(static_cast<double>(b + 1) / bins) - 1;
    cv::rectangle(img, cv::Point(x0, py(d.accuracy[b])), cv::Point(x1, py(0)), kBlue, cv::FILLED);
    const cv::Rect gap(cv::Point(x0, py(std::max(d.accuracy[b], d.confidence[b]))),
                       cv::Point(x1, py(std::min(d.accuracy[b], d.confidence[b]))));
    if (gap.height > 0) {
      cv::Mat under = img(gap);
      cv::addWeighted(cv::Mat(under.size(), under.type(), kOrange), gap_opacity, under, 1 - gap_opacity, 0, under);
    }
    cv::rectangle(img, gap, kOrange, 1);
    // How many images the bin holds: a bar of three images and one of thousands look alike otherwise.
    cv::putText(img, std::to_string(d.count[b]), {x0, gap.y - 3}, cv::FONT_HERSHEY_SIMPLEX, 0.3, kBlack, 1, cv::LINE_AA);
  }
  cv::line(img, {px(0), py(0)}, {px(1), py(1)}, kBlack, 1, cv::LINE_AA);
  for (int i = 0; i <= 5; ++i) {
    cv::putText(img, label(i / 5.0, "%.1f"), {px(i / 5.0) - 10, plot.y + plot.height + 16}, cv::FONT_HERSHEY_SIMPLEX, 0.4, kBlack, 1,
                cv::LINE_AA);
  }
  cv::putText(img, "confidence (numbers: images per bin)", {plot.x + plot.width / 2 - 150, plot.y + plot.height + 34},
              cv::FONT_HERSHEY_SIMPLEX, 0.45, kBlack, 1, cv::LINE_AA);
  const int legend_y = plot.y + plot.height + 58;
  draw_legend_entry(img, plot.x, legend_y, kBlue, "accuracy", false);
  const cv::Scalar gap_on_white = kOrange * gap_opacity + cv::Scalar::all(255 * (1 - gap_opacity));
  draw_legend_entry(img, plot.x + 110, legend_y, gap_on_white, "gap to confidence", false);
  draw_legend_entry(img, plot.x + 280, legend_y, kBlack, "calibrated", true);
}

/// One panel: `series` (name, colour, values per epoch; NaN = absent) in the rectangle `area`.
void draw_panel(cv::Mat& img, const cv::Rect& area, const std::string& title,
                const std::vector<std::tuple<std::string, cv::Scalar, std::vector<double>>>& series, const char* tick_format) {
  double lo = INFINITY, hi = -INFINITY;
  size_t n = 0;
  for (const auto& [name, color, values] : series) {
    n = std::max(n, values.size());
    for (double v : values) {
      if (std::isfinite(v)) lo = std::min(lo, v), hi = std::max(hi, v);
    }
  }
  if (!std::isfinite(lo)) lo = 0, hi = 1;
  if (hi - lo < 1e-9) hi = lo + 1e-3;
  const double pad = (hi - lo) * 0.05;
  lo -= pad;
  hi += pad;
  const cv::Rect plot(area.x + 70, area.y + 35, area.width - 90, area.height - 75);
  cv::putText(img, title, {area.x + 70, area.y + 22}, cv::FONT_HERSHEY_SIMPLEX, 0.6, kBlack, 1, cv::LINE_AA);
  draw_value_grid(img, plot, area.x + 5, lo, hi, 4, tick_format);
  const auto px = [&](size_t i) { return plot.x + (n > 1 ? static_cast<int>(plot.width * i / (n - 1)) : plot.width / 2); };
  const auto py = [&](double v) { return plot.y + plot.height - static_cast<int>(std::lround(plot.height * (v - lo) / (hi - lo))); };
  for (size_t i = 0; i < n; i += std::max<size_t>(1, n / 10)) {
    cv::putText(img, std::to_string(i + 1), {px(i) - 5, plot.y + plot.height + 16}, cv::FONT_HERSHEY_SIMPLEX, 0.4, kBlack, 1, cv::LINE_AA);
  }
  cv::putText(img, "epoch", {plot.x + plot.width / 2 - 20, plot.y + plot.height + 34}, cv::FONT_HERSHEY_SIMPLEX, 0.45, kBlack, 1, cv::LINE_AA);
  int legend_y = plot.y + 15;
  for (const auto& [name, color, values] : series) {
    bool any = false;
    for (size_t i = 0; i < values.size(); ++i) {
      if (!std::isfinite(values[i])) continue;
      any = true;
      cv::circle(img, {px(i), py(values[i])}, 2, color, cv::FILLED, cv::LINE_AA);
      if (i > 0 && std::isfinite(values[i - 1])) cv::line(img, {px(i - 1), py(values[i - 1])}, {px(i), py(values[i])}, color, 2, cv::LINE_AA);
    }
    if (!any) continue;
    cv::line(img, {plot.x + plot.width - 110, legend_y - 4}, {plot.x + plot.width - 90, legend_y - 4}, color, 2, cv::LINE_AA);
    cv::putText(img, name, {plot.x + plot.width - 85, legend_y}, cv::FONT_HERSHEY_SIMPLEX, 0.45, kBlack, 1, cv::LINE_AA);
    legend_y += 18;
  }
}

}  // namespace

void plot_training_curves(const std::vector<EpochPoint>& history, const std::string& path) {
  std::vector<double> tl, vl, ta, va;
  for (const auto& r : history) {
    tl.push_back(r.train_loss);
    vl.push_back(r.val_loss);
    ta.push_back(100 * r.train_acc);
    va.push_back(100 * r.val_acc);
  }
  cv::Mat img(420, 1000, CV_8UC3, cv::Scalar(255, 255, 255));
  draw_panel(img, {0, 0, 500, 420}, "loss", {{"train", kBlue, tl}, {"validation", kOrange, vl}}, "%.3f");
  draw_panel(img, {500, 0, 500, 420}, "accuracy (%)", {{"train", kBlue, ta}, {"validation", kOrange, va}}, "%.2f");
  write_png(img, path);
}

void plot_confusion(const torch::Tensor& confusion, const std::vector<std::string>& classes, const std::string& path) {
  const int k = static_cast<int>(confusion.size(0));
  const auto c = confusion.to(torch::kDouble).cpu();
  const auto rows = c.sum(1, true).clamp_min(1);
  const auto frac = (c / rows).contiguous();
  const int cell = std::max(28, std::min(60, 700 / std::max(k, 1)));
  size_t name_len = 4;
  for (const auto& n : classes) name_len = std::max(name_len, n.size());
  const int left = 20 + static_cast<int>(name_len) * 8, top = 50;
  cv::Mat img(top + k * cell + 40 + static_cast<int>(name_len) * 8, left + k * cell + 20, CV_8UC3, cv::Scalar(255, 255, 255));
  cv::putText(img, "true class (rows) vs predicted class (columns)", {10, 25}, cv::FONT_HERSHEY_SIMPLEX, 0.5, kBlack, 1, cv::LINE_AA);
  const auto f = frac.accessor<double, 2>();
  const auto counts = c.accessor<double, 2>();
  for (int i = 0; i < k; ++i) {
    const std::string name = i < static_cast<int>(classes.size()) ? classes[i] : std::to_string(i);
    cv::putText(img, name, {8, top + i * cell + cell / 2 + 4}, cv::FONT_HERSHEY_SIMPLEX, 0.4, kBlack, 1, cv::LINE_AA);
    for (int j = 0; j < k; ++j) {
      const double v = f[i][j];
      // White (0) to dark blue (1).
      const cv::Scalar color(255 - 105 * v, 255 - 200 * v, 255 - 230 * v);
      const cv::Rect r(left + j * cell, top + i * cell, cell, cell);
      cv::rectangle(img, r, color, cv::FILLED);
      cv::rectangle(img, r, kGray, 1);
      const std::string text = std::to_string(static_cast<int64_t>(counts[i][j]));
      const double scale = cell >= 45 ? 0.4 : 0.3;
      cv::putText(img, text, {r.x + 3, r.y + cell / 2 + 4}, cv::FONT_HERSHEY_SIMPLEX, scale,
                  v > 0.5 ? cv::Scalar(255, 255, 255) : kBlack, 1, cv::LINE_AA);
    }
  }
  // Column labels, rotated: draw horizontally on a strip and rotate it.
  for (int j = 0; j < k; ++j) {
    const std::string name = j < static_cast<int>(classes.size()) ? classes[j] : std::to_string(j);
    cv::Mat strip(cell, static_cast<int>(name_len) * 8 + 10, CV_8UC3, cv::Scalar(255, 255, 255));
    cv::putText(strip, name, {2, cell / 2 + 4}, cv::FONT_HERSHEY_SIMPLEX, 0.4, kBlack, 1, cv::LINE_AA);
    cv::Mat rotated;
    cv::rotate(strip, rotated, cv::ROTATE_90_CLOCKWISE);
    const cv::Rect dst(left + j * cell, top + k * cell + 5, rotated.cols, std::min(rotated.rows, img.rows - (top + k * cell + 5)));
    rotated(cv::Rect(0, 0, dst.width, dst.height)).copyTo(img(dst));
  }
  write_png(img, path);
}

void plot_reliability(const std::vector<std::pair<std::string, ReliabilityDiagram>>& panels, const std::string& path) {
  if (panels.empty()) throw std::runtime_error("plot_reliability: no diagram to draw for " + path);
  const int width = 480, height = 560;
  cv::Mat img(height, width * static_cast<int>(panels.size()), CV_8UC3, cv::Scalar(255, 255, 255));
  for (size_t i = 0; i < panels.size(); ++i) {
    draw_reliability_panel(img, {static_cast<int>(i) * width, 0, width, height}, panels[i].first, panels[i].second);
  }
  write_png(img, path);
}

}  // namespace attnkit::vision
