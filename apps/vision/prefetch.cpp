#include "prefetch.h"

#include <c10/util/Exception.h>

#include <algorithm>
#include <exception>

namespace attnkit::vision {

namespace {

/// `message` without a leading "PATH: " (read_image names the file; the caller prints it anyway).
std::string without_path(const std::string& message, const std::string& path) {
  const std::string prefix = path + ": ";
  return message.compare(0, prefix.size(), prefix) == 0 ? message.substr(prefix.size()) : message;
}

}  // namespace

PreparedImage prepare_file(const std::string& path, const Preprocessing& pre, size_t index) {
  PreparedImage out;
  out.index = index;
  out.path = path;
  try {
    const cv::Mat bgr = read_image(path);
    out.image_size = bgr.size();
    out.input = prepare_input(bgr, pre);
  } catch (const c10::Error& e) {
    out.error = without_path(e.what_without_backtrace(), path);
  } catch (const std::exception& e) {
    out.error = without_path(e.what(), path);
  } catch (...) {
    out.error = "unexpected error while reading the image";
  }
  if (!out.error.empty()) out.input = NetworkInput{};
  return out;
}

ImagePrefetcher::ImagePrefetcher(std::vector<std::string> files, Preprocessing pre, size_t ahead)
    : files_(std::move(files)),
      pre_(std::move(pre)),
      queue_(std::max<size_t>(ahead, 1), QueuePolicy::Block),
      worker_([this] { work(); }) {}

ImagePrefetcher::~ImagePrefetcher() {
  queue_.close();  // a push waiting for room returns false: the worker stops
  worker_.join();
}

void ImagePrefetcher::work() {
  for (size_t i = 0; i < files_.size(); ++i)
    if (!queue_.push(prepare_file(files_[i], pre_, i))) return;
  queue_.close();  // next() drains what is queued, then returns nullopt
}

std::optional<PreparedImage> ImagePrefetcher::next() { return queue_.pop(); }

}  // namespace attnkit::vision
