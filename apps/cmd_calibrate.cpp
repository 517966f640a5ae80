// attnkit calibrate: temperature scaling for a saved checkpoint. Runs the checkpoint's network once
// over held-out data (by default the validation split its training held out, rebuilt from the
// checkpoint's metadata: train/calibrate_source.h), fits the temperature T that minimises the NLL of
// softmax(logits / T), and writes T with the NLL and ECE before and after into the checkpoint
// (atomically; in place unless --out). Test data is refused. classify, visualize and stream then show
// calibrated probabilities, and eval reports the calibration error at T = 1 and at T.
#include "commands.h"
#include "image_readers.h"
#include "validators.h"

#include "common/device.h"
#include "common/precision.h"
#include "train/calibrate_source.h"
#include "train/calibration.h"
#include "train/checkpoint_eval.h"

#include <attnkit/backbones/checkpoint.h>

#include <filesystem>
#include <iomanip>
#include <iostream>

namespace attnkit::app {
namespace {

struct CalibrateArgs {
  std::string weights;
  std::string out;
  bool overwrite = false;
  train::CalibrationDataArgs data;
  int64_t val_size = 0;
  uint64_t seed = 0;
  double temperature = 0;
  int64_t batch_size = 1024;
  std::string device = "auto";
  int threads = 0;
  std::string precision = "float32";
  bool eager = false;
};

/// Where the checkpoint goes: --out, else the file it came from. An existing --out other than the input
/// is replaced only with --overwrite.
std::string output_path(const CalibrateArgs& a) {
  if (a.out.empty()) return a.weights;
  std::error_code ec;
  if (std::filesystem::exists(a.out, ec) && !std::filesystem::equivalent(a.out, a.weights, ec) && !a.overwrite)
    throw std::runtime_error("calibrate: \"" + a.out + "\" exists; pass --overwrite to replace it");
  return a.out;
}

/// --temperature: store the given T without fitting (1 removes the calibration).
int set_temperature(const CalibrateArgs& a, Checkpoint checkpoint, const std::string& out) {
  if (a.temperature == 1.0) {
    checkpoint.calibration.reset();
  } else {
    Calibration c;
    c.temperature = a.temperature;
    c.split = "set by hand (attnkit calibrate --temperature)";
    checkpoint.calibration = c;
  }
  save_checkpoint(checkpoint, out);
  std::cout << "calibrate: " << train::calibration_note(checkpoint) << " -> " << out << "\n";
  return kOk;
}

int run_calibrate(const CalibrateArgs& a) {
  const std::string out = output_path(a);
  Checkpoint checkpoint = read_checkpoint(a.weights);
  if (a.temperature > 0) return set_temperature(a, std::move(checkpoint), out);

  // Plan: the data and the device, every error before the network runs.
  const auto source = train::resolve_calibration_source(a.data, checkpoint, a.weights);
  const auto data = train::load_calibration_set(source, image_readers());
  train::check_data_fits(data, checkpoint, source.spec.path, a.weights);
  common::configure_threads(a.threads);
  const std::string device_name = common::resolve_device(a.device);
  common::configure_cuda_speed(device_name);
  const torch::Device device(device_name);
  const auto precision = common::resolve_precision(a.precision, device);
  const auto net = train::prepare_network(load_model(checkpoint), device, precision.dtype, a.eager);
  std::cerr << "calibrate: " << checkpoint.config.name() << " on " << device.str() << ", " << precision.description << ", "
            << (net.frozen ? "inference path" : "eager") << "; calibration set: " << source.description << "\n";

  const double accuracy = train::calibrate(checkpoint, net, data, source.description, a.batch_size);
  save_checkpoint(checkpoint, out);
  std::cout << std::fixed << std::setprecision(2) << "accuracy on the " << data.size() << " calibration images: " << 100 * accuracy
            << "% (the same at any temperature)\n"
            << train::describe_fit(*checkpoint.calibration, "calibration") << " -> " << out << "\n";
  return kOk;
}

}  // namespace

Runner add_calibrate_command(CLI::App& cli) {
  auto a = std::make_shared<CalibrateArgs>();
  auto* cmd = cli.add_subcommand("calibrate", "Fit a checkpoint's temperature on held-out data so its probabilities mean what they say");
  cmd->footer(
      "Temperature scaling (Guo et al. 2017): classify, visualize and stream then show softmax(logits / T), and\n"
      "eval reports the calibration error (15-bin ECE) and NLL at T = 1 and at T. The top-1 class never changes.\n"
      "Calibration data: by default the validation split the checkpoint's training held out, drawn again from\n"
      "its metadata (the data path, --val-size and the recipe's --seed that attnkit train stores); --data,\n"
      "--val-size and --seed replace those. --data PATH alone is a separate validation set, used whole (an IDX\n"
      "folder or the checkpoint's own training data still gives its held-out split). Test data (a name with\n"
      "\"test\" or \"t10k\", an IDX folder without a train split) is refused.\n"
      "Example: attnkit calibrate --weights runs/cbam/best.pt");
  cmd->add_option("--weights", a->weights, "attnkit checkpoint to calibrate (written back in place unless --out)")
      ->required()
      ->check(CLI::ExistingFile);
  cmd->add_option("--out", a->out, "Write the calibrated checkpoint here instead of over --weights");
  cmd->add_flag("--overwrite", a->overwrite, "Replace --out if it exists");
  cmd->add_option("--data", a->data.data,
                  "Calibration data (IDX folder, image folder, CSV); default: the training data the checkpoint's metadata "
                  "names, of which the held-out validation split is used");
  auto* val_size = cmd->add_option("--val-size", a->val_size,
                                   "Images training held out of --data (its --val-size; default: the checkpoint's metadata)")
                       ->check(positive_number());
  auto* seed = cmd->add_option("--seed", a->seed, "Seed training drew the held-out split with (its --seed; default: the recipe's)");
  cmd->add_option("--temperature", a->temperature,
                  "Store this temperature instead of fitting one (e.g. fitted elsewhere); 1 removes the calibration")
      ->check(positive_number());
  cmd->add_option("--batch-size", a->batch_size, "Images per batch")->check(CLI::Range(int64_t{1}, int64_t{65536}))->capture_default_str();
  cmd->add_option("--device", a->device, "auto (CUDA when available), cpu or cuda")
      ->check(CLI::IsMember({"auto", "cpu", "cuda"}))->capture_default_str();
  cmd->add_option("--threads", a->threads, "CPU threads of LibTorch (0 = its default)")->check(CLI::Range(0, 1024))->capture_default_str();
  cmd->add_option("--precision", a->precision, std::string(common::kPrecisionHelp) +
                  ". Default float32: the logits the temperature is fitted to, as classify computes them in float32")
      ->check(CLI::IsMember({"auto", "float32", "bfloat16", "float16"}))->capture_default_str();
  cmd->add_flag("--eager", a->eager, common::kEagerHelp);
  // The held-out split's options count only when given (else the metadata's apply).
  cmd->callback([a, val_size, seed] {
    if (val_size->count() > 0) a->data.val_size = a->val_size;
    if (seed->count() > 0) a->data.seed = a->seed;
    if (a->temperature > 0 && (!a->data.data.empty() || a->data.val_size || a->data.seed))
      throw CLI::ValidationError("--temperature", "stores a given temperature; --data, --val-size and --seed choose data to fit one on");
  });
  return [cmd, a]() -> int { return cmd->parsed() ? run_calibrate(*a) : -1; };
}

}  // namespace attnkit::app
