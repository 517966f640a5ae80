// Picks the CBAM kernel table compiled for the best instruction set of the running CPU.
#include <attnkit/modules/ops/cbam_kernels.h>

#include "cpu_capability.h"

#include <attnkit/cpu_kernels_config.h>

namespace attnkit::ops::cpu {

const ops::CbamKernelTable& cbam_kernel_table_DEFAULT();
#ifdef ATTNKIT_HAVE_AVX2_KERNELS
const ops::CbamKernelTable& cbam_kernel_table_AVX2();
#endif
#ifdef ATTNKIT_HAVE_AVX512_KERNELS
const ops::CbamKernelTable& cbam_kernel_table_AVX512();
#endif

const ops::CbamKernelTable& cbam_kernels() {
  switch (cpu_capability()) {
#ifdef ATTNKIT_HAVE_AVX512_KERNELS
    case Capability::kAVX512:
      return cbam_kernel_table_AVX512();
#endif
#ifdef ATTNKIT_HAVE_AVX2_KERNELS
    case Capability::kAVX2:
      return cbam_kernel_table_AVX2();
#endif
    default:
      return cbam_kernel_table_DEFAULT();
  }
}

}  // namespace attnkit::ops::cpu
