// ResNet / CifarResNet: parity with torchvision, timm and the official CBAM code (weights imported
// from the files those write), parameter counts, names, every depth × attention, registry, errors.
#include <attnkit/attnkit.h>
#include <attnkit/backbones/backbones.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <fstream>
#include <set>

#include "testing.h"

using namespace attnkit;
using attnkit::testing::all_close;
using ::testing::HasSubstr;

namespace {

bool has_attention(const std::string& name) {
  const auto& n = attention_names();
  return std::find(n.begin(), n.end(), name) != n.end();
}

#define SKIP_UNLESS_ATTENTION(name) \
  if (!has_attention(name)) GTEST_SKIP() << "attention \"" << name << "\" is not registered in make_attention yet"

std::string ref_file(const std::string& name) { return std::string(ATTNKIT_REFS_DIR) + "/" + name; }

bool exists(const std::string& path) { return std::ifstream(path).good(); }

int64_t count_params(torch::nn::Module& m) {
  int64_t n = 0;
  for (const auto& p : m.parameters()) n += p.numel();
  return n;
}

using attnkit::testing::error_of;

/// Float32 logits against the float64 reference on the same weights and input: rounding_tolerance
/// over the network's path, at the scale of the logits.
attnkit::testing::Tolerance logits_tolerance(torch::nn::Module& m, const torch::Tensor& ref_logits) {
  return attnkit::testing::rounding_tolerance(torch::kFloat, attnkit::testing::path_length(m), attnkit::testing::max_abs(ref_logits));
}

/// Imports `state_file` (layout auto, strict) into `model` and compares logits with the reference,
/// in fp32 (logits_tolerance) and in double (1e-9).
void check_parity(Backbone& model, const std::string& refs_name, const std::string& state_file) {
  auto refs = attnkit::testing::load_refs(refs_name);
  if (refs.empty() || !exists(ref_file(state_file))) GTEST_SKIP() << "no Python references on this machine";
  const auto report = import_state_dict(model.module(), ref_file(state_file), "auto", /*strict=*/true);
  EXPECT_TRUE(report.missing.empty() && report.unexpected.empty()) << report.summary();
  EXPECT_EQ(count_params(model.module()), refs.at("num_params").item<int64_t>());
  model.module().eval();
  torch::NoGradGuard no_grad;
  const auto x = refs.at("x");
  EXPECT_TRUE(all_close(model.forward(x.to(torch::kFloat)), refs.at("logits"), logits_tolerance(model.module(), refs.at("logits"))));
  model.module().to(torch::kDouble);
  EXPECT_TRUE(all_close(model.forward(x.to(torch::kDouble)), refs.at("logits"), 1e-9, 1e-10));
}

}  // namespace

// ---- parity with the Python references ---------------------------------------------------------

TEST(ResNetParity, TorchvisionResNet18) {
  auto model = resnet18();
  check_parity(*model, "backbones_tv_resnet18", "backbones_tv_resnet18_state.pt");
}

TEST(ResNetParity, TorchvisionResNet50) {
  auto model = resnet50();
  check_parity(*model, "backbones_tv_resnet50", "backbones_tv_resnet50_state.pt");
}

TEST(ResNetParity, TimmSeResNet50) {
  SKIP_UNLESS_ATTENTION("se");
  auto model = resnet50("se");
  check_parity(*model, "backbones_timm_seresnet50", "backbones_timm_seresnet50_state.pt");
}

TEST(ResNetParity, OfficialCbamResNet50Checkpoint) {
  SKIP_UNLESS_ATTENTION("cbam");
  auto model = resnet50("cbam");
  // A training checkpoint: {"epoch", "arch", "best_prec1", "optimizer", "state_dict": {"module.…"}}.
  check_parity(*model, "backbones_cbam_official", "backbones_cbam_official_checkpoint.pth.tar");
}

TEST(ResNetParity, CifarResNet20OptionsAandB) {
  for (const std::string option : {"A", "B"}) {
    SCOPED_TRACE("shortcut " + option);
    auto refs = attnkit::testing::load_refs("backbones_cifar_resnet20" + option);
    if (refs.empty()) GTEST_SKIP() << "no Python references on this machine";
    CifarResNet model(CifarResNetOptions(20).shortcut(parse_shortcut(option)));
    auto state = attnkit::testing::with_prefix(refs, "state.");
    auto report = load_state_dict(*model, state, /*strict=*/true);
    EXPECT_EQ(report.loaded.size(), state.size());
    EXPECT_EQ(count_params(*model), refs.at("num_params").item<int64_t>());
    EXPECT_EQ(count_params(*model), option == "A" ? 269722 : 272474);  // He et al.: 0.27M
    model->eval();
    torch::NoGradGuard no_grad;
    EXPECT_TRUE(all_close(model->forward(refs.at("x")), refs.at("logits"), logits_tolerance(*model, refs.at("logits"))));
  }
}

