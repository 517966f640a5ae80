#include "preprocess.h"

#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>

#include "common/files.h"
#include "common/stderr_capture.h"

#include <algorithm>
#include <mutex>
#include <utility>
#include <cstring>
#include <vector>
#include <cctype>
#include <cmath>
#include <filesystem>
#include <stdexcept>

namespace attnkit::vision {

namespace {

// Larger than any image a model here is fed; refusing it keeps a stray huge file from being read
// whole into memory.
constexpr size_t kMaxImageBytes = size_t{1} << 30;

// Far above any photo (a 108-megapixel phone camera stays below it); a small file whose header
// claims more would make the decoder allocate gigabytes for it.
constexpr int64_t kMaxImagePixels = int64_t{1} << 27;

/// What walking a JPEG's markers tells before it is decoded.
struct JpegWalk {
  /// The main image reaches its end-of-image marker. libjpeg decodes a file cut short by padding
  /// it with grey (it only warns, "Premature end of JPEG file"), so OpenCV returns an image; the
  /// markers show the cut.
  bool complete = false;
  /// Width × height in the first frame header (SOFn); 0 before one is seen.
  int64_t pixels = 0;
};

/// Segments up to each start-of-scan are walked by their lengths, entropy-coded data by its markers
/// (0xFF is stuffed as FF 00 there, RSTn are inside the scan); bytes after the end marker (e.g. an
/// appended motion-photo video) are allowed.
JpegWalk walk_jpeg(const std::vector<char>& bytes) {
  const auto* b = reinterpret_cast<const uchar*>(bytes.data());
  const size_t size = bytes.size();
  JpegWalk walk;
  size_t i = 2;  // after SOI
  while (i + 4 <= size) {
    if (b[i] != 0xFF) return walk;
    const uchar marker = b[i + 1];
    if (marker == 0xD9) break;                                 // EOI
    if (marker == 0xFF) { ++i; continue; }                     // fill byte
    if (marker == 0x01 || (marker >= 0xD0 && marker <= 0xD7)) { i += 2; continue; }  // no length
    const size_t len = (static_cast<size_t>(b[i + 2]) << 8) | b[i + 3];
    if (len < 2 || i + 2 + len > size) return walk;
    // SOF0..SOF15 but DHT (C4), JPG (C8), DAC (CC): FF Cn, length, precision, height, width.
    const bool frame_header = marker >= 0xC0 && marker <= 0xCF && marker != 0xC4 && marker != 0xC8 && marker != 0xCC;
    if (frame_header && len >= 7 && walk.pixels == 0)
      walk.pixels = int64_t((b[i + 5] << 8) | b[i + 6]) * int64_t((b[i + 7] << 8) | b[i + 8]);
    i += 2 + len;
    if (marker != 0xDA) continue;                              // not a start of scan
    // Entropy-coded data up to the next real marker.
    while (i + 1 < size && !(b[i] == 0xFF && b[i + 1] != 0x00 && !(b[i + 1] >= 0xD0 && b[i + 1] <= 0xD7))) ++i;
  }
  walk.complete = i + 2 <= size && b[i] == 0xFF && b[i + 1] == 0xD9;
  return walk;
}

/// Width × height in a PNG's IHDR chunk (the first, by the format), or 0 when the file is too short.
int64_t png_pixels(const std::vector<char>& bytes) {
  if (bytes.size() < 24) return 0;
  const auto be32 = [&](size_t at) {
    const auto* p = reinterpret_cast<const uchar*>(bytes.data()) + at;
    return int64_t{p[0]} << 24 | int64_t{p[1]} << 16 | int64_t{p[2]} << 8 | int64_t{p[3]};
  };
  return be32(16) * be32(20);
}

/// Refuses what a JPEG or PNG header says about the file before the decoder sees it: a JPEG cut
/// short, or more pixels than kMaxImagePixels.
void check_image_header(const std::vector<char>& bytes, const std::string& path) {
  const auto starts_with = [&](const char* magic, size_t n) { return bytes.size() >= n && std::memcmp(bytes.data(), magic, n) == 0; };
  int64_t pixels = 0;
  if (starts_with("\xFF\xD8", 2)) {
    const JpegWalk walk = walk_jpeg(bytes);
    if (!walk.complete) throw std::runtime_error(path + ": the JPEG is cut short (truncated or damaged file)");
    pixels = walk.pixels;
  } else if (starts_with("\x89PNG\r\n\x1a\n", 8)) {
    pixels = png_pixels(bytes);
  }
  if (pixels > kMaxImagePixels)
    throw std::runtime_error(path + ": the header claims " + std::to_string(pixels) + " pixels, more than the " +
                             std::to_string(kMaxImagePixels) + " this program decodes (damaged or crafted file?)");
}

/// cv::imdecode with what libpng and libjpeg print on stderr by themselves (past OpenCV) caught:
/// the image (empty when it cannot be decoded) and the decoder's messages in one line. Decodes run
/// one at a time, since stderr is one per process (prefetch threads decode in parallel otherwise).
std::pair<cv::Mat, std::string> decode_quietly(const std::vector<char>& bytes) {
  static std::mutex one_capture_at_a_time;
  std::lock_guard<std::mutex> lock(one_capture_at_a_time);
  common::StderrCapture decoder_messages;
  cv::Mat img;
  try {
    if (!bytes.empty()) {
      const cv::Mat encoded(1, static_cast<int>(bytes.size()), CV_8U, const_cast<char*>(bytes.data()));
      img = cv::imdecode(encoded, cv::IMREAD_UNCHANGED);
    }
  } catch (const cv::Exception&) {
    img.release();  // OpenCV throws on some corrupt files instead of returning an empty Mat
  }
  return {img, common::one_line_summary(decoder_messages.finish())};
}

}  // namespace

cv::Mat read_image(const std::string& path, int* file_channels) {
  const std::vector<char> bytes = common::read_regular_file(path, kMaxImageBytes);
  check_image_header(bytes, path);
  auto [img, decoder_said] = decode_quietly(bytes);
  if (img.empty())
    throw std::runtime_error(path + ": cannot decode the image (unreadable, corrupt or not an image format OpenCV knows)" +
                             (decoder_said.empty() ? "" : "; the decoder says: " + decoder_said));
  // libjpeg decodes damaged entropy-coded data into a picture it only warns about: not an image to
  // classify. (Other decoder warnings, such as libpng's about colour profiles, are harmless.)
  if (decoder_said.find("Corrupt JPEG data") != std::string::npos || decoder_said.find("Premature end of JPEG") != std::string::npos)
    throw std::runtime_error(path + ": the JPEG is damaged (the decoder says: " + decoder_said + ")");
  if (img.depth() == CV_16U) img.convertTo(img, CV_8U, 1.0 / 257.0);
  else if (img.depth() == CV_32F || img.depth() == CV_64F) img.convertTo(img, CV_8U, 255.0);
  else if (img.depth() != CV_8U) throw std::runtime_error(path + ": unsupported pixel depth");
  if (file_channels) *file_channels = img.channels();
  cv::Mat bgr;
  switch (img.channels()) {
    case 1: cv::cvtColor(img, bgr, cv::COLOR_GRAY2BGR); break;
    case 3: bgr = img; break;
    case 4: cv::cvtColor(img, bgr, cv::COLOR_BGRA2BGR); break;
    default: throw std::runtime_error(path + ": images with " + std::to_string(img.channels()) + " channels are not supported");
  }
  return bgr;
}

namespace {

cv::Mat resize_to(const cv::Mat& img, int width, int height) {
  if (img.cols == width && img.rows == height) return img;
  const bool shrink = width < img.cols || height < img.rows;
  cv::Mat out;
  cv::resize(img, out, cv::Size(width, height), 0, 0, shrink ? cv::INTER_AREA : cv::INTER_LINEAR);
  return out;
}

/// The resize step of `pre` (stretch, shorter side or none).
cv::Mat resize_as(const cv::Mat& img, const Preprocessing& pre, int in_w, int in_h) {
  if (pre.resize == Resize::Stretch) return resize_to(img, in_w, in_h);
  if (pre.resize != Resize::ShorterSide) return img;
  const int64_t s = pre.resize_size;
  int64_t w = img.cols, h = img.rows;
  if (w <= h) {  // torchvision: the long side is truncated, not rounded
    h = static_cast<int64_t>(static_cast<double>(s) * h / w);
    w = s;
  } else {
    w = static_cast<int64_t>(static_cast<double>(s) * w / h);
    h = s;
  }
  return resize_to(img, static_cast<int>(w), static_cast<int>(h));
}

/// Crops (or checks) `img` to in_w × in_h; returns the crop's corner in `img`'s pixels, negative
/// where torchvision's CenterCrop pads first (an image smaller than the crop).
cv::Point center_crop(cv::Mat& img, const Preprocessing& pre, int in_w, int in_h) {
  if (img.cols == in_w && img.rows == in_h) return {0, 0};
  if (pre.crop != Crop::Center)
    throw std::runtime_error("image is " + std::to_string(img.cols) + "x" + std::to_string(img.rows) +
                             " after resizing but the model takes " + std::to_string(in_w) + "x" +
                             std::to_string(in_h) + " and its preprocessing has no crop");
  const int pad_w = std::max(0, in_w - img.cols), pad_h = std::max(0, in_h - img.rows);
  const int pad_left = pad_w / 2, pad_top = pad_h / 2;
  if (pad_w || pad_h)
    cv::copyMakeBorder(img, img, pad_top, pad_h - pad_top, pad_left, pad_w - pad_left, cv::BORDER_CONSTANT, cv::Scalar::all(0));
  const int crop_left = static_cast<int>(std::lround((img.cols - in_w) / 2.0));
  const int crop_top = static_cast<int>(std::lround((img.rows - in_h) / 2.0));
  img = img(cv::Rect(crop_left, crop_top, in_w, in_h));
  return {crop_left - pad_left, crop_top - pad_top};
}

// HWC uint8 → normalised CHW float in one loop, in the float operations and order of
// torchvision's ToTensor + Normalize ((v · scale − mean) / std, each rounded to float), so results
// match it bit for bit. One plain loop rather than five ATen passes: `attnkit stream` prepares
// frames while the inference thread's OpenMP team runs, and small parallel regions would fight it.
torch::Tensor normalised_chw(const cv::Mat& img, const Preprocessing& pre, int64_t channels) {
  auto tensor = torch::empty({channels, img.rows, img.cols}, torch::kFloat32);
  float* dst = tensor.data_ptr<float>();
  const auto scale = static_cast<float>(pre.pixel_scale);
  for (int64_t c = 0; c < channels; ++c) {
    const auto mean = static_cast<float>(pre.mean[c]), stdev = static_cast<float>(pre.std[c]);
    for (int y = 0; y < img.rows; ++y) {
      const uchar* row = img.ptr<uchar>(y);
      for (int x = 0; x < img.cols; ++x) *dst++ = (static_cast<float>(row[x * channels + c]) * scale - mean) / stdev;
    }
  }
  return tensor;
}

}  // namespace

NetworkInput prepare_input(const cv::Mat& bgr, const Preprocessing& pre) {
  TORCH_CHECK(!bgr.empty() && bgr.type() == CV_8UC3, "prepare_input: expected an 8-bit BGR image");
  const int64_t channels = pre.color_order == ColorOrder::Gray ? 1 : 3;
  pre.validate(channels);
  const int in_w = static_cast<int>(pre.input_width), in_h = static_cast<int>(pre.input_height);

  // GRAY converts first (the weighted sum is rounded to 8 bits, so the order matters, and resizing
  // one channel is cheaper); BGR→RGB only permutes channels, which commutes with a per-channel
  // resize, so it runs on the small resized image instead of the full frame.
  cv::Mat img;
  if (pre.color_order == ColorOrder::Gray) cv::cvtColor(bgr, img, cv::COLOR_BGR2GRAY);
  else img = bgr;
  img = resize_as(img, pre, in_w, in_h);
  // sx, sy map original pixels to resized pixels.
  const double sx = static_cast<double>(img.cols) / bgr.cols, sy = static_cast<double>(img.rows) / bgr.rows;
  const cv::Point corner = center_crop(img, pre, in_w, in_h);

  NetworkInput out;
  out.window.input_width = in_w;
  out.window.input_height = in_h;
  out.window.region = cv::Rect2d(corner.x / sx, corner.y / sy, in_w / sx, in_h / sy);
  if (pre.color_order == ColorOrder::RGB) cv::cvtColor(img, img, cv::COLOR_BGR2RGB);
  out.tensor = normalised_chw(img, pre, channels);
  return out;
}

cv::Mat map_to_image(const torch::Tensor& map, const InputWindow& window, cv::Size image_size) {
  TORCH_CHECK(map.dim() == 2 && map.numel() > 0, "map_to_image: expected a non-empty [h, w] map, got ", map.sizes());
  auto m = map.detach().to(torch::kCPU, torch::kFloat32).contiguous();
  cv::Mat small(static_cast<int>(m.size(0)), static_cast<int>(m.size(1)), CV_32F, m.data_ptr<float>());
  const cv::Rect2d& r = window.region;
  const int rw = std::max(1, static_cast<int>(std::lround(r.width))), rh = std::max(1, static_cast<int>(std::lround(r.height)));
  cv::Mat scaled;
  cv::resize(small, scaled, cv::Size(rw, rh), 0, 0, cv::INTER_LINEAR);
  cv::Mat out = cv::Mat::zeros(image_size, CV_32F);
  const cv::Rect placed(static_cast<int>(std::lround(r.x)), static_cast<int>(std::lround(r.y)), rw, rh);
  const cv::Rect visible = placed & cv::Rect(0, 0, image_size.width, image_size.height);
  if (visible.area() > 0) scaled(visible - placed.tl()).copyTo(out(visible));
  return out;
}

}  // namespace attnkit::vision
