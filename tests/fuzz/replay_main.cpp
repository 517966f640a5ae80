// main() of the fuzz targets in the normal build (no libFuzzer): runs the target over every file
// under the given paths, the way `TARGET -runs=0 DIR...` does under libFuzzer, and checks what
// each file must give.
//
//   fuzz_TARGET [-v] [--reject] PATH...     (a folder stands for every file under it, sorted)
//
// A file named valid-* must be accepted; every file after --reject must be rejected with the
// target's documented error (the regression inputs); other files may give either. A crash or an
// exception of another type ends the run as it would end the program. Exit code 0 when every file
// gave what it must, else 1 (each offending file is named).
#include "fuzz_target.h"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <iterator>
#include <string>
#include <vector>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size);

namespace fs = std::filesystem;

int main(int argc, char** argv) {
  bool verbose = false, must_reject = false;
  int files = 0, rejected = 0, wrong = 0;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "-v") {
      verbose = true;
      continue;
    }
    if (arg == "--reject") {
      must_reject = true;
      continue;
    }
    std::vector<fs::path> paths;
    if (fs::is_directory(arg)) {
      for (const auto& e : fs::recursive_directory_iterator(arg))
        if (e.is_regular_file()) paths.push_back(e.path());
      std::sort(paths.begin(), paths.end());
    } else if (fs::is_regular_file(arg)) {
      paths.push_back(arg);
    } else {
      std::cerr << "replay: no such file or folder: " << arg << "\n";
      return 1;
    }
    for (const auto& path : paths) {
      std::ifstream in(path, std::ios::binary);
      const std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
      LLVMFuzzerTestOneInput(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size());
      const attnkit::fuzz::Outcome& out = attnkit::fuzz::last_outcome();
      ++files;
      rejected += out.rejected;
      const bool must_accept = path.filename().string().rfind("valid-", 0) == 0;
      const char* problem = must_accept && out.rejected    ? "must be accepted, was rejected"
                            : must_reject && !out.rejected ? "must be rejected, was accepted"
                                                           : nullptr;
      if (problem) ++wrong;
      if (problem || verbose) {
        std::string msg = out.message.substr(0, out.message.find('\n'));
        std::cout << (problem ? "WRONG " : "") << path.string() << ": " << (problem ? problem : out.rejected ? "rejected" : "accepted")
                  << (out.rejected ? " (" + msg + ")" : "") << "\n";
      }
    }
  }
  std::cout << "replay: " << files << " files, " << files - rejected << " accepted, " << rejected << " rejected, " << wrong
            << " wrong\n";
  return wrong == 0 && files > 0 ? 0 : 1;
}
