// Picks the relpos_attention kernel table compiled for the best instruction set of the running CPU.
#include <attnkit/modules/ops/relpos_attention_kernels.h>

#include "cpu_capability.h"

#include <attnkit/cpu_kernels_config.h>

namespace attnkit::ops::cpu {

const ops::RelposAttentionKernelTable& relpos_attention_kernel_table_DEFAULT();
#ifdef ATTNKIT_HAVE_AVX2_KERNELS
const ops::RelposAttentionKernelTable& relpos_attention_kernel_table_AVX2();
#endif
#ifdef ATTNKIT_HAVE_AVX512_KERNELS
const ops::RelposAttentionKernelTable& relpos_attention_kernel_table_AVX512();
#endif

const ops::RelposAttentionKernelTable& relpos_attention_kernels() {
  switch (cpu_capability()) {
#ifdef ATTNKIT_HAVE_AVX512_KERNELS
    case Capability::kAVX512:
      return relpos_attention_kernel_table_AVX512();
#endif
#ifdef ATTNKIT_HAVE_AVX2_KERNELS
    case Capability::kAVX2:
      return relpos_attention_kernel_table_AVX2();
#endif
    default:
      return relpos_attention_kernel_table_DEFAULT();
  }
}

}  // namespace attnkit::ops::cpu
