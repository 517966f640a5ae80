// The training loop of `attnkit train`: epochs of SGD/AdamW over a Dataset, validation after every
// epoch, a resumable state file and attnkit checkpoints of the best and the last model.
//
// Files written into `out_dir`:
//   train_state.pt   everything --resume needs (weights, optimiser state, epoch and step counters,
//                    RNG states, best score, metrics history, the options that shape the run),
//                    rewritten atomically after every epoch;
//   last.pt, best.pt attnkit checkpoints (config, class names, preprocessing, weights) of the last
//                    epoch and of the epoch with the best validation accuracy (the last epoch when
//                    there is no validation set);
//   metrics.jsonl    one JSON object per epoch (see EpochRecord).
// Determinism: the data order and augmentation are functions of (seed, epoch, batch) (see
// loader.h) and the model is initialised from `seed`; on CPU with one thread a run, and a run
// interrupted and resumed, give bit-identical weights.
#pragma once

#include "augment.h"
#include "dataset.h"
#include "metrics.h"
#include "optim.h"

#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

namespace attnkit::train {

class Distributed;

struct TrainOptions {
  /// Registry name ("resnet20", "resnet20-cbam", "resnet18-se", ...).
  std::string model = "resnet20";
  /// Width multiplier of the model (stage widths × width).
  double width = 1.0;
  int64_t epochs = 30;
  int64_t batch_size = 128;
  int64_t eval_batch_size = 1024;
  OptimizerOptions optimizer;
  /// "cosine" or "step".
  std::string schedule = "cosine";
  double warmup_epochs = 0;
  /// Step schedule: epochs at which the rate is multiplied by lr_gamma.
  std::vector<int64_t> milestones;
  double lr_gamma = 0.1;
  double min_lr = 0.0;
  double label_smoothing = 0.0;
  AugmentOptions augment;
  uint64_t seed = 0;
  /// "cpu" or "cuda" (resolved by the caller).
  std::string device = "cpu";
  /// Mixed precision on CUDA or CPU: "off" or "bf16".
  std::string amp = "off";
  bool channels_last = false;
  /// Element type of the floating-point weights in best.pt/last.pt: float32, float16 or bfloat16
  /// (half the file size; loading casts back to the model's dtype).
  std::string weights_dtype = "float32";
  /// Batches prepared ahead by the loader thread (0 = none).
  int prefetch = 2;
  /// Average the logits of each validation image and its mirror.
  bool hflip_tta = false;
  /// Start from this checkpoint's weights and normalisation (see warm_start.h); "" = from the seed.
  std::string init_from;
  std::string out_dir = "runs/train";
  bool resume = false;
  /// Stop after this many epochs of this invocation (0 = run to `epochs`); for tests of resume.
  int64_t stop_after = 0;
  /// Print progress and epoch lines to stderr.
  bool verbose = true;
  /// Data-parallel training over this group of processes (distributed.h); null = one process. batch_size
  /// stays the global batch (each process takes its slice); rank 0 alone writes the files.
  std::shared_ptr<const Distributed> distributed;
  /// With `distributed`: BatchNorm statistics over the global batch (attnkit/modules/batch_norm.h).
  bool sync_batch_norm = false;
  /// Free-form strings stored in the checkpoints' metadata (data set, command line, ...).
  std::map<std::string, std::string> metadata;
};

struct TrainResult {
  std::vector<EpochRecord> history;
  int64_t best_epoch = 0;
  double best_val_acc = 0;
  std::string best_path, last_path;
};

/// Trains `options.model` on `train_data` (validating on `val_data`, which may be empty). The
/// model is built here: classes and input channels come from the data.
TrainResult train_model(const TrainOptions& options, const Dataset& train_data, const Dataset& val_data);

/// The options that must match for --resume, as "name=value" strings.
std::vector<std::string> recipe_fingerprint(const TrainOptions& options);

}  // namespace attnkit::train
