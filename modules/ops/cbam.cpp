// attnkit::cbam: the public function and the ops' schemas.
//
// Four ops, each registered per dispatch key by its own file:
//   cbam            the op users call (torch.ops.attnkit.cbam)      cpu/cbam_dispatch.cpp (CPU)
//   _cbam_into_residual  cbam written into its residual (inference) (the same files)
//   _cbam_forward   cbam's output plus what backward needs          cuda/cbam_dispatch.cpp (CUDA)
//   _cbam_backward  the gradients from those                        autograd/cbam.cpp (Autograd)
//                                                                   autocast/cbam.cpp (Autocast)
// The math for any device is detail/cbam_passes.cpp over the device's kernel table.
#include <attnkit/modules/ops/cbam.h>

#include "detail/cbam_args.h"
#include "detail/device_check.h"

#include <ATen/core/grad_mode.h>
#include <torch/library.h>

#include <string>

namespace attnkit::ops {

bool has_fused_kernels(const at::Device& device) {
#ifdef ATTNKIT_WITH_CUDA
  if (device.is_cuda()) return true;
#endif
  return device.is_cpu();
}

namespace {
/// What the public functions check before the dispatcher: x defined, every tensor on x's device,
/// a fused kernel for that device. `op` names the function in the messages.
void check_before_dispatch(const char* op, const at::Tensor& x, const CbamWeights& w, const at::Tensor& residual) {
  TORCH_CHECK(x.defined(), op, ": x is undefined");
  detail::check_same_device(op, x, "x",
                            {{&w.fc1_weight, "fc1_weight"}, {&w.fc1_bias, "fc1_bias"}, {&w.fc2_weight, "fc2_weight"},
                             {&w.fc2_bias, "fc2_bias"}, {&w.spatial_weight, "spatial_weight"},
                             {&w.spatial_bias, "spatial_bias"}, {&w.bn_weight, "bn_weight"}, {&w.bn_bias, "bn_bias"},
                             {&w.bn_running_mean, "bn_running_mean"}, {&w.bn_running_var, "bn_running_var"},
                             {&w.eca_weight, "eca_weight"}, {&residual, "residual"}});
  TORCH_CHECK(has_fused_kernels(x.device()), op, ": no fused kernel for device ", x.device(),
              " in this build; use the module's composite implementation");
}
}  // namespace

bool cbam_needs_gradient(const at::Tensor& x, const CbamWeights& w, const at::Tensor& residual) {
  if (!at::GradMode::is_enabled()) return false;
  for (const auto* t : {&x, &residual, &w.fc1_weight, &w.fc1_bias, &w.fc2_weight, &w.fc2_bias, &w.spatial_weight,
                        &w.spatial_bias, &w.bn_weight, &w.bn_bias, &w.eca_weight})
    if (t->defined() && t->requires_grad()) return true;
  return false;
}

at::Tensor cbam(const at::Tensor& x, const CbamWeights& w, const CbamConfig& cfg, const at::Tensor& residual) {
  check_before_dispatch("attnkit::cbam", x, w, residual);
  return detail::call_cbam<at::Tensor>("attnkit::cbam", detail::CbamArgs{x, w, cfg, residual});
}

at::Tensor& cbam_into_residual(at::Tensor& residual, const at::Tensor& x, const CbamWeights& w, const CbamConfig& cfg) {
  // (An undefined residual is the op's error, which names it, as for direct callers of the op.)
  check_before_dispatch("attnkit::cbam_into_residual", x, w, residual);
  detail::call_cbam<void>("attnkit::_cbam_into_residual", detail::CbamArgs{x, w, cfg, residual});
  return residual;
}

namespace {
// cbam, _cbam_into_residual and _cbam_forward take the same arguments (detail::cbam_kernel maps them to CbamArgs).
const std::string kCbamArgs =
    "Tensor x, Tensor? fc1_weight, Tensor? fc1_bias, Tensor? fc2_weight, Tensor? fc2_bias, "
    "Tensor? spatial_weight, Tensor? spatial_bias, Tensor? bn_weight, Tensor? bn_bias, "
    "Tensor(a!)? bn_running_mean, Tensor(b!)? bn_running_var, bool pool_avg=True, bool pool_max=True, "
    "bool spatial_max_first=True, bool use_bn=True, bool bn_training=False, float bn_momentum=0.1, "
    "float bn_eps=1e-5, Tensor? eca_weight=None, Tensor? residual=None, bool relu=False";
}  // namespace

TORCH_LIBRARY_FRAGMENT(attnkit, m) {
  m.def(("cbam(" + kCbamArgs + ") -> Tensor").c_str());
  // The same, written into the residual: inference only (its Autograd kernel refuses gradients).
  std::string into_args = kCbamArgs;
  const std::string residual_arg = "Tensor? residual=None";
  into_args.replace(into_args.find(residual_arg), residual_arg.size(), "Tensor(c!)? residual=None");
  m.def(("_cbam_into_residual(" + into_args + ") -> ()").c_str());
  m.def(("_cbam_forward(" + kCbamArgs +
         ") -> (Tensor out, Tensor avg, Tensor max, Tensor g, Tensor zmax, Tensor zmean, Tensor s)")
            .c_str());
  // saved: [out, avg, max, g, zmax, zmean, s]; weights: fc1_weight, fc1_bias, fc2_weight, fc2_bias,
  // spatial_weight, spatial_bias, bn_weight, bn_bias, eca_weight, bn_running_mean, bn_running_var;
  // needs_grad: a bit per result (x, the nine differentiable weights, residual).
  m.def(
      "_cbam_backward(Tensor grad, Tensor x, Tensor?[] saved, Tensor?[] weights, bool pool_avg, bool pool_max, "
      "bool spatial_max_first, bool use_bn, bool bn_training, float bn_eps, bool relu, bool has_residual, "
      "int needs_grad) -> Tensor[]");
}

}  // namespace attnkit::ops
