// The native view of channel-only gates. SE (Hu et al. 2018), ECA (Wang et al. 2020), CBAM's channel
// gate and that gate alone (Woo et al. 2018) scale each channel of their input by one weight in
// (0, 1) computed from the whole feature map: there is no spatial map to draw (explain() skips them),
// but the weights themselves say which channels a block lets through for an image.
// channel_gate_weights() runs one forward pass with the gates' recording on and returns those
// weights per block; `attnkit visualize --method native` draws them as bar charts.
#pragma once

#include <attnkit/backbones/resnet.h>

#include <torch/types.h>

#include <string>
#include <vector>

namespace attnkit {

/// One block's channel gate weights for a batch.
struct ChannelGateWeights {
  /// The block, e.g. "layer3.1".
  std::string layer;
  /// The gate: "se", "eca", "channel" or "cbam" (CBAM's channel gate).
  std::string gate;
  /// float32 [N, C] in (0, 1), on the model's device.
  torch::Tensor weights;
};

/// The blocks of `model` whose attention has a channel gate, then their stage names, then "all"
/// (empty when there is none): the names channel_gate_weights() accepts.
std::vector<std::string> channel_gate_layers(Backbone& model);

/// Runs `input` [N, C, H, W] through `model` (no gradients) and returns the channel gate weights of
/// the blocks `layers` names: block names, stage names (each of its blocks with a channel gate) or
/// "all"; empty = all. An unknown name, or a model without channel gates, is an error (c10::Error)
/// listing the valid names. The gates' recording flags are restored.
std::vector<ChannelGateWeights> channel_gate_weights(Backbone& model, const torch::Tensor& input,
                                                     const std::vector<std::string>& layers = {});

}  // namespace attnkit
