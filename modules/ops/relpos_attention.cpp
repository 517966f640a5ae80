// attnkit::relpos_attention: validation, layout and dtype handling, autograd, registration.
#include <attnkit/modules/ops/relpos_attention.h>

#include <attnkit/modules/ops/cbam.h>
#include <attnkit/modules/ops/relpos_attention_kernels.h>

#include <ATen/ATen.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <cmath>

namespace attnkit::ops {
namespace {

using at::Tensor;

constexpr const char* kWho = "attnkit::relpos_attention: ";

void check_inputs(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& table, int64_t height,
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
  TORCH_CHECK(has_relpos_attention_kernel(q.device()), kWho, "no kernel for q on device ", q.device(),
              " in this build; SelfAttention2d uses its composite implementation there");
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

const RelposAttentionKernelTable& kernels_for(const at::Device& device) {
#ifdef ATTNKIT_WITH_CUDA
  if (device.is_cuda()) return cuda::relpos_attention_kernels();
#endif
  return cpu::relpos_attention_kernels();
}

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

Forward forward_impl(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& table, int64_t height,
                     int64_t width, double scale) {
  const auto dt = kernel_dtype(q), acc = acc_dtype(dt);
  Forward f{kernel_view(q, dt), kernel_view(k, dt), kernel_view(v, dt), Tensor(), Tensor()};
  f.out = empty_heads_interleaved(q, dt);
  f.lse = at::empty({q.size(0), q.size(1), q.size(2)}, q.options().dtype(acc));
  if (q.numel() == 0) return f;
  kernels_for(q.device()).forward(f.q, f.k, f.v, flipped_table(table, acc), height, width, scale, f.out, f.lse);
  return f;
}

struct RelposAttentionFunction : public torch::autograd::Function<RelposAttentionFunction> {
  static Tensor forward(torch::autograd::AutogradContext* ctx, const Tensor& q, const Tensor& k, const Tensor& v,
                        at::TensorList table_list, int64_t height, int64_t width, double scale) {
    const Tensor table = table_list.empty() ? Tensor() : table_list[0];
    Forward f = forward_impl(q, k, v, table, height, width, scale);
    ctx->save_for_backward({f.q, f.k, f.v, f.out, f.lse, table});
    ctx->saved_data["height"] = height;
    ctx->saved_data["width"] = width;
    ctx->saved_data["scale"] = scale;
    ctx->saved_data["dtype"] = static_cast<int64_t>(q.scalar_type());
    return f.out.to(q.scalar_type());
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const Tensor &q = saved[0], &k = saved[1], &v = saved[2], &out = saved[3], &lse = saved[4], &table = saved[5];
    const auto dt = q.scalar_type(), acc = acc_dtype(dt);  // the kernel dtype, the accumulation dtype
    const auto in_dt = static_cast<at::ScalarType>(ctx->saved_data["dtype"].toInt());
    Tensor dq, dk, dv, dtable;
    if (grads[0].defined()) {
      dq = empty_heads_interleaved(q, dt);
      dk = empty_heads_interleaved(q, dt);
      dv = empty_heads_interleaved(q, dt);
      const bool want_table = table.defined() && ctx->needs_input_grad(3);
      if (want_table) dtable = at::empty({table.size(0), table.size(1)}, q.options().dtype(acc));
      if (q.numel() > 0) {
        kernels_for(q.device()).backward(
            kernel_view(grads[0], dt), q, k, v, out, lse, flipped_table(table, acc), ctx->saved_data["height"].toInt(),
            ctx->saved_data["width"].toInt(), ctx->saved_data["scale"].toDouble(), dq, dk, dv, dtable);
      } else if (want_table) {
        dtable.zero_();
      }
      dq = dq.to(in_dt);
      dk = dk.to(in_dt);
      dv = dv.to(in_dt);
      if (want_table) dtable = dtable.to(table.scalar_type());
    }
    torch::autograd::variable_list result = {dq, dk, dv};
    if (table.defined()) result.push_back(dtable);
    result.resize(result.size() + 3);  // height, width, scale
    return result;
  }
};

double scale_or_default(const Tensor& q, std::optional<double> scale) {
  return scale.has_value() ? *scale : 1.0 / std::sqrt(static_cast<double>(q.size(3)));
}

// Autograd key: records the fused backward when a gradient is wanted.
Tensor relpos_attention_op(const Tensor& q, const Tensor& k, const Tensor& v, const std::optional<Tensor>& table_opt,
                           int64_t height, int64_t width, std::optional<double> scale) {
  const Tensor table = table_opt.has_value() ? *table_opt : Tensor();
  check_inputs(q, k, v, table, height, width);
  const double s = scale_or_default(q, scale);
  const bool grad = torch::GradMode::is_enabled() &&
                    (q.requires_grad() || k.requires_grad() || v.requires_grad() ||
                     (table.defined() && table.requires_grad()));
  if (!grad) {
    at::AutoDispatchBelowADInplaceOrView guard;
    return forward_impl(q, k, v, table, height, width, s).out.to(q.scalar_type());
  }
  std::vector<Tensor> tables;
  if (table.defined()) tables.push_back(table);
  return RelposAttentionFunction::apply(q, k, v, at::TensorList(tables), height, width, s);
}

// CPU and CUDA keys: forward only (reached below autograd, e.g. in inference mode). Without CUDA
// kernels in the build the CUDA key gives check_inputs' error naming the device.
Tensor relpos_attention_forward_only(const Tensor& q, const Tensor& k, const Tensor& v,
                                     const std::optional<Tensor>& table_opt, int64_t height, int64_t width,
                                     std::optional<double> scale) {
  const Tensor table = table_opt.has_value() ? *table_opt : Tensor();
  check_inputs(q, k, v, table, height, width);
  return forward_impl(q, k, v, table, height, width, scale_or_default(q, scale)).out.to(q.scalar_type());
}

}  // namespace

// Every fused op has kernels on the same devices (the CPU, and CUDA in CUDA builds): one rule for all.
bool has_relpos_attention_kernel(const at::Device& device) { return has_fused_kernels(device); }

at::Tensor relpos_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& table,
                            int64_t height, int64_t width, std::optional<double> scale) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("attnkit::relpos_attention", "")
                       .typed<decltype(relpos_attention_op)>();
  TORCH_CHECK(q.defined() && k.defined() && v.defined(), kWho, "q, k and v must be defined");
  return op.call(q, k, v, table.defined() ? std::optional<Tensor>(table) : std::nullopt, height, width, scale);
}

TORCH_LIBRARY_FRAGMENT(attnkit, m) {
  m.def("relpos_attention(Tensor q, Tensor k, Tensor v, Tensor? table, int height, int width, float? scale=None) -> Tensor");
}
TORCH_LIBRARY_IMPL(attnkit, CPU, m) { m.impl("relpos_attention", relpos_attention_forward_only); }
TORCH_LIBRARY_IMPL(attnkit, CUDA, m) { m.impl("relpos_attention", relpos_attention_forward_only); }
TORCH_LIBRARY_IMPL(attnkit, Autograd, m) { m.impl("relpos_attention", relpos_attention_op); }

}  // namespace attnkit::ops
