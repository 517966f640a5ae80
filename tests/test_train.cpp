// The training loop of `attnkit train` (apps/train): schedules, optimiser groups, a short run that
// learns, bit-exact resume, atomic files, evaluation numbers on a hand-made case, and the CLI's error
// behaviour (one readable line, non-zero exit) through the attnkit binary next to this test.
//
// The training code belongs to the program, not to the library: the test links the apps library.
#include "common/csv.h"
#include "common/dataset.h"
#include "common/device.h"
#include "common/files.h"
#include "common/progress.h"
#include "train/augment.h"
#include "train/calibration.h"
#include "train/checkpoint_eval.h"
#include "train/csv.h"
#include "train/data_source.h"
#include "train/distributed.h"
#include "train/dataset.h"
#include "train/idx.h"
#include "train/loader.h"
#include "train/metrics.h"
#include "train/optim.h"
#include "train/trainer.h"

#include "testing.h"

#include <attnkit/backbones/calibration.h>
#include <attnkit/backbones/checkpoint.h>

#include <ATen/Parallel.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstdio>
#include <filesystem>
#include <fstream>

namespace {
namespace fs = std::filesystem;
using namespace attnkit::common;
using namespace attnkit::train;
using ::testing::HasSubstr;

fs::path temp_dir(const std::string& name) {
  const auto dir = fs::temp_directory_path() / ("attnkit_test_train_" + std::to_string(::getpid())) / name;
  fs::remove_all(dir);
  fs::create_directories(dir);
  return dir;
}

std::string expect_runtime_error(const std::function<void()>& f) {
  try {
    f();
  } catch (const std::runtime_error& e) {
    return e.what();
  }
  ADD_FAILURE() << "no std::runtime_error";
  return "";
}

// ---- schedules and optimisers -------------------------------------------------------------------

TEST(Schedule, WarmupThenCosine) {
  ScheduleOptions s;
  s.base_lr = 0.4;
  s.min_lr = 0.0;
  s.warmup_steps = 4;
  s.total_steps = 104;
  EXPECT_DOUBLE_EQ(learning_rate(s, 0), 0.1);
  EXPECT_DOUBLE_EQ(learning_rate(s, 3), 0.4);
  EXPECT_DOUBLE_EQ(learning_rate(s, 4), 0.4);                                // cosine starts at the peak
  EXPECT_NEAR(learning_rate(s, 54), 0.2, 1e-12);                             // half-way: half the peak
  EXPECT_NEAR(learning_rate(s, 29), 0.2 * (1 + std::cos(M_PI * 0.25)), 1e-12);
  EXPECT_NEAR(learning_rate(s, 104), 0.0, 1e-12);
  s.min_lr = 0.01;
  EXPECT_NEAR(learning_rate(s, 104), 0.01, 1e-12);
}

TEST(Schedule, StepDecayAndErrors) {
  ScheduleOptions s;
  s.kind = "step";
  s.base_lr = 1.0;
  s.total_steps = 100;
  s.milestones = {10, 20};
  s.gamma = 0.5;
  EXPECT_DOUBLE_EQ(learning_rate(s, 9), 1.0);
  EXPECT_DOUBLE_EQ(learning_rate(s, 10), 0.5);
  EXPECT_DOUBLE_EQ(learning_rate(s, 25), 0.25);
  s.kind = "linear";
  EXPECT_THAT(expect_runtime_error([&] { learning_rate(s, 0); }), HasSubstr("expected cosine or step"));
}

TEST(Optimizer, DecaysOnlyWeightsOfRankTwoOrMore) {
  torch::nn::Sequential net(torch::nn::Conv2d(torch::nn::Conv2dOptions(1, 2, 3)), torch::nn::BatchNorm2d(2));
  auto opt = make_optimizer(*net, OptimizerOptions{});
  ASSERT_EQ(opt->param_groups().size(), 2u);
  EXPECT_EQ(opt->param_groups()[0].params().size(), 1u);  // conv weight
  EXPECT_EQ(opt->param_groups()[1].params().size(), 3u);  // conv bias, bn weight and bias
  // One step with zero gradients: only weight decay moves the parameters.
  for (auto& p : net->parameters()) p.mutable_grad() = torch::zeros_like(p);
  const auto w0 = net->parameters()[0].clone(), b0 = net->parameters()[1].clone();
  opt->step();
  EXPECT_FALSE(torch::equal(net->parameters()[0], w0));
  EXPECT_TRUE(torch::equal(net->parameters()[1], b0));
  set_learning_rate(*opt, 0.123);
  for (auto& g : opt->param_groups()) EXPECT_DOUBLE_EQ(g.options().get_lr(), 0.123);
  OptimizerOptions bad;
  bad.kind = "lamb";
  EXPECT_THAT(expect_runtime_error([&] { make_optimizer(*net, bad); }), HasSubstr("expected sgd or adamw"));
}

// ---- metrics on a hand-made case ----------------------------------------------------------------

TEST(Metrics, ConfusionAndAccuraciesByHand) {
  // true:      0 0 0 1 1 2
  // predicted: 0 1 0 1 1 0   → 4 of 6 right; class 0: 2/3, class 1: 2/2, class 2: 0/1.
  const auto labels = torch::tensor({0, 0, 0, 1, 1, 2}, torch::kLong);
  const auto preds = torch::tensor({0, 1, 0, 1, 1, 0}, torch::kLong);
  const auto c = confusion_matrix(labels, preds, 4);
  EXPECT_TRUE(torch::equal(c, torch::tensor({2, 1, 0, 0, 0, 2, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0}, torch::kLong).view({4, 4})));
  const auto acc = accuracy_from_confusion(c);
  EXPECT_DOUBLE_EQ(acc.overall, 4.0 / 6.0);
  EXPECT_DOUBLE_EQ(acc.per_class[0], 2.0 / 3.0);
  EXPECT_DOUBLE_EQ(acc.per_class[1], 1.0);
  EXPECT_DOUBLE_EQ(acc.per_class[2], 0.0);
  EXPECT_TRUE(std::isnan(acc.per_class[3]));
  const auto text = format_confusion(c, {"cat", "dog", "emu", "yak"});
  EXPECT_THAT(text, HasSubstr("cat"));
  EXPECT_THAT(text, HasSubstr("(3)"));
}

TEST(Metrics, EvaluateWithAKnownForward) {
  // Images whose first pixel encodes the prediction; the "model" reads it back as one-hot logits.
  const std::vector<int64_t> labels = {0, 1, 2, 2, 1, 0, 2};
  const std::vector<int64_t> preds = {0, 2, 2, 1, 1, 0, 2};
  auto images = torch::zeros({7, 1, 2, 2}, torch::kUInt8);
  for (int i = 0; i < 7; ++i) images[i][0][0][0] = preds[i] * 100;
  const auto forward = [](const torch::Tensor& x) {
    // x = (pixel/255 − 0)/1: recover the class, logits 10 for it and 0 elsewhere.
    const auto cls = (x.select(1, 0).select(1, 0).select(1, 0) * 255 / 100).round().to(torch::kLong);
    return torch::one_hot(cls, 3).to(torch::kFloat) * 10;
  };
  const auto r = evaluate(forward, images, torch::tensor(labels, torch::kLong), 3, {{0.0}, {1.0}}, 3);
  EXPECT_EQ(r.count, 7);
  EXPECT_TRUE(torch::equal(r.confusion, confusion_matrix(torch::tensor(labels), torch::tensor(preds), 3)));
  EXPECT_EQ(r.confusion.diagonal().sum().item<int64_t>(), 5);
  // The logits come back in the images' order (calibration pairs them with the labels).
  EXPECT_TRUE(torch::equal(r.logits, torch::one_hot(torch::tensor(preds, torch::kLong), 3).to(torch::kFloat) * 10));
  // Cross-entropy of logits (10, 0, 0): right → log(1 + 2e^-10), wrong → 10 + log(1 + 2e^-10).
  const double right = std::log(1 + 2 * std::exp(-10.0));
  EXPECT_NEAR(r.loss, (5 * right + 2 * (10 + right)) / 7, 1e-6);
}

TEST(Metrics, JsonLineAndHistoryRoundTrip) {
  EpochRecord r{3, 0.05, 0.5, 0.8, std::nan(""), 0.75, 1.5, 1000};
  EXPECT_EQ(to_json_line(r), "{\"epoch\": 3, \"lr\": 0.05, \"train_loss\": 0.5, \"train_acc\": 0.8, \"val_loss\": null, "
                             "\"val_acc\": 0.75, \"seconds\": 1.5, \"images_per_s\": 1000}");
  const auto back = records_from_tensor(records_to_tensor({r, r}));
  ASSERT_EQ(back.size(), 2u);
  EXPECT_EQ(back[1].epoch, 3);
  EXPECT_DOUBLE_EQ(back[1].val_acc, 0.75);
}

// ---- torchrun's environment (train/distributed.h; the runs themselves: tests/python/check_distributed.py) ----

TEST(Distributed, LaunchEnvironmentIsTorchrunsVariables) {
  const char* names[] = {"RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_USE_AGENT_STORE",
                         "TORCHELASTIC_RESTART_COUNT"};
  for (const char* n : names) ::unsetenv(n);
  EXPECT_FALSE(launch_environment().has_value());  // no torchrun: one process, as before
  ::setenv("RANK", "1", 1);
  ::setenv("WORLD_SIZE", "4", 1);
  EXPECT_THAT(expect_runtime_error([] { launch_environment(); }), HasSubstr("MASTER_ADDR is not set"));
  ::setenv("MASTER_ADDR", "10.0.0.1", 1);
  ::setenv("MASTER_PORT", "29500", 1);
  ::setenv("LOCAL_RANK", "1", 1);
  ::setenv("TORCHELASTIC_USE_AGENT_STORE", "True", 1);
  ::setenv("TORCHELASTIC_RESTART_COUNT", "2", 1);
  const auto e = launch_environment();
  ASSERT_TRUE(e.has_value());
  EXPECT_EQ(e->rank, 1);
  EXPECT_EQ(e->world_size, 4);
  EXPECT_EQ(e->local_rank, 1);
  EXPECT_EQ(e->master_addr, "10.0.0.1");
  EXPECT_EQ(e->master_port, 29500);
  EXPECT_TRUE(e->agent_store);
  EXPECT_EQ(e->restart_count, 2);
  ::setenv("RANK", "4", 1);
  EXPECT_THAT(expect_runtime_error([] { launch_environment(); }), HasSubstr("RANK=4 is not below WORLD_SIZE=4"));
  ::setenv("RANK", "x", 1);
  EXPECT_THAT(expect_runtime_error([] { launch_environment(); }), HasSubstr("RANK='x' is not an integer"));
  for (const char* n : names) ::unsetenv(n);
}

// ---- atomic files -----------------------------------------------------------------------------

TEST(Files, AtomicWriteReplacesAndLeavesNoTemporary) {
  const auto dir = temp_dir("atomic");
  const auto path = (dir / "f.bin").string();
  write_file_atomic(path, "first");
  write_file_atomic(path, std::string("sec\0nd", 6));
  EXPECT_EQ(read_file(path), std::string("sec\0nd", 6));
  int entries = 0;
  for (const auto& entry : fs::directory_iterator(dir)) entries += entry.is_regular_file() ? 1 : 0;
  EXPECT_EQ(entries, 1);
  EXPECT_THAT(expect_runtime_error([&] { write_file_atomic((dir / "no" / "f").string(), "x"); }),
              HasSubstr("cannot create a temporary file for"));
}

// ---- training runs --------------------------------------------------------------------------------

/// 10 classes of 12×12 gray images: a fixed random template per class, shifted by up to 1 pixel
/// and with noise, so a small network can learn it in a few epochs.
Dataset synthetic(int64_t n, uint64_t seed) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  auto tgen = at::make_generator<at::CPUGeneratorImpl>(1234);
  const auto templates = at::rand({10, 1, 12, 12}, tgen) * 200;
  const auto labels = at::randint(0, 10, {n}, gen, torch::kLong);
  auto images = templates.index_select(0, labels) + at::randn({n, 1, 12, 12}, gen) * 30;
  Dataset d{images.clamp(0, 255).round().to(torch::kUInt8), labels, {}};
  for (int k = 0; k < 10; ++k) d.classes.push_back("class" + std::to_string(k));
  return d;
}

