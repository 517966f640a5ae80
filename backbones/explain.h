// Where a model looks: its own attention maps ("native") and the class-activation-map family, for
// any attnkit Backbone, batched, on any device the model runs on.
//
//   native        the spatial maps the attention blocks compute: CBAM/spatial-gate maps (N×1×H×W) as
//                 they are; local and self attention as the weight each position receives, averaged
//                 over heads and over queries, or from one query point (ExplainOptions::query_*).
//                 Channel-only gates (SE, ECA, channel) have no spatial map and are skipped.
//   gradcam       Selvaraju et al. 2017            hirescam      Draelos & Carin 2020
//   gradcam++     Chattopadhay et al. 2018         xgradcam      Fu et al. 2020
//   layercam      Jiang et al. 2021                eigencam      Muhammad & Yeasin 2020
//   eigengradcam  Eigen-CAM of G ⊙ A               scorecam      Wang et al. 2020
//   ablationcam   Desai & Ramaswamy 2020
// The names and the formulas are pytorch-grad-cam's (PyPI grad-cam 1.5.7), constants included, so the
// maps agree with it to float32 rounding (tests/test_explain.cpp, tests/python/refs_explain.py).
//
// Exactly what is computed, with A [C, h, w] one image's activation at the layer, y the target
// class's logit, G = ∂y/∂A, and X the "weighted activation" [C, h, w] each method forms:
//   gradcam       w_c = mean_hw G_c;                                     X_c = w_c A_c
//   hirescam      X = G ⊙ A
//   gradcam++     α = G² / (2G² + (Σ_hw A_c)·G³ + 1e-6), α = 0 where G = 0;
//                 w_c = Σ_hw α·ReLU(G_c);                                X_c = w_c A_c
//   xgradcam      w_c = Σ_hw G_c A_c / (Σ_hw A_c + 1e-7);               X_c = w_c A_c
//   layercam      X = ReLU(G) ⊙ A
//   scorecam      M_c = A_c upsampled to the input size (bilinear, corners aligned), min-max scaled
//                 (range + 1e-8); s_c = y(input ⊙ M_c); w = softmax_c(s);  X_c = w_c A_c
//                 (C masked forwards per image, ExplainOptions::batch_size at a time)
//   ablationcam   s_c = y with channel c of A set to 0 (where min A = 0, else min A − 1e7) and the
//                 network run on from the layer; w_c = (y − s_c) / y;   X_c = w_c A_c
//                 (C partial forwards per image, batch_size at a time)
//   eigencam      map = ReLU(P(A))            eigengradcam  map = ReLU(P(G ⊙ A))
//   every other   map = ReLU(Σ_c X_c), or ReLU(P(X)) with ExplainOptions::eigen_smooth
// where P(X) = X as [hw, C], each channel's spatial mean removed, projected on its first right
// singular vector, the sign chosen so that P(X) correlates positively with Σ_c X_c (the SVD's sign
// is arbitrary; pytorch-grad-cam leaves it to its LAPACK, attnkit fixes it).
//   native        CBAM / spatial gate: the gate m itself ([N, 1, H, W] → [N, H, W]).
//                 local (LocalAttention2d, k×k windows): "attention received" by each key position:
//                   averaged: R(key) = (1/L) Σ_query mean_heads P(query → key), L = H·W queries;
//                   query point: R(key) = mean_heads P(q → key), zero outside q's window;
//                 self / nonlocal (SelfAttention2d): the same, from the recorded rows (record_queries
//                   is set to every position, or to the query point, for that forward only; averaging
//                   over all queries costs heads·L² floats per image while it runs).
//                 Unnormalised, each local/self map sums to 1 over the positions.
// Smoothing, as pytorch-grad-cam defines it:
//   aug_smooth    test-time augmentation: the input unflipped and flipped left-right, each multiplied
//                 by 0.9, 1.0 and 1.1 (the pixel values, ttach's Multiply), as one batch of 6N; each
//                 map normalised to [0, 1], flipped back and the six averaged. The targets are chosen
//                 once, on the unaugmented input (pytorch-grad-cam with targets=None lets every
//                 augmented copy pick its own top-1).
//   eigen_smooth  P(X) instead of Σ_c X_c (above).
// Targets: ExplainOptions::target (one class for every image), else each image's top_k classes (one
// Explanation per rank; top_k = 1, the default, is the prediction). Gradient methods run one forward
// and one backward per rank; Score-CAM and Ablation-CAM score every rank from the same forwards.
// Layers: a block name ("layer3.1") is that block's output (native: that block's attention map);
// a stage name ("layer3") is the stage's output for CAMs and, for native, every block of the stage
// that has a spatial map; "all" is every stage for CAMs and every block with a spatial map for
// native. With ExplainOptions::combine_layers the layers' maps are averaged into one, as
// pytorch-grad-cam aggregates several target layers: each map normalised, resized to the input
// size (bilinear, half-pixel centres, as cv2.resize), averaged, normalised again. The query point
// (query_x, query_y) ∈ [0, 1]² selects position (min(⌊y·h⌋, h-1), min(⌊x·w⌋, w-1)) of each map.
//
// Every map is returned per image at the layer's resolution (combined: the input's), min-max
// normalised to [0, 1] (an all-constant map, to 1e-6 of its largest magnitude, becomes 0) unless
// ExplainOptions::normalize is off. pytorch-grad-cam divides by range + 1e-7 instead; the two differ
// by at most 1e-7 / range. The model's train/eval mode is left as it is (call eval() first); the
// attention blocks' recording flags and record_queries are restored, parameters' .grad are not
// touched, and the gradient CAMs work under a torch::NoGradGuard too. The input is moved to the
// model's device.
#pragma once

