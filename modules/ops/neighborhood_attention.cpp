// attnkit::neighborhood_attention: validation, window geometry, autograd, registration.
#include <attnkit/modules/ops/neighborhood_attention.h>

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
              " but attnkit has a kernel for this op on CPU only (LocalAttention2d runs its composite path there)");
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
  cpu::neighborhood_attention_kernels().forward(q, f.k, f.v, bias_table(rpb, acc),
                                                geometry(q, kernel_size, dilation, scale), f.out, f.lse);
  return f;
}

struct NeighborhoodAttentionFunction : public torch::autograd::Function<NeighborhoodAttentionFunction> {
  static Tensor forward(torch::autograd::AutogradContext* ctx, const Tensor& q, const Tensor& k, const Tensor& v,
                        const std::optional<Tensor>& rpb, int64_t kernel_size, int64_t dilation, double scale) {
    const Tensor bias = rpb.has_value() ? *rpb : Tensor();
    Forward f = forward_impl(q, k, v, bias, kernel_size, dilation, scale);
    ctx->save_for_backward({f.q, f.k, f.v, bias, f.lse});
    ctx->saved_data["kernel_size"] = kernel_size;
    ctx->saved_data["dilation"] = dilation;
    ctx->saved_data["scale"] = scale;
    return f.out;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const Tensor &q = saved[0], &k = saved[1], &v = saved[2], &rpb = saved[3], &lse = saved[4];
    const int64_t kernel_size = ctx->saved_data["kernel_size"].toInt();
    const auto g = geometry(q, kernel_size, ctx->saved_data["dilation"].toInt(),
                            ctx->saved_data["scale"].toDouble());
    const auto acc = acc_type(q.scalar_type());
    Tensor dq, dk, dv, drpb;
    if (grads[0].defined()) {
      const Tensor dout = head_dim_contiguous(grads[0].to(q.scalar_type()));
      dq = empty_heads_last(q);
      const int64_t side = 2 * kernel_size - 1;
      if (rpb.defined()) drpb = at::zeros({q.size(1), side, side}, q.options().dtype(acc));
      if (q.numel() > 0) {
        const auto& kernels = cpu::neighborhood_attention_kernels();
        const Tensor bias = bias_table(rpb, acc);
        Tensor delta = at::empty_like(lse);
        kernels.backward_query(dout, q, k, v, bias, lse, g, dq, delta, drpb);
        if (ctx->needs_input_grad(1) || ctx->needs_input_grad(2)) {
          dk = empty_heads_last(q);
          dv = empty_heads_last(q);
          kernels.backward_key(dout, q, k, v, bias, lse, delta, g, dk, dv);
        }
      } else {
        dk = empty_heads_last(q);
        dv = empty_heads_last(q);
      }
      if (drpb.defined()) drpb = drpb.to(rpb.scalar_type());
    }
    // One gradient per argument of forward: q, k, v, rpb, then the three non-tensor ones.
    return {dq, dk, dv, drpb, Tensor(), Tensor(), Tensor()};
  }
};

double scale_or_default(const Tensor& q, std::optional<double> scale) {
  return scale.value_or(1.0 / std::sqrt(static_cast<double>(q.size(4))));
}

// Autograd key: records the fused backward when a gradient is wanted.
Tensor neighborhood_attention_op(const Tensor& q, const Tensor& k, const Tensor& v, const std::optional<Tensor>& rpb,
                                 int64_t kernel_size, int64_t dilation, std::optional<double> scale) {
  const Tensor bias = rpb.has_value() ? *rpb : Tensor();
  check_inputs(q, k, v, bias, kernel_size, dilation);
  bool grad = false;
  if (torch::GradMode::is_enabled())
    for (const Tensor* t : {&q, &k, &v, &bias}) grad = grad || (t->defined() && t->requires_grad());
  if (!grad) {
    at::AutoDispatchBelowADInplaceOrView guard;
    return forward_impl(q, k, v, bias, kernel_size, dilation, scale_or_default(q, scale)).out;
  }
  return NeighborhoodAttentionFunction::apply(q, k, v, rpb, kernel_size, dilation, scale_or_default(q, scale));
}

// CPU (and CUDA, to say clearly that there is no kernel) keys: forward only, e.g. under inference mode.
Tensor neighborhood_attention_forward_only(const Tensor& q, const Tensor& k, const Tensor& v,
                                           const std::optional<Tensor>& rpb, int64_t kernel_size, int64_t dilation,
                                           std::optional<double> scale) {
  const Tensor bias = rpb.has_value() ? *rpb : Tensor();
  check_inputs(q, k, v, bias, kernel_size, dilation);
  return forward_impl(q, k, v, bias, kernel_size, dilation, scale_or_default(q, scale)).out;
}

}  // namespace

bool has_neighborhood_attention_kernel(const at::Device& device) { return device.is_cpu(); }

at::Tensor neighborhood_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& rpb,
                                  int64_t kernel_size, int64_t dilation, std::optional<double> scale) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("attnkit::neighborhood_attention", "")
                       .typed<decltype(neighborhood_attention_op)>();
  TORCH_CHECK(q.defined() && k.defined() && v.defined(), kOp, ": q, k and v must be defined");
  return op.call(q, k, v, rpb.defined() ? std::optional<Tensor>(rpb) : std::nullopt, kernel_size, dilation, scale);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> split_qkv(const at::Tensor& qkv, int64_t heads) {
  TORCH_CHECK(heads > 0, "attnkit::split_qkv: heads must be positive, got ", heads);
  TORCH_CHECK(qkv.dim() == 4 && qkv.size(1) % (3 * heads) == 0, "attnkit::split_qkv: expected qkv of shape [N, ",
              "3*heads*head_dim, H, W] with heads = ", heads, ", got ", qkv.sizes());
  // [N, H, W, 3C] with the channels contiguous, then [N, H, W, 3, heads, head_dim] → [3, N, heads, H, W, head_dim].
  Tensor t = qkv.permute({0, 2, 3, 1});
  if (t.stride(3) != 1) t = t.contiguous();
  auto parts = t.unflatten(3, {3, heads, qkv.size(1) / (3 * heads)}).permute({3, 0, 4, 1, 2, 5}).unbind(0);
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
}
TORCH_LIBRARY_IMPL(attnkit, CPU, m) { m.impl("neighborhood_attention", neighborhood_attention_forward_only); }
TORCH_LIBRARY_IMPL(attnkit, CUDA, m) { m.impl("neighborhood_attention", neighborhood_attention_forward_only); }
TORCH_LIBRARY_IMPL(attnkit, Autograd, m) { m.impl("neighborhood_attention", neighborhood_attention_op); }

}  // namespace attnkit::ops
