// Fuzz target: attnkit::parse_safetensors (backbones/state_dict_import.h) on the input's bytes.
// Its documented error is c10::Error. An accepted file's tensors must tile its data exactly, as
// the parser promises.
#include <attnkit/backbones/state_dict_import.h>

#include "fuzz_target.h"

#include <vector>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::vector<char> bytes(data, data + size);
  try {
    const attnkit::StateDict state = attnkit::parse_safetensors(bytes, "fuzz input");
    // Accepted: 8 bytes of length, the header, then exactly the tensors' bytes.
    uint64_t header = 0;
    for (int i = 7; i >= 0; --i) header = (header << 8) | data[i];
    uint64_t total = 0;
    for (const auto& [name, t] : state) total += static_cast<uint64_t>(t.numel()) * t.element_size();
    if (8 + header + total != size)
      attnkit::fuzz::fail("parse_safetensors accepted a file whose tensors do not cover its data exactly");
  } catch (const c10::Error& e) {
    return attnkit::fuzz::rejected(e.what_without_backtrace());
  }
  return attnkit::fuzz::accepted();
}
