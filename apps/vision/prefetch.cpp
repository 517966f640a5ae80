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
    : files_(std::move(files)), pre_(std::move(pre)), ahead_(std::max<size_t>(ahead, 1)), worker_([this] { work(); }) {}

ImagePrefetcher::~ImagePrefetcher() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stop_ = true;
  }
  changed_.notify_all();
  worker_.join();
}

void ImagePrefetcher::work() {
  for (size_t i = 0; i < files_.size(); ++i) {
    {
      std::unique_lock<std::mutex> lock(mutex_);
      changed_.wait(lock, [&] { return stop_ || queue_.size() < ahead_; });
      if (stop_) return;
    }
    PreparedImage item = prepare_file(files_[i], pre_, i);
    {
      std::lock_guard<std::mutex> lock(mutex_);
      queue_.push_back(std::move(item));
    }
    changed_.notify_all();
  }
}

std::optional<PreparedImage> ImagePrefetcher::next() {
  if (taken_ == files_.size()) return std::nullopt;
  std::unique_lock<std::mutex> lock(mutex_);
  changed_.wait(lock, [&] { return !queue_.empty(); });
  PreparedImage item = std::move(queue_.front());
  queue_.pop_front();
  ++taken_;
  lock.unlock();
  changed_.notify_all();
  return item;
}

}  // namespace attnkit::vision
