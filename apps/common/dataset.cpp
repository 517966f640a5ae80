#include "dataset.h"

#include <sstream>
#include <stdexcept>

namespace attnkit::common {

void Dataset::validate(const std::string& what) const {
  if (!images.defined() || images.dim() != 4 || images.scalar_type() != torch::kUInt8) {
    throw std::runtime_error(what + ": images must be uint8 [N, C, H, W]");
  }
  if (!labels.defined() || labels.dim() != 1 || labels.scalar_type() != torch::kLong || labels.size(0) != images.size(0)) {
    throw std::runtime_error(what + ": labels must be int64 [N] with N = " + std::to_string(images.size(0)));
  }
  if (classes.empty()) throw std::runtime_error(what + ": no class names");
  if (labels.numel() > 0) {
    const int64_t lo = labels.min().item<int64_t>(), hi = labels.max().item<int64_t>();
    if (lo < 0 || hi >= static_cast<int64_t>(classes.size())) {
      throw std::runtime_error(what + ": label " + std::to_string(lo < 0 ? lo : hi) + " is outside [0, " +
                               std::to_string(classes.size()) + ")");
    }
  }
}

const std::vector<std::string>& fashion_mnist_classes() {
  static const std::vector<std::string> names = {"T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                                                 "Sandal",      "Shirt",   "Sneaker",  "Bag",   "Ankle boot"};
  return names;
}

std::vector<std::string> parse_class_names(const std::string& spec) {
  if (spec == "fashion-mnist") return fashion_mnist_classes();
  if (spec == "mnist") return {"0", "1", "2", "3", "4", "5", "6", "7", "8", "9"};
  std::vector<std::string> names;
  std::stringstream ss(spec);
  std::string item;
  while (std::getline(ss, item, ',')) names.push_back(item);
  if (names.size() < 2) {
    throw std::runtime_error("class names '" + spec + "': expected fashion-mnist, mnist or a comma-separated list of at least 2 names");
  }
  return names;
}

}  // namespace attnkit::common
