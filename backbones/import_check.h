// What attnkit import accepts: the checks that keep a weight file from silently producing another
// model than the one asked for (a file matching nothing writes a randomly initialised checkpoint; a
// renamed key leaves a tensor at its initialisation).
#pragma once

#include <attnkit/backbones/state_dict_import.h>

#include <string>

namespace attnkit {

/// True for the keys of attention blocks (a module named `attn`, e.g. "layer1.0.attn.fc1.weight"):
/// a plain ResNet's weights leave them at their initialisation, by design.
bool is_attention_key(const std::string& key);

/// What an import may leave unmatched (attnkit import's --allow-missing / --allow-unexpected).
struct ImportPolicy {
  bool allow_missing = false;     ///< target tensors outside the attention blocks may be missing
  bool allow_unexpected = false;  ///< the file may hold tensors the model has no place for
};

/// Refuses an import that would produce a model other than the one asked for: no tensor loaded at
/// all; target tensors missing outside the attention blocks; tensors of the file unused, each
/// unless `policy` allows it. Missing attention tensors are always allowed (they keep their
/// initialisation). `what` names the file in the message.
void check_import(const ImportReport& report, const ImportPolicy& policy, const std::string& what);

}  // namespace attnkit
