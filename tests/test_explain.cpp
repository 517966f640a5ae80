// explain(): CAMs on a constructed model whose answer is known, Grad-CAM / LayerCAM / Eigen-CAM
// against independent plain-LibTorch formulations (per-channel loops from the papers, an
// eigendecomposition instead of the SVD), every CAM against pytorch-grad-cam's own maps
// (tests/python/refs_explain.py), native maps against the blocks' own recordings, the sum
// properties of local/self "attention received" maps, errors, and the model's state afterwards.
#include <attnkit/attnkit.h>
#include <attnkit/backbones/explain.h>
#include <attnkit/modules/relative_position.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <map>

#include "testing.h"
#include "testing_blocks.h"

using namespace attnkit;
using attnkit::testing::all_close;
using ::testing::HasSubstr;

namespace {

using attnkit::testing::block_attention;

using attnkit::testing::error_of;

/// A fresh model in eval mode, seeded.
std::shared_ptr<Backbone> eval_model(const std::string& name, uint64_t seed) {
  torch::manual_seed(seed);
  auto model = make_model(name, 10);
  model->module().eval();
  return model;
}

/// `recorder`'s map after one forward of `model` with recording on (and off again).
torch::Tensor recorded_map(Backbone& model, const torch::Tensor& x, AttentionMapRecorder& recorder) {
  recorder.record_attention(true);
  {
    torch::NoGradGuard no_grad;
    model.forward(x);
  }
  auto map = recorder.last_attention();
  recorder.record_attention(false);
  return map;
}


/// Per-image min-max to [0, 1], written out plainly (the reference's own normaliser).
using attnkit::testing::float32_pair_tolerance;
using attnkit::testing::max_abs;
using attnkit::testing::path_length;

/// How much min-max normalisation magnifies a raw map's rounding: max|raw| / (max − min).
double normalisation_gain(const torch::Tensor& raw) {
  const double range = (raw.max() - raw.min()).item<double>();
  return range > 0 ? max_abs(raw) / range : 1.0;
}

torch::Tensor minmax(const torch::Tensor& m) {
  auto out = torch::zeros_like(m);
  for (int64_t n = 0; n < m.size(0); ++n) {
    const double lo = m[n].min().item<double>(), hi = m[n].max().item<double>();
    if (hi - lo > 1e-6 * std::max(std::abs(hi), std::abs(lo))) out[n] = (m[n] - lo) / (hi - lo);
  }
  return out;
}

ExplainOptions with(ExplainMethod m, std::vector<std::string> layers = {}, int64_t target = -1) {
  ExplainOptions o;
  o.method = m;
  o.layers = std::move(layers);
  o.target = target;
  return o;
}

// ---- (a) a model whose answer is known ----------------------------------------------------------

/// ResNet-18 (small stem, 4 base channels, 2 input channels, 2 classes) where every convolution is
/// pointwise (only the centre tap is non-zero) and keeps channels of one parity apart: output channel
/// o reads input channels i with i ≡ o (mod 2). So the even channels of every map see only input
/// channel 0 at the same place, the odd ones only input channel 1, and fc reads class 0 from the
/// even channels, class 1 from the odd ones.
ResNet quadrant_model() {
  ResNet model(ResNetOptions(18).in_channels(2).num_classes(2).width(1.0 / 16).stem(Stem::Small));
  torch::NoGradGuard no_grad;
  for (auto& item : model->named_parameters()) {
    auto& p = item.value();
    const auto& name = item.key();
    if (p.dim() == 4) {
      p.zero_();
      const int64_t c = p.size(2) / 2;
      for (int64_t o = 0; o < p.size(0); ++o)
        for (int64_t i = o % 2; i < p.size(1); i += 2) p[o][i][c][c] = 1.0;
    } else if (name == "fc.weight") {
      p.zero_();
      for (int64_t c = 0; c < p.size(1); ++c) p[c % 2][c] = 1.0;
    } else if (name.find("bn") != std::string::npos || name.find("downsample.1") != std::string::npos) {
      name.size() > 6 && name.substr(name.size() - 6) == "weight" ? p.fill_(1.0) : p.zero_();
    } else if (name == "fc.bias") {
      p.zero_();
    }
  }
  model->eval();
  return model;
}

TEST(ExplainKnownAnswer, GradientCamsLightTheQuadrantOfTheTargetClassAndNothingElse) {
  auto model = quadrant_model();
  // Evidence for class 0 (channel 0) in the top-left quadrant, for class 1 (channel 1) bottom-right.
  auto x = torch::zeros({1, 2, 32, 32});
  x.index_put_({0, 0, torch::indexing::Slice(0, 16), torch::indexing::Slice(0, 16)}, 2.0);
  x.index_put_({0, 1, torch::indexing::Slice(16, 32), torch::indexing::Slice(16, 32)}, 1.0);
  using torch::indexing::Slice;
  for (auto method : {ExplainMethod::GradCam, ExplainMethod::GradCamPlusPlus, ExplainMethod::LayerCam}) {
    for (int64_t target : {-1, 0, 1}) {
      const auto e = explain(*model, x, with(method, {"layer4", "layer3"}, target));
      const int64_t cls = target < 0 ? 0 : target;  // class 0 has the stronger evidence
      ASSERT_EQ(e.targets[0].item<int64_t>(), cls);
      for (const auto& lm : e.maps) {
        const int64_t h = lm.map.size(1), half = h / 2;
        auto expected = torch::zeros({1, h, h});
        // Grad-CAM and Grad-CAM++ weight whole channels: the whole quadrant. LayerCAM weighs each
        // position by its own gradient, and layer4's stride-2 pointwise convolutions read only the
        // even positions of layer3: on layer3 exactly those light up.
        const auto step = method == ExplainMethod::LayerCam && lm.layer == "layer3" ? 2 : 1;
        const auto lit_step = cls == 0 ? Slice(0, half, step) : Slice(half, h, step);
        expected.index_put_({0, lit_step, lit_step}, 1.0);
        // Maps in [0, 1], in float32 along the whole network against exact 0 and 1.
        EXPECT_TRUE(all_close(lm.map, expected, attnkit::testing::rounding_tolerance(torch::kFloat, path_length(model->module()), 1.0)))
            << explain_method_name(method) << " " << lm.layer << " target " << target << "\n" << lm.map;
      }
    }
  }
}

TEST(ExplainKnownAnswer, EveryMethodPeaksInTheQuadrantWithTheEvidence) {
  auto model = quadrant_model();
  // The only evidence: class 0's channel, top-left quadrant.
  auto x = torch::zeros({2, 2, 32, 32});
  x.index_put_({torch::indexing::Slice(), 0, torch::indexing::Slice(0, 16), torch::indexing::Slice(0, 16)}, 2.0);
  auto options = with(ExplainMethod::Auto, {"layer3", "layer4"});
  options.batch_size = 7;  // several Score-CAM / Ablation-CAM passes, the last one short
  for (bool eigen_smooth : {false, true}) {
    options.eigen_smooth = eigen_smooth;
    for (const auto& e : explain(*model, x, cam_methods(), options)) {
      ASSERT_EQ(e.targets[0].item<int64_t>(), 0);
      for (const auto& lm : e.maps) {
        const int64_t h = lm.map.size(1), half = h / 2;
        for (int64_t n = 0; n < 2; ++n) {
          const auto m = lm.map[n];
          const int64_t at = m.argmax().item<int64_t>();
          EXPECT_TRUE(at / h < half && at % h < half)
              << explain_method_name(e.method) << (eigen_smooth ? " eigen_smooth " : " ") << lm.layer << "\n" << m;
          EXPECT_FLOAT_EQ(m.max().item<float>(), 1.f) << explain_method_name(e.method) << " " << lm.layer;
        }
      }
    }
  }
}

// ---- (b') every CAM against pytorch-grad-cam (tests/python/refs_explain.py) ------------------------

/// The torchvision ResNet-18 of refs_explain.py with its weights, in eval mode; null without references.
struct GradCamReference {
  std::map<std::string, torch::Tensor> refs;
  std::shared_ptr<Backbone> model;
  torch::Tensor x;
};

GradCamReference load_gradcam_reference() {
  GradCamReference r;
  r.refs = attnkit::testing::load_refs("explain_gradcam");
  if (r.refs.empty()) return r;
  r.model = make_model("resnet18", 1000);
  attnkit::testing::load_into(r.model->module(), attnkit::testing::with_prefix(r.refs, "state."));
  r.model->module().eval();
  r.x = r.refs.at("x");
  return r;
}

/// How far attnkit's map may lie from pytorch-grad-cam's. Both run the same float32 network (A and
/// the logits forward, G backward) and then the method's reductions over C·h·w terms, in different
/// orders: rounding_tolerance × 2 (both sides round) with K = 2 × the network's path (forward and
/// backward) + C·h·w, at the scale of the raw map's largest magnitude times `gain`, which carries the
/// perturbation methods' use of the logits (ablation_gain, scorecam_gain). Normalised maps divide by
/// the range (normalisation gain), and pytorch-grad-cam adds 1e-7 to it: ≤ 1e-7/range more.
double gradcam_tolerance(Backbone& model, int64_t reduction, double scale, double gain = 1.0) {
  const int64_t K = 2 * path_length(model.module()) + reduction;
  return float32_pair_tolerance(K, scale * gain).atol;
}

/// Score-CAM's weights are softmax(s) of logits s that carry an error e ≤ the network's bound at the
/// logits' scale: each weight moves by ≤ 2e relatively, and the map (positive weights times A ≥ 0, no
/// cancellation) by as much: gain 2·max(1, max|logit|) on the map's scale.
double scorecam_gain(const torch::Tensor& logits) { return 2 * std::max(1.0, max_abs(logits)); }

/// Ablation-CAM's weights (y − s)/y move by ≤ 2e/|y| each (e as above, y the target logit), and the
/// map Σ_c w_c A_c by ≤ 2e/|y|·C·max|A|: gain 2·max|logit|·C·max|A| / (min|y|·max|map|).
double ablation_gain(const torch::Tensor& logits, const torch::Tensor& targets, const torch::Tensor& a, double map_scale) {
  const double y = logits.gather(1, targets.view({-1, 1})).abs().min().item<double>();
  return 2 * max_abs(logits) * a.size(1) * max_abs(a) / (y * map_scale);
}

/// Eigen-based maps: pytorch-grad-cam's projection with the sign of attnkit's convention (the
/// reference stores it per image), rectified.
torch::Tensor signed_raw(const std::map<std::string, torch::Tensor>& refs, const std::string& key) {
  auto raw = refs.at(key + ".raw").to(torch::kDouble);
  if (refs.count(key + ".sign")) raw = raw * refs.at(key + ".sign").to(torch::kDouble).view({-1, 1, 1});
  return raw.clamp_min(0);
}

TEST(ExplainPytorchGradCam, EveryMethodEqualsItsMapAtTheLayerResolution) {
  auto r = load_gradcam_reference();
  if (r.refs.empty()) GTEST_SKIP() << "no Python references on this machine";
  auto raw_options = with(ExplainMethod::Auto, {"layer2", "layer3"});
  raw_options.normalize = false;
  raw_options.batch_size = 48;
  const auto methods = cam_methods();
  std::vector<torch::Tensor> features;  // layer2, layer3 of the reference input: A for ablation_gain
  {
    torch::NoGradGuard no_grad;
    const auto f = r.model->features(r.x);
    features = {f[1], f[2]};
  }
  const auto raw = explain(*r.model, r.x, methods, raw_options);
  auto norm_options = raw_options;
  norm_options.normalize = true;
  const auto normalised = explain(*r.model, r.x, methods, norm_options);
  ASSERT_EQ(raw.size(), methods.size());
  const auto& logits = r.refs.at("logits");
  for (size_t m = 0; m < methods.size(); ++m) {
    const auto name = explain_method_name(methods[m]);
    EXPECT_TRUE(torch::equal(raw[m].targets, r.refs.at("targets"))) << name;
    for (size_t l = 0; l < 2; ++l) {
      const auto key = name + "." + raw[m].maps[l].layer;
      const auto expected = signed_raw(r.refs, key);
      const auto& ours = raw[m].maps[l].map;
      const int64_t reduction = (l == 0 ? 128 : 256) * ours.size(1) * ours.size(2);
      const double gain = methods[m] == ExplainMethod::ScoreCam ? scorecam_gain(logits)
                          : methods[m] == ExplainMethod::AblationCam
                              ? ablation_gain(logits, r.refs.at("targets"), features[l], max_abs(expected))
                              : 1.0;
      const double tol = gradcam_tolerance(*r.model, reduction, max_abs(expected), gain);
      EXPECT_TRUE(all_close(ours, expected, tol)) << key;
      // pytorch-grad-cam's normalised map itself, where its projection's sign is attnkit's.
      const auto cam = r.refs.at(key + ".cam");
      const double range = (expected.amax({1, 2}) - expected.amin({1, 2})).min().item<double>();
      ASSERT_GT(range, 1e-3) << key << ": degenerate reference";
      for (int64_t n = 0; n < cam.size(0); ++n) {
        if (r.refs.count(key + ".sign") && r.refs.at(key + ".sign")[n].item<double>() < 0) continue;
        EXPECT_TRUE(all_close(normalised[m].maps[l].map[n], cam[n], tol / range + 1e-7 / range + 1e-6)) << key << " image " << n;
      }
    }
  }
}

TEST(ExplainPytorchGradCam, EigenSmoothAugSmoothTopKAndAveragedLayers) {
  auto r = load_gradcam_reference();
  if (r.refs.empty()) GTEST_SKIP() << "no Python references on this machine";
  const int64_t reduction = 256 * 4 * 4;
  {
    // eigen_smooth: the first component of each method's weighted activations.
    auto o = with(ExplainMethod::Auto, {"layer3"});
    o.normalize = false;
    o.eigen_smooth = true;
    const std::vector<ExplainMethod> methods = {ExplainMethod::GradCam,  ExplainMethod::HiResCam, ExplainMethod::GradCamPlusPlus,
                                                ExplainMethod::XGradCam, ExplainMethod::LayerCam, ExplainMethod::AblationCam};
    const auto e = explain(*r.model, r.x, methods, o);
    for (size_t m = 0; m < methods.size(); ++m) {
      const auto key = explain_method_name(methods[m]) + ".layer3.eigen_smooth";
      const auto expected = signed_raw(r.refs, key);
      const auto a3 = [&] {
        torch::NoGradGuard no_grad;
        return r.model->features(r.x)[2];
      };
      const double gain = methods[m] == ExplainMethod::AblationCam
                              ? ablation_gain(r.refs.at("logits"), r.refs.at("targets"), a3(), max_abs(expected))
                              : 1.0;
      EXPECT_TRUE(all_close(e[m].maps.at(0).map, expected, gradcam_tolerance(*r.model, reduction, max_abs(expected), gain))) << key;
    }
  }
  {
    // aug_smooth: the mean of six normalised maps (not normalised again), as pytorch-grad-cam returns it.
    auto o = with(ExplainMethod::Auto, {"layer3"});
    o.normalize = false;
    o.aug_smooth = true;
    const auto e = explain(*r.model, r.x, {ExplainMethod::GradCam, ExplainMethod::LayerCam}, o);
    for (const auto& one : e) {
      const auto key = explain_method_name(one.method) + ".layer3.aug_smooth";
      EXPECT_TRUE(torch::equal(one.targets, r.refs.at("targets")));
      // Six normalised maps averaged: each within the normalised tolerance (range ≥ 1e-2 here: the
      // raw maps' ranges in this reference), plus pytorch-grad-cam's 1e-7 in each range.
      const double tol = gradcam_tolerance(*r.model, reduction, 1.0) / 1e-2 + 1e-7 / 1e-2;
      EXPECT_TRUE(all_close(one.maps.at(0).map, r.refs.at(key + ".cam"), tol)) << key;
    }
  }
  {
    // top_k = 2: the second rank explains each image's second class.
    auto o = with(ExplainMethod::GradCam, {"layer3"});
    o.normalize = false;
    o.top_k = 2;
    const auto e = explain(*r.model, r.x, {ExplainMethod::GradCam}, o);
    ASSERT_EQ(e.size(), 2u);
    EXPECT_EQ(e[0].rank, 0);
    EXPECT_EQ(e[1].rank, 1);
    EXPECT_TRUE(torch::equal(e[1].targets, r.refs.at("second")));
    const auto expected = signed_raw(r.refs, "gradcam.layer3.second");
    EXPECT_TRUE(all_close(e[1].maps.at(0).map, expected, gradcam_tolerance(*r.model, reduction, max_abs(expected))));
    EXPECT_TRUE(all_close(e[0].maps.at(0).map, signed_raw(r.refs, "gradcam.layer3"),
                          gradcam_tolerance(*r.model, reduction, max_abs(expected))));
  }
  {
    // Two layers averaged at the input's resolution (pytorch-grad-cam's aggregation; its resize is
    // cv2.resize, bilinear with half-pixel centres like ATen's, to float32 rounding).
    auto o = with(ExplainMethod::GradCam, {"layer2", "layer3"});
    o.combine_layers = true;
    const auto e = explain(*r.model, r.x, o);
    ASSERT_EQ(e.maps.size(), 1u);
    EXPECT_EQ(e.maps[0].layer, "layer2+layer3");
    const double tol = gradcam_tolerance(*r.model, 128 * 64, 1.0) / 1e-2 + 1e-7 / 1e-2 + 1e-6;
    EXPECT_TRUE(all_close(e.maps[0].map, r.refs.at("gradcam.layer2+layer3.cam"), tol));
  }
}

// ---- (b) the CAM family against independent formulations, in double -----------------------------

struct Reference {
  std::shared_ptr<Backbone> model;
  torch::Tensor x, logits, targets;
  std::vector<torch::Tensor> features, grads;  // per stage, [N, C, h, w]
};

/// Stage outputs from features(), their gradients by torch::autograd::grad of the top-1 logits.
Reference make_reference(const std::string& name) {
  torch::manual_seed(7);
  Reference r;
  r.model = make_model(name, 10);
  r.model->module().to(torch::kDouble);
  r.model->module().eval();
  r.x = torch::randn({3, 3, 32, 32}, torch::kDouble);
  r.features = r.model->features(r.x);
  r.logits = r.model->forward_head(r.features);
  r.targets = r.logits.argmax(1);
  const auto score = r.logits.gather(1, r.targets.view({-1, 1})).sum();
  r.grads = torch::autograd::grad({score}, r.features);
  return r;
}

/// Selvaraju et al.: one channel at a time.
torch::Tensor reference_gradcam(const torch::Tensor& a, const torch::Tensor& g) {
  auto out = torch::zeros({a.size(0), a.size(2), a.size(3)}, a.options());
  for (int64_t n = 0; n < a.size(0); ++n)
    for (int64_t c = 0; c < a.size(1); ++c) out[n] += g[n][c].sum() / (a.size(2) * a.size(3)) * a[n][c];
  return out.clamp_min(0);
}

/// Chattopadhay et al., eq. 19 as pytorch-grad-cam writes it: 1e-6 added to the denominator and
/// α = 0 where the gradient is 0; one channel at a time.
torch::Tensor reference_gradcampp(const torch::Tensor& a, const torch::Tensor& g) {
  auto out = torch::zeros({a.size(0), a.size(2), a.size(3)}, a.options());
  for (int64_t n = 0; n < a.size(0); ++n) {
    for (int64_t c = 0; c < a.size(1); ++c) {
      const auto g1 = g[n][c], g2 = g1.pow(2), g3 = g1.pow(3);
      const auto alpha = torch::where(g1 != 0, g2 / (2 * g2 + a[n][c].sum() * g3 + 1e-6), torch::zeros_like(g2));
      out[n] += (alpha * g1.clamp_min(0)).sum() * a[n][c];
    }
  }
  return out.clamp_min(0);
}

/// Jiang et al.: element-wise positive gradients times activations, summed over channels.
torch::Tensor reference_layercam(const torch::Tensor& a, const torch::Tensor& g) {
  auto out = torch::zeros({a.size(0), a.size(2), a.size(3)}, a.options());
  for (int64_t c = 0; c < a.size(1); ++c) out += g.select(1, c).clamp_min(0) * a.select(1, c);
  return out.clamp_min(0);
}

/// First principal component from the eigendecomposition of the channel covariance (no SVD).
torch::Tensor reference_eigencam(const torch::Tensor& a) {
  auto out = torch::zeros({a.size(0), a.size(2), a.size(3)}, a.options());
  for (int64_t n = 0; n < a.size(0); ++n) {
    auto m = a[n].reshape({a.size(1), -1}).t();  // [hw, C]
    m = m - m.mean(0, true);
    const auto eig = at::linalg_eigh(m.t().mm(m), "L");
    const auto v = std::get<1>(eig).select(1, a.size(1) - 1);  // eigenvalues ascend
    auto p = m.mv(v);
    if ((p * a[n].sum(0).reshape(-1)).sum().item<double>() < 0) p = -p;
    out[n] = p.clamp_min(0).view({a.size(2), a.size(3)});
  }
  return out;
}

TEST(ExplainReference, CamFamilyMatchesIndependentFormulations) {
  const auto r = make_reference("resnet20-cbam");
  const std::vector<std::string> layers = {"layer2", "layer3"};
  const auto all = explain(*r.model, r.x,
                           {ExplainMethod::GradCam, ExplainMethod::GradCamPlusPlus, ExplainMethod::LayerCam,
                            ExplainMethod::EigenCam},
                           with(ExplainMethod::Auto, layers));
  ASSERT_EQ(all.size(), 4u);
  for (const auto& e : all) {
    EXPECT_TRUE(all_close(e.logits, r.logits, 1e-10));
    EXPECT_TRUE(torch::equal(e.targets, r.targets));
    ASSERT_EQ(e.maps.size(), 2u);
    for (size_t i = 0; i < 2; ++i) {
      EXPECT_EQ(e.maps[i].layer, layers[i]);
      EXPECT_EQ(e.maps[i].map.scalar_type(), torch::kFloat);
      const auto a = r.features[i + 1].detach(), g = r.grads[i + 1];
      torch::Tensor expected;
      switch (e.method) {
        case ExplainMethod::GradCam: expected = reference_gradcam(a, g); break;
        case ExplainMethod::GradCamPlusPlus: expected = reference_gradcampp(a, g); break;
        case ExplainMethod::LayerCam: expected = reference_layercam(a, g); break;
        default: expected = reference_eigencam(a);
      }
      EXPECT_GT(expected.max().item<double>(), 0) << "degenerate reference";
      // Both float32 along the network; normalising magnifies the raw map's rounding by its gain.
      EXPECT_TRUE(all_close(e.maps[i].map, minmax(expected),
                            float32_pair_tolerance(path_length(r.model->module()), normalisation_gain(expected))))
          << explain_method_name(e.method) << " " << layers[i];
    }
  }
  // Unnormalised Grad-CAM is the reference itself; a block name is that block's output.
  auto raw = with(ExplainMethod::GradCam, {"layer3.2"});
  raw.normalize = false;
  EXPECT_TRUE(all_close(explain(*r.model, r.x, raw).maps.at(0).map,
                        reference_gradcam(r.features[2].detach(), r.grads[2]),
                        float32_pair_tolerance(path_length(r.model->module()), max_abs(reference_gradcam(r.features[2].detach(), r.grads[2])))));
}

TEST(ExplainReference, EachMethodAloneEqualsTheSharedPassAndBatchesAreIndependent) {
  auto model = eval_model("resnet20-cbam", 3);
  const auto x = torch::randn({2, 3, 32, 32});
  std::vector<ExplainMethod> methods = {ExplainMethod::Native};
  for (auto m : cam_methods()) methods.push_back(m);
  const auto together = explain(*model, x, methods, with(ExplainMethod::Auto, {"all"}));
  for (size_t m = 0; m < methods.size(); ++m) {
    const auto alone = explain(*model, x, with(methods[m], {"all"}));
    const auto first = explain(*model, x.slice(0, 0, 1), with(methods[m], {"all"}));
    ASSERT_EQ(alone.maps.size(), together[m].maps.size());
    for (size_t i = 0; i < alone.maps.size(); ++i) {
      EXPECT_EQ(alone.maps[i].layer, together[m].maps[i].layer);
      // The shared pass records maps, so its CBAMs run the composite path: float rounding differs.
      // Normalised maps of the whole network in float32 on two paths.
      const auto tol = float32_pair_tolerance(path_length(model->module()), 1.0);
      EXPECT_TRUE(all_close(alone.maps[i].map, together[m].maps[i].map, tol)) << alone.maps[i].layer;
      EXPECT_TRUE(all_close(first.maps[i].map, alone.maps[i].map.slice(0, 0, 1), tol)) << alone.maps[i].layer;
    }
  }
  EXPECT_EQ(together[0].maps.size(), 9u);  // every CBAM block
  EXPECT_EQ(together[1].maps.size(), 3u);  // every stage
}

TEST(ExplainInferencePath, ScoreCamAndAblationCamMatchTheModule) {
  // The perturbation methods need no gradient: their masked and ablated forwards run on the frozen
  // network (BatchNorm folded, other rounding), rank by rank from the same passes.
  auto model = eval_model("resnet20-cbam", 21);
  InferenceModel frozen(model);
  const auto x = torch::randn({2, 3, 32, 32});
  auto o = with(ExplainMethod::Auto, {"layer2", "layer3"});
  o.batch_size = 13;  // passes that cut across images
  o.top_k = 2;
  const std::vector<ExplainMethod> methods = {ExplainMethod::ScoreCam, ExplainMethod::AblationCam};
  const auto eager = explain(*model, x, methods, o), inference = explain(frozen, x, methods, o);
  ASSERT_EQ(eager.size(), 4u);
  for (size_t k = 0; k < eager.size(); ++k) {
    EXPECT_EQ(inference[k].method, methods[k / 2]);
    EXPECT_EQ(inference[k].rank, static_cast<int64_t>(k % 2));
    EXPECT_TRUE(torch::equal(eager[k].targets, inference[k].targets));
    for (size_t i = 0; i < eager[k].maps.size(); ++i)
      // Normalised maps from logits of two float32 paths; as the Eigen-CAM comparison of the two
      // paths (test_inference_model.cpp), an absolute 1e-3 on [0, 1].
      EXPECT_TRUE(all_close(inference[k].maps[i].map, eager[k].maps[i].map, 1e-3))
          << explain_method_name(eager[k].method) << " rank " << k % 2 << " " << eager[k].maps[i].layer;
  }
}

// ---- (c) native maps ----------------------------------------------------------------------------

TEST(ExplainNative, CbamMapsAreTheSpatialGatesRecordedDirectly) {
  torch::manual_seed(5);
  auto model = make_model("resnet20-cbam", 10);
  {
    // The official init zeroes the spatial BN weight (a constant 0.5 gate): give the gates a shape.
    torch::NoGradGuard no_grad;
    for (auto& p : model->module().named_parameters())
      if (p.key().find("spatial.bn.weight") != std::string::npos) p.value().fill_(1.0);
  }
  model->module().eval();
  const auto x = torch::randn({2, 3, 32, 32});
  const auto e = explain(*model, x);  // Auto → native, every block
  EXPECT_EQ(e.method, ExplainMethod::Native);
  auto raw_options = ExplainOptions{};
  raw_options.normalize = false;
  const auto raw = explain(*model, x, raw_options);

  auto attn = block_attention(*model);
  for (auto& a : attn) std::dynamic_pointer_cast<CBAMImpl>(a)->record_attention(true);
  torch::Tensor logits;
  {
    torch::NoGradGuard no_grad;
    logits = model->forward(x);
  }
  ASSERT_EQ(e.maps.size(), attn.size());
  const int64_t K = path_length(model->module());
  EXPECT_TRUE(all_close(e.logits, logits, float32_pair_tolerance(K, max_abs(logits))));
  const std::vector<std::string> names = {"layer1.0", "layer1.1", "layer1.2", "layer2.0", "layer2.1",
                                          "layer2.2", "layer3.0", "layer3.1", "layer3.2"};
  for (size_t i = 0; i < attn.size(); ++i) {
    const auto gate = std::dynamic_pointer_cast<CBAMImpl>(attn[i])->last_attention().squeeze(1);
    EXPECT_EQ(e.maps[i].layer, names[i]);
    EXPECT_TRUE(all_close(raw.maps[i].map, gate, float32_pair_tolerance(K, 1.0))) << names[i];  // gates in (0, 1)
    EXPECT_TRUE(all_close(e.maps[i].map, minmax(gate), float32_pair_tolerance(K, normalisation_gain(gate)))) << names[i];
    EXPECT_GT(gate.max().item<double>() - gate.min().item<double>(), 1e-3) << names[i];
  }
  // A stage name is its blocks.
  const auto stage = explain(*model, x, with(ExplainMethod::Native, {"layer2"}));
  ASSERT_EQ(stage.maps.size(), 3u);
  EXPECT_EQ(stage.maps[2].layer, "layer2.2");
}

TEST(ExplainNative, LocalAttentionReceivedSumsToOneAndAQueryLightsItsWindow) {
  auto model = eval_model("resnet20-[,,local]", 11);
  const auto x = torch::randn({2, 3, 32, 32});
  ExplainOptions o = with(ExplainMethod::Native, {"layer3.1"});
  o.normalize = false;
  const auto avg = explain(*model, x, o).maps.at(0).map;  // [2, 8, 8]
  ASSERT_EQ(avg.sizes(), (torch::IntArrayRef{2, 8, 8}));
  // Sums of softmax weights: the network's path, then the 64 positions and the k² keys.
  const auto tol = float32_pair_tolerance(path_length(model->module()) + 64 + 49, 1.0);
  EXPECT_TRUE(all_close(avg.sum({1, 2}), torch::ones({2}), tol));

  // Brute force: every query's window weights placed at their keys, averaged over queries and heads.
  auto local = std::dynamic_pointer_cast<LocalAttention2dImpl>(block_attention(*model)[7]);
  ASSERT_TRUE(local);
  const auto w = recorded_map(*model, x, *local).mean(1);  // [N, H, W, k, k]
  const int64_t k = local->options.kernel_size();
  auto expected = torch::zeros({2, 8, 8});
  auto at_query = torch::zeros({2, 8, 8});
  const int64_t qy = 2, qx = 6;  // the query point (0.3, 0.8) → column 6, row 2 of 8
  for (int64_t y = 0; y < 8; ++y)
    for (int64_t xx = 0; xx < 8; ++xx) {
      const int64_t sy = neighborhood_window_start(y, 8, k, 1), sx = neighborhood_window_start(xx, 8, k, 1);
      using torch::indexing::Slice;
      expected.index({Slice(), Slice(sy, sy + k), Slice(sx, sx + k)}) += w.index({Slice(), y, xx}) / 64.0;
      if (y == qy && xx == qx) at_query.index({Slice(), Slice(sy, sy + k), Slice(sx, sx + k)}) += w.index({Slice(), y, xx});
    }
  EXPECT_TRUE(all_close(avg, expected, tol));
  o.query_x = 0.8;
  o.query_y = 0.3;
  const auto q = explain(*model, x, o).maps.at(0).map;
  EXPECT_TRUE(all_close(q, at_query, tol));
  EXPECT_TRUE(all_close(q.sum({1, 2}), torch::ones({2}), tol));
}

TEST(ExplainNative, SelfAttentionReceivedSumsToOneAndAQueryIsItsRecordedRow) {
  auto model = eval_model("resnet20-[,,self]", 13);
  const auto x = torch::randn({2, 3, 32, 32});
  ExplainOptions o = with(ExplainMethod::Native, {"layer3"});
  o.normalize = false;
  const auto avg = explain(*model, x, o);
  ASSERT_EQ(avg.maps.size(), 3u);
  // Softmax weights over the network's path and the 64 keys, summed over 64 positions.
  const auto tol = float32_pair_tolerance(path_length(model->module()) + 2 * 64, 1.0);
  for (const auto& m : avg.maps) EXPECT_TRUE(all_close(m.map.sum({1, 2}), torch::ones({2}), tol)) << m.layer;

  auto self = std::dynamic_pointer_cast<SelfAttention2dImpl>(block_attention(*model)[6]);  // layer3.0, stride 2
  ASSERT_TRUE(self);
  o.query_x = 0.0;
  o.query_y = 0.99;
  o.layers = {"layer3.0"};
  const auto q = explain(*model, x, o).maps.at(0).map;
  EXPECT_TRUE(self->options.record_queries().empty()) << "record_queries restored";
  EXPECT_FALSE(self->recording());
  self->options.record_queries({{7, 0}});
  EXPECT_TRUE(all_close(q, recorded_map(*model, x, *self).mean({1, 2}), tol));  // [N, heads, 1, H, W] → [N, H, W]
  // Averaged over all queries = the mean of every query's row.
  std::vector<Position2d> all;
  for (int64_t r = 0; r < 8; ++r)
    for (int64_t c = 0; c < 8; ++c) all.emplace_back(r, c);
  self->options.record_queries(all);
  EXPECT_TRUE(all_close(avg.maps[0].map, recorded_map(*model, x, *self).mean({1, 2}), tol));
}

// ---- (d) errors ---------------------------------------------------------------------------------

TEST(ExplainErrors, NameTheProblemAndTheValidChoices) {
  auto model = eval_model("resnet20-cbam", 0);
  const auto x = torch::randn({1, 3, 32, 32});
  const auto unknown = error_of([&] { explain(*model, x, with(ExplainMethod::GradCam, {"layer9"})); });
  EXPECT_THAT(unknown, HasSubstr("unknown layer \"layer9\""));
  EXPECT_THAT(unknown, HasSubstr("layer1, layer2, layer3, layer1.0"));
  EXPECT_THAT(unknown, HasSubstr("layer3.2, all"));
  EXPECT_THAT(error_of([&] { explain(*model, x, with(ExplainMethod::GradCam, {}, 10)); }),
              HasSubstr("target class 10 is outside [0, 10)"));
  EXPECT_THAT(error_of([&] { explain(*model, x, with(ExplainMethod::GradCam, {}, -2)); }), HasSubstr("outside [0, 10)"));
  EXPECT_THAT(error_of([] { explain_method_from_name("gradcam+"); }),
              HasSubstr("valid methods: auto, native, gradcam, gradcam++, layercam, eigencam, hirescam, xgradcam, "
                        "eigengradcam, scorecam, ablationcam"));
  EXPECT_THAT(error_of([&] { explain(*model, x, with(ExplainMethod::GradCam, {"layer3.7"})); }),
              HasSubstr("unknown layer \"layer3.7\""));
  auto k = with(ExplainMethod::GradCam);
  k.top_k = 11;
  EXPECT_THAT(error_of([&] { explain(*model, x, k); }), HasSubstr("top_k 11 is outside [1, 10]"));
  auto bound = with(ExplainMethod::ScoreCam);
  bound.batch_size = 0;
  EXPECT_THAT(error_of([&] { explain(*model, x, bound); }), HasSubstr("batch_size 0 is outside [1, 4096]"));
  bound.batch_size = 5000;
  EXPECT_THAT(error_of([&] { explain(*model, x, bound); }), HasSubstr("batch_size 5000 is outside [1, 4096]"));
  auto aug_query = with(ExplainMethod::Native);
  aug_query.aug_smooth = true;
  aug_query.query_x = aug_query.query_y = 0.5;
  EXPECT_THAT(error_of([&] { explain(*model, x, aug_query); }), HasSubstr("aug_smooth flips the input"));
  auto q = with(ExplainMethod::Native);
  q.query_x = 1.5;
  q.query_y = 0.5;
  EXPECT_THAT(error_of([&] { explain(*model, x, q); }), HasSubstr("query point must lie in [0, 1]"));

  auto se = eval_model("resnet20-se", 0);
  EXPECT_THAT(error_of([&] { explain(*se, x, with(ExplainMethod::Native)); }),
              HasSubstr("model resnet20-se has none (attention per stage: se,se,se)"));
  EXPECT_EQ(explain(*se, x).method, ExplainMethod::GradCam);  // Auto without spatial maps
  EXPECT_FALSE(has_spatial_attention(*se));
  EXPECT_TRUE(explainable_layers(*se, ExplainMethod::Native).empty());

  auto local = eval_model("resnet20-[,,local]", 0);
  EXPECT_THAT(error_of([&] { explain(*local, x, with(ExplainMethod::Native, {"layer1"})); }),
              HasSubstr("layer \"layer1\" of resnet20-[,,local] has no spatial attention map; native layers: layer3, "
                        "layer3.0, layer3.1, layer3.2, all"));
  EXPECT_EQ(explainable_layers(*local, ExplainMethod::Auto),
            (std::vector<std::string>{"layer3", "layer3.0", "layer3.1", "layer3.2", "all"}));
  EXPECT_EQ(explainable_layers(*local, ExplainMethod::EigenCam).size(), 3u + 9u + 1u);
}

// ---- (e) the model's state afterwards -----------------------------------------------------------

TEST(ExplainState, ModeRecordingFlagsAndGradientsAreLeftAsTheyWere) {
  auto model = make_model("resnet20-cbam", 10);
  const auto x = torch::randn({2, 3, 32, 32});
  auto attn = block_attention(*model);
  auto first = std::dynamic_pointer_cast<CBAMImpl>(attn[0]);
  first->record_attention(true);
  for (bool training : {false, true}) {
    model->module().train(training);
    for (auto m : {ExplainMethod::Native, ExplainMethod::GradCam, ExplainMethod::EigenCam}) {
      torch::NoGradGuard caller_has_no_grad;  // CAMs turn gradients on for themselves
      const auto e = explain(*model, x, with(m, {"all"}));
      EXPECT_FALSE(e.logits.requires_grad());
      EXPECT_EQ(model->module().is_training(), training);
      EXPECT_TRUE(first->recording());
      for (size_t i = 1; i < attn.size(); ++i) EXPECT_FALSE(std::dynamic_pointer_cast<CBAMImpl>(attn[i])->recording());
      for (const auto& p : model->module().parameters()) EXPECT_FALSE(p.grad().defined());
      for (const auto& lm : e.maps) {
        EXPECT_GE(lm.map.min().item<float>(), 0.f);
        EXPECT_LE(lm.map.max().item<float>(), 1.f);
        EXPECT_FALSE(lm.map.requires_grad());
      }
    }
  }
  // Frozen parameters: the activations still get their gradients.
  model->module().eval();
  for (auto& p : model->module().parameters()) p.requires_grad_(false);
  const auto frozen = explain(*model, x, with(ExplainMethod::GradCam));
  EXPECT_GT(frozen.maps.at(0).map.max().item<float>(), 0.f);
}

TEST(ExplainDevices, CudaMatchesCpu) {
  if (!attnkit::testing::cuda_available()) GTEST_SKIP() << "no CUDA device";
  auto model = eval_model("resnet20-[cbam,local,self]", 17);
  const auto x = torch::randn({2, 3, 32, 32});
  std::vector<ExplainMethod> methods = {ExplainMethod::Native};
  for (auto m : cam_methods()) methods.push_back(m);
  auto options = with(ExplainMethod::Auto, {"all"});
  options.top_k = 2;
  const auto cpu = explain(*model, x, methods, options);
  model->module().to(torch::kCUDA);
  const auto cuda = explain(*model, x, methods, options);  // input moved for us
  ASSERT_EQ(cuda.size(), cpu.size());
  for (size_t m = 0; m < cpu.size(); ++m)
    for (size_t i = 0; i < cpu[m].maps.size(); ++i) {
      EXPECT_TRUE(cuda[m].maps[i].map.is_cuda());
      EXPECT_TRUE(all_close(cuda[m].maps[i].map, cpu[m].maps[i].map, 1e-3)) << cpu[m].maps[i].layer;
    }
}

}  // namespace
