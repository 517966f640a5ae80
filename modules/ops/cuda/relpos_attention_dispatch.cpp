// relpos_attention on CUDA (builds with CUDA kernels only): the ops' CUDA kernels over
// relpos_attention_kernel.cu's table.
#include "../detail/relpos_attention_passes.h"

namespace attnkit::ops::cuda {

TORCH_LIBRARY_IMPL(attnkit, CUDA, m) { detail::register_relpos_attention_kernels<&relpos_attention_kernels>(m); }

}  // namespace attnkit::ops::cuda
