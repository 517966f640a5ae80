// One entry point for every data format `attnkit train` and `attnkit eval` accept:
//   - an MNIST-style folder of IDX files ({train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]);
//   - a CSV of pixels (label,p0,p1,...);
//   - an ImageFolder tree (one sub-folder per class) or a CSV of path,label rows — these need an
//     image decoder, which the program supplies from OpenCV (vision/image_folder.h) when it has it.
// The training code itself never sees OpenCV: image formats arrive through ImageReaders.
#pragma once

#include "dataset.h"

#include <functional>
#include <string>

namespace attnkit::train {

// Where the data is, and the image decoders the program supplies: common/dataset.h.
using common::DataSpec;
using common::ImageReaders;

/// The format `spec.format` resolves to for `spec.path` ("idx", "folder", "pixel-csv", "image-csv").
std::string resolve_format(const DataSpec& spec);

/// Reads the data set. Throws std::runtime_error with one readable line on any problem.
Dataset load_dataset(const DataSpec& spec, const ImageReaders& readers = {});

}  // namespace attnkit::train
