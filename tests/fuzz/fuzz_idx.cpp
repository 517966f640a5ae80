// Fuzz target: attnkit::train::read_idx (apps/train/idx.h), the reader of (gzipped) IDX files of
// MNIST-style data sets. Its documented error is std::runtime_error. An accepted file's tensor
// holds exactly what its header declares.
#include "train/idx.h"

#include "fuzz_target.h"

#include <stdexcept>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string path = attnkit::fuzz::write_input(data, size, "idx");
  try {
    const torch::Tensor t = attnkit::train::read_idx(path);
    if (t.dim() < 1 || t.dim() > 4) attnkit::fuzz::fail("read_idx accepted a tensor of " + std::to_string(t.dim()) + " dimensions");
  } catch (const std::runtime_error& e) {
    return attnkit::fuzz::rejected(e.what());
  }
  return attnkit::fuzz::accepted();
}
