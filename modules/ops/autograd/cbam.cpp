// attnkit::cbam's Autograd kernel: forward through _cbam_forward, saving what _cbam_backward needs.
#include "../detail/cbam_args.h"

#include <torch/autograd.h>
#include <torch/library.h>

namespace attnkit::ops::detail {
namespace {

using at::Tensor;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// The differentiable weights in kFc1Weight..kEcaWeight order.
std::vector<Tensor> differentiable(const CbamWeights& w) {
  return {w.fc1_weight, w.fc1_bias, w.fc2_weight, w.fc2_bias, w.spatial_weight, w.spatial_bias, w.bn_weight, w.bn_bias,
          w.eca_weight};
}

struct CbamFunction : public torch::autograd::Function<CbamFunction> {
  // inputs: the defined differentiable weights, then the residual if there is one (autograd tracks
  // them there; a custom Function cannot take undefined tensors).
  static Tensor forward(AutogradContext* ctx, const Tensor& x, at::TensorList inputs, const CbamArgs& a) {
    CbamSaved s;
    {
      at::AutoDispatchBelowADInplaceOrView below_autograd;
      s = from_tuple(call_cbam<CbamForwardResult>("attnkit::_cbam_forward", a));
    }
    // In training mode BatchNorm has just updated the running statistics in place, and backward
    // normalises with batch statistics anyway: keep them out of the saved set.
    const Tensor out = s.out;
    CbamWeights w = a.w;
    if (a.cfg.bn_training) w.bn_running_mean = w.bn_running_var = Tensor();
    if (!a.cfg.relu) s.out = Tensor();  // only ReLU's backward needs the output (its sign)
    std::vector<Tensor> to_save = {x};
    for (const auto& t : saved_list(s)) to_save.push_back(value_or_undefined(t));
    for (const auto& t : weight_list(w)) to_save.push_back(value_or_undefined(t));
    ctx->save_for_backward(to_save);
    ctx->saved_data["flags"] = std::vector<bool>{a.cfg.pool_avg, a.cfg.pool_max, a.cfg.spatial_max_first,
                                                 a.cfg.use_bn,   a.cfg.bn_training, a.cfg.relu,
                                                 a.residual.defined()};
    ctx->saved_data["eps"] = a.cfg.bn_eps;
    return out;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    OptTensorList saved_tensors, weights;
    for (size_t i = 0; i < kSavedSlots; ++i) saved_tensors.push_back(optional(saved[1 + i]));
    for (size_t i = 0; i < kWeightSlots; ++i) weights.push_back(optional(saved[1 + kSavedSlots + i]));
    const auto f = ctx->saved_data["flags"].toBoolList();
    const bool has_residual = f[6];
    // Which gradients autograd wants: x (input 0), each defined weight, the residual.
    int64_t needs = ctx->needs_input_grad(0) ? int64_t{1} << kGradX : 0;
    size_t input = 1;
    for (size_t i = 0; i < kDifferentiableWeights; ++i)
      if (weights.get(i).has_value() && ctx->needs_input_grad(input++)) needs |= int64_t{1} << (kGradWeight0 + i);
    if (has_residual && ctx->needs_input_grad(input)) needs |= int64_t{1} << kGradResidual;

    static auto op = c10::Dispatcher::singleton()
                         .findSchemaOrThrow("attnkit::_cbam_backward", "")
                         .typed<CbamBackwardSignature>();
    std::vector<Tensor> g;
    {
      at::AutoDispatchBelowADInplaceOrView below_autograd;
      g = op.call(grads[0], saved[0], saved_tensors, weights, f[0], f[1], f[2], f[3], f[4],
                  ctx->saved_data["eps"].toDouble(), f[5], has_residual, needs);
    }
    // One gradient per forward argument: x, each defined weight, the residual, then the CbamArgs.
    variable_list out = {g[kGradX]};
    for (size_t i = 0; i < kDifferentiableWeights; ++i)
      if (weights.get(i).has_value()) out.push_back(g[kGradWeight0 + i]);
    if (has_residual) out.push_back(g[kGradResidual]);
    out.emplace_back();
    return out;
  }
};

bool needs_grad(const CbamArgs& a) { return cbam_needs_gradient(a.x, a.w, a.residual); }

Tensor cbam_autograd(const CbamArgs& a) {
  if (!needs_grad(a)) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    return call_cbam<Tensor>("attnkit::cbam", a);
  }
  torch::autograd::variable_list inputs;
  for (const auto& t : differentiable(a.w))
    if (t.defined()) inputs.push_back(t);
  if (a.residual.defined()) inputs.push_back(a.residual);
  return CbamFunction::apply(a.x, at::TensorList(inputs), a);
}

// _cbam_into_residual has no backward: it overwrites the residual, which autograd may need. So it
// refuses inputs that want a gradient, and marks the residual as changed (its version counter) for
// anything that saved it earlier.
void cbam_into_residual_autograd(const CbamArgs& a) {
  TORCH_CHECK(!needs_grad(a), "attnkit::cbam_into_residual: x, the residual or a weight requires a gradient; "
              "it is for inference (torch::NoGradGuard), use attnkit::ops::cbam to train");
  {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    call_cbam<void>("attnkit::_cbam_into_residual", a);
  }
  torch::autograd::impl::bump_version(a.residual);
}

}  // namespace

TORCH_LIBRARY_IMPL(attnkit, Autograd, m) {
  m.impl("cbam", &cbam_kernel<Tensor, &cbam_autograd>);
  m.impl("_cbam_into_residual", &cbam_kernel<void, &cbam_into_residual_autograd>);
}

}  // namespace attnkit::ops::detail
