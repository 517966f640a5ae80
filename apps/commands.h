// Each subcommand of the attnkit program registers itself on the CLI11 app and returns the function
// that runs it once the command line is parsed.
#pragma once

#include <CLI/CLI.hpp>

#include <functional>
#include <string>

namespace attnkit::app {

using Runner = std::function<int()>;

/// Exit codes shared by every subcommand.
enum ExitCode : int { kOk = 0, kFailure = 1, kUsage = 2 };

/// One-line build description: attnkit, LibTorch and OpenCV versions, CUDA kernels compiled in.
std::string version_line();

}  // namespace attnkit::app
