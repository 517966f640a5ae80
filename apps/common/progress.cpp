#include "progress.h"

#include <cstdio>
#include <iostream>
#include <sstream>

#include <unistd.h>

namespace attnkit::common {

std::string format_duration(double seconds) {
  if (!(seconds >= 0) || seconds > 1e7) return "?";
  const auto s = static_cast<int64_t>(seconds + 0.5);
  char buf[32];
  if (s >= 3600) {
    std::snprintf(buf, sizeof buf, "%lld:%02lld:%02lld", static_cast<long long>(s / 3600),
                  static_cast<long long>(s / 60 % 60), static_cast<long long>(s % 60));
  } else {
    std::snprintf(buf, sizeof buf, "%lld:%02lld", static_cast<long long>(s / 60), static_cast<long long>(s % 60));
  }
  return buf;
}

ProgressBar::ProgressBar(std::string title, int64_t total_steps, bool enabled)
    : title_(std::move(title)), total_(total_steps), enabled_(enabled), interactive_(enabled && ::isatty(2) == 1),
      start_(std::chrono::steady_clock::now()),
      // A terminal draws at once; a log's first line comes after a minute of work.
      last_draw_(interactive_ ? start_ - std::chrono::seconds(1) : start_) {}

namespace {
// How often a log (stderr not a terminal) gets a progress line.
constexpr std::chrono::seconds kLogInterval{60};
}  // namespace

bool ProgressBar::due() const {
  if (!enabled_) return false;
  const auto since = std::chrono::steady_clock::now() - last_draw_;
  return interactive_ ? since >= std::chrono::milliseconds(200) : since >= kLogInterval;
}

void ProgressBar::update(int64_t step, double loss, double acc, double images_per_s) {
  if (!due()) return;
  char detail[128];
  std::snprintf(detail, sizeof detail, "loss %.4f acc %.2f%% %.0f img/s", loss, 100 * acc, images_per_s);
  update(step, detail);
}

void ProgressBar::update(int64_t step, const std::string& detail) {
  if (!due()) return;
  last_draw_ = std::chrono::steady_clock::now();
  const double elapsed = std::chrono::duration<double>(last_draw_ - start_).count();
  const double eta = step > 0 ? elapsed / static_cast<double>(step) * static_cast<double>(total_ - step) : -1;
  constexpr int width = 24;
  const int filled = total_ > 0 ? static_cast<int>(width * step / total_) : 0;
  char line[384];
  if (interactive_) {
    std::snprintf(line, sizeof line, "\r%s [%s%s] %lld/%lld %s ETA %s\033[K", title_.c_str(), std::string(filled, '#').c_str(),
                  std::string(width - filled, '.').c_str(), static_cast<long long>(step), static_cast<long long>(total_),
                  detail.c_str(), format_duration(eta).c_str());
  } else {
    std::snprintf(line, sizeof line, "%s %lld/%lld %s ETA %s\n", title_.c_str(), static_cast<long long>(step),
                  static_cast<long long>(total_), detail.c_str(), format_duration(eta).c_str());
  }
  std::cerr << line << std::flush;
}

void ProgressBar::finish(const std::string& line) {
  if (!enabled_) return;
  if (interactive_) std::cerr << "\r\033[K";
  std::cerr << line << "\n" << std::flush;
}

}  // namespace attnkit::common
