// Picks the CBAM kernel table compiled for the best instruction set of the running CPU.
#include <attnkit/modules/ops/cbam_kernels.h>

#include "kernel_dispatch.h"

namespace attnkit::ops::cpu {

ATTNKIT_DEFINE_CPU_DISPATCH(CbamKernelTable, cbam_kernel_table, cbam_kernels)

}  // namespace attnkit::ops::cpu
