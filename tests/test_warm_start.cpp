// `attnkit train --init-from`: a plain network given gates computes what it computed before, and its
// gates still learn.
#include "train/warm_start.h"

#include "testing.h"

#include <attnkit/backbones/checkpoint.h>
#include <attnkit/backbones/registry.h>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

using namespace attnkit;
using ::testing::HasSubstr;

namespace {

ModelConfig config_of(const std::string& name, double width = 0.5) {
  auto c = parse_model_name(name);
  c.num_classes = 7;
  c.in_channels = 2;
  c.width = width;
  if (c.family == ModelFamily::ResNet) c.stem = Stem::Small;
  return c;
}

/// A trained-looking source: random BatchNorm statistics and affine parameters, so that scaling
/// the BatchNorm before a gate is not a no-op.
Checkpoint source_checkpoint(const std::string& name, double width = 0.5) {
  torch::manual_seed(3);
  auto model = build_model(config_of(name, width));
  torch::NoGradGuard no_grad;
  for (auto& m : model->module().modules()) {
    if (auto* bn = dynamic_cast<torch::nn::BatchNorm2dImpl*>(m.get())) {
      bn->weight.uniform_(0.5, 1.5), bn->bias.uniform_(-0.5, 0.5);
      bn->running_mean.uniform_(-0.2, 0.2), bn->running_var.uniform_(0.5, 2.0);
    }
  }
  return make_checkpoint(*model);
}

torch::Tensor logits(Backbone& model, const torch::Tensor& x) {
  model.module().eval();
  torch::NoGradGuard no_grad;
  return model.forward(x);
}

}  // namespace

// The gates start at a constant (0.5 per gate) and the BatchNorm before them is divided by it, so
// every block's output is the plain block's. Both scalings are powers of two, exact in float; the
// tolerance leaves room for the fused and composite gate paths summing in other orders
// (~1e-6 relative per block over a handful of blocks).
TEST(WarmStart, GatesStartNeutralSoTheNetworkComputesWhatTheCheckpointDid) {
  for (const std::string family : {"resnet20", "resnet18"}) {
    const auto source = source_checkpoint(family);
    const auto plain = load_model(source);
    const auto x = torch::randn({3, 2, 20, 17});
    const auto expected = logits(*plain, x);
    for (const std::string attention : {"se", "eca", "cbam", "channel", "spatial"}) {
      SCOPED_TRACE(family + "-" + attention);
      torch::manual_seed(11);
      auto model = build_model(config_of(family + "-" + attention));
      const auto report = train::warm_start(*model, source, "plain.attnkit");
      EXPECT_EQ(report.copied, static_cast<int64_t>(source.state.size()));
      EXPECT_EQ(report.neutral_blocks, family == "resnet20" ? 9 : 8);
      const auto got = logits(*model, x);
      const double scale = expected.abs().max().item<double>();
      EXPECT_LE((got - expected).abs().max().item<double>(), 1e-5 * scale + 1e-6);
    }
  }
}

// Neutral is not dead: one backward pass reaches the zeroed layers (SE's fc2, CBAM's channel fc2 and
// spatial BatchNorm weight), so fine-tuning moves them.
TEST(WarmStart, ZeroedGateLayersStillGetGradients) {
  const auto source = source_checkpoint("resnet20");
  for (const std::string attention : {"se", "cbam"}) {
    SCOPED_TRACE(attention);
    auto model = build_model(config_of("resnet20-" + attention));
    train::warm_start(*model, source, "plain.attnkit");
    model->module().train();
    model->forward(torch::randn({4, 2, 12, 12})).logsumexp(1).sum().backward();
    const auto params = model->module().named_parameters();
    const std::vector<std::string> zeroed =
        attention == "se" ? std::vector<std::string>{"layer2.1.attn.fc2.weight"}
                          : std::vector<std::string>{"layer2.1.attn.channel.fc2.weight", "layer2.1.attn.spatial.bn.weight"};
    for (const auto& name : zeroed) {
      ASSERT_NE(params.find(name), nullptr) << name;
      EXPECT_EQ(params[name].abs().max().item<double>(), 0.0) << name;
      ASSERT_TRUE(params[name].grad().defined()) << name;
      EXPECT_GT(params[name].grad().abs().max().item<double>(), 0.0) << name;
    }
  }
}

TEST(WarmStart, ACheckpointWithTheSameAttentionIsCopiedAsItIs) {
  const auto source = source_checkpoint("resnet20-cbam");
  auto model = build_model(config_of("resnet20-cbam"));
  const auto report = train::warm_start(*model, source, "cbam.attnkit");
  EXPECT_EQ(report.neutral_blocks, 0);
  const auto x = torch::randn({2, 2, 16, 16});
  EXPECT_TRUE(torch::equal(logits(*model, x), logits(*load_model(source), x)));
}

TEST(WarmStart, RefusesAnotherBackboneOrAttentionWithoutANeutralStart) {
  const auto plain = source_checkpoint("resnet20");
  const auto refuse = [](const std::string& name, const Checkpoint& source, const std::string& message) {
    auto model = build_model(config_of(name));
    try {
      train::warm_start(*model, source, "src.attnkit");
      ADD_FAILURE() << name << " was accepted";
    } catch (const std::runtime_error& e) {
      EXPECT_THAT(e.what(), HasSubstr("--init-from src.attnkit"));
      EXPECT_THAT(e.what(), HasSubstr(message));
    }
  };
  refuse("resnet32-cbam", plain, "only the attention may differ");
  refuse("resnet20-local", plain, "is not a gate");
  refuse("resnet20", source_checkpoint("resnet20-cbam"), "has no counterpart");
  auto wider = build_model(config_of("resnet20-se", 1.0));
  EXPECT_THROW(train::warm_start(*wider, plain, "src.attnkit"), std::runtime_error);
}
