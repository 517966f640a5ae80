// Device, dtype and thread set-up shared by the commands (train, eval, bench, classify, visualize,
// stream) and by the training loop.
#pragma once

#include <c10/core/ScalarType.h>

#include <string>

namespace attnkit::common {

/// "auto" → "cuda" when a CUDA device is available, else "cpu"; "cuda" without a device is an error.
std::string resolve_device(const std::string& device);

/// "float32", "float64", "bfloat16" or "float16" → its dtype; anything else throws
/// std::invalid_argument naming the value.
c10::ScalarType dtype_from_name(const std::string& name);
/// The inverse of dtype_from_name (other dtypes: LibTorch's own name).
std::string dtype_name(c10::ScalarType dtype);

/// LibTorch's intra-op threads (0 leaves its default).
void configure_threads(int threads);

/// On CUDA: cuDNN autotuning (fixed shapes) and TF32 for the float32 matrix products.
void configure_cuda_speed(const std::string& device);

}  // namespace attnkit::common
