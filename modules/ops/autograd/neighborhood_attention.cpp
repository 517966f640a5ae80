// attnkit::neighborhood_attention(_qkv)'s Autograd kernels: forward through
// _neighborhood_attention_forward, saving q, k, v (or the packed rows), rpb and the logsumexp for
// _neighborhood_attention_backward.
#include "../detail/neighborhood_attention_passes.h"

#include <torch/autograd.h>

namespace attnkit::ops::detail {
namespace {

using at::Tensor;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

using ForwardSignature = std::tuple<Tensor, Tensor>(const Tensor&, const Tensor&, const Tensor&, const OptTensor&,
                                                    int64_t, int64_t, std::optional<double>);
using BackwardSignature = Tensor(const Tensor&, const Tensor&, const Tensor&, const Tensor&, const OptTensor&,
                                 const Tensor&, int64_t, int64_t, std::optional<double>, const Tensor&,
                                 const OptTensor&, const OptTensor&);

OptTensor optional(const Tensor& t) { return t.defined() ? OptTensor(t) : std::nullopt; }

/// _neighborhood_attention_forward below autograd, keeping the window configuration for backward.
std::tuple<Tensor, Tensor> forward_keeping_config(AutogradContext* ctx, const Tensor& q, const Tensor& k,
                                                  const Tensor& v, const OptTensor& rpb, int64_t kernel_size,
                                                  int64_t dilation, std::optional<double> scale) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("attnkit::_neighborhood_attention_forward", "")
                       .typed<ForwardSignature>();
  ctx->saved_data["kernel_size"] = kernel_size;
  ctx->saved_data["dilation"] = dilation;
  ctx->saved_data["scale"] = scale.has_value() ? c10::IValue(*scale) : c10::IValue();
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  return op.call(q, k, v, rpb, kernel_size, dilation, scale);
}

/// _neighborhood_attention_backward below autograd into dq, dk, dv; returns drpb.
Tensor backward_into(AutogradContext* ctx, const Tensor& grad, const Tensor& q, const Tensor& k, const Tensor& v,
                     const Tensor& rpb, const Tensor& lse, const Tensor& dq, const Tensor& dk, const Tensor& dv) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("attnkit::_neighborhood_attention_backward", "")
                       .typed<BackwardSignature>();
  const auto scale = ctx->saved_data["scale"];
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  return op.call(grad, q, k, v, optional(rpb), lse, ctx->saved_data["kernel_size"].toInt(),
                 ctx->saved_data["dilation"].toInt(), scale.isNone() ? std::nullopt : std::optional(scale.toDouble()),
                 dq, optional(dk), optional(dv));
}

// q, k, v as three tensors: their gradients come back as three tensors stored heads-last.
struct NeighborhoodAttentionFunction : public torch::autograd::Function<NeighborhoodAttentionFunction> {
  static Tensor forward(AutogradContext* ctx, const Tensor& q, const Tensor& k, const Tensor& v, const OptTensor& rpb,
                        int64_t kernel_size, int64_t dilation, std::optional<double> scale) {
    auto [out, lse] = forward_keeping_config(ctx, q, k, v, rpb, kernel_size, dilation, scale);
    ctx->save_for_backward({q, k, v, rpb.has_value() ? *rpb : Tensor(), lse});
    return out;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const Tensor& q = saved[0];
    Tensor dq, dk, dv, drpb;
    if (grads[0].defined()) {
      dq = empty_heads_last(q);
      if (ctx->needs_input_grad(1) || ctx->needs_input_grad(2)) {
        dk = empty_heads_last(q);
        dv = empty_heads_last(q);
      }
      drpb = backward_into(ctx, grads[0], q, saved[1], saved[2], saved[3], saved[4], dq, dk, dv);
    }
    // One gradient per argument of forward: q, k, v, rpb, then the three non-tensor ones.
    return {dq, dk, dv, drpb, Tensor(), Tensor(), Tensor()};
  }
};

// The packed projection [N, H, W, 3·C] rows: one gradient tensor, written in place by the kernels
// (no stacking of three gradients, as autograd would do for three views).
struct NeighborhoodAttentionQkvFunction : public torch::autograd::Function<NeighborhoodAttentionQkvFunction> {
  static Tensor forward(AutogradContext* ctx, const Tensor& rows, int64_t heads, const OptTensor& rpb,
                        int64_t kernel_size, int64_t dilation, std::optional<double> scale) {
    const auto qkv = split_rows(rows, heads);
    auto [out, lse] = forward_keeping_config(ctx, qkv[0], qkv[1], qkv[2], rpb, kernel_size, dilation, scale);
    ctx->save_for_backward({rows, rpb.has_value() ? *rpb : Tensor(), lse});
    ctx->saved_data["heads"] = heads;
    return out;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const Tensor& rows = saved[0];
    Tensor drows, drpb;
    if (grads[0].defined()) {
      const int64_t heads = ctx->saved_data["heads"].toInt();
      const auto qkv = split_rows(rows, heads);
      drows = at::empty_like(rows);
      const auto d = split_rows(drows, heads);
      drpb = backward_into(ctx, grads[0], qkv[0], qkv[1], qkv[2], saved[1], saved[2], d[0], d[1], d[2]);
    }
    return {drows, Tensor(), drpb, Tensor(), Tensor(), Tensor()};
  }
};

bool needs_grad(std::initializer_list<const Tensor*> ts) {
  if (!at::GradMode::is_enabled()) return false;
  for (const Tensor* t : ts)
    if (t->defined() && t->requires_grad()) return true;
  return false;
}

Tensor neighborhood_attention_autograd(const Tensor& q, const Tensor& k, const Tensor& v, const OptTensor& rpb,
                                       int64_t kernel_size, int64_t dilation, std::optional<double> scale) {
  const Tensor bias = rpb.has_value() ? *rpb : Tensor();
  if (!needs_grad({&q, &k, &v, &bias})) {
    using Signature = Tensor(const Tensor&, const Tensor&, const Tensor&, const OptTensor&, int64_t, int64_t,
                             std::optional<double>);
    static auto op =
        c10::Dispatcher::singleton().findSchemaOrThrow("attnkit::neighborhood_attention", "").typed<Signature>();
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    return op.call(q, k, v, rpb, kernel_size, dilation, scale);
  }
  return NeighborhoodAttentionFunction::apply(q, k, v, rpb, kernel_size, dilation, scale);
}

Tensor neighborhood_attention_qkv_autograd(const Tensor& qkv, int64_t heads, const OptTensor& rpb,
                                           int64_t kernel_size, int64_t dilation, std::optional<double> scale) {
  const Tensor bias = rpb.has_value() ? *rpb : Tensor();
  if (!needs_grad({&qkv, &bias})) {
    using Signature = Tensor(const Tensor&, int64_t, const OptTensor&, int64_t, int64_t, std::optional<double>);
    static auto op = c10::Dispatcher::singleton()
                         .findSchemaOrThrow("attnkit::neighborhood_attention_qkv", "")
                         .typed<Signature>();
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    return op.call(qkv, heads, rpb, kernel_size, dilation, scale);
  }
  // The rows are made here, with autograd on, so that their gradient flows back to qkv.
  return NeighborhoodAttentionQkvFunction::apply(qkv_rows(qkv, heads), heads, rpb, kernel_size, dilation, scale);
}

}  // namespace

TORCH_LIBRARY_IMPL(attnkit, Autograd, m) {
  m.impl("neighborhood_attention", &neighborhood_attention_autograd);
  m.impl("neighborhood_attention_qkv", &neighborhood_attention_qkv_autograd);
}

}  // namespace attnkit::ops::detail
