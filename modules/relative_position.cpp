#include <attnkit/modules/relative_position.h>

#include "ops/detail/neighborhood_window.h"

#include <torch/nn/functional/upsampling.h>

#include <map>
#include <mutex>
#include <tuple>
#include <utility>
#include <vector>

namespace attnkit {
namespace {

// Caches are small (one entry per shape actually used) but shared by every module and thread:
// a mutex guards them, and they are flushed when they grow past a bound so that a program that
// sees many shapes (e.g. variable-size inputs) does not keep them all.
constexpr size_t kMaxCacheEntries = 64;

struct DeviceKey {
  int type;
  int index;
  bool operator<(const DeviceKey& o) const { return std::tie(type, index) < std::tie(o.type, o.index); }
};
DeviceKey key_of(const torch::Device& d) { return {static_cast<int>(d.type()), static_cast<int>(d.index())}; }

std::mutex& cache_mutex() {
  static std::mutex m;
  return m;
}

}  // namespace

torch::Tensor relative_position_index(int64_t height, int64_t width, const torch::Device& device) {
  TORCH_CHECK(height > 0 && width > 0, "relative_position_index: height and width must be positive, got ", height,
              "x", width);
  using Key = std::tuple<int64_t, int64_t, DeviceKey>;
  static std::map<Key, torch::Tensor> cache;
  const Key key{height, width, key_of(device)};
  std::lock_guard<std::mutex> lock(cache_mutex());
  if (auto it = cache.find(key); it != cache.end()) return it->second;
  const int64_t n = height * width;
  std::vector<int64_t> idx(static_cast<size_t>(n * n));
  for (int64_t q = 0; q < n; ++q)
    for (int64_t k = 0; k < n; ++k) {
      const int64_t dy = q / width - k / width + height - 1;
      const int64_t dx = q % width - k % width + width - 1;
      idx[static_cast<size_t>(q * n + k)] = dy * (2 * width - 1) + dx;
    }
  auto t = torch::tensor(idx, torch::kLong).view({n, n}).to(device);
  if (cache.size() >= kMaxCacheEntries) cache.clear();
  cache.emplace(key, t);
  return t;
}

torch::Tensor resize_relative_position_table(const torch::Tensor& table, int64_t from_height, int64_t from_width,
                                             int64_t to_height, int64_t to_width) {
  if (from_height == to_height && from_width == to_width) return table;
  const int64_t heads = table.size(1);
  namespace F = torch::nn::functional;
  auto grid = table.t().reshape({1, heads, 2 * from_height - 1, 2 * from_width - 1});
  auto out = F::interpolate(grid, F::InterpolateFuncOptions()
                                      .size(std::vector<int64_t>{2 * to_height - 1, 2 * to_width - 1})
                                      .mode(torch::kBicubic)
                                      .align_corners(false));
  return out.reshape({heads, -1}).t();
}

int64_t neighborhood_window_start(int64_t index, int64_t length, int64_t kernel_size, int64_t dilation) {
  return ops::neighborhood_window_start(index, length, kernel_size, dilation);
}

NeighborhoodIndex neighborhood_index(int64_t height, int64_t width, int64_t kernel_size, int64_t dilation,
                                     const torch::Device& device) {
  TORCH_CHECK(kernel_size > 0 && kernel_size % 2 == 1, "neighborhood_index: kernel_size must be odd, got ",
              kernel_size);
  TORCH_CHECK(dilation >= 1, "neighborhood_index: dilation must be >= 1, got ", dilation);
  TORCH_CHECK(height >= kernel_size * dilation && width >= kernel_size * dilation,
              "neighborhood_index: the map (", height, "x", width, ") must be at least kernel_size*dilation = ",
              kernel_size * dilation, " on each side");
  using Key = std::tuple<int64_t, int64_t, int64_t, int64_t, DeviceKey>;
  static std::map<Key, NeighborhoodIndex> cache;
  const Key key{height, width, kernel_size, dilation, key_of(device)};
  std::lock_guard<std::mutex> lock(cache_mutex());
  if (auto it = cache.find(key); it != cache.end()) return it->second;

  const int64_t k = kernel_size, k2 = k * k, n = height * width, table_w = 2 * k - 1;
  std::vector<int64_t> keys(static_cast<size_t>(n * k2)), bias(static_cast<size_t>(n * k2));
  for (int64_t y = 0; y < height; ++y) {
    const int64_t sy = neighborhood_window_start(y, height, k, dilation);
    for (int64_t x = 0; x < width; ++x) {
      const int64_t sx = neighborhood_window_start(x, width, k, dilation);
      const size_t row = static_cast<size_t>((y * width + x) * k2);
      for (int64_t i = 0; i < k; ++i)
        for (int64_t j = 0; j < k; ++j) {
          const int64_t ky = sy + i * dilation, kx = sx + j * dilation;
          keys[row + static_cast<size_t>(i * k + j)] = ky * width + kx;
          // (ky - y) and (kx - x) are multiples of d: the key is in the query's dilation group.
          bias[row + static_cast<size_t>(i * k + j)] =
              ((ky - y) / dilation + k - 1) * table_w + ((kx - x) / dilation + k - 1);
        }
    }
  }
  NeighborhoodIndex out{torch::tensor(keys, torch::kLong).view({n, k2}).to(device),
                        torch::tensor(bias, torch::kLong).view({n, k2}).to(device)};
  if (cache.size() >= kMaxCacheEntries) cache.clear();
  cache.emplace(key, out);
  return out;
}

}  // namespace attnkit
