// attnkit::neighborhood_attention: validation, window geometry, autograd, registration.
#include <attnkit/modules/ops/neighborhood_attention.h>

#include <attnkit/modules/ops/cbam.h>
#include <attnkit/modules/ops/neighborhood_attention_kernels.h>
#include <attnkit/modules/ops/neighborhood_window.h>

#include <ATen/ATen.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <cmath>

namespace attnkit::ops {
namespace {

using at::Tensor;
constexpr const char* kOp = "attnkit::neighborhood_attention";

at::ScalarType acc_type(at::ScalarType t) { return t == at::kDouble ? at::kDouble : at::kFloat; }

const NeighborhoodAttentionKernelTable& kernels_for(const at::Device& device) {
#ifdef ATTNKIT_WITH_CUDA
  if (device.is_cuda()) return cuda::neighborhood_attention_kernels();
#endif
  return cpu::neighborhood_attention_kernels();
}

void check_inputs(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& rpb, int64_t kernel_size,
                  int64_t dilation) {
  TORCH_CHECK(q.defined() && k.defined() && v.defined(), kOp, ": q, k and v must be defined");
  TORCH_CHECK(q.dim() == 5, kOp, ": expected q of shape [N, heads, H, W, head_dim], got ", q.sizes());
  TORCH_CHECK(q.is_floating_point(), kOp, ": q must be floating point, got ", q.scalar_type());
  for (const auto& [t, name] : {std::pair<const Tensor*, const char*>{&k, "k"}, {&v, "v"}}) {
    TORCH_CHECK(t->sizes() == q.sizes(), kOp, ": expected ", name, " of the shape of q ", q.sizes(), ", got ",
                t->sizes());
    TORCH_CHECK(t->scalar_type() == q.scalar_type(), kOp, ": ", name, " has dtype ", t->scalar_type(),
                " but q has ", q.scalar_type());
    TORCH_CHECK(t->device() == q.device(), kOp, ": ", name, " is on ", t->device(), " but q is on ", q.device());
  }
  TORCH_CHECK(has_neighborhood_attention_kernel(q.device()), kOp, ": q is on ", q.device(),
              " but attnkit has no kernel for this op on that device in this build (CPU, and CUDA where compiled "
              "in; LocalAttention2d runs its composite path elsewhere)");
  TORCH_CHECK(kernel_size >= 1 && kernel_size % 2 == 1, kOp, ": kernel_size must be odd and >= 1, got ",
              kernel_size);
  TORCH_CHECK(dilation >= 1, kOp, ": dilation must be >= 1, got ", dilation);
  TORCH_CHECK(q.size(4) > 0, kOp, ": head_dim (q.size(4)) must be positive, got ", q.sizes());
  const int64_t span = kernel_size * dilation;
  TORCH_CHECK(q.size(2) >= span && q.size(3) >= span, kOp, ": q's map of size ", q.size(2), "x", q.size(3),
              " is smaller than the window: H and W must be >= kernel_size*dilation = ", span);
  if (rpb.defined()) {
    const int64_t side = 2 * kernel_size - 1;
    TORCH_CHECK(rpb.device() == q.device(), kOp, ": rpb is on ", rpb.device(), " but q is on ", q.device());
    TORCH_CHECK(rpb.is_floating_point(), kOp, ": rpb must be floating point, got ", rpb.scalar_type());
    TORCH_CHECK(rpb.sizes() == at::IntArrayRef({q.size(1), side, side}), kOp,
                ": expected rpb of shape [heads, 2*kernel_size-1, 2*kernel_size-1] = [", q.size(1), ", ", side, ", ",
                side, "], got ", rpb.sizes());
  }
}

WindowAxis make_axis(int64_t length, int64_t kernel_size, int64_t dilation) {
  WindowAxis a;
  a.start.resize(static_cast<size_t>(length));
  a.first_query.assign(static_cast<size_t>(length), -1);
  a.last_query.assign(static_cast<size_t>(length), -1);
  for (int64_t q = 0; q < length; ++q) {
    const int64_t s = neighborhood_window_start(q, length, kernel_size, dilation);
    a.start[q] = s;
    // Window starts grow with q inside a dilation group: each key's queries form a contiguous run.
    for (int64_t i = 0; i < kernel_size; ++i) {
      const int64_t key = s + i * dilation;
      if (a.first_query[key] < 0) a.first_query[key] = q;
      a.last_query[key] = q;
    }
  }
  return a;
}

NeighborhoodGeometry geometry(const Tensor& q, int64_t kernel_size, int64_t dilation, double scale) {
  return {kernel_size, dilation, scale, make_axis(q.size(2), kernel_size, dilation),
          make_axis(q.size(3), kernel_size, dilation)};
}

/// The kernels read head_dim contiguously; other strides are free.
Tensor head_dim_contiguous(const Tensor& t) { return t.stride(4) == 1 || t.size(4) == 1 ? t : t.contiguous(); }

/// [N, heads, H, W, head_dim] stored as [N, H, W, heads, head_dim] (see the header).
Tensor empty_heads_last(const Tensor& like) {
  return at::empty({like.size(0), like.size(2), like.size(3), like.size(1), like.size(4)}, like.options())
      .permute({0, 3, 1, 2, 4});
}

Tensor bias_table(const Tensor& rpb, at::ScalarType acc) { return rpb.defined() ? rpb.to(acc).contiguous() : rpb; }

struct Forward {
  Tensor q, k, v, out, lse;
};

Forward forward_impl(const Tensor& q_in, const Tensor& k_in, const Tensor& v_in, const Tensor& rpb,
                     int64_t kernel_size, int64_t dilation, double scale) {
  Forward f{head_dim_contiguous(q_in), head_dim_contiguous(k_in), head_dim_contiguous(v_in)};
  const auto& q = f.q;
  const auto acc = acc_type(q.scalar_type());
  f.out = empty_heads_last(q);
  f.lse = at::empty({q.size(0), q.size(1), q.size(2), q.size(3)}, q.options().dtype(acc));
  if (q.numel() == 0) return f;
  kernels_for(q.device())
      .forward(q, f.k, f.v, bias_table(rpb, acc), geometry(q, kernel_size, dilation, scale), f.out, f.lse);
  return f;
}

/// q, k, v [N, heads, H, W, head_dim] views of the rows [N, H, W, 3·C] (channels [q|k|v][head][head_dim]).
std::vector<Tensor> split_rows(const Tensor& rows, int64_t heads) {
  return rows.unflatten(3, {3, heads, rows.size(3) / (3 * heads)}).permute({3, 0, 4, 1, 2, 5}).unbind(0);
}

/// Runs backward into dq, dk, dv (allocated by the caller in any layout with head_dim contiguous; dk
/// and dv undefined: not wanted). Returns the gradient of rpb (undefined without rpb).
Tensor backward_impl(const Tensor& grad, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& rpb,
                     const Tensor& lse, const NeighborhoodGeometry& g, Tensor& dq, Tensor& dk, Tensor& dv) {
  const auto acc = acc_type(q.scalar_type());
  const int64_t side = 2 * g.kernel_size - 1;
  Tensor drpb = rpb.defined() ? at::zeros({q.size(1), side, side}, q.options().dtype(acc)) : Tensor();
  if (q.numel() > 0) {
    const auto& kernels = kernels_for(q.device());
    const Tensor dout = head_dim_contiguous(grad.to(q.scalar_type()));
    kernels.backward(dout, q, k, v, bias_table(rpb, acc), lse, g, dq, dk, dv, drpb);
  }
  return drpb.defined() ? drpb.to(rpb.scalar_type()) : drpb;
}

Tensor value_or_undefined(const std::optional<Tensor>& t) { return t.has_value() ? *t : Tensor(); }

/// forward_impl, keeping the window configuration for backward (the tensors are each Function's to save).
Forward forward_keeping_config(torch::autograd::AutogradContext* ctx, const Tensor& q, const Tensor& k, const Tensor& v,
                               const std::optional<Tensor>& rpb, int64_t kernel_size, int64_t dilation, double scale) {
  ctx->saved_data["kernel_size"] = kernel_size;
  ctx->saved_data["dilation"] = dilation;
  ctx->saved_data["scale"] = scale;
  return forward_impl(q, k, v, value_or_undefined(rpb), kernel_size, dilation, scale);
}
NeighborhoodGeometry saved_geometry(torch::autograd::AutogradContext* ctx, const Tensor& q) {
  return geometry(q, ctx->saved_data["kernel_size"].toInt(), ctx->saved_data["dilation"].toInt(),
                  ctx->saved_data["scale"].toDouble());
}

// q, k, v as three tensors: their gradients come back as three tensors stored heads-last.
struct NeighborhoodAttentionFunction : public torch::autograd::Function<NeighborhoodAttentionFunction> {
  static Tensor forward(torch::autograd::AutogradContext* ctx, const Tensor& q, const Tensor& k, const Tensor& v,
                        const std::optional<Tensor>& rpb, int64_t kernel_size, int64_t dilation, double scale) {
    Forward f = forward_keeping_config(ctx, q, k, v, rpb, kernel_size, dilation, scale);
    ctx->save_for_backward({f.q, f.k, f.v, value_or_undefined(rpb), f.lse});
    return f.out;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const Tensor& q = saved[0];
    Tensor dq, dk, dv, drpb;
    if (grads[0].defined()) {
      dq = empty_heads_last(q);
      if (ctx->needs_input_grad(1) || ctx->needs_input_grad(2)) {
        dk = empty_heads_last(q);
        dv = empty_heads_last(q);
      }
      drpb = backward_impl(grads[0], q, saved[1], saved[2], saved[3], saved[4], saved_geometry(ctx, q), dq, dk, dv);
    }
    // One gradient per argument of forward: q, k, v, rpb, then the three non-tensor ones.
    return {dq, dk, dv, drpb, Tensor(), Tensor(), Tensor()};
  }
};

// The packed projection [N, H, W, 3·C] rows: one gradient tensor, written in place by the kernels
// (no stacking of three gradients, as autograd would do for three views).
struct NeighborhoodAttentionQkvFunction : public torch::autograd::Function<NeighborhoodAttentionQkvFunction> {
  static Tensor forward(torch::autograd::AutogradContext* ctx, const Tensor& rows, int64_t heads,
                        const std::optional<Tensor>& rpb, int64_t kernel_size, int64_t dilation, double scale) {
    const auto qkv = split_rows(rows, heads);
    Forward f = forward_keeping_config(ctx, qkv[0], qkv[1], qkv[2], rpb, kernel_size, dilation, scale);
    ctx->save_for_backward({rows, value_or_undefined(rpb), f.lse});
    ctx->saved_data["heads"] = heads;
    return f.out;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const Tensor& rows = saved[0];
    Tensor drows, drpb;
    if (grads[0].defined()) {
      const int64_t heads = ctx->saved_data["heads"].toInt();
      const auto qkv = split_rows(rows, heads);
      drows = at::empty_like(rows);
      auto dqkv = split_rows(drows, heads);
      drpb = backward_impl(grads[0], qkv[0], qkv[1], qkv[2], saved[1], saved[2], saved_geometry(ctx, qkv[0]), dqkv[0],
                           dqkv[1], dqkv[2]);
    }
    return {drows, Tensor(), drpb, Tensor(), Tensor(), Tensor()};
  }
};

double scale_or_default(const Tensor& q, std::optional<double> scale) {
  return scale.value_or(1.0 / std::sqrt(static_cast<double>(q.size(4))));
}

bool needs_grad(std::initializer_list<const Tensor*> ts) {
  if (!torch::GradMode::is_enabled()) return false;
  for (const Tensor* t : ts)
    if (t->defined() && t->requires_grad()) return true;
  return false;
}

/// [N, 3C, H, W] as contiguous rows [N, H, W, 3C] (a view when qkv is channels-last).
Tensor qkv_rows(const Tensor& qkv, int64_t heads) {
  TORCH_CHECK(heads > 0, "attnkit::split_qkv: heads must be positive, got ", heads);
  TORCH_CHECK(qkv.defined() && qkv.dim() == 4 && qkv.size(1) % (3 * heads) == 0,
              "attnkit::split_qkv: expected qkv of shape [N, 3*heads*head_dim, H, W] with heads = ", heads, ", got ",
              qkv.defined() ? qkv.sizes() : at::IntArrayRef{});
  return qkv.permute({0, 2, 3, 1}).contiguous();
}

// Autograd key: records the fused backward when a gradient is wanted.
Tensor neighborhood_attention_op(const Tensor& q, const Tensor& k, const Tensor& v, const std::optional<Tensor>& rpb,
                                 int64_t kernel_size, int64_t dilation, std::optional<double> scale) {
  const Tensor bias = value_or_undefined(rpb);
  check_inputs(q, k, v, bias, kernel_size, dilation);
  if (!needs_grad({&q, &k, &v, &bias})) {
    at::AutoDispatchBelowADInplaceOrView guard;
    return forward_impl(q, k, v, bias, kernel_size, dilation, scale_or_default(q, scale)).out;
  }
  return NeighborhoodAttentionFunction::apply(q, k, v, rpb, kernel_size, dilation, scale_or_default(q, scale));
}

Tensor neighborhood_attention_qkv_op(const Tensor& qkv, int64_t heads, const std::optional<Tensor>& rpb,
                                     int64_t kernel_size, int64_t dilation, std::optional<double> scale) {
  const Tensor bias = value_or_undefined(rpb);
  const Tensor rows = qkv_rows(qkv, heads);
  const auto views = split_rows(rows, heads);
  check_inputs(views[0], views[1], views[2], bias, kernel_size, dilation);
  const double s = scale_or_default(views[0], scale);
  if (!needs_grad({&qkv, &bias})) {
    at::AutoDispatchBelowADInplaceOrView guard;
    return forward_impl(views[0], views[1], views[2], bias, kernel_size, dilation, s).out;
  }
  return NeighborhoodAttentionQkvFunction::apply(rows, heads, rpb, kernel_size, dilation, s);
}

// CPU and CUDA keys (CUDA also in builds without its kernels, to say so clearly): forward only, e.g.
// under inference mode.
Tensor neighborhood_attention_forward_only(const Tensor& q, const Tensor& k, const Tensor& v,
                                           const std::optional<Tensor>& rpb, int64_t kernel_size, int64_t dilation,
                                           std::optional<double> scale) {
  at::AutoGradMode no_grad(false);
  return neighborhood_attention_op(q, k, v, rpb, kernel_size, dilation, scale);
}
Tensor neighborhood_attention_qkv_forward_only(const Tensor& qkv, int64_t heads, const std::optional<Tensor>& rpb,
                                               int64_t kernel_size, int64_t dilation, std::optional<double> scale) {
  at::AutoGradMode no_grad(false);
  return neighborhood_attention_qkv_op(qkv, heads, rpb, kernel_size, dilation, scale);
}

std::optional<Tensor> optional(const Tensor& t) { return t.defined() ? std::optional<Tensor>(t) : std::nullopt; }

}  // namespace

// Every fused op has kernels on the same devices (the CPU, and CUDA in CUDA builds): one rule for all.
bool has_neighborhood_attention_kernel(const at::Device& device) { return has_fused_kernels(device); }

at::Tensor neighborhood_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& rpb,
                                  int64_t kernel_size, int64_t dilation, std::optional<double> scale) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("attnkit::neighborhood_attention", "")
                       .typed<decltype(neighborhood_attention_op)>();
  TORCH_CHECK(q.defined() && k.defined() && v.defined(), kOp, ": q, k and v must be defined");
  return op.call(q, k, v, optional(rpb), kernel_size, dilation, scale);
}

