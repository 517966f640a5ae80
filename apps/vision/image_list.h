// Which image files a command works on: the PATH arguments of `attnkit classify` (files, folders,
// glob patterns) and list files (one path per line). Plain filesystem work, no decoding: this file
// needs neither OpenCV nor LibTorch, so it is tested on its own.
#pragma once

#include <filesystem>
#include <string>
#include <utility>
#include <vector>

namespace attnkit::vision {

/// True when the file name ends in an image extension OpenCV decodes (.png, .jpg, .jpeg, .bmp, .tif,
/// .tiff, .webp, .pgm, .ppm, .pbm, .pnm; any letter case).
bool is_image_name(const std::filesystem::path& path);

struct ImageListOptions {
  /// Descend into the subfolders of folder arguments.
  bool recursive = false;
};

/// The expansion of some inputs, in order, without duplicates.
struct ImageList {
  /// Files to process. A named file that does not exist is kept, so that the caller reports it.
  std::vector<std::string> files;
  /// One line per input that gave nothing: "PATTERN: no file matches", "DIR: no image files".
  std::vector<std::string> warnings;
  /// Inputs that could not be expanded (a folder that cannot be listed): the path and why. The
  /// caller reports each as a failed input and goes on with the files.
  std::vector<std::pair<std::string, std::string>> errors;
};

/// Expands each input in turn:
///  - an existing folder gives the image files directly inside it (all levels with `recursive`),
///    sorted by path, hidden files included, other files skipped;
///  - a glob pattern (*, ? or [ and no file of that exact name) gives what glob(3) matches, sorted,
///    each match then treated as if it had been named (files kept, folders expanded), the way the
///    shell would have expanded it;
///  - anything else is a file, kept whatever its extension (even when it does not exist).
/// A path seen before (same lexically normal form) is dropped. A folder that cannot be listed goes
/// to `errors`; the other inputs are still expanded.
ImageList expand_inputs(const std::vector<std::string>& inputs, const ImageListOptions& options = {});

/// The entries of a list file, one per line: blank lines and lines starting with '#' are skipped,
/// surrounding spaces and '\r' dropped, relative paths taken relative to the list file's folder.
/// Entries may be files, folders or patterns (expand them with expand_inputs). Throws
/// std::runtime_error naming the file when it cannot be read.
std::vector<std::string> read_list_file(const std::string& path);

}  // namespace attnkit::vision
