// The one device check the public op functions make before the dispatcher sees the call.
//
// The dispatcher picks a kernel by the highest-priority device among all inputs: with k on Meta
// and q on the CPU it would run (or fail to find) the Meta kernel and say nothing about which
// argument is wrong. So the public functions check that every tensor is on q's (x's) device and that
// attnkit has kernels there; the kernels then see one device, which the dispatcher chose.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <initializer_list>
#include <utility>

namespace attnkit::ops::detail {

/// Each defined tensor of `others` must be on `first`'s device ("<op>: k is on meta but q is on
/// cpu"). The caller then checks has_fused_kernels(first.device()) with its own message.
inline void check_same_device(const char* op, const at::Tensor& first, const char* first_name,
                              std::initializer_list<std::pair<const at::Tensor*, const char*>> others) {
  for (const auto& [t, name] : others)
    TORCH_CHECK(!t->defined() || t->device() == first.device(), op, ": ", name, " is on ", t->device(), " but ",
                first_name, " is on ", first.device());
}

}  // namespace attnkit::ops::detail
