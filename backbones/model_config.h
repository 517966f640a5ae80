// ModelConfig: a backbone's whole architecture as plain values, what build_model (registry.h)
// rebuilds and a checkpoint stores, and the closed sets it draws from (family, stem, shortcut) as
// enums with the names checkpoints spell them by.
#pragma once

#include <cstdint>
#include <ostream>
#include <string>
#include <vector>

namespace attnkit {

/// Which ResNet a configuration builds.
enum class ModelFamily {
  ResNet,       ///< "resnet": the ImageNet family (ResNet, 4 stages).
  CifarResNet,  ///< "cifar_resnet": the CIFAR family (CifarResNet, 3 stages).
};

/// The layers before the first stage.
enum class Stem {
  ImageNet,  ///< "imagenet": 7×7/2 conv + 3×3/2 max-pool, for 224 px inputs.
  Small,     ///< "small": 3×3/1 conv, no pool, for 28–64 px inputs (the CIFAR family's only stem).
};

/// A residual block's shortcut where its shape changes.
enum class Shortcut {
  A,  ///< "A": stride-subsampled identity padded with zero channels (He et al. 2016, CIFAR; no parameters).
  B,  ///< "B": 1×1 conv + BatchNorm (`downsample.0/1`, torchvision).
};

/// "resnet" or "cifar_resnet".
const char* to_string(ModelFamily family);
/// "imagenet" or "small".
const char* to_string(Stem stem);
/// "A" or "B".
const char* to_string(Shortcut shortcut);

/// Parse the names to_string gives; any other name is an error naming `field` and listing the
/// valid names (`stem must be "imagenet" or "small", got "tiny"`).
ModelFamily parse_model_family(const std::string& name, const std::string& field = "family");
Stem parse_stem(const std::string& name, const std::string& field = "stem");
Shortcut parse_shortcut(const std::string& name, const std::string& field = "shortcut");

inline std::ostream& operator<<(std::ostream& os, ModelFamily v) { return os << to_string(v); }
inline std::ostream& operator<<(std::ostream& os, Stem v) { return os << to_string(v); }
inline std::ostream& operator<<(std::ostream& os, Shortcut v) { return os << to_string(v); }

/// The depths of the ImageNet family: 18, 34, 50, 101, 152.
const std::vector<int64_t>& resnet_depths();
/// The CIFAR paper's depths, 20, 32, 44, 56, 110: the registry calls them "resnet<depth>" (the
/// ImageNet family never uses them); the CIFAR family builds any other 6n+2 as "cifar_resnet<depth>".
const std::vector<int64_t>& cifar_resnet_depths();

/// A backbone's full architecture, enough to rebuild it (see build_model in registry.h).
struct ModelConfig {
  ModelFamily family = ModelFamily::ResNet;
  int64_t depth = 50;
  /// Attention name per stage (4 for ResNet, 3 for CifarResNet); "" = none.
  std::vector<std::string> attention;
  int64_t num_classes = 1000;
  int64_t in_channels = 3;
  double width = 1.0;
  /// ResNet's stem; CifarResNet always uses its 3×3 stem (Small).
  Stem stem = Stem::ImageNet;
  /// Projection shortcuts (CifarResNet only; ResNet always uses B).
  Shortcut shortcut = Shortcut::B;
  /// Canonical registry name, e.g. "resnet50-cbam", "resnet20-se", or "resnet50-[,,,self]" when the
  /// stages differ.
  std::string name() const;
  bool operator==(const ModelConfig& other) const;
};

}  // namespace attnkit
