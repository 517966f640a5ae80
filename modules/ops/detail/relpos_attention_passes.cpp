// relpos_attention over a device's kernel table: checks, the kernels' dtypes and layouts.
#include "relpos_attention_passes.h"

#include <ATen/ATen.h>

#include <cmath>

namespace attnkit::ops::detail {
namespace {

using at::Tensor;

constexpr const char* kWho = "attnkit::relpos_attention: ";

/// The dtype of lse, the flipped table and its gradient: float64 stays, everything else is float32.
at::ScalarType acc_dtype(at::ScalarType t) { return t == at::kDouble ? at::kDouble : at::kFloat; }

/// The dtype the kernels read q, k, v and write out and the gradients in: the CPU kernels run in
/// the accumulation dtype (bfloat16/half upcast), the CUDA kernels read every floating dtype.
at::ScalarType kernel_dtype(const at::Tensor& t) {
  return t.is_cuda() ? t.scalar_type() : acc_dtype(t.scalar_type());
}

/// t in the kernel dtype with a contiguous last dimension and a row stride of at least d (read in
/// place where it already is, as the views of a channels-last qkv output are).
Tensor kernel_view(const Tensor& t, at::ScalarType dtype) {
  Tensor r = t.scalar_type() == dtype ? t : t.to(dtype);
  const int64_t d = r.size(3);
  if ((d > 1 && r.stride(3) != 1) || r.stride(2) < d) r = r.contiguous();
  return r;
}

/// [N, heads, L, d] stored as [N, L, heads, d].
Tensor empty_heads_interleaved(const Tensor& like, at::ScalarType dtype) {
  return at::empty({like.size(0), like.size(2), like.size(1), like.size(3)}, like.options().dtype(dtype))
      .permute({0, 2, 1, 3});
}

/// The flipped, head-major table the kernels read: rtab[h, t] = table[T - 1 - t, h].
Tensor flipped_table(const Tensor& table, at::ScalarType dtype) {
  return table.defined() ? table.to(dtype).flip(0).t().contiguous() : Tensor();
}

struct Forward {
  Tensor q, k, v;  // as the kernels read them
  Tensor out, lse;  // kernel dtype, accumulation dtype
};

Forward forward_impl(const RelposAttentionKernelTable& kt, const Tensor& q, const Tensor& k, const Tensor& v,
                     const Tensor& table, int64_t height, int64_t width, double scale) {
  const auto dt = kernel_dtype(q), acc = acc_dtype(dt);
  Forward f{kernel_view(q, dt), kernel_view(k, dt), kernel_view(v, dt), Tensor(), Tensor()};
  f.out = empty_heads_interleaved(q, dt);
  f.lse = at::empty({q.size(0), q.size(1), q.size(2)}, q.options().dtype(acc));
  if (q.numel() == 0) return f;
  kt.forward(f.q, f.k, f.v, flipped_table(table, acc), height, width, scale, f.out, f.lse);
  return f;
}

double scale_or_default(const Tensor& q, std::optional<double> scale) {
  return scale.has_value() ? *scale : 1.0 / std::sqrt(static_cast<double>(q.size(3)));
}

Tensor value_or_undefined(const OptTensor& t) { return t.has_value() ? *t : Tensor(); }

}  // namespace

void check_relpos_attention_inputs(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& table, int64_t height,
                  int64_t width) {
  TORCH_CHECK(q.defined() && k.defined() && v.defined(), kWho, "q, k and v must be defined");
  TORCH_CHECK(q.dim() == 4, kWho, "q must be 4-D [N, heads, L, d], got ", q.dim(), "-D ", q.sizes());
  TORCH_CHECK(k.sizes() == q.sizes(), kWho, "k must have q's shape ", q.sizes(), ", got ", k.sizes());
  TORCH_CHECK(v.sizes() == q.sizes(), kWho, "v must have q's shape ", q.sizes(), ", got ", v.sizes());
  TORCH_CHECK(q.is_floating_point(), kWho, "q must be floating point, got ", q.scalar_type());
  for (const auto& [t, name] : {std::pair{&k, "k"}, std::pair{&v, "v"}}) {
    TORCH_CHECK(t->scalar_type() == q.scalar_type(), kWho, name, " has dtype ", t->scalar_type(), " but q has ",
                q.scalar_type());
    TORCH_CHECK(t->device() == q.device(), kWho, name, " is on ", t->device(), " but q is on ", q.device());
  }
  TORCH_CHECK(q.size(3) > 0, kWho, "q must have a head dim d > 0, got ", q.sizes());
  TORCH_CHECK(height > 0 && width > 0, kWho, "height and width must be positive, got ", height, "x", width);
  TORCH_CHECK(height * width == q.size(2), kWho, "height·width (", height, "·", width, " = ", height * width,
              ") must equal L = q.size(2) = ", q.size(2));
  if (!table.defined()) return;
  const int64_t rows = (2 * height - 1) * (2 * width - 1);
  TORCH_CHECK(table.dim() == 2 && table.size(0) == rows && table.size(1) == q.size(1), kWho,
              "table must be [(2·height-1)(2·width-1), heads] = [", rows, ", ", q.size(1), "] for a ", height, "x",
              width, " map, got ", table.sizes(), " (resize it with resize_relative_position_table)");
  TORCH_CHECK(table.is_floating_point(), kWho, "table must be floating point, got ", table.scalar_type());
  TORCH_CHECK(table.device() == q.device(), kWho, "table is on ", table.device(), " but q is on ", q.device());
}

std::tuple<Tensor, Tensor> relpos_attention_forward(const RelposAttentionKernelTable& kt, const Tensor& q,
                                                    const Tensor& k, const Tensor& v, const OptTensor& table_opt,
                                                    int64_t height, int64_t width, std::optional<double> scale) {
  const Tensor table = value_or_undefined(table_opt);
  check_relpos_attention_inputs(q, k, v, table, height, width);
  Forward f = forward_impl(kt, q, k, v, table, height, width, scale_or_default(q, scale));
  return {f.out, f.lse};
}

std::tuple<Tensor, Tensor, Tensor, Tensor> relpos_attention_backward(
    const RelposAttentionKernelTable& kt, const Tensor& grad, const Tensor& q_in, const Tensor& k_in,
    const Tensor& v_in, const Tensor& out, const Tensor& lse, const OptTensor& table_opt, int64_t height,
    int64_t width, std::optional<double> scale, bool want_table) {
  const Tensor table = table_opt.has_value() ? *table_opt : Tensor();
  const auto dt = kernel_dtype(q_in), acc = acc_dtype(dt);  // the kernel dtype, the accumulation dtype
  const Tensor q = kernel_view(q_in, dt), k = kernel_view(k_in, dt), v = kernel_view(v_in, dt);
  Tensor dq = empty_heads_interleaved(q, dt), dk = empty_heads_interleaved(q, dt), dv = empty_heads_interleaved(q, dt);
  want_table = want_table && table.defined();
  Tensor dtable = want_table ? at::empty({table.size(0), table.size(1)}, q.options().dtype(acc)) : Tensor();
  if (q.numel() > 0) {
    kt.backward(kernel_view(grad, dt), q, k, v, out, lse, flipped_table(table, acc), height, width,
                scale_or_default(q, scale), dq, dk, dv, dtable);
  } else if (want_table) {
    dtable.zero_();
  }
  const auto in_dt = q_in.scalar_type();
  return {dq.to(in_dt), dk.to(in_dt), dv.to(in_dt), want_table ? dtable.to(table.scalar_type()) : dtable};
}

}  // namespace attnkit::ops::detail
