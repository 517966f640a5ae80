#include "preprocess.h"

#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
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
constexpr off_t kMaxImageBytes = off_t{1} << 30;

/// The bytes of the regular file `path`. Opened non-blocking and checked with fstat on the open
/// descriptor: a FIFO, socket or device named like an image is refused instead of blocking the
/// program, and nothing can swap the file between the check and the read.
std::vector<uchar> read_regular_file(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC);
  if (fd < 0) {
    const int err = errno;
    throw std::runtime_error(path + (err == ENOENT ? std::string(": no such file") : ": cannot open: " + std::string(std::strerror(err))));
  }
  struct FdCloser {
    int fd;
    ~FdCloser() { ::close(fd); }
  } closer{fd};
  struct stat st {};
  if (::fstat(fd, &st) != 0) throw std::runtime_error(path + ": cannot stat: " + std::strerror(errno));
  if (S_ISDIR(st.st_mode)) throw std::runtime_error(path + ": is a folder, not an image");
  if (!S_ISREG(st.st_mode)) throw std::runtime_error(path + ": is not a regular file (a FIFO, socket or device), not an image");
  if (st.st_size > kMaxImageBytes) throw std::runtime_error(path + ": " + std::to_string(st.st_size) + " bytes is too large for an image");
  std::vector<uchar> bytes(static_cast<size_t>(st.st_size));
  size_t got = 0;
  while (got < bytes.size()) {
    const ssize_t n = ::read(fd, bytes.data() + got, bytes.size() - got);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) throw std::runtime_error(path + ": read error: " + std::strerror(errno));
    if (n == 0) break;  // the file shrank while being read
    got += static_cast<size_t>(n);
  }
  bytes.resize(got);
  return bytes;
}

/// For a JPEG, whether its main image reaches its end-of-image marker. libjpeg decodes a file cut
/// short by padding it with grey (it only warns, "Premature end of JPEG file"), so OpenCV returns an
/// image; the markers show the cut. Segments up to each start-of-scan are walked by their lengths,
/// entropy-coded data by its markers (0xFF is stuffed as FF 00 there, RSTn are inside the scan);
/// bytes after the end marker (e.g. an appended motion-photo video) are allowed.
bool jpeg_is_complete(const std::vector<uchar>& b) {
  size_t i = 2;  // after SOI
  while (i + 4 <= b.size()) {
    if (b[i] != 0xFF) return false;
    const uchar marker = b[i + 1];
    if (marker == 0xD9) return true;                           // EOI
    if (marker == 0xFF) { ++i; continue; }                     // fill byte
    if (marker == 0x01 || (marker >= 0xD0 && marker <= 0xD7)) { i += 2; continue; }  // no length
    const size_t len = (static_cast<size_t>(b[i + 2]) << 8) | b[i + 3];
    if (len < 2 || i + 2 + len > b.size()) return false;
    i += 2 + len;
    if (marker != 0xDA) continue;                              // not a start of scan
    // Entropy-coded data up to the next real marker.
    while (i + 1 < b.size() && !(b[i] == 0xFF && b[i + 1] != 0x00 && !(b[i + 1] >= 0xD0 && b[i + 1] <= 0xD7))) ++i;
  }
  return i + 2 <= b.size() && b[i] == 0xFF && b[i + 1] == 0xD9;
}

}  // namespace

cv::Mat read_image(const std::string& path, int* file_channels) {
  const std::vector<uchar> bytes = read_regular_file(path);
  if (bytes.size() >= 2 && bytes[0] == 0xFF && bytes[1] == 0xD8 && !jpeg_is_complete(bytes))
    throw std::runtime_error(path + ": the JPEG is cut short (truncated or damaged file)");
  cv::Mat img;
  try {
    if (!bytes.empty()) img = cv::imdecode(bytes, cv::IMREAD_UNCHANGED);
  } catch (const cv::Exception&) {
    img.release();  // OpenCV throws on some corrupt files instead of returning an empty Mat
  }
  if (img.empty()) throw std::runtime_error(path + ": cannot decode the image (unreadable, corrupt or not an image format OpenCV knows)");
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
