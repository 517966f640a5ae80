// neighborhood_attention on CUDA (builds with CUDA kernels only): the ops' CUDA kernels over
// neighborhood_attention_kernel.cu's table.
#include "../detail/neighborhood_attention_passes.h"

namespace attnkit::ops::cuda {

TORCH_LIBRARY_IMPL(attnkit, CUDA, m) {
  detail::register_neighborhood_attention_kernels<&neighborhood_attention_kernels>(m);
}

}  // namespace attnkit::ops::cuda
