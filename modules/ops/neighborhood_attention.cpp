// attnkit::neighborhood_attention(_qkv): the public functions and the ops' schemas.
//
// Four ops, each registered per dispatch key by its own file:
//   neighborhood_attention(_qkv)       the ops users call     cpu/neighborhood_attention_dispatch.cpp (CPU)
//   _neighborhood_attention_forward    output + logsumexp     cuda/neighborhood_attention_dispatch.cpp (CUDA)
//   _neighborhood_attention_backward   dq, dk, dv (written    autograd/neighborhood_attention.cpp (Autograd)
//                                      in place), drpb        autocast/neighborhood_attention.cpp (Autocast)
// The math for any device is detail/neighborhood_attention_passes.cpp over the device's kernel table.
#include <attnkit/modules/ops/neighborhood_attention.h>

#include <attnkit/modules/ops/cbam.h>
#include "detail/device_check.h"
#include "detail/neighborhood_attention_passes.h"

#include <ATen/ATen.h>
#include <torch/library.h>

namespace attnkit::ops {
namespace {

using at::Tensor;
using detail::OptTensor;
constexpr const char* kOp = "attnkit::neighborhood_attention";
constexpr const char* kNoKernel =
    " but attnkit has no kernel for this op on that device in this build (CPU, and CUDA where compiled in; "
    "LocalAttention2d runs its composite path elsewhere)";

OptTensor optional(const Tensor& t) { return t.defined() ? OptTensor(t) : std::nullopt; }

}  // namespace

// Every fused op has kernels on the same devices (the CPU, and CUDA in CUDA builds): one rule for all.
bool has_neighborhood_attention_kernel(const at::Device& device) { return has_fused_kernels(device); }

at::Tensor neighborhood_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& rpb,
                                  int64_t kernel_size, int64_t dilation, std::optional<double> scale) {
  using Signature = Tensor(const Tensor&, const Tensor&, const Tensor&, const OptTensor&, int64_t, int64_t,
                           std::optional<double>);
  static auto op =
      c10::Dispatcher::singleton().findSchemaOrThrow("attnkit::neighborhood_attention", "").typed<Signature>();
  TORCH_CHECK(q.defined() && k.defined() && v.defined(), kOp, ": q, k and v must be defined");
  detail::check_same_device(kOp, q, "q", {{&k, "k"}, {&v, "v"}, {&rpb, "rpb"}});
  TORCH_CHECK(has_neighborhood_attention_kernel(q.device()), kOp, ": q is on ", q.device(), kNoKernel);
  return op.call(q, k, v, optional(rpb), kernel_size, dilation, scale);
}

at::Tensor neighborhood_attention_qkv(const at::Tensor& qkv, int64_t heads, const at::Tensor& rpb,
                                      int64_t kernel_size, int64_t dilation, std::optional<double> scale) {
  using Signature = Tensor(const Tensor&, int64_t, const OptTensor&, int64_t, int64_t, std::optional<double>);
  static auto op =
      c10::Dispatcher::singleton().findSchemaOrThrow("attnkit::neighborhood_attention_qkv", "").typed<Signature>();
  TORCH_CHECK(qkv.defined(), kOp, "_qkv: qkv must be defined");
  detail::check_same_device(kOp, qkv, "qkv", {{&rpb, "rpb"}});
  TORCH_CHECK(has_neighborhood_attention_kernel(qkv.device()), kOp, "_qkv: qkv is on ", qkv.device(), kNoKernel);
  return op.call(qkv, heads, optional(rpb), kernel_size, dilation, scale);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> split_qkv(const at::Tensor& qkv, int64_t heads) {
  const auto parts = detail::split_rows(detail::qkv_rows(qkv, heads), heads);
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
  m.def(
      "_neighborhood_attention_forward(Tensor q, Tensor k, Tensor v, Tensor? rpb, int kernel_size, int dilation=1, "
      "float? scale=None) -> (Tensor out, Tensor lse)");
  // dq, dk, dv are written in place (any layout with head_dim contiguous), so that the qkv op's three
  // gradients land in one tensor; dk and dv may be None (not wanted).
  m.def(
      "_neighborhood_attention_backward(Tensor grad, Tensor q, Tensor k, Tensor v, Tensor? rpb, Tensor lse, "
      "int kernel_size, int dilation, float? scale, Tensor(a!) dq, Tensor(b!)? dk, Tensor(c!)? dv) -> Tensor");
}

}  // namespace attnkit::ops
