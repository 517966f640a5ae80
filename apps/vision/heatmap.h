// Drawing maps over pictures: colour maps by name, alpha overlays, text labels with a backdrop that
// stays readable on any image, and labelled grids. Everything is 8-bit BGR, OpenCV's native order.
#pragma once

#include <opencv2/core.hpp>

#include <string>
#include <vector>

namespace attnkit::vision {

/// Names --colormap accepts: jet, turbo, viridis, inferno, magma, plasma, hot, parula, gray.
const std::vector<std::string>& colormap_names();

/// OpenCV's cv::COLORMAP_* for a name of colormap_names(); throws std::invalid_argument listing the
/// valid names otherwise ("gray" gives -1: no colour map).
int colormap_from_name(const std::string& name);

/// A CV_32F map with values in [0, 1] (clamped) as an 8-bit BGR picture in `colormap`.
cv::Mat colorize(const cv::Mat& map01, int colormap);

/// `bgr` blended with the colourised map: (1 - alpha·w)·image + alpha·w·colour, where w = 1 inside the
/// map and the map's own value is the colour. Same size as `bgr`; `map01` must be the same size.
cv::Mat overlay(const cv::Mat& bgr, const cv::Mat& map01, double alpha, int colormap);

/// Writes `text` at the top-left (line by line, '\n' separated) on a dark translucent backdrop; the
/// font scale follows the image size so labels stay legible on small and large pictures.
void draw_label(cv::Mat& bgr, const std::string& text);

/// Tiles (resized to the first tile's size) in a grid of `columns` (0 = about square), each with its
/// label drawn on it, separated by a 4-pixel dark border.
cv::Mat make_grid(const std::vector<cv::Mat>& tiles, const std::vector<std::string>& labels, int columns = 0);

/// Scales an image up (nearest neighbour, integer factor) until its shorter side is at least
/// `min_side`: 28×28 inputs become pictures people can see. Larger images are returned as they are.
cv::Mat upscale_for_display(const cv::Mat& image, int min_side);

}  // namespace attnkit::vision
