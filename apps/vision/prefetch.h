// Image files decoded and prepared for the network by a background thread, in order, a bounded
// number ahead of the consumer: decoding the next images overlaps the inference on the current
// batch. A file that cannot be read or prepared becomes an item with an error, not an exception,
// so one bad file does not stop the others.
#pragma once

#include "bounded_queue.h"
#include "preprocess.h"

#include <cstddef>
#include <optional>
#include <string>
#include <thread>
#include <vector>

namespace attnkit::vision {

struct PreparedImage {
  /// Position in the file list.
  size_t index = 0;
  std::string path;
  /// Empty when `error` is set.
  NetworkInput input;
  /// Size of the decoded image (for drawing maps back onto it).
  cv::Size image_size;
  /// Why the file could not be used, without the path ("no such file", "cannot decode ..."); empty
  /// on success.
  std::string error;
};

/// Reads `path` and applies `pre` (read_image + prepare_input); errors go into PreparedImage::error.
PreparedImage prepare_file(const std::string& path, const Preprocessing& pre, size_t index = 0);

class ImagePrefetcher {
 public:
  /// Starts the thread; at most `ahead` (≥ 1) prepared images wait for next().
  ImagePrefetcher(std::vector<std::string> files, Preprocessing pre, size_t ahead);
  /// Stops the thread (without preparing the rest) and joins it.
  ~ImagePrefetcher();
  ImagePrefetcher(const ImagePrefetcher&) = delete;
  ImagePrefetcher& operator=(const ImagePrefetcher&) = delete;

  /// The next file in list order, or nullopt after the last.
  std::optional<PreparedImage> next();

 private:
  void work();

  const std::vector<std::string> files_;
  const Preprocessing pre_;
  /// Blocking (never drops): the worker waits while `ahead` images are ready; closed by the worker
  /// after the last file, by the destructor to stop early.
  BoundedQueue<PreparedImage> queue_;
  std::thread worker_;  // last: starts once everything above is initialised
};

}  // namespace attnkit::vision
