// Batch preparation: uint8 images to normalised float, with the training augmentations applied as
// batched tensor operations (so they run on the GPU when the data lives there):
//   - random crop with zero padding (the CIFAR/Fashion-MNIST standard: pad, then crop back);
//   - horizontal flip with probability 1/2;
//   - random erasing (Zhong et al., "Random Erasing Data Augmentation", AAAI 2020): with
//     probability p, a rectangle of 2–33% of the area with aspect ratio in [0.3, 3.3] is filled
//     with N(0, 1) noise (in normalised units, torchvision's value="random").
// Every random number comes from a CPU generator seeded with `seed`, so a batch's augmentation is a
// pure function of (seed, images): the same on CPU and CUDA, across threads and across resumes.
// Departure from torchvision's RandomErasing: a rectangle that does not fit is clipped to the image
// instead of re-drawn (up to 10 times), which keeps the whole batch one vectorised pass.
#pragma once

#include <torch/types.h>

#include <cstdint>
#include <vector>

namespace attnkit::train {

struct AugmentOptions {
  /// Zero padding (pixels) before the random crop back to the original size; 0 = no crop.
  int64_t crop_padding = 0;
  /// Random horizontal flip.
  bool hflip = false;
  /// Probability of random erasing per image; 0 = off.
  double erasing = 0.0;
  bool any() const { return crop_padding > 0 || hflip || erasing > 0; }
};

/// Normalisation of a checkpoint / data set: x = (pixel / 255 - mean[c]) / std[c].
struct Normalization {
  std::vector<double> mean;
  std::vector<double> std;
};

/// images: uint8 [B, C, H, W] on any device. Returns float32 [B, C, H, W] on the same device,
/// normalised, augmented with `augment` when `train` (deterministic in `seed`).
torch::Tensor prepare_batch(const torch::Tensor& images, const Normalization& norm, const AugmentOptions& augment,
                            bool train, uint64_t seed);

/// The augmentations alone on float [B, C, H, W] images (crop and flip before normalisation,
/// erasing after, as prepare_batch runs them). Exposed for tests.
torch::Tensor random_crop(const torch::Tensor& x, int64_t padding, at::Generator& gen);
torch::Tensor random_hflip(const torch::Tensor& x, at::Generator& gen);
torch::Tensor random_erasing(const torch::Tensor& x, double p, at::Generator& gen);

}  // namespace attnkit::train
