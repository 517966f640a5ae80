// Option validators for the commands: CLI11's PositiveNumber / NonNegativeNumber print the double
// range in full (a 310-digit bound) and Range lets NaN through. These say what was wrong in one line.
#pragma once

#include <CLI/CLI.hpp>

#include <cmath>
#include <string>

namespace attnkit::app {

namespace detail {
/// The option's value as a number; false where it is not one.
inline bool parse_number(const std::string& text, double& value) {
  try {
    size_t used = 0;
    value = std::stod(text, &used);
    return used == text.size();
  } catch (const std::exception&) {
    return false;
  }
}
}  // namespace detail

/// A validator named `name` that accepts finite numbers for which `ok` holds and otherwise says
/// "<what>, got <text>".
template <typename Predicate>
CLI::Validator number_validator(const char* name, const char* what, Predicate ok) {
  return CLI::Validator(
      [what, ok](std::string& text) -> std::string {
        double v = 0;
        if (!detail::parse_number(text, v) || !std::isfinite(v) || !ok(v)) return std::string(what) + ", got " + text;
        return "";
      },
      name);
}

/// A finite number (no NaN, no infinity).
inline CLI::Validator finite_number() {
  return number_validator("FINITE", "must be a finite number", [](double) { return true; });
}

/// A finite number > 0.
inline CLI::Validator positive_number() {
  return number_validator("POSITIVE", "must be a positive number", [](double v) { return v > 0; });
}

/// A finite number >= 0.
inline CLI::Validator non_negative_number() {
  return number_validator("NONNEGATIVE", "must be a number >= 0", [](double v) { return v >= 0; });
}

}  // namespace attnkit::app
