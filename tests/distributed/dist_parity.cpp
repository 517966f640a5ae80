// The gradient half of data-parallel training, measured: K SGD steps of a small network on synthetic
// images, through the pieces `attnkit train` uses (train/distributed.h: Distributed, GradientSync,
// batch_norm_sync_of; train/loader.h: the sharded BatchLoader). Run alone it is the one-process run;
// under torchrun each process takes its slice of every global batch (--batch is global in both). Rank 0
// writes the final weights and buffers, raw, to --out; tests/python/check_distributed.py compares files.
//   --net plain   convolutions without BatchNorm (default): the processes' gradients alone must agree.
//   --net bn      attnkit's resnet20-cbam at width 0.25 with projection shortcuts: BatchNorm in every
//                 block, shortcut and spatial gate; equal to one process only with --sync-bn.
//
//   dist_parity --steps 5 --batch 32 --dtype float32 --out one.bin
//   torchrun --nproc-per-node 2 --no-python dist_parity --steps 5 --batch 32 --dtype float32 --out two.bin
#include "train/distributed.h"
#include "train/loader.h"

#include <attnkit/backbones/registry.h>
#include <attnkit/modules/batch_norm.h>

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
  std::string net = "plain";
  bool sync_bn = false;
};

Args parse(int argc, char** argv) {
  Args a;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string k = argv[i], v = argv[i + 1];
    if (k == "--steps") a.steps = std::stoll(v);
    else if (k == "--batch") a.batch = std::stoll(v);
    else if (k == "--dtype") a.dtype = v;
    else if (k == "--out") a.out = v;
    else if (k == "--net") a.net = v;
    else if (k == "--sync-bn") a.sync_bn = v == "1";
    else throw std::runtime_error("unknown option " + k);
  }
  if (a.out.empty()) throw std::runtime_error("--out FILE is required");
  return a;
}

// The network under test: its module (parameters, buffers) and its forward pass.
struct Net {
  std::shared_ptr<attnkit::Backbone> backbone;  // --net bn
  torch::nn::Sequential plain{nullptr};         // --net plain
  torch::nn::Module& module() { return backbone ? backbone->module() : *plain; }
  torch::Tensor forward(const torch::Tensor& x) { return backbone ? backbone->forward(x) : plain->forward(x); }
};

Net make_net(const std::string& kind) {
  torch::manual_seed(7);  // the same start everywhere; the broadcast from rank 0 is tested on top of it
  Net net;
  if (kind == "bn") {
    auto config = attnkit::parse_model_name("resnet20-cbam");
    config.width = 0.25;
    config.num_classes = 10;
    config.in_channels = 1;
    config.shortcut = attnkit::Shortcut::B;
    net.backbone = attnkit::build_model(config);
    return net;
  }
  if (kind != "plain") throw std::runtime_error("--net: plain or bn, got " + kind);
  net.plain = torch::nn::Sequential(torch::nn::Conv2d(torch::nn::Conv2dOptions(1, 8, 3).padding(1)), torch::nn::ReLU(),
                                    torch::nn::Conv2d(torch::nn::Conv2dOptions(8, 16, 3).stride(2)), torch::nn::ReLU(),
                                    torch::nn::AdaptiveAvgPool2d(1), torch::nn::Flatten(), torch::nn::Linear(16, 10));
  return net;
}

}  // namespace

int main(int argc, char** argv) {
  using namespace attnkit::train;
  try {
    const Args a = parse(argc, argv);
    const auto dtype = a.dtype == "float64" ? torch::kDouble : torch::kFloat;
    std::shared_ptr<Distributed> dist;
    if (const auto launch = launch_environment()) dist = Distributed::join(*launch, "cpu", {});
    auto net = make_net(a.net);
    auto& module = net.module();
    module.to(dtype);
    module.train();
    if (dist && dist->rank() == 1) {
      // A different start on rank 1: the broadcast must make it rank 0's.
      torch::NoGradGuard no_grad;
      for (auto& p : module.parameters()) p.add_(1.0);
    }
    std::unique_ptr<GradientSync> sync;
    if (dist) {
      dist->broadcast(module);
      sync = std::make_unique<GradientSync>(*dist, module);
    }
    std::unique_ptr<attnkit::BatchNormSyncGuard> batch_norm_sync;
    if (dist && a.sync_bn) batch_norm_sync = std::make_unique<attnkit::BatchNormSyncGuard>(batch_norm_sync_of(dist));
    torch::optim::SGD sgd(module.parameters(), torch::optim::SGDOptions(0.1).momentum(0.9));

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
        const auto loss = torch::nn::functional::cross_entropy(net.forward(batch->images.to(dtype)), batch->labels);
        sgd.zero_grad();
        if (sync) sync->backward(loss, batch->labels.size(0), batch->global_size);
        else loss.backward();
        sgd.step();
      }
    }
    if (!dist || dist->is_main()) {
      std::ofstream out(a.out, std::ios::binary);
      // Parameters, then buffers (BatchNorm's running statistics: synchronised, they agree too).
      auto tensors = module.parameters();
      for (const auto& b : module.buffers())
        if (b.is_floating_point()) tensors.push_back(b);
      for (const auto& p : tensors) {
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
