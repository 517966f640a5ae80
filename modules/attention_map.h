// Opt-in recording of a block's last attention map, for the visualisation apps.
//
// Off by default and free when off: blocks call record() only when recording() is true, so the
// map is neither computed nor kept otherwise. What a map is depends on the block (documented in
// each block's header): N×1×H×W for a spatial gate, N×C for a channel gate, attention weights for
// self/local attention. SpatialMapSource is the blocks whose map can be drawn over the feature map.
#pragma once

#include <torch/types.h>

#include <cstdint>
#include <functional>
#include <optional>
#include <utility>

namespace attnkit {

class AttentionMapRecorder {
 public:
  /// Turns recording of the attention map on or off (off drops any stored map).
  void record_attention(bool on) {
    recording_ = on;
    if (!on) last_map_ = torch::Tensor();
  }
  bool recording() const { return recording_; }
  /// The map of the last forward() while recording was on (detached); undefined otherwise.
  const torch::Tensor& last_attention() const { return last_map_; }

 protected:
  void record(const torch::Tensor& map) {
    if (recording_) last_map_ = map.detach();
  }

 private:
  bool recording_ = false;
  torch::Tensor last_map_;
};

/// A (row, col) position on a feature map.
using Position2d = std::pair<int64_t, int64_t>;

/// A block whose recorded attention map reads as a map over the positions of its output: what
/// explain() draws as a "native" map. The gates with a spatial map (CBAM, SpatialAttention) give
/// the map itself; local and self attention give the attention each position receives. Channel-only
/// gates are not sources. A block joins explain() by deriving from this (and AttentionMapRecorder).
class SpatialMapSource {
 public:
  virtual ~SpatialMapSource() = default;
  /// Whether the block as configured has a spatial map (CBAM with no_spatial has none).
  virtual bool has_spatial_map() const { return true; }
  /// Called before a recorded forward whose output is h×w, with the query that spatial_map() will
  /// be asked for (nullopt: the average over every query), so that the block records what that
  /// needs (self attention records the rows of those queries only). Returns what undoes the
  /// setup; empty when there is nothing to undo (the default).
  virtual std::function<void()> prepare_spatial_map(int64_t /*h*/, int64_t /*w*/,
                                                    const std::optional<Position2d>& /*query*/) {
    return {};
  }
  /// The last recorded map (which must exist) as [N, h, w]: the gate's values, or the attention
  /// each position receives from `query`, or on average over every query when nullopt.
  virtual torch::Tensor spatial_map(const std::optional<Position2d>& query) const = 0;
};

}  // namespace attnkit
