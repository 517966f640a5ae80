// The image decoders train and eval hand to train::load_dataset: OpenCV's where the program is
// built with it (vision/image_folder.h), none otherwise (image folders and path,label CSVs are then
// refused by load_dataset with one line).
#pragma once

#include "common/dataset.h"
#ifdef ATTNKIT_HAVE_OPENCV
#include "vision/image_folder.h"
#endif

namespace attnkit::app {

inline common::ImageReaders image_readers() {
#ifdef ATTNKIT_HAVE_OPENCV
  return vision::opencv_image_readers();
#else
  return {};
#endif
}

}  // namespace attnkit::app
