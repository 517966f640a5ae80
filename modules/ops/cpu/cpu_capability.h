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