#include <attnkit/backbones/resnet.h>

#include <torch/types.h>

#include <string>
#include <vector>

namespace attnkit {

class InferenceModel;

/// The values' order is the order of explain_method_names() (append new methods at the end).
enum class ExplainMethod {
  Auto, Native, GradCam, GradCamPlusPlus, LayerCam, EigenCam,
  HiResCam, XGradCam, EigenGradCam, ScoreCam, AblationCam
};

/// "auto", "native", "gradcam", "gradcam++", "layercam", "eigencam", "hirescam", "xgradcam",
/// "eigengradcam", "scorecam", "ablationcam" (pytorch-grad-cam's spellings).
const std::vector<std::string>& explain_method_names();
/// Parses a name of explain_method_names(); an unknown name is an error listing the valid ones.
ExplainMethod explain_method_from_name(const std::string& name);
std::string explain_method_name(ExplainMethod method);
/// Every CAM (everything but Auto and Native), in explain_method_names() order.
std::vector<ExplainMethod> cam_methods();
/// Whether `method` needs the target's gradient (one backward pass; not on the inference path).
bool explain_needs_gradient(ExplainMethod method);
/// Whether `method`'s map depends on the target class (native maps and Eigen-CAM do not).
bool explain_uses_target(ExplainMethod method);

struct ExplainOptions {
  /// Auto = Native when the model has spatial attention maps, else GradCam.
  ExplainMethod method = ExplainMethod::Auto;
  /// Which layers: block names ("layer3.1"), stage names ("layer3") or "all". Empty = the method's
  /// default: native → every block with a spatial map; CAMs → the last stage's output.
  std::vector<std::string> layers;
  /// Class explained for every image; -1 = each image's top_k predictions.
  int64_t target = -1;
  /// With target = -1: explain each image's k highest-scoring classes, one Explanation per rank (≥ 1).
  int64_t top_k = 1;
  /// Native local/self attention: a query point in normalised map coordinates ([0, 1], x then y);
  /// negative = the average over all queries.
  double query_x = -1, query_y = -1;
  /// Min-max normalise every image's map to [0, 1] (off: the raw map: gate values, attention
  /// received, or the CAM before scaling; with aug_smooth, the mean of the six normalised maps).
  bool normalize = true;
  /// Average the layers' maps into one at the input's resolution (pytorch-grad-cam's aggregation of
  /// several target layers); its label joins the layer names with '+'.
  bool combine_layers = false;
  /// Test-time augmentation (flip × 0.9/1.0/1.1), as pytorch-grad-cam's aug_smooth.
  bool aug_smooth = false;
  /// First principal component of the weighted activations instead of their sum, as
  /// pytorch-grad-cam's eigen_smooth (no effect on native, eigencam, eigengradcam).
  bool eigen_smooth = false;
  /// Score-CAM and Ablation-CAM: masked (or ablated) forwards per pass, in [1, 4096]; bounds their
  /// memory to about batch_size images (Score-CAM) or layer activations (Ablation-CAM).
  int64_t batch_size = 32;
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
  /// Which of the top_k classes (0 = the top-1, or the one ExplainOptions::target).
  int64_t rank = 0;
  /// The method actually used (Auto resolved).
  ExplainMethod method = ExplainMethod::Native;
  std::vector<LayerMap> maps;
};

/// Runs `input` [N, C, H, W] through `model` and computes the maps `options` asks for (the first
/// rank's, when top_k > 1). Errors (c10::Error) name the problem and the argument: an unknown layer
/// (listing the valid ones), native maps on a model without spatial attention, a target outside
/// [0, num_classes), top_k outside [1, num_classes], batch_size outside [1, 4096].
Explanation explain(Backbone& model, const torch::Tensor& input, const ExplainOptions& options = {});

/// Several methods from ONE forward pass and at most one backward per target rank (e.g. a grid of
/// every method): one Explanation per entry of `methods` and rank, method by method and rank by rank
/// within (methods.size() × top_k in all), sharing logits and targets; options.method is ignored,
/// the rest applies to every method.
std::vector<Explanation> explain(Backbone& model, const torch::Tensor& input, const std::vector<ExplainMethod>& methods,
                                 const ExplainOptions& options = {});

/// The same from the inference path (InferenceModel): the forward pass runs on the frozen network,
/// whose attention modules are the model's own, so native maps are recorded there; Eigen-CAM reads its
/// channels-last activations, Score-CAM and Ablation-CAM run their forwards there. Gradient methods
/// (explain_needs_gradient) are an error: they need autograd, so run them on model.model().
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