TEST(ResNetParity, SafetensorsFromPythonMatchesTorchSave) {
  auto refs = attnkit::testing::load_refs("backbones_cifar_resnet20B");
  const auto path = ref_file("backbones_cifar_resnet20B_state.safetensors");
  if (refs.empty() || !exists(path)) GTEST_SKIP() << "no Python references on this machine";
  const auto state = read_state_dict(path);
  const auto expected = attnkit::testing::with_prefix(refs, "state.");
  ASSERT_EQ(state.size(), expected.size());
  for (const auto& [k, v] : expected) {
    ASSERT_TRUE(state.count(k)) << k;
    EXPECT_EQ(state.at(k).scalar_type(), v.scalar_type()) << k;
    EXPECT_TRUE(state.at(k).equal(v)) << k;
  }
}

// ---- parameter counts and names ----------------------------------------------------------------

// A checkpoint config is untrusted: a depth or width far beyond any ResNet is refused before a
// weight is allocated (depth 6,000,002 reached 5.8 GB before the allocator gave up).
TEST(ResNet, DepthOrWidthBeyondAnyResNetIsRefusedBeforeAllocating) {
  for (const char* name : {"resnet20", "resnet152"}) {
    auto config = attnkit::parse_model_name(name);
    if (std::string(name) == "resnet20") config.depth = 6000002;  // 6n + 2: a valid CIFAR ResNet depth
    else config.width = 1e6;
    try {
      attnkit::build_model(config);
      ADD_FAILURE() << name << ": no exception";
    } catch (const c10::Error& e) {
      EXPECT_THAT(e.what_without_backtrace(), HasSubstr("weights, more than the")) << name;
    }
  }
  EXPECT_NO_THROW(attnkit::build_model(attnkit::parse_model_name("resnet20")));
}

TEST(ResNet, ParameterCountsMatchTorchvision) {
  // torchvision's documented figures (weights tables of resnet18/34/50/101/152).
  const std::pair<int64_t, int64_t> known[] = {
      {18, 11689512}, {34, 21797672}, {50, 25557032}, {101, 44549160}, {152, 60192808}};
  for (const auto& [depth, count] : known) {
    ResNet model(depth);
    EXPECT_EQ(count_params(*model), count) << "resnet" << depth;
  }
}

TEST(ResNet, CbamAddsTheOfficialParameterCount) {
  SKIP_UNLESS_ATTENTION("cbam");
  // ResNet-50+CBAM (official layout, r = 16): 28,089,624 = 25,557,032 + 2,532,592.
  EXPECT_EQ(count_params(*resnet50("cbam")) - count_params(*resnet50()), 2532592);
}

TEST(ResNet, NamesFollowTorchvisionAndAttentionLivesUnderAttn) {
  auto plain = resnet18();
  std::set<std::string> plain_names;
  for (const auto& p : plain->named_parameters()) plain_names.insert(p.key());
  for (const char* name : {"conv1.weight", "bn1.weight", "layer1.0.conv1.weight", "layer1.0.bn2.bias",
                           "layer2.0.downsample.0.weight", "layer2.0.downsample.1.weight", "layer4.1.conv2.weight",
                           "fc.weight", "fc.bias"})
    EXPECT_TRUE(plain_names.count(name)) << name;
  EXPECT_FALSE(plain_names.count("layer1.0.downsample.0.weight"));  // no projection where shapes agree
  int tested = 0;
  for (const auto& attn : attention_names()) {
    if (attn.empty()) continue;
    ++tested;
    auto model = resnet18(attn);
    for (const auto& p : model->named_parameters()) {
      if (plain_names.count(p.key())) continue;
      EXPECT_THAT(p.key(), ::testing::MatchesRegex("layer[1-4]\\.[0-9]+\\.attn\\..*")) << attn;
    }
  }
  if (tested == 0) GTEST_SKIP() << "no attention registered in make_attention yet";
}

