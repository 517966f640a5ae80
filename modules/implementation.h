// Which code path a block runs: attnkit's fused kernels or the same math composed from ATen ops.
#pragma once

#include <c10/core/Device.h>

#include <ostream>
#include <vector>

namespace torch::nn {
class Module;
}

namespace attnkit {

enum class Implementation {
  /// The fused kernels where they have been verified on the input's device — passed their tests there
  /// and measured faster than the composite path (kernel_verification(): today every fused op on
  /// the CPU, none on CUDA) — else composite.
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

/// attnkit's fused ops, as kernel_verification() names them.
enum class FusedOp { Cbam, NeighborhoodAttention, RelposAttention };

/// "cbam", "neighborhood_attention" or "relpos_attention".
const char* to_string(FusedOp op);

/// One entry of the table that decides where Implementation::Auto runs a fused op.
struct KernelVerification {
  FusedOp op;
  c10::DeviceType device;
  /// The kernel passed its tests on a real device of this type and was measured faster than the
  /// composite path: Auto may run it. Otherwise Auto runs the composite path; Fused still opts in.
  bool verified;
  /// Which run showed it (device, date, commit), or why the entry is not verified.
  const char* evidence;
};

/// The whole table, one entry per op and device type with a kernel (CPU, CUDA).
const std::vector<KernelVerification>& kernel_verification();

/// Whether Auto may run `op`'s fused kernel on `device` (false for a device type without an entry).
bool auto_runs_fused(FusedOp op, c10::DeviceType device);

/// A block with a fused and a composite path that can be switched after construction: what
/// set_implementation(root, impl) looks for, so a new block joins it by deriving from this.
class HasImplementation {
 public:
  virtual ~HasImplementation() = default;
  /// The path the block is asked to run (its options' impl).
  virtual Implementation implementation() const = 0;
  /// Sets its options' impl.
  virtual void set_implementation(Implementation impl) = 0;
};

/// Sets `impl` on every block under `root` (root included) that has a fused implementation (every
/// HasImplementation): how a whole network (a backbone, say) is switched between fused and composite
/// attention. Returns how many blocks were switched.
int set_implementation(torch::nn::Module& root, Implementation impl);

namespace detail {
/// Whether a block asked for `impl` runs the fused op `op` on `device`, where `kernel_exists` says
/// whether attnkit has a kernel for that device. Auto: where `auto_fused` (the block's fused path
/// measured faster than its composite one), the kernel is verified on that device type
/// (auto_runs_fused), it exists and the block is not recording its attention map (the fused ops
/// never build it). Fused: a kernel that exists, verified or not, but an error naming `who` where
/// impossible.
bool use_fused_kernel(Implementation impl, FusedOp op, const c10::Device& device, bool kernel_exists, bool recording,
                      const char* who, bool auto_fused = true);
}  // namespace detail

inline std::ostream& operator<<(std::ostream& os, Implementation impl) { return os << to_string(impl); }

}  // namespace attnkit
