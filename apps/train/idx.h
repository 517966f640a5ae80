// Readers for the IDX format of MNIST and Fashion-MNIST (http://yann.lecun.com/exdb/mnist/):
// a big-endian header (0, 0, type code, number of dimensions, then one uint32 size per dimension)
// followed by the values. Files may be gzip-compressed (as the data sets ship).
#pragma once

#include "dataset.h"

#include <string>

namespace attnkit::train {

/// The tensor stored in an IDX file (uint8, int8, int16, int32, float32 or float64, in the file's
/// shape). Throws std::runtime_error naming the file for a bad magic, an unknown type, or a file
/// shorter or longer than its header says.
torch::Tensor read_idx(const std::string& path);

/// Images (IDX, [N, H, W] or [N, C, H, W] uint8) and labels (IDX, [N] uint8) as a Dataset.
Dataset read_idx_dataset(const std::string& images_path, const std::string& labels_path,
                         const std::vector<std::string>& classes);

/// True when `dir` holds MNIST-style files (train-images-idx3-ubyte[.gz], ...).
bool is_idx_dir(const std::string& dir);

/// The "train" or "test" ("t10k") split of an MNIST-style folder.
Dataset read_idx_dir(const std::string& dir, const std::string& split, const std::vector<std::string>& classes);

}  // namespace attnkit::train
