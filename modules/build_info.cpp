#include <attnkit/modules/build_info.h>
#include <attnkit/version.h>

#include <ATen/Parallel.h>
#include <torch/cuda.h>
#include <torch/version.h>

#include "ops/cpu/cpu_capability.h"

namespace attnkit {

BuildInfo build_info() {
  BuildInfo info;
  info.version = ATTNKIT_VERSION;
  info.torch_version = TORCH_VERSION;
#ifdef ATTNKIT_WITH_CUDA
  info.cuda_kernels = true;
#endif
  info.cuda_available = torch::cuda::is_available();
#ifdef INTRA_OP_PARALLEL
  info.parallel_kernels = true;
#endif
  info.cpu_capability = ops::cpu::cpu_capability_name();
  info.cpu_kernel_copies = ops::cpu::kernel_copies();
  return info;
}

}  // namespace attnkit
