// The smallest real CUDA kernel of attnkit: proves on a GPU machine that the kernels nvcc built
// here load and run (tests/test_cuda_smoke.cpp). It also keeps nvcc in every CI build.
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/types.h>

namespace attnkit::ops {
namespace {
__global__ void iota_kernel(float* out, int64_t n) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i < n) out[i] = static_cast<float>(i);
}
}  // namespace

at::Tensor cuda_iota(int64_t n, at::Device device) {
  TORCH_CHECK(device.is_cuda(), "cuda_iota: device must be a CUDA device, got ", device);
  TORCH_CHECK(n >= 0, "cuda_iota: n must be >= 0, got ", n);
  const c10::cuda::CUDAGuard guard(device);
  auto out = at::empty({n}, at::TensorOptions().device(device).dtype(at::kFloat));
  if (n == 0) return out;
  constexpr int threads = 256;
  const auto blocks = static_cast<unsigned>((n + threads - 1) / threads);
  iota_kernel<<<blocks, threads, 0, at::cuda::getCurrentCUDAStream()>>>(out.data_ptr<float>(), n);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

}  // namespace attnkit::ops
