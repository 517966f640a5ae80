// A user's own small CNN with attnkit blocks inside, built against the installed package:
// conv → CBAM → conv → local attention → pooled classifier, trained for a few steps.
#include <attnkit/attnkit.h>
#include <torch/torch.h>

#include <iostream>

struct TinyNetImpl : torch::nn::Module {
  TinyNetImpl() {
    conv1 = register_module("conv1", torch::nn::Conv2d(torch::nn::Conv2dOptions(3, 32, 3).padding(1)));
    attn1 = register_module("attn1", attnkit::CBAM(attnkit::CBAMOptions(32).reduction(8)));
    conv2 = register_module("conv2", torch::nn::Conv2d(torch::nn::Conv2dOptions(32, 64, 3).padding(1).stride(2)));
    attn2 = register_module("attn2", attnkit::LocalAttention2d(attnkit::LocalAttention2dOptions(64).heads(4).kernel_size(5)));
    fc = register_module("fc", torch::nn::Linear(64, 10));
  }
  torch::Tensor forward(torch::Tensor x) {
    x = attn1->forward(torch::relu(conv1->forward(x)));
    x = attn2->forward(torch::relu(conv2->forward(x)));
    return fc->forward(x.mean({2, 3}));
  }
  torch::nn::Conv2d conv1{nullptr}, conv2{nullptr};
  attnkit::CBAM attn1{nullptr};
  attnkit::LocalAttention2d attn2{nullptr};
  torch::nn::Linear fc{nullptr};
};
TORCH_MODULE(TinyNet);

int main() {
  torch::manual_seed(0);
  TinyNet net;
  torch::optim::SGD opt(net->parameters(), torch::optim::SGDOptions(0.05).momentum(0.9));
  auto x = torch::randn({16, 3, 16, 16});
  auto y = torch::randint(0, 10, {16});
  double first = 0, last = 0;
  for (int step = 0; step < 20; ++step) {
    opt.zero_grad();
    auto loss = torch::nn::functional::cross_entropy(net->forward(x), y);
    loss.backward();
    opt.step();
    (step == 0 ? first : last) = loss.item<double>();
  }
  if (!(last < first)) {
    std::cerr << "downstream: loss did not go down (" << first << " -> " << last << ")\n";
    return 1;
  }
  auto block = attnkit::make_attention("se", 8);
  if (block.forward(torch::randn({2, 8, 5, 7})).sizes() != torch::IntArrayRef({2, 8, 5, 7})) return 1;
  std::cout << "downstream: ok (attnkit " << attnkit::build_info().version << ", loss " << first << " -> " << last << ")\n";
  return 0;
}
