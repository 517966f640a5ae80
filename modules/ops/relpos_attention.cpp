// attnkit::relpos_attention: the public function and the ops' schemas.
//
// Three ops, each registered per dispatch key by its own file:
//   relpos_attention             the op users call             cpu/relpos_attention_dispatch.cpp (CPU)
//   _relpos_attention_forward    output + logsumexp            cuda/relpos_attention_dispatch.cpp (CUDA)
//   _relpos_attention_backward   dq, dk, dv, dtable            autograd/relpos_attention.cpp (Autograd)
//                                                              autocast/relpos_attention.cpp (Autocast)
// The math for any device is detail/relpos_attention_passes.cpp over the device's kernel table.
#include <attnkit/modules/ops/relpos_attention.h>

#include <attnkit/modules/ops/cbam.h>
#include "detail/device_check.h"

#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

namespace attnkit::ops {

// Every fused op has kernels on the same devices (the CPU, and CUDA in CUDA builds): one rule for all.
bool has_relpos_attention_kernel(const at::Device& device) { return has_fused_kernels(device); }

at::Tensor relpos_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& table,
                            int64_t height, int64_t width, std::optional<double> scale) {
  using Signature = at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                               const std::optional<at::Tensor>&, int64_t, int64_t, std::optional<double>);
  static auto op =
      c10::Dispatcher::singleton().findSchemaOrThrow("attnkit::relpos_attention", "").typed<Signature>();
  TORCH_CHECK(q.defined() && k.defined() && v.defined(), "attnkit::relpos_attention: q, k and v must be defined");
  detail::check_same_device("attnkit::relpos_attention", q, "q", {{&k, "k"}, {&v, "v"}, {&table, "table"}});
  TORCH_CHECK(has_relpos_attention_kernel(q.device()), "attnkit::relpos_attention: no kernel for q on device ",
              q.device(), " in this build; SelfAttention2d uses its composite implementation there");
  return op.call(q, k, v, table.defined() ? std::optional<at::Tensor>(table) : std::nullopt, height, width, scale);
}

TORCH_LIBRARY_FRAGMENT(attnkit, m) {
  m.def("relpos_attention(Tensor q, Tensor k, Tensor v, Tensor? table, int height, int width, float? scale=None) -> Tensor");
  m.def(
      "_relpos_attention_forward(Tensor q, Tensor k, Tensor v, Tensor? table, int height, int width, "
      "float? scale=None) -> (Tensor out, Tensor lse)");
  m.def(
      "_relpos_attention_backward(Tensor grad, Tensor q, Tensor k, Tensor v, Tensor out, Tensor lse, Tensor? table, "
      "int height, int width, float? scale, bool want_table) -> (Tensor dq, Tensor dk, Tensor dv, Tensor dtable)");
}

}  // namespace attnkit::ops
