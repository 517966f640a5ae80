// Which vector instruction set attnkit's CPU kernels use on this machine.
#pragma once

#include <string>
#include <utility>
#include <vector>

namespace attnkit::ops::cpu {

enum class Capability { kDefault, kAVX2, kAVX512 };

/// The same choice ATen makes for its own kernels (so ATEN_CPU_CAPABILITY=avx2|default also
/// steers attnkit), computed once.
Capability cpu_capability();

/// "DEFAULT", "AVX2" or "AVX512".
const char* cpu_capability_name();

/// The copy each op's kernel table resolved to, e.g. {{"cbam", "AVX512"}, ...}: what actually runs.
std::vector<std::pair<std::string, std::string>> kernel_copies();

}  // namespace attnkit::ops::cpu
