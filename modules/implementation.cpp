#include <attnkit/modules/implementation.h>

#include <attnkit/modules/cbam.h>
#include <attnkit/modules/channel_attention.h>
#include <attnkit/modules/self_attention2d.h>
#include <attnkit/modules/squeeze_excite.h>

namespace attnkit {

int set_implementation(torch::nn::Module& root, Implementation impl) {
  int switched = 0;
  for (const auto& m : root.modules(/*include_self=*/true)) {
    if (auto* b = dynamic_cast<CBAMImpl*>(m.get())) {
      b->options.impl(impl);
      ++switched;
    } else if (auto* b = dynamic_cast<ChannelAttentionImpl*>(m.get())) {
      b->options.impl(impl);
      ++switched;
    } else if (auto* b = dynamic_cast<SqueezeExciteImpl*>(m.get())) {
      b->options.impl(impl);
      ++switched;
    } else if (auto* b = dynamic_cast<SelfAttention2dImpl*>(m.get())) {
      b->options.impl(impl);
      ++switched;
    }
  }
  return switched;
}

}  // namespace attnkit
