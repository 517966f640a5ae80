#include "data_source.h"

#include "csv.h"
#include "idx.h"

#include "common/csv.h"
#include "common/files.h"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <stdexcept>

namespace attnkit::train {
namespace fs = std::filesystem;

namespace {

std::string lower(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return s;
}

std::vector<std::string> default_classes(const DataSpec& spec) {
  if (!spec.class_names.empty()) return parse_class_names(spec.class_names);
  if (!spec.known_classes.empty()) return spec.known_classes;
  return parse_class_names(lower(spec.path).find("fashion") != std::string::npos ? "fashion-mnist" : "mnist");
}

}  // namespace

std::string resolve_format(const DataSpec& spec) {
  static const std::vector<std::string> formats = {"auto", "idx", "folder", "pixel-csv", "image-csv"};
  if (std::find(formats.begin(), formats.end(), spec.format) == formats.end()) {
    throw std::runtime_error("data format '" + spec.format + "': expected auto, idx, folder, pixel-csv or image-csv");
  }
  std::error_code ec;
  if (!fs::exists(spec.path, ec)) throw std::runtime_error("data path " + spec.path + " does not exist");
  if (spec.format != "auto") return spec.format;
  if (fs::is_directory(spec.path, ec)) return is_idx_dir(spec.path) ? "idx" : "folder";
  // A file: a CSV whose first data row starts with a number and has more than two fields holds
  // pixels; "path,label" rows hold image paths.
  std::istringstream in(common::read_file(spec.path));
  std::string line;
  while (std::getline(in, line)) {
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    const auto fields = common::split_csv_line(line);
    if (fields.size() > 2 && common::is_integer(fields[0])) return "pixel-csv";
    if (fields.size() == 2 && !common::is_integer(fields[0])) {
      // "label,pixel0" headers are pixel CSVs with one pixel, improbable; a path is never an integer.
      if (lower(fields[0]) == "label") return "pixel-csv";
      if (lower(fields[0]) == "path" || lower(fields[0]) == "file" || lower(fields[0]) == "filename") continue;
      return "image-csv";
    }
    if (fields.size() > 2 && lower(fields[0]) == "label") continue;  // pixel CSV header
    break;
  }
  throw std::runtime_error(spec.path + ": cannot tell the data format (expected an IDX folder, an image folder, "
                           "a CSV of label,pixels or a CSV of path,label); pass --format");
}

Dataset load_dataset(const DataSpec& spec, const ImageReaders& readers) {
  const std::string format = resolve_format(spec);
  Dataset data;
  if (format == "idx") {
    data = read_idx_dir(spec.path, spec.split, default_classes(spec));
  } else if (format == "pixel-csv") {
    data = read_pixel_csv(spec.path, default_classes(spec), spec.channels > 0 ? spec.channels : 1, spec.image_size,
                          spec.image_size);
  } else {
    const auto& reader = format == "folder" ? readers.folder : readers.csv;
    if (!reader) {
      throw std::runtime_error(spec.path + ": reading " + (format == "folder" ? "an image folder" : "a CSV of image paths") +
                               " needs OpenCV, and this attnkit was built without it (use IDX or pixel-CSV data)");
    }
    data = reader(spec);
  }
  data.validate(spec.path);
  if (data.size() == 0) throw std::runtime_error(spec.path + ": no images");
  return data;
}

}  // namespace attnkit::train
