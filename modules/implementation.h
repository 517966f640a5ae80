// Which code path a block runs: attnkit's fused kernels or the same math composed from ATen ops.
#pragma once

#include <ostream>

namespace torch::nn {
class Module;
}

namespace attnkit {

enum class Implementation {
  /// The fused kernels where attnkit has them for the input's device and they were measured faster
  /// (CBAM; SelfAttention2d's multi-head attention), else composite.
  Auto,
  /// attnkit's fused kernels; an error where none exists for the input's device.
  Fused,
  /// The reference math composed from stock ATen ops (what the fused kernels are tested against).
  Composite,
};

inline const char* to_string(Implementation impl) {
  switch (impl) {
    case Implementation::Fused:
      return "fused";
    case Implementation::Composite:
      return "composite";
    default:
      return "auto";
  }
}

/// Sets `impl` on every block under `root` (root included) that has a fused implementation: how a
/// whole network (a backbone, say) is switched between fused and composite attention.
/// Returns how many blocks were switched.
int set_implementation(torch::nn::Module& root, Implementation impl);

inline std::ostream& operator<<(std::ostream& os, Implementation impl) { return os << to_string(impl); }

}  // namespace attnkit
