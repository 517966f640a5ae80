// Importing PyTorch weights: state dicts written by torch.save and .safetensors files, with the key
// maps that turn torchvision, timm and the official CBAM code's names into attnkit's.
//
// Files read (read_state_dict):
//   - torch.save(...) in the zip format (PyTorch ≥ 1.6; the legacy pre-1.6 format is refused with a
//     message): either the state dict itself, or a training checkpoint dict holding it under
//     "state_dict", "model", "model_state_dict" or "state" (other entries such as "optimizer" or
//     "epoch" are ignored). Tensors saved on a GPU need a CUDA build to load.
//   - .safetensors (huggingface/safetensors): 8-byte little-endian header length, a JSON header
//     {name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {...}}, raw
//     little-endian data. Every offset and size is checked against the file.
//
// Key layouts (map_state_dict); the prefix "module." (DataParallel) is always dropped first:
//   "torchvision"   torchvision resnet18..152: attnkit's names already (no renaming).
//   "timm"          timm resnet*, seresnet*, ecaresnet*, cbam resnets with the plain stem: the block
//                   attention `layerX.Y.se.*` becomes `layerX.Y.attn.*`; inside CBAM
//                   `attn.spatial.conv.conv.*` → `attn.spatial.conv.*`, `attn.spatial.conv.bn.*` →
//                   `attn.spatial.bn.*`.
//   "cbam-official" github.com/Jongchan/attention-module ResNet+CBAM: `layerX.Y.cbam.ChannelGate.mlp.1/3.*`
//                   → `layerX.Y.attn.channel.fc1/fc2.*`, `cbam.SpatialGate.spatial.conv/bn.*` →
//                   `attn.spatial.conv/bn.*`.
//   "attnkit"       no renaming.
//   "auto"          "cbam-official" when a key contains ".cbam.ChannelGate.", "timm" when one contains
//                   ".se.", "torchvision" otherwise.
// The rules are one table (kKeyRules in state_dict_import.cpp), easy to extend.
//
// Loading (load_state_dict) matches names exactly. A tensor whose shape differs from the target's
// only by trailing 1s (a Linear weight [O, I] vs a 1×1 convolution weight [O, I, 1, 1]) is reshaped;
// any other shape difference is an error naming the key and both shapes. Missing keys (target
// entries the file lacks, e.g. the attention of ResNet-50+CBAM loaded from torchvision's ResNet-50)
// keep their current values and unexpected keys (file entries the model lacks) are ignored; both
// are reported by name, and `strict` turns either into an error.
#pragma once

#include <torch/nn/module.h>
#include <torch/types.h>

#include <map>
#include <string>
#include <vector>

namespace attnkit {

/// Tensors by name.
using StateDict = std::map<std::string, torch::Tensor>;

/// Reads the tensors of a torch.save file (zip format) or a .safetensors file (detected from the
/// content, not the extension). Errors name the file and what is wrong with it.
StateDict read_state_dict(const std::string& path);

/// Parses the bytes of a .safetensors file; `what` names the source in errors.
StateDict parse_safetensors(const std::vector<char>& bytes, const std::string& what = "safetensors data");

/// Writes `state` as a .safetensors file (contiguous CPU copies; dtypes F64 F32 F16 BF16 I64 I32 I16
/// I8 U8 BOOL), for exporting weights to Python.
void write_safetensors(const StateDict& state, const std::string& path);

/// Layouts accepted by map_state_dict (see the table at the top of this file).
const std::vector<std::string>& state_dict_layouts();

/// The layout "auto" resolves to for these keys.
std::string detect_layout(const StateDict& state);

/// Renames keys from `layout` to attnkit's names (and drops a leading "module.").
StateDict map_state_dict(const StateDict& state, const std::string& layout = "auto");

/// What load_state_dict did.
struct ImportReport {
  /// Target entries copied from the state dict.
  std::vector<std::string> loaded;
  /// Target parameters and buffers the state dict lacks (left as they were).
  std::vector<std::string> missing;
  /// State dict entries the target has no parameter or buffer for (ignored).
  std::vector<std::string> unexpected;
  /// One-paragraph summary naming missing and unexpected keys.
  std::string summary() const;
};

/// Copies `state` into `module`'s parameters and buffers by exact name (see the header comment).
/// Dtype and device follow the target. `strict`: missing or unexpected keys are an error.
ImportReport load_state_dict(torch::nn::Module& module, const StateDict& state, bool strict = false);

/// read_state_dict + map_state_dict(layout) + load_state_dict(strict).
ImportReport import_state_dict(torch::nn::Module& module, const std::string& path,
                               const std::string& layout = "auto", bool strict = false);

}  // namespace attnkit
