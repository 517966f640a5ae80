#include <attnkit/backbones/explain.h>
#include <attnkit/backbones/inference_model.h>
#include <attnkit/modules/attention_map.h>

#include <ATen/ops/linalg_svd.h>
#include <torch/autograd.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <optional>
#include <sstream>

namespace attnkit {

// ---- method names ------------------------------------------------------------------------------

const std::vector<std::string>& explain_method_names() {
  static const std::vector<std::string> names = {"auto", "native", "gradcam", "gradcam++", "layercam", "eigencam"};
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
      if (auto* basic = dynamic_cast<BasicBlockImpl*>(any.ptr().get())) {
        b.stride = basic->options.stride();
        describe_attention(basic->attn, b);
      } else if (auto* bottleneck = dynamic_cast<BottleneckImpl*>(any.ptr().get())) {
        b.stride = bottleneck->options.stride();
        describe_attention(bottleneck->attn, b);
      }
      layout.blocks.push_back(std::move(b));
    }
    TORCH_CHECK(j > 0, "explain: stage ", layout.stages.back(), " has no blocks");
    layout.stage_last_block.push_back(layout.blocks.size() - 1);
  }
  return layout;
}

bool is_gradient_method(ExplainMethod m) {
  return m == ExplainMethod::GradCam || m == ExplainMethod::GradCamPlusPlus || m == ExplainMethod::LayerCam;
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
                "); use gradcam, gradcam++, layercam or eigencam");
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

// ---- the maps ----------------------------------------------------------------------------------

/// [N, h, w] → each image min-max scaled to [0, 1]; (near-)constant images become 0.
torch::Tensor normalize01(const torch::Tensor& map) {
  const auto flat = map.flatten(1);
  const auto lo = std::get<0>(flat.min(1, true)), hi = std::get<0>(flat.max(1, true));
  const auto range = hi - lo;
  const auto scale = torch::maximum(hi.abs(), lo.abs());
  const auto flat_ok = range > scale * 1e-6;
  auto out = torch::where(flat_ok, (flat - lo) / torch::where(flat_ok, range, torch::ones_like(range)),
                          torch::zeros_like(flat));
  return out.view_as(map);
}

torch::Tensor grad_cam(const torch::Tensor& a, const torch::Tensor& g) {
  const auto w = g.mean({2, 3}, true);
  return torch::relu((w * a).sum(1));
}

torch::Tensor grad_cam_plus_plus(const torch::Tensor& a, const torch::Tensor& g) {
  const auto g2 = g * g, g3 = g2 * g;
  const auto sum_a = a.sum({2, 3}, true);
  const auto denom = 2 * g2 + sum_a * g3;
  const auto alpha = torch::where(denom != 0, g2 / torch::where(denom != 0, denom, torch::ones_like(denom)),
                                  torch::zeros_like(denom));
  const auto w = (alpha * torch::relu(g)).sum({2, 3}, true);
  return torch::relu((w * a).sum(1));
}

torch::Tensor layer_cam(const torch::Tensor& a, const torch::Tensor& g) { return torch::relu((torch::relu(g) * a).sum(1)); }

