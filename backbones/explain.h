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
// Every map is returned per image at the layer's resolution, min-max normalised to [0, 1] (an
// all-constant map becomes 0). The model's train/eval mode is left as it is (call eval() first).
#pragma once

#include <attnkit/backbones/resnet.h>

#include <torch/types.h>

#include <string>
#include <vector>

namespace attnkit {

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

/// The layer names `method` accepts for `model` (for --help, errors and the `l` key of stream).
std::vector<std::string> explainable_layers(Backbone& model, ExplainMethod method);

}  // namespace attnkit
