// Which code path a block runs: attnkit's fused kernels or the same math composed from ATen ops.
#pragma once

#include <c10/core/Device.h>

#include <ostream>

namespace torch::nn {
class Module;
}

namespace attnkit {

enum class Implementation {
  /// The fused kernels where attnkit has them for the input's device and they were measured faster
  /// (CBAM; LocalAttention2d and SelfAttention2d's multi-head attention on CPU), else composite.
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

namespace detail {
/// Whether a block asked for `impl` runs its fused op on `device`, where `kernel_exists` says whether
/// attnkit has a kernel for that device. Auto: where `auto_fused` (the block's fused path measured
/// faster than its composite one), a kernel exists and the block is not recording its attention map
/// (the fused ops never build it). Fused: the same, but an error naming `who` where impossible.
bool use_fused_kernel(Implementation impl, const c10::Device& device, bool kernel_exists, bool recording,
                      const char* who, bool auto_fused = true);
}  // namespace detail

inline std::ostream& operator<<(std::ostream& os, Implementation impl) { return os << to_string(impl); }

}  // namespace attnkit
