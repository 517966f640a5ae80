// neighborhood_attention over a device's kernel table: checks, window geometry, layouts.
#include "neighborhood_attention_passes.h"

#include "neighborhood_window.h"

#include <ATen/ATen.h>

#include <cmath>

namespace attnkit::ops::detail {
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


Tensor bias_table(const Tensor& rpb, at::ScalarType acc) { return rpb.defined() ? rpb.to(acc).contiguous() : rpb; }

double scale_or_default(const Tensor& q, std::optional<double> scale) {
  return scale.value_or(1.0 / std::sqrt(static_cast<double>(q.size(4))));
}

Tensor value_or_undefined(const OptTensor& t) { return t.has_value() ? *t : Tensor(); }

}  // namespace

Tensor empty_heads_last(const Tensor& like) {
  return at::empty({like.size(0), like.size(2), like.size(3), like.size(1), like.size(4)}, like.options())
      .permute({0, 3, 1, 2, 4});
}

std::vector<Tensor> split_rows(const Tensor& rows, int64_t heads) {
  return rows.unflatten(3, {3, heads, rows.size(3) / (3 * heads)}).permute({3, 0, 4, 1, 2, 5}).unbind(0);
}

Tensor qkv_rows(const Tensor& qkv, int64_t heads) {
  TORCH_CHECK(heads > 0, "attnkit::split_qkv: heads must be positive, got ", heads);
  TORCH_CHECK(qkv.defined() && qkv.dim() == 4 && qkv.size(1) % (3 * heads) == 0,
              "attnkit::split_qkv: expected qkv of shape [N, 3*heads*head_dim, H, W] with heads = ", heads, ", got ",
              qkv.defined() ? qkv.sizes() : at::IntArrayRef{});
  return qkv.permute({0, 2, 3, 1}).contiguous();
}

std::tuple<Tensor, Tensor> neighborhood_attention_forward(const NeighborhoodAttentionKernelTable& kt, const Tensor& q_in,
                                                          const Tensor& k_in, const Tensor& v_in, const OptTensor& rpb_opt,
                                                          int64_t kernel_size, int64_t dilation,
                                                          std::optional<double> scale) {
  const Tensor rpb = value_or_undefined(rpb_opt);
  check_inputs(q_in, k_in, v_in, rpb, kernel_size, dilation);
  const Tensor q = head_dim_contiguous(q_in), k = head_dim_contiguous(k_in), v = head_dim_contiguous(v_in);
  const auto acc = acc_type(q.scalar_type());
  Tensor out = empty_heads_last(q);
  Tensor lse = at::empty({q.size(0), q.size(1), q.size(2), q.size(3)}, q.options().dtype(acc));
  if (q.numel() > 0)
    kt.forward(q, k, v, bias_table(rpb, acc), geometry(q, kernel_size, dilation, scale_or_default(q, scale)), out, lse);
  return {out, lse};
}

Tensor neighborhood_attention_backward(const NeighborhoodAttentionKernelTable& kt, const Tensor& grad,
                                       const Tensor& q_in, const Tensor& k_in, const Tensor& v_in,
                                       const OptTensor& rpb_opt, const Tensor& lse, int64_t kernel_size,
                                       int64_t dilation, std::optional<double> scale, const Tensor& dq_out,
                                       const OptTensor& dk_opt, const OptTensor& dv_opt) {
  const Tensor rpb = value_or_undefined(rpb_opt);
  const Tensor q = head_dim_contiguous(q_in), k = head_dim_contiguous(k_in), v = head_dim_contiguous(v_in);
  const auto acc = acc_type(q.scalar_type());
  const int64_t side = 2 * kernel_size - 1;
  Tensor drpb = rpb.defined() ? at::zeros({q.size(1), side, side}, q.options().dtype(acc)) : Tensor();
  // Handles onto the caller's tensors: the kernels write their data in place.
  Tensor dq = dq_out, dk = value_or_undefined(dk_opt), dv = value_or_undefined(dv_opt);
  if (q.numel() > 0) {
    const Tensor dout = head_dim_contiguous(grad.to(q.scalar_type()));
    kt.backward(dout, q, k, v, bias_table(rpb, acc), lse,
                geometry(q, kernel_size, dilation, scale_or_default(q, scale)), dq, dk, dv, drpb);
  }
  return drpb.defined() ? drpb.to(rpb.scalar_type()) : drpb;
}

}  // namespace attnkit::ops::detail
