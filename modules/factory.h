// make_attention(name, channels): builds a feature-map attention block by its lower-case name.
#pragma once

#include <torch/nn/module.h>
#include <torch/nn/modules/container/any.h>

#include <string>
#include <vector>

namespace attnkit {

/// The names make_attention() accepts; "" means "no attention".
const std::vector<std::string>& attention_names();

/// Builds the block called `name` for a feature map of `channels` channels, as a module whose
/// forward maps [N, C, H, W] to the same shape. "" gives an identity. An unknown name throws an
/// error listing the valid names.
torch::nn::AnyModule make_attention(const std::string& name, int64_t channels);

}  // namespace attnkit
