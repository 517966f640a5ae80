// Progress on stderr (per epoch of training, over the files of classify): a redrawn bar (loss,
// accuracy, images/s, ETA) when stderr is a terminal; otherwise (a log file, nohup) the same text as a
// plain line once a minute, so a long run's log shows it is alive and when it will end, and a short
// run's log holds only its summary lines.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>

namespace attnkit::common {

class ProgressBar {
 public:
  /// `enabled` = false prints nothing at all (quiet runs, tests).
  ProgressBar(std::string title, int64_t total_steps, bool enabled);
  /// True when update() would print now (≥ 0.2 s since the last draw on a terminal, ≥ 60 s elsewhere):
  /// lets the caller skip synchronising device values it only needs for display.
  bool due() const;
  /// Redraws the bar with the training numbers: "loss 0.1234 acc 95.00% 812 img/s".
  void update(int64_t step, double loss, double acc, double images_per_s);
  /// Redraws the bar with `detail` (any short text) between the count and the ETA.
  void update(int64_t step, const std::string& detail);
  /// Clears the bar and prints `line` (with a newline).
  void finish(const std::string& line);
  bool interactive() const { return interactive_; }

 private:
  std::string title_;
  int64_t total_;
  bool enabled_, interactive_;
  std::chrono::steady_clock::time_point start_, last_draw_;
};

/// "1:23" / "1:02:03" for a number of seconds.
std::string format_duration(double seconds);

}  // namespace attnkit::common
