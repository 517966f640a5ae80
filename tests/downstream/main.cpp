// Smallest use of the installed package: include the umbrella header, build a block, run it.
#include <attnkit/attnkit.h>

#include <iostream>

int main() {
  torch::manual_seed(0);
  auto info = attnkit::build_info();
  auto block = attnkit::make_attention("", 8);
  auto x = torch::randn({2, 8, 5, 7});
  auto y = block.forward(x);
  if (!y.equal(x)) {
    std::cerr << "downstream: identity attention changed its input\n";
    return 1;
  }
  std::cout << "downstream: ok (attnkit " << info.version << ", LibTorch " << info.torch_version << ")\n";
  return 0;
}
