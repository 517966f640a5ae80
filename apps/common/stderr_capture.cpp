#include "stderr_capture.h"

#include <regex>
#include <sstream>
#include <unistd.h>
#include <vector>

namespace attnkit::common {

StderrCapture::StderrCapture() {
  std::fflush(stderr);
  sink_ = std::tmpfile();
  if (!sink_) return;
  saved_stderr_ = ::dup(STDERR_FILENO);
  if (saved_stderr_ < 0 || ::dup2(::fileno(sink_), STDERR_FILENO) < 0) {
    if (saved_stderr_ >= 0) ::close(saved_stderr_);
    saved_stderr_ = -1;
    std::fclose(sink_);
    sink_ = nullptr;
  }
}

StderrCapture::~StderrCapture() { finish(); }

std::string StderrCapture::finish() {
  if (!sink_) return "";
  std::fflush(stderr);
  ::dup2(saved_stderr_, STDERR_FILENO);
  ::close(saved_stderr_);
  saved_stderr_ = -1;
  std::string text(64 * 1024, '\0');
  std::rewind(sink_);
  text.resize(std::fread(text.data(), 1, text.size(), sink_));
  std::fclose(sink_);
  sink_ = nullptr;
  return text;
}

std::string one_line_summary(const std::string& text) {
  // "(attnkit:123): GStreamer-CRITICAL **: 10:55:57.235: message" → "GStreamer-CRITICAL: message";
  // "[ WARN:0@0.340] global ./modules/.../cap_gstreamer.cpp (1226) open OpenCV | GStreamer warning: m" → "m".
  static const std::regex glib(R"(^\([^)]*:\d+\): ([\w-]+) \*\*: (?:[\d:.]+: )?(.*)$)");
  static const std::regex opencv(R"(^\[ ?\w+:\d+@[\d.]+\] .*? \| (?:GStreamer warning: )?(.*)$)");
  std::vector<std::string> messages;
  std::istringstream lines(text);
  for (std::string line; std::getline(lines, line);) {
    std::smatch m;
    if (std::regex_match(line, m, glib)) line = m[1].str() + ": " + m[2].str();
    else if (std::regex_match(line, m, opencv)) line = m[1].str();
    if (line.find_first_not_of(" \t\r") != std::string::npos) messages.push_back(line);
  }
  if (messages.empty()) return "";
  std::string out = messages.front();
  const size_t more = messages.size() - 1;
  if (more > 0) out += " (" + std::to_string(more) + (more == 1 ? " more message)" : " more messages)");
  return out;
}

}  // namespace attnkit::common
