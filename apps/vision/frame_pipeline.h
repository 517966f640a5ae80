// The two working stages of `attnkit stream` between capture and display:
//   FrameAnalyzer    frame → network input → explain(): prediction and one attention map (inference
//                    thread); the method and layer can change from frame to frame (keys m and l).
//   HeatmapRenderer  map → frame resolution, temporal smoothing, colour overlay, label with the
//                    prediction and the FPS (drawing thread).
#pragma once

#include "preprocess.h"
#include "video_source.h"

#include <attnkit/backbones/checkpoint.h>
#include <attnkit/backbones/explain.h>
#include <attnkit/backbones/inference_model.h>

#include <opencv2/core.hpp>
#include <torch/types.h>

#include <map>
#include <memory>
#include <string>
#include <vector>

namespace attnkit::vision {

/// What the viewer chose: the explain method (never Auto) and the layer ("" = the method's default
/// layers, averaged into one map).
struct ViewChoice {
  ExplainMethod method = ExplainMethod::GradCam;
  std::string layer;
};

/// One analysed frame.
struct Analysis {
  Frame frame;
  InputWindow window;
  /// float32 [h, w] in [0, 1] on the CPU, at the layer's resolution.
  torch::Tensor map;
  int64_t label = -1;
  /// Of `label`, calibrated with the checkpoint's temperature (Checkpoint::temperature()).
  double probability = 0;
  ViewChoice view;
  /// Preprocessing plus explain() (forward, and backward for the gradient CAMs), wall time.
  double inference_ms = 0;
  /// The preprocessing part of inference_ms (resize, crop, normalise).
  double preprocess_ms = 0;
};

class FrameAnalyzer {
 public:
  /// `model` is moved to `device`, converted to `dtype` (float32, or bfloat16/float16 for speed:
  /// see reduced_precision_is_fast) and put in eval mode. With `inference_path`, the methods that need
  /// no gradient (native, eigencam, scorecam, ablationcam) run on an InferenceModel frozen from it
  /// (float16 excepted).
  FrameAnalyzer(std::shared_ptr<Backbone> model, const Checkpoint& info, const torch::Device& device,
                torch::ScalarType dtype = torch::kFloat32, bool inference_path = true);

  /// Whether `method`'s maps come from the inference path (else from the module, with autograd).
  bool inference_path(ExplainMethod method) const;

  /// The explain options every frame uses (smoothing, Score-CAM/Ablation-CAM batch); the method and
  /// layers come from each analyze() call's view.
  void set_explain_options(const ExplainOptions& options) { options_ = options; }

  /// Analyses `frames` as one batch: one forward (and one backward for the gradient CAMs, or the
  /// masked forwards of Score-CAM and Ablation-CAM) for all of
  /// them, which keeps the cores busier than one frame at a time. The result has one Analysis per
  /// frame, in order; inference_ms and preprocess_ms are the batch's times shared out per frame.
  std::vector<Analysis> analyze(std::vector<Frame> frames, const ViewChoice& view);

  /// Methods the m key cycles through for this model (native only when it has spatial attention).
  const std::vector<ExplainMethod>& methods() const { return methods_; }
  /// `requested` with Auto resolved for this model; throws (listing the valid ones) when the model
  /// cannot use it.
  ExplainMethod resolve(ExplainMethod requested) const;
  /// Layers the l key cycles through for `method`: "" (the default) first, then every named layer.
  const std::vector<std::string>& layers(ExplainMethod method) const;
  /// Class name of `label` ("class N" when the checkpoint has no names).
  std::string class_name(int64_t label) const;

 private:
  std::shared_ptr<Backbone> model_;
  /// The frozen network for the gradient-free methods; null with inference_path off.
  std::shared_ptr<InferenceModel> frozen_;
  Checkpoint info_;
  torch::Device device_;
  torch::ScalarType dtype_;
  std::vector<ExplainMethod> methods_;
  std::map<ExplainMethod, std::vector<std::string>> layers_;
  ExplainOptions options_;
};

struct RenderOptions {
  /// Overlay strength in [0, 1].
  double alpha = 0.5;
  /// OpenCV colour map id (colormap_from_name).
  int colormap = 2;
  /// Exponential smoothing of successive maps: shown = smooth·previous + (1 − smooth)·new; 0 = off.
  double smooth = 0;
};

class HeatmapRenderer {
 public:
  explicit HeatmapRenderer(RenderOptions options) : options_(options) {}
  /// The frame with the (smoothed) map overlaid and a label: "<class> 97%", method, layer, `fps`.
  /// The smoothing restarts whenever the method, layer or map size changes.
  cv::Mat render(const Analysis& a, const std::string& class_name, double fps);

 private:
  RenderOptions options_;
  torch::Tensor smoothed_;
  std::string smoothed_key_;
};

/// True when `dtype` (bfloat16 or float16) runs the model's convolutions markedly faster than float32
/// on `device`: on CUDA; on a CPU, bfloat16 where it has AVX512-BF16 or AMX-BF16 (bfloat16_is_fast).
bool reduced_precision_is_fast(const torch::Device& device, torch::ScalarType dtype);

/// Average of several [N, h, w] maps in [0, 1] at the finest map's resolution, min-max normalised
/// again per image (one map is returned as it is).
torch::Tensor combine_maps(const std::vector<torch::Tensor>& maps);

}  // namespace attnkit::vision
