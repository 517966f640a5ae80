#include "trainer.h"

#include "loader.h"

#include "common/device.h"
#include "common/files.h"
#include "common/progress.h"

#include <attnkit/backbones/checkpoint.h>
#include <attnkit/backbones/registry.h>

#include <ATen/autocast_mode.h>
#include <ATen/Context.h>
#include <ATen/CPUGeneratorImpl.h>
#include <torch/nn/functional/loss.h>
#include <torch/serialize/input-archive.h>
#include <torch/serialize/output-archive.h>

#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <iomanip>
#include <sstream>
#include <stdexcept>

namespace attnkit::train {
namespace fs = std::filesystem;

namespace {

/// Autocast on one device type for the guard's lifetime (what torch.autocast does in Python).
class AutocastGuard {
 public:
  AutocastGuard(at::DeviceType device, bool enabled, at::ScalarType dtype)
      : device_(device), enabled_(enabled), prev_enabled_(at::autocast::is_autocast_enabled(device)),
        prev_dtype_(at::autocast::get_autocast_dtype(device)) {
    if (!enabled_) return;
    at::autocast::set_autocast_enabled(device_, true);
    at::autocast::set_autocast_dtype(device_, dtype);
    at::autocast::increment_nesting();
  }
  ~AutocastGuard() {
    if (!enabled_) return;
    // Casts of the weights are cached per forward; drop them once the outermost region ends.
    if (at::autocast::decrement_nesting() == 0) at::autocast::clear_cache();
    at::autocast::set_autocast_enabled(device_, prev_enabled_);
    at::autocast::set_autocast_dtype(device_, prev_dtype_);
  }
  AutocastGuard(const AutocastGuard&) = delete;
  AutocastGuard& operator=(const AutocastGuard&) = delete;

