// attnkit::cbam and its _forward / _backward under autocast: see autocast_off.h.
#include "../detail/cbam_args.h"
#include "autocast_off.h"

#include <torch/library.h>

namespace attnkit::ops::detail {
namespace {

constexpr char kCbam[] = "attnkit::cbam";
constexpr char kCbamIntoResidual[] = "attnkit::_cbam_into_residual";
constexpr char kCbamForward[] = "attnkit::_cbam_forward";
constexpr char kCbamBackward[] = "attnkit::_cbam_backward";

void register_autocast(torch::Library& m) {
  m.impl("cbam", &AutocastOff<CbamSignature<at::Tensor>>::kernel<kCbam>);
  m.impl("_cbam_into_residual", &AutocastOff<CbamSignature<void>>::kernel<kCbamIntoResidual>);
  m.impl("_cbam_forward", &AutocastOff<CbamSignature<CbamForwardResult>>::kernel<kCbamForward>);
  m.impl("_cbam_backward", &AutocastOff<CbamBackwardSignature>::kernel<kCbamBackward>);
}

}  // namespace

TORCH_LIBRARY_IMPL(attnkit, AutocastCPU, m) { register_autocast(m); }
TORCH_LIBRARY_IMPL(attnkit, AutocastCUDA, m) { register_autocast(m); }

}  // namespace attnkit::ops::detail
