#include "image_folder.h"

#include "image_list.h"
#include "preprocess.h"

#include "common/csv.h"
#include "common/files.h"

#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>

#include <algorithm>
#include <filesystem>
#include <iostream>
#include <map>
#include <sstream>
#include <stdexcept>

namespace attnkit::vision {
namespace fs = std::filesystem;

namespace {

struct Item {
  std::string path;
  int64_t label;
};

/// Decodes every item into one uint8 [N, C, S, S] tensor; unreadable files are skipped and reported.
common::Dataset decode(const std::vector<Item>& items, const std::vector<std::string>& classes, const common::DataSpec& spec) {
  int64_t channels = spec.channels, size = spec.image_size;
  std::vector<std::string> skipped;
  std::vector<uint8_t> pixels;
  std::vector<int64_t> labels;
  for (const auto& item : items) {
    // The one decoder of the apps (also classify's and visualize's): 16-bit and float images become
    // 8-bit, grey and BGRA become BGR; a grey file converted back to grey is exact.
    cv::Mat img;
    int file_channels = 0;
    try {
      img = read_image(item.path, &file_channels);
    } catch (const std::exception&) {
      skipped.push_back(item.path);
      continue;
    }
    if (channels == 0) channels = file_channels == 1 ? 1 : 3;
    if (size == 0) size = img.rows;
    cv::Mat converted;
    cv::cvtColor(img, converted, channels == 1 ? cv::COLOR_BGR2GRAY : cv::COLOR_BGR2RGB);
    if (converted.rows != size || converted.cols != size) {
      const bool shrink = converted.rows > size || converted.cols > size;
      cv::resize(converted, converted, cv::Size(static_cast<int>(size), static_cast<int>(size)), 0, 0,
                 shrink ? cv::INTER_AREA : cv::INTER_LINEAR);
    }
    if (!converted.isContinuous()) converted = converted.clone();
    // HWC → CHW as we append.
    const size_t base = pixels.size();
    pixels.resize(base + static_cast<size_t>(channels * size * size));
    const auto* src = converted.ptr<uint8_t>();
    for (int64_t c = 0; c < channels; ++c)
      for (int64_t i = 0; i < size * size; ++i) pixels[base + c * size * size + i] = src[i * channels + c];
    labels.push_back(item.label);
  }
  if (!skipped.empty()) {
    std::ostringstream msg;
    msg << "attnkit: warning: skipped " << skipped.size() << " unreadable image(s) of " << items.size() << " in " << spec.path << ": ";
    for (size_t i = 0; i < std::min<size_t>(skipped.size(), 5); ++i) msg << (i ? ", " : "") << skipped[i];
    if (skipped.size() > 5) msg << ", ...";
    std::cerr << msg.str() << "\n";
  }
  if (labels.empty()) throw std::runtime_error(spec.path + ": no readable image (" + std::to_string(items.size()) + " file(s) tried)");
  const auto n = static_cast<int64_t>(labels.size());
  return common::Dataset{torch::from_blob(pixels.data(), {n, channels, size, size}, torch::kUInt8).clone(),
                        torch::tensor(labels, torch::kLong), classes};
}

}  // namespace

common::Dataset read_image_folder(const common::DataSpec& spec) {
  std::vector<std::string> classes;
  for (const auto& entry : fs::directory_iterator(spec.path)) {
    if (entry.is_directory()) classes.push_back(entry.path().filename().string());
  }
  std::sort(classes.begin(), classes.end());
  if (classes.empty()) throw std::runtime_error(spec.path + ": no class folders (an image folder has one sub-folder per class)");
  if (!spec.known_classes.empty()) {
    for (const auto& c : classes) {
      if (std::find(spec.known_classes.begin(), spec.known_classes.end(), c) == spec.known_classes.end()) {
        throw std::runtime_error(spec.path + ": class folder '" + c + "' is not one of the model's classes");
      }
    }
    classes = spec.known_classes;
  }
  std::vector<Item> items;
  for (size_t k = 0; k < classes.size(); ++k) {
    const fs::path dir = fs::path(spec.path) / classes[k];
    if (!fs::is_directory(dir)) continue;
    std::vector<std::string> files;
    for (const auto& entry : fs::recursive_directory_iterator(dir)) {
      if (entry.is_regular_file() && is_image_name(entry.path())) files.push_back(entry.path().string());
    }
    std::sort(files.begin(), files.end());
    for (auto& f : files) items.push_back({f, static_cast<int64_t>(k)});
  }
  if (items.empty()) throw std::runtime_error(spec.path + ": no image files in the class folders");
  return decode(items, classes, spec);
}

common::Dataset read_image_csv(const common::DataSpec& spec) {
  std::istringstream in(common::read_file(spec.path));
  const fs::path base = fs::path(spec.path).parent_path();
  std::vector<std::pair<std::string, std::string>> rows;
  std::string line;
  int64_t line_no = 0;
  while (std::getline(in, line)) {
    ++line_no;
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    const auto f = common::split_csv_line(line);
    if (f.size() != 2) {
      throw std::runtime_error(spec.path + ":" + std::to_string(line_no) + ": " + std::to_string(f.size()) + " fields, expected path,label");
    }
    if (rows.empty() && (f[0] == "path" || f[0] == "file" || f[0] == "filename") && !common::is_integer(f[1])) continue;
    const fs::path p(f[0]);
    rows.emplace_back(p.is_absolute() ? p.string() : (base / p).string(), f[1]);
  }
  if (rows.empty()) throw std::runtime_error(spec.path + ": no path,label rows");
  // Labels: all integers → indices (names from --classes or the indices themselves); otherwise
  // class names, in sorted order unless the model's order is given.
  const bool numeric = std::all_of(rows.begin(), rows.end(), [](const auto& r) { return common::is_integer(r.second); });
  std::vector<std::string> classes = spec.known_classes;
  if (classes.empty() && !spec.class_names.empty()) classes = common::parse_class_names(spec.class_names);
  std::vector<Item> items;
  if (numeric) {
    int64_t max_label = 0;
    for (const auto& r : rows) max_label = std::max<int64_t>(max_label, std::stoll(r.second));
    if (classes.empty()) {
      for (int64_t k = 0; k <= max_label; ++k) classes.push_back(std::to_string(k));
    }
    for (const auto& r : rows) {
      const int64_t label = std::stoll(r.second);
      if (label < 0 || label >= static_cast<int64_t>(classes.size())) {
        throw std::runtime_error(spec.path + ": label " + r.second + " of " + r.first + " is outside [0, " +
                                 std::to_string(classes.size()) + ")");
      }
      items.push_back({r.first, label});
    }
  } else {
    if (classes.empty()) {
      for (const auto& r : rows) classes.push_back(r.second);
      std::sort(classes.begin(), classes.end());
      classes.erase(std::unique(classes.begin(), classes.end()), classes.end());
    }
    for (const auto& r : rows) {
      const auto it = std::find(classes.begin(), classes.end(), r.second);
      if (it == classes.end()) throw std::runtime_error(spec.path + ": class '" + r.second + "' of " + r.first + " is unknown");
      items.push_back({r.first, it - classes.begin()});
    }
  }
  return decode(items, classes, spec);
}

common::ImageReaders opencv_image_readers() { return {read_image_folder, read_image_csv}; }

}  // namespace attnkit::vision
