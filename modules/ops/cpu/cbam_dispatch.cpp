// CBAM on the CPU: the kernel table compiled for the best instruction set of the running CPU, and
// the ops' CPU kernels over it.
#include "../detail/cbam_passes.h"

#include "kernel_dispatch.h"

namespace attnkit::ops::cpu {

ATTNKIT_DEFINE_CPU_DISPATCH(CbamKernelTable, cbam_kernel_table, cbam_kernels)

TORCH_LIBRARY_IMPL(attnkit, CPU, m) { detail::register_cbam_kernels<&cbam_kernels>(m); }

}  // namespace attnkit::ops::cpu
