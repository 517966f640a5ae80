// Where `attnkit stream` gets its frames: a camera (index or /dev/videoN), a video file, a folder of
// images (sorted by name, one frame each) or a GStreamer pipeline, and the capture thread that reads
// them ahead of the consumer through a bounded queue (dropping on live sources, blocking on files).
#pragma once

#include "bounded_queue.h"

#include <opencv2/core.hpp>
#include <opencv2/videoio.hpp>

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <thread>
#include <vector>

namespace attnkit::vision {

enum class SourceKind { Camera, Device, File, Folder, Pipeline };

struct SourceSpec {
  SourceKind kind = SourceKind::File;
  /// The argument as given (file, folder, device path or pipeline).
  std::string text;
  /// Camera index for SourceKind::Camera.
  int index = -1;
};

/// Reads --source: all digits → camera index; contains '!' → GStreamer pipeline; /dev/videoN → V4L2
/// device; an existing folder → image folder; anything else → video file (checked when opened).
SourceSpec parse_source(const std::string& text);

/// "camera", "device", "file", "folder", "pipeline".
std::string source_kind_name(SourceKind kind);

/// True for sources that run in real time (cameras, devices, pipelines): they drop frames instead
/// of making the reader wait.
bool is_live(SourceKind kind);

/// Camera mode wished for (0 = the device's default); ignored by files and folders except fps, which
/// paces nothing but sets a folder's frame rate for --output.
struct CaptureRequest {
  int width = 0, height = 0;
  double fps = 0;
};

/// What the source actually delivers.
struct CaptureMode {
  int width = 0, height = 0;
  /// Frames per second as the source reports it; 0 when unknown.
  double fps = 0;
  /// OpenCV's backend ("V4L2", "FFMPEG", "GSTREAMER") or "images".
  std::string backend;
  /// Frames in a file or folder; 0 when unknown or endless.
  int64_t frame_count = 0;
};

/// "640x480 @ 30 fps (V4L2)".
std::string describe(const CaptureMode& mode);

class VideoSource {
 public:
  /// Opens the source and reads its first frame (kept for the first read()). Throws
  /// std::runtime_error with one line naming the source when it cannot be opened or yields no frame.
  VideoSource(const SourceSpec& spec, const CaptureRequest& request = {});

  /// The next frame (8-bit BGR). False at the normal end (end of a file or folder, end of a
  /// pipeline's stream). Throws std::runtime_error when the source fails mid-way: a camera that
  /// stops delivering, a file that stops decoding before its last frame, an unreadable image.
  bool read(cv::Mat& frame);

  const CaptureMode& mode() const { return mode_; }
  const SourceSpec& spec() const { return spec_; }
  bool live() const { return is_live(spec_.kind); }
  /// "camera 0", "file clip.avi", ...
  std::string name() const;

 private:
  bool read_next(cv::Mat& frame);

  SourceSpec spec_;
  CaptureMode mode_;
  cv::VideoCapture capture_;
  std::vector<std::string> images_;  // folder sources
  size_t next_image_ = 0;
  int64_t frames_read_ = 0;
  cv::Mat first_;
};

/// One captured frame.
struct Frame {
  cv::Mat image;
  /// 0-based position in the source's stream (gaps show frames the queue dropped).
  int64_t index = 0;
};

/// Reads `source` on its own thread into `queue` until the source ends, fails, or stop() is called;
/// then closes the queue. The queue's policy decides whether a slow consumer drops frames.
class CaptureThread {
 public:
  CaptureThread(VideoSource& source, BoundedQueue<Frame>& queue);
  ~CaptureThread();
  /// Asks the thread to finish, closes the queue and joins.
  void stop();
  /// After the queue is drained: the one-line failure of the source, or "" after a normal end.
  std::string error() const;
  /// Frames read from the source so far.
  int64_t frames_read() const { return read_.load(); }
  /// Wall time spent reading (decoding) them, in milliseconds.
  double read_ms() const { return static_cast<double>(read_ns_.load()) * 1e-6; }

 private:
  void run();

  VideoSource& source_;
  BoundedQueue<Frame>& queue_;
  std::atomic<bool> stop_{false};
  std::atomic<int64_t> read_{0}, read_ns_{0};
  std::string error_;
  mutable std::mutex error_mutex_;
  std::thread thread_;
};

}  // namespace attnkit::vision
