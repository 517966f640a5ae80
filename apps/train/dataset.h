// What training does with a Dataset (common/dataset.h): subsets, a stratified train/validation
// split, and the per-channel statistics the normalisation uses.
#pragma once

#include "common/dataset.h"

#include <torch/types.h>

#include <cstdint>
#include <string>
#include <vector>

namespace attnkit::train {

// The data set itself and its class names live in common/ (vision/ reads images into the same form).
using common::Dataset;
using common::fashion_mnist_classes;
using common::parse_class_names;

/// The rows `indices` (int64, 1-D) of `data`.
Dataset subset(const Dataset& data, const torch::Tensor& indices);

/// Splits `data` into (train, validation) with `val_size` images drawn at random (fixed `seed`),
/// stratified so every class keeps its share. val_size = 0 gives (data, empty).
std::pair<Dataset, Dataset> split_train_val(const Dataset& data, int64_t val_size, uint64_t seed);

/// Per-channel mean and standard deviation of the images scaled to [0, 1].
std::pair<std::vector<double>, std::vector<double>> channel_stats(const Dataset& data);

}  // namespace attnkit::train