TrainOptions small_recipe(const fs::path& out) {
  TrainOptions o;
  o.model = "resnet20";
  o.width = 0.5;
  o.epochs = 3;
  o.batch_size = 32;
  o.optimizer.lr = 0.05;
  o.warmup_epochs = 0.5;
  o.label_smoothing = 0.1;
  // No flip: a mirrored random template would be a different pattern for the same class.
  o.augment = {1, false, 0.1};
  o.seed = 11;
  o.prefetch = 2;
  o.out_dir = out.string();
  o.verbose = false;
  return o;
}

TEST(Training, ShortRunLowersTheLossAndWritesCheckpoints) {
  at::set_num_threads(1);  // CI machines are small and shared: one thread avoids oversubscription
  const auto dir = temp_dir("short");
  const auto train = synthetic(320, 1), val = synthetic(100, 2);
  auto o = small_recipe(dir);
  const auto r = train_model(o, train, val);
  ASSERT_EQ(r.history.size(), 3u);
  EXPECT_LT(r.history.back().train_loss, 0.8 * r.history.front().train_loss);
  EXPECT_GT(r.best_val_acc, 0.3);  // chance is 0.1
  for (const auto& rec : r.history) EXPECT_GT(rec.images_per_s, 0);
  // metrics.jsonl: one line per epoch.
  std::ifstream metrics(dir / "metrics.jsonl");
  std::string line;
  int lines = 0;
  while (std::getline(metrics, line)) EXPECT_THAT(line, HasSubstr("\"epoch\": " + std::to_string(++lines)));
  EXPECT_EQ(lines, 3);
  // The checkpoints carry the class names and the training split's statistics.
  attnkit::Checkpoint info;
  auto model = attnkit::load_checkpoint(r.best_path, &info);
  EXPECT_EQ(info.class_names, train.classes);
  const auto [mean, stdev] = channel_stats(train);
  EXPECT_EQ(info.preprocessing.mean, mean);
  EXPECT_EQ(info.preprocessing.std, stdev);
  EXPECT_EQ(info.preprocessing.input_height, 12);
  EXPECT_EQ(info.preprocessing.color_order, attnkit::ColorOrder::Gray);
  EXPECT_EQ(info.config.in_channels, 1);
  EXPECT_EQ(info.config.num_classes, 10);
  EXPECT_DOUBLE_EQ(info.config.width, 0.5);
  // Evaluating the best checkpoint reproduces the logged best validation accuracy.
  model->module().eval();
  const auto e = evaluate([&](const torch::Tensor& x) { return model->forward(x); }, val.images, val.labels, 10,
                          {info.preprocessing.mean, info.preprocessing.std}, 64);
  EXPECT_DOUBLE_EQ(accuracy_from_confusion(e.confusion).overall, r.best_val_acc);
  // A second run into the same folder must not silently overwrite it.
  EXPECT_THAT(expect_runtime_error([&] { train_model(o, train, val); }), HasSubstr("pass --resume"));
}

