// Data readers of `attnkit train`/`eval` (apps/train): IDX (plain and gzip), pixel CSV, the
// train/validation split, statistics, batch augmentation and the prefetching loader. Image folders
// and image CSVs are read by the program with OpenCV, so they are tested through the attnkit binary
// (next to this test in build/bin), on PGM files written here by hand.
//
// The training code belongs to the program, not to the library: the test links the apps library.
#include "common/allocator.h"
#include "common/csv.h"
#include "common/dataset.h"
#include "common/files.h"
#include "train/augment.h"
#include "train/csv.h"
#include "train/data_source.h"
#include "train/dataset.h"
#include "train/idx.h"
#include "train/loader.h"

#include "testing.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <set>

#ifdef ATTNKIT_HAVE_ZLIB
#include <zlib.h>
#if defined(__GLIBC__)
#include <malloc.h>
#endif
#endif

namespace {
namespace fs = std::filesystem;
using namespace attnkit::common;
using namespace attnkit::train;
using ::testing::HasSubstr;

fs::path temp_dir(const std::string& name) {
  const auto dir = fs::temp_directory_path() / ("attnkit_test_data_" + std::to_string(::getpid())) / name;
  fs::remove_all(dir);
  fs::create_directories(dir);
  return dir;
}

void write_bytes(const fs::path& path, const std::string& bytes) {
  std::ofstream(path, std::ios::binary) << bytes;
}

std::string be32(uint32_t v) {
  return {char(v >> 24), char((v >> 16) & 0xff), char((v >> 8) & 0xff), char(v & 0xff)};
}

/// An IDX file written by hand: magic 00 00 type dims, big-endian sizes, then `payload`.
std::string idx_bytes(uint8_t type, const std::vector<uint32_t>& shape, const std::string& payload) {
  std::string s = {0, 0, char(type), char(shape.size())};
  for (auto d : shape) s += be32(d);
  return s + payload;
}

std::string expect_runtime_error(const std::function<void()>& f) {
  try {
    f();
  } catch (const std::runtime_error& e) {
    return e.what();
  }
  ADD_FAILURE() << "no std::runtime_error";
  return "";
}

// ---- IDX -------------------------------------------------------------------------------------------

// The program's allocator settings (apps/common/allocator.h): a block the size of one of ResNet-50's
// batch-8 feature maps comes from the heap, not an mmap of its own, and freeing it keeps the memory
// in the process for the next map. (With glibc's defaults, in a fresh process, both fail: the block
// is mmapped and unmapped on free.)
TEST(Allocator, FreedFeatureMapsStayForReuse) {
#if !defined(__GLIBC__)
  GTEST_SKIP() << "the settings are glibc's";
#else
  attnkit::common::keep_freed_memory_for_reuse();
  constexpr size_t kMap = size_t{8} * 256 * 56 * 56 * sizeof(float);  // 25.7 MB
  const size_t mmapped_before = mallinfo2().hblks;
  void* map = std::malloc(kMap);
  ASSERT_NE(map, nullptr);
  EXPECT_EQ(mallinfo2().hblks, mmapped_before) << "the block was an mmap of its own";
  std::memset(map, 1, kMap);  // touch it, as a convolution writing its output would
  std::free(map);
  EXPECT_GE(mallinfo2().fordblks, kMap) << "the freed block went back to the kernel";
#endif
}

TEST(Idx, ReadsUint8ImagesInFileOrder) {
  const auto dir = temp_dir("idx_u8");
  std::string payload;
  for (int i = 0; i < 2 * 3 * 4; ++i) payload += char(i * 10);
  write_bytes(dir / "img", idx_bytes(0x08, {2, 3, 4}, payload));
  const auto t = read_idx((dir / "img").string());
  ASSERT_EQ(t.sizes(), (std::vector<int64_t>{2, 3, 4}));
  EXPECT_EQ(t.scalar_type(), torch::kUInt8);
  EXPECT_EQ(t[1][2][3].item<int>(), 23 * 10);
  EXPECT_EQ(t[0][1][0].item<int>(), 40);
}

TEST(Idx, ReadsBigEndianInt32AndFloat) {
  const auto dir = temp_dir("idx_be");
  write_bytes(dir / "i32", idx_bytes(0x0C, {3}, be32(1) + be32(0x01020304) + be32(uint32_t(-7))));
  const auto t = read_idx((dir / "i32").string());
  EXPECT_EQ(t.scalar_type(), torch::kInt);
  EXPECT_EQ(t[0].item<int>(), 1);
  EXPECT_EQ(t[1].item<int>(), 0x01020304);
  EXPECT_EQ(t[2].item<int>(), -7);
  float f = 1.5f;
  uint32_t bits;
  std::memcpy(&bits, &f, 4);
  write_bytes(dir / "f32", idx_bytes(0x0D, {1}, be32(bits)));
  EXPECT_EQ(read_idx((dir / "f32").string()).item<float>(), 1.5f);
}

TEST(Idx, TruncatedFileIsAClearError) {
  const auto dir = temp_dir("idx_trunc");
  write_bytes(dir / "img", idx_bytes(0x08, {2, 2, 3}, std::string(10, 'x')));
  const auto msg = expect_runtime_error([&] { read_idx((dir / "img").string()); });
  EXPECT_THAT(msg, HasSubstr("truncated IDX file: header says 12 bytes of data, found 10"));
  EXPECT_THAT(msg, HasSubstr((dir / "img").string()));
  write_bytes(dir / "header", std::string{0, 0, 8, 3, 0, 0});
  EXPECT_THAT(expect_runtime_error([&] { read_idx((dir / "header").string()); }), HasSubstr("truncated IDX header"));
}

TEST(Idx, BadMagicTypeAndMissingFileAreErrors) {
  const auto dir = temp_dir("idx_bad");
  write_bytes(dir / "png", "\x89PNG....");
  EXPECT_THAT(expect_runtime_error([&] { read_idx((dir / "png").string()); }), HasSubstr("not an IDX file"));
  write_bytes(dir / "type", idx_bytes(0x07, {1}, "x"));
  EXPECT_THAT(expect_runtime_error([&] { read_idx((dir / "type").string()); }), HasSubstr("unknown IDX type code 0x07"));
  EXPECT_THAT(expect_runtime_error([&] { read_idx((dir / "missing").string()); }),
              HasSubstr((dir / "missing").string() + ": no such file"));
}

TEST(Idx, DatasetChecksLabelCountAndRange) {
  const auto dir = temp_dir("idx_ds");
  write_bytes(dir / "img", idx_bytes(0x08, {3, 2, 2}, std::string(12, '\x05')));
  write_bytes(dir / "lab", idx_bytes(0x08, {3}, std::string{0, 2, 1}));
  write_bytes(dir / "lab2", idx_bytes(0x08, {2}, std::string{0, 1}));
  write_bytes(dir / "lab3", idx_bytes(0x08, {3}, std::string{0, 1, 9}));
  const auto d = read_idx_dataset((dir / "img").string(), (dir / "lab").string(), {"a", "b", "c"});
  EXPECT_EQ(d.images.sizes(), (std::vector<int64_t>{3, 1, 2, 2}));
  EXPECT_TRUE(torch::equal(d.labels, torch::tensor({0, 2, 1}, torch::kLong)));
  EXPECT_THAT(expect_runtime_error([&] { read_idx_dataset((dir / "img").string(), (dir / "lab2").string(), {"a", "b"}); }),
              HasSubstr("2 labels for 3 images"));
  EXPECT_THAT(expect_runtime_error([&] { read_idx_dataset((dir / "img").string(), (dir / "lab3").string(), {"a", "b"}); }),
              HasSubstr("label 9 is outside [0, 2)"));
}

#ifdef ATTNKIT_HAVE_ZLIB
void write_gz(const fs::path& path, const std::string& bytes) {
  gzFile f = gzopen(path.c_str(), "wb");
  ASSERT_NE(f, nullptr);
  ASSERT_EQ(gzwrite(f, bytes.data(), static_cast<unsigned>(bytes.size())), static_cast<int>(bytes.size()));
  gzclose(f);
}

TEST(Idx, GzipFilesReadLikePlainOnes) {
  const auto dir = temp_dir("idx_gz");
  std::string payload;
  for (int i = 0; i < 5 * 7 * 7; ++i) payload += char(i % 251);
  const auto bytes = idx_bytes(0x08, {5, 7, 7}, payload);
  write_bytes(dir / "plain", bytes);
  write_gz(dir / "packed.gz", bytes);
  EXPECT_TRUE(torch::equal(read_idx((dir / "plain").string()), read_idx((dir / "packed.gz").string())));
  // A gzip stream cut short is reported as such, not as a short IDX file.
  const auto gz = read_file((dir / "packed.gz").string());
  std::ifstream in(dir / "packed.gz", std::ios::binary);
  std::string raw((std::istreambuf_iterator<char>(in)), {});
  write_bytes(dir / "cut.gz", raw.substr(0, raw.size() / 2));
  EXPECT_THAT(expect_runtime_error([&] { read_idx((dir / "cut.gz").string()); }), HasSubstr("corrupt or truncated gzip file"));
}

// A small gzip file that inflates far past what its IDX header declares (a bomb, or a damaged
// file) is refused once the declared size is passed, not after inflating everything: memory stays
// bounded by the header's claim.
TEST(Idx, GzipInflatingPastTheDeclaredSizeIsRefusedEarly) {
  const auto dir = temp_dir("idx_bomb");
  const std::string header = idx_bytes(0x08, {10, 10}, "");  // declares 100 bytes of data
  write_gz(dir / "bomb.gz", header + std::string(size_t{64} << 20, '\0'));
  EXPECT_LT(fs::file_size(dir / "bomb.gz"), size_t{1} << 20);
  EXPECT_THAT(expect_runtime_error([&] { read_idx((dir / "bomb.gz").string()); }),
              HasSubstr("inflates to more than the 112 bytes expected"));
  // The same for a plain file longer than its header says.
  write_bytes(dir / "long", header + std::string(1000, 'x'));
  EXPECT_THAT(expect_runtime_error([&] { read_idx((dir / "long").string()); }), HasSubstr("more than the 112 expected"));
}
#else
TEST(Idx, GzipWithoutZlibIsAClearError) {
  const auto dir = temp_dir("idx_gz");
  write_bytes(dir / "x.gz", std::string("\x1f\x8b\x08\x00", 4));
  EXPECT_THAT(expect_runtime_error([&] { read_idx((dir / "x.gz").string()); }), HasSubstr("built without zlib"));
}
#endif

TEST(Idx, FashionMnistTestSplitWhenInstalled) {
  const std::string dir = "/usr/share/datasets/fashion-mnist";
  if (!is_idx_dir(dir)) GTEST_SKIP() << "no " << dir;
#ifndef ATTNKIT_HAVE_ZLIB
  const std::string images = find_maybe_gz(dir + "/t10k-images-idx3-ubyte");
  if (images.size() > 3 && images.compare(images.size() - 3, 3, ".gz") == 0) GTEST_SKIP() << "gzip data and no zlib";
#endif
  const auto d = read_idx_dir(dir, "test", fashion_mnist_classes());
  EXPECT_EQ(d.images.sizes(), (std::vector<int64_t>{10000, 1, 28, 28}));
  // The published test set has exactly 1000 images per class.
  EXPECT_TRUE(torch::equal(torch::bincount(d.labels), torch::full({10}, 1000, torch::kLong)));
  EXPECT_THAT(expect_runtime_error([&] { read_idx_dir(dir, "valid", fashion_mnist_classes()); }), HasSubstr("expected train or test"));
}

// ---- pixel CSV -------------------------------------------------------------------------------------

TEST(PixelCsv, ReadsKaggleLayoutWithHeader) {
  const auto dir = temp_dir("csv");
  write_bytes(dir / "d.csv", "label,pixel1,pixel2,pixel3,pixel4\n2,0,10,20,255\r\n0, 1,2,3,4\n\n");
  const auto d = read_pixel_csv((dir / "d.csv").string(), {"a", "b", "c"});
  EXPECT_EQ(d.images.sizes(), (std::vector<int64_t>{2, 1, 2, 2}));
  EXPECT_TRUE(torch::equal(d.labels, torch::tensor({2, 0}, torch::kLong)));
  EXPECT_TRUE(torch::equal(d.images[0].flatten(), torch::tensor({0, 10, 20, 255}, torch::kUInt8)));
  EXPECT_TRUE(torch::equal(d.images[1].flatten(), torch::tensor({1, 2, 3, 4}, torch::kUInt8)));
  // Through the dispatcher, with the format detected.
  DataSpec spec;
  spec.path = (dir / "d.csv").string();
  spec.class_names = "x,y,z";
  EXPECT_EQ(resolve_format(spec), "pixel-csv");
  EXPECT_EQ(load_dataset(spec).classes, (std::vector<std::string>{"x", "y", "z"}));
}

TEST(PixelCsv, ErrorsNameFileAndLine) {
  const auto dir = temp_dir("csv_bad");
  write_bytes(dir / "pix.csv", "1,0,0,0,0\n1,0,300,0,0\n");
  EXPECT_THAT(expect_runtime_error([&] { read_pixel_csv((dir / "pix.csv").string(), {"a", "b"}); }),
              HasSubstr("pix.csv:2: pixel 1 = '300' is not an integer in [0, 255]"));
  write_bytes(dir / "fields.csv", "1,0,0,0,0\n1,0,0\n");
  EXPECT_THAT(expect_runtime_error([&] { read_pixel_csv((dir / "fields.csv").string(), {"a", "b"}); }),
              HasSubstr("fields.csv:2: 3 fields, expected 5"));
  write_bytes(dir / "square.csv", "1,0,0,0\n");
  EXPECT_THAT(expect_runtime_error([&] { read_pixel_csv((dir / "square.csv").string(), {"a", "b"}); }),
              HasSubstr("3 pixels per row is not a square image"));
  write_bytes(dir / "label.csv", "5,0,0,0,0\n");
  EXPECT_THAT(expect_runtime_error([&] { read_pixel_csv((dir / "label.csv").string(), {"a", "b"}); }),
              HasSubstr("label.csv:1: label 5 is outside [0, 2)"));
}

TEST(Csv, SplitsQuotedFields) {
  EXPECT_EQ(split_csv_line("a, b ,\"c,d\",\"e\"\"f\"\r"), (std::vector<std::string>{"a", "b", "c,d", "e\"f"}));
  EXPECT_EQ(split_csv_line(""), (std::vector<std::string>{""}));
}

TEST(DataSource, UnknownFormatsAndMissingPathsAreErrors) {
  DataSpec spec;
  spec.path = "/nonexistent/attnkit";
  EXPECT_THAT(expect_runtime_error([&] { load_dataset(spec); }), HasSubstr("does not exist"));
  const auto dir = temp_dir("ds");
  spec.path = dir.string();
  fs::create_directories(dir / "cat");
  EXPECT_EQ(resolve_format(spec), "folder");
  // Without an image decoder (a build without OpenCV) folders are refused with the reason.
  EXPECT_THAT(expect_runtime_error([&] { load_dataset(spec); }), HasSubstr("needs OpenCV"));
  spec.format = "tfrecord";
  EXPECT_THAT(expect_runtime_error([&] { resolve_format(spec); }), HasSubstr("expected auto, idx, folder, pixel-csv or image-csv"));
}

// ---- split and statistics ------------------------------------------------------------------------

Dataset toy(int64_t n, int64_t classes, int64_t c = 1, int64_t h = 4, int64_t w = 4) {
  torch::manual_seed(1);
  Dataset d;
  d.images = torch::randint(0, 256, {n, c, h, w}, torch::kLong).to(torch::kUInt8);
  d.labels = torch::arange(n, torch::kLong) % classes;
  for (int64_t k = 0; k < classes; ++k) d.classes.push_back("c" + std::to_string(k));
  return d;
}

TEST(Split, DisjointStratifiedAndSeeded) {
  const auto d = toy(1000, 10);
  const auto [train, val] = split_train_val(d, 100, 7);
  EXPECT_EQ(train.size(), 900);
  EXPECT_EQ(val.size(), 100);
  EXPECT_TRUE(torch::equal(torch::bincount(val.labels, {}, 10), torch::full({10}, 10, torch::kLong)));
  // Every image lands in exactly one part: compare the multisets of image rows.
  const auto all = torch::cat({train.images, val.images}).flatten(1).to(torch::kLong);
  const auto key = [](const torch::Tensor& rows) {
    std::multiset<std::vector<int64_t>> s;
    for (int64_t i = 0; i < rows.size(0); ++i) s.insert(std::vector<int64_t>(rows[i].data_ptr<int64_t>(), rows[i].data_ptr<int64_t>() + rows.size(1)));
    return s;
  };
  EXPECT_EQ(key(all.contiguous()), key(d.images.flatten(1).to(torch::kLong).contiguous()));
  const auto [train2, val2] = split_train_val(d, 100, 7);
  EXPECT_TRUE(torch::equal(val.images, val2.images));
  const auto [train3, val3] = split_train_val(d, 100, 8);
  EXPECT_FALSE(torch::equal(val.images, val3.images));
  EXPECT_THAT(expect_runtime_error([&] { split_train_val(d, 1000, 0); }), HasSubstr("must be in [0, 1000)"));
  EXPECT_EQ(split_train_val(d, 0, 0).second.size(), 0);
}

TEST(Stats, MeanAndStdPerChannelInDouble) {
  const auto d = toy(50, 2, 3, 5, 4);
  const auto [mean, stdev] = channel_stats(d);
  ASSERT_EQ(mean.size(), 3u);
  for (int c = 0; c < 3; ++c) {
    // Independent: plain loops over the pixels.
    double s = 0, s2 = 0;
    const auto x = d.images.select(1, c).contiguous();
    const auto* p = x.data_ptr<uint8_t>();
    const int64_t n = x.numel();
    for (int64_t i = 0; i < n; ++i) s += p[i] / 255.0, s2 += (p[i] / 255.0) * (p[i] / 255.0);
    const double m = s / n;
    EXPECT_NEAR(mean[c], m, 1e-12);
    EXPECT_NEAR(stdev[c], std::sqrt(s2 / n - m * m), 1e-9);
  }
}

// ---- augmentation ------------------------------------------------------------------------------------

torch::Tensor ramp(int64_t b, int64_t c, int64_t h, int64_t w) {
  return torch::arange(b * c * h * w, torch::kFloat).view({b, c, h, w}) + 1;  // no zeros: padding is visible
}

TEST(Augment, RandomCropIsAShiftedWindowOfThePaddedImage) {
  const auto x = ramp(64, 2, 5, 6);
  auto gen = at::make_generator<at::CPUGeneratorImpl>(3);
  const auto y = random_crop(x, 2, gen);
  ASSERT_EQ(y.sizes(), x.sizes());
  const auto padded = torch::constant_pad_nd(x, {2, 2, 2, 2});
  std::set<std::pair<int, int>> offsets;
  for (int64_t i = 0; i < 64; ++i) {
    bool found = false;
    for (int dy = 0; dy <= 4 && !found; ++dy)
      for (int dx = 0; dx <= 4 && !found; ++dx)
        if (torch::equal(padded[i].slice(1, dy, dy + 5).slice(2, dx, dx + 6), y[i])) {
          found = true;
          offsets.insert({dy, dx});
        }
    EXPECT_TRUE(found) << "image " << i;
  }
  EXPECT_GT(offsets.size(), 10u);  // 25 possible offsets, 64 draws
}

TEST(Augment, FlipMirrorsAboutHalfTheImages) {
  const auto x = ramp(200, 1, 3, 4);
  auto gen = at::make_generator<at::CPUGeneratorImpl>(5);
  const auto y = random_hflip(x, gen);
  int flipped = 0;
  for (int64_t i = 0; i < 200; ++i) {
    const bool same = torch::equal(y[i], x[i]), mirrored = torch::equal(y[i], x[i].flip({2}));
    EXPECT_TRUE(same != mirrored);
    flipped += mirrored;
  }
  EXPECT_GT(flipped, 60);
  EXPECT_LT(flipped, 140);
}

TEST(Augment, ErasingFillsOneRectanglePerImage) {
  const int64_t h = 20, w = 20;
  const auto x = torch::full({100, 1, h, w}, 1000.0f);
  auto gen = at::make_generator<at::CPUGeneratorImpl>(9);
  EXPECT_TRUE(torch::equal(random_erasing(x, 0.0, gen), x));
  const auto y = random_erasing(x, 1.0, gen);
  for (int64_t i = 0; i < 100; ++i) {
    const auto changed = (y[i][0] != 1000.0f);
    const auto rows = changed.any(1).nonzero().flatten(), cols = changed.any(0).nonzero().flatten();
    ASSERT_GT(rows.numel(), 0) << "image " << i;
    const int64_t r0 = rows.min().item<int64_t>(), r1 = rows.max().item<int64_t>();
    const int64_t c0 = cols.min().item<int64_t>(), c1 = cols.max().item<int64_t>();
    // Every pixel of the bounding box is replaced (noise is never exactly 1000): one full rectangle.
    EXPECT_EQ(changed.sum().item<int64_t>(), (r1 - r0 + 1) * (c1 - c0 + 1));
    const double area = double((r1 - r0 + 1) * (c1 - c0 + 1)) / (h * w);
    EXPECT_LE(area, 0.45);  // 33% of the area, plus rounding and clipping of thin boxes
    EXPECT_GE(area, 1.0 / (h * w));
  }
}

TEST(Augment, PrepareBatchNormalisesAndIsDeterministic) {
  const auto d = toy(8, 2, 2, 6, 6);
  const Normalization norm{{0.5, 0.25}, {0.2, 0.4}};
  const auto plain = prepare_batch(d.images, norm, {}, false, 0);
  const auto expect = (d.images.to(torch::kDouble) / 255.0 - torch::tensor({0.5, 0.25}, torch::kDouble).view({1, 2, 1, 1})) /
                      torch::tensor({0.2, 0.4}, torch::kDouble).view({1, 2, 1, 1});
  EXPECT_TRUE(torch::allclose(plain.to(torch::kDouble), expect, 1e-6, 1e-6));
  const AugmentOptions aug{2, true, 0.5};
  const auto a = prepare_batch(d.images, norm, aug, true, 42), b = prepare_batch(d.images, norm, aug, true, 42);
  EXPECT_TRUE(torch::equal(a, b));
  EXPECT_FALSE(torch::equal(a, prepare_batch(d.images, norm, aug, true, 43)));
  EXPECT_TRUE(torch::equal(prepare_batch(d.images, norm, aug, false, 42), plain));  // eval: no augmentation
  EXPECT_THAT(expect_runtime_error([&] { prepare_batch(d.images, {{0.5}, {0.2}}, {}, false, 0); }),
              HasSubstr("normalisation has 1 channel(s), the images have 2"));
  if (attnkit::testing::cuda_available()) {
    const auto g = prepare_batch(d.images.cuda(), norm, aug, true, 42).cpu();
    EXPECT_TRUE(torch::allclose(g, a, 1e-5, 1e-5));  // same random draws on both devices
  }
}

// ---- loader --------------------------------------------------------------------------------------------

std::vector<torch::Tensor> all_batches(BatchLoader& loader) {
  std::vector<torch::Tensor> out;
  while (auto b = loader.next()) out.push_back(b->labels);
  return out;
}

TEST(Loader, EachImageOncePerEpochSameWithOrWithoutThread) {
  Dataset d = toy(103, 103);
  LoaderOptions o;
  o.batch_size = 10;
  o.shuffle = true;
  o.seed = 4;
  o.epoch = 2;
  o.norm = {{0.5}, {0.5}};
  o.prefetch = 3;
  BatchLoader threaded(d.images, d.labels, o);
  EXPECT_EQ(threaded.num_batches(), 11);
  const auto a = all_batches(threaded);
  o.prefetch = 0;
  BatchLoader inline_loader(d.images, d.labels, o);
  const auto b = all_batches(inline_loader);
  ASSERT_EQ(a.size(), 11u);
  ASSERT_EQ(b.size(), 11u);
  for (size_t i = 0; i < a.size(); ++i) EXPECT_TRUE(torch::equal(a[i], b[i]));
  const auto seen = torch::cat(a);
  EXPECT_TRUE(torch::equal(std::get<0>(seen.sort()), torch::arange(103, torch::kLong)));
  EXPECT_FALSE(torch::equal(seen, torch::arange(103, torch::kLong)));  // shuffled
  o.epoch = 3;
  BatchLoader next_epoch(d.images, d.labels, o);
  EXPECT_FALSE(torch::equal(torch::cat(all_batches(next_epoch)), seen));
  o.drop_last = true;
  BatchLoader dropping(d.images, d.labels, o);
  EXPECT_EQ(dropping.num_batches(), 10);
  EXPECT_EQ(all_batches(dropping).size(), 10u);
}

// Data-parallel training (train/distributed.h): process k of n takes slice k of every global batch.
TEST(Loader, ShardsTileEveryGlobalBatch) {
  Dataset d = toy(103, 103);
  LoaderOptions o;
  o.batch_size = 10;
  o.shuffle = true;
  o.seed = 4;
  o.epoch = 1;
  o.norm = {{0.5}, {0.5}};
  o.prefetch = 0;
  BatchLoader whole(d.images, d.labels, o);
  std::vector<Batch> one;
  while (auto b = whole.next()) one.push_back(*b);
  for (int64_t shards : {2, 3}) {
    std::vector<std::vector<Batch>> parts(shards);
    for (int64_t k = 0; k < shards; ++k) {
      o.shard = k;
      o.shards = shards;
      BatchLoader loader(d.images, d.labels, o);
      EXPECT_EQ(loader.num_batches(), whole.num_batches());  // the same steps on every process
      while (auto b = loader.next()) parts[k].push_back(*b);
    }
    for (size_t i = 0; i < one.size(); ++i) {
      std::vector<torch::Tensor> rows, labels;
      for (int64_t k = 0; k < shards; ++k) {
        const auto& b = parts[k][i];
        EXPECT_EQ(b.global_size, one[i].global_size);
        EXPECT_LE(std::abs(b.labels.size(0) - one[i].labels.size(0) / shards), 1);  // balanced
        rows.push_back(b.indices);
        labels.push_back(b.labels);
      }
      EXPECT_TRUE(torch::equal(torch::cat(rows), one[i].indices)) << "batch " << i << ", " << shards << " shards";
      EXPECT_TRUE(torch::equal(torch::cat(labels), one[i].labels));
    }
  }
  // Augmentation: shard 0 draws the one-process stream, the others their own.
  o.train = true;
  o.augment.hflip = true;
  o.augment.crop_padding = 2;
  o.shards = 2;
  o.shard = 1;
  o.batch_size = 20;
  BatchLoader second(d.images, d.labels, o);
  o.shard = 0;
  BatchLoader first(d.images, d.labels, o);
  const auto b1 = *second.next(), b0 = *first.next();
  EXPECT_EQ(b0.images.size(0), b1.images.size(0));
  const auto again = prepare_batch(d.images.index_select(0, b1.indices), o.norm, o.augment, true,
                                   mix_seed(o.seed, static_cast<uint64_t>(o.epoch), 0));
  EXPECT_FALSE(torch::equal(again, b1.images));  // not rank 0's random numbers on rank 1's images
  o.shard = 2;
  EXPECT_THROW(BatchLoader(d.images, d.labels, o), std::runtime_error);
}

TEST(Loader, WorkerErrorsReachTheCaller) {
  Dataset d = toy(20, 2);
  LoaderOptions o;
  o.batch_size = 4;
  o.norm = {{0.5, 0.5}, {0.5, 0.5}};  // 2 channels for 1-channel images
  o.prefetch = 2;
  BatchLoader loader(d.images, d.labels, o);
  EXPECT_THAT(expect_runtime_error([&] { loader.next(); }), HasSubstr("normalisation has 2 channel(s)"));
}

TEST(Loader, StopsEarlyWithoutHanging) {
  Dataset d = toy(200, 2);
  LoaderOptions o;
  o.batch_size = 2;
  o.norm = {{0.5}, {0.5}};
  o.prefetch = 1;
  BatchLoader loader(d.images, d.labels, o);
  EXPECT_TRUE(loader.next().has_value());
  // Destroyed with 99 batches left: the worker must notice and exit.
}

}  // namespace
