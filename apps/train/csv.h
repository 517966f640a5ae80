// A CSV of pixels ("label,p0,p1,...", one image per row, as Kaggle ships Fashion-MNIST) read into a
// Dataset (the line splitting is common/csv.h). A CSV of "path,label" rows needs an image decoder
// and is read by vision/image_folder.h.
#pragma once

#include "dataset.h"

#include <string>
#include <vector>

namespace attnkit::train {

/// Reads "label,p0,...,pK-1" rows (pixels 0..255). An optional header row (first field not a number)
/// is skipped. K must equal channels·height·width; with height = width = 0 the image is taken to be
/// square with `channels` channels. Labels are integers in [0, classes.size()).
/// Errors name the file and the line.
Dataset read_pixel_csv(const std::string& path, const std::vector<std::string>& classes, int64_t channels = 1,
                       int64_t height = 0, int64_t width = 0);

}  // namespace attnkit::train
