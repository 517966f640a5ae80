// InferenceModel: the frozen inference path against the module it was made from.
//
// Reference: the same network, same weights, run eagerly in float64 (an independent computation:
// BatchNorm applied as BatchNorm, no folding, no oneDNN post-ops, no channels-last). Tolerance, for
// float32 logits: twice the float32 bound of the eager network (rounding_tolerance with K = every
// conv's and fc's reduction length along the path, scale = max|logits|). Why twice: the inference
// path is one float32 computation like eager float32, and folding rounds each folded weight and bias
// once more (W·s and β + (b − μ)·s are computed in float64, rounded once to float32: a relative
// error ≤ u per weight), an error of the same form as, and at most as large as, each layer's own
// accumulation error.
#include <attnkit/attnkit.h>
#include <attnkit/backbones/explain.h>
#include <attnkit/backbones/inference_model.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <thread>

#include "testing.h"

using namespace attnkit;
using attnkit::testing::all_close;
using attnkit::testing::error_of;
using ::testing::HasSubstr;

namespace {

/// BatchNorm statistics and affine parameters away from their identity initialisation, so that
/// folding has something to fold (seeded; the same for two models built alike). The last BatchNorm
/// of each residual branch gets a small γ, as in trained ResNets: otherwise every block adds a
/// branch as large as its input, activations grow with depth, and the unscaled dot products of the
/// non-local block saturate its softmax — a network on which float32 itself cannot follow float64.
void randomise_batchnorms(torch::nn::Module& model, uint64_t seed) {
  torch::NoGradGuard no_grad;
  torch::manual_seed(seed);
  for (auto& m : model.modules()) {
    if (auto* bn = m->as<torch::nn::BatchNorm2d>()) {
      bn->running_mean.normal_(0, 0.2);
      bn->running_var.uniform_(0.5, 2.0);
      if (bn->options.affine()) {
        bn->weight.uniform_(0.5, 1.0);
        bn->bias.normal_(0, 0.2);
      }
    }
  }
  for (auto& m : model.modules()) {
    torch::nn::BatchNorm2dImpl* last = nullptr;
    if (auto* basic = m->as<BasicBlockImpl>()) last = basic->bn2.get();
    if (auto* bottleneck = m->as<BottleneckImpl>()) last = bottleneck->bn3.get();
    if (last != nullptr) last->weight.uniform_(0.1, 0.3);
  }
}

struct Case {
  std::string label;
  std::function<std::shared_ptr<Backbone>()> build;
  std::vector<int64_t> size;  // H, W
};

/// Builds `c` twice with the same seed: float32 (to freeze) and float64 (the reference), both eval.
std::pair<std::shared_ptr<Backbone>, std::shared_ptr<Backbone>> model_pair(const Case& c, uint64_t seed) {
  auto make = [&](torch::ScalarType dtype) {
    torch::manual_seed(seed);
    auto m = c.build();
    randomise_batchnorms(m->module(), seed + 1);
    m->module().to(dtype);
    m->module().eval();
    return m;
  };
  return {make(torch::kFloat), make(torch::kDouble)};
}

attnkit::testing::Tolerance inference_tolerance(Backbone& model, const torch::Tensor& ref_logits) {
  return attnkit::testing::rounding_tolerance(torch::kFloat, attnkit::testing::path_length(model.module()),
                                              attnkit::testing::max_abs(ref_logits)) * 2;
}

/// Every backbone family and depth, with `attention`, at sizes that keep the test quick: width 1/8
/// for the ImageNet family, odd input sizes; windowed attention needs maps at least its window (7)
/// wide in the last stage, so it gets the small stem and larger inputs.
std::vector<Case> every_backbone(const std::string& attention) {
  std::vector<Case> cases;
  const bool windowed = attention == "local";
  for (int64_t depth : {18, 34, 50, 101, 152}) {
    auto o = ResNetOptions(depth).attention(attention).num_classes(7).width(0.125);
    if (windowed) o.stem(Stem::Small);
    cases.push_back({"resnet" + std::to_string(depth) + "-" + attention,
                     [o] { return std::make_shared<ResNetImpl>(o); },
                     windowed ? std::vector<int64_t>{59, 57} : std::vector<int64_t>{45, 37}});
  }
  for (int64_t depth : {20, 32, 44, 56, 110}) {
    auto o = CifarResNetOptions(depth).attention(attention).num_classes(7);
    cases.push_back({"resnet" + std::to_string(depth) + "-" + attention,
                     [o] { return std::make_shared<CifarResNetImpl>(o); },
                     windowed ? std::vector<int64_t>{31, 29} : std::vector<int64_t>{13, 11}});
  }
  return cases;
}

}  // namespace

