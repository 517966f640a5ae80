// The overlaid video of `attnkit stream --output FILE`, written so that FILE is always playable:
// frames go to a temporary file next to it (same extension, so the same container) and finish()
// releases the encoder (writing the container's index) and renames it to FILE. A stream that fails
// mid-way still calls finish(), so what was written up to the last good frame gets the final name;
// SIGINT/SIGTERM remove the temporary file (the program's handler, unfinished_file.h); a process
// killed outright leaves it, never a torn FILE, and the next writer of FILE removes it.
#pragma once

#include <attnkit/backbones/unfinished_file.h>

#include <opencv2/core.hpp>
#include <opencv2/videoio.hpp>

#include <string>
#include <vector>

namespace attnkit::vision {

/// Extensions --output accepts, with the codec each gets: .mp4/.mov → mp4v (MPEG-4 part 2),
/// .avi/.mkv → MJPG (Motion JPEG).
const std::vector<std::string>& video_extensions();

/// cv::VideoWriter fourcc for `path`'s extension; throws std::invalid_argument listing the valid
/// extensions otherwise.
int fourcc_for(const std::string& path);

/// Why the video file at `path`, just finished with `frames_written` frames, must not replace a
/// previous one ("" when it is good): it is flushed to disk, then opened again and must hold about
/// that many frames and a readable first frame. OpenCV reports no write error (a full disk gives a
/// truncated file and a silent release()), so this is the only proof the file is whole.
std::string check_video_file(const std::string& path, int64_t frames_written);

class VideoFileWriter {
 public:
  /// Opens the encoder on a temporary file beside `path` for frames of `size` at `fps`. Throws
  /// std::runtime_error naming `path` when the extension is unknown or the folder is not writable.
  VideoFileWriter(const std::string& path, cv::Size size, double fps);
  /// finish() unless already done; never throws.
  ~VideoFileWriter();
  VideoFileWriter(const VideoFileWriter&) = delete;
  VideoFileWriter& operator=(const VideoFileWriter&) = delete;

  /// Appends a BGR frame (resized to the video's size when it differs).
  void write(const cv::Mat& bgr);
  /// Releases the encoder, checks the finished file (flushed, readable back, about the frames
  /// written) and renames it over the final path; removes it when no frame was written. Throws
  /// std::runtime_error when the check or the rename fails, removing the temporary file and
  /// leaving any previous file at `path` untouched.
  void finish();

  const std::string& path() const { return path_; }
  int64_t frames() const { return frames_; }

 private:
  std::string path_;
  UnfinishedFile temp_;  // ".NAME.partial-PID-video.EXT" beside path_
  cv::Size size_;
  cv::VideoWriter writer_;
  int64_t frames_ = 0;
  bool finished_ = false;
};

}  // namespace attnkit::vision
