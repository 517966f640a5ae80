#include <attnkit/modules/implementation.h>

#include <attnkit/modules/cbam.h>
#include <attnkit/modules/channel_attention.h>
#include <attnkit/modules/eca.h>
#include <attnkit/modules/local_attention2d.h>
#include <attnkit/modules/self_attention2d.h>
#include <attnkit/modules/spatial_attention.h>
#include <attnkit/modules/squeeze_excite.h>

namespace attnkit {

namespace {

// Sets impl on `m` when it is a `Block`; true if it was.
template <typename Block>
bool set_if(torch::nn::Module* m, Implementation impl) {
  auto* b = dynamic_cast<Block*>(m);
  if (b) b->options.impl(impl);
  return b != nullptr;
}

}  // namespace

int set_implementation(torch::nn::Module& root, Implementation impl) {
  int switched = 0;
  for (const auto& m : root.modules(/*include_self=*/true))
    switched += (set_if<CBAMImpl>(m.get(), impl) || set_if<ChannelAttentionImpl>(m.get(), impl) ||
                 set_if<SqueezeExciteImpl>(m.get(), impl) || set_if<LocalAttention2dImpl>(m.get(), impl) ||
                 set_if<SelfAttention2dImpl>(m.get(), impl) || set_if<ECAImpl>(m.get(), impl) ||
                 set_if<SpatialAttentionImpl>(m.get(), impl));
  return switched;
}

namespace detail {

bool use_fused_kernel(Implementation impl, const c10::Device& device, bool kernel_exists, bool recording,
                      const char* who, bool auto_fused) {
  if (impl == Implementation::Composite) return false;
  if (impl == Implementation::Fused) {
    TORCH_CHECK(kernel_exists, who, ": impl=fused but attnkit has no fused kernel for device ", device,
                " in this build; use Implementation::Auto or Composite");
    TORCH_CHECK(!recording, who, ": impl=fused cannot record attention maps; use Implementation::Auto");
    return true;
  }
  return auto_fused && kernel_exists && !recording;
}

}  // namespace detail

}  // namespace attnkit
