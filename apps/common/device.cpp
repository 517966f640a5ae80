#include "device.h"

#include <ATen/Context.h>
#include <ATen/Parallel.h>
#include <torch/cuda.h>

#include <stdexcept>

namespace attnkit::common {

std::string resolve_device(const std::string& device) {
  if (device == "auto") return torch::cuda::is_available() ? "cuda" : "cpu";
  if (device == "cuda" && !torch::cuda::is_available()) {
    throw std::runtime_error("--device cuda: no CUDA device is available to this LibTorch");
  }
  if (device != "cpu" && device != "cuda") throw std::runtime_error("--device '" + device + "': expected auto, cpu or cuda");
  return device;
}

c10::ScalarType dtype_from_name(const std::string& name) {
  if (name == "float32") return c10::kFloat;
  if (name == "float64") return c10::kDouble;
  if (name == "bfloat16") return c10::kBFloat16;
  if (name == "float16") return c10::kHalf;
  throw std::invalid_argument("'" + name + "': expected float32, float64, bfloat16 or float16");
}

std::string dtype_name(c10::ScalarType dtype) {
  switch (dtype) {
    case c10::kFloat: return "float32";
    case c10::kDouble: return "float64";
    case c10::kBFloat16: return "bfloat16";
    case c10::kHalf: return "float16";
    default: return c10::toString(dtype);
  }
}

void configure_threads(int threads) {
  if (threads > 0) at::set_num_threads(threads);
}

void configure_cuda_speed(const std::string& device) {
  if (device != "cuda") return;
  at::globalContext().setBenchmarkCuDNN(true);
  at::globalContext().setFloat32MatmulPrecision("high");
}

}  // namespace attnkit::common
