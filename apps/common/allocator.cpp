#include "common/allocator.h"

#if defined(__GLIBC__)
#include <malloc.h>
#endif

namespace attnkit::common {

void keep_freed_memory_for_reuse() {
#if defined(__GLIBC__)
  // Allocations up to 1 GiB come from the heap (a larger one is still its own mmap, returned on
  // free), and up to 1 GiB of free memory at the heap's top stays for reuse. Setting either turns
  // off glibc's dynamic threshold, so both are set. mallopt returns 0 on a rejected value: then
  // glibc's defaults stay, which are correct, only slower.
  constexpr int kOneGiB = 1 << 30;
  mallopt(M_MMAP_THRESHOLD, kOneGiB);
  mallopt(M_TRIM_THRESHOLD, kOneGiB);
#endif
}

}  // namespace attnkit::common
