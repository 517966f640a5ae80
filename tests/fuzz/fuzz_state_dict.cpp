// Fuzz target: attnkit::read_state_dict (backbones/state_dict_import.h), the importer's reader of
// torch.save zip-pickles (.pth/.pt) and .safetensors files, followed by the key mapping the import
// does next. Its documented error is c10::Error.
#include <attnkit/backbones/state_dict_import.h>

#include "fuzz_target.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string path = attnkit::fuzz::write_input(data, size, "state_dict");
  try {
    const attnkit::StateDict state = attnkit::read_state_dict(path);
    attnkit::map_state_dict(state, "auto");
  } catch (const c10::Error& e) {
    return attnkit::fuzz::rejected(e.what_without_backtrace());
  }
  return attnkit::fuzz::accepted();
}