TEST(InferenceModel, MatchesTheEagerModuleOnEveryBackboneAttentionAndBatch) {
  for (const auto& attention : attention_names()) {
    for (const auto& c : every_backbone(attention)) {
      SCOPED_TRACE(c.label);
      auto [model, reference] = model_pair(c, 7);
      InferenceModel frozen(model);
      for (int64_t batch : {1, 5}) {
        SCOPED_TRACE("batch " + std::to_string(batch));
        const auto x = torch::randn({batch, 3, c.size[0], c.size[1]}, torch::kDouble);
        torch::NoGradGuard no_grad;
        const auto expected = reference->forward(x);
        const auto actual = frozen.forward(x.to(torch::kFloat));
        EXPECT_EQ(actual.scalar_type(), torch::kFloat);
        EXPECT_TRUE(all_close(actual, expected, inference_tolerance(*model, expected)));
      }
    }
  }
}

TEST(InferenceModel, FeaturesAndBlockByBlockEqualForward) {
  auto [model, reference] = model_pair({"resnet50-cbam", [] { return make_model("resnet50-cbam", 7); }, {}}, 3);
  InferenceModel frozen(model);
  const auto x = torch::randn({2, 3, 65, 71});
  torch::NoGradGuard no_grad;
  const auto logits = frozen.forward(x);
  const auto features = frozen.features(x);
  ASSERT_EQ(features.size(), 4u);
  const auto eager = model->features(x);
  for (size_t i = 0; i < 4; ++i) {
    EXPECT_EQ(features[i].sizes(), eager[i].sizes());
    EXPECT_TRUE(features[i].is_contiguous(torch::MemoryFormat::ChannelsLast)) << "stage " << i;
  }
  EXPECT_TRUE(torch::equal(frozen.forward_head(features.back()), logits));
  auto y = frozen.forward_stem(x);
  for (size_t i = 0; i < frozen.num_blocks(); ++i) y = frozen.forward_block(i, y);
  EXPECT_TRUE(torch::equal(frozen.forward_head(y), logits));  // the same kernels in the same order
}

TEST(InferenceModel, AnyInputLayoutAndDtypeGivesTheSameLogits) {
  auto model = make_model("resnet20-cbam", 10);
  model->module().eval();
  InferenceModel frozen(model);
  const auto x = torch::randn({3, 3, 21, 19});
  const auto logits = frozen.forward(x);
  EXPECT_TRUE(torch::equal(frozen.forward(x.contiguous(torch::MemoryFormat::ChannelsLast)), logits));
  const auto wide = torch::randn({3, 3, 21, 38});
  auto strided = wide.slice(3, 0, 38, 2);
  strided.copy_(x);
  ASSERT_FALSE(strided.is_contiguous());
  EXPECT_TRUE(torch::equal(frozen.forward(strided), logits));
  EXPECT_TRUE(torch::equal(frozen.forward(x.to(torch::kDouble)), logits));  // converted to float32 first
}

TEST(InferenceModel, WithoutPrepackingMatchesToo) {
  // ATen's conv2d on the folded weights (the path CUDA and float64 take): the folding alone.
  Case c{"resnet34-se", [] { return std::make_shared<ResNetImpl>(ResNetOptions(34).attention("se").num_classes(7).width(0.25)); }, {47, 41}};
  auto [model, reference] = model_pair(c, 11);
  InferenceModel frozen(model, InferenceOptions().prepack(false));
  EXPECT_FALSE(frozen.prepacked());
  const auto x = torch::randn({2, 3, 47, 41}, torch::kDouble);
  torch::NoGradGuard no_grad;
  const auto expected = reference->forward(x);
  EXPECT_TRUE(all_close(frozen.forward(x.to(torch::kFloat)), expected, inference_tolerance(*model, expected)));
}

