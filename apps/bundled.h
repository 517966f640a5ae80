// Where the program finds what it ships with: the bundled model (the default of --weights) and the
// sample images. Looked up, in order, in $ATTNKIT_DATA_DIR, the install prefix's share/attnkit, and
// the source tree the program was built from — so the program works installed and from a build tree.
#pragma once

#include <string>

namespace attnkit::app {

/// File name of the default model inside weights/.
inline constexpr const char* kBundledModelName = "fashion-mnist-resnet20x4-cbam.attnkit";

/// Full path of the bundled model; throws std::runtime_error naming the folders searched when absent.
std::string bundled_weights();

/// The folder of bundled sample images (weights/samples); throws like bundled_weights().
std::string bundled_samples_dir();

/// `weights` when not empty, else bundled_weights(): the default of every --weights option.
std::string weights_or_bundled(const std::string& weights);

}  // namespace attnkit::app
