// Backbones by name: "resnet50-cbam", "resnet18-se", "resnet20-eca", "resnet50" (no attention).
//
// Grammar: <arch><depth>[-<attention>], where
//   resnet18, resnet34, resnet50, resnet101, resnet152   ImageNet ResNet (ResNet)
//   resnet20, resnet32, resnet44, resnet56, resnet110    CIFAR ResNet (CifarResNet)
//   cifar_resnet<6n+2>                                   CIFAR ResNet of any depth
// and <attention> is a name make_attention() accepts (attention_names()), used in every block, or
// a bracketed list with one name per stage, e.g. "resnet50-[,,,self]" (BoTNet-like).
// ModelConfig::name() gives this name back for any model built here.
#pragma once

#include <attnkit/backbones/cifar_resnet.h>
#include <attnkit/backbones/resnet.h>

#include <memory>
#include <string>
#include <vector>

namespace attnkit {

/// The architecture names without attention suffix, e.g. "resnet18", ..., "resnet110".
const std::vector<std::string>& model_names();

/// Parses a model name into a configuration with the family's default head (1000 classes for
/// ImageNet ResNets, 10 for CIFAR ResNets) and 3 input channels. An unknown architecture or
/// attention name is an error listing the valid ones.
ModelConfig parse_model_name(const std::string& name);

/// Builds the backbone a configuration describes (fresh initialisation).
std::shared_ptr<Backbone> build_model(const ModelConfig& config);

/// parse_model_name + build_model; num_classes / in_channels > 0 override the defaults.
std::shared_ptr<Backbone> make_model(const std::string& name, int64_t num_classes = 0, int64_t in_channels = 0);

}  // namespace attnkit
