// How attnkit's CPU kernel tables are named per capability and picked at run time.
//
// Each modules/ops/cpu/<op>_kernel.cpp is compiled once per CPU capability (DEFAULT, AVX2, AVX512;
// see CMakeLists.txt) and defines its table with ATTNKIT_DEFINE_KERNEL_TABLE, which appends the
// capability to the name (<name>_DEFAULT(), <name>_AVX2(), ...). The op's <op>_dispatch.cpp then
// defines the public accessor with ATTNKIT_DEFINE_CPU_DISPATCH, which returns the copy for the best
// instruction set of the running CPU among those compiled in.
#pragma once

#include "cpu_capability.h"

#include <attnkit/cpu_kernels_config.h>

#define ATTNKIT_CONCAT_(a, b) a##b
#define ATTNKIT_CONCAT(a, b) ATTNKIT_CONCAT_(a, b)

/// In a *_kernel.cpp: `const ops::Table& <name>_<CPU_CAPABILITY>()` returning {functions...}.
#define ATTNKIT_DEFINE_KERNEL_TABLE(Table, name, ...)            \
  const ops::Table& ATTNKIT_CONCAT(name##_, CPU_CAPABILITY)() { \
    static const ops::Table table{__VA_ARGS__};                  \
    return table;                                                \
  }

#ifdef ATTNKIT_HAVE_AVX2_KERNELS
#define ATTNKIT_IF_AVX2_KERNELS(f) f
#else
#define ATTNKIT_IF_AVX2_KERNELS(f) nullptr
#endif
#ifdef ATTNKIT_HAVE_AVX512_KERNELS
#define ATTNKIT_IF_AVX512_KERNELS(f) f
#else
#define ATTNKIT_IF_AVX512_KERNELS(f) nullptr
#endif

namespace attnkit::ops::cpu {

/// The name of the copy `picked` is ("DEFAULT", "AVX2", "AVX512"): which one actually runs.
template <typename Table>
const char* copy_name(const Table* picked, const Table& (*default_copy)(), const Table& (*avx2)(),
                      const Table& (*avx512)()) {
  if (avx512 && picked == &avx512()) return "AVX512";
  if (avx2 && picked == &avx2()) return "AVX2";
  return picked == &default_copy() ? "DEFAULT" : "unknown";
}

/// The best of the compiled copies (nullptr: not compiled) for the running CPU.
template <typename Table>
const Table& best_for_cpu(const Table& (*default_copy)(), const Table& (*avx2)(), const Table& (*avx512)()) {
  const Capability cap = cpu_capability();
  if (cap == Capability::kAVX512 && avx512) return avx512();
  if ((cap == Capability::kAVX512 || cap == Capability::kAVX2) && avx2) return avx2();
  return default_copy();
}

}  // namespace attnkit::ops::cpu

/// In a *_dispatch.cpp (inside namespace attnkit::ops::cpu): defines `const ops::Table& accessor()`
/// and `const char* accessor_copy()`, the name of the copy accessor() returns (what BuildInfo and the
/// tests of the ATEN_CPU_CAPABILITY override report).
#define ATTNKIT_DEFINE_CPU_DISPATCH(Table, name, accessor)                                                   \
  const ops::Table& name##_DEFAULT();                                                                        \
  const ops::Table& name##_AVX2();                                                                           \
  const ops::Table& name##_AVX512();                                                                         \
  const ops::Table& accessor() {                                                                             \
    return best_for_cpu<ops::Table>(name##_DEFAULT, ATTNKIT_IF_AVX2_KERNELS(name##_AVX2),                    \
                                    ATTNKIT_IF_AVX512_KERNELS(name##_AVX512));                               \
  }                                                                                                          \
  const char* accessor##_copy() {                                                                            \
    return copy_name<ops::Table>(&accessor(), name##_DEFAULT, ATTNKIT_IF_AVX2_KERNELS(name##_AVX2),          \
                                 ATTNKIT_IF_AVX512_KERNELS(name##_AVX512));                                  \
  }
