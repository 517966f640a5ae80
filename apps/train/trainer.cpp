#include "trainer.h"

#include "distributed.h"
#include "loader.h"
#include "warm_start.h"

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
#include <cstdlib>
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
  if (torch::Device(options.device).is_cuda()) archive.write("cuda_rng", at::globalContext().defaultGenerator(at::kCUDA).get_state());
  std::string bytes;
  archive.save_to([&bytes](const void* data, size_t size) -> size_t {
    bytes.append(static_cast<const char*>(data), size);
    return size;
  });
  common::write_file_atomic(path, bytes);
}

/// `bytes`, where given, are the file's contents (read by rank 0 and broadcast); `path` names it in errors.
void load_state(const std::string& path, const TrainOptions& options, State& s, torch::nn::Module& model,
                torch::optim::Optimizer& optimizer, const torch::Device& device, const std::string* bytes = nullptr) {
  torch::serialize::InputArchive archive;
  try {
    if (bytes) archive.load_from(bytes->data(), bytes->size(), device);
    else archive.load_from(path, device);
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
  if (torch::Device(options.device).is_cuda() && archive.try_read("cuda_rng", cuda_rng)) {
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
  // Only when given, so that states written before the option existed still resume.
  if (!o.init_from.empty()) r.push_back("--init-from=" + o.init_from);
  return r;
}

namespace {

// ---- plan: everything a run needs, made (and every option checked) before the first step --------

void check_options(const TrainOptions& o, const Dataset& train_data) {
  train_data.validate("training data");
  if (o.epochs < 1) throw std::runtime_error("--epochs must be >= 1, got " + std::to_string(o.epochs));
  if (o.batch_size < 1) throw std::runtime_error("--batch-size must be >= 1, got " + std::to_string(o.batch_size));
  if (o.distributed && o.batch_size < o.distributed->world_size()) {
    throw std::runtime_error("--batch-size " + std::to_string(o.batch_size) + " is the global batch and must be at least the " +
                             std::to_string(o.distributed->world_size()) + " processes");
  }
  if (o.amp != "off" && o.amp != "bf16") throw std::runtime_error("--amp '" + o.amp + "': expected off or bf16");
  if (o.weights_dtype != "float32" && o.weights_dtype != "float16" && o.weights_dtype != "bfloat16")
    throw std::runtime_error("--weights-dtype '" + o.weights_dtype + "': expected float32, float16 or bfloat16");
  if (o.label_smoothing < 0 || o.label_smoothing >= 1) throw std::runtime_error("--label-smoothing must be in [0, 1)");
}

/// The model for this data (classes and input channels from it), initialised from the seed.
std::shared_ptr<Backbone> build_model_for(const TrainOptions& o, const Dataset& data, const torch::Device& device) {
  torch::manual_seed(o.seed);
  ModelConfig config = parse_model_name(o.model);
  config.num_classes = static_cast<int64_t>(data.classes.size());
  config.in_channels = data.channels();
  config.width = o.width;
  // The ImageNet stem (7×7/2 conv + max-pool) would shrink a 28 px image to 7 px before the first
  // stage; small images get the 3×3/1 stem.
  if (config.family == ModelFamily::ResNet && std::max(data.height(), data.width()) < 64) config.stem = Stem::Small;
  auto model = build_model(config);
  model->module().to(device);
  if (o.channels_last) to_channels_last(model->module());
  return model;
}

/// The learning-rate schedule in optimiser steps; learning_rate(…, 0) rejects bad options now.
ScheduleOptions schedule_in_steps(const TrainOptions& o, int64_t steps_per_epoch) {
  ScheduleOptions sched;
  sched.kind = o.schedule;
  sched.base_lr = o.optimizer.lr;
  sched.min_lr = o.min_lr;
  sched.warmup_steps = static_cast<int64_t>(std::llround(o.warmup_epochs * static_cast<double>(steps_per_epoch)));
  sched.total_steps = o.epochs * steps_per_epoch;
  sched.gamma = o.lr_gamma;
  for (auto m : o.milestones) sched.milestones.push_back(m * steps_per_epoch);
  learning_rate(sched, 0);
  return sched;
}

struct RunFiles {
  std::string state, best, last, metrics;
};

/// The files in out_dir, which is made where `create` (rank 0 alone writes).
RunFiles run_files(const std::string& out_dir, bool create = true) {
  if (create) fs::create_directories(out_dir);
  const auto in_out = [&](const char* name) { return (fs::path(out_dir) / name).string(); };
  return {in_out("train_state.pt"), in_out("best.pt"), in_out("last.pt"), in_out("metrics.jsonl")};
}

/// One training run: the model, its optimiser, the data on the device and the files.
struct Run {
  const TrainOptions& o;
  torch::Device device;
  std::vector<std::string> classes;
  std::shared_ptr<Backbone> model;
  std::unique_ptr<torch::optim::Optimizer> optimizer;
  Normalization norm;
  Preprocessing preprocessing;
  // The whole data set goes to the device once.
  torch::Tensor train_images, train_labels, val_images, val_labels;
  bool drop_last = false;
  ScheduleOptions schedule;
  RunFiles files;
  State state;
  // Data-parallel training (distributed.h): null with one process.
  std::shared_ptr<const Distributed> dist = o.distributed;
  std::unique_ptr<GradientSync> sync;
  std::unique_ptr<BatchNormSyncGuard> batch_norm_sync;  // --sync-bn: installed for the run's lifetime
  double allreduce_ms = 0;        // one all-reduce of all gradients alone, for the epoch line
  std::ofstream sample_log;       // ATTNKIT_LOG_SAMPLES (tests): the rows each step trained on

  bool has_val() const { return val_images.defined(); }
  /// Rank 0, or the only process: writes the files.
  bool main() const { return !dist || dist->is_main(); }
  int64_t num_classes() const { return static_cast<int64_t>(classes.size()); }
};

/// A new run, or the state of the run in out_dir with --resume; never silently over an old one.
/// With several processes rank 0 alone looks at --out and sends the state to the others; a restart by
/// torchrun (--max-restarts) continues from the last epoch as --resume does.
void start_or_resume(Run& run) {
  const auto& o = run.o;
  bool resume = o.resume;
  std::string problem;
  if (run.main()) {
    const bool saved = fs::exists(run.files.state);
    if (run.dist && run.dist->launch().restart_count > 0 && saved) resume = true;
    if (resume && !saved) problem = "--resume: no " + run.files.state + " (nothing to resume)";
    if (!resume && saved) {
      problem = o.out_dir + " already holds a training run (train_state.pt): pass --resume to continue it, "
                            "or choose another --out folder";
    }
  }
  std::string bytes;
  if (run.dist) {
    throw_if_rank0_failed(*run.dist, problem);
    if (run.main() && resume) bytes = common::read_file(run.files.state);
    run.dist->broadcast(bytes);
    resume = !bytes.empty();
  } else if (!problem.empty()) {
    throw std::runtime_error(problem);
  }
  if (!resume) return;
  load_state(run.files.state, o, run.state, run.model->module(), *run.optimizer, run.device, run.dist ? &bytes : nullptr);
  if (o.verbose) std::cerr << "resuming " << o.out_dir << " after epoch " << run.state.epoch << "/" << o.epochs << "\n";
}

// The order of the steps is part of the determinism contract (same seed, same weights).
void plan_run(Run& run, const Dataset& train_data, const Dataset& val_data) {
  const auto& o = run.o;
  run.model = build_model_for(o, train_data, run.device);
  auto [mean, stdev] = channel_stats(train_data);
  if (!o.init_from.empty()) {
    // The source's normalisation is part of what its weights compute, on resume too.
    const Checkpoint source = read_checkpoint(o.init_from);
    if (!o.resume) {
      const auto report = warm_start(*run.model, source, o.init_from);
      if (o.verbose)
        std::cerr << "initialised from " << o.init_from << ": " << report.copied << " tensors copied, "
                  << report.neutral_blocks << " new attention blocks started neutral\n";
    }
    if (source.preprocessing.mean.size() == mean.size()) mean = source.preprocessing.mean, stdev = source.preprocessing.std;
  }
  run.optimizer = make_optimizer(run.model->module(), o.optimizer);
  run.norm = {mean, stdev};
  run.preprocessing = Preprocessing::small(train_data.height(), mean, stdev);
  run.preprocessing.input_width = train_data.width();
  run.preprocessing.color_order = train_data.channels() == 1 ? ColorOrder::Gray : ColorOrder::RGB;
  run.train_images = train_data.images.to(run.device);
  run.train_labels = train_data.labels.to(run.device);
  if (val_data.size() > 0) {
    run.val_images = val_data.images.to(run.device);
    run.val_labels = val_data.labels.to(run.device);
  }
  run.drop_last = train_data.size() >= o.batch_size;
  run.schedule = schedule_in_steps(o, run.drop_last ? train_data.size() / o.batch_size : 1);
  run.files = run_files(o.out_dir, run.main());
  start_or_resume(run);
  if (run.dist) {
    // Every process starts from rank 0's weights and buffers, then averages its gradients with the others'.
    run.dist->broadcast(run.model->module());
    run.sync = std::make_unique<GradientSync>(*run.dist, run.model->module());
    run.allreduce_ms = run.sync->time_allreduce_ms();
    if (o.sync_batch_norm) run.batch_norm_sync = std::make_unique<BatchNormSyncGuard>(batch_norm_sync_of(run.dist));
  }
  if (const char* log = std::getenv("ATTNKIT_LOG_SAMPLES")) {  // tests: which rows each step trains on
    run.sample_log.open(std::string(log) + ".rank" + std::to_string(run.dist ? run.dist->rank() : 0), std::ios::app);
  }
}

// ---- run: one epoch of steps, validation, the files ---------------------------------------------

void save_model(const Run& run, const std::string& path, int64_t epoch) {
  auto meta = run.o.metadata;
  meta["epoch"] = std::to_string(epoch);
  std::string recipe;
  for (const auto& item : recipe_fingerprint(run.o)) recipe += (recipe.empty() ? "" : " ") + item;
  meta["recipe"] = recipe;
  Checkpoint ck = make_checkpoint(*run.model, run.classes, run.preprocessing, meta);
  const auto dtype = common::dtype_from_name(run.o.weights_dtype);
  for (auto& [name, tensor] : ck.state) tensor = (tensor.is_floating_point() ? tensor.to(dtype) : tensor).contiguous();
  save_checkpoint(ck, path);
}

LoaderOptions training_loader_options(const Run& run, int64_t epoch) {
  LoaderOptions lo;
  lo.batch_size = run.o.batch_size;
  lo.shuffle = true;
  lo.drop_last = run.drop_last;
  lo.train = true;
  lo.augment = run.o.augment;
  lo.norm = run.norm;
  lo.seed = run.o.seed;
  lo.epoch = epoch;
  lo.prefetch = run.o.prefetch;
  lo.channels_last = run.o.channels_last;
  if (run.dist) {
    lo.shard = run.dist->rank();
    lo.shards = run.dist->world_size();
  }
  return lo;
}

/// Loss and correct predictions summed on the device: reading them back every step would make the
/// host wait for the device; the bar reads them only when it redraws.
struct RunningSums {
  torch::Tensor loss, correct;
  int64_t seen = 0, batches = 0;
};

double elapsed_s(std::chrono::steady_clock::time_point since) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - since).count();
}

/// One optimiser step on `batch`; returns its learning rate.
double train_step(Run& run, const Batch& batch, RunningSums& sums) {
  const double lr = learning_rate(run.schedule, run.state.step);
  set_learning_rate(*run.optimizer, lr);
  torch::Tensor logits;
  if (run.sync) run.sync->before_forward();
  {
    AutocastGuard autocast(run.device.type(), run.o.amp == "bf16", at::kBFloat16);
    logits = run.model->forward(batch.images);
  }
  const auto loss_options = torch::nn::functional::CrossEntropyFuncOptions().label_smoothing(run.o.label_smoothing);
  const auto loss = torch::nn::functional::cross_entropy(logits.to(torch::kFloat), batch.labels, loss_options);
  run.optimizer->zero_grad(true);
  const int64_t b = batch.labels.size(0);
  if (run.sync) run.sync->backward(loss, b, batch.global_size);  // averaged over the processes, overlapping backward
  else loss.backward();
  if (run.sample_log.is_open()) {
    const auto rows = batch.indices.cpu().contiguous();
    run.sample_log << run.state.step;
    for (int64_t i = 0; i < rows.numel(); ++i) run.sample_log << ' ' << rows.data_ptr<int64_t>()[i];
    run.sample_log << '\n' << std::flush;
  }
  run.optimizer->step();
  ++run.state.step;
  ++sums.batches;
  sums.seen += b;
  torch::NoGradGuard no_grad;
  sums.loss += loss.detach().to(torch::kDouble) * static_cast<double>(b);
  sums.correct += (logits.detach().argmax(1) == batch.labels).sum();
  return lr;
}

/// The training half of the epoch's record (lr, train loss and accuracy, time since t0, speed).
EpochRecord train_epoch(Run& run, BatchLoader& loader, common::ProgressBar& bar, std::chrono::steady_clock::time_point t0) {
  run.model->module().train();
  const auto on_device = torch::TensorOptions().device(run.device);
  RunningSums sums{torch::zeros({}, on_device.dtype(torch::kDouble)), torch::zeros({}, on_device.dtype(torch::kLong))};
  EpochRecord rec;
  while (auto batch = loader.next()) {
    rec.lr = train_step(run, *batch, sums);
    if (!bar.due()) continue;
    const double seen = static_cast<double>(sums.seen);
    bar.update(sums.batches, sums.loss.item<double>() / seen, static_cast<double>(sums.correct.item<int64_t>()) / seen,
               seen / elapsed_s(t0));
  }
  if (run.dist) {
    // The epoch's numbers over all processes.
    auto totals = torch::stack({sums.loss.cpu(), sums.correct.cpu().to(torch::kDouble),
                                torch::tensor(static_cast<double>(sums.seen), torch::kDouble)});
    run.dist->all_reduce_sum(totals);
    sums.loss = totals[0];
    sums.correct = totals[1].round().to(torch::kLong);
    sums.seen = static_cast<int64_t>(std::llround(totals[2].item<double>()));
  }
  const double seen = static_cast<double>(std::max<int64_t>(sums.seen, 1));
  rec.train_loss = sums.loss.item<double>() / seen;
  rec.train_acc = static_cast<double>(sums.correct.item<int64_t>()) / seen;
  rec.seconds = elapsed_s(t0);
  rec.images_per_s = static_cast<double>(sums.seen) / rec.seconds;
  rec.val_loss = rec.val_acc = std::nan("");
  return rec;
}

void validate_epoch(Run& run, EpochRecord& rec) {
  run.model->module().eval();
  AutocastGuard autocast(run.device.type(), run.o.amp == "bf16", at::kBFloat16);
  const auto forward = [&](const torch::Tensor& x) { return run.model->forward(x); };
  const auto r = evaluate(forward, run.val_images, run.val_labels, run.num_classes(), run.norm, run.o.eval_batch_size,
                          run.o.channels_last, run.o.hflip_tta, run.dist.get());
  rec.val_loss = r.loss;
  rec.val_acc = accuracy_from_confusion(r.confusion).overall;
}

/// Records the epoch and rewrites the files, so that a kill after this point loses nothing.
void keep_epoch(Run& run, const EpochRecord& rec) {
  auto& state = run.state;
  state.history.push_back(rec);
  state.epoch = rec.epoch;
  // Best by validation accuracy; without a validation set the last model is the one to keep.
  const double score = run.has_val() ? rec.val_acc : static_cast<double>(rec.epoch);
  if (score > state.best_val_acc) {
    state.best_val_acc = score;
    state.best_epoch = rec.epoch;
    if (run.main()) save_model(run, run.files.best, rec.epoch);
  }
  if (!run.main()) return;  // every process keeps the same state; rank 0 alone writes it
  save_model(run, run.files.last, rec.epoch);
  write_metrics(run.files.metrics, state.history);
  save_state(run.files.state, run.o, state, run.model->module(), *run.optimizer);
}

// ---- report --------------------------------------------------------------------------------------

std::string epoch_line(const EpochRecord& rec, int64_t epochs, bool has_val) {
  std::ostringstream line;
  line << std::fixed << "epoch " << rec.epoch << "/" << epochs << "  lr " << std::setprecision(5) << rec.lr << "  train loss "
       << std::setprecision(4) << rec.train_loss << " acc " << std::setprecision(2) << 100 * rec.train_acc << "%";
  if (has_val) line << "  val loss " << std::setprecision(4) << rec.val_loss << " acc " << std::setprecision(2) << 100 * rec.val_acc << "%";
  line << "  " << std::setprecision(1) << rec.seconds << " s, " << std::setprecision(0) << rec.images_per_s << " img/s";
  return line.str();
}

void run_epoch(Run& run, int64_t epoch) {
  const auto t0 = std::chrono::steady_clock::now();  // the epoch's time includes making its loader
  BatchLoader loader(run.train_images, run.train_labels, training_loader_options(run, epoch));
  common::ProgressBar bar("epoch " + std::to_string(epoch + 1) + "/" + std::to_string(run.o.epochs), loader.num_batches(),
                          run.o.verbose);
  EpochRecord rec = train_epoch(run, loader, bar, t0);
  rec.epoch = epoch + 1;
  if (!std::isfinite(rec.train_loss)) {
    throw std::runtime_error("the training loss became " + fmt(rec.train_loss) + " in epoch " + std::to_string(rec.epoch) +
                             " (try a lower --lr or more --warmup-epochs)");
  }
  if (run.has_val()) validate_epoch(run, rec);
  keep_epoch(run, rec);
  std::string line = epoch_line(rec, run.o.epochs, run.has_val());
  if (run.dist && loader.num_batches() > 0) {
    // What one all-reduce of every gradient costs alone, against a step (the Reducer overlaps most of it
    // with backward, so this is an upper bound of the time communication adds).
    const double step_ms = 1000 * rec.seconds / static_cast<double>(loader.num_batches());
    std::ostringstream share;
    share << std::fixed << std::setprecision(1) << "  (" << run.dist->world_size() << " processes; all-reduce "
          << run.allreduce_ms << " ms = " << 100 * run.allreduce_ms / step_ms << "% of a " << step_ms << " ms step)";
    line += share.str();
  }
  bar.finish(line);
}

}  // namespace

TrainResult train_model(const TrainOptions& o, const Dataset& train_data, const Dataset& val_data) {
  check_options(o, train_data);
  Run run{o, torch::Device(o.device), train_data.classes};
  plan_run(run, train_data, val_data);
  const int64_t last_epoch = o.stop_after > 0 ? std::min(o.epochs, run.state.epoch + o.stop_after) : o.epochs;
  try {
    for (int64_t epoch = run.state.epoch; epoch < last_epoch; ++epoch) run_epoch(run, epoch);
  } catch (const CollectiveError& e) {
    // One line: which process, what failed; the files hold the last completed epoch (atomic writes).
    throw CollectiveError(std::string(e.what()) + (run.state.epoch > 0 ? "; " + run.files.state + " holds epoch " +
                                                                              std::to_string(run.state.epoch)
                                                                        : std::string("; no epoch was completed")));
  }

  TrainResult result;
  result.history = run.state.history;
  result.best_epoch = run.state.best_epoch;
  result.best_val_acc = run.has_val() ? run.state.best_val_acc : std::nan("");
  result.best_path = run.files.best;
  result.last_path = run.files.last;
  return result;
}

}  // namespace attnkit::train