TEST(InferenceModel, Float64FreezesToo) {
  Case c{"resnet20-cbam", [] { return make_model("resnet20-cbam", 7); }, {}};
  auto [model, reference] = model_pair(c, 5);
  InferenceModel frozen(reference, InferenceOptions().dtype(torch::kDouble));
  const auto x = torch::randn({2, 3, 17, 23}, torch::kDouble);
  torch::NoGradGuard no_grad;
  const auto expected = reference->forward(x);
  EXPECT_TRUE(all_close(frozen.forward(x), expected,
                        attnkit::testing::rounding_tolerance(torch::kDouble, attnkit::testing::path_length(reference->module()),
                                                             attnkit::testing::max_abs(expected)) * 2));
}

TEST(InferenceModel, Bfloat16KeepsTheTopClassOfClearPredictions) {
  // bfloat16 rounds every activation to 8 bits (relative error 2^-8 per layer), so logits move by
  // about a percent; where the float32 margin between the top two classes is wide, the top class
  // must not change. (The bundled samples' top-1 agreement is in test_classify.) A randomly
  // initialised network's logits are nearly uniform: of 64 images, a handful have such a margin.
  auto model = make_model("resnet20-cbam", 10);
  randomise_batchnorms(model->module(), 2);
  model->module().eval();
  InferenceModel fp32(model), bf16(model, InferenceOptions().dtype(torch::kBFloat16));
  const auto x = torch::randn({64, 3, 24, 24});
  const auto a = fp32.forward(x), b = bf16.forward(x);
  EXPECT_EQ(b.scalar_type(), torch::kFloat);
  const auto top2 = std::get<0>(a.topk(2, 1));
  const auto margin = (top2.select(1, 0) - top2.select(1, 1)) / top2.abs().amax(1).clamp_min(1e-6);
  const auto clear = margin > 0.1;
  ASSERT_GT(clear.sum().item<int64_t>(), 0);
  EXPECT_TRUE(torch::equal(a.argmax(1).masked_select(clear), b.argmax(1).masked_select(clear)));
}

TEST(InferenceModel, RecordedAttentionMapsComeOutOfTheInferencePath) {
  for (const std::string name : {"resnet18-cbam", "resnet20-[,,self]", "resnet20-[,,local]", "resnet20-spatial"}) {
    SCOPED_TRACE(name);
    torch::manual_seed(1);
    auto model = make_model(name, 10);
    randomise_batchnorms(model->module(), 4);
    model->module().eval();
    InferenceModel frozen(model);
    const auto x = torch::randn({2, 3, name == "resnet18-cbam" ? 64 : 32, 32});
    ExplainOptions o;
    o.method = ExplainMethod::Native;
    o.normalize = false;
    const auto eager = explain(*model, x, o), inference = explain(frozen, x, o);
    ASSERT_EQ(eager.maps.size(), inference.maps.size());
    ASSERT_FALSE(eager.maps.empty());
    EXPECT_TRUE(torch::equal(eager.targets, inference.targets));
    for (size_t i = 0; i < eager.maps.size(); ++i) {
      SCOPED_TRACE(eager.maps[i].layer);
      EXPECT_EQ(inference.maps[i].layer, eager.maps[i].layer);
      // Gates in (0, 1) and attention weights summing to 1: two float32 computations of the same
      // map by paths of the network's length.
      EXPECT_TRUE(all_close(inference.maps[i].map, eager.maps[i].map,
                            attnkit::testing::float32_pair_tolerance(attnkit::testing::path_length(model->module()), 1.0)));
    }
    // Eigen-CAM needs no gradient either: the same on both paths.
    o.method = ExplainMethod::EigenCam;
    o.normalize = true;
    const auto eigen_eager = explain(*model, x, o), eigen_inference = explain(frozen, x, o);
    EXPECT_TRUE(all_close(eigen_inference.maps[0].map, eigen_eager.maps[0].map, 1e-3));
  }
}

