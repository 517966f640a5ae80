// What every fuzz target in this folder shares: how it reports an input that the code under test
// refused (an expected outcome, recorded for the replay), and the temporary file a target writes
// the input to when the function it fuzzes only takes a path.
//
// A target catches exactly the error type its function documents (c10::Error for the core
// library's readers, std::runtime_error for the apps' readers) and calls rejected(); everything
// else — a crash, an AddressSanitizer report, an exception of another type, a broken invariant
// (fail()) — escapes the target, so libFuzzer and the replay (replay_main.cpp) report it.
#pragma once

#include <ftw.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>

namespace attnkit::fuzz {

/// The outcome of the last input: accepted (the function returned normally) or rejected (it threw
/// its documented error, whose message is kept). The replay checks these against what a folder of
/// inputs must give.
struct Outcome {
  bool rejected = false;
  std::string message;
};
inline Outcome& last_outcome() {
  static Outcome outcome;
  return outcome;
}
inline int accepted() {
  last_outcome() = Outcome{};
  return 0;
}
inline int rejected(const std::string& message) {
  last_outcome() = Outcome{true, message};
  return 0;
}

/// A broken invariant of the code under test: print it and abort (libFuzzer saves the input).
[[noreturn]] inline void fail(const std::string& what) {
  std::fprintf(stderr, "fuzz target: %s\n", what.c_str());
  std::abort();
}

/// Removes the folder `path` and everything under it, without following links. For exit handlers:
/// POSIX calls rather than std::filesystem, whose symbols LibTorch's library also exports, and whose
/// copy there crashes when called while the program's static objects are being destroyed.
inline void remove_tree(const char* path) {
  ::nftw(path, [](const char* p, const struct stat*, int, struct FTW*) { return ::remove(p); }, 16, FTW_DEPTH | FTW_PHYS);
}

/// The folder the targets work in: /tmp/attnkit-fuzz, made once and reused.
inline std::filesystem::path work_dir() {
  static const std::filesystem::path dir = [] {
    std::filesystem::path d = std::filesystem::temp_directory_path() / "attnkit-fuzz";
    std::filesystem::create_directories(d);
    return d;
  }();
  return dir;
}

/// `data` written to this process's file `work_dir()/NAME-PID` (rewritten for every input, removed
/// at exit); returns its path.
inline std::string write_input(const uint8_t* data, size_t size, const std::string& name) {
  static const std::string path = [&] {
    std::string p = (work_dir() / (name + "-" + std::to_string(::getpid()))).string();
    static std::string for_atexit = p;
    std::atexit([] { std::remove(for_atexit.c_str()); });
    return p;
  }();
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(data), static_cast<std::streamsize>(size));
  out.close();
  if (!out) fail("cannot write the input to " + path);
  return path;
}

}  // namespace attnkit::fuzz