at::Tensor neighborhood_attention_qkv(const at::Tensor& qkv, int64_t heads, const at::Tensor& rpb,
                                      int64_t kernel_size, int64_t dilation, std::optional<double> scale) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("attnkit::neighborhood_attention_qkv", "")
                       .typed<decltype(neighborhood_attention_qkv_op)>();
  TORCH_CHECK(qkv.defined(), kOp, "_qkv: qkv must be defined");
  return op.call(qkv, heads, optional(rpb), kernel_size, dilation, scale);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> split_qkv(const at::Tensor& qkv, int64_t heads) {
  const auto parts = split_rows(qkv_rows(qkv, heads), heads);
  return {parts[0], parts[1], parts[2]};
}

at::Tensor merge_heads(const at::Tensor& out) {
  TORCH_CHECK(out.dim() == 5, "attnkit::merge_heads: expected out of shape [N, heads, H, W, head_dim], got ",
              out.sizes());
  return out.permute({0, 1, 4, 2, 3}).reshape({out.size(0), out.size(1) * out.size(4), out.size(2), out.size(3)});
}

TORCH_LIBRARY_FRAGMENT(attnkit, m) {
  m.def(
      "neighborhood_attention(Tensor q, Tensor k, Tensor v, Tensor? rpb, int kernel_size, int dilation=1, "
      "float? scale=None) -> Tensor");
  m.def(
      "neighborhood_attention_qkv(Tensor qkv, int heads, Tensor? rpb, int kernel_size, int dilation=1, "
      "float? scale=None) -> Tensor");
}
TORCH_LIBRARY_IMPL(attnkit, CPU, m) {
  m.impl("neighborhood_attention", neighborhood_attention_forward_only);
  m.impl("neighborhood_attention_qkv", neighborhood_attention_qkv_forward_only);
}
TORCH_LIBRARY_IMPL(attnkit, CUDA, m) {
  m.impl("neighborhood_attention", neighborhood_attention_forward_only);
  m.impl("neighborhood_attention_qkv", neighborhood_attention_qkv_forward_only);
}
TORCH_LIBRARY_IMPL(attnkit, Autograd, m) {
  m.impl("neighborhood_attention", neighborhood_attention_op);
  m.impl("neighborhood_attention_qkv", neighborhood_attention_qkv_op);
}

}  // namespace attnkit::ops
