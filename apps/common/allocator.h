// The C allocator's settings for the program: feature maps are freed and allocated again, same
// sizes, dozens of times per batch.
#pragma once

namespace attnkit::common {

/// Keeps the memory of freed feature maps in the process for the next allocation, instead of
/// handing it back to the kernel and faulting it in, zeroed, page by page on the next touch.
///
/// glibc serves allocations above its mmap threshold (dynamic, at most 32 MiB) with fresh mmaps
/// and trims the heap's top once more than twice that is free. LibTorch's CPU allocator does not
/// cache, so a network whose maps are tens of MB (ResNet-50 at batch 8: 25.7 MB per 256×56×56 map)
/// pays page faults on most of its maps on every call: 5% of the samples of `attnkit bench --op
/// resnet50 --attention cbam --batch 8` were the kernel's page-fault path, and its inference path
/// ran 6% faster with these settings (docs/benchmarks.md). Process-wide, so the program sets it,
/// never the library (which cannot know its host's memory policy). Call before the first large
/// allocation; a no-op where the C library is not glibc.
void keep_freed_memory_for_reuse();

}  // namespace attnkit::common