torch::Tensor eigen_cam(const torch::Tensor& a) {
  const int64_t n = a.size(0), c = a.size(1), h = a.size(2), w = a.size(3);
  // SVD runs in float at least (no half-precision SVD).
  const auto acc = a.scalar_type() == torch::kDouble ? torch::kDouble : torch::kFloat;
  auto m = a.to(acc).reshape({n, c, h * w}).transpose(1, 2);  // [N, hw, C]
  m = m - m.mean(1, true);
  const auto vh = std::get<2>(at::linalg_svd(m, /*full_matrices=*/false));  // [N, k, C]
  auto proj = torch::matmul(m, vh.select(1, 0).unsqueeze(-1)).squeeze(-1);  // [N, hw]
  const auto total = a.to(acc).sum(1).reshape({n, h * w});
  const auto sign = torch::where((proj * total).sum(1, true) < 0, -torch::ones({1}, proj.options()),
                                 torch::ones({1}, proj.options()));
  return torch::relu(proj * sign).view({n, h, w});
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

// ---- explain(): plan, one forward, one backward, the maps -------------------------------------------

/// What each method needs: native maps → recording in their blocks; CAMs → the blocks' outputs
/// kept (and, for the gradient methods, one backward pass to them).
struct ExplainPlan {
  std::vector<ExplainMethod> methods;         // Auto resolved
  std::vector<std::vector<Request>> requests;  // per method: its layers
  std::vector<bool> keep, record;              // per block
  bool need_grad = false;
};

/// What the forward pass leaves for the maps.
struct ForwardPass {
  std::vector<torch::Tensor> kept;                    // per block: its output, where a CAM needs it
  std::vector<std::optional<Position2d>> queries;     // per block: the query point on its map
  torch::Tensor logits, targets;
};

void check_explain_args(const torch::Tensor& input, const std::vector<ExplainMethod>& methods,
                        const ExplainOptions& options, int64_t num_classes) {
  TORCH_CHECK(!methods.empty(), "explain: no method given");
  TORCH_CHECK(input.defined() && input.dim() == 4, "explain: expected an input of shape [N, C, H, W], got ",
              input.defined() ? input.sizes() : torch::IntArrayRef{});
  if (options.query_x >= 0 && options.query_y >= 0) {
    TORCH_CHECK(options.query_x <= 1 && options.query_y <= 1, "explain: the query point must lie in [0, 1]², got (",
                options.query_x, ", ", options.query_y, ")");
  }
  TORCH_CHECK(options.target >= -1 && options.target < num_classes, "explain: target class ", options.target,
              " is outside [0, ", num_classes, ") (or -1 for each image's top-1)");
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
    plan.need_grad = plan.need_grad || is_gradient_method(m);
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

/// One forward pass, block by block: records the planned blocks' maps (through `guard`) and keeps
/// the planned outputs. Runs with gradients where the plan needs them.
ForwardPass forward_blocks(const BlockRunner& run, Layout& layout, const ExplainPlan& plan, const torch::Tensor& x,
                           const ExplainOptions& options, RecordingGuard& guard) {
  const bool query = options.query_x >= 0 && options.query_y >= 0;
  ForwardPass f;
  f.kept.resize(layout.blocks.size());
  f.queries.resize(layout.blocks.size());
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
  f.targets = options.target >= 0
                  ? torch::full({f.logits.size(0)}, options.target, torch::dtype(torch::kLong).device(f.logits.device()))
                  : f.logits.detach().argmax(1);
  return f;
}

/// One backward pass for every gradient method, to every kept activation at once: the gradient of
/// the target's score per block (undefined where no gradient method asked).
std::vector<torch::Tensor> target_gradients(const ExplainPlan& plan, const ForwardPass& f) {
  std::vector<torch::Tensor> grads(f.kept.size());
  std::vector<size_t> which;
  std::vector<torch::Tensor> inputs;
  for (size_t m = 0; m < plan.methods.size(); ++m) {
    if (!is_gradient_method(plan.methods[m])) continue;
    for (const auto& r : plan.requests[m]) {
      if (std::find(which.begin(), which.end(), r.block) != which.end()) continue;
      which.push_back(r.block);
      inputs.push_back(f.kept[r.block]);
    }
  }
  const auto score = f.logits.gather(1, f.targets.view({-1, 1})).sum();
  const auto g = torch::autograd::grad({score}, inputs, {}, /*retain_graph=*/false, /*create_graph=*/false,
                                       /*allow_unused=*/true);
  for (size_t k = 0; k < which.size(); ++k) grads[which[k]] = g[k].defined() ? g[k] : torch::zeros_like(inputs[k]);
  return grads;
}

torch::Tensor method_map(ExplainMethod method, const BlockInfo& b, const torch::Tensor& activation,
                         const torch::Tensor& grad, const std::optional<Position2d>& query) {
  switch (method) {
    case ExplainMethod::Native: return native_map(b, query);
    case ExplainMethod::GradCam: return grad_cam(activation, grad);
    case ExplainMethod::GradCamPlusPlus: return grad_cam_plus_plus(activation, grad);
    case ExplainMethod::LayerCam: return layer_cam(activation, grad);
    case ExplainMethod::EigenCam: return eigen_cam(activation);
    case ExplainMethod::Auto: break;
  }
  TORCH_CHECK(false, "explain: Auto was not resolved");
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

/// explain() on `model`'s layout with its forward pass run by `runner` (made from the layout).
std::vector<Explanation> explain_with(Backbone& model, const std::function<BlockRunner(Layout&)>& runner,
                                      const torch::Tensor& input, const std::vector<ExplainMethod>& methods,
                                      const ExplainOptions& options) {
  check_explain_args(input, methods, options, model.config().num_classes);
  auto layout = describe(model);
  const ExplainPlan plan = plan_explain(model, layout, methods, options);

  RecordingGuard guard;  // the recorded maps stay readable until the maps below are made
  std::optional<torch::NoGradGuard> no_grad;
  std::optional<torch::AutoGradMode> grad_on;
  auto x = input.to(model_device(model)).detach();
  if (plan.need_grad) {
    grad_on.emplace(true);
    x.requires_grad_(true);  // gradients reach the activations even when the parameters are frozen
  } else {
    no_grad.emplace();
  }
  const ForwardPass f = forward_blocks(runner(layout), layout, plan, x, options, guard);
  const auto grads = plan.need_grad ? target_gradients(plan, f) : std::vector<torch::Tensor>(f.kept.size());

  torch::NoGradGuard maps_without_grad;
  std::vector<Explanation> out;
  for (size_t m = 0; m < plan.methods.size(); ++m) {
    Explanation e;
    e.logits = f.logits.detach();
    e.targets = f.targets;
    e.method = plan.methods[m];
    for (const auto& r : plan.requests[m]) {
      const auto activation = f.kept[r.block].defined() ? f.kept[r.block].detach() : torch::Tensor();
      auto map = method_map(e.method, layout.blocks[r.block], activation, grads[r.block], f.queries[r.block]);
      if (options.normalize) map = normalize01(map);
      e.maps.push_back({r.label, map.to(torch::kFloat).contiguous()});
    }
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
    TORCH_CHECK(!is_gradient_method(m), "explain: ", explain_method_name(m), " needs gradients, which the inference "
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
