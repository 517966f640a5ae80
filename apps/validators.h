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

/// A finite number (no NaN, no infinity).
inline CLI::Validator finite_number() {
  return CLI::Validator(
      [](std::string& text) -> std::string {
        double v = 0;
        if (!detail::parse_number(text, v) || !std::isfinite(v)) return "must be a finite number, got " + text;
        return "";
      },
      "FINITE");
}

/// A finite number > 0.
inline CLI::Validator positive_number() {
  return CLI::Validator(
      [](std::string& text) -> std::string {
        double v = 0;
        if (!detail::parse_number(text, v) || !std::isfinite(v) || !(v > 0)) return "must be a positive number, got " + text;
        return "";
      },
      "POSITIVE");
}

/// A finite number >= 0.
inline CLI::Validator non_negative_number() {
  return CLI::Validator(
      [](std::string& text) -> std::string {
        double v = 0;
        if (!detail::parse_number(text, v) || !std::isfinite(v) || !(v >= 0))
          return "must be a number >= 0, got " + text;
        return "";
      },
      "NONNEGATIVE");
}

}  // namespace attnkit::app
