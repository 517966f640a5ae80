#include <attnkit/modules/implementation.h>

#include <torch/nn/module.h>

namespace attnkit {

int set_implementation(torch::nn::Module& root, Implementation impl) {
  int switched = 0;
  for (const auto& m : root.modules(/*include_self=*/true)) {
    if (auto* block = dynamic_cast<HasImplementation*>(m.get())) {
      block->set_implementation(impl);
      ++switched;
    }
  }
  return switched;
}

const char* to_string(FusedOp op) {
  switch (op) {
    case FusedOp::Cbam:
      return "cbam";
    case FusedOp::NeighborhoodAttention:
      return "neighborhood_attention";
    default:
      return "relpos_attention";
  }
}

// The one place that says where Auto runs attnkit's own kernels. Flip an entry only after a run on
// that device passed the op's tests and measured it faster (scripts/gpu_check.sh for CUDA), and
// write down the run.
const std::vector<KernelVerification>& kernel_verification() {
  static const std::vector<KernelVerification> table = {
      {FusedOp::Cbam, c10::DeviceType::CPU, true,
       "CPU: test_fused_cbam at every kernel copy and 1/2 threads; attnkit bench (README), Xeon and EPYC, 2026-11/12"},
      {FusedOp::NeighborhoodAttention, c10::DeviceType::CPU, true,
       "CPU: test_fused_local_attention at every kernel copy and 1/2 threads; attnkit bench --op local (README)"},
      {FusedOp::RelposAttention, c10::DeviceType::CPU, true,
       "CPU: test_fused_self_attention at every kernel copy and 1/2 threads; attnkit bench --op self (README)"},
      {FusedOp::Cbam, c10::DeviceType::CUDA, false,
       "not verified: failed its parity test on the one GPU run so far (fixed, not re-run) and ran 0.94x "
       "composite forward / 0.84x fwd+bwd on an H100"},
      {FusedOp::NeighborhoodAttention, c10::DeviceType::CUDA, false, "not verified: never run on a GPU"},
      {FusedOp::RelposAttention, c10::DeviceType::CUDA, false, "not verified: never run on a GPU"},
  };
  return table;
}

bool auto_runs_fused(FusedOp op, c10::DeviceType device) {
  for (const auto& e : kernel_verification())
    if (e.op == op && e.device == device) return e.verified;
  return false;
}

namespace detail {

bool use_fused_kernel(Implementation impl, FusedOp op, const c10::Device& device, bool kernel_exists, bool recording,
                      const char* who, bool auto_fused) {
  if (impl == Implementation::Composite) return false;
  if (impl == Implementation::Fused) {
    TORCH_CHECK(kernel_exists, who, ": impl=fused but attnkit has no fused kernel for device ", device,
                " in this build; use Implementation::Auto or Composite");
    TORCH_CHECK(!recording, who, ": impl=fused cannot record attention maps; use Implementation::Auto");
    return true;
  }
  return auto_fused && kernel_exists && !recording && auto_runs_fused(op, device.type());
}

}  // namespace detail

}  // namespace attnkit
