// Fuzz target: attnkit::read_checkpoint (backbones/checkpoint.h), the reader of .attnkit files —
// zip archive, pickle, tensor extents, checksum, config JSON. Its documented error is c10::Error.
#include <attnkit/backbones/checkpoint.h>

#include "fuzz_target.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string path = attnkit::fuzz::write_input(data, size, "checkpoint");
  try {
    const attnkit::Checkpoint ck = attnkit::read_checkpoint(path);
  } catch (const c10::Error& e) {
    return attnkit::fuzz::rejected(e.what_without_backtrace());
  }
  return attnkit::fuzz::accepted();
}
