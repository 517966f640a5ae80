// The gradient half of data-parallel training, measured: K SGD steps of a small network without
// BatchNorm (whose statistics would be per process) on synthetic images, through the pieces
// `attnkit train` uses (train/distributed.h: Distributed, GradientSync; train/loader.h: the sharded
// BatchLoader). Run alone it is the one-process run; under torchrun each process takes its slice of
// every global batch (--batch is global in both). Rank 0 writes the final weights, raw, to --out;
// tests/python/check_distributed.py compares the two files.
//
//   dist_parity --steps 5 --batch 32 --dtype float32 --out one.bin
//   torchrun --nproc-per-node 2 --no-python dist_parity --steps 5 --batch 32 --dtype float32 --out two.bin
#include "train/distributed.h"
#include "train/loader.h"

#include <ATen/CPUGeneratorImpl.h>
#include <torch/torch.h>

#include <cstdio>
#include <fstream>
#include <iostream>
#include <string>

namespace {

struct Args {
  int64_t steps = 5;
  int64_t batch = 32;
  std::string dtype = "float32";
  std::string out;
};

Args parse(int argc, char** argv) {
  Args a;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string k = argv[i], v = argv[i + 1];
    if (k == "--steps") a.steps = std::stoll(v);
    else if (k == "--batch") a.batch = std::stoll(v);
    else if (k == "--dtype") a.dtype = v;
    else if (k == "--out") a.out = v;
    else throw std::runtime_error("unknown option " + k);
  }
  if (a.out.empty()) throw std::runtime_error("--out FILE is required");
  return a;
}

torch::nn::Sequential make_net() {
  torch::manual_seed(7);  // the same start everywhere; the broadcast from rank 0 is tested on top of it
  return torch::nn::Sequential(torch::nn::Conv2d(torch::nn::Conv2dOptions(1, 8, 3).padding(1)), torch::nn::ReLU(),
                               torch::nn::Conv2d(torch::nn::Conv2dOptions(8, 16, 3).stride(2)), torch::nn::ReLU(),
                               torch::nn::AdaptiveAvgPool2d(1), torch::nn::Flatten(), torch::nn::Linear(16, 10));
}

}  // namespace

int main(int argc, char** argv) {
  using namespace attnkit::train;
  try {
    const Args a = parse(argc, argv);
    const auto dtype = a.dtype == "float64" ? torch::kDouble : torch::kFloat;
    std::shared_ptr<Distributed> dist;
    if (const auto launch = launch_environment()) dist = Distributed::join(*launch, "cpu", {});
    auto net = make_net();
    net->to(dtype);
    if (dist && dist->rank() == 1) {
      // A different start on rank 1: the broadcast must make it rank 0's.
      torch::NoGradGuard no_grad;
      for (auto& p : net->parameters()) p.add_(1.0);
    }
    std::unique_ptr<GradientSync> sync;
    if (dist) {
      dist->broadcast(*net);
      sync = std::make_unique<GradientSync>(*dist, *net);
    }
    torch::optim::SGD sgd(net->parameters(), torch::optim::SGDOptions(0.1).momentum(0.9));

    // 200 images 12x12 and labels, the same on every process.
    auto gen = at::make_generator<at::CPUGeneratorImpl>(11);
    const auto images = torch::randint(0, 256, {200, 1, 12, 12}, gen, torch::kLong).to(torch::kUInt8);
    const auto labels = torch::randint(0, 10, {200}, gen, torch::kLong);
    LoaderOptions lo;
    lo.batch_size = a.batch;
    lo.shuffle = true;
    lo.drop_last = true;
    lo.norm = {{0.5}, {0.25}};
    lo.prefetch = 0;
    lo.seed = 3;
    if (dist) {
      lo.shard = dist->rank();
      lo.shards = dist->world_size();
    }
    int64_t step = 0;
    for (int64_t epoch = 0; step < a.steps; ++epoch) {
      lo.epoch = epoch;
      BatchLoader loader(images, labels, lo);
      while (auto batch = loader.next()) {
        if (step++ == a.steps) break;
        if (sync) sync->before_forward();
        const auto loss = torch::nn::functional::cross_entropy(net->forward(batch->images.to(dtype)), batch->labels);
        sgd.zero_grad();
        if (sync) sync->backward(loss, batch->labels.size(0), batch->global_size);
        else loss.backward();
        sgd.step();
      }
    }
    if (!dist || dist->is_main()) {
      std::ofstream out(a.out, std::ios::binary);
      for (const auto& p : net->parameters()) {
        const auto c = p.detach().to(torch::kDouble).contiguous();
        out.write(reinterpret_cast<const char*>(c.data_ptr<double>()), static_cast<std::streamsize>(c.numel() * sizeof(double)));
      }
      std::cout << "dist_parity: " << a.steps << " steps, global batch " << a.batch << ", "
                << (dist ? dist->world_size() : 1) << " process(es) -> " << a.out << "\n";
    }
    return 0;
  } catch (const std::exception& e) {
    std::cerr << "dist_parity: " << e.what() << "\n";
    return 1;
  }
}
