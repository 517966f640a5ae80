// Index helpers shared by the feature-map attention blocks: 2-D relative position bias tables
// (Swin, Liu et al. 2021) and neighborhood windows (Neighborhood Attention, Hassani et al. 2023;
// dilated NA, Hassani & Shi 2022, as defined by NATTEN).
//
// Everything here is integer bookkeeping computed once per shape and cached; the learned tables
// themselves live in the blocks (SelfAttention2d, LocalAttention2d).
#pragma once

#include <torch/types.h>

#include <cstdint>

namespace attnkit {

/// Swin-style index into a relative position bias table of (2H-1)(2W-1) rows, for every pair
/// (query, key) of the H·W positions of an H×W map (row-major flattening). Entry [q, k] is
/// (yq - yk + H - 1) * (2W - 1) + (xq - xk + W - 1), i.e. the offset query minus key, as in Swin.
/// Returns a [H·W, H·W] int64 tensor on `device` (cached per shape and device).
torch::Tensor relative_position_index(int64_t height, int64_t width, const torch::Device& device);

/// Resizes a Swin-style bias table [(2H-1)(2W-1), heads] made for an H×W map to the table for an
/// h×w map, by bicubic interpolation of each head's (2H-1)×(2W-1) grid (align_corners=false, as
/// Swin does when fine-tuning at another resolution). Differentiable; returns `table` itself when
/// the sizes already agree.
torch::Tensor resize_relative_position_table(const torch::Tensor& table, int64_t from_height, int64_t from_width,
                                             int64_t to_height, int64_t to_width);

/// Neighborhoods of a (dilated) neighborhood attention over an H×W map with an odd kernel k and
/// dilation d, following NATTEN's definition: the positions with the same coordinate modulo d form
/// a dilation group; within its group a query's window is the k consecutive group members centred
/// on it, shifted inward at the borders so that every query sees exactly k×k keys.
struct NeighborhoodIndex {
  /// [H·W, k·k] int64: flattened (row-major) key position of window slot (i, j) → column i·k + j.
  torch::Tensor keys;
  /// [H·W, k·k] int64: index into a flattened (2k-1)×(2k-1) bias table: (key - query) / d + k - 1
  /// per axis (row-major), NATTEN's `rpb` convention.
  torch::Tensor bias;
};

/// The neighborhoods for (H, W, k, d) on `device`, computed once and cached. Requires H >= k·d and
/// W >= k·d (so every dilation group has at least k members); callers check with their own messages.
NeighborhoodIndex neighborhood_index(int64_t height, int64_t width, int64_t kernel_size, int64_t dilation,
                                     const torch::Device& device);

/// Start, in positions along one axis of length `length`, of the window of `index` (NATTEN's
/// window start for an odd kernel and dilation; exposed for tests).
int64_t neighborhood_window_start(int64_t index, int64_t length, int64_t kernel_size, int64_t dilation);

}  // namespace attnkit
