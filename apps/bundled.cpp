#include "bundled.h"

#include <cstdlib>
#include <filesystem>
#include <stdexcept>
#include <vector>

namespace attnkit::app {
namespace fs = std::filesystem;

namespace {

// Data folders to search, most specific first. ATTNKIT_INSTALL_DATADIR and ATTNKIT_SOURCE_DIR are
// compiled in by apps/CMakeLists.txt.
std::vector<fs::path> data_dirs() {
  std::vector<fs::path> dirs;
  if (const char* env = std::getenv("ATTNKIT_DATA_DIR"); env && *env) dirs.emplace_back(env);
  dirs.emplace_back(ATTNKIT_INSTALL_DATADIR);
  dirs.emplace_back(fs::path(ATTNKIT_SOURCE_DIR));
  return dirs;
}

std::string find_in_data_dirs(const fs::path& relative, bool directory) {
  std::string searched;
  for (const auto& dir : data_dirs()) {
    const fs::path candidate = dir / relative;
    std::error_code ec;
    if (directory ? fs::is_directory(candidate, ec) : fs::is_regular_file(candidate, ec)) return candidate.string();
    searched += (searched.empty() ? "" : ", ") + candidate.string();
  }
  throw std::runtime_error("bundled " + relative.string() + " not found (looked for " + searched +
                           "); pass --weights FILE or set ATTNKIT_DATA_DIR");
}

}  // namespace

std::string bundled_weights() { return find_in_data_dirs(fs::path("weights") / kBundledModelName, false); }

std::string bundled_samples_dir() { return find_in_data_dirs(fs::path("weights") / "samples", true); }

std::string weights_or_bundled(const std::string& weights) { return weights.empty() ? bundled_weights() : weights; }

}  // namespace attnkit::app
