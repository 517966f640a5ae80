// The Autocast policy of every attnkit op: run in the dtypes the inputs come in, with autocast off
// inside.
//
// attnkit's kernels compute in the accumulation dtype (float32; float64 for float64) whatever the
// inputs' dtype, and read their small tensors (weights, tables) in that dtype, so autocast has
// nothing to cast. What it must not do is reach inside: the ops' own ATen calls (CBAM's linear,
// conv2d, batch_norm) would otherwise be cast to bfloat16/half and the kernels would read tensors
// of another dtype than they expect.
#pragma once

#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/core/impl/LocalDispatchKeySet.h>

namespace attnkit::ops::detail {

template <typename Signature>
struct AutocastOff;

/// AutocastOff<Signature>::kernel<kName>: the kernel that calls op kName with autocast excluded.
template <typename Ret, typename... Args>
struct AutocastOff<Ret(Args...)> {
  template <const char* kName>
  static Ret kernel(Args... args) {
    c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
    static auto op = c10::Dispatcher::singleton().findSchemaOrThrow(kName, "").typed<Ret(Args...)>();
    return op.call(std::forward<Args>(args)...);
  }
};

}  // namespace attnkit::ops::detail
