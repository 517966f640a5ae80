// The CBAM ops' arguments in C++ types, and the one place that maps them to and from the schema.
//
// attnkit::cbam and attnkit::_cbam_forward take the same arguments (modules/ops/cbam.cpp has their
// schema): x, the gates' weights one by one, the configuration, the residual. Every kernel of the
// ops (CPU, CUDA, Autograd, Autocast) is a function of one CbamArgs; cbam_kernel<>() adapts it to
// the schema's flat signature and call_cbam() calls an op from a CbamArgs, so the flat list of
// arguments exists only here.
#pragma once

#include <attnkit/modules/ops/cbam.h>

#include <ATen/core/Tensor.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <ATen/core/List.h>

#include <optional>
#include <tuple>
#include <vector>

namespace attnkit::ops::detail {

struct CbamArgs {
  at::Tensor x;
  CbamWeights w;
  CbamConfig cfg;
  at::Tensor residual;  ///< undefined: none
};

/// What the forward pass keeps for backward (undefined where the gates have no such stage: no
/// channel gate → no avg, max; no spatial gate → no zmax, zmean, s), in the accumulation dtype.
struct CbamSaved {
  at::Tensor out;          ///< the op's output
  at::Tensor avg, max;     ///< [N, C] pooled descriptors
  at::Tensor g;            ///< [N, C] channel gate (ones without one)
  at::Tensor zmax, zmean;  ///< [N, H*W] channel max / mean of x * g
  at::Tensor s;            ///< [N, H*W] spatial gate
};
using CbamForwardResult = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;
inline CbamForwardResult to_tuple(const CbamSaved& s) { return {s.out, s.avg, s.max, s.g, s.zmax, s.zmean, s.s}; }
inline CbamSaved from_tuple(const CbamForwardResult& t) {
  return {std::get<0>(t), std::get<1>(t), std::get<2>(t), std::get<3>(t), std::get<4>(t), std::get<5>(t),
          std::get<6>(t)};
}

using OptTensor = std::optional<at::Tensor>;

inline at::Tensor value_or_undefined(const OptTensor& t) { return t.has_value() ? *t : at::Tensor(); }
inline OptTensor optional(const at::Tensor& t) { return t.defined() ? OptTensor(t) : std::nullopt; }

/// A kernel `Ret impl(const CbamArgs&)` as the schema's flat signature, for m.impl().
template <typename Ret, Ret (*Impl)(const CbamArgs&)>
Ret cbam_kernel(const at::Tensor& x, const OptTensor& fc1_weight, const OptTensor& fc1_bias,
                const OptTensor& fc2_weight, const OptTensor& fc2_bias, const OptTensor& spatial_weight,
                const OptTensor& spatial_bias, const OptTensor& bn_weight, const OptTensor& bn_bias,
                const OptTensor& bn_running_mean, const OptTensor& bn_running_var, bool pool_avg, bool pool_max,
                bool spatial_max_first, bool use_bn, bool bn_training, double bn_momentum, double bn_eps,
                const OptTensor& eca_weight, const OptTensor& residual, bool relu) {
  CbamArgs a;
  a.x = x;
  a.w.fc1_weight = value_or_undefined(fc1_weight);
  a.w.fc1_bias = value_or_undefined(fc1_bias);
  a.w.fc2_weight = value_or_undefined(fc2_weight);
  a.w.fc2_bias = value_or_undefined(fc2_bias);
  a.w.spatial_weight = value_or_undefined(spatial_weight);
  a.w.spatial_bias = value_or_undefined(spatial_bias);
  a.w.bn_weight = value_or_undefined(bn_weight);
  a.w.bn_bias = value_or_undefined(bn_bias);
  a.w.bn_running_mean = value_or_undefined(bn_running_mean);
  a.w.bn_running_var = value_or_undefined(bn_running_var);
  a.w.eca_weight = value_or_undefined(eca_weight);
  a.cfg = CbamConfig{pool_avg, pool_max, spatial_max_first, use_bn, bn_training, bn_momentum, bn_eps, relu};
  a.residual = value_or_undefined(residual);
  return Impl(a);
}

template <typename Ret>
using CbamSignature = Ret(const at::Tensor&, const OptTensor&, const OptTensor&, const OptTensor&, const OptTensor&,
                          const OptTensor&, const OptTensor&, const OptTensor&, const OptTensor&, const OptTensor&,
                          const OptTensor&, bool, bool, bool, bool, bool, double, double, const OptTensor&,
                          const OptTensor&, bool);

/// The op `name` ("attnkit::cbam" or "attnkit::_cbam_forward") called with `a` (the dispatcher
/// picks the kernel: the Autograd and Autocast kernels call it under a guard that skips their key).
template <typename Ret>
Ret call_cbam(const char* name, const CbamArgs& a) {
  static auto op = c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<CbamSignature<Ret>>();
  const auto& w = a.w;
  const auto& c = a.cfg;
  return op.call(a.x, optional(w.fc1_weight), optional(w.fc1_bias), optional(w.fc2_weight), optional(w.fc2_bias),
                 optional(w.spatial_weight), optional(w.spatial_bias), optional(w.bn_weight), optional(w.bn_bias),
                 optional(w.bn_running_mean), optional(w.bn_running_var), c.pool_avg, c.pool_max, c.spatial_max_first,
                 c.use_bn, c.bn_training, c.bn_momentum, c.bn_eps, optional(w.eca_weight), optional(a.residual),
                 c.relu);
}

// ---- _cbam_backward's arguments -------------------------------------------------------------------
// Internal (called by the Autograd kernel only), so it takes lists in a fixed order instead of one
// argument per tensor: saved = kSaved*, weights = kWeight*, and its result is one gradient per
// kGrad* slot (undefined where not wanted or not present).
enum SavedSlot : size_t { kSavedOut, kSavedAvg, kSavedMax, kSavedG, kSavedZmax, kSavedZmean, kSavedS, kSavedSlots };
enum WeightSlot : size_t { kFc1Weight, kFc1Bias, kFc2Weight, kFc2Bias, kSpatialWeight, kSpatialBias, kBnWeight,
                           kBnBias, kEcaWeight, kBnRunningMean, kBnRunningVar, kWeightSlots };
/// The gradients _cbam_backward returns: x, then the differentiable weights (kFc1Weight..kEcaWeight),
/// then the residual.
constexpr size_t kGradX = 0, kGradWeight0 = 1, kDifferentiableWeights = kEcaWeight + 1,
                 kGradResidual = kGradWeight0 + kDifferentiableWeights, kGradSlots = kGradResidual + 1;

using OptTensorList = c10::List<std::optional<at::Tensor>>;

inline OptTensorList saved_list(const CbamSaved& s) {
  return OptTensorList({optional(s.out), optional(s.avg), optional(s.max), optional(s.g), optional(s.zmax),
                        optional(s.zmean), optional(s.s)});
}
inline CbamSaved saved_from(const OptTensorList& l) {
  auto at_ = [&](size_t i) { return value_or_undefined(l.get(i)); };
  return {at_(kSavedOut), at_(kSavedAvg), at_(kSavedMax), at_(kSavedG), at_(kSavedZmax), at_(kSavedZmean), at_(kSavedS)};
}
inline OptTensorList weight_list(const CbamWeights& w) {
  return OptTensorList({optional(w.fc1_weight), optional(w.fc1_bias), optional(w.fc2_weight), optional(w.fc2_bias),
                        optional(w.spatial_weight), optional(w.spatial_bias), optional(w.bn_weight),
                        optional(w.bn_bias), optional(w.eca_weight), optional(w.bn_running_mean),
                        optional(w.bn_running_var)});
}
inline CbamWeights weights_from(const OptTensorList& l) {
  auto at_ = [&](size_t i) { return value_or_undefined(l.get(i)); };
  CbamWeights w;
  w.fc1_weight = at_(kFc1Weight);
  w.fc1_bias = at_(kFc1Bias);
  w.fc2_weight = at_(kFc2Weight);
  w.fc2_bias = at_(kFc2Bias);
  w.spatial_weight = at_(kSpatialWeight);
  w.spatial_bias = at_(kSpatialBias);
  w.bn_weight = at_(kBnWeight);
  w.bn_bias = at_(kBnBias);
  w.eca_weight = at_(kEcaWeight);
  w.bn_running_mean = at_(kBnRunningMean);
  w.bn_running_var = at_(kBnRunningVar);
  return w;
}

/// _cbam_backward's flat signature (see modules/ops/cbam.cpp for the schema).
using CbamBackwardSignature = std::vector<at::Tensor>(const at::Tensor& grad, const at::Tensor& x,
                                                      const OptTensorList& saved, const OptTensorList& weights,
                                                      bool pool_avg, bool pool_max, bool spatial_max_first,
                                                      bool use_bn, bool bn_training, double bn_eps, bool relu,
                                                      bool has_residual, int64_t needs_grad);

}  // namespace attnkit::ops::detail
