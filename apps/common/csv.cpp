#include "csv.h"

namespace attnkit::common {

std::vector<std::string> split_csv_line(const std::string& line) {
  std::vector<std::string> fields;
  std::string field;
  bool quoted = false, was_quoted = false;
  auto finish = [&] {
    if (!was_quoted) {
      const auto b = field.find_first_not_of(" \t");
      const auto e = field.find_last_not_of(" \t\r");
      field = b == std::string::npos ? "" : field.substr(b, e - b + 1);
    }
    fields.push_back(field);
    field.clear();
    was_quoted = false;
  };
  for (size_t i = 0; i < line.size(); ++i) {
    const char c = line[i];
    if (quoted) {
      if (c == '"' && i + 1 < line.size() && line[i + 1] == '"') {
        field += '"';
        ++i;
      } else if (c == '"') {
        quoted = false;
      } else {
        field += c;
      }
    } else if (c == '"') {
      quoted = was_quoted = true;
      field.clear();
    } else if (c == ',') {
      finish();
    } else if (!(was_quoted && (c == ' ' || c == '\t' || c == '\r'))) {
      field += c;
    }
  }
  finish();
  return fields;
}

bool is_integer(const std::string& text) {
  size_t i = (!text.empty() && (text[0] == '-' || text[0] == '+')) ? 1 : 0;
  if (i == text.size()) return false;
  for (; i < text.size(); ++i) {
    if (text[i] < '0' || text[i] > '9') return false;
  }
  return true;
}

}  // namespace attnkit::common
