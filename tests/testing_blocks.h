// Helpers for the suites that look inside a backbone's residual blocks.
#pragma once

#include <attnkit/backbones/resnet.h>

#include <memory>
#include <vector>

namespace attnkit::testing {

/// The attention module of every block, in order (null where a block has none).
inline std::vector<std::shared_ptr<torch::nn::Module>> block_attention(Backbone& model) {
  std::vector<std::shared_ptr<torch::nn::Module>> out;
  for (const auto& stage : model.stages())
    for (const auto& any : *stage) {
      const auto parts = residual_block_parts(*any.ptr());
      out.push_back(parts && !parts->attn.is_empty() ? parts->attn.ptr() : nullptr);
    }
  return out;
}

}  // namespace attnkit::testing
