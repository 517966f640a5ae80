// attnkit::relpos_attention's Autograd kernel: forward through _relpos_attention_forward, saving the
// inputs, the output and the logsumexp for _relpos_attention_backward (flash-attention-2 style: the
// probabilities are recomputed, never stored).
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/library.h>

namespace attnkit::ops::detail {
namespace {

using at::Tensor;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;
using OptTensor = std::optional<Tensor>;

struct RelposAttentionFunction : public torch::autograd::Function<RelposAttentionFunction> {
  static Tensor forward(AutogradContext* ctx, const Tensor& q, const Tensor& k, const Tensor& v,
                        at::TensorList table_list, int64_t height, int64_t width, std::optional<double> scale) {
    using Signature = std::tuple<Tensor, Tensor>(const Tensor&, const Tensor&, const Tensor&, const OptTensor&,
                                                 int64_t, int64_t, std::optional<double>);
    static auto op = c10::Dispatcher::singleton()
                         .findSchemaOrThrow("attnkit::_relpos_attention_forward", "")
                         .typed<Signature>();
    const OptTensor table = table_list.empty() ? std::nullopt : OptTensor(table_list[0]);
    Tensor out, lse;
    {
      at::AutoDispatchBelowADInplaceOrView below_autograd;
      std::tie(out, lse) = op.call(q, k, v, table, height, width, scale);
    }
    ctx->save_for_backward({q, k, v, out, lse, table.has_value() ? *table : Tensor()});
    ctx->saved_data["height"] = height;
    ctx->saved_data["width"] = width;
    ctx->saved_data["scale"] = scale.has_value() ? c10::IValue(*scale) : c10::IValue();
    return out.to(q.scalar_type());
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    using Signature = std::tuple<Tensor, Tensor, Tensor, Tensor>(
        const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&, const OptTensor&,
        int64_t, int64_t, std::optional<double>, bool);
    static auto op = c10::Dispatcher::singleton()
                         .findSchemaOrThrow("attnkit::_relpos_attention_backward", "")
                         .typed<Signature>();
    const auto saved = ctx->get_saved_variables();
    const Tensor& table = saved[5];
    Tensor dq, dk, dv, dtable;
    if (grads[0].defined()) {
      const auto scale = ctx->saved_data["scale"];
      at::AutoDispatchBelowADInplaceOrView below_autograd;
      std::tie(dq, dk, dv, dtable) =
          op.call(grads[0], saved[0], saved[1], saved[2], saved[3], saved[4],
                  table.defined() ? OptTensor(table) : std::nullopt, ctx->saved_data["height"].toInt(),
                  ctx->saved_data["width"].toInt(), scale.isNone() ? std::nullopt : std::optional(scale.toDouble()),
                  table.defined() && ctx->needs_input_grad(3));
    }
    variable_list result = {dq, dk, dv};
    if (table.defined()) result.push_back(dtable);
    result.resize(result.size() + 3);  // height, width, scale
    return result;
  }
};

Tensor relpos_attention_autograd(const Tensor& q, const Tensor& k, const Tensor& v, const OptTensor& table,
                                 int64_t height, int64_t width, std::optional<double> scale) {
  const bool grad = at::GradMode::is_enabled() && (q.requires_grad() || k.requires_grad() || v.requires_grad() ||
                                                   (table.has_value() && table->requires_grad()));
  if (!grad) {
    using Signature = Tensor(const Tensor&, const Tensor&, const Tensor&, const OptTensor&, int64_t, int64_t,
                             std::optional<double>);
    static auto op =
        c10::Dispatcher::singleton().findSchemaOrThrow("attnkit::relpos_attention", "").typed<Signature>();
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    return op.call(q, k, v, table, height, width, scale);
  }
  std::vector<Tensor> tables;
  if (table.has_value()) tables.push_back(*table);
  return RelposAttentionFunction::apply(q, k, v, at::TensorList(tables), height, width, scale);
}

}  // namespace

TORCH_LIBRARY_IMPL(attnkit, Autograd, m) { m.impl("relpos_attention", &relpos_attention_autograd); }

}  // namespace attnkit::ops::detail
