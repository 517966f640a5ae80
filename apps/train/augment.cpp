#include "augment.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>

#include <cmath>
#include <stdexcept>

namespace attnkit::train {

namespace {
torch::TensorOptions cpu_long() { return torch::TensorOptions().dtype(torch::kLong); }
}  // namespace

torch::Tensor random_crop(const torch::Tensor& x, int64_t padding, at::Generator& gen) {
  if (padding <= 0) return x;
  const int64_t b = x.size(0), c = x.size(1), h = x.size(2), w = x.size(3);
  const auto dev = x.device();
  const auto padded = at::constant_pad_nd(x, {padding, padding, padding, padding}, 0.0);
  // Each image's offset in [0, 2·padding]; crop with two gathers (rows, then columns).
  const auto oy = at::randint(0, 2 * padding + 1, {b}, gen, cpu_long()).to(dev);
  const auto ox = at::randint(0, 2 * padding + 1, {b}, gen, cpu_long()).to(dev);
  const auto rows = (oy.view({b, 1}) + at::arange(h, cpu_long().device(dev)).view({1, h}))
                        .view({b, 1, h, 1}).expand({b, c, h, w + 2 * padding});
  const auto cols = (ox.view({b, 1}) + at::arange(w, cpu_long().device(dev)).view({1, w}))
                        .view({b, 1, 1, w}).expand({b, c, h, w});
  return padded.gather(2, rows).gather(3, cols);
}

torch::Tensor random_hflip(const torch::Tensor& x, at::Generator& gen) {
  const auto flip = (at::rand({x.size(0)}, gen) < 0.5).to(x.device()).view({-1, 1, 1, 1});
  return at::where(flip, x.flip({3}), x);
}

torch::Tensor random_erasing(const torch::Tensor& x, double p, at::Generator& gen) {
  if (p <= 0) return x;
  const int64_t b = x.size(0), h = x.size(2), w = x.size(3);
  const auto dev = x.device();
  const auto apply = at::rand({b}, gen) < p;
  const auto area = at::rand({b}, gen, at::kDouble) * (0.33 - 0.02) + 0.02;
  const auto log_ratio = at::rand({b}, gen, at::kDouble) * (std::log(3.3) - std::log(0.3)) + std::log(0.3);
  const auto ratio = log_ratio.exp();
  const auto eh = (area * (h * w) * ratio).sqrt().round().clamp(1, h).to(at::kLong);
  const auto ew = (area * (h * w) / ratio).sqrt().round().clamp(1, w).to(at::kLong);
  const auto top = (at::rand({b}, gen, at::kDouble) * (h - eh + 1).to(at::kDouble)).floor().to(at::kLong);
  const auto left = (at::rand({b}, gen, at::kDouble) * (w - ew + 1).to(at::kDouble)).floor().to(at::kLong);
  const auto noise = at::randn(x.sizes(), gen, x.scalar_type()).to(dev);
  const auto r = at::arange(h, cpu_long()).view({1, h});
  const auto c = at::arange(w, cpu_long()).view({1, w});
  const auto in_rows = (r >= top.view({b, 1})) & (r < (top + eh).view({b, 1}));   // [B, H]
  const auto in_cols = (c >= left.view({b, 1})) & (c < (left + ew).view({b, 1}));  // [B, W]
  const auto mask = (in_rows.view({b, 1, h, 1}) & in_cols.view({b, 1, 1, w}) & apply.view({b, 1, 1, 1})).to(dev);
  return at::where(mask, noise, x);
}

torch::Tensor prepare_batch(const torch::Tensor& images, const Normalization& norm, const AugmentOptions& augment,
                            bool train, uint64_t seed) {
  if (images.dim() != 4 || images.scalar_type() != torch::kUInt8) {
    throw std::runtime_error("prepare_batch: images must be uint8 [B, C, H, W]");
  }
  const int64_t c = images.size(1);
  if (static_cast<int64_t>(norm.mean.size()) != c || static_cast<int64_t>(norm.std.size()) != c) {
    throw std::runtime_error("normalisation has " + std::to_string(norm.mean.size()) + " channel(s), the images have " +
                             std::to_string(c));
  }
  auto x = images.to(torch::kFloat).div_(255.0);
  const bool augmenting = train && augment.any() && images.size(0) > 0;
  auto gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  if (augmenting) {
    x = random_crop(x, augment.crop_padding, gen);
    if (augment.hflip) x = random_hflip(x, gen);
  }
  const auto opts = torch::TensorOptions().dtype(torch::kFloat).device(images.device());
  const auto mean = torch::tensor(norm.mean, torch::kDouble).to(opts).view({1, c, 1, 1});
  const auto stdev = torch::tensor(norm.std, torch::kDouble).to(opts).view({1, c, 1, 1});
  x = (x - mean) / stdev;
  if (augmenting && augment.erasing > 0) x = random_erasing(x, augment.erasing, gen);
  return x;
}

}  // namespace attnkit::train
