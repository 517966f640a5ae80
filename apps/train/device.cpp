#include "device.h"

#include <ATen/Context.h>
#include <ATen/Parallel.h>
#include <torch/cuda.h>

#include <stdexcept>

namespace attnkit::train {

std::string resolve_device(const std::string& device) {
  if (device == "auto") return torch::cuda::is_available() ? "cuda" : "cpu";
  if (device == "cuda" && !torch::cuda::is_available()) {
    throw std::runtime_error("--device cuda: no CUDA device is available to this LibTorch");
  }
  if (device != "cpu" && device != "cuda") throw std::runtime_error("--device '" + device + "': expected auto, cpu or cuda");
  return device;
}

void configure_threads(int threads) {
  if (threads > 0) at::set_num_threads(threads);
}

void configure_cuda_speed(const std::string& device) {
  if (device != "cuda") return;
  at::globalContext().setBenchmarkCuDNN(true);
  at::globalContext().setFloat32MatmulPrecision("high");
}

}  // namespace attnkit::train