 private:
  at::DeviceType device_;
  bool enabled_, prev_enabled_;
  at::ScalarType prev_dtype_;
};

std::string fmt(double v, int precision = 6) {
  std::ostringstream s;
  s << std::setprecision(precision) << v;
  return s.str();
}

void to_channels_last(torch::nn::Module& module) {
  torch::NoGradGuard no_grad;
  for (auto& p : module.parameters()) {
    if (p.dim() == 4) p.set_data(p.data().contiguous(at::MemoryFormat::ChannelsLast));
  }
}

at::Generator cpu_generator() { return at::detail::getDefaultCPUGenerator(); }

struct State {
  int64_t epoch = 0;  // epochs completed
  int64_t step = 0;   // optimiser steps taken
  double best_val_acc = -1;
  int64_t best_epoch = 0;
  std::vector<EpochRecord> history;
};

void save_state(const std::string& path, const TrainOptions& options, const State& s, torch::nn::Module& model,
                torch::optim::Optimizer& optimizer) {
  torch::serialize::OutputArchive archive;
  torch::serialize::OutputArchive model_archive, optim_archive;
  model.save(model_archive);
  optimizer.save(optim_archive);
  archive.write("model", model_archive);
  archive.write("optimizer", optim_archive);
  archive.write("format", c10::IValue(std::string("attnkit-train-state-1")));
  archive.write("epoch", c10::IValue(s.epoch));
  archive.write("step", c10::IValue(s.step));
  archive.write("best_val_acc", c10::IValue(s.best_val_acc));
  archive.write("best_epoch", c10::IValue(s.best_epoch));
  archive.write("history", records_to_tensor(s.history));
  c10::List<std::string> recipe;
  for (const auto& item : recipe_fingerprint(options)) recipe.push_back(item);
  archive.write("recipe", c10::IValue(recipe));
  // Nothing in the loop draws from the global generators (the data pipeline has its own seeded
  // streams), but user code or future layers (dropout) may: keep them exact across a resume.
  archive.write("cpu_rng", cpu_generator().get_state());
  if (options.device == "cuda") archive.write("cuda_rng", at::globalContext().defaultGenerator(at::kCUDA).get_state());
  std::string bytes;
  archive.save_to([&bytes](const void* data, size_t size) -> size_t {
    bytes.append(static_cast<const char*>(data), size);
    return size;
  });
  common::write_file_atomic(path, bytes);
}

void load_state(const std::string& path, const TrainOptions& options, State& s, torch::nn::Module& model,
                torch::optim::Optimizer& optimizer, const torch::Device& device) {
  torch::serialize::InputArchive archive;
  try {
    archive.load_from(path, device);
  } catch (const c10::Error& e) {
    throw std::runtime_error(path + ": not a readable training state (" + e.what_without_backtrace() + ")");
  }
  c10::IValue v;
  if (!archive.try_read("format", v) || !v.isString() || v.toStringRef() != "attnkit-train-state-1") {
    throw std::runtime_error(path + ": not an attnkit training state");
  }
  archive.read("recipe", v);
  std::vector<std::string> saved;
  for (const auto& item : v.toListRef()) saved.push_back(item.toStringRef());
  const auto now = recipe_fingerprint(options);
  for (size_t i = 0; i < std::max(saved.size(), now.size()); ++i) {
    const std::string a = i < saved.size() ? saved[i] : "(none)", b = i < now.size() ? now[i] : "(none)";
    if (a != b) {
      throw std::runtime_error("cannot resume " + path + ": it was started with " + a + ", this run asks for " + b +
                               " (resume with the same options, or train into another --out folder)");
    }
  }
  torch::serialize::InputArchive model_archive, optim_archive;
  archive.read("model", model_archive);
  archive.read("optimizer", optim_archive);
  model.load(model_archive);
  optimizer.load(optim_archive);
  archive.read("epoch", v);
  s.epoch = v.toInt();
  archive.read("step", v);
  s.step = v.toInt();
  archive.read("best_val_acc", v);
  s.best_val_acc = v.toDouble();
  archive.read("best_epoch", v);
  s.best_epoch = v.toInt();
  // A fresh tensor for every read: reading into a defined tensor would re-point its storage.
  torch::Tensor history, cpu_rng, cuda_rng;
  archive.read("history", history);
  s.history = records_from_tensor(history.cpu());
  archive.read("cpu_rng", cpu_rng);
  cpu_generator().set_state(cpu_rng.cpu());
  if (options.device == "cuda" && archive.try_read("cuda_rng", cuda_rng)) {
    at::Generator cuda_gen = at::globalContext().defaultGenerator(at::kCUDA);
    cuda_gen.set_state(cuda_rng.cpu());
  }
}

void write_metrics(const std::string& path, const std::vector<EpochRecord>& history) {
  std::string text;
  for (const auto& r : history) text += to_json_line(r) + "\n";
  common::write_file_atomic(path, text);
}

}  // namespace

std::vector<std::string> recipe_fingerprint(const TrainOptions& o) {
  std::vector<std::string> r = {
      "--model=" + o.model,
      "--width=" + fmt(o.width),
      "--epochs=" + std::to_string(o.epochs),
      "--batch-size=" + std::to_string(o.batch_size),
      "--optimizer=" + o.optimizer.kind,
      "--lr=" + fmt(o.optimizer.lr),
      "--momentum=" + fmt(o.optimizer.momentum),
      "--nesterov=" + std::to_string(o.optimizer.nesterov),
      "--weight-decay=" + fmt(o.optimizer.weight_decay),
      "--schedule=" + o.schedule,
      "--warmup-epochs=" + fmt(o.warmup_epochs),
      "--min-lr=" + fmt(o.min_lr),
      "--lr-gamma=" + fmt(o.lr_gamma),
      "--label-smoothing=" + fmt(o.label_smoothing),
      "--crop-padding=" + std::to_string(o.augment.crop_padding),
      "--hflip=" + std::to_string(o.augment.hflip),
      "--erasing=" + fmt(o.augment.erasing),
      "--seed=" + std::to_string(o.seed),
  };
  std::string ms;
  for (auto m : o.milestones) ms += (ms.empty() ? "" : ",") + std::to_string(m);
  r.push_back("--milestones=" + ms);
  return r;
}

TrainResult train_model(const TrainOptions& o, const Dataset& train_data, const Dataset& val_data) {
  train_data.validate("training data");
  if (o.epochs < 1) throw std::runtime_error("--epochs must be >= 1, got " + std::to_string(o.epochs));
  if (o.batch_size < 1) throw std::runtime_error("--batch-size must be >= 1, got " + std::to_string(o.batch_size));
  if (o.amp != "off" && o.amp != "bf16") throw std::runtime_error("--amp '" + o.amp + "': expected off or bf16");
  if (o.weights_dtype != "float32" && o.weights_dtype != "float16" && o.weights_dtype != "bfloat16")
    throw std::runtime_error("--weights-dtype '" + o.weights_dtype + "': expected float32, float16 or bfloat16");
  if (o.label_smoothing < 0 || o.label_smoothing >= 1) throw std::runtime_error("--label-smoothing must be in [0, 1)");
  const torch::Device device(o.device);
  const int64_t num_classes = static_cast<int64_t>(train_data.classes.size());
  const bool has_val = val_data.size() > 0;

  // ---- model -------------------------------------------------------------------------------------
  torch::manual_seed(o.seed);
  ModelConfig config = parse_model_name(o.model);
  config.num_classes = num_classes;
  config.in_channels = train_data.channels();
  config.width = o.width;
  // The ImageNet stem (7×7/2 conv + max-pool) would shrink a 28 px image to 7 px before the first
  // stage; small images get the 3×3/1 stem.
  if (config.family == "resnet" && std::max(train_data.height(), train_data.width()) < 64) config.stem = "small";
  auto model = build_model(config);
  torch::nn::Module& module = model->module();
  module.to(device);
  if (o.channels_last) to_channels_last(module);
  auto optimizer = make_optimizer(module, o.optimizer);

  // ---- data: the whole set goes to the device once ---------------------------------------------
  const auto [mean, stdev] = channel_stats(train_data);
  const Normalization norm{mean, stdev};
  Preprocessing pre = Preprocessing::small(train_data.height(), mean, stdev);
  pre.input_width = train_data.width();
  pre.color_order = train_data.channels() == 1 ? "GRAY" : "RGB";
  const auto train_images = train_data.images.to(device), train_labels = train_data.labels.to(device);
  const auto val_images = has_val ? val_data.images.to(device) : torch::Tensor();
  const auto val_labels = has_val ? val_data.labels.to(device) : torch::Tensor();

  const int64_t n = train_data.size();
  const bool drop_last = n >= o.batch_size;
  const int64_t steps_per_epoch = drop_last ? n / o.batch_size : 1;
  ScheduleOptions sched;
  sched.kind = o.schedule;
  sched.base_lr = o.optimizer.lr;
  sched.min_lr = o.min_lr;
  sched.warmup_steps = static_cast<int64_t>(std::llround(o.warmup_epochs * static_cast<double>(steps_per_epoch)));
  sched.total_steps = o.epochs * steps_per_epoch;
  sched.gamma = o.lr_gamma;
  for (auto m : o.milestones) sched.milestones.push_back(m * steps_per_epoch);
  learning_rate(sched, 0);  // validates the schedule options before any work

  // ---- files -------------------------------------------------------------------------------------
  fs::create_directories(o.out_dir);
  const std::string state_path = (fs::path(o.out_dir) / "train_state.pt").string();
  const std::string best_path = (fs::path(o.out_dir) / "best.pt").string();
  const std::string last_path = (fs::path(o.out_dir) / "last.pt").string();
  const std::string metrics_path = (fs::path(o.out_dir) / "metrics.jsonl").string();
  State state;
  if (o.resume) {
    if (!fs::exists(state_path)) throw std::runtime_error("--resume: no " + state_path + " (nothing to resume)");
    load_state(state_path, o, state, module, *optimizer, device);
    if (o.verbose) std::cerr << "resuming " << o.out_dir << " after epoch " << state.epoch << "/" << o.epochs << "\n";
  } else if (fs::exists(state_path)) {
    throw std::runtime_error(o.out_dir + " already holds a training run (train_state.pt): pass --resume to continue it, "
                             "or choose another --out folder");
  }

  auto save_model = [&](const std::string& path, int64_t epoch) {
    auto meta = o.metadata;
    meta["epoch"] = std::to_string(epoch);
    std::string recipe;
    for (const auto& item : recipe_fingerprint(o)) recipe += (recipe.empty() ? "" : " ") + item;
    meta["recipe"] = recipe;
    Checkpoint ck = make_checkpoint(*model, train_data.classes, pre, meta);
    const auto dtype = common::dtype_from_name(o.weights_dtype);
    for (auto& [name, tensor] : ck.state)
      tensor = (tensor.is_floating_point() ? tensor.to(dtype) : tensor).contiguous();
    save_checkpoint(ck, path);
  };

  const auto forward = [&](const torch::Tensor& x) { return model->forward(x); };
  const bool amp = o.amp == "bf16";
  const auto loss_options = torch::nn::functional::CrossEntropyFuncOptions().label_smoothing(o.label_smoothing);
  const int64_t last_epoch = o.stop_after > 0 ? std::min(o.epochs, state.epoch + o.stop_after) : o.epochs;

  for (int64_t epoch = state.epoch; epoch < last_epoch; ++epoch) {
    const auto t0 = std::chrono::steady_clock::now();
    LoaderOptions lo;
    lo.batch_size = o.batch_size;
    lo.shuffle = true;
    lo.drop_last = drop_last;
    lo.train = true;
    lo.augment = o.augment;
    lo.norm = norm;
    lo.seed = o.seed;
    lo.epoch = epoch;
    lo.prefetch = o.prefetch;
    lo.channels_last = o.channels_last;
    BatchLoader loader(train_images, train_labels, lo);
    common::ProgressBar bar("epoch " + std::to_string(epoch + 1) + "/" + std::to_string(o.epochs), loader.num_batches(), o.verbose);
    module.train();
    auto loss_sum = torch::zeros({}, torch::TensorOptions().dtype(torch::kDouble).device(device));
    auto correct = torch::zeros({}, torch::TensorOptions().dtype(torch::kLong).device(device));
    int64_t seen = 0, batches = 0;
    double lr = 0;
    while (auto batch = loader.next()) {
      lr = learning_rate(sched, state.step);
      set_learning_rate(*optimizer, lr);
      torch::Tensor logits;
      {
        AutocastGuard autocast(device.type(), amp, at::kBFloat16);
        logits = model->forward(batch->images);
      }
      const auto loss = torch::nn::functional::cross_entropy(logits.to(torch::kFloat), batch->labels, loss_options);
      optimizer->zero_grad(true);
      loss.backward();
      optimizer->step();
      ++state.step;
      ++batches;
      const int64_t b = batch->labels.size(0);
      seen += b;
      {
        torch::NoGradGuard no_grad;
        loss_sum += loss.detach().to(torch::kDouble) * static_cast<double>(b);
        correct += (logits.detach().argmax(1) == batch->labels).sum();
      }
      if (bar.due()) {
        const double el = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        bar.update(batches, loss_sum.item<double>() / seen, static_cast<double>(correct.item<int64_t>()) / seen, seen / el);
      }
    }
    EpochRecord rec;
    rec.epoch = epoch + 1;
    rec.lr = lr;
    rec.train_loss = loss_sum.item<double>() / static_cast<double>(std::max<int64_t>(seen, 1));
    rec.train_acc = static_cast<double>(correct.item<int64_t>()) / static_cast<double>(std::max<int64_t>(seen, 1));
    rec.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    rec.images_per_s = static_cast<double>(seen) / rec.seconds;
    rec.val_loss = rec.val_acc = std::nan("");
    if (!std::isfinite(rec.train_loss)) {
      throw std::runtime_error("the training loss became " + fmt(rec.train_loss) + " in epoch " + std::to_string(epoch + 1) +
                               " (try a lower --lr or more --warmup-epochs)");
    }
    if (has_val) {
      module.eval();
      AutocastGuard autocast(device.type(), amp, at::kBFloat16);
      const auto r = evaluate(forward, val_images, val_labels, num_classes, norm, o.eval_batch_size, o.channels_last, o.hflip_tta);
      rec.val_loss = r.loss;
      rec.val_acc = accuracy_from_confusion(r.confusion).overall;
    }
    state.history.push_back(rec);
    state.epoch = epoch + 1;
    // Best by validation accuracy; without a validation set the last model is the one to keep.
    const double score = has_val ? rec.val_acc : static_cast<double>(rec.epoch);
    if (score > state.best_val_acc) {
      state.best_val_acc = score;
      state.best_epoch = rec.epoch;
      save_model(best_path, rec.epoch);
    }
    save_model(last_path, rec.epoch);
    write_metrics(metrics_path, state.history);
    save_state(state_path, o, state, module, *optimizer);
    std::ostringstream line;
    line << std::fixed << "epoch " << rec.epoch << "/" << o.epochs << "  lr " << std::setprecision(5) << rec.lr << "  train loss "
         << std::setprecision(4) << rec.train_loss << " acc " << std::setprecision(2) << 100 * rec.train_acc << "%";
    if (has_val) line << "  val loss " << std::setprecision(4) << rec.val_loss << " acc " << std::setprecision(2) << 100 * rec.val_acc << "%";
    line << "  " << std::setprecision(1) << rec.seconds << " s, " << std::setprecision(0) << rec.images_per_s << " img/s";
    bar.finish(line.str());
  }

  TrainResult result;
  result.history = state.history;
  result.best_epoch = state.best_epoch;
  result.best_val_acc = has_val ? state.best_val_acc : std::nan("");
  result.best_path = best_path;
  result.last_path = last_path;
  return result;
}

}  // namespace attnkit::train
