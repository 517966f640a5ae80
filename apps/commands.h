// Each subcommand of the attnkit program registers itself on the CLI11 app and returns the function
// that runs it once the command line is parsed.
#pragma once

#include <CLI/CLI.hpp>

#include <functional>
#include <string>

namespace attnkit::app {

/// Runs the subcommand if it was the one parsed and returns its exit code; returns -1 otherwise.
using Runner = std::function<int()>;

/// Exit codes shared by every subcommand.
enum ExitCode : int { kOk = 0, kFailure = 1, kUsage = 2 };

// One function per subcommand file: adds the subcommand and its options to `cli`.
Runner add_blocks_command(CLI::App& cli);
Runner add_train_command(CLI::App& cli);
Runner add_eval_command(CLI::App& cli);
Runner add_bench_command(CLI::App& cli);
Runner add_import_command(CLI::App& cli);
Runner add_calibrate_command(CLI::App& cli);
// Only in builds with OpenCV (ATTNKIT_HAVE_OPENCV).
#ifdef ATTNKIT_HAVE_OPENCV
Runner add_classify_command(CLI::App& cli);
Runner add_visualize_command(CLI::App& cli);
Runner add_stream_command(CLI::App& cli);
#endif

/// One-line build description: attnkit, LibTorch and OpenCV versions, CUDA kernels compiled in.
std::string version_line();

}  // namespace attnkit::app
