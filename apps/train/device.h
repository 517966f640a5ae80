// Device and thread set-up shared by `attnkit train` and `attnkit eval`.
#pragma once

#include <string>

namespace attnkit::train {

/// "auto" → "cuda" when a CUDA device is available, else "cpu"; "cuda" without a device is an error.
std::string resolve_device(const std::string& device);

/// LibTorch's intra-op threads (0 leaves its default).
void configure_threads(int threads);

/// On CUDA: cuDNN autotuning (fixed shapes) and TF32 for the float32 matrix products.
void configure_cuda_speed(const std::string& device);

}  // namespace attnkit::train
