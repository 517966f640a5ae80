#include <attnkit/attnkit.h>
#include <torch/torch.h>

#include <iostream>

int main() {
  torch::NoGradGuard no_grad;
  // A ResNet-18 with CBAM in every residual block, 10 classes, freshly initialised.
  auto model = attnkit::make_model("resnet18-cbam", 10);
  model->module().eval();
  auto logits = model->forward(torch::randn({2, 3, 64, 64}));
  std::cout << model->config().name() << ": " << logits.sizes() << "\n";  // resnet18-cbam: [2, 10]

  // The same network frozen for inference: BatchNorm folded into the convolutions, weights packed
  // once for oneDNN, activations channels-last. The module stays the reference and the training path.
  attnkit::InferenceModel frozen(model);
  auto fast = frozen.forward(torch::randn({2, 3, 64, 64}));
  std::cout << "frozen: " << fast.sizes() << "\n";  // frozen: [2, 10]

  // A CBAM block in a network of your own: [N, C, H, W] in, the same shape out.
  torch::nn::Sequential net(torch::nn::Conv2d(torch::nn::Conv2dOptions(3, 32, 3).padding(1)), torch::nn::ReLU(),
                            attnkit::CBAM(attnkit::CBAMOptions(32).reduction(8)), torch::nn::AdaptiveAvgPool2d(1),
                            torch::nn::Flatten(), torch::nn::Linear(32, 10));
  std::cout << "own net: " << net->forward(torch::randn({2, 3, 32, 32})).sizes() << "\n";  // own net: [2, 10]
  return logits.size(1) == 10 && fast.size(1) == 10 ? 0 : 1;
}
