#include <attnkit/backbones/explain.h>
#include <attnkit/backbones/inference_model.h>
#include <attnkit/modules/attention_map.h>

#include "detail/cam_math.h"

#include <torch/autograd.h>
#include <torch/nn/functional/upsampling.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <map>
#include <optional>
#include <sstream>

namespace attnkit {

// ---- method names ------------------------------------------------------------------------------

const std::vector<std::string>& explain_method_names() {
  static const std::vector<std::string> names = {"auto",     "native",   "gradcam",      "gradcam++", "layercam",   "eigencam",
                                                 "hirescam", "xgradcam", "eigengradcam", "scorecam",  "ablationcam"};
  return names;
}

ExplainMethod explain_method_from_name(const std::string& name) {
  const auto& names = explain_method_names();
  for (size_t i = 0; i < names.size(); ++i)
    if (names[i] == name) return static_cast<ExplainMethod>(i);
  std::string valid;
  for (const auto& n : names) valid += (valid.empty() ? "" : ", ") + n;
  TORCH_CHECK(false, "explain: unknown method \"", name, "\"; valid methods: ", valid);
}

std::string explain_method_name(ExplainMethod method) {
  return explain_method_names().at(static_cast<size_t>(method));
}

std::vector<ExplainMethod> cam_methods() {
  std::vector<ExplainMethod> out;
  for (size_t i = 0; i < explain_method_names().size(); ++i) {
    const auto m = static_cast<ExplainMethod>(i);
    if (m != ExplainMethod::Auto && m != ExplainMethod::Native) out.push_back(m);
  }
  return out;
}

bool explain_needs_gradient(ExplainMethod m) {
  switch (m) {
    case ExplainMethod::GradCam:
    case ExplainMethod::GradCamPlusPlus:
    case ExplainMethod::LayerCam:
    case ExplainMethod::HiResCam:
    case ExplainMethod::XGradCam:
    case ExplainMethod::EigenGradCam: return true;
    default: return false;
  }
}

bool explain_uses_target(ExplainMethod m) {
  return m != ExplainMethod::Auto && m != ExplainMethod::Native && m != ExplainMethod::EigenCam;
}

namespace {

// ---- the model's layout: stages and blocks, and which blocks record a spatial map ----------------

struct BlockInfo {
  std::string name;   // "layer3.1"
  size_t stage = 0;   // index into Layout::stages
  torch::nn::AnyModule module;
  int64_t stride = 1;
  /// The block's attention, when it has a spatial map (both null otherwise): the same module.
  AttentionMapRecorder* recorder = nullptr;
  SpatialMapSource* source = nullptr;
  bool has_map() const { return source != nullptr; }
};

struct Layout {
  std::vector<std::string> stages;       // "layer1", ...
  std::vector<size_t> stage_last_block;  // index into blocks of each stage's last block
  std::vector<BlockInfo> blocks;
  bool has_maps() const {
    return std::any_of(blocks.begin(), blocks.end(), [](const BlockInfo& b) { return b.has_map(); });
  }
};

void describe_attention(const torch::nn::AnyModule& attn, BlockInfo& b) {
  if (attn.is_empty()) return;
  auto* m = attn.ptr().get();
  auto* source = dynamic_cast<SpatialMapSource*>(m);
  auto* recorder = dynamic_cast<AttentionMapRecorder*>(m);
  if (source && recorder && source->has_spatial_map()) b.source = source, b.recorder = recorder;
}

Layout describe(Backbone& model) {
  Layout layout;
  const auto stages = model.stages();
  for (size_t s = 0; s < stages.size(); ++s) {
    layout.stages.push_back("layer" + std::to_string(s + 1));
    int64_t j = 0;
    for (const auto& any : *stages[s]) {
      BlockInfo b;
      b.name = layout.stages.back() + "." + std::to_string(j++);
      b.stage = s;
      b.module = any;
      if (const auto parts = residual_block_parts(*any.ptr())) {
        b.stride = parts->options.stride();
        describe_attention(parts->attn, b);
      }
      layout.blocks.push_back(std::move(b));
    }
    TORCH_CHECK(j > 0, "explain: stage ", layout.stages.back(), " has no blocks");
    layout.stage_last_block.push_back(layout.blocks.size() - 1);
  }
  return layout;
}

std::vector<std::string> layer_names(const Layout& layout, bool native) {
  std::vector<std::string> out;
  for (size_t s = 0; s < layout.stages.size(); ++s) {
    const bool any = std::any_of(layout.blocks.begin(), layout.blocks.end(),
                                 [&](const BlockInfo& b) { return b.stage == s && b.has_map(); });
    if (!native || any) out.push_back(layout.stages[s]);
  }
  for (const auto& b : layout.blocks)
    if (!native || b.has_map()) out.push_back(b.name);
  if (!out.empty()) out.push_back("all");
  return out;
}

std::string join(const std::vector<std::string>& names) {
  std::string out;
  for (const auto& n : names) out += (out.empty() ? "" : ", ") + n;
  return out;
}

std::string attention_summary(Backbone& model) {
  std::string out;
  for (const auto& a : model.config().attention) out += (out.empty() ? "" : ",") + (a.empty() ? std::string("none") : a);
  return out;
}

/// One map to produce: its label and the block whose output (CAMs) or attention (native) it uses.
struct Request {
  std::string label;
  size_t block = 0;
};

std::vector<Request> resolve_layers(Backbone& model, const Layout& layout, ExplainMethod method,
                                    const std::vector<std::string>& asked) {
  const bool native = method == ExplainMethod::Native;
  const auto valid = layer_names(layout, native);
  if (native) {
    TORCH_CHECK(!valid.empty(), "explain: native maps need spatial attention (cbam, spatial, self, nonlocal or local), "
                "and model ", model.config().name(), " has none (attention per stage: ", attention_summary(model),
                "); use a CAM (gradcam, hirescam, gradcam++, xgradcam, layercam, eigencam, eigengradcam, scorecam, ablationcam)");
  }
  std::vector<Request> out;
  auto add = [&](const std::string& label, size_t block) {
    for (const auto& r : out)
      if (r.label == label) return;
    out.push_back({label, block});
  };
  auto add_stage = [&](size_t s) {
    if (!native) return add(layout.stages[s], layout.stage_last_block[s]);
    for (size_t i = 0; i < layout.blocks.size(); ++i)
      if (layout.blocks[i].stage == s && layout.blocks[i].has_map()) add(layout.blocks[i].name, i);
  };
  const std::vector<std::string> names = asked.empty() ? std::vector<std::string>{native ? "all" : layout.stages.back()} : asked;
  for (const auto& name : names) {
    const bool known = std::find(valid.begin(), valid.end(), name) != valid.end();
    if (!known) {
      const bool exists = std::find(layout.stages.begin(), layout.stages.end(), name) != layout.stages.end() ||
                          std::any_of(layout.blocks.begin(), layout.blocks.end(), [&](const BlockInfo& b) { return b.name == name; });
      TORCH_CHECK(!(native && exists), "explain: layer \"", name, "\" of ", model.config().name(),
                  " has no spatial attention map; native layers: ", join(valid));
      TORCH_CHECK(false, "explain: unknown layer \"", name, "\" for ", explain_method_name(method), " on ",
                  model.config().name(), "; valid layers: ", join(valid));
    }
    if (name == "all") {
      for (size_t s = 0; s < layout.stages.size(); ++s) add_stage(s);
      continue;
    }
    const auto stage = std::find(layout.stages.begin(), layout.stages.end(), name);
    if (stage != layout.stages.end()) {
      add_stage(static_cast<size_t>(stage - layout.stages.begin()));
      continue;
    }
    for (size_t i = 0; i < layout.blocks.size(); ++i)
      if (layout.blocks[i].name == name) add(name, i);
  }
  return out;
}

/// Restores the recording flags of the blocks it touched, and undoes their prepare_spatial_map,
/// whatever happens.
class RecordingGuard {
 public:
  /// Turns recording on in b's attention, set up for a map of an h×w output read at `query`.
  void record(BlockInfo& b, int64_t h, int64_t w, const std::optional<Position2d>& query) {
    if (!touched(b.recorder)) saved_.emplace_back(b.recorder, b.recorder->recording());
    b.recorder->record_attention(true);
    if (auto undo = b.source->prepare_spatial_map(h, w, query)) undo_.push_back(std::move(undo));
  }
  ~RecordingGuard() {
    for (auto& [r, on] : saved_) r->record_attention(on);
    for (auto it = undo_.rbegin(); it != undo_.rend(); ++it) (*it)();
  }

