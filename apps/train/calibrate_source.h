// Which images `attnkit calibrate` fits a checkpoint's temperature on.
//
// By default the validation split the checkpoint's own training run held out, drawn again exactly as
// `attnkit train` drew it: the training data read as train read it (its train split for an IDX
// folder, the first max_images images), then split_train_val(all, val_size, seed). `attnkit train`
// stores what that takes in the checkpoint's metadata:
//   "dataset"      absolute path of --data          "val_size"    images held out (--val-size)
//   "data_format"  --format, when not auto          "max_images"  --max-images, when used
//   "val_data"     absolute path of --val-data, when the validation set was a separate one
// and the seed is the recipe's --seed. --data, --val-size and --seed replace what the metadata says
// (a moved data set, a checkpoint trained elsewhere); what is neither there nor given is one error
// line naming the options to pass.
//
// --data PATH alone names a separate calibration set, used whole, unless PATH is an IDX folder or the
// data the checkpoint was trained on: both hold training images, so their held-out split is used.
//
// Never test data: a path whose name has the word "test", "testing" or "t10k" (t10k-images-idx3-ubyte.gz,
// fashion-mnist_test.csv, data/test/), or an IDX folder without a train split, is refused, saying why:
// a temperature fitted on the images eval measures it on makes eval's ECE say nothing.
#pragma once

#include "data_source.h"

#include <attnkit/backbones/checkpoint.h>

#include <cstdint>
#include <optional>
#include <string>

namespace attnkit::train {

/// What the command line says about the calibration data (unset = from the checkpoint's metadata).
struct CalibrationDataArgs {
  std::string data;
  std::optional<int64_t> val_size;
  std::optional<uint64_t> seed;
};

/// The calibration data, resolved.
struct CalibrationSource {
  /// Where to read it (the train split of an IDX folder); format, classes and image size included.
  DataSpec spec;
  /// Draw the validation split out of `spec` (else use all of it).
  bool held_out = false;
  int64_t val_size = 0;
  uint64_t seed = 0;
  /// Keep only the first max_images images before the split, as training did (0 = all).
  int64_t max_images = 0;
  /// In words, for the output and the checkpoint's calibration.split.
  std::string description;
};

/// Resolves the calibration data of `checkpoint` (read from `weights`) as described above. Throws
/// std::runtime_error with one line: a test split, or what is missing to rebuild the held-out split.
CalibrationSource resolve_calibration_source(const CalibrationDataArgs& args, const Checkpoint& checkpoint,
                                             const std::string& weights);

/// Reads the calibration data: all of it, or the split training held out.
Dataset load_calibration_set(const CalibrationSource& source, const ImageReaders& readers = {});

/// Why `path` looks like a test split ("" when it does not).
std::string test_split_reason(const std::string& path);

/// "5000 images held out of PATH by attnkit train (--val-size 5000, --seed 0)"; with max_images > 0,
/// "... of the first N images of PATH ...".
std::string held_out_description(const std::string& path, int64_t val_size, uint64_t seed, int64_t max_images = 0);
/// "all images of PATH".
std::string whole_set_description(const std::string& path);

}  // namespace attnkit::train
