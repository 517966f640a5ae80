// Running a saved checkpoint over a data set, as `attnkit eval`, `attnkit calibrate` and the end of
// `attnkit train` do: the data read the way the checkpoint's model wants it and checked against it, the
// network on its inference path (eval mode, float32 unless asked otherwise), the logits kept.
#pragma once

#include "data_source.h"
#include "metrics.h"

#include <attnkit/backbones/checkpoint.h>
#include <attnkit/backbones/inference_model.h>

#include <memory>
#include <string>
#include <vector>

namespace attnkit::train {

/// The checkpoint's class names, or "0", "1", ... where it has none.
std::vector<std::string> class_names_of(const Checkpoint& info);

/// `spec` completed from the checkpoint: its class order, and for image folders and CSVs its image
/// size and channels (where `spec` leaves them at 0).
DataSpec spec_for_checkpoint(DataSpec spec, const Checkpoint& info);

/// Throws std::runtime_error (one line naming `data_path` or `weights`) unless `data` has the
/// checkpoint's classes, image size and channels, and its preprocessing scales pixels by 1/255 as the
/// evaluation does.
void check_data_fits(const Dataset& data, const Checkpoint& info, const std::string& data_path, const std::string& weights);

/// A checkpoint's network ready to run without gradients.
struct CheckpointNetwork {
  std::shared_ptr<Backbone> model;
  /// The inference path frozen from `model`; null when eager (or float16, which it does not run).
  std::shared_ptr<InferenceModel> frozen;
  torch::Device device = torch::kCPU;
  c10::ScalarType dtype = c10::kFloat;
};

/// `model` moved to `device` and `dtype`, in eval mode, frozen unless `eager` (common::inference_path).
CheckpointNetwork prepare_network(std::shared_ptr<Backbone> model, const torch::Device& device, c10::ScalarType dtype, bool eager);

/// Runs `net` over `data` normalised as `info` says, `batch_size` images per forward; `tta` averages each
/// image's logits with its mirror's. The result holds the logits (EvalResult::logits). With `dist` the
/// batches are shared among the processes and every process gets the whole result (metrics.h: evaluate).
EvalResult evaluate_network(const CheckpointNetwork& net, const Checkpoint& info, const Dataset& data, int64_t batch_size,
                            bool tta = false, const Distributed* dist = nullptr);

}  // namespace attnkit::train
