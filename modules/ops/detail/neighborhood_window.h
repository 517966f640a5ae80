// NATTEN's window rule for (dilated) neighborhood attention along one axis, shared by the fused op
// (modules/ops) and the composite index builder (relative_position.h, which re-exports it).
#pragma once

#include <cstdint>

namespace attnkit::ops {

/// Start, in positions along an axis of length `length`, of the window of position `index`: within
/// its dilation group (positions congruent to it mod `dilation`) the window is the `kernel_size`
/// consecutive members centred on it, shifted inward at the borders. Needs length >= kernel_size·dilation.
inline int64_t neighborhood_window_start(int64_t index, int64_t length, int64_t kernel_size, int64_t dilation) {
  // Work inside the dilation group of `index`: members g, g+d, g+2d, ... (group_len of them).
  const int64_t group = index % dilation;
  const int64_t pos = index / dilation;
  const int64_t group_len = (length - group + dilation - 1) / dilation;
  const int64_t half = kernel_size / 2;
  int64_t start = pos - half;
  if (start < 0) start = 0;
  if (start + kernel_size > group_len) start = group_len - kernel_size;
  return start * dilation + group;
}

}  // namespace attnkit::ops