TEST(Training, ResumeReproducesTheUninterruptedRunBitExactly) {
  at::set_num_threads(1);
  const auto train = synthetic(160, 3), val = synthetic(40, 4);
  const auto full_dir = temp_dir("full"), split_dir = temp_dir("split");
  auto o = small_recipe(full_dir);
  o.epochs = 2;
  const auto full = train_model(o, train, val);

  auto first = small_recipe(split_dir);
  first.epochs = 2;
  first.stop_after = 1;  // "killed" after the first epoch's checkpoint
  EXPECT_EQ(train_model(first, train, val).history.size(), 1u);
  torch::manual_seed(999);  // the resumed process starts from a different global RNG state
  auto second = first;
  second.stop_after = 0;
  second.resume = true;
  const auto resumed = train_model(second, train, val);
  ASSERT_EQ(resumed.history.size(), 2u);
  EXPECT_EQ(resumed.history[1].train_loss, full.history[1].train_loss);
  EXPECT_EQ(resumed.history[1].val_acc, full.history[1].val_acc);
  const auto a = attnkit::read_checkpoint(full.last_path), b = attnkit::read_checkpoint(resumed.last_path);
  ASSERT_EQ(a.state.size(), b.state.size());
  for (const auto& [name, t] : a.state) {
    ASSERT_TRUE(b.state.count(name)) << name;
    EXPECT_TRUE(torch::equal(t, b.state.at(name))) << name;
  }
  at::set_num_threads(2);
}

