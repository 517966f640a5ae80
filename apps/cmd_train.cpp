// attnkit train: trains a backbone on IDX, ImageFolder or CSV data (in progress).
#include "commands.h"

namespace attnkit::app {

Runner add_train_command(CLI::App& cli) {
  auto* cmd = cli.add_subcommand("train", "Train a model (in progress)");
  return [cmd]() -> int { return cmd->parsed() ? kFailure : -1; };
}

}  // namespace attnkit::app
