// Picks the neighborhood attention kernel table compiled for the best instruction set of the running CPU.
#include <attnkit/modules/ops/neighborhood_attention_kernels.h>

#include "kernel_dispatch.h"

namespace attnkit::ops::cpu {

ATTNKIT_DEFINE_CPU_DISPATCH(NeighborhoodAttentionKernelTable, neighborhood_attention_kernel_table,
                            neighborhood_attention_kernels)

}  // namespace attnkit::ops::cpu