TEST(Training, ResumeRefusesAChangedRecipeOrAMissingState) {
  const auto dir = temp_dir("recipe");
  const auto train = synthetic(64, 5);
  auto o = small_recipe(dir);
  o.epochs = 2;
  o.stop_after = 1;
  train_model(o, train, Dataset{});
  o.resume = true;
  o.optimizer.lr = 0.2;
  EXPECT_THAT(expect_runtime_error([&] { train_model(o, train, Dataset{}); }),
              HasSubstr("it was started with --lr=0.05, this run asks for --lr=0.2"));
  auto fresh = small_recipe(temp_dir("fresh"));
  fresh.resume = true;
  EXPECT_THAT(expect_runtime_error([&] { train_model(fresh, train, Dataset{}); }), HasSubstr("nothing to resume"));
}

TEST(Training, AutocastBf16RunsOnCpu) {
  const auto dir = temp_dir("bf16");
  auto o = small_recipe(dir);
  o.epochs = 1;
  o.amp = "bf16";
  const auto r = train_model(o, synthetic(64, 6), synthetic(32, 7));
  EXPECT_TRUE(std::isfinite(r.history[0].train_loss));
  o.amp = "fp8";
  EXPECT_THAT(expect_runtime_error([&] { train_model(o, synthetic(64, 6), Dataset{}); }), HasSubstr("expected off or bf16"));
}