TEST(ResNet, AttentionPerStage) {
  const auto& names = attention_names();
  auto it = std::find_if(names.begin(), names.end(), [](const std::string& n) { return !n.empty(); });
  if (it == names.end()) GTEST_SKIP() << "no attention registered in make_attention yet";
  ResNet model(ResNetOptions(18).attention_per_stage({"", "", "", *it}));
  bool layer4 = false;
  for (const auto& p : model->named_parameters()) {
    if (p.key().find(".attn.") == std::string::npos) continue;
    EXPECT_EQ(p.key().rfind("layer4.", 0), 0u) << p.key();
    layer4 = true;
  }
  EXPECT_TRUE(layer4);
  EXPECT_EQ(model->config().name(), "resnet18-[,,," + *it + "]");
}

// ---- structure ---------------------------------------------------------------------------------

TEST(ResNet, FeaturesShapesAndSeparableHead) {
  torch::manual_seed(0);
  auto model = resnet50("", 7);
  model->eval();
  torch::NoGradGuard no_grad;
  auto x = torch::randn({2, 3, 64, 64});
  auto f = model->features(x);
  ASSERT_EQ(f.size(), 4u);
  EXPECT_EQ(f[0].sizes(), (std::vector<int64_t>{2, 256, 16, 16}));
  EXPECT_EQ(f[1].sizes(), (std::vector<int64_t>{2, 512, 8, 8}));
  EXPECT_EQ(f[2].sizes(), (std::vector<int64_t>{2, 1024, 4, 4}));
  EXPECT_EQ(f[3].sizes(), (std::vector<int64_t>{2, 2048, 2, 2}));
  auto logits = model->forward(x);
  EXPECT_EQ(logits.sizes(), (std::vector<int64_t>{2, 7}));
  EXPECT_TRUE(logits.equal(model->forward_head(f)));
  // The head is global average pooling and fc, nothing else.
  // Both in float32 (twice the rounding): the pooling over H·W and the fc's 2048 terms.
  EXPECT_TRUE(all_close(logits, torch::nn::functional::linear(f[3].mean({2, 3}), model->fc->weight, model->fc->bias),
                        attnkit::testing::float32_pair_tolerance(4 + 2048, attnkit::testing::max_abs(logits))));
}

TEST(ResNet, SmallStemWidthAndInputChannels) {
  ResNet model(ResNetOptions(18).stem(Stem::Small).width(0.25).in_channels(1).num_classes(3));
  auto f = model->features(torch::randn({1, 1, 28, 28}));
  EXPECT_EQ(f[0].sizes(), (std::vector<int64_t>{1, 16, 28, 28}));  // 3×3/1 stem, no pool
  EXPECT_EQ(f[3].sizes(), (std::vector<int64_t>{1, 128, 4, 4}));
  EXPECT_EQ(model->conv1->weight.sizes(), (std::vector<int64_t>{16, 1, 3, 3}));
  EXPECT_EQ(model->forward(torch::randn({1, 1, 28, 28})).sizes(), (std::vector<int64_t>{1, 3}));
}

TEST(ResNet, InitialisationFollowsTorchvision) {
  torch::manual_seed(0);
  ResNet model(ResNetOptions(50).zero_init_residual(true));
  // Kaiming normal, fan_out, gain sqrt(2): std = sqrt(2 / (out · k · k)).
  const auto w = model->named_parameters()["layer4.0.conv2.weight"];  // 512×512×3×3
  EXPECT_NEAR(w.std().item<double>() / std::sqrt(2.0 / (512 * 9)), 1.0, 0.01);
  EXPECT_NEAR(w.mean().item<double>(), 0.0, 1e-3);
  const auto stem = model->conv1->weight;  // 64×3×7×7, fan_out 64·49
  EXPECT_NEAR(stem.std().item<double>() / std::sqrt(2.0 / (64 * 49)), 1.0, 0.05);
  for (const auto& p : model->named_parameters()) {
    const auto& k = p.key();
    if (k.find(".bn3.weight") != std::string::npos) EXPECT_TRUE(p.value().eq(0).all().item<bool>()) << k;
    else if (k.find("bn") != std::string::npos && k.find(".weight") != std::string::npos)
      EXPECT_TRUE(p.value().eq(1).all().item<bool>()) << k;
    if (k.find("bn") != std::string::npos && k.find(".bias") != std::string::npos)
      EXPECT_TRUE(p.value().eq(0).all().item<bool>()) << k;
  }
  // With zero-init residuals every block starts as its shortcut: layer1.1 is then relu(x) = x.
  model->eval();
  torch::NoGradGuard no_grad;
  auto x = torch::relu(torch::randn({1, 256, 5, 5}));
  EXPECT_TRUE(all_close((*model->layer1)[1]->as<Bottleneck>()->forward(x), x, 0.0));
}

