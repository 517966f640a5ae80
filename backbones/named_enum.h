// The names of a closed set's values (an enum class), and the one parser all such sets share: an
// unknown name is an error that names the field and lists the valid names, e.g.
//   stem must be "imagenet" or "small", got "tiny"
#pragma once

#include <c10/util/Exception.h>

#include <cstddef>
#include <string>

namespace attnkit::detail {

/// One value of an enum and the name it has in checkpoints and on the command line.
template <typename E>
struct EnumName {
  E value;
  const char* name;
};

/// The name of `value` in `names` ("?" for a value missing from the table).
template <typename E, size_t N>
const char* enum_name(E value, const EnumName<E> (&names)[N]) {
  for (const auto& n : names)
    if (n.value == value) return n.name;
  return "?";
}

/// The value called `text` in `names`; an error naming `field` and listing the names otherwise.
template <typename E, size_t N>
E parse_enum(const std::string& text, const EnumName<E> (&names)[N], const std::string& field) {
  for (const auto& n : names)
    if (text == n.name) return n.value;
  std::string valid;
  for (size_t i = 0; i < N; ++i)
    valid += std::string(i == 0 ? "" : i + 1 == N ? " or " : ", ") + "\"" + names[i].name + "\"";
  TORCH_CHECK(false, field, " must be ", valid, ", got \"", text, "\"");
}

}  // namespace attnkit::detail
