#include "video_source.h"

#include "common/stderr_capture.h"
#include "image_list.h"
#include "preprocess.h"

#include <opencv2/imgproc.hpp>

#include <algorithm>
#include <cctype>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <sstream>
#include <stdexcept>

namespace attnkit::vision {
namespace fs = std::filesystem;

SourceSpec parse_source(const std::string& text) {
  if (text.empty()) throw std::invalid_argument("--source: empty");
  SourceSpec spec;
  spec.text = text;
  std::error_code ec;
  if (std::all_of(text.begin(), text.end(), [](unsigned char c) { return std::isdigit(c); })) {
    if (text.size() > 4) throw std::invalid_argument("--source " + text + ": not a camera index");
    spec.kind = SourceKind::Camera;
    spec.index = std::stoi(text);
  } else if (text.find('!') != std::string::npos) {
    spec.kind = SourceKind::Pipeline;
  } else if (text.rfind("/dev/video", 0) == 0) {
    spec.kind = SourceKind::Device;
  } else if (fs::is_directory(text, ec)) {
    spec.kind = SourceKind::Folder;
  } else {
    spec.kind = SourceKind::File;
  }
  return spec;
}

std::string source_kind_name(SourceKind kind) {
  switch (kind) {
    case SourceKind::Camera: return "camera";
    case SourceKind::Device: return "device";
    case SourceKind::File: return "file";
    case SourceKind::Folder: return "folder";
    case SourceKind::Pipeline: return "pipeline";
  }
  return "?";
}

bool is_live(SourceKind kind) { return kind == SourceKind::Camera || kind == SourceKind::Device || kind == SourceKind::Pipeline; }

std::string describe(const CaptureMode& mode) {
  std::ostringstream s;
  s << mode.width << "x" << mode.height << " @ ";
  if (mode.fps > 0) s << std::round(mode.fps * 100) / 100 << " fps";
  else s << "? fps";
  s << " (" << mode.backend << ")";
  return s.str();
}

std::string VideoSource::name() const {
  if (spec_.kind == SourceKind::Camera) return "camera " + std::to_string(spec_.index);
  return source_kind_name(spec_.kind) + " " + spec_.text;
}

namespace {

/// 8-bit BGR from whatever a capture or decoder produced (gray, BGRA, 16-bit).
cv::Mat to_bgr8(const cv::Mat& img) {
  cv::Mat out = img;
  if (out.depth() == CV_16U) out.convertTo(out, CV_8U, 1.0 / 257.0);
  if (out.channels() == 1) cv::cvtColor(out, out, cv::COLOR_GRAY2BGR);
  else if (out.channels() == 4) cv::cvtColor(out, out, cv::COLOR_BGRA2BGR);
  return out;
}

}  // namespace

VideoSource::VideoSource(const SourceSpec& spec, const CaptureRequest& request) : spec_(spec) {
  std::error_code ec;
  switch (spec.kind) {
    case SourceKind::Folder: {
      for (const auto& entry : fs::directory_iterator(spec.text, ec))
        if (entry.is_regular_file(ec) && is_image_name(entry.path())) images_.push_back(entry.path().string());
      std::sort(images_.begin(), images_.end());
      if (images_.empty()) throw std::runtime_error(spec.text + ": no images in this folder");
      mode_.backend = "images";
      mode_.frame_count = static_cast<int64_t>(images_.size());
      mode_.fps = request.fps;
      break;
    }
    case SourceKind::File:
      if (!fs::exists(spec.text, ec)) throw std::runtime_error(spec.text + ": no such file");
      // A FIFO or socket would block FFmpeg's open forever; cameras are an index or /dev/videoN.
      if (!fs::is_regular_file(spec.text, ec))
        throw std::runtime_error(spec.text + ": is not a regular file (a FIFO, socket or device), not a video");
      if (!capture_.open(spec.text, cv::CAP_FFMPEG) || !capture_.isOpened())
        throw std::runtime_error(spec.text + ": cannot open as a video (corrupt, or a format this OpenCV cannot decode)");
      break;
    case SourceKind::Pipeline: {
      // GStreamer reports a bad pipeline as several GLib lines of its own: they become part of
      // our one line.
      common::StderrCapture library_messages;
      const bool opened = capture_.open(spec.text, cv::CAP_GSTREAMER) && capture_.isOpened();
      const std::string said = common::one_line_summary(library_messages.finish());
      if (!opened)
        throw std::runtime_error("cannot open the GStreamer pipeline \"" + spec.text +
                                 "\" (a missing element, a syntax error, or an OpenCV without GStreamer)" +
                                 (said.empty() ? "" : "; GStreamer says: " + said));
      break;
    }
    case SourceKind::Camera:
    case SourceKind::Device: {
      // CAP_ANY may try GStreamer, whose GLib assertions about a missing camera say nothing ours
      // does not: they are dropped.
      common::StderrCapture library_messages;
      const bool opened =
          (spec.kind == SourceKind::Camera ? capture_.open(spec.index, cv::CAP_ANY) : capture_.open(spec.text, cv::CAP_V4L2)) &&
          capture_.isOpened();
      library_messages.finish();
      if (!opened)
        throw std::runtime_error("cannot open " + name() + ": no such camera, or it is busy or not accessible");
      if (request.width > 0) capture_.set(cv::CAP_PROP_FRAME_WIDTH, request.width);
      if (request.height > 0) capture_.set(cv::CAP_PROP_FRAME_HEIGHT, request.height);
      if (request.fps > 0) capture_.set(cv::CAP_PROP_FPS, request.fps);
      capture_.set(cv::CAP_PROP_BUFFERSIZE, 1);  // the newest frame, not a driver-side backlog
      break;
    }
  }
  if (capture_.isOpened()) {
    mode_.backend = capture_.getBackendName();
    mode_.fps = capture_.get(cv::CAP_PROP_FPS);
    if (spec.kind == SourceKind::File) mode_.frame_count = std::max<int64_t>(0, std::llround(capture_.get(cv::CAP_PROP_FRAME_COUNT)));
  }
  if (!read_next(first_)) throw std::runtime_error(name() + ": opened, but no frame could be read from it");
  mode_.width = first_.cols;
  mode_.height = first_.rows;
}

bool VideoSource::read(cv::Mat& frame) {
  if (!first_.empty()) {
    frame = std::move(first_);
    first_.release();
    return true;
  }
  return read_next(frame);
}

bool VideoSource::read_next(cv::Mat& frame) {
  if (spec_.kind == SourceKind::Folder) {
    if (next_image_ >= images_.size()) return false;
    frame = read_image(images_[next_image_++]);  // throws naming the file when it cannot be decoded
    ++frames_read_;
    return true;
  }
  cv::Mat raw;
  bool ok = false;
  try {
    ok = capture_.read(raw) && !raw.empty();
  } catch (const cv::Exception& e) {
    throw std::runtime_error(name() + ": " + e.err);
  }
  if (ok) {
    frame = to_bgr8(raw);
    ++frames_read_;
    return true;
  }
  if (frames_read_ == 0) return false;  // the constructor reports it
  switch (spec_.kind) {
    case SourceKind::Camera:
    case SourceKind::Device:
      throw std::runtime_error(name() + " stopped delivering frames after " + std::to_string(frames_read_) +
                               " (disconnected or failed)");
    case SourceKind::File:
      if (frames_read_ < mode_.frame_count)
        throw std::runtime_error(name() + ": decoding stopped at frame " + std::to_string(frames_read_) + " of " +
                                 std::to_string(mode_.frame_count) + " (truncated or corrupt file)");
      return false;
    default:
      return false;  // a pipeline's end of stream
  }
}

CaptureThread::CaptureThread(VideoSource& source, BoundedQueue<Frame>& queue)
    : source_(source), queue_(queue), thread_([this] { run(); }) {}

CaptureThread::~CaptureThread() { stop(); }

void CaptureThread::stop() {
  stop_ = true;
  queue_.close();
  if (thread_.joinable()) thread_.join();
}

std::string CaptureThread::error() const {
  std::lock_guard<std::mutex> lock(error_mutex_);
  return error_;
}

void CaptureThread::run() {
  try {
    while (!stop_) {
      Frame f;
      const auto start = std::chrono::steady_clock::now();
      if (!source_.read(f.image)) break;
      read_ns_ += std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now() - start).count();
      f.index = read_++;
      if (!queue_.push(std::move(f))) break;
    }
  } catch (const std::exception& e) {
    std::lock_guard<std::mutex> lock(error_mutex_);
    error_ = e.what();
  }
  queue_.close();
}

}  // namespace attnkit::vision
