// Picks the relpos_attention kernel table compiled for the best instruction set of the running CPU.
#include <attnkit/modules/ops/relpos_attention_kernels.h>

#include "cpu_capability.h"

namespace attnkit::ops::cpu {

ATTNKIT_CPU_KERNEL_PICKER(ops::RelposAttentionKernelTable, relpos_attention_kernel_table_, relpos_attention_kernels)

}  // namespace attnkit::ops::cpu