TEST(ResNet, EveryDepthRunsWithEveryAttention) {
  torch::NoGradGuard no_grad;
  auto check = [](Backbone& model, const torch::Tensor& x, int64_t classes) {
    model.module().eval();
    auto y = model.forward(x);
    EXPECT_EQ(y.sizes(), (std::vector<int64_t>{1, classes}));
    EXPECT_TRUE(torch::isfinite(y).all().item<bool>());
  };
  // Every depth without attention (their parameter counts are checked above), every attention on
  // both block types. Small inputs and, for Bottleneck + attention, width 1/4 keep this a few
  // seconds on 2 cores.
  for (int64_t depth : {18, 34, 50, 101, 152}) {
    SCOPED_TRACE("resnet" + std::to_string(depth));
    check(*ResNet(ResNetOptions(depth).num_classes(5)), torch::randn({1, 3, 32, 32}), 5);
  }
  for (int64_t depth : {20, 32, 44, 56, 110}) {
    SCOPED_TRACE("resnet" + std::to_string(depth));
    check(*CifarResNet(depth), torch::randn({1, 3, 16, 16}), 10);
  }
  for (const auto& attn : attention_names()) {
    if (attn.empty()) continue;
    // Windowed attention needs maps at least as large as its window (7): the small stem keeps
    // layer4 at 7×7 for a 56 px input.
    const bool local = attn == "local";
    const int64_t size = local ? 56 : 64;
    for (int64_t depth : {18, 50}) {
      SCOPED_TRACE("resnet" + std::to_string(depth) + "-" + attn);
      auto o = ResNetOptions(depth).attention(attn).num_classes(5).stem(local ? Stem::Small : Stem::ImageNet);
      check(*ResNet(o.width(depth == 50 ? 0.25 : (local ? 0.5 : 1.0))), torch::randn({1, 3, size, size}), 5);
    }
    SCOPED_TRACE("resnet20-" + attn);
    check(*CifarResNet(CifarResNetOptions(20).attention(attn)), torch::randn({1, 3, 32, 32}), 10);
  }
}

TEST(ResNet, TrainsOneStepAndClones) {
  torch::manual_seed(1);
  ResNet model(ResNetOptions(18).stem(Stem::Small).width(0.125).num_classes(3));
  auto x = torch::randn({4, 3, 16, 16});
  auto loss = torch::nn::functional::cross_entropy(model->forward(x), torch::tensor({0, 1, 2, 0}));
  loss.backward();
  for (const auto& p : model->named_parameters()) EXPECT_TRUE(p.value().grad().defined()) << p.key();
  auto copy = std::dynamic_pointer_cast<ResNetImpl>(model->clone());
  ASSERT_TRUE(copy);
  model->eval();
  copy->eval();
  EXPECT_TRUE(copy->forward(x).equal(model->forward(x)));
  EXPECT_NE(copy->conv1->weight.data_ptr(), model->conv1->weight.data_ptr());
}

TEST(CifarResNet, StructureAndParameterCounts) {
  // Option A counts (He et al. 2016, table 6: 0.27M, 0.46M, 0.66M, 0.85M, 1.7M).
  const std::pair<int64_t, double> known[] = {{20, 0.27e6}, {32, 0.46e6}, {44, 0.66e6}, {56, 0.85e6}, {110, 1.7e6}};
  for (const auto& [depth, count] : known) {
    CifarResNet model(CifarResNetOptions(depth).shortcut(Shortcut::A));
    EXPECT_NEAR(count_params(*model) / count, 1.0, 0.02) << depth;
    // Option B adds the two projections: 16·32 + 2·32 and 32·64 + 2·64.
    CifarResNet b{CifarResNetOptions(depth)};
    EXPECT_EQ(count_params(*b) - count_params(*model), 576 + 2176) << depth;
  }
  CifarResNet model(CifarResNetOptions(20));
  auto f = model->features(torch::randn({2, 3, 32, 32}));
  ASSERT_EQ(f.size(), 3u);
  EXPECT_EQ(f[2].sizes(), (std::vector<int64_t>{2, 64, 8, 8}));
}

// ---- registry ----------------------------------------------------------------------------------

