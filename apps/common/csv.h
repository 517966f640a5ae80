// CSV lines split into fields, for the pixel CSVs of train/ and the path,label CSVs of vision/.
#pragma once

#include <string>
#include <vector>

namespace attnkit::common {

/// The fields of one CSV line: commas separate, double quotes may enclose a field ("" is a quote),
/// surrounding spaces and a trailing '\r' are dropped.
std::vector<std::string> split_csv_line(const std::string& line);

/// True when `text` is a whole decimal integer (optional sign).
bool is_integer(const std::string& text);

}  // namespace attnkit::common
