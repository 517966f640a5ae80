// What training and evaluation measure: per-epoch records (written as JSON lines), confusion
// matrices and the accuracies derived from them, and a model evaluation loop.
#pragma once

#include "augment.h"

#include <torch/types.h>

#include <functional>
#include <string>
#include <vector>

namespace attnkit::train {

class Distributed;

/// One line of the metrics log.
struct EpochRecord {
  int64_t epoch = 0;  // 1-based
  double lr = 0;      // learning rate at the end of the epoch
  double train_loss = 0, train_acc = 0;
  /// NaN when there is no validation set.
  double val_loss = 0, val_acc = 0;
  double seconds = 0, images_per_s = 0;
};

/// {"epoch": 1, "lr": 0.1, ...} on one line (NaN written as null).
std::string to_json_line(const EpochRecord& record);

/// Records as a [E, 8] double tensor (for the resume state) and back.
torch::Tensor records_to_tensor(const std::vector<EpochRecord>& records);
std::vector<EpochRecord> records_from_tensor(const torch::Tensor& t);

/// Confusion matrix [K, K] int64: row = true class, column = predicted class.
torch::Tensor confusion_matrix(const torch::Tensor& labels, const torch::Tensor& predictions, int64_t classes);

struct Accuracy {
  double overall = 0;
  /// Per true class (NaN for a class with no samples).
  std::vector<double> per_class;
};
Accuracy accuracy_from_confusion(const torch::Tensor& confusion);

/// The confusion matrix as aligned text, with class names.
std::string format_confusion(const torch::Tensor& confusion, const std::vector<std::string>& classes);

struct EvalResult {
  double loss = 0;  // mean cross-entropy (no label smoothing)
  torch::Tensor confusion;
  int64_t count = 0;
  /// float32 [N, K] on the CPU, in the images' order: what calibration is measured and fitted on.
  torch::Tensor logits;
};

/// Runs `forward` (logits [B, K]) over uint8 images/labels already on the target device, in eval
/// batches of `batch_size`, without augmentation. `hflip_tta` averages the logits of the image and
/// its mirror. With `dist` (data-parallel, distributed.h) each process runs a share of the batches and
/// every process returns the whole result, equal to the one-process result.
EvalResult evaluate(const std::function<torch::Tensor(const torch::Tensor&)>& forward, const torch::Tensor& images,
                    const torch::Tensor& labels, int64_t classes, const Normalization& norm, int64_t batch_size,
                    bool channels_last = false, bool hflip_tta = false, const Distributed* dist = nullptr);

}  // namespace attnkit::train