TEST(InferenceModel, WeightsChangedAfterFreezingAreFrozenAgain) {
  auto model = make_model("resnet20-se", 10);
  model->module().eval();
  InferenceModel frozen(model);
  const auto x = torch::randn({2, 3, 16, 16});
  const auto before = frozen.forward(x);
  auto& core = dynamic_cast<ResNetCore&>(*model);
  {
    torch::NoGradGuard no_grad;
    core.conv1->weight.mul_(-1.5);  // an optimizer step would do this
  }
  torch::NoGradGuard no_grad;
  const auto eager = model->forward(x);
  const auto after = frozen.forward(x);
  EXPECT_FALSE(all_close(after, before, 1e-3));
  EXPECT_TRUE(all_close(after, eager, attnkit::testing::float32_pair_tolerance(attnkit::testing::path_length(model->module()),
                                                                               attnkit::testing::max_abs(eager)) * 2));
  // A BatchNorm's running statistics count too (load_state_dict copies into them).
  core.bn1->running_var.copy_(core.bn1->running_var * 4);
  const auto eager2 = model->forward(x);
  EXPECT_TRUE(all_close(frozen.forward(x), eager2, attnkit::testing::float32_pair_tolerance(
                                                       attnkit::testing::path_length(model->module()), attnkit::testing::max_abs(eager2)) * 2));
}

TEST(InferenceModel, TrainingModeIsAnError) {
  auto model = make_model("resnet20", 10);
  EXPECT_THAT(error_of([&] { InferenceModel frozen(model); }), HasSubstr("the model is in training mode; call model->module().eval()"));
  model->module().eval();
  InferenceModel frozen(model);
  model->module().train();
  EXPECT_THAT(error_of([&] { frozen.forward(torch::randn({1, 3, 16, 16})); }),
              HasSubstr("switched to training mode after freezing"));
}

TEST(InferenceModel, BadArgumentsNameTheProblem) {
  auto model = make_model("resnet20-cbam", 10);
  model->module().eval();
  InferenceModel frozen(model);
  EXPECT_THAT(error_of([&] { frozen.forward(torch::randn({1, 1, 16, 16})); }), HasSubstr("expected input of shape [N, 3, H, W]"));
  EXPECT_THAT(error_of([&] { frozen.forward(torch::randn({3, 16, 16})); }), HasSubstr("expected input of shape"));
  EXPECT_THAT(error_of([&] { frozen.forward(torch::ones({1, 3, 16, 16}, torch::kLong)); }), HasSubstr("floating"));
  EXPECT_THAT(error_of([&] { frozen.forward_block(9, torch::randn({1, 16, 8, 8})); }), HasSubstr("index 9 out of range"));
  EXPECT_THAT(error_of([&] { frozen.forward_head(torch::randn({1, 5, 2, 2})); }), HasSubstr("expected the last stage's output"));
  EXPECT_THAT(error_of([&] { InferenceModel(model, InferenceOptions().dtype(torch::kHalf)); }),
              HasSubstr("dtype must be float32, bfloat16 or float64"));
  EXPECT_THAT(error_of([&] { InferenceModel(model, InferenceOptions().dtype(torch::kDouble)); }),
              HasSubstr("options dtype Double on a model with Float parameters"));
  EXPECT_THAT(error_of([&] { InferenceModel(nullptr); }), HasSubstr("model is null"));
  ExplainOptions o;
  o.method = ExplainMethod::GradCam;
  EXPECT_THAT(error_of([&] { explain(frozen, torch::randn({1, 3, 16, 16}), o); }),
              HasSubstr("gradcam needs gradients, which the inference path does not compute"));
}

TEST(InferenceModel, OneFrozenModelServesTwoThreads) {
  auto model = make_model("resnet20-cbam", 10);
  model->module().eval();
  InferenceModel frozen(model);
  std::vector<torch::Tensor> inputs, expected;
  for (int i = 0; i < 4; ++i) {
    inputs.push_back(torch::randn({2, 3, 20, 20}));
    expected.push_back(frozen.forward(inputs.back()));
  }
  std::vector<std::vector<torch::Tensor>> got(2);
  auto work = [&](int t) {
    for (int round = 0; round < 10; ++round)
      for (size_t i = 0; i < inputs.size(); ++i) got[t].push_back(frozen.forward(inputs[(i + t) % inputs.size()]));
  };
  std::thread a(work, 0), b(work, 1);
  a.join();
  b.join();
  for (int t = 0; t < 2; ++t)
    for (size_t k = 0; k < got[t].size(); ++k)
      EXPECT_TRUE(torch::equal(got[t][k], expected[(k % inputs.size() + t) % inputs.size()])) << "thread " << t << " call " << k;
}
