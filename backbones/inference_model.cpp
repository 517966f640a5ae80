#include <attnkit/backbones/inference_model.h>
#include <attnkit/modules/residual_epilogue.h>

#include "detail/frozen_conv.h"

#include <ATen/autocast_mode.h>
#include <ATen/cpu/Utils.h>
#include <torch/nn/functional/pooling.h>

#include <atomic>
#include <optional>
#include <string>

namespace attnkit {

namespace {

bool cpu_has(const std::unordered_map<std::string, c10::IValue>& caps, const char* name) {
  const auto it = caps.find(name);
  return it != caps.end() && it->second.isBool() && it->second.toBool();
}

}  // namespace

bool onednn_bfloat16_available() {
  static const bool available = [] {
    const auto caps = at::cpu::get_cpu_capabilities();
    return (cpu_has(caps, "avx512_bw") && cpu_has(caps, "avx512_vl") && cpu_has(caps, "avx512_dq")) ||
           cpu_has(caps, "avx_ne_convert");
  }();
  return available;
}

bool bfloat16_is_fast(const torch::Device& device) {
  if (device.is_cuda()) return true;
  static const bool fast = [] {
    const auto caps = at::cpu::get_cpu_capabilities();
    return onednn_bfloat16_available() && (cpu_has(caps, "avx512_bf16") || cpu_has(caps, "amx_bf16"));
  }();
  return fast;
}

namespace detail {

/// What the frozen network was made from: every parameter and buffer of the model, by storage and
/// version counter. Any in-place change (optimizer step, load_state_dict, copy_) bumps a version;
/// to(device/dtype) and new tensors change a pointer; either means freezing again.
struct WeightsFingerprint {
  std::vector<std::pair<const void*, int64_t>> tensors;
  bool operator==(const WeightsFingerprint& o) const { return tensors == o.tensors; }
};

WeightsFingerprint fingerprint(const torch::nn::Module& model) {
  WeightsFingerprint f;
  const auto add = [&](const torch::Tensor& t) {
    if (!t.defined()) return;
    // Inference tensors have no version counter; they cannot be changed in place outside inference mode.
    f.tensors.emplace_back(t.data_ptr(), t.is_inference() ? -1 : static_cast<int64_t>(t._version()));
  };
  for (const auto& p : model.parameters()) add(p);
  for (const auto& b : model.buffers()) add(b);
  return f;
}

struct FrozenBlock {
  std::optional<FrozenConv> conv1, conv2, conv3;  // conv3: Bottleneck only
  /// Folded 1×1 conv + BN shortcut, or empty.
  std::optional<FrozenConv> downsample;
  /// A shortcut without a convolution (CIFAR option A: subsample + zero channels), run as it is.
  mutable torch::nn::Sequential parameter_free_shortcut{nullptr};
  /// The model's own attention module (shared, so its recorded maps are the model's); empty = none.
  mutable torch::nn::AnyModule attn;  // mutable: AnyModule::forward is not const
  const FrozenConv& last() const { return conv3 ? *conv3 : *conv2; }
};

struct FrozenNetwork {
  std::optional<FrozenConv> stem;
  bool max_pool = false;
  std::vector<FrozenBlock> blocks;
  std::vector<size_t> stage_last_block;
  torch::Tensor fc_weight, fc_bias;  // float32 (float64 for a float64 network)
  torch::Device device = torch::kCPU;
  torch::ScalarType dtype = torch::kFloat;
  /// The attention modules' parameters are float32 while the maps are bfloat16: they run under
  /// autocast (attnkit's ops compute in float32 on bfloat16 maps; ATen's linear/conv are cast).
  bool autocast_attention = false;
  bool prepacked = false;
  /// The input shape (N, H, W) oneDNN's weight layouts were chosen for; empty when not prepacked
  /// (any shape is as fast). Another shape runs correctly but may reorder weights on every call
  /// (3× the time of a 1×1 convolution at batch 8 with batch-1 layouts, measured), so forward()
  /// freezes again for it.
  std::vector<int64_t> packed_for;
  WeightsFingerprint weights;
  bool serves(const std::vector<int64_t>& shape) const { return packed_for.empty() || shape.empty() || packed_for == shape; }
};

/// The frozen networks of one InferenceModel, newest first: one per input shape seen recently.
struct FrozenCache {
  std::vector<std::shared_ptr<const FrozenNetwork>> nets;
};

}  // namespace detail

namespace {

using detail::FrozenBlock;
using detail::FrozenConv;
using detail::FrozenNetwork;

constexpr auto kChannelsLast = torch::MemoryFormat::ChannelsLast;

/// Autocast to bfloat16 on `device` for one scope, restoring what was there.
class AutocastScope {
 public:
  AutocastScope(c10::DeviceType device, bool enabled) : device_(device), enabled_(enabled) {
    if (!enabled_) return;
    was_enabled_ = at::autocast::is_autocast_enabled(device_);
    was_dtype_ = at::autocast::get_autocast_dtype(device_);
    at::autocast::set_autocast_enabled(device_, true);
    at::autocast::set_autocast_dtype(device_, at::kBFloat16);
    at::autocast::increment_nesting();
  }
  ~AutocastScope() {
    if (!enabled_) return;
    if (at::autocast::decrement_nesting() == 0) at::autocast::clear_cache();
    at::autocast::set_autocast_enabled(device_, was_enabled_);
    at::autocast::set_autocast_dtype(device_, was_dtype_);
  }
  AutocastScope(const AutocastScope&) = delete;
  AutocastScope& operator=(const AutocastScope&) = delete;

