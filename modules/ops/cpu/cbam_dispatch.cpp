// Picks the CBAM kernel table compiled for the best instruction set of the running CPU.
#include <attnkit/modules/ops/cbam_kernels.h>

#include "cpu_capability.h"

namespace attnkit::ops::cpu {

ATTNKIT_CPU_KERNEL_PICKER(ops::CbamKernelTable, cbam_kernel_table_, cbam_kernels)

}  // namespace attnkit::ops::cpu
