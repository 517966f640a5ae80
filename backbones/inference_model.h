// InferenceModel: a backbone frozen for inference — the same network, computed the way deployment
// runtimes compute it.
//
//   auto model = attnkit::make_model("resnet50-cbam", 1000);  // or load_model(...)
//   model->module().eval();
//   attnkit::InferenceModel net(model);                        // folds and packs once
//   torch::Tensor logits = net.forward(images);                // [N, 1000] float32
//
// What freezing does, per convolution: BatchNorm (its running statistics) is folded into the
// convolution's weight and bias, the weight is reordered once into oneDNN's blocked layout for this
// CPU, and the convolution runs as one oneDNN primitive with its epilogue inside: bias + ReLU, or
// bias + residual add + ReLU at a block's end. Activations stay channels-last from the stem to the
// head (no layout reorders between layers), nothing is recorded for autograd, and a block's attention
// runs its fused op on the channels-last map with the residual add + ReLU in the op's last pass. The
// attention blocks are the model's own modules (not copies): their recorded maps (explain(), native
// maps) come out of this path.
//
// The original module stays the reference and the training path: InferenceModel never changes it.
// If its weights change after freezing (an optimizer step, load_state_dict, to(device)), the next
// forward() freezes again before it runs — results are never stale. The model must be in eval mode
// (freezing folds the running statistics); a model in training mode is an error, at construction
// and at every call.
//
// oneDNN chooses weight layouts per input shape, so the weights are packed for the shape (batch,
// height, width) of the inputs forward() sees: a new shape is frozen once more (the last 4 shapes are
// kept).
//
// Thread safety: forward() and features() may be called from several threads at once on one
// InferenceModel (the frozen weights are immutable and shared; a re-freeze swaps them atomically).
// Recording attention maps (explain) is per module and is not meant to run concurrently.
//
// Precision: float32 (the default) or bfloat16 (InferenceOptions::dtype): weights and activations in
// bfloat16, convolutions accumulating in float32 inside oneDNN, the attention ops computing in float32
// on bfloat16 maps, logits returned in float32. bfloat16_is_fast() says whether this CPU (AVX512-BF16
// or AMX) makes that faster; elsewhere it is correct but slow.
//
// On CUDA, for float64, or with InferenceOptions::prepack(false), the folded convolutions run
// through ATen's conv2d (cuDNN on CUDA) instead of prepacked oneDNN primitives, still channels-last.
#pragma once

#include <attnkit/backbones/resnet.h>

#include <torch/arg.h>
#include <torch/types.h>

#include <cstdint>
#include <memory>
#include <mutex>
#include <vector>

namespace attnkit {

/// Whether bfloat16 inference is faster than float32 on `device`: CUDA, or a CPU on which oneDNN has
/// native bfloat16 instructions (AVX512-BF16 or AMX-BF16).
bool bfloat16_is_fast(const torch::Device& device);

/// Whether oneDNN can run bfloat16 convolutions on this CPU at all (AVX-512 BW/VL/DQ or AVX-NE-CONVERT;
/// ATen's own condition). Without it, bfloat16 inference falls back to ATen's slow bfloat16 convolution.
bool onednn_bfloat16_available();

struct InferenceOptions {
  /// float32 or bfloat16 (CPU and CUDA), or float64 (reference runs).
  TORCH_ARG(torch::ScalarType, dtype) = torch::kFloat;
  /// Reorder the weights into oneDNN's blocked layout once and run oneDNN's fused convolutions (CPU;
  /// float32, and bfloat16 where onednn_bfloat16_available()). Off: ATen's conv2d on the folded weights.
  TORCH_ARG(bool, prepack) = true;
};

namespace detail {
struct FrozenNetwork;
struct FrozenCache;
}

class InferenceModel {
 public:
  /// Freezes `model` (in eval mode) for inference on the device its parameters are on.
  explicit InferenceModel(std::shared_ptr<Backbone> model, const InferenceOptions& options = {});
  ~InferenceModel();
  InferenceModel(InferenceModel&&) noexcept;
  InferenceModel& operator=(InferenceModel&&) noexcept;

  /// x: [N, in_channels, H, W], any floating dtype, on the model's device (moved there if not).
  /// Returns logits [N, num_classes] as model->forward(x) would: float32 (float64 for a float64 network).
  torch::Tensor forward(const torch::Tensor& x);
  /// Every stage's output (channels-last, in options().dtype), as model->features(x) would.
  std::vector<torch::Tensor> features(const torch::Tensor& x);

  // Block by block, for explain(): forward_head(stage outputs) of forward_block(i, ...) over every
  // block of forward_stem(x) is forward(x).
  /// conv1 + bn1 + ReLU (+ max-pool for the ImageNet stem), channels-last in options().dtype.
  torch::Tensor forward_stem(const torch::Tensor& x);
  /// Residual block `index` (0 .. num_blocks()-1, stage by stage, as model->stages() lists them), on
  /// the newest frozen network (any of them computes the same; forward_stem() freezes for its input).
  /// Does not write into `y`.
  torch::Tensor forward_block(size_t index, const torch::Tensor& y);
  /// Global average pool of the last stage's output and fc: the logits.
  torch::Tensor forward_head(const torch::Tensor& last_stage_output);
  size_t num_blocks() const;

  /// Freezes again from the model's current weights (forward() does it by itself when they changed).
  void refreeze();
  /// The model this was frozen from (the reference; its attention modules are shared).
  Backbone& model() { return *model_; }
  const InferenceOptions& options() const { return options_; }
  /// Whether the convolutions run as prepacked oneDNN primitives (else ATen's conv2d).
  bool prepacked() const;

 private:
  /// The frozen network for the model's current weights and inputs of `shape` (N, H, W; empty: any),
  /// frozen first when there is none.
  std::shared_ptr<const detail::FrozenNetwork> current(const std::vector<int64_t>& shape);
  void check_eval_mode() const;

  std::shared_ptr<Backbone> model_;
  InferenceOptions options_;
  std::unique_ptr<std::mutex> freeze_mutex_;
  std::shared_ptr<const detail::FrozenCache> frozen_;  // read and swapped with std::atomic_load/store
};

}  // namespace attnkit
