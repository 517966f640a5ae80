#include "idx.h"

#include "common/files.h"

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <stdexcept>

namespace attnkit::train {
namespace {

uint32_t big_endian32(const unsigned char* p) {
  return (uint32_t{p[0]} << 24) | (uint32_t{p[1]} << 16) | (uint32_t{p[2]} << 8) | uint32_t{p[3]};
}

/// The magic bytes 00 00 <type> <dims>, with 1 to 4 dimensions; the error says which is wrong.
void check_idx_start(const unsigned char* p, size_t size, const std::string& path) {
  if (size < 4 || p[0] != 0 || p[1] != 0) {
    throw std::runtime_error(path + ": not an IDX file (expected the magic bytes 00 00 <type> <dims>)");
  }
  if (p[3] < 1 || p[3] > 4) throw std::runtime_error(path + ": IDX file with " + std::to_string(p[3]) + " dimensions (expected 1 to 4)");
}

}  // namespace

/// The byte size the IDX header at the start of `raw` (the file as stored) declares (header +
/// data), so that the whole read can be bounded by it: a small gzip file that inflates to gigabytes
/// is refused after the declared size, not after the gigabytes.
size_t declared_idx_size(const std::string& raw, const std::string& path) {
  const std::string head = common::head_of(raw, path, 4 + 4 * 4);
  const auto* p = reinterpret_cast<const unsigned char*>(head.data());
  check_idx_start(p, head.size(), path);
  const size_t header = 4 + 4 * static_cast<size_t>(p[3]);
  if (head.size() < header) return head.size();
  const size_t item = p[2] == 0x0B ? 2 : (p[2] == 0x0C || p[2] == 0x0D) ? 4 : p[2] == 0x0E ? 8 : 1;
  // Far above any dataset this program trains on; also keeps the product below overflow. The
  // non-zero sizes are bounded even when another one is 0: the tensor's strides are their products.
  constexpr size_t kMaxIdxBytes = size_t{1} << 40;
  size_t bytes = item;
  bool empty = false;
  for (int d = 0; d < p[3]; ++d) {
    const size_t n = big_endian32(p + 4 + 4 * d);
    if (n == 0) {
      empty = true;
      continue;
    }
    if (bytes > kMaxIdxBytes / n)
      throw std::runtime_error(path + ": the IDX header declares more than " + std::to_string(kMaxIdxBytes) + " bytes of data");
    bytes *= n;
  }
  return header + (empty ? 0 : bytes);
}

torch::Tensor read_idx(const std::string& path) {
  const std::string raw = common::read_raw_file(path);
  const std::string bytes = common::contents_of(raw, path, declared_idx_size(raw, path));
  const auto* p = reinterpret_cast<const unsigned char*>(bytes.data());
  check_idx_start(p, bytes.size(), path);
  torch::ScalarType type;
  size_t item = 1;
  switch (p[2]) {
    case 0x08: type = torch::kUInt8; item = 1; break;
    case 0x09: type = torch::kInt8; item = 1; break;
    case 0x0B: type = torch::kInt16; item = 2; break;
    case 0x0C: type = torch::kInt32; item = 4; break;
    case 0x0D: type = torch::kFloat; item = 4; break;
    case 0x0E: type = torch::kDouble; item = 8; break;
    default:
      throw std::runtime_error(path + ": unknown IDX type code 0x" + [&] {
        char buf[3];
        std::snprintf(buf, sizeof buf, "%02x", p[2]);
        return std::string(buf);
      }());
  }
  const int dims = p[3];
  const size_t header = 4 + 4 * static_cast<size_t>(dims);
  if (bytes.size() < header) throw std::runtime_error(path + ": truncated IDX header");
  std::vector<int64_t> shape;
  size_t count = 1;
  for (int d = 0; d < dims; ++d) {
    shape.push_back(big_endian32(p + 4 + 4 * d));
    count *= static_cast<size_t>(shape.back());
  }
  const size_t expected = header + count * item;
  if (bytes.size() != expected) {
    throw std::runtime_error(path + ": " + (bytes.size() < expected ? "truncated" : "too long") + " IDX file: header says " +
                             std::to_string(count * item) + " bytes of data, found " + std::to_string(bytes.size() - header));
  }
  auto out = torch::empty(shape, torch::TensorOptions().dtype(type));
  std::memcpy(out.data_ptr(), bytes.data() + header, count * item);
  if (item > 1) {
    // IDX is big-endian: swap each item's bytes.
    auto* b = static_cast<unsigned char*>(out.data_ptr());
    for (size_t i = 0; i < count; ++i) std::reverse(b + i * item, b + (i + 1) * item);
  }
  return out;
}

Dataset read_idx_dataset(const std::string& images_path, const std::string& labels_path,
                         const std::vector<std::string>& classes) {
  auto images = read_idx(images_path);
  auto labels = read_idx(labels_path);
  if (images.scalar_type() != torch::kUInt8 || (images.dim() != 3 && images.dim() != 4)) {
    throw std::runtime_error(images_path + ": expected uint8 images [N, H, W] or [N, C, H, W]");
  }
  if (labels.dim() != 1) throw std::runtime_error(labels_path + ": expected labels [N]");
  if (labels.size(0) != images.size(0)) {
    throw std::runtime_error(labels_path + ": " + std::to_string(labels.size(0)) + " labels for " +
                             std::to_string(images.size(0)) + " images in " + images_path);
  }
  if (images.dim() == 3) images = images.unsqueeze(1);
  Dataset data{images.contiguous(), labels.to(torch::kLong), classes};
  data.validate(labels_path);
  return data;
}

bool is_idx_dir(const std::string& dir) {
  return !common::find_maybe_gz(dir + "/train-images-idx3-ubyte").empty() || !common::find_maybe_gz(dir + "/t10k-images-idx3-ubyte").empty();
}

Dataset read_idx_dir(const std::string& dir, const std::string& split, const std::vector<std::string>& classes) {
  if (split != "train" && split != "test") throw std::runtime_error("split '" + split + "': expected train or test");
  const std::string prefix = dir + "/" + (split == "train" ? "train" : "t10k");
  const std::string images = common::find_maybe_gz(prefix + "-images-idx3-ubyte");
  const std::string labels = common::find_maybe_gz(prefix + "-labels-idx1-ubyte");
  if (images.empty() || labels.empty()) {
    throw std::runtime_error(dir + ": no " + (images.empty() ? prefix + "-images-idx3-ubyte[.gz]" : prefix + "-labels-idx1-ubyte[.gz]") +
                             " (an MNIST-style folder has {train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz])");
  }
  return read_idx_dataset(images, labels, classes);
}

}  // namespace attnkit::train
