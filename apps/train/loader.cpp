#include "loader.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <torch/csrc/autograd/grad_mode.h>

#include <stdexcept>

namespace attnkit::train {

uint64_t mix_seed(uint64_t a, uint64_t b, uint64_t c) {
  auto splitmix = [](uint64_t z) {
    z += 0x9e3779b97f4a7c15ULL;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
  };
  return splitmix(splitmix(splitmix(a) ^ b) ^ c);
}

BatchLoader::BatchLoader(torch::Tensor images, torch::Tensor labels, LoaderOptions options)
    : images_(std::move(images)), labels_(std::move(labels)), options_(std::move(options)) {
  if (options_.batch_size < 1) throw std::runtime_error("batch size must be >= 1, got " + std::to_string(options_.batch_size));
  if (options_.shards < 1 || options_.shard < 0 || options_.shard >= options_.shards) {
    throw std::runtime_error("loader shard " + std::to_string(options_.shard) + " of " + std::to_string(options_.shards));
  }
  const int64_t n = labels_.size(0);
  num_batches_ = options_.drop_last ? n / options_.batch_size : (n + options_.batch_size - 1) / options_.batch_size;
  if (options_.shuffle) {
    auto gen = at::make_generator<at::CPUGeneratorImpl>(mix_seed(options_.seed, 0x5eed, options_.epoch));
    order_ = at::randperm(n, gen, torch::kLong);
  } else {
    order_ = at::arange(n, torch::kLong);
  }
  order_ = order_.to(images_.device());
  if (options_.prefetch > 0 && num_batches_ > 0) worker_ = std::thread([this] { work(); });
}

BatchLoader::~BatchLoader() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stop_ = true;
  }
  changed_.notify_all();
  if (worker_.joinable()) worker_.join();
}

Batch BatchLoader::make(int64_t index) const {
  torch::NoGradGuard no_grad;
  const int64_t begin = index * options_.batch_size;
  const int64_t end = std::min(begin + options_.batch_size, labels_.size(0));
  // This process's slice of the global batch [begin, end): balanced, contiguous, in rank order.
  const int64_t n = end - begin;
  const auto idx = order_.slice(0, begin + n * options_.shard / options_.shards, begin + n * (options_.shard + 1) / options_.shards);
  uint64_t seed = mix_seed(options_.seed, static_cast<uint64_t>(options_.epoch), static_cast<uint64_t>(index));
  if (options_.shard > 0) seed = mix_seed(seed, 0xd157, static_cast<uint64_t>(options_.shard));
  auto x = prepare_batch(images_.index_select(0, idx), options_.norm, options_.augment, options_.train, seed);
  if (options_.channels_last) x = x.contiguous(at::MemoryFormat::ChannelsLast);
  return Batch{x, labels_.index_select(0, idx), idx, n};
}

void BatchLoader::work() {
  try {
    for (int64_t i = 0; i < num_batches_; ++i) {
      {
        std::unique_lock<std::mutex> lock(mutex_);
        changed_.wait(lock, [&] { return stop_ || static_cast<int>(queue_.size()) < options_.prefetch; });
        if (stop_) return;
      }
      Batch batch = make(i);
      {
        std::lock_guard<std::mutex> lock(mutex_);
        queue_.push_back(std::move(batch));
        ++produced_;
      }
      changed_.notify_all();
    }
  } catch (...) {
    std::lock_guard<std::mutex> lock(mutex_);
    error_ = std::current_exception();
    changed_.notify_all();
  }
}

std::optional<Batch> BatchLoader::next() {
  if (next_index_ >= num_batches_) return std::nullopt;
  if (!worker_.joinable()) return make(next_index_++);
  std::unique_lock<std::mutex> lock(mutex_);
  changed_.wait(lock, [&] { return !queue_.empty() || error_; });
  if (queue_.empty()) std::rethrow_exception(error_);
  Batch batch = std::move(queue_.front());
  queue_.pop_front();
  ++next_index_;
  lock.unlock();
  changed_.notify_all();
  return batch;
}

}  // namespace attnkit::train