// `attnkit train` and `attnkit calibrate` fit a checkpoint's temperature with train::calibrate: the
// network on its inference path over the data. The T it stores must be the one fitted to the module's own
// logits (eager, float32) on the images normalised as the checkpoint says, paired with their labels; the
// two paths differ by float32 rounding (BatchNorm folded), far below the 1e-4 allowed here.
TEST(Training, CalibrateFitsTheCheckpointOnItsValidationLogits) {
  at::set_num_threads(1);
  const auto dir = temp_dir("calibrate");
  const auto train = synthetic(320, 1), val = synthetic(100, 2);
  const auto r = train_model(small_recipe(dir), train, val);
  attnkit::Checkpoint ck = attnkit::read_checkpoint(r.best_path);
  const auto net = prepare_network(attnkit::load_model(ck), torch::kCPU, torch::kFloat, false);
  ASSERT_TRUE(net.frozen);
  const double accuracy = calibrate(ck, net, val, "the validation set", 64);
  EXPECT_NEAR(accuracy, r.best_val_acc, 0.0101);  // at most one of 100 images on the other side of a tie
  ASSERT_TRUE(ck.calibration.has_value());
  EXPECT_EQ(ck.calibration->split, "the validation set");
  EXPECT_EQ(ck.calibration->images, 100);

  auto model = attnkit::load_model(ck);
  model->module().eval();
  torch::NoGradGuard no_grad;
  const auto& pre = ck.preprocessing;
  const auto x = (val.images.to(torch::kFloat) / 255 - pre.mean[0]) / pre.std[0];
  const auto logits = model->forward(x);
  const double t = attnkit::fit_temperature(logits, val.labels);
  EXPECT_NEAR(ck.calibration->temperature, t, 1e-4 * t);
  EXPECT_NEAR(ck.calibration->nll_before, attnkit::negative_log_likelihood(logits, val.labels), 1e-4);
  EXPECT_NEAR(ck.calibration->nll_after, attnkit::negative_log_likelihood(logits, val.labels, t), 1e-4);
  // An image whose confidence lies on a bin edge may fall on either side: at most 2/N of ECE.
  EXPECT_NEAR(ck.calibration->ece_after, attnkit::reliability_diagram(logits, val.labels, t).ece, 2.0 / 100);
  EXPECT_LE(ck.calibration->nll_after, ck.calibration->nll_before);  // T minimises the NLL; T = 1 is one candidate
  const auto file = (dir / "calibrated.pt").string();
  attnkit::save_checkpoint(ck, file);
  EXPECT_EQ(attnkit::read_checkpoint(file).temperature(), ck.calibration->temperature);
}

TEST(Training, CudaRunWhenAvailable) {
  if (!attnkit::testing::cuda_available()) GTEST_SKIP() << "no CUDA device";
  const auto dir = temp_dir("cuda");
  auto o = small_recipe(dir);
  o.device = "cuda";
  o.amp = "bf16";
  o.channels_last = true;
  const auto r = train_model(o, synthetic(320, 1), synthetic(100, 2));
  EXPECT_LT(r.history.back().train_loss, 0.8 * r.history.front().train_loss);
}

}  // namespace
