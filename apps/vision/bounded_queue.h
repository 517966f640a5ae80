// A bounded queue between two threads of `attnkit stream` (capture → inference → drawing), with the
// two policies a video pipeline needs when the consumer falls behind:
//   DropOldest  live sources (camera, GStreamer): push never waits; when full, the oldest item is
//               discarded and counted, so the consumer always gets the newest frames and lag does
//               not pile up.
//   Block       files and folders: push waits for room, so no frame is ever lost.
// close() ends the stream: pushes are refused, pop() drains what is left, then returns nothing.
#pragma once

#include <algorithm>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <vector>

namespace attnkit::vision {

enum class QueuePolicy { DropOldest, Block };

template <typename T>
class BoundedQueue {
 public:
  BoundedQueue(size_t capacity, QueuePolicy policy) : capacity_(capacity), policy_(policy) {
    if (capacity == 0) throw std::invalid_argument("BoundedQueue: capacity must be at least 1");
  }

  /// Adds `item` by the queue's policy. Returns false (and drops `item`) once the queue is closed.
  bool push(T item) {
    std::unique_lock<std::mutex> lock(mutex_);
    if (policy_ == QueuePolicy::Block) not_full_.wait(lock, [&] { return closed_ || items_.size() < capacity_; });
    if (closed_) return false;
    if (items_.size() >= capacity_) {
      items_.pop_front();
      ++dropped_;
    }
    items_.push_back(std::move(item));
    not_empty_.notify_one();
    return true;
  }

  /// The oldest item, waiting for one; nothing once the queue is closed and empty.
  std::optional<T> pop() {
    std::unique_lock<std::mutex> lock(mutex_);
    not_empty_.wait(lock, [&] { return closed_ || !items_.empty(); });
    if (items_.empty()) return std::nullopt;
    T item = std::move(items_.front());
    items_.pop_front();
    not_full_.notify_one();
    return item;
  }

  /// Up to `max` oldest items in order, waiting for the first. With `fill`, also waits until `max`
  /// items are there (or the queue is closed): batches from a file are always full. Without it, takes
  /// only what is queued already: batching a live source must not add latency. Empty once the queue
  /// is closed and drained.
  std::vector<T> pop_up_to(size_t max, bool fill) {
    std::vector<T> out;
    if (max == 0) return out;
    std::unique_lock<std::mutex> lock(mutex_);
    const size_t want = std::min(max, capacity_);
    not_empty_.wait(lock, [&] { return closed_ || (fill ? items_.size() >= want : !items_.empty()); });
    while (!items_.empty() && out.size() < max) {
      out.push_back(std::move(items_.front()));
      items_.pop_front();
    }
    not_full_.notify_all();
    return out;
  }

  /// Refuses further pushes and wakes every waiting thread; items already queued can still be popped.
  void close() {
    std::lock_guard<std::mutex> lock(mutex_);
    closed_ = true;
    not_empty_.notify_all();
    not_full_.notify_all();
  }

  /// Items discarded by DropOldest so far.
  int64_t dropped() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return dropped_;
  }

  size_t size() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return items_.size();
  }

 private:
  const size_t capacity_;
  const QueuePolicy policy_;
  mutable std::mutex mutex_;
  std::condition_variable not_empty_, not_full_;
  std::deque<T> items_;
  bool closed_ = false;
  int64_t dropped_ = 0;
};

}  // namespace attnkit::vision