 private:
  c10::DeviceType device_;
  bool enabled_;
  bool was_enabled_ = false;
  at::ScalarType was_dtype_ = at::kBFloat16;
};

torch::ScalarType parameter_dtype(torch::nn::Module& m) {
  for (const auto& p : m.parameters()) return p.scalar_type();
  return torch::kFloat;
}

torch::Device parameter_device(torch::nn::Module& m) {
  for (const auto& p : m.parameters()) return p.device();
  return torch::kCPU;
}

/// Shapes through the network, for choosing oneDNN's weight layouts: [N, C, H, W] of a nominal input.
struct NominalShape {
  std::vector<int64_t> size;
  std::vector<int64_t> after(const FrozenConv& conv) const {
    return {size[0], conv.out_channels(), conv.output_size(size[2], 0), conv.output_size(size[3], 1)};
  }
};

FrozenBlock freeze_block(const std::shared_ptr<torch::nn::Module>& module, NominalShape& shape, torch::ScalarType dtype,
                         const torch::Device& device, bool prepack) {
  FrozenBlock b;
  const auto conv = [&](const torch::nn::Conv2d& c, const torch::nn::BatchNorm2d& bn, const std::vector<int64_t>& in) {
    return FrozenConv(*c, bn.get(), dtype, device, prepack, in);
  };
  const std::vector<int64_t> input = shape.size;
  // Each convolution is packed for its own input: the previous one's output, followed through `shape`.
  const auto next = [&](std::optional<FrozenConv>& slot, const torch::nn::Conv2d& c, const torch::nn::BatchNorm2d& bn) {
    slot.emplace(conv(c, bn, shape.size));
    shape.size = shape.after(*slot);
  };
  torch::nn::Sequential downsample{nullptr};
  if (auto* basic = dynamic_cast<BasicBlockImpl*>(module.get())) {
    next(b.conv1, basic->conv1, basic->bn1);
    next(b.conv2, basic->conv2, basic->bn2);
    downsample = basic->downsample;
    b.attn = basic->attn;
  } else if (auto* bottleneck = dynamic_cast<BottleneckImpl*>(module.get())) {
    next(b.conv1, bottleneck->conv1, bottleneck->bn1);
    next(b.conv2, bottleneck->conv2, bottleneck->bn2);
    next(b.conv3, bottleneck->conv3, bottleneck->bn3);
    downsample = bottleneck->downsample;
    b.attn = bottleneck->attn;
  } else {
    TORCH_CHECK(false, "InferenceModel: cannot freeze a residual block of type ", module->name(),
                " (BasicBlock and Bottleneck are supported)");
  }
  if (downsample) {
    auto* c = downsample->size() == 2 ? downsample[0]->as<torch::nn::Conv2d>() : nullptr;
    auto* bn = downsample->size() == 2 ? downsample[1]->as<torch::nn::BatchNorm2d>() : nullptr;
    if (c != nullptr && bn != nullptr) {
      b.downsample.emplace(*c, bn, dtype, device, prepack, input);
    } else {
      TORCH_CHECK(downsample->parameters().empty(), "InferenceModel: a block's shortcut must be conv + BatchNorm or "
                  "have no parameters, got ", *downsample);
      b.parameter_free_shortcut = downsample;
    }
  }
  return b;  // `shape` is now the block's output
}

/// Freezes `model` with oneDNN's layouts chosen for inputs of `shape` (N, H, W; empty: the family's
/// usual input, batch 1).
std::shared_ptr<const FrozenNetwork> freeze(Backbone& model, const InferenceOptions& options, std::vector<int64_t> shape_nhw) {
  auto* core = dynamic_cast<ResNetCore*>(&model);
  TORCH_CHECK(core != nullptr, "InferenceModel: only the ResNet families (ResNet, CifarResNet) can be frozen");
  auto& module = model.module();
  TORCH_CHECK(!module.is_training(), "InferenceModel: the model is in training mode; call model->module().eval() "
              "before freezing (freezing folds BatchNorm's running statistics)");
  const auto dtype = options.dtype();
  TORCH_CHECK(dtype == torch::kFloat || dtype == torch::kBFloat16 || dtype == torch::kDouble,
              "InferenceModel: dtype must be float32, bfloat16 or float64, got ", dtype);
  const auto model_dtype = parameter_dtype(module);
  TORCH_CHECK(dtype == model_dtype || (dtype == torch::kBFloat16 && model_dtype == torch::kFloat),
              "InferenceModel: options dtype ", dtype, " on a model with ", model_dtype,
              " parameters (use the model's dtype, or bfloat16 on a float32 model)");
  torch::NoGradGuard no_grad;
  auto net = std::make_shared<FrozenNetwork>();
  net->device = parameter_device(module);
  net->dtype = dtype;
  net->autocast_attention = dtype != model_dtype;
  net->prepacked = detail::can_prepack(net->device, dtype, options.prepack());
  net->weights = detail::fingerprint(module);
  const auto config = model.config();
  const bool imagenet_stem = config.stem == Stem::ImageNet && config.family == ModelFamily::ResNet;
  // oneDNN picks a weight layout per input shape; any shape runs with it. Without a shape: the
  // family's usual input (224 px ImageNet, 32 px CIFAR-sized), batch 1.
  if (shape_nhw.empty()) shape_nhw = {1, imagenet_stem ? 224 : 32, imagenet_stem ? 224 : 32};
  if (net->prepacked) net->packed_for = shape_nhw;
  NominalShape shape{{shape_nhw[0], config.in_channels, shape_nhw[1], shape_nhw[2]}};
  net->stem.emplace(*core->conv1, core->bn1.get(), dtype, net->device, options.prepack(), shape.size);
  net->max_pool = imagenet_stem;
  shape.size = shape.after(*net->stem);
  if (net->max_pool) shape.size = {shape.size[0], shape.size[1], (shape.size[2] - 1) / 2 + 1, (shape.size[3] - 1) / 2 + 1};
  for (const auto& stage : model.stages()) {
    for (const auto& block : *stage) net->blocks.push_back(freeze_block(block.ptr(), shape, dtype, net->device, options.prepack()));
    net->stage_last_block.push_back(net->blocks.size() - 1);
  }
  // The head in float32 (float64 for a float64 network): the logits users compare and softmax.
  const auto head_dtype = dtype == torch::kDouble ? torch::kDouble : torch::kFloat;
  net->fc_weight = core->fc->weight.detach().to(head_dtype).contiguous();
  net->fc_bias = core->fc->bias.detach().to(head_dtype).contiguous();
  return net;
}

/// The shortcut of block `b` on input x (channels-last, the frozen dtype).
torch::Tensor shortcut_of(const FrozenBlock& b, const torch::Tensor& x) {
  if (b.downsample) return b.downsample->forward(x, /*relu=*/false);
  if (b.parameter_free_shortcut) return b.parameter_free_shortcut->forward(x).contiguous(kChannelsLast);
  return x;
}

/// Block `b` on x. With `may_overwrite_input`, an identity shortcut's buffer (x itself) receives the
/// block's output (callers that keep no other reference to x).
torch::Tensor run_block(const FrozenNetwork& net, const FrozenBlock& b, const torch::Tensor& x, bool may_overwrite_input) {
  auto y = b.conv1->forward(x, /*relu=*/true);
  if (b.conv3) y = b.conv2->forward(y, /*relu=*/true);
  auto shortcut = shortcut_of(b, x);
  const FrozenConv& last = b.last();
  // The block's output may go into the shortcut's buffer when nothing else holds it: one tensor
  // fewer, and memory the residual read has just brought into cache.
  const bool shortcut_is_ours = b.downsample.has_value() || may_overwrite_input || b.parameter_free_shortcut;
  if (b.attn.is_empty())
    return shortcut_is_ours ? last.forward_add_relu_into(y, shortcut) : last.forward_add_relu(y, shortcut);
  auto pre_attention = last.forward(y, /*relu=*/false);
  auto* epilogue = dynamic_cast<ResidualEpilogue*>(b.attn.ptr().get());
  torch::Tensor out;
  {
    AutocastScope autocast(net.device.type(), net.autocast_attention);
    if (epilogue)
      out = shortcut_is_ours ? epilogue->forward_add_relu_into(pre_attention, shortcut)
                             : epilogue->forward_add_relu(pre_attention, shortcut);
    else
      out = b.attn.forward(pre_attention);
  }
  // Under autocast a composite block may hand back float32; attention without a channels-last kernel
  // hands back NCHW. The next convolution wants the frozen dtype, channels-last.
  out = out.to(net.dtype).contiguous(kChannelsLast);
  return epilogue ? out : out.add_(shortcut).relu_();
}

torch::Tensor run_stem(const FrozenNetwork& net, const torch::Tensor& x) {
  auto input = x.to(net.device, net.dtype).contiguous(kChannelsLast);
  auto y = net.stem->forward(input, /*relu=*/true);
  if (net.max_pool) y = at::max_pool2d(y, {3, 3}, {2, 2}, {1, 1});
  return y;
}

std::vector<torch::Tensor> run_features(const FrozenNetwork& net, const torch::Tensor& x) {
  std::vector<torch::Tensor> out;
  auto y = run_stem(net, x);
  bool y_handed_out = false;  // y is a stage output in `out`: no block may write into it
  size_t stage = 0;
  for (size_t i = 0; i < net.blocks.size(); ++i) {
    y = run_block(net, net.blocks[i], y, /*may_overwrite_input=*/!y_handed_out);
    y_handed_out = net.stage_last_block[stage] == i;
    if (y_handed_out) {
      out.push_back(y);
      ++stage;
    }
  }
  return out;
}

torch::Tensor run_head(const FrozenNetwork& net, const torch::Tensor& last) {
  const auto pooled = at::adaptive_avg_pool2d(last, {1, 1}).flatten(1).to(net.fc_weight.scalar_type());
  return at::addmm(net.fc_bias, pooled, net.fc_weight.t());
}

}  // namespace

// ---- InferenceModel -------------------------------------------------------------------------------

namespace {
/// How many input shapes one InferenceModel keeps frozen networks for (the oldest is dropped).
constexpr size_t kShapesKept = 4;

std::vector<int64_t> shape_of(const torch::Tensor& x) { return {x.size(0), x.size(2), x.size(3)}; }
}  // namespace

InferenceModel::InferenceModel(std::shared_ptr<Backbone> model, const InferenceOptions& options)
    : model_(std::move(model)), options_(options), freeze_mutex_(std::make_unique<std::mutex>()) {
  TORCH_CHECK(model_ != nullptr, "InferenceModel: model is null");
  auto cache = std::make_shared<detail::FrozenCache>();
  cache->nets.push_back(freeze(*model_, options_, {}));
  frozen_ = std::move(cache);
}

InferenceModel::~InferenceModel() = default;
InferenceModel::InferenceModel(InferenceModel&&) noexcept = default;
InferenceModel& InferenceModel::operator=(InferenceModel&&) noexcept = default;

void InferenceModel::check_eval_mode() const {
  TORCH_CHECK(!model_->module().is_training(), "InferenceModel: the model was switched to training mode after "
              "freezing; call model->module().eval() (frozen BatchNorm uses running statistics)");
}

std::shared_ptr<const detail::FrozenNetwork> InferenceModel::current(const std::vector<int64_t>& shape) {
  check_eval_mode();
  const auto weights = detail::fingerprint(model_->module());
  const auto find = [&](const detail::FrozenCache& cache) -> std::shared_ptr<const FrozenNetwork> {
    for (const auto& net : cache.nets)
      if (net->weights == weights && net->serves(shape)) return net;
    return nullptr;
  };
  if (auto net = find(*std::atomic_load(&frozen_))) return net;
  std::lock_guard<std::mutex> lock(*freeze_mutex_);
  const auto cache = std::atomic_load(&frozen_);
  if (auto net = find(*cache)) return net;  // another thread froze it meanwhile
  auto updated = std::make_shared<detail::FrozenCache>();
  auto net = freeze(*model_, options_, shape);
  updated->nets.push_back(net);
  // Networks of other shapes stay while the weights they were made from are still the model's.
  for (const auto& old : cache->nets)
    if (old->weights == weights && updated->nets.size() < kShapesKept) updated->nets.push_back(old);
  std::atomic_store(&frozen_, std::shared_ptr<const detail::FrozenCache>(std::move(updated)));
  return net;
}

void InferenceModel::refreeze() {
  std::lock_guard<std::mutex> lock(*freeze_mutex_);
  auto cache = std::make_shared<detail::FrozenCache>();
  cache->nets.push_back(freeze(*model_, options_, {}));
  std::atomic_store(&frozen_, std::shared_ptr<const detail::FrozenCache>(std::move(cache)));
}

bool InferenceModel::prepacked() const { return std::atomic_load(&frozen_)->nets.front()->prepacked; }

size_t InferenceModel::num_blocks() const { return std::atomic_load(&frozen_)->nets.front()->blocks.size(); }

torch::Tensor InferenceModel::forward(const torch::Tensor& x) {
  detail::check_image_input(x, model_->config().in_channels, "InferenceModel");
  const auto net = current(shape_of(x));
  torch::NoGradGuard no_grad;
  return run_head(*net, run_features(*net, x).back());
}

std::vector<torch::Tensor> InferenceModel::features(const torch::Tensor& x) {
  detail::check_image_input(x, model_->config().in_channels, "InferenceModel");
  const auto net = current(shape_of(x));
  torch::NoGradGuard no_grad;
  return run_features(*net, x);
}

torch::Tensor InferenceModel::forward_stem(const torch::Tensor& x) {
  detail::check_image_input(x, model_->config().in_channels, "InferenceModel");
  const auto net = current(shape_of(x));
  torch::NoGradGuard no_grad;
  return run_stem(*net, x);
}

torch::Tensor InferenceModel::forward_block(size_t index, const torch::Tensor& y) {
  const auto net = current({});
  TORCH_CHECK(index < net->blocks.size(), "InferenceModel::forward_block: index ", index, " out of range (the model has ",
              net->blocks.size(), " blocks)");
  torch::NoGradGuard no_grad;
  return run_block(*net, net->blocks[index], y.to(net->device, net->dtype).contiguous(kChannelsLast), false);
}

torch::Tensor InferenceModel::forward_head(const torch::Tensor& last_stage_output) {
  const auto net = current({});
  TORCH_CHECK(last_stage_output.dim() == 4 && last_stage_output.size(1) == net->fc_weight.size(1),
              "InferenceModel::forward_head: expected the last stage's output [N, ", net->fc_weight.size(1),
              ", H, W], got ", last_stage_output.sizes());
  torch::NoGradGuard no_grad;
  return run_head(*net, last_stage_output);
}

}  // namespace attnkit
