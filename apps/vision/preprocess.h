// From an image file to the network's input, as the checkpoint's Preprocessing says (size, resize,
// crop, channel order, scale, mean/std), and back: where the input sits in the original image, so
// that maps computed on the input are drawn over the picture at its full resolution.
//
// Resizing follows torchvision's Resize/CenterCrop arithmetic (shorter side → resize_size with the
// long side truncated, crop offsets rounded, zero padding when the image is smaller than the crop);
// pixels are interpolated by OpenCV (INTER_AREA when shrinking, INTER_LINEAR when growing — the same
// choice as the ImageFolder reader used for training), so an image that needs no resize gives
// torchvision's input exactly.
#pragma once

#include <attnkit/backbones/checkpoint.h>

#include <opencv2/core.hpp>
#include <torch/types.h>

#include <filesystem>
#include <string>

namespace attnkit::vision {

/// Decodes an image file into 8-bit BGR at its own resolution (gray and 16-bit images are
/// converted, alpha dropped). Throws std::runtime_error naming the file when it does not exist,
/// cannot be read, or is not an image OpenCV can decode. `file_channels` (optional) receives the
/// file's own channel count (1 grey, 3 colour, 4 with alpha).
cv::Mat read_image(const std::string& path, int* file_channels = nullptr);

/// The part of the original image the network sees, in original pixel coordinates (it may extend
/// past the image where a centre crop pads).
struct InputWindow {
  cv::Rect2d region;
  int64_t input_height = 0, input_width = 0;
};

struct NetworkInput {
  /// float32 [C, input_height, input_width], normalised.
  torch::Tensor tensor;
  InputWindow window;
};

/// Applies `pre` to an 8-bit BGR image. Throws c10::Error/std::runtime_error on an invalid
/// preprocessing or an image that cannot fit it (resize "none" + crop "none" with another size).
NetworkInput prepare_input(const cv::Mat& bgr, const Preprocessing& pre);

/// A map over the network input ([h, w], any size, any floating dtype, any device) resampled onto an
/// image of `image_size`: CV_32F, bilinear inside the window's region, 0 outside.
cv::Mat map_to_image(const torch::Tensor& map, const InputWindow& window, cv::Size image_size);

}  // namespace attnkit::vision
