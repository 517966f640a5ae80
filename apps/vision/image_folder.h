// Image data sets read with OpenCV: an ImageFolder tree (root/<class>/<image>, classes in sorted
// folder order, as torchvision's ImageFolder) and a CSV of "path,label" rows (label = class name
// or class index; relative paths are relative to the CSV's folder).
// Every image is decoded, converted to the requested channels (1 = gray, 3 = RGB) and resized to
// size × size (INTER_AREA when shrinking, INTER_LINEAR when growing). Files OpenCV cannot decode
// are skipped; the count and the first few names go into one warning on stderr.
#pragma once

#include "common/dataset.h"

namespace attnkit::vision {

/// ImageFolder tree at spec.path (see above). Throws std::runtime_error when the tree has no class
/// folders or no readable image.
common::Dataset read_image_folder(const common::DataSpec& spec);

/// CSV of path,label at spec.path (an optional header row "path,label" is skipped).
common::Dataset read_image_csv(const common::DataSpec& spec);

/// Both readers, for train::load_dataset.
common::ImageReaders opencv_image_readers();

}  // namespace attnkit::vision
