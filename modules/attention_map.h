// Opt-in recording of a block's last attention map, for the visualisation apps.
//
// Off by default and free when off: blocks call record() only when recording() is true, so the
// map is neither computed nor kept otherwise. What a map is depends on the block (documented in
// each block's header): N×1×H×W for a spatial gate, N×C for a channel gate, attention weights for
// self/local attention.
#pragma once

#include <torch/types.h>

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

}  // namespace attnkit
