// Picks the relpos_attention kernel table compiled for the best instruction set of the running CPU.
#include <attnkit/modules/ops/relpos_attention_kernels.h>

#include "kernel_dispatch.h"

namespace attnkit::ops::cpu {

ATTNKIT_DEFINE_CPU_DISPATCH(RelposAttentionKernelTable, relpos_attention_kernel_table, relpos_attention_kernels)

}  // namespace attnkit::ops::cpu
