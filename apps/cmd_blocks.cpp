// attnkit blocks: lists every attention block the factory builds, with its parameter count and its
// forward time on one feature map. A quick look at what attnkit offers and what each block costs.
#include "commands.h"

#include <attnkit/attnkit.h>

#include <algorithm>
#include <chrono>
#include <iomanip>
#include <iostream>

namespace attnkit::app {
namespace {

struct BlocksArgs {
  int64_t channels = 64;
  int64_t size = 28;
  int iters = 10;
};

double median_forward_ms(torch::nn::AnyModule& block, const torch::Tensor& x, int iters) {
  torch::NoGradGuard no_grad;
  std::vector<double> ms;
  block.forward(x);  // warm-up: first call allocates
  for (int i = 0; i < iters; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    block.forward(x);
    ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
  }
  std::nth_element(ms.begin(), ms.begin() + ms.size() / 2, ms.end());
  return ms[ms.size() / 2];
}

int run_blocks(const BlocksArgs& args) {
  torch::manual_seed(0);
  const auto x = torch::randn({1, args.channels, args.size, args.size});
  std::cout << "Attention blocks on a 1x" << args.channels << "x" << args.size << "x" << args.size
            << " feature map (float32, CPU, median of " << args.iters << " runs):\n\n";
  std::cout << std::left << std::setw(12) << "name" << std::right << std::setw(12) << "parameters"
            << std::setw(14) << "forward ms" << "   module\n";
  for (const auto& name : attention_names()) {
    auto block = make_attention(name, args.channels);
    block.ptr()->eval();
    int64_t params = 0;
    for (const auto& p : block.ptr()->parameters()) params += p.numel();
    const double ms = median_forward_ms(block, x, args.iters);
    std::ostringstream desc;
    block.ptr()->pretty_print(desc);
    std::cout << std::left << std::setw(12) << (name.empty() ? "\"\"" : name) << std::right << std::setw(12)
              << params << std::setw(14) << std::fixed << std::setprecision(3) << ms << "   " << desc.str() << "\n";
  }
  return kOk;
}

}  // namespace

Runner add_blocks_command(CLI::App& cli) {
  auto args = std::make_shared<BlocksArgs>();
  auto* cmd = cli.add_subcommand("blocks", "List the attention blocks with their parameter counts and forward time");
  cmd->add_option("--channels", args->channels, "Channels of the feature map (C)")
      ->check(CLI::Range(int64_t{1}, int64_t{4096}))->capture_default_str();
  cmd->add_option("--size", args->size, "Height and width of the feature map, in pixels")
      ->check(CLI::Range(int64_t{1}, int64_t{1024}))->capture_default_str();
  cmd->add_option("--iters", args->iters, "Timed forward passes per block (the median is shown)")
      ->check(CLI::Range(1, 10000))->capture_default_str();
  return [cmd, args]() -> int { return cmd->parsed() ? run_blocks(*args) : -1; };
}

}  // namespace attnkit::app
