// neighborhood_attention on the CPU: the kernel table compiled for the best instruction set of the
// running CPU, and the ops' CPU kernels over it.
#include "../detail/neighborhood_attention_passes.h"

#include "kernel_dispatch.h"

namespace attnkit::ops::cpu {

ATTNKIT_DEFINE_CPU_DISPATCH(NeighborhoodAttentionKernelTable, neighborhood_attention_kernel_table,
                            neighborhood_attention_kernels)

TORCH_LIBRARY_IMPL(attnkit, CPU, m) {
  detail::register_neighborhood_attention_kernels<&neighborhood_attention_kernels>(m);
}

}  // namespace attnkit::ops::cpu
