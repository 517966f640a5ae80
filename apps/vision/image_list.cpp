#include "image_list.h"

#include "common/files.h"

#include <glob.h>

#include <algorithm>
#include <array>
#include <cctype>
#include <set>
#include <sstream>
#include <stdexcept>

namespace attnkit::vision {
namespace fs = std::filesystem;

bool is_image_name(const fs::path& path) {
  static const std::array<const char*, 11> exts = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff",
                                                   ".webp", ".pgm", ".ppm", ".pbm", ".pnm"};
  std::string e = path.extension().string();
  std::transform(e.begin(), e.end(), e.begin(), [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return std::find(exts.begin(), exts.end(), e) != exts.end();
}

namespace {

bool is_pattern(const std::string& s) { return s.find_first_of("*?[") != std::string::npos; }

/// Image files in `dir` (all levels when `recursive`), sorted.
std::vector<std::string> list_folder(const fs::path& dir, bool recursive) {
  std::vector<std::string> files;
  std::error_code ec;
  // The folder itself must open: skip_permission_denied below would turn an unreadable folder into
  // an empty one (and so a warning and success instead of an error).
  fs::directory_iterator probe(dir, ec);
  if (ec) throw std::runtime_error("cannot list the folder: " + ec.message());
  const auto keep = [&](const fs::directory_entry& entry) {
    std::error_code fec;
    if (entry.is_regular_file(fec) && is_image_name(entry.path())) files.push_back(entry.path().string());
  };
  if (recursive) {
    fs::recursive_directory_iterator it(dir, fs::directory_options::skip_permission_denied, ec), end;
    for (; !ec && it != end; it.increment(ec)) keep(*it);
  } else {
    fs::directory_iterator it(dir, fs::directory_options::skip_permission_denied, ec), end;
    for (; !ec && it != end; it.increment(ec)) keep(*it);
  }
  if (ec) throw std::runtime_error("cannot list the folder: " + ec.message());
  std::sort(files.begin(), files.end());
  return files;
}

/// Matches of a glob(3) pattern, sorted (glob sorts them); empty when nothing matches.
std::vector<std::string> glob_paths(const std::string& pattern) {
  glob_t g{};
  int flags = 0;
#ifdef GLOB_TILDE
  flags |= GLOB_TILDE;  // "~/pictures/*.png" quoted, so the shell did not expand the ~ either
#endif
  const int rc = ::glob(pattern.c_str(), flags, nullptr, &g);
  std::vector<std::string> out;
  if (rc == 0) out.assign(g.gl_pathv, g.gl_pathv + g.gl_pathc);
  ::globfree(&g);
  if (rc != 0 && rc != GLOB_NOMATCH) throw std::runtime_error(pattern + ": cannot expand the pattern (glob error " + std::to_string(rc) + ")");
  return out;
}

}  // namespace

ImageList expand_inputs(const std::vector<std::string>& inputs, const ImageListOptions& options) {
  ImageList list;
  std::set<std::string> seen;
  const auto add = [&](const std::string& file) {
    if (seen.insert(fs::path(file).lexically_normal().string()).second) list.files.push_back(file);
  };
  // A named path: a folder is expanded, anything else is a file. Returns whether it gave a file.
  const auto add_named = [&](const std::string& path) {
    std::error_code ec;
    if (!fs::is_directory(path, ec)) {
      add(path);
      return true;
    }
    // "photo.png" that is a folder is a mistake more often than a folder of images: say so (exit 1)
    // rather than classify what it holds or warn that it holds nothing.
    if (is_image_name(path)) {
      list.errors.emplace_back(path, "is a folder, not an image");
      return true;
    }
    std::vector<std::string> files;
    try {
      files = list_folder(path, options.recursive);
    } catch (const std::runtime_error& e) {
      list.errors.emplace_back(path, e.what());
      return true;  // reported as an error, not also as "no image files"
    }
    for (const auto& f : files) add(f);
    return !files.empty();
  };
  for (const auto& input : inputs) {
    std::error_code ec;
    if (is_pattern(input) && !fs::exists(input, ec)) {
      const auto matches = glob_paths(input);
      bool any = false;
      for (const auto& m : matches) any = add_named(m) || any;
      if (!any) list.warnings.push_back(input + (matches.empty() ? ": no file matches" : ": no image files"));
    } else if (!add_named(input)) {
      list.warnings.push_back(input + ": no image files" + (options.recursive ? "" : " (--recursive descends into subfolders)"));
    }
  }
  return list;
}

std::vector<std::string> read_list_file(const std::string& path) {
  // Read whole first: a FIFO or device given as the list is refused instead of blocking the program.
  constexpr size_t kMaxListBytes = size_t{1} << 30;
  const std::vector<char> bytes = common::read_regular_file(path, kMaxListBytes);
  std::istringstream in(std::string(bytes.begin(), bytes.end()));
  const fs::path base = fs::path(path).parent_path();
  std::vector<std::string> entries;
  for (std::string line; std::getline(in, line);) {
    const auto first = line.find_first_not_of(" \t\r");
    if (first == std::string::npos || line[first] == '#') continue;
    const auto last = line.find_last_not_of(" \t\r");
    const fs::path entry = line.substr(first, last - first + 1);
    entries.push_back(entry.is_absolute() || base.empty() ? entry.string() : (base / entry).string());
  }
  return entries;
}

}  // namespace attnkit::vision
