// Mini-batches of one epoch, prepared ahead of time by a background thread into a bounded queue.
//
// The whole data set sits in memory as uint8 (on the GPU when training there); a batch is an
// index_select of the epoch's permutation followed by prepare_batch (augmentation as batched tensor
// ops). The permutation and each batch's augmentation are pure functions of (seed, epoch, batch
// index), so the batches are identical whatever the thread timing, and a resumed run sees exactly
// the batches the uninterrupted run would have seen.
//
// Data-parallel training (distributed.h) shards every batch: the permutation is the same on every
// process, each global batch is cut into `shards` contiguous slices, and process `shard` takes its
// slice, so the union over processes is exactly the one-process batch and every image is seen once per
// epoch whatever the number of processes. Augmentation is drawn per process (rank 0's stream is the
// one-process stream), so no two processes draw the same crops.
#pragma once

#include "augment.h"

#include <torch/types.h>

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <exception>
#include <mutex>
#include <optional>
#include <thread>

namespace attnkit::train {

/// 64-bit mix of several numbers (splitmix64 finaliser chained): independent streams per
/// (seed, epoch, batch) for the CPU generators.
uint64_t mix_seed(uint64_t a, uint64_t b, uint64_t c = 0);

struct LoaderOptions {
  int64_t batch_size = 128;
  /// Shuffle with a permutation drawn from (seed, epoch).
  bool shuffle = false;
  /// Drop the last incomplete batch (training: keeps BatchNorm statistics sane).
  bool drop_last = false;
  /// Apply `augment` (training) or not (evaluation).
  bool train = false;
  AugmentOptions augment;
  Normalization norm;
  uint64_t seed = 0;
  int64_t epoch = 0;
  /// Batches prepared ahead by the background thread; 0 = prepare in next() on the caller's thread.
  int prefetch = 2;
  /// Return channels-last images (faster convolutions on CUDA tensor cores).
  bool channels_last = false;
  /// This process's slice of every batch: slice `shard` of `shards` (data-parallel training); batch_size
  /// stays the global batch size.
  int64_t shard = 0;
  int64_t shards = 1;
};

struct Batch {
  /// float32 [B, C, H, W], normalised (and augmented when training), on the data's device.
  torch::Tensor images;
  /// int64 [B] on the data's device.
  torch::Tensor labels;
  /// int64 [B]: the rows of the data set these images are (on the data's device).
  torch::Tensor indices;
  /// Images in the global batch this one is a slice of (= B with one process).
  int64_t global_size = 0;
};

class BatchLoader {
 public:
  /// images: uint8 [N, C, H, W]; labels: int64 [N], both on the device batches should live on.
  BatchLoader(torch::Tensor images, torch::Tensor labels, LoaderOptions options);
  ~BatchLoader();
  BatchLoader(const BatchLoader&) = delete;
  BatchLoader& operator=(const BatchLoader&) = delete;

  int64_t num_batches() const { return num_batches_; }
  /// The next batch, or nullopt after the last. Rethrows an error of the background thread.
  std::optional<Batch> next();

 private:
  Batch make(int64_t index) const;
  void work();

  torch::Tensor images_, labels_, order_;
  LoaderOptions options_;
  int64_t num_batches_ = 0;
  int64_t next_index_ = 0;  // next batch next() returns
  std::thread worker_;
  std::mutex mutex_;
  std::condition_variable changed_;
  std::deque<Batch> queue_;
  int64_t produced_ = 0;
  bool stop_ = false;
  std::exception_ptr error_;
};

}  // namespace attnkit::train
