// count_multiply_adds against numbers worked out by hand and the figures torchvision publishes.
#include <attnkit/backbones/backbones.h>
#include <attnkit/modules/implementation.h>

#include <gtest/gtest.h>

using namespace attnkit;

namespace {

std::shared_ptr<Backbone> cifar(const std::string& name) {
  auto c = parse_model_name(name);
  c.num_classes = 10;
  c.in_channels = 1;
  return build_model(c);
}

}  // namespace

// ResNet-20, width 1, on one 1×28×28 image (3×3 convs, projection shortcuts), per layer:
//   stem 1→16 at 28²: 28·28·16·9                                =    112,896
//   stage 1, six 16→16 at 28²: 6 · 28·28·16·16·9                 = 10,838,016
//   stage 2, 16→32 /2 to 14²: 14·14·32·16·9, five 32→32: 5 · 14·14·32·32·9,
//            shortcut 1×1 16→32: 14·14·32·16                     =    903,168 + 9,031,680 + 100,352
//   stage 3, the same at 7² with 32→64                           =    903,168 + 9,031,680 + 100,352
//   fc 64→10                                                     =        640
TEST(MultiplyAdds, ResNet20ByHand) {
  const int64_t per_image = 112896 + 10838016 + 903168 + 9031680 + 100352 + 903168 + 9031680 + 100352 + 640;
  auto model = cifar("resnet20");
  EXPECT_EQ(count_multiply_adds(*model, torch::randn({1, 1, 28, 28})), per_image);
  EXPECT_EQ(count_multiply_adds(*model, torch::randn({3, 1, 28, 28})), 3 * per_image);
  EXPECT_EQ(count_parameters(*model), 272186);  // weights/README.md's figure for this network
}

// SE adds two 1×1 convolutions on the pooled [C] vector per block: C·8 + 8·C (hidden width 8 at
// C = 16, 32, 64 with timm's rounding), three blocks per stage; its parameters add the biases too.
TEST(MultiplyAdds, SqueezeExciteAddsItsTwoProductsPerBlock) {
  const auto x = torch::randn({2, 1, 28, 28});
  auto plain = cifar("resnet20"), se = cifar("resnet20-se");
  const int64_t gates = 3 * (2 * 16 * 8) + 3 * (2 * 32 * 8) + 3 * (2 * 64 * 8);
  EXPECT_EQ(count_multiply_adds(*se, x) - count_multiply_adds(*plain, x), 2 * gates);
  EXPECT_EQ(count_parameters(*se) - count_parameters(*plain), gates + 3 * (8 + 16) + 3 * (8 + 32) + 3 * (8 + 64));
}

// torchvision's model cards: ResNet-18 1.81 and ResNet-50 4.09 GFLOPS at 224×224 (multiply-adds of
// convolutions and fc, as fvcore counts them; two decimals).
TEST(MultiplyAdds, TorchvisionResNetsAtTheirPublishedFigures) {
  for (const auto& [name, giga] : std::vector<std::pair<std::string, double>>{{"resnet18", 1.81}, {"resnet50", 4.09}}) {
    SCOPED_TRACE(name);
    auto model = build_model(parse_model_name(name));
    const double counted = static_cast<double>(count_multiply_adds(*model, torch::randn({1, 3, 224, 224})));
    EXPECT_NEAR(counted / 1e9, giga, 0.005);
  }
}

// Counting runs the gates' composite math in eval mode and puts everything back.
TEST(MultiplyAdds, LeavesModeAndImplementationAsTheyWere) {
  auto model = cifar("resnet20-cbam");
  set_implementation(model->module(), Implementation::Fused);
  model->module().train();
  const auto x = torch::randn({1, 1, 28, 28});
  const int64_t counted = count_multiply_adds(*model, x);
  EXPECT_TRUE(model->module().is_training());
  for (const auto& m : model->module().modules())
    if (auto* block = dynamic_cast<HasImplementation*>(m.get())) EXPECT_EQ(block->implementation(), Implementation::Fused);
  // CBAM's products: the channel MLP on two pooled vectors and the 7×7 2→1 spatial conv.
  EXPECT_GT(counted, count_multiply_adds(*cifar("resnet20"), x));
}