TEST(Registry, NamesRoundTrip) {
  for (const auto& name : model_names()) {
    auto model = make_model(name);
    EXPECT_EQ(model->config().name(), name);
    EXPECT_EQ(parse_model_name(name), model->config());
  }
  EXPECT_EQ(make_model("resnet20")->config().family, ModelFamily::CifarResNet);
  EXPECT_EQ(make_model("resnet50")->config().family, ModelFamily::ResNet);
  EXPECT_EQ(make_model("cifar_resnet26", 100)->config().num_classes, 100);
  EXPECT_EQ(make_model("cifar_resnet26")->config().name(), "cifar_resnet26");
  auto gray = make_model("resnet18", 4, 1);
  gray->module().eval();
  EXPECT_EQ(gray->forward(torch::randn({1, 1, 32, 32})).sizes(), (std::vector<int64_t>{1, 4}));
  for (const auto& attn : attention_names()) {
    if (attn.empty()) continue;
    EXPECT_EQ(make_model("resnet20-" + attn)->config().name(), "resnet20-" + attn);
    EXPECT_EQ(parse_model_name("resnet50-" + attn).attention, std::vector<std::string>(4, attn));
  }
}

TEST(Registry, PresetsAreOneLine) {
  EXPECT_EQ(resnet18()->config().name(), "resnet18");
  EXPECT_EQ(resnet56("", 100)->config().num_classes, 100);
  EXPECT_EQ(resnet152()->config(), parse_model_name("resnet152"));
}

TEST(Registry, ErrorsListValidNames) {
  EXPECT_THAT(error_of([] { make_model("resnet19"); }), HasSubstr("unknown model \"resnet19\""));
  EXPECT_THAT(error_of([] { make_model("vgg16"); }), HasSubstr("\"resnet50\""));
  EXPECT_THAT(error_of([] { make_model("resnet50-bogus"); }), HasSubstr("unknown attention \"bogus\""));
  EXPECT_THAT(error_of([] { make_model("resnet50-bogus"); }), HasSubstr("valid attention names"));
  EXPECT_THAT(error_of([] { make_model("resnet50-[,,]"); }), HasSubstr("has 4 stages"));
  EXPECT_THAT(error_of([] { make_model("cifar_resnet21"); }), HasSubstr("unknown model"));
}

// ---- bad options and inputs --------------------------------------------------------------------

TEST(ResNet, BadOptionsAndInputs) {
  EXPECT_THAT(error_of([] { ResNet(19); }), HasSubstr("depth must be one of 18, 34, 50, 101, 152, got 19"));
  EXPECT_THAT(error_of([] { parse_stem("tiny"); }), HasSubstr("stem must be \"imagenet\" or \"small\", got \"tiny\""));
  EXPECT_THAT(error_of([] { ResNet(ResNetOptions(18).num_classes(0)); }), HasSubstr("num_classes must be positive"));
  EXPECT_THAT(error_of([] { ResNet(ResNetOptions(18).width(0.0)); }), HasSubstr("width must give at least 1 channel"));
  EXPECT_THAT(error_of([] { ResNet(ResNetOptions(18).attention_per_stage({"", ""})); }),
              HasSubstr("attention_per_stage must have 4 names"));
  EXPECT_THAT(error_of([] { ResNet(ResNetOptions(18).attention("bogus")); }), HasSubstr("unknown attention name \"bogus\""));
  EXPECT_THAT(error_of([] { CifarResNet(21); }), HasSubstr("depth must be 6n+2"));
  EXPECT_THAT(error_of([] { parse_shortcut("C"); }), HasSubstr("shortcut must be \"A\" or \"B\", got \"C\""));
  EXPECT_THAT(error_of([] { parse_model_family("vgg"); }),
              HasSubstr("family must be \"resnet\" or \"cifar_resnet\", got \"vgg\""));
  auto model = resnet18("", 3);
  EXPECT_THAT(error_of([&] { model->forward(torch::randn({1, 4, 32, 32})); }),
              HasSubstr("expected input of shape [N, 3, H, W], got [1, 4, 32, 32]"));
  EXPECT_THAT(error_of([&] { model->forward(torch::randn({3, 32, 32})); }), HasSubstr("expected input of shape [N, 3, H, W]"));
  EXPECT_THAT(error_of([&] { model->forward(torch::ones({1, 3, 32, 32}, torch::kLong)); }),
              HasSubstr("expected a floating input"));
  EXPECT_THAT(error_of([&] { model->forward_head({torch::randn({1, 7, 2, 2})}); }),
              HasSubstr("expected the last feature of shape [N, 512, H, W]"));
}
