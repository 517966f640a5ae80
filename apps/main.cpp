// attnkit: classify images, train and evaluate, draw attention heatmaps, benchmark the kernels.
// main() only parses; each subcommand lives in its own file. Every error becomes one readable line
// on stderr and a non-zero exit code.
#include "commands.h"
#include "common/allocator.h"
#include "common/files.h"

#include <attnkit/attnkit.h>
#ifdef ATTNKIT_HAVE_OPENCV
#include <opencv2/core/version.hpp>
#endif

#include <iostream>

namespace attnkit::app {

std::string version_line() {
  const BuildInfo info = build_info();
#ifdef ATTNKIT_HAVE_OPENCV
  const std::string opencv = CV_VERSION;
#else
  const std::string opencv = "absent (no classify/visualize/stream)";
#endif
  std::string line = "attnkit " + info.version + " (LibTorch " + info.torch_version + ", OpenCV " + opencv +
                     ", CPU kernels: " + info.cpu_capability +
                     ", CUDA kernels: " + (info.cuda_kernels ? "compiled in" : "not compiled");
  if (info.cuda_kernels) line += std::string(", CUDA device: ") + (info.cuda_available ? "available" : "none");
  line += ")\nImplementation::Auto runs attnkit's fused kernels (verified on that device, else the composite path):";
  for (auto device : {c10::DeviceType::CPU, c10::DeviceType::CUDA}) {
    std::string ops;
    for (const auto& e : kernel_verification())
      if (e.device == device && e.verified) ops += (ops.empty() ? "" : ", ") + std::string(to_string(e.op));
    line += std::string(device == c10::DeviceType::CPU ? " cpu: " : "; cuda: ") + (ops.empty() ? "none" : ops);
  }
  return line;
}

}  // namespace attnkit::app

int main(int argc, char** argv) {
  using namespace attnkit::app;
  // Ctrl-C or a kill mid-write leaves no temporary file behind.
  attnkit::common::remove_unfinished_files_on_termination();
  attnkit::common::keep_freed_memory_for_reuse();
  CLI::App cli{"attnkit: attention blocks for CNNs on LibTorch.\n"
               "Classify images, train and evaluate models, draw attention heatmaps, benchmark the kernels.",
               "attnkit"};
  cli.set_version_flag("--version", version_line(), "Print the version, the LibTorch/OpenCV versions and CUDA support, then exit");
  cli.require_subcommand(0, 1);
  cli.footer("Run 'attnkit COMMAND --help' for the options of a command.");
  std::vector<Runner> commands = {add_blocks_command(cli), add_train_command(cli), add_eval_command(cli),
                                   add_bench_command(cli), add_import_command(cli), add_calibrate_command(cli)};
#ifdef ATTNKIT_HAVE_OPENCV
  commands.push_back(add_classify_command(cli));
  commands.push_back(add_visualize_command(cli));
  commands.push_back(add_stream_command(cli));
#endif

  try {
    cli.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return cli.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return cli.exit(e);
  } catch (const CLI::CallForVersion& e) {
    return cli.exit(e);
  } catch (const CLI::ParseError& e) {
    // A usage error is one line and a hint, never the whole help text.
    std::string message = e.what();
    const auto extras = cli.remaining();
    if (dynamic_cast<const CLI::ExtrasError*>(&e) && cli.get_subcommands().empty() && !extras.empty()) {
      message = "unknown command \"" + extras.front() + "\"; commands:";
      for (const auto* sub : cli.get_subcommands({})) message += std::string(message.back() == ':' ? " " : ", ") + sub->get_name();
    }
    std::cerr << "attnkit: " << message << "\nRun 'attnkit --help' (or 'attnkit COMMAND --help') for the options.\n";
    return kUsage;
  }
  if (argc == 1 || cli.get_subcommands().empty()) {
    std::cout << cli.help();
    return argc == 1 ? kOk : kUsage;
  }
  try {
    for (const auto& run : commands) {
      const int rc = run();
      if (rc >= 0) return rc;
    }
  } catch (const c10::Error& e) {
    std::cerr << "attnkit: " << e.what_without_backtrace() << "\n";
    return kFailure;
  } catch (const std::exception& e) {
    std::cerr << "attnkit: " << e.what() << "\n";
    return kFailure;
  }
  return kOk;
}
