// channel_gate_weights(): the per-channel weights of SE, ECA, the channel gate and CBAM's channel
// gate, equal to what each gate records itself; layer names, errors, and the flags left as they were.
#include <attnkit/attnkit.h>
#include <attnkit/backbones/channel_gates.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "testing.h"
#include "testing_blocks.h"

using namespace attnkit;
using attnkit::testing::error_of;
using ::testing::HasSubstr;

namespace {

using attnkit::testing::block_attention;

TEST(ChannelGates, WeightsAreWhatEachGateRecords) {
  for (const std::string name : {"resnet20-se", "resnet20-eca", "resnet20-[channel,,]", "resnet20-cbam"}) {
    torch::manual_seed(4);
    auto model = make_model(name, 10);
    model->module().eval();
    const auto x = torch::randn({2, 3, 32, 32});
    const auto all = channel_gate_weights(*model, x);
    // Independent: turn recording on in each gate by hand and read its map.
    std::vector<AttentionMapRecorder*> recorders;
    for (auto& a : block_attention(*model)) {
      if (!a) continue;
      if (auto cbam = std::dynamic_pointer_cast<CBAMImpl>(a)) recorders.push_back(cbam->channel.get());
      else recorders.push_back(dynamic_cast<AttentionMapRecorder*>(a.get()));
    }
    ASSERT_EQ(all.size(), recorders.size()) << name;
    for (auto* r : recorders) {
      EXPECT_FALSE(r->recording()) << name << ": flags restored";
      r->record_attention(true);
    }
    {
      torch::NoGradGuard no_grad;
      model->forward(x);
    }
    for (size_t i = 0; i < all.size(); ++i) {
      const auto expected = recorders[i]->last_attention().reshape({2, -1});
      EXPECT_TRUE(torch::equal(all[i].weights, expected.to(torch::kFloat))) << name << " " << all[i].layer;
      EXPECT_GT(all[i].weights.min().item<float>(), 0.f);
      EXPECT_LT(all[i].weights.max().item<float>(), 1.f);
    }
    EXPECT_EQ(all.front().layer, "layer1.0");
  }
}

TEST(ChannelGates, LayersAndErrors) {
  torch::manual_seed(0);
  auto model = make_model("resnet20-[,se,eca]", 10);
  model->module().eval();
  const auto x = torch::randn({1, 3, 32, 32});
  EXPECT_EQ(channel_gate_layers(*model), (std::vector<std::string>{"layer2", "layer3", "layer2.0", "layer2.1", "layer2.2",
                                                                   "layer3.0", "layer3.1", "layer3.2", "all"}));
  const auto stage = channel_gate_weights(*model, x, {"layer3"});
  ASSERT_EQ(stage.size(), 3u);
  EXPECT_EQ(stage[0].gate, "eca");
  EXPECT_EQ(stage[0].weights.sizes(), (torch::IntArrayRef{1, 64}));
  const auto one = channel_gate_weights(*model, x, {"layer2.1"});
  ASSERT_EQ(one.size(), 1u);
  EXPECT_EQ(one[0].gate, "se");
  EXPECT_THAT(error_of([&] { channel_gate_weights(*model, x, {"layer1.0"}); }),
              HasSubstr("layer \"layer1.0\" of resnet20-[,se,eca] has no channel gate; valid layers: layer2, layer3, layer2.0"));
  auto plain = make_model("resnet20", 10);
  EXPECT_THAT(error_of([&] { channel_gate_weights(*plain, x); }), HasSubstr("model resnet20 has no channel gate"));
  EXPECT_TRUE(channel_gate_layers(*plain).empty());
}

}  // namespace
