// attnkit::relpos_attention and its _forward / _backward under autocast: see autocast_off.h.
#include "autocast_off.h"

#include <torch/library.h>

#include <optional>
#include <tuple>

namespace attnkit::ops::detail {
namespace {

using at::Tensor;
using OptTensor = std::optional<Tensor>;
using Forward = Tensor(const Tensor&, const Tensor&, const Tensor&, const OptTensor&, int64_t, int64_t,
                       std::optional<double>);
using ForwardSaving = std::tuple<Tensor, Tensor>(const Tensor&, const Tensor&, const Tensor&, const OptTensor&,
                                                 int64_t, int64_t, std::optional<double>);
using Backward = std::tuple<Tensor, Tensor, Tensor, Tensor>(const Tensor&, const Tensor&, const Tensor&,
                                                            const Tensor&, const Tensor&, const Tensor&,
                                                            const OptTensor&, int64_t, int64_t,
                                                            std::optional<double>, bool);
constexpr char kOp[] = "attnkit::relpos_attention";
constexpr char kOpForward[] = "attnkit::_relpos_attention_forward";
constexpr char kOpBackward[] = "attnkit::_relpos_attention_backward";

void register_autocast(torch::Library& m) {
  m.impl("relpos_attention", &AutocastOff<Forward>::kernel<kOp>);
  m.impl("_relpos_attention_forward", &AutocastOff<ForwardSaving>::kernel<kOpForward>);
  m.impl("_relpos_attention_backward", &AutocastOff<Backward>::kernel<kOpBackward>);
}

}  // namespace

TORCH_LIBRARY_IMPL(attnkit, AutocastCPU, m) { register_autocast(m); }
TORCH_LIBRARY_IMPL(attnkit, AutocastCUDA, m) { register_autocast(m); }

}  // namespace attnkit::ops::detail
