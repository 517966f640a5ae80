// See ../README.md: gloo::Context is held through std::shared_ptr; the one member named by an inline
// function of ProcessGroupGloo.hpp is declared, never called from attnkit.
#pragma once

#include <chrono>

namespace gloo {
class Context {
 public:
  void setTimeout(std::chrono::milliseconds timeout);
};
}  // namespace gloo
