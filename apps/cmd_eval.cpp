// attnkit eval: accuracy, per-class accuracy and confusion matrix of a checkpoint (in progress).
#include "commands.h"

namespace attnkit::app {

Runner add_eval_command(CLI::App& cli) {
  auto* cmd = cli.add_subcommand("eval", "Evaluate a checkpoint (in progress)");
  return [cmd]() -> int { return cmd->parsed() ? kFailure : -1; };
}

}  // namespace attnkit::app
