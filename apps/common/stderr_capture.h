// What libraries print on stderr by themselves (GLib and GStreamer warnings, which no API of
// OpenCV's silences), caught while one call runs so that the program's error stays one line.
#pragma once

#include <cstdio>
#include <string>

namespace attnkit::common {

/// From construction to finish() (or destruction), whatever anything in the process writes to
/// file descriptor 2 goes to a hidden temporary file instead. Use it around one library call
/// (opening a video source), not around work that reports progress. If stderr cannot be
/// redirected, nothing is captured and the messages appear as before.
class StderrCapture {
 public:
  StderrCapture();
  ~StderrCapture();
  StderrCapture(const StderrCapture&) = delete;
  StderrCapture& operator=(const StderrCapture&) = delete;

  /// Restores stderr and returns what was written to it meanwhile (at most 64 KiB).
  std::string finish();

 private:
  int saved_stderr_ = -1;
  std::FILE* sink_ = nullptr;
};

/// One line for an error message out of captured library messages: the first line that says
/// something, without GLib's "(prog:PID): " prefix and timestamp or OpenCV's "[ WARN:0@0.3] "
/// prefix, followed by "(N more messages)" when there were more. Empty when `text` holds none.
std::string one_line_summary(const std::string& text);

}  // namespace attnkit::common
