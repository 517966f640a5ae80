#include "video_writer.h"
#include <opencv2/videoio.hpp>
#include <cstring>
#include <cerrno>
#include <fcntl.h>

#include <opencv2/imgproc.hpp>

#include <algorithm>
#include <cctype>
#include <filesystem>
#include <stdexcept>

#include <unistd.h>

namespace attnkit::vision {
namespace fs = std::filesystem;

namespace {

std::string lower_extension(const std::string& path) {
  std::string e = fs::path(path).extension().string();
  std::transform(e.begin(), e.end(), e.begin(), [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return e;
}

}  // namespace

const std::vector<std::string>& video_extensions() {
  static const std::vector<std::string> extensions = {".mp4", ".mov", ".avi", ".mkv"};
  return extensions;
}

int fourcc_for(const std::string& path) {
  // What OpenCV 4.6 + FFmpeg 5 (Debian 12) write and read back (tests/test_stream.cpp checks each).
  const std::string e = lower_extension(path);
  if (e == ".mp4" || e == ".mov") return cv::VideoWriter::fourcc('m', 'p', '4', 'v');
  if (e == ".avi" || e == ".mkv") return cv::VideoWriter::fourcc('M', 'J', 'P', 'G');
  std::string valid;
  for (const auto& ext : video_extensions()) valid += (valid.empty() ? "" : ", ") + ext;
  throw std::invalid_argument(path + ": unknown video extension \"" + e + "\" (valid: " + valid + ")");
}

VideoFileWriter::VideoFileWriter(const std::string& path, cv::Size size, double fps) : path_(path), size_(size) {
  int fourcc = 0;
  try {
    fourcc = fourcc_for(path);
  } catch (const std::invalid_argument& e) {
    throw std::runtime_error(e.what());
  }
  const fs::path p(path);
  std::error_code ec;
  if (fs::is_directory(p, ec)) throw std::runtime_error(path + ": is a folder, not a video file name");
  // Same folder (so the rename is atomic) and same extension (so FFmpeg picks the same container).
  // A run killed outright (SIGKILL, power cut) left its temporary behind: the next one removes it.
  remove_stale_unfinished_files(path, "partial");
  temp_ = UnfinishedFile(unfinished_name_prefix(path, "partial") + "video" + p.extension().string());
  if (!writer_.open(temp_.path(), cv::CAP_FFMPEG, fourcc, fps > 0 ? fps : 25.0, size_, true) || !writer_.isOpened()) {
    throw std::runtime_error(path + ": cannot write the video here (missing or read-only folder, or no encoder for this format)");
  }
}

VideoFileWriter::~VideoFileWriter() {
  try {
    finish();
  } catch (...) {  // destructors must not throw; the temporary file stays for the user to rescue
  }
}

void VideoFileWriter::write(const cv::Mat& bgr) {
  if (finished_) throw std::logic_error("VideoFileWriter::write after finish");
  if (bgr.size() == size_) {
    writer_.write(bgr);
  } else {
    cv::Mat resized;
    cv::resize(bgr, resized, size_, 0, 0, cv::INTER_AREA);
    writer_.write(resized);
  }
  ++frames_;
}

std::string check_video_file(const std::string& path, int64_t frames_written) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return std::string("the finished video is gone: ") + std::strerror(errno);
  const bool synced = ::fsync(fd) == 0;
  const int err = errno;
  ::close(fd);
  if (!synced) return std::string("cannot flush the video to disk: ") + std::strerror(err);
  cv::VideoCapture check;
  try {
    check.open(path, cv::CAP_FFMPEG);
  } catch (const cv::Exception&) {
  }
  if (!check.isOpened()) return "the finished video cannot be read back (disk full, or the encoder failed)";
  // Containers that store no frame count estimate it from the duration: allow for rounding.
  const double counted = check.get(cv::CAP_PROP_FRAME_COUNT);
  if (counted > 0 && counted < 0.9 * static_cast<double>(frames_written) - 1)
    return "the finished video holds " + std::to_string(static_cast<long long>(counted)) + " of the " +
           std::to_string(frames_written) + " frames written (disk full?)";
  cv::Mat frame;
  if (!check.read(frame) || frame.empty()) return "the finished video has no readable frame (disk full?)";
  // The count can come from a header written first (AVI) or be an estimate (Matroska): the last
  // frame written must be there too.
  if (frames_written > 1) {
    check.set(cv::CAP_PROP_POS_FRAMES, static_cast<double>(frames_written - 1));
    if (!check.read(frame) || frame.empty())
      return "the finished video ends before its last frame (" + std::to_string(frames_written) + " written; disk full?)";
  }
  return "";
}

void VideoFileWriter::finish() {
  if (finished_) return;
  finished_ = true;
  writer_.release();  // writes the trailer/index: the file is complete from here
  std::error_code ec;
  if (frames_ == 0) {
    temp_ = UnfinishedFile();  // removes it
    return;
  }
  // OpenCV reports no write error (a full disk gives a truncated file and a silent release()), so
  // the finished file must prove itself before it replaces anything: flushed to disk, and opened
  // again with (about) the frames written. Otherwise it is removed and the previous video stays.
  const std::string problem = check_video_file(temp_.path(), frames_);
  if (!problem.empty()) {
    temp_ = UnfinishedFile();  // removes it
    throw std::runtime_error(path_ + ": " + problem + "; the previous file (if any) is left as it was");
  }
  const std::string finished = temp_.path();
  fs::rename(finished, path_, ec);
  temp_.keep();  // renamed, or left under its temporary name for the user to rescue
  if (ec) throw std::runtime_error(path_ + ": cannot rename the finished video from " + finished + ": " + ec.message());
}

}  // namespace attnkit::vision
