// relpos_attention on the CPU: the kernel table compiled for the best instruction set of the running
// CPU, and the ops' CPU kernels over it.
#include "../detail/relpos_attention_passes.h"

#include "kernel_dispatch.h"

namespace attnkit::ops::cpu {

ATTNKIT_DEFINE_CPU_DISPATCH(RelposAttentionKernelTable, relpos_attention_kernel_table, relpos_attention_kernels)

TORCH_LIBRARY_IMPL(attnkit, CPU, m) { detail::register_relpos_attention_kernels<&relpos_attention_kernels>(m); }

}  // namespace attnkit::ops::cpu
