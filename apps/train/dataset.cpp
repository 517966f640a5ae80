#include "dataset.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>

#include <algorithm>
#include <sstream>
#include <stdexcept>

namespace attnkit::train {

Dataset subset(const Dataset& data, const torch::Tensor& indices) {
  return Dataset{data.images.index_select(0, indices).contiguous(), data.labels.index_select(0, indices), data.classes};
}

std::pair<Dataset, Dataset> split_train_val(const Dataset& data, int64_t val_size, uint64_t seed) {
  const int64_t n = data.size();
  if (val_size < 0 || val_size >= n) {
    throw std::runtime_error("validation size " + std::to_string(val_size) + " must be in [0, " + std::to_string(n) +
                             ") (the training set has " + std::to_string(n) + " images)");
  }
  if (val_size == 0) return {data, subset(data, torch::empty({0}, torch::kLong))};
  auto gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  const auto perm = torch::randperm(n, gen, torch::kLong);
  // Stratified: take each class's share (rounded down) from the shuffled order, then fill the
  // remainder from whatever comes next, so the class balance of the validation set matches.
  const auto labels = data.labels.index_select(0, perm);
  const int64_t k = static_cast<int64_t>(data.classes.size());
  const auto counts = torch::bincount(data.labels, {}, k);
  std::vector<int64_t> quota(k);
  for (int64_t c = 0; c < k; ++c) quota[c] = counts[c].item<int64_t>() * val_size / n;
  std::vector<char> chosen(n, 0);
  int64_t taken = 0;
  const auto* lab = labels.data_ptr<int64_t>();
  for (int64_t i = 0; i < n && taken < val_size; ++i) {
    if (quota[lab[i]] > 0) {
      --quota[lab[i]];
      chosen[i] = 1;
      ++taken;
    }
  }
  for (int64_t i = 0; i < n && taken < val_size; ++i) {
    if (!chosen[i]) {
      chosen[i] = 1;
      ++taken;
    }
  }
  std::vector<int64_t> train_idx, val_idx;
  const auto* p = perm.data_ptr<int64_t>();
  for (int64_t i = 0; i < n; ++i) (chosen[i] ? val_idx : train_idx).push_back(p[i]);
  // Sorted indices keep the original order within each part (reproducible, cache friendly).
  std::sort(train_idx.begin(), train_idx.end());
  std::sort(val_idx.begin(), val_idx.end());
  auto to_tensor = [](const std::vector<int64_t>& v) {
    return torch::tensor(v, torch::kLong);
  };
  return {subset(data, to_tensor(train_idx)), subset(data, to_tensor(val_idx))};
}

std::pair<std::vector<double>, std::vector<double>> channel_stats(const Dataset& data) {
  if (data.size() == 0) throw std::runtime_error("cannot compute the mean and std of an empty data set");
  // float64 sums: 47 million pixels in float32 would lose digits.
  const auto x = data.images.to(torch::kDouble).div_(255.0);
  const auto mean = x.mean({0, 2, 3});
  const auto stdev = x.std({0, 2, 3}, /*unbiased=*/false);
  std::vector<double> m(mean.data_ptr<double>(), mean.data_ptr<double>() + mean.numel());
  std::vector<double> s(stdev.data_ptr<double>(), stdev.data_ptr<double>() + stdev.numel());
  for (auto& v : s) v = std::max(v, 1e-6);  // a constant channel must not divide by zero
  return {m, s};
}

}  // namespace attnkit::train
