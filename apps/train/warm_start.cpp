#include "warm_start.h"

#include <attnkit/modules/cbam.h>
#include <attnkit/modules/channel_attention.h>
#include <attnkit/modules/eca.h>
#include <attnkit/modules/gate.h>
#include <attnkit/modules/spatial_attention.h>
#include <attnkit/modules/squeeze_excite.h>

#include <torch/torch.h>

#include <set>
#include <sstream>
#include <stdexcept>

namespace attnkit::train {
namespace {

std::string describe(const ModelConfig& c) {
  std::ostringstream s;
  s << c.name() << " (width " << c.width << ", " << c.num_classes << " classes, " << c.in_channels
    << " input channels)";
  return s.str();
}

/// Same backbone: everything but the attention must agree.
void check_same_backbone(const ModelConfig& model, const ModelConfig& source, const std::string& path) {
  const bool same = model.family == source.family && model.depth == source.depth && model.width == source.width &&
                    model.num_classes == source.num_classes && model.in_channels == source.in_channels &&
                    model.stem == source.stem && model.shortcut == source.shortcut;
  if (!same)
    throw std::runtime_error("--init-from " + path + ": it holds " + describe(source) + ", this run builds " +
                             describe(model) + "; only the attention may differ");
}

void zero_if_defined(const torch::Tensor& t) {
  if (t.defined()) t.zero_();
}

/// Zeroes the layer that feeds a gate's sigmoid, so the gate is a constant. False for attention that
/// is not one of the gates.
bool zero_gate_output(torch::nn::Module& attn) {
  if (auto* se = dynamic_cast<SqueezeExciteImpl*>(&attn)) {
    zero_if_defined(se->fc2->weight), zero_if_defined(se->fc2->bias);
    return true;
  }
  if (auto* eca = dynamic_cast<ECAImpl*>(&attn)) {
    zero_if_defined(eca->conv->weight), zero_if_defined(eca->conv->bias);
    return true;
  }
  if (auto* channel = dynamic_cast<ChannelAttentionImpl*>(&attn)) {
    zero_if_defined(channel->fc2->weight), zero_if_defined(channel->fc2->bias);
    return true;
  }
  if (auto* spatial = dynamic_cast<SpatialAttentionImpl*>(&attn)) {
    // With its BatchNorm the map is bn.weight · (normalised conv) + bn.bias: zeroing both keeps the
    // conv learnable through bn.weight's gradient. Without it, the conv itself.
    if (spatial->bn) {
      zero_if_defined(spatial->bn->weight), zero_if_defined(spatial->bn->bias);
    } else {
      zero_if_defined(spatial->conv->weight), zero_if_defined(spatial->conv->bias);
    }
    return true;
  }
  if (auto* cbam = dynamic_cast<CBAMImpl*>(&attn)) {
    zero_gate_output(*cbam->channel);
    if (!cbam->spatial.is_empty()) zero_gate_output(*cbam->spatial);
    return true;
  }
  return false;
}

/// The constant a zeroed gate multiplies its input by, measured (the same in train and eval mode:
/// nothing of it depends on the input any more).
double constant_gate_value(torch::nn::Module& attn, int64_t channels, const torch::TensorOptions& like) {
  auto* gate = dynamic_cast<Gate*>(&attn);
  if (gate == nullptr) throw std::logic_error("warm_start: a zeroed attention block is not a Gate");
  const bool was_training = attn.is_training();
  attn.eval();
  const auto x = torch::rand({2, channels, 5, 7}, like) + 0.5;
  const auto ratio = (gate->forward(x) / x).to(torch::kDouble);
  attn.train(was_training);
  const double g = ratio.mean().item<double>();
  const double spread = (ratio - g).abs().max().item<double>();
  if (!(g > 0) || spread > 1e-3 * g) throw std::logic_error("warm_start: a zeroed gate is not a positive constant");
  return g;
}

/// Makes a block's new attention neutral (see the header); `block` names it in errors.
void start_neutral(torch::nn::Module& attn, torch::nn::BatchNorm2d& last_bn, const std::string& block,
                   const std::string& path) {
  if (!zero_gate_output(attn))
    throw std::runtime_error("--init-from " + path + ": " + block + ".attn (" + attn.name() +
                             ") is not a gate (SE, ECA, CBAM or its channel/spatial gate), so it cannot start "
                             "neutral; train this model from scratch");
  const double g = constant_gate_value(attn, last_bn->options.num_features(), last_bn->weight.options());
  last_bn->weight.div_(g);
  last_bn->bias.div_(g);
}

/// Applies `fn(name, attn, last_bn)` to every residual block that has attention.
template <typename Fn>
void for_each_attended_block(torch::nn::Module& root, Fn&& fn) {
  for (const auto& item : root.named_modules()) {
    if (const auto parts = residual_block_parts(*item.value()); parts && !parts->attn.is_empty())
      fn(item.key(), *parts->attn.ptr(), parts->last_bn);
  }
}

}  // namespace

WarmStartReport warm_start(Backbone& model, const Checkpoint& source, const std::string& path) {
  check_same_backbone(model.config(), source.config, path);
  auto& root = model.module();
  // The checkpoint's tensors all land in the model (load_state_dict checks names and shapes before it
  // copies); what the model has beyond them may only be attention, started neutral below.
  const auto loaded = load_state_dict(root, source.state, /*strict=*/false);
  if (!loaded.unexpected.empty())
    throw std::runtime_error("--init-from " + path + ": its tensor " + loaded.unexpected.front() + " has no counterpart in " +
                             model.config().name() + " (a checkpoint with attention cannot start a model without it)");
  const std::set<std::string> missing(loaded.missing.begin(), loaded.missing.end());
  for (const auto& name : missing)
    if (name.find("attn.") == std::string::npos)
      throw std::runtime_error("--init-from " + path + ": it has no " + name + " (not an attention tensor)");
  WarmStartReport report;
  report.copied = static_cast<int64_t>(loaded.loaded.size());
  torch::NoGradGuard no_grad;
  for_each_attended_block(root, [&](const std::string& block, torch::nn::Module& attn, torch::nn::BatchNorm2d& bn) {
    size_t absent = 0;
    const auto params = attn.named_parameters();
    for (const auto& p : params) absent += missing.count(block + ".attn." + p.key());
    if (absent == 0) return;  // the checkpoint has this block's attention
    if (absent != params.size())
      throw std::runtime_error("--init-from " + path + ": it has only part of " + block + ".attn");
    start_neutral(attn, bn, block, path);
    ++report.neutral_blocks;
  });
  return report;
}

}  // namespace attnkit::train
