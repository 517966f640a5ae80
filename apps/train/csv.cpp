#include "csv.h"

#include "common/csv.h"
#include "common/files.h"

#include <cmath>
#include <sstream>
#include <stdexcept>

namespace attnkit::train {

Dataset read_pixel_csv(const std::string& path, const std::vector<std::string>& classes, int64_t channels,
                       int64_t height, int64_t width) {
  if (channels < 1) throw std::runtime_error("channels must be >= 1, got " + std::to_string(channels));
  std::istringstream in(common::read_file(path));
  std::string line;
  std::vector<uint8_t> pixels;
  std::vector<int64_t> labels;
  int64_t values = -1;
  int64_t line_no = 0;
  while (std::getline(in, line)) {
    ++line_no;
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    const auto fields = common::split_csv_line(line);
    if (labels.empty() && values < 0 && !common::is_integer(fields[0])) continue;  // header row
    const auto where = [&] { return path + ":" + std::to_string(line_no) + ": "; };
    if (values < 0) {
      values = static_cast<int64_t>(fields.size()) - 1;
      if (values < 1) throw std::runtime_error(where() + "expected label,pixel0,pixel1,...");
      if (height == 0 && width == 0) {
        const auto side = static_cast<int64_t>(std::llround(std::sqrt(static_cast<double>(values / channels))));
        if (side * side * channels != values) {
          throw std::runtime_error(where() + std::to_string(values) + " pixels per row is not a square image with " +
                                   std::to_string(channels) + " channel(s); give the image size");
        }
        height = width = side;
      } else if (channels * height * width != values) {
        throw std::runtime_error(where() + std::to_string(values) + " pixels per row, expected " +
                                 std::to_string(channels) + "x" + std::to_string(height) + "x" + std::to_string(width));
      }
    }
    if (static_cast<int64_t>(fields.size()) != values + 1) {
      throw std::runtime_error(where() + std::to_string(fields.size()) + " fields, expected " + std::to_string(values + 1));
    }
    if (!common::is_integer(fields[0])) throw std::runtime_error(where() + "label '" + fields[0] + "' is not an integer");
    const int64_t label = std::stoll(fields[0]);
    if (label < 0 || label >= static_cast<int64_t>(classes.size())) {
      throw std::runtime_error(where() + "label " + fields[0] + " is outside [0, " + std::to_string(classes.size()) + ")");
    }
    labels.push_back(label);
    for (size_t i = 1; i < fields.size(); ++i) {
      const auto& f = fields[i];
      if (!common::is_integer(f) || f.size() > 4 || std::stoi(f) < 0 || std::stoi(f) > 255) {
        throw std::runtime_error(where() + "pixel " + std::to_string(i - 1) + " = '" + f + "' is not an integer in [0, 255]");
      }
      pixels.push_back(static_cast<uint8_t>(std::stoi(f)));
    }
  }
  if (labels.empty()) throw std::runtime_error(path + ": no data rows");
  const auto n = static_cast<int64_t>(labels.size());
  Dataset data{torch::from_blob(pixels.data(), {n, channels, height, width}, torch::kUInt8).clone(),
               torch::tensor(labels, torch::kLong), classes};
  return data;
}

}  // namespace attnkit::train
