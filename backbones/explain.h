// Where a model looks: its own attention maps ("native") and the class-activation-map family, for
// any attnkit Backbone, in one forward pass (plus one backward for the gradient-based CAMs).
//
//   native     the spatial maps the attention blocks compute: CBAM/spatial-gate maps (N×1×H×W) as
//              they are; local and self attention as the weight each position receives, averaged
//              over heads and over queries, or from one query point (ExplainOptions::query_*).
//              Channel-only gates (SE, ECA, channel) have no spatial map and are skipped.
//   gradcam    Selvaraju et al. 2017: ReLU(Σ_c mean_hw(∂y/∂A_c) · A_c)
//   gradcam++  Chattopadhay et al. 2018: positive-gradient weights with the closed-form α
//   layercam   Jiang et al. 2021: ReLU(Σ_c ReLU(∂y/∂A_c) ⊙ A_c)
//   eigencam   Muhammad & Yeasin 2020: projection of A on its first principal component (no gradient)
// where A is the activation of the chosen layer and y the target class's logit.
//
// Exactly what is computed, with A [C, h, w] one image's activation and G = ∂y/∂A:
//   gradcam    w_c = mean_hw G_c;                         map = ReLU(Σ_c w_c A_c)
//   gradcam++  α = G² / (2G² + (Σ_hw A_c)·G³), α = 0 where that denominator is 0 (the paper's closed
//              form for Y = exp(score); pytorch-grad-cam adds 1e-7 to the denominator instead, which
//              changes α where gradients are small); w_c = Σ_hw α·ReLU(G_c); map = ReLU(Σ_c w_c A_c)
//   layercam   map = ReLU(Σ_c ReLU(G_c) ⊙ A_c)
//   eigencam   M = Aᵀ as [hw, C] with each channel's spatial mean removed, v = first right singular
//              vector of M (torch.linalg.svd), map = ReLU(M v), the sign of v chosen so that M v
//              correlates positively with Σ_c A_c (the SVD's sign is arbitrary; pytorch-grad-cam
//              leaves it to chance, attnkit fixes it).
//   native     CBAM / spatial gate: the gate m itself ([N, 1, H, W] → [N, H, W]).
//              local (LocalAttention2d, k×k windows): "attention received" by each key position:
//                averaged: R(key) = (1/L) Σ_query mean_heads P(query → key), L = H·W queries;
//                query point: R(key) = mean_heads P(q → key), zero outside q's window;
//              self / nonlocal (SelfAttention2d): the same, from the recorded rows (record_queries
//                is set to every position, or to the query point, for that forward only; averaging
//                over all queries costs heads·L² floats per image while it runs).
//              Unnormalised, each local/self map sums to 1 over the positions.
// Layers: a block name ("layer3.1") is that block's output (native: that block's attention map);
// a stage name ("layer3") is the stage's output for CAMs and, for native, every block of the stage
// that has a spatial map; "all" is every stage for CAMs and every block with a spatial map for
// native. The query point (query_x, query_y) ∈ [0, 1]² selects position
// (min(⌊y·h⌋, h-1), min(⌊x·w⌋, w-1)) of each map.
//
// Every map is returned per image at the layer's resolution, min-max normalised to [0, 1] (an
// all-constant map, to 1e-6 of its largest magnitude, becomes 0) unless ExplainOptions::normalize
// is off. The model's train/eval mode is left as it is (call eval() first); the attention blocks'
// recording flags and record_queries are restored, parameters' .grad are not touched, and the
// gradient CAMs work under a torch::NoGradGuard too. The input is moved to the model's device.
#pragma once

#include <attnkit/backbones/resnet.h>

#include <torch/types.h>

#include <string>
#include <vector>

namespace attnkit {

class InferenceModel;

enum class ExplainMethod { Auto, Native, GradCam, GradCamPlusPlus, LayerCam, EigenCam };

/// "auto", "native", "gradcam", "gradcam++", "layercam", "eigencam".
const std::vector<std::string>& explain_method_names();
/// Parses a name of explain_method_names(); an unknown name is an error listing the valid ones.
ExplainMethod explain_method_from_name(const std::string& name);
std::string explain_method_name(ExplainMethod method);

struct ExplainOptions {
  /// Auto = Native when the model has spatial attention maps, else GradCam.
  ExplainMethod method = ExplainMethod::Auto;
  /// Which layers: block names ("layer3.1"), stage names ("layer3") or "all". Empty = the method's
  /// default: native → every block with a spatial map; CAMs → the last stage's output.
  std::vector<std::string> layers;
  /// Class explained for every image; -1 = each image's top-1 prediction.
  int64_t target = -1;
  /// Native local/self attention: a query point in normalised map coordinates ([0, 1], x then y);
  /// negative = the average over all queries.
  double query_x = -1, query_y = -1;
  /// Min-max normalise every image's map to [0, 1] (off: the raw map: gate values, attention
  /// received, or the CAM before scaling).
  bool normalize = true;
};

/// One layer's maps for the whole batch.
struct LayerMap {
  /// Block or stage name, e.g. "layer3.1" or "layer4".
  std::string layer;
  /// float32 [N, h, w] in [0, 1], on the model's device.
  torch::Tensor map;
};

struct Explanation {
  /// The forward pass's logits, [N, num_classes] (the prediction comes from the same pass as the maps).
  torch::Tensor logits;
  /// [N] the class each image's maps explain.
  torch::Tensor targets;
  /// The method actually used (Auto resolved).
  ExplainMethod method = ExplainMethod::Native;
  std::vector<LayerMap> maps;
};

/// Runs `input` [N, C, H, W] through `model` and computes the maps `options` asks for. Errors
/// (c10::Error) name the problem: an unknown layer (listing the valid ones), native maps on a model
/// without spatial attention, a target outside [0, num_classes).
Explanation explain(Backbone& model, const torch::Tensor& input, const ExplainOptions& options = {});

/// Several methods from ONE forward pass and at most one backward (e.g. a grid of every method):
/// one Explanation per entry of `methods`, in order, sharing logits and targets; options.method is
/// ignored, the rest applies to every method.
std::vector<Explanation> explain(Backbone& model, const torch::Tensor& input, const std::vector<ExplainMethod>& methods,
                                 const ExplainOptions& options = {});

/// The same from the inference path (InferenceModel): the forward pass runs on the frozen network,
/// whose attention modules are the model's own, so native maps are recorded there; Eigen-CAM reads its
/// channels-last activations. Gradient methods (Grad-CAM, Grad-CAM++, LayerCAM) are an error: they
/// need autograd, so run them on model.model().
Explanation explain(InferenceModel& model, const torch::Tensor& input, const ExplainOptions& options = {});
std::vector<Explanation> explain(InferenceModel& model, const torch::Tensor& input,
                                 const std::vector<ExplainMethod>& methods, const ExplainOptions& options = {});

/// Whether any block of `model` records a spatial attention map (what Auto checks).
bool has_spatial_attention(Backbone& model);

/// The layer names `method` accepts for `model` (for --help, errors and the `l` key of stream):
/// stage names, then block names, then "all" (native: only those with a spatial map; empty when
/// there is none).
std::vector<std::string> explainable_layers(Backbone& model, ExplainMethod method);

}  // namespace attnkit
