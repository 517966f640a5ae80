#include "calibrate_source.h"

#include "checkpoint_eval.h"
#include "dataset.h"
#include "idx.h"

#include "common/files.h"

#include <algorithm>
#include <cctype>
#include <filesystem>
#include <stdexcept>
#include <vector>

namespace attnkit::train {
namespace fs = std::filesystem;

namespace {

std::optional<std::string> metadata_value(const Checkpoint& checkpoint, const std::string& key) {
  const auto it = checkpoint.metadata.find(key);
  if (it == checkpoint.metadata.end() || it->second.empty()) return std::nullopt;
  return it->second;
}

bool is_idx_folder(const std::string& path) {
  std::error_code ec;
  return fs::is_directory(path, ec) && is_idx_dir(path);
}

bool same_file(const std::string& a, const std::string& b) {
  std::error_code ec;
  return fs::equivalent(a, b, ec);
}

/// A count stored in the metadata by attnkit train; anything else is an error naming the key.
int64_t metadata_count(const std::string& text, const std::string& key, const std::string& weights) {
  try {
    size_t used = 0;
    const long long v = std::stoll(text, &used);
    if (used == text.size() && v >= 0) return v;
  } catch (const std::exception&) {
  }
  throw std::runtime_error(weights + ": metadata \"" + key + "\" is \"" + text + "\", not a count");
}

/// The --seed=N of the recipe attnkit train stores (recipe_fingerprint: space-separated --name=value).
std::optional<uint64_t> recipe_seed(const Checkpoint& checkpoint) {
  const auto recipe = metadata_value(checkpoint, "recipe");
  if (!recipe) return std::nullopt;
  const std::string key = "--seed=";
  for (size_t at = recipe->find(key); at != std::string::npos; at = recipe->find(key, at + 1)) {
    if (at > 0 && (*recipe)[at - 1] != ' ') continue;
    try {
      return std::stoull(recipe->substr(at + key.size()));
    } catch (const std::exception&) {
      return std::nullopt;
    }
  }
  return std::nullopt;
}

/// The split options of a held-out calibration set: from the command line, else from the metadata;
/// whatever is in neither is one error naming the options to pass.
void resolve_held_out(const CalibrationDataArgs& args, const Checkpoint& checkpoint, const std::string& weights,
                      CalibrationSource& source) {
  std::vector<std::string> problems, options;
  std::error_code ec;
  if (source.spec.path.empty()) {
    problems.push_back("its metadata names no training data");
    options.push_back("--data PATH");
  } else if (args.data.empty() && !fs::exists(source.spec.path, ec)) {
    problems.push_back("the training data it names, \"" + source.spec.path + "\", does not exist here");
    options.push_back("--data PATH");
  }
  const auto stored_size = metadata_value(checkpoint, "val_size");
  if (args.val_size) source.val_size = *args.val_size;
  else if (stored_size) source.val_size = metadata_count(*stored_size, "val_size", weights);
  else {
    problems.push_back("its metadata has no val_size (written before attnkit train stored it)");
    options.push_back("--val-size N");
  }
  const auto seed = args.seed ? args.seed : recipe_seed(checkpoint);
  if (seed) source.seed = *seed;
  else {
    problems.push_back("its metadata has no recipe with a --seed");
    options.push_back("--seed S");
  }
  if (!problems.empty()) {
    std::string what, pass;
    for (const auto& p : problems) what += (what.empty() ? "" : "; ") + p;
    for (const auto& o : options) pass += (pass.empty() ? "" : " ") + o;
    throw std::runtime_error(weights + ": cannot rebuild the validation split its training held out: " + what + "; pass " +
                             pass + " as given to attnkit train (or --data PATH alone to calibrate on a separate validation set)");
  }
  if (source.val_size == 0) {
    throw std::runtime_error(weights + ": its training held out no validation images (--val-size 0); pass --data PATH with "
                             "a separate validation set");
  }
  if (const auto n = metadata_value(checkpoint, "max_images")) source.max_images = metadata_count(*n, "max_images", weights);
  if (const auto format = metadata_value(checkpoint, "data_format")) source.spec.format = *format;
  const auto absolute = fs::absolute(source.spec.path, ec).lexically_normal().string();
  source.description = held_out_description(absolute, source.val_size, source.seed, source.max_images);
}

}  // namespace

std::string test_split_reason(const std::string& path) {
  const fs::path p = fs::path(path).lexically_normal();
  std::string name = (p.has_filename() ? p.filename() : p.parent_path().filename()).string();
  std::transform(name.begin(), name.end(), name.begin(), [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  // Words of the name: "fashion-mnist_test.csv" -> fashion, mnist, test, csv.
  std::string word;
  for (size_t i = 0; i <= name.size(); ++i) {
    if (i < name.size() && std::isalnum(static_cast<unsigned char>(name[i]))) {
      word += name[i];
      continue;
    }
    if (word == "test" || word == "testing" || word == "t10k") return "its name has the word \"" + word + "\" of a test split";
    word.clear();
  }
  if (is_idx_folder(path) && common::find_maybe_gz(path + "/train-images-idx3-ubyte").empty()) {
    return "it is an IDX folder with a test split (t10k-*) and no train split";
  }
  return "";
}

CalibrationSource resolve_calibration_source(const CalibrationDataArgs& args, const Checkpoint& checkpoint,
                                             const std::string& weights) {
  const auto trained_on = metadata_value(checkpoint, "dataset");
  const auto separate_val = metadata_value(checkpoint, "val_data");
  const bool split_given = args.val_size || args.seed;
  CalibrationSource source;
  // Training images are calibrated on only through the split training held out of them.
  if (args.data.empty()) source.held_out = split_given || !separate_val;
  else source.held_out = split_given || is_idx_folder(args.data) || (trained_on && same_file(args.data, *trained_on));
  source.spec.path = !args.data.empty() ? args.data : source.held_out ? trained_on.value_or("") : *separate_val;
  if (const auto why = test_split_reason(source.spec.path); !why.empty()) {
    throw std::runtime_error("\"" + source.spec.path + "\" looks like test data (" + why +
                             "): a temperature fitted on the images eval measures would make eval's calibration error "
                             "meaningless; calibrate on the validation split training held out (the default) or on a "
                             "separate validation set");
  }
  if (source.held_out) resolve_held_out(args, checkpoint, weights, source);
  else source.description = whole_set_description(fs::absolute(source.spec.path).lexically_normal().string());
  source.spec = spec_for_checkpoint(source.spec, checkpoint);
  source.spec.split = "train";
  return source;
}

Dataset load_calibration_set(const CalibrationSource& source, const ImageReaders& readers) {
  auto all = load_dataset(source.spec, readers);
  if (!source.held_out) return all;
  // The order of these steps is train's (cmd_train.cpp: load_training_data), or the split differs.
  if (source.max_images > 0 && source.max_images < all.size()) all = subset(all, torch::arange(source.max_images, torch::kLong));
  return split_train_val(all, source.val_size, source.seed).second;
}

std::string held_out_description(const std::string& path, int64_t val_size, uint64_t seed, int64_t max_images) {
  const std::string data = max_images > 0 ? "the first " + std::to_string(max_images) + " images of " + path : path;
  return std::to_string(val_size) + " images held out of " + data + " by attnkit train (--val-size " + std::to_string(val_size) +
         ", --seed " + std::to_string(seed) + ")";
}

std::string whole_set_description(const std::string& path) { return "all images of " + path; }

}  // namespace attnkit::train
