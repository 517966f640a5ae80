// attnkit::neighborhood_attention(_qkv) and its _forward / _backward under autocast: see autocast_off.h.
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
using ForwardQkv = Tensor(const Tensor&, int64_t, const OptTensor&, int64_t, int64_t, std::optional<double>);
using ForwardSaving = std::tuple<Tensor, Tensor>(const Tensor&, const Tensor&, const Tensor&, const OptTensor&,
                                                 int64_t, int64_t, std::optional<double>);
using Backward = Tensor(const Tensor&, const Tensor&, const Tensor&, const Tensor&, const OptTensor&, const Tensor&,
                        int64_t, int64_t, std::optional<double>, const Tensor&, const OptTensor&, const OptTensor&);
constexpr char kOp[] = "attnkit::neighborhood_attention";
constexpr char kOpQkv[] = "attnkit::neighborhood_attention_qkv";
constexpr char kOpForward[] = "attnkit::_neighborhood_attention_forward";
constexpr char kOpBackward[] = "attnkit::_neighborhood_attention_backward";

void register_autocast(torch::Library& m) {
  m.impl("neighborhood_attention", &AutocastOff<Forward>::kernel<kOp>);
  m.impl("neighborhood_attention_qkv", &AutocastOff<ForwardQkv>::kernel<kOpQkv>);
  m.impl("_neighborhood_attention_forward", &AutocastOff<ForwardSaving>::kernel<kOpForward>);
  m.impl("_neighborhood_attention_backward", &AutocastOff<Backward>::kernel<kOpBackward>);
}

}  // namespace

TORCH_LIBRARY_IMPL(attnkit, AutocastCPU, m) { register_autocast(m); }
TORCH_LIBRARY_IMPL(attnkit, AutocastCUDA, m) { register_autocast(m); }

}  // namespace attnkit::ops::detail
