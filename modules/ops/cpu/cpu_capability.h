// Which vector instruction set attnkit's CPU kernels use on this machine.
#pragma once

namespace attnkit::ops::cpu {

enum class Capability { kDefault, kAVX2, kAVX512 };

/// The same choice ATen makes for its own kernels (so ATEN_CPU_CAPABILITY=avx2|default also
/// steers attnkit), computed once.
Capability cpu_capability();

/// "DEFAULT", "AVX2" or "AVX512".
const char* cpu_capability_name();

}  // namespace attnkit::ops::cpu

// Declares the kernel tables `prefix`DEFAULT(), `prefix`AVX2(), `prefix`AVX512() (those this build
// compiles, see cpu_kernels_config.h) and defines `getter`, which returns the one for the running
// CPU. Used inside namespace attnkit::ops::cpu by each family's *_dispatch.cpp.
#include <attnkit/cpu_kernels_config.h>
#ifdef ATTNKIT_HAVE_AVX2_KERNELS
#define ATTNKIT_IF_AVX2(...) __VA_ARGS__
#else
#define ATTNKIT_IF_AVX2(...)
#endif
#ifdef ATTNKIT_HAVE_AVX512_KERNELS
#define ATTNKIT_IF_AVX512(...) __VA_ARGS__
#else
#define ATTNKIT_IF_AVX512(...)
#endif
#define ATTNKIT_CPU_KERNEL_PICKER(Table, prefix, getter)                  \
  const Table& prefix##DEFAULT();                                       \
  ATTNKIT_IF_AVX2(const Table& prefix##AVX2();)                         \
  ATTNKIT_IF_AVX512(const Table& prefix##AVX512();)                     \
  const Table& getter() {                                               \
    switch (cpu_capability()) {                                         \
      ATTNKIT_IF_AVX512(case Capability::kAVX512: return prefix##AVX512();) \
      ATTNKIT_IF_AVX2(case Capability::kAVX2: return prefix##AVX2();)   \
      default:                                                          \
        return prefix##DEFAULT();                                       \
    }                                                                   \
  }