 private:
  bool touched(AttentionMapRecorder* r) const {
    return std::any_of(saved_.begin(), saved_.end(), [&](const auto& s) { return s.first == r; });
  }
  std::vector<std::pair<AttentionMapRecorder*, bool>> saved_;
  std::vector<std::function<void()>> undo_;
};

int64_t query_index(double q, int64_t size) {
  return std::min<int64_t>(static_cast<int64_t>(std::floor(q * static_cast<double>(size))), size - 1);
}

/// The native map of one block after its recorded forward, [N, h, w].
torch::Tensor native_map(const BlockInfo& b, const std::optional<Position2d>& query) {
  TORCH_CHECK(b.has_map(), "explain: block ", b.name, " has no spatial attention map");
  TORCH_CHECK(b.recorder->last_attention().defined(), "explain: block ", b.name, " recorded no attention map");
  return b.source->spatial_map(query);
}

torch::Device model_device(Backbone& model) {
  for (const auto& p : model.module().parameters()) return p.device();
  return torch::kCPU;
}

// ---- explain(): plan, one forward, a backward per rank, the perturbation passes, the maps ----------

/// What each method needs: native maps → recording in their blocks; CAMs → the blocks' outputs
/// kept (and, for the gradient methods, one backward pass per target rank to them).
struct ExplainPlan {
  std::vector<ExplainMethod> methods;          // Auto resolved
  std::vector<std::vector<Request>> requests;  // per method: its layers
  std::vector<bool> keep, record;              // per block
  bool need_grad = false;
};

/// What the forward pass leaves for the maps.
struct ForwardPass {
  std::vector<torch::Tensor> kept;                 // per block: its output, where a CAM needs it
  std::vector<std::optional<Position2d>> queries;  // per block: the query point on its map
  std::vector<torch::Tensor> native;               // per block: its native map, where one was asked for
  torch::Tensor logits;
};

constexpr int64_t kMaxBatchSize = 4096;

void check_explain_args(const torch::Tensor& input, const std::vector<ExplainMethod>& methods,
                        const ExplainOptions& options, int64_t num_classes) {
  TORCH_CHECK(!methods.empty(), "explain: no method given");
  TORCH_CHECK(input.defined() && input.dim() == 4, "explain: expected an input of shape [N, C, H, W], got ",
              input.defined() ? input.sizes() : torch::IntArrayRef{});
  const bool query = options.query_x >= 0 && options.query_y >= 0;
  if (query) {
    TORCH_CHECK(options.query_x <= 1 && options.query_y <= 1, "explain: the query point must lie in [0, 1]², got (",
                options.query_x, ", ", options.query_y, ")");
  }
  TORCH_CHECK(!(query && options.aug_smooth), "explain: aug_smooth flips the input, which moves a query point; "
              "use one or the other");
  TORCH_CHECK(options.target >= -1 && options.target < num_classes, "explain: target class ", options.target,
              " is outside [0, ", num_classes, ") (or -1 for each image's top-k)");
  TORCH_CHECK(options.top_k >= 1 && options.top_k <= num_classes, "explain: top_k ", options.top_k,
              " is outside [1, ", num_classes, "] (the model has ", num_classes, " classes)");
  TORCH_CHECK(options.batch_size >= 1 && options.batch_size <= kMaxBatchSize, "explain: batch_size ",
              options.batch_size, " is outside [1, ", kMaxBatchSize, "] (masked forwards per pass of scorecam and ablationcam)");
}

ExplainPlan plan_explain(Backbone& model, const Layout& layout, const std::vector<ExplainMethod>& methods,
                         const ExplainOptions& options) {
  ExplainPlan plan;
  plan.keep.assign(layout.blocks.size(), false);
  plan.record.assign(layout.blocks.size(), false);
  for (auto m : methods) {
    if (m == ExplainMethod::Auto) m = layout.has_maps() ? ExplainMethod::Native : ExplainMethod::GradCam;
    plan.methods.push_back(m);
    plan.requests.push_back(resolve_layers(model, layout, m, options.layers));
    for (const auto& r : plan.requests.back()) (m == ExplainMethod::Native ? plan.record : plan.keep)[r.block] = true;
    plan.need_grad = plan.need_grad || explain_needs_gradient(m);
  }
  return plan;
}

/// How one forward pass runs block by block: on the module (autograd, the reference) or on an
/// InferenceModel's frozen network (the same attention modules, so the same recorded maps).
struct BlockRunner {
  std::function<torch::Tensor(const torch::Tensor&)> stem;
  std::function<torch::Tensor(size_t, const torch::Tensor&)> block;
  std::function<torch::Tensor(const std::vector<torch::Tensor>&)> head;
};

BlockRunner module_runner(Backbone& model, Layout& layout) {
  return {[&model](const torch::Tensor& x) { return model.forward_stem(x); },
          [&layout](size_t i, const torch::Tensor& y) { return layout.blocks[i].module.forward(y); },
          [&model](const std::vector<torch::Tensor>& stages) { return model.forward_head(stages); }};
}

BlockRunner inference_runner(InferenceModel& model) {
  return {[&model](const torch::Tensor& x) { return model.forward_stem(x); },
          [&model](size_t i, const torch::Tensor& y) { return model.forward_block(i, y); },
          [&model](const std::vector<torch::Tensor>& stages) { return model.forward_head(stages.back()); }};
}

/// The logits of the network run on from block `first` with `y` as that block's input (the head
/// reads only the last stage's output).
torch::Tensor forward_from(const BlockRunner& run, const Layout& layout, size_t first, torch::Tensor y) {
  for (size_t i = first; i < layout.blocks.size(); ++i) y = run.block(i, y);
  return run.head({y});
}

/// One forward pass, block by block: records the planned blocks' maps and reads them (recording is
/// switched off again before anything else runs, so later passes neither overwrite the maps nor
/// take the slower recording path), and keeps the planned outputs. Runs with gradients where the
/// plan needs them.
ForwardPass forward_blocks(const BlockRunner& run, Layout& layout, const ExplainPlan& plan, const torch::Tensor& x,
                           const ExplainOptions& options) {
  const bool query = options.query_x >= 0 && options.query_y >= 0;
  ForwardPass f;
  f.kept.resize(layout.blocks.size());
  f.queries.resize(layout.blocks.size());
  f.native.resize(layout.blocks.size());
  RecordingGuard guard;
  std::vector<torch::Tensor> stage_outputs;
  auto y = run.stem(x);
  for (size_t i = 0; i < layout.blocks.size(); ++i) {
    auto& b = layout.blocks[i];
    if (plan.record[i]) {
      // The map's size is the block's output size (its 3×3 convolution carries the stride).
      const int64_t h = (y.size(2) - 1) / b.stride + 1, w = (y.size(3) - 1) / b.stride + 1;
      if (query) f.queries[i] = Position2d(query_index(options.query_y, h), query_index(options.query_x, w));
      guard.record(b, h, w, f.queries[i]);
    }
    y = run.block(i, y);
    if (plan.keep[i]) f.kept[i] = y;
    if (layout.stage_last_block[b.stage] == i) stage_outputs.push_back(y);
  }
  f.logits = run.head(stage_outputs);
  torch::NoGradGuard no_grad;
  for (size_t i = 0; i < layout.blocks.size(); ++i)
    if (plan.record[i]) f.native[i] = native_map(layout.blocks[i], f.queries[i]).detach();
  return f;
}

/// The classes explained, [T, N]: the fixed target, or each image's top-T classes by its logits.
torch::Tensor choose_targets(const torch::Tensor& logits, const ExplainOptions& options) {
  const int64_t n = logits.size(0);
  const auto opts = torch::dtype(torch::kLong).device(logits.device());
  if (options.target >= 0) return torch::full({1, n}, options.target, opts);
  return std::get<1>(logits.detach().topk(options.top_k, 1)).t().contiguous();
}

/// One backward pass for every gradient method, to every kept activation at once: the gradient of
/// the targets' scores per block (undefined where no gradient method asked).
std::vector<torch::Tensor> target_gradients(const ExplainPlan& plan, const ForwardPass& f, const torch::Tensor& targets,
                                            bool keep_graph) {
  std::vector<torch::Tensor> grads(f.kept.size());
  std::vector<size_t> which;
  std::vector<torch::Tensor> inputs;
  for (size_t m = 0; m < plan.methods.size(); ++m) {
    if (!explain_needs_gradient(plan.methods[m])) continue;
    for (const auto& r : plan.requests[m]) {
      if (std::find(which.begin(), which.end(), r.block) != which.end()) continue;
      which.push_back(r.block);
      inputs.push_back(f.kept[r.block]);
    }
  }
  const auto score = f.logits.gather(1, targets.view({-1, 1})).sum();
  const auto g = torch::autograd::grad({score}, inputs, {}, /*retain_graph=*/keep_graph, /*create_graph=*/false,
                                       /*allow_unused=*/true);
  for (size_t k = 0; k < which.size(); ++k) grads[which[k]] = g[k].defined() ? g[k] : torch::zeros_like(inputs[k]);
  return grads;
}

/// Calls `score(rows, n_index, c_index)` for the (image, channel) pairs of an N×C grid, at most
/// `batch` pairs at a time, and writes each pass's [B, num_classes] logits' target entries into
/// the result: [T, N, C] scores of the T target ranks.
torch::Tensor per_channel_scores(int64_t n, int64_t c, int64_t batch, const torch::Tensor& targets,
                                 const std::function<torch::Tensor(const torch::Tensor&, const torch::Tensor&)>& logits_for) {
  const int64_t ranks = targets.size(0);
  const auto device = targets.device();
  auto scores = torch::empty({ranks, n * c}, torch::dtype(torch::kFloat).device(device));
  for (int64_t p0 = 0; p0 < n * c; p0 += batch) {
    const int64_t p1 = std::min(n * c, p0 + batch);
    const auto pairs = torch::arange(p0, p1, torch::dtype(torch::kLong).device(device));
    const auto images = pairs.div(c, "floor"), channels = pairs.remainder(c);
    const auto logits = logits_for(images, channels).to(torch::kFloat);
    for (int64_t t = 0; t < ranks; ++t)
      scores[t].slice(0, p0, p1).copy_(logits.gather(1, targets[t].index_select(0, images).view({-1, 1})).view(-1));
  }
  return scores.view({ranks, n, c});
}

/// Score-CAM's channel weights for every rank, [T, N, C, 1, 1]: softmax over channels of the target
/// scores of the input masked by each upsampled, min-max scaled channel.
torch::Tensor scorecam_weights(const BlockRunner& run, const Layout& layout, const torch::Tensor& x,
                               const torch::Tensor& a, const torch::Tensor& targets, int64_t batch) {
  const int64_t n = a.size(0), c = a.size(1);
  const auto flat = a.reshape({n * c, 1, a.size(2), a.size(3)});
  const auto scores = per_channel_scores(n, c, batch, targets, [&](const torch::Tensor& images, const torch::Tensor& channels) {
    const auto masks = detail::scorecam_masks(flat.index_select(0, images * c + channels), {x.size(2), x.size(3)});
    return forward_from(run, layout, 0, run.stem(x.index_select(0, images) * masks.to(x.scalar_type())));
  });
  return torch::softmax(scores, -1).unsqueeze(-1).unsqueeze(-1);
}

/// Ablation-CAM's channel weights for every rank, [T, N, C, 1, 1]: (y − y with channel c of the
/// block's output ablated) / y, the network run on from the next block.
torch::Tensor ablationcam_weights(const BlockRunner& run, const Layout& layout, size_t block, const torch::Tensor& a,
                                  const torch::Tensor& logits, const torch::Tensor& targets, int64_t batch) {
  const int64_t n = a.size(0), c = a.size(1);
  std::vector<double> values;
  for (int64_t i = 0; i < n; ++i) values.push_back(detail::ablation_value(a[i]));
  const auto value = torch::tensor(values, torch::dtype(torch::kDouble)).to(a.device(), a.scalar_type());
  const auto scores = per_channel_scores(n, c, batch, targets, [&](const torch::Tensor& images, const torch::Tensor& channels) {
    const auto rows = a.index_select(0, images);
    const auto ablated = torch::one_hot(channels, c).to(torch::kBool).view({-1, c, 1, 1});
    return forward_from(run, layout, block + 1,
                        torch::where(ablated, value.index_select(0, images).view({-1, 1, 1, 1}), rows));
  });
  const auto original = logits.detach().to(torch::kFloat).gather(1, targets.t()).t().unsqueeze(-1);  // [T, N, 1]
  return ((original - scores) / original).unsqueeze(-1).unsqueeze(-1);
}

/// Everything the maps of one rank are made from.
struct RankInputs {
  const ForwardPass* f = nullptr;
  std::vector<torch::Tensor> grads;  // per block, where a gradient method asked
  /// Per block, [N, C, 1, 1], where Score-CAM or Ablation-CAM asked.
  std::map<size_t, torch::Tensor> score_weights, ablation_weights;
};

/// A CAM's map before normalisation: ReLU of the weighted activations' sum or first component.
torch::Tensor cam_map(ExplainMethod method, size_t block, const RankInputs& in, bool eigen_smooth) {
  // Computed in float32 at least (SVD, and the sums over channels of half-precision activations).
  const auto acc = in.f->kept[block].scalar_type() == torch::kDouble ? torch::kDouble : torch::kFloat;
  const auto a = in.f->kept[block].detach().to(acc);
  auto g = [&] { return in.grads[block].to(acc); };
  torch::Tensor x;
  switch (method) {
    case ExplainMethod::EigenCam: return torch::relu(detail::first_component(a));
    case ExplainMethod::EigenGradCam: return torch::relu(detail::first_component(g() * a));
    case ExplainMethod::GradCam: x = detail::gradcam_weights(g()) * a; break;
    case ExplainMethod::GradCamPlusPlus: x = detail::gradcam_plus_plus_weights(a, g()) * a; break;
    case ExplainMethod::XGradCam: x = detail::xgradcam_weights(a, g()) * a; break;
    case ExplainMethod::HiResCam: x = g() * a; break;
    case ExplainMethod::LayerCam: x = torch::relu(g()) * a; break;
    case ExplainMethod::ScoreCam: x = in.score_weights.at(block).to(acc) * a; break;
    case ExplainMethod::AblationCam: x = in.ablation_weights.at(block).to(acc) * a; break;
    default: TORCH_CHECK(false, "explain: ", explain_method_name(method), " is not a CAM");
  }
  return torch::relu(eigen_smooth ? detail::first_component(x) : x.sum(1));
}

/// Several [N, h_i, w_i] maps → one at `size`: each normalised, resized (bilinear, half-pixel
/// centres), averaged, normalised again (pytorch-grad-cam's aggregate_multi_layers).
torch::Tensor combine_layers(const std::vector<torch::Tensor>& maps, at::IntArrayRef size) {
  namespace F = torch::nn::functional;
  torch::Tensor sum;
  for (const auto& m : maps) {
    const auto resized = F::interpolate(detail::normalize01(m).unsqueeze(1),
                                        F::InterpolateFuncOptions()
                                            .size(std::vector<int64_t>(size.begin(), size.end()))
                                            .mode(torch::kBilinear)
                                            .align_corners(false))
                             .squeeze(1);
    sum = sum.defined() ? sum + resized : resized;
  }
  return detail::normalize01(sum / static_cast<double>(maps.size()));
}

/// The maps of every planned method and rank for `x`: [method][rank] → one LayerMap per layer (or
/// one combined), with `logits` and the [T, N] `targets` they explain. `pick_targets` chooses the
/// targets from the logits.
struct CoreResult {
  torch::Tensor logits, targets;
  std::vector<std::vector<std::vector<LayerMap>>> maps;
};

CoreResult explain_core(const BlockRunner& run, Layout& layout, const ExplainPlan& plan, const torch::Tensor& input,
                        const ExplainOptions& options, const std::function<torch::Tensor(const torch::Tensor&)>& pick_targets) {
  std::optional<torch::NoGradGuard> no_grad;
  std::optional<torch::AutoGradMode> grad_on;
  auto x = input.detach();
  if (plan.need_grad) {
    grad_on.emplace(true);
    x.requires_grad_(true);  // gradients reach the activations even when the parameters are frozen
  } else {
    no_grad.emplace();
  }
  const ForwardPass f = forward_blocks(run, layout, plan, x, options);
  CoreResult out;
  out.logits = f.logits.detach();
  out.targets = pick_targets(out.logits);
  const int64_t ranks = out.targets.size(0);

  // The perturbation methods score every rank from the same forwards.
  std::map<size_t, torch::Tensor> score_weights, ablation_weights;  // [T, N, C, 1, 1]
  {
    torch::NoGradGuard perturbation_without_grad;
    const auto x0 = input.detach();
    for (size_t m = 0; m < plan.methods.size(); ++m)
      for (const auto& r : plan.requests[m]) {
        const auto a = f.kept[r.block].defined() ? f.kept[r.block].detach() : torch::Tensor();
        if (plan.methods[m] == ExplainMethod::ScoreCam && !score_weights.count(r.block))
          score_weights[r.block] = scorecam_weights(run, layout, x0, a, out.targets, options.batch_size);
        if (plan.methods[m] == ExplainMethod::AblationCam && !ablation_weights.count(r.block))
          ablation_weights[r.block] = ablationcam_weights(run, layout, r.block, a, f.logits, out.targets, options.batch_size);
      }
  }

  out.maps.assign(plan.methods.size(), std::vector<std::vector<LayerMap>>(static_cast<size_t>(ranks)));
  for (int64_t t = 0; t < ranks; ++t) {
    RankInputs in;
    in.f = &f;
    if (plan.need_grad) in.grads = target_gradients(plan, f, out.targets[t], /*keep_graph=*/t + 1 < ranks);
    for (auto& [block, w] : score_weights) in.score_weights[block] = w[t];
    for (auto& [block, w] : ablation_weights) in.ablation_weights[block] = w[t];
    torch::NoGradGuard maps_without_grad;
    for (size_t m = 0; m < plan.methods.size(); ++m) {
      auto& maps = out.maps[m][static_cast<size_t>(t)];
      for (const auto& r : plan.requests[m]) {
        auto map = plan.methods[m] == ExplainMethod::Native ? f.native[r.block]
                                                            : cam_map(plan.methods[m], r.block, in, options.eigen_smooth);
        if (options.normalize) map = detail::normalize01(map);
        maps.push_back({r.label, map.to(torch::kFloat).contiguous()});
      }
      if (options.combine_layers && maps.size() > 1) {
        std::vector<torch::Tensor> each;
        std::string label;
        for (const auto& lm : maps) {
          each.push_back(lm.map);
          label += (label.empty() ? "" : "+") + lm.layer;
        }
        maps = {{label, combine_layers(each, {input.size(2), input.size(3)}).contiguous()}};
      }
    }
  }
  return out;
}

/// pytorch-grad-cam's augmentations (ttach: HorizontalFlip × Multiply(0.9, 1, 1.1)) in its order.
struct Augmentation {
  bool flip;
  double factor;
};
const std::vector<Augmentation>& augmentations() {
  static const std::vector<Augmentation> list = {{false, 0.9}, {false, 1.0}, {false, 1.1},
                                                 {true, 0.9},  {true, 1.0},  {true, 1.1}};
  return list;
}
constexpr int64_t kIdentityAugmentation = 1;

/// aug_smooth: the six augmented copies as one batch; targets from the unaugmented copy's logits;
/// every map normalised, flipped back and the six averaged.
CoreResult explain_aug_smooth(const BlockRunner& run, Layout& layout, const ExplainPlan& plan, const torch::Tensor& x,
                              const ExplainOptions& options) {
  const int64_t n = x.size(0);
  const auto& augs = augmentations();
  std::vector<torch::Tensor> copies;
  for (const auto& aug : augs) copies.push_back((aug.flip ? x.flip({3}) : x) * aug.factor);
  ExplainOptions each = options;
  each.normalize = true;  // pytorch-grad-cam scales every augmented map before averaging
  auto pick = [&](const torch::Tensor& logits) {
    const auto own = choose_targets(logits.slice(0, kIdentityAugmentation * n, (kIdentityAugmentation + 1) * n), options);
    return own.repeat({1, static_cast<int64_t>(augs.size())});
  };
  CoreResult all = explain_core(run, layout, plan, torch::cat(copies), each, pick);
  CoreResult out;
  out.logits = all.logits.slice(0, kIdentityAugmentation * n, (kIdentityAugmentation + 1) * n);
  out.targets = all.targets.slice(1, 0, n);
  out.maps = std::move(all.maps);
  for (auto& per_method : out.maps)
    for (auto& per_rank : per_method)
      for (auto& lm : per_rank) {
        auto maps = lm.map.view({static_cast<int64_t>(augs.size()), n, lm.map.size(1), lm.map.size(2)});
        torch::Tensor sum;
        for (size_t k = 0; k < augs.size(); ++k) {
          const auto m = augs[k].flip ? maps[static_cast<int64_t>(k)].flip({2}) : maps[static_cast<int64_t>(k)];
          sum = sum.defined() ? sum + m : m;
        }
        auto mean = sum / static_cast<double>(augs.size());
        lm.map = (options.normalize ? detail::normalize01(mean) : mean).contiguous();
      }
  return out;
}

}  // namespace

// ---- public ------------------------------------------------------------------------------------

bool has_spatial_attention(Backbone& model) { return describe(model).has_maps(); }

std::vector<std::string> explainable_layers(Backbone& model, ExplainMethod method) {
  const auto layout = describe(model);
  if (method == ExplainMethod::Auto) method = layout.has_maps() ? ExplainMethod::Native : ExplainMethod::GradCam;
  return layer_names(layout, method == ExplainMethod::Native);
}

namespace {

/// explain() on `model`'s layout with its forward passes run by `runner` (made from the layout).
std::vector<Explanation> explain_with(Backbone& model, const std::function<BlockRunner(Layout&)>& runner,
                                      const torch::Tensor& input, const std::vector<ExplainMethod>& methods,
                                      const ExplainOptions& options) {
  check_explain_args(input, methods, options, model.config().num_classes);
  auto layout = describe(model);
  const ExplainPlan plan = plan_explain(model, layout, methods, options);
  const BlockRunner run = runner(layout);
  const auto x = input.to(model_device(model)).detach();
  const CoreResult r = options.aug_smooth
                           ? explain_aug_smooth(run, layout, plan, x, options)
                           : explain_core(run, layout, plan, x, options,
                                          [&](const torch::Tensor& logits) { return choose_targets(logits, options); });
  std::vector<Explanation> out;
  for (size_t m = 0; m < plan.methods.size(); ++m)
    for (size_t t = 0; t < r.maps[m].size(); ++t) {
      Explanation e;
      e.logits = r.logits;
      e.targets = r.targets[static_cast<int64_t>(t)];
      e.rank = static_cast<int64_t>(t);
      e.method = plan.methods[m];
      e.maps = r.maps[m][t];
      out.push_back(std::move(e));
    }
  return out;
}

}  // namespace

std::vector<Explanation> explain(Backbone& model, const torch::Tensor& input, const std::vector<ExplainMethod>& methods,
                                 const ExplainOptions& options) {
  return explain_with(model, [&model](Layout& layout) { return module_runner(model, layout); }, input, methods, options);
}

std::vector<Explanation> explain(InferenceModel& model, const torch::Tensor& input, const std::vector<ExplainMethod>& methods,
                                 const ExplainOptions& options) {
  const auto layout = describe(model.model());
  for (auto m : methods) {
    if (m == ExplainMethod::Auto) m = layout.has_maps() ? ExplainMethod::Native : ExplainMethod::GradCam;
    TORCH_CHECK(!explain_needs_gradient(m), "explain: ", explain_method_name(m), " needs gradients, which the inference "
                "path does not compute; run it on the module (explain(model.model(), ...))");
  }
  return explain_with(model.model(), [&model](Layout&) { return inference_runner(model); }, input, methods, options);
}

Explanation explain(InferenceModel& model, const torch::Tensor& input, const ExplainOptions& options) {
  return std::move(explain(model, input, std::vector<ExplainMethod>{options.method}, options).front());
}

Explanation explain(Backbone& model, const torch::Tensor& input, const ExplainOptions& options) {
  return std::move(explain(model, input, std::vector<ExplainMethod>{options.method}, options).front());
}

}  // namespace attnkit
