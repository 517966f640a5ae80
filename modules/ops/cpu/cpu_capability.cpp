#include "cpu_capability.h"

#include <ATen/Version.h>

namespace attnkit::ops::cpu {

// Defined by ATTNKIT_DEFINE_CPU_DISPATCH in each op's <op>_dispatch.cpp.
const char* cbam_kernels_copy();
const char* neighborhood_attention_kernels_copy();
const char* relpos_attention_kernels_copy();

std::vector<std::pair<std::string, std::string>> kernel_copies() {
  return {{"cbam", cbam_kernels_copy()},
          {"neighborhood_attention", neighborhood_attention_kernels_copy()},
          {"relpos_attention", relpos_attention_kernels_copy()}};
}

Capability cpu_capability() {
  static const Capability cap = [] {
    const std::string aten = at::get_cpu_capability();
    if (aten == "AVX512") return Capability::kAVX512;
    if (aten == "AVX2") return Capability::kAVX2;
    return Capability::kDefault;
  }();
  return cap;
}

const char* cpu_capability_name() {
  switch (cpu_capability()) {
    case Capability::kAVX512:
      return "AVX512";
    case Capability::kAVX2:
      return "AVX2";
    default:
      return "DEFAULT";
  }
}

}  // namespace attnkit::ops::cpu
