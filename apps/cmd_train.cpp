// attnkit train: trains a backbone (any depth × attention of the registry) on Fashion-MNIST/MNIST
// IDX files, a CSV of pixels, or, with OpenCV, an ImageFolder tree or a CSV of image paths.
// The loop itself lives in train/trainer.h; this file turns the command line into its options.
#include "commands.h"
#include "image_readers.h"
#include "validators.h"

#include "common/device.h"
#include "train/calibrate_source.h"
#include "train/calibration.h"
#include "train/data_source.h"
#include "train/distributed.h"
#include "train/trainer.h"
#ifdef ATTNKIT_HAVE_OPENCV
#include "vision/plot.h"
#endif

#include <ATen/Parallel.h>

#include <chrono>
#include <cmath>
#include <filesystem>
#include <iomanip>
#include <iostream>
#include <optional>
#include <thread>

namespace attnkit::app {
namespace {

struct TrainArgs {
  train::TrainOptions options;
  train::DataSpec data;
  std::string val_data;
  int64_t val_size = -1;
  int64_t max_images = 0;
  std::string device = "auto";
  std::string amp = "auto";
  int threads = 0;
  bool no_hflip = false;
  bool no_nesterov = false;
  bool quiet = false;
  /// Data-parallel runs under torchrun (train/distributed.h).
  std::string dist_backend = "auto";
  double dist_timeout_s = 300;
};

// ---- plan: resolved options and the data, every error before any training ----------------------

struct TrainPlan {
  train::TrainOptions options;
  train::Dataset train_set, val_set;
  /// The validation set in words, stored with the temperature fitted on it.
  std::string val_description;
};

/// Fills in what the command line leaves to "auto" (device, amp, prefetch) and the flags' inverses.
void resolve_runtime(const TrainArgs& a, train::TrainOptions& o) {
  common::configure_threads(a.threads);
  o.device = common::resolve_device(a.device);
  common::configure_cuda_speed(o.device);
  o.amp = a.amp == "auto" ? (o.device == "cuda" ? "bf16" : "off") : a.amp;
  // A loader thread pays off only where it has a core of its own: on CUDA (the CPU mostly waits) or
  // when LibTorch's threads leave one free. Measured on 2 cores with 2 threads (resnet20, batch 128):
  // 790 images/s without it, 645 with it, since it preempts the OpenMP team at every barrier.
  if (o.prefetch < 0) {
    const auto cores = static_cast<int>(std::thread::hardware_concurrency());
    o.prefetch = o.device == "cuda" || at::get_num_threads() < cores ? 2 : 0;
  }
  o.augment.hflip = !a.no_hflip;
  o.optimizer.nesterov = !a.no_nesterov;
  o.verbose = !a.quiet;
  if (o.out_dir.empty()) o.out_dir = "runs/" + o.model;
}

/// The training set (--max-images applied) and the validation set: --val-data, or held out of
/// the training data (--val-size, stratified by --seed). What `attnkit calibrate` needs to find the
/// same validation set again goes into the checkpoints' metadata (calibrate_source.h reads it).
void load_training_data(const TrainArgs& a, uint64_t seed, TrainPlan& plan) {
  if (!a.val_data.empty() && a.val_size > 0) throw std::runtime_error("--val-data and --val-size exclude each other");
  const auto readers = image_readers();
  train::DataSpec spec = a.data;
  spec.split = "train";
  auto all = train::load_dataset(spec, readers);
  auto& meta = plan.options.metadata;
  meta["dataset"] = std::filesystem::absolute(a.data.path).lexically_normal().string();
  if (a.data.format != "auto") meta["data_format"] = a.data.format;
  int64_t max_images = 0;
  if (a.max_images > 0 && a.max_images < all.size()) {
    max_images = a.max_images;
    all = train::subset(all, torch::arange(max_images, torch::kLong));
    meta["max_images"] = std::to_string(max_images);
  }
  if (a.val_data.empty()) {
    // Default: 5000 of 60000 (Fashion-MNIST), and one image in twelve on smaller sets.
    const int64_t val_size = a.val_size >= 0 ? a.val_size : std::min<int64_t>(5000, all.size() / 12);
    std::tie(plan.train_set, plan.val_set) = train::split_train_val(all, val_size, seed);
    meta["val_size"] = std::to_string(val_size);
    plan.val_description = train::held_out_description(meta["dataset"], val_size, seed, max_images);
    return;
  }
  train::DataSpec v = spec;
  v.path = a.val_data;
  v.format = "auto";
  v.known_classes = all.classes;
  plan.val_set = train::load_dataset(v, readers);
  if (plan.val_set.classes != all.classes) throw std::runtime_error(a.val_data + ": its classes differ from the training data's");
  plan.train_set = std::move(all);
  meta["val_data"] = std::filesystem::absolute(a.val_data).lexically_normal().string();
  plan.val_description = train::whole_set_description(meta["val_data"]);
}

/// Under torchrun: joins the other processes (one device each, by LOCAL_RANK); rank 0 alone reports.
void join_processes(const TrainArgs& a, train::TrainOptions& o) {
  const auto launch = train::launch_environment();
  if (!launch) return;
  if (o.device == "cuda") o.device = "cuda:" + std::to_string(launch->local_rank);
  train::DistributedOptions d;
  d.backend = a.dist_backend;
  d.timeout = std::chrono::milliseconds(std::llround(a.dist_timeout_s * 1000));
  o.distributed = train::Distributed::join(*launch, o.device, d);
  if (!o.distributed->is_main()) o.verbose = false;
}

TrainPlan plan_training(const TrainArgs& a) {
  TrainPlan plan;
  plan.options = a.options;
  resolve_runtime(a, plan.options);
  join_processes(a, plan.options);
  load_training_data(a, plan.options.seed, plan);
  return plan;
}

// ---- report ------------------------------------------------------------------------------------

void print_plan(const TrainPlan& plan) {
  const auto& o = plan.options;
  const auto& t = plan.train_set;
  std::cerr << "training " << o.model << " (width " << o.width << ") on " << t.size() << " images (" << t.channels() << "x"
            << t.height() << "x" << t.width() << ", " << t.classes.size() << " classes), validating on " << plan.val_set.size()
            << "; device " << o.device << ", amp " << o.amp << ", " << at::get_num_threads() << " thread(s), prefetch "
            << o.prefetch << " -> " << o.out_dir << "\n";
  if (const auto& d = o.distributed) {
    const int64_t w = d->world_size();
    std::cerr << "data-parallel: " << d->describe() << "\n"
              << "  --batch-size " << o.batch_size << " is the GLOBAL batch: each process trains on " << o.batch_size / w
              << (o.batch_size % w ? " or " + std::to_string(o.batch_size / w + 1) : std::string()) << " images per step, the "
              << w << " together on " << o.batch_size << " (same learning rate and schedule as one process with --batch-size "
              << o.batch_size << ")\n";
    std::cerr << "  BatchNorm statistics: "
              << (o.sync_batch_norm ? "synchronised over the global batch (--sync-bn)"
                                    : "per process, of its slice (--sync-bn synchronises them)")
              << "\n";
  } else if (o.sync_batch_norm) {
    std::cerr << "--sync-bn: one process, nothing to synchronise\n";
  }
}

/// curves.png next to the checkpoints (metrics.jsonl holds the same numbers where OpenCV is absent).
void report_curves(const std::vector<train::EpochRecord>& history, const std::string& out_dir) {
#ifdef ATTNKIT_HAVE_OPENCV
  std::vector<vision::EpochPoint> points;
  for (const auto& r : history) points.push_back({r.train_loss, r.val_loss, r.train_acc, r.val_acc});
  const auto plot = (std::filesystem::path(out_dir) / "curves.png").string();
  vision::plot_training_curves(points, plot);
  std::cout << "curves: " << plot << "\n";
#else
  (void)history;
  std::cout << "curves: not drawn (built without OpenCV); the numbers are in "
            << (std::filesystem::path(out_dir) / "metrics.jsonl").string() << "\n";
#endif
}

void report_training(const train::TrainResult& result, const TrainPlan& plan) {
  const auto& last = result.history.back();
  std::cout << std::fixed << std::setprecision(2);
  if (plan.val_set.size() > 0) {
    std::cout << "best epoch " << result.best_epoch << ": validation accuracy " << 100 * result.best_val_acc << "% -> "
              << result.best_path << "\n";
  }
  std::cout << "last epoch " << last.epoch << ": train accuracy " << 100 * last.train_acc << "% -> " << result.last_path << "\n";
  report_curves(result.history, plan.options.out_dir);
}

/// Rewrites the checkpoint at `path` with a temperature: `fit` when given (a file with the same
/// weights as the one it was fitted for), else one fitted on the validation set with the file's own
/// weights, as saved and run the way classify runs them. Returns the calibration stored; none where no
/// temperature can be fitted (the file stays uncalibrated and the run a success: it says why).
std::optional<Calibration> calibrate_checkpoint(const std::string& path, const TrainPlan& plan,
                                                const std::optional<Calibration>& fit = std::nullopt) {
  Checkpoint checkpoint = read_checkpoint(path);
  if (fit) {
    checkpoint.calibration = fit;
  } else {
    const auto net = train::prepare_network(load_model(checkpoint), torch::Device(plan.options.device), torch::kFloat32, false);
    try {
      train::calibrate(checkpoint, net, plan.val_set, plan.val_description, plan.options.eval_batch_size);
    } catch (const c10::Error& e) {  // fit_temperature: e.g. every validation image right, so no finite T
      std::cout << "temperature: not fitted for " << path << ": " << e.what_without_backtrace() << "\n";
      return std::nullopt;
    }
  }
  save_checkpoint(checkpoint, path);
  std::cout << train::describe_fit(*checkpoint.calibration, "validation") << " -> " << path << "\n";
  return checkpoint.calibration;
}

/// Temperature scaling of best.pt and last.pt, fitted on the validation set (never on test data).
void calibrate_checkpoints(const train::TrainResult& result, const TrainPlan& plan) {
  if (plan.val_set.size() == 0) {
    std::cout << "temperature: not fitted (no validation set); attnkit calibrate --weights FILE --data PATH fits one\n";
    return;
  }
  const auto best = calibrate_checkpoint(result.best_path, plan);
  // last.pt holds best.pt's weights when the best epoch was the last: the same fit, or the same failure.
  if (result.best_epoch != result.history.back().epoch) calibrate_checkpoint(result.last_path, plan);
  else if (best) calibrate_checkpoint(result.last_path, plan, best);
}

int run_train(const TrainArgs& a) {
  const TrainPlan plan = plan_training(a);
  const bool main_process = !plan.options.distributed || plan.options.distributed->is_main();
  if (!a.quiet && main_process) print_plan(plan);
  const auto result = train::train_model(plan.options, plan.train_set, plan.val_set);
  if (!main_process) return kOk;  // rank 0 reports and calibrates the files it wrote
  report_training(result, plan);
  calibrate_checkpoints(result, plan);
  return kOk;
}

// ---- parse: the options, in the groups --help shows them -----------------------------------------

void add_data_options(CLI::App* cmd, TrainArgs& a) {
  a.data.path = "/usr/share/datasets/fashion-mnist";
  cmd->add_option("--data", a.data.path,
                  "Training data: an MNIST-style IDX folder, an image folder (one sub-folder per class), "
                  "a CSV of label,pixels or a CSV of path,label")
      ->capture_default_str();
  cmd->add_option("--format", a.data.format, "Data format")
      ->check(CLI::IsMember({"auto", "idx", "folder", "pixel-csv", "image-csv"}))->capture_default_str();
  cmd->add_option("--val-data", a.val_data, "Separate validation data (default: hold out --val-size training images)");
  cmd->add_option("--val-size", a.val_size,
                  "Training images held out for validation (stratified, chosen by --seed); default 5000, or 1/12 of "
                  "smaller sets; 0 = no validation (the last model is the best)")
      ->check(non_negative_number());
  cmd->add_option("--classes", a.data.class_names,
                  "Class names of IDX/pixel-CSV data: fashion-mnist, mnist or a,b,c (default: fashion-mnist when the "
                  "path mentions fashion, else the digits)");
  cmd->add_option("--image-size", a.data.image_size, "Image folder/CSV: resize images to SIZE x SIZE pixels (0 = first image's size)")
      ->check(CLI::Range(int64_t{0}, int64_t{4096}))->capture_default_str();
  cmd->add_option("--channels", a.data.channels, "Image folder/CSV: 1 (gray) or 3 (color); 0 = from the first image")
      ->check(CLI::IsMember({0, 1, 3}))->capture_default_str();
  cmd->add_option("--max-images", a.max_images, "Use only the first N training images (0 = all; for quick runs)")
      ->check(non_negative_number())->capture_default_str();
}

void add_recipe_options(CLI::App* cmd, TrainArgs& a) {
  auto& o = a.options;
  cmd->add_option("--model", o.model, "Model name: resnet20, resnet20-cbam, resnet18-se, resnet56-eca, ...")->capture_default_str();
  cmd->add_option("--width", o.width, "Width multiplier of every stage (e.g. 4 for a WRN-like ResNet-20)")
      ->check(finite_number())->check(CLI::Range(0.125, 16.0))->capture_default_str();
  cmd->add_option("--epochs", o.epochs, "Training epochs")->check(CLI::Range(int64_t{1}, int64_t{100000}))->capture_default_str();
  cmd->add_option("--batch-size", o.batch_size, "Images per training step")
      ->check(CLI::Range(int64_t{1}, int64_t{65536}))->capture_default_str();
  cmd->add_option("--eval-batch-size", o.eval_batch_size, "Images per validation batch")
      ->check(CLI::Range(int64_t{1}, int64_t{65536}))->capture_default_str();
  cmd->add_option("--optimizer", o.optimizer.kind, "sgd or adamw")->check(CLI::IsMember({"sgd", "adamw"}))->capture_default_str();
  cmd->add_option("--lr", o.optimizer.lr, "Peak learning rate")->check(positive_number())->capture_default_str();
  cmd->add_option("--momentum", o.optimizer.momentum, "SGD momentum")->check(finite_number())->check(CLI::Range(0.0, 0.999))->capture_default_str();
  cmd->add_flag("--no-nesterov", a.no_nesterov, "Plain momentum instead of Nesterov's");
  cmd->add_option("--weight-decay", o.optimizer.weight_decay,
                  "Weight decay of conv/linear weights (BatchNorm and biases are not decayed); decoupled for adamw")
      ->check(finite_number())->check(CLI::Range(0.0, 1.0))->capture_default_str();
}

void add_schedule_and_augment_options(CLI::App* cmd, TrainArgs& a) {
  auto& o = a.options;
  cmd->add_option("--schedule", o.schedule, "Learning-rate schedule after warm-up: cosine (to --min-lr) or step")
      ->check(CLI::IsMember({"cosine", "step"}))->capture_default_str();
  cmd->add_option("--warmup-epochs", o.warmup_epochs, "Linear warm-up from 0, in epochs (fractions allowed)")
      ->check(finite_number())->check(CLI::Range(0.0, 1000.0))->capture_default_str();
  cmd->add_option("--min-lr", o.min_lr, "Final learning rate of the cosine schedule")->check(non_negative_number())->capture_default_str();
  cmd->add_option("--milestones", o.milestones, "Step schedule: epochs at which the rate is multiplied by --lr-gamma")
      ->delimiter(',')
      ->check(positive_number());
  cmd->add_option("--lr-gamma", o.lr_gamma, "Step schedule factor")->check(finite_number())->check(CLI::Range(0.0, 1.0))->capture_default_str();
  cmd->add_option("--label-smoothing", o.label_smoothing, "Label smoothing of the cross-entropy")
      ->check(finite_number())->check(CLI::Range(0.0, 0.99))->capture_default_str();
  o.augment.crop_padding = 2;
  cmd->add_option("--crop-padding", o.augment.crop_padding, "Random crop after zero padding by this many pixels (0 = off)")
      ->check(CLI::Range(int64_t{0}, int64_t{64}))->capture_default_str();
  cmd->add_flag("--no-hflip", a.no_hflip, "No random horizontal flip");
  cmd->add_option("--erasing", o.augment.erasing, "Probability of random erasing per image (0 = off)")
      ->check(finite_number())->check(CLI::Range(0.0, 1.0))->capture_default_str();
  cmd->add_flag("--tta", o.hflip_tta, "Validate on each image and its mirror (averaged logits)");
}

void add_run_options(CLI::App* cmd, TrainArgs& a) {
  auto& o = a.options;
  cmd->add_option("--seed", o.seed, "Seed of initialisation, data order, augmentation and the validation split")->capture_default_str();
  cmd->add_option("--device", a.device, "auto (CUDA when available), cpu or cuda")
      ->check(CLI::IsMember({"auto", "cpu", "cuda"}))->capture_default_str();
  cmd->add_option("--threads", a.threads, "CPU threads of LibTorch (0 = its default)")
      ->check(CLI::Range(0, 1024))->capture_default_str();
  cmd->add_option("--amp", a.amp, "Mixed precision: auto (bf16 on CUDA, off on CPU), off or bf16")
      ->check(CLI::IsMember({"auto", "off", "bf16"}))->capture_default_str();
  cmd->add_flag("--channels-last", o.channels_last, "Channels-last memory format (faster on CUDA tensor cores)");
  cmd->add_option("--weights-dtype", o.weights_dtype,
                  "Element type of the saved model weights (float16 halves the file; loading casts back)")
      ->check(CLI::IsMember({"float32", "float16", "bfloat16"}))->capture_default_str();
  o.prefetch = -1;
  cmd->add_option("--prefetch", o.prefetch,
                  "Batches the loader thread prepares ahead (0 = no thread; -1 = auto: 2 on CUDA or when LibTorch's "
                  "threads leave a core free, else 0, because on busy cores the thread slows training down)")
      ->check(CLI::Range(-1, 64))->capture_default_str();
  cmd->add_option("--init-from", o.init_from,
                  "Start from this checkpoint's weights and normalisation: the same backbone (depth, --width, classes), "
                  "e.g. a plain network given SE/ECA/CBAM gates, which start neutral (the network computes what the "
                  "checkpoint did) and are learnt by fine-tuning")
      ->check(CLI::ExistingFile);
  o.out_dir.clear();
  cmd->add_option("--out", o.out_dir, "Output folder (checkpoints, metrics.jsonl, curves.png); default runs/MODEL");
  cmd->add_flag("--resume", o.resume, "Continue the run in --out from its last completed epoch");
  cmd->add_option("--stop-after", o.stop_after, "Stop after this many epochs of this invocation (0 = run all; --resume continues)")
      ->check(non_negative_number());
  cmd->add_flag("--quiet", a.quiet, "No progress or per-epoch lines on stderr");
}

void add_distributed_options(CLI::App* cmd, TrainArgs& a) {
  cmd->add_option("--dist-backend", a.dist_backend,
                  "Under torchrun: the c10d process group, auto (gloo on CPU, nccl on CUDA), gloo or nccl (not in this build yet; "
                  "on CUDA pass gloo)")
      ->check(CLI::IsMember({"auto", "gloo", "nccl"}))->capture_default_str();
  cmd->add_option("--dist-timeout", a.dist_timeout_s,
                  "Under torchrun: seconds a process waits for the others (rendezvous, each all-reduce) before it fails")
      ->check(CLI::Range(1.0, 86400.0))->capture_default_str();
  cmd->add_flag("--sync-bn", a.options.sync_batch_norm,
                "Under torchrun: BatchNorm in training normalises with the mean and variance of the whole global batch "
                "(all processes), as torch.nn.SyncBatchNorm does, instead of each process's slice; needed when the "
                "slices are small. One all-reduce per BatchNorm layer in forward and in backward");
}

}  // namespace

Runner add_train_command(CLI::App& cli) {
  auto a = std::make_shared<TrainArgs>();
  auto* cmd = cli.add_subcommand("train", "Train a model on Fashion-MNIST/MNIST (IDX), a CSV, or an image folder");
  cmd->footer(
      "At the end best.pt and last.pt get a temperature fitted on the validation set (as attnkit calibrate\n"
      "does), so classify, visualize and stream show calibrated probabilities; without a validation set\n"
      "they stay uncalibrated. The checkpoints' metadata records the data, --val-size and --seed, so that\n"
      "attnkit calibrate can draw the same validation split again.\n\n"
      "Several processes, GPUs or machines (PyTorch's torchrun and c10d):\n"
      "  torchrun --nproc-per-node N --no-python attnkit train ...\n"
      "--batch-size is then the global batch, split among the processes; rank 0 writes the files and prints.\n"
      "A run restarted by torchrun (--max-restarts) continues from its last completed epoch.");
  add_data_options(cmd, *a);
  add_recipe_options(cmd, *a);
  add_schedule_and_augment_options(cmd, *a);
  add_run_options(cmd, *a);
  add_distributed_options(cmd, *a);
  // Contradictory combinations are usage errors too (checked while parsing, so exit code 2).
  cmd->callback([a] {
    if (!a->options.milestones.empty() && a->options.schedule != "step")
      throw CLI::ValidationError("--milestones", "only the step schedule has milestones; add --schedule step");
  });
  return [cmd, a]() -> int {
    if (!cmd->parsed()) return -1;
    return run_train(*a);
  };
}

}  // namespace attnkit::app
