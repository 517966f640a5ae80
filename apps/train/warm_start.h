// `attnkit train --init-from CHECKPOINT`: start a network from a trained one of the same backbone,
// typically a plain network given attention blocks, so that the gates are learnt in a few epochs of
// fine-tuning instead of a whole training run.
//
// Every parameter and buffer of the checkpoint is copied into the model under the same name (the
// backbones name their tensors alike whatever the attention: layer1.0.conv1.weight, ...). The
// model's tensors the checkpoint lacks must all belong to attention blocks (`...attn.*`); those
// blocks start *neutral*: the gate's last layer is zeroed (SE's and CBAM's fc2, ECA's conv, the
// spatial gate's BatchNorm), so the gate is one constant g (sigmoid(0) = 0.5, or 0.25 for CBAM's two
// gates), and the BatchNorm before it is divided by g. The new network therefore computes exactly
// what the checkpoint's network computed (up to float rounding), while the gates sit where the
// sigmoid's slope is largest and learn fastest. Attention that is not a gate (self-attention, local
// attention) has no such neutral start and is refused.
#pragma once

#include <attnkit/backbones/checkpoint.h>
#include <attnkit/backbones/resnet.h>

#include <cstdint>
#include <string>

namespace attnkit::train {

struct WarmStartReport {
  /// Tensors copied from the checkpoint.
  int64_t copied = 0;
  /// Attention blocks the checkpoint lacked, started neutral.
  int64_t neutral_blocks = 0;
};

/// Loads `source` into `model` as described above. Throws std::runtime_error naming `path` when the
/// backbones differ (family, depth, width, classes, input channels, shortcut), when a tensor of the
/// checkpoint has no counterpart or another shape, or when a new block cannot start neutral.
WarmStartReport warm_start(Backbone& model, const Checkpoint& source, const std::string& path);

}  // namespace attnkit::train
