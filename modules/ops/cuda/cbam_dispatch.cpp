// CBAM on CUDA (builds with CUDA kernels only): the ops' CUDA kernels over cbam_kernel.cu's table.
#include "../detail/cbam_passes.h"

namespace attnkit::ops::cuda {

TORCH_LIBRARY_IMPL(attnkit, CUDA, m) { detail::register_cbam_kernels<&cbam_kernels>(m); }

}  // namespace attnkit::ops::cuda
