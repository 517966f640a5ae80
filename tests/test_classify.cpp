// Which files `attnkit classify` works on (apps/vision/image_list): folders, --recursive, glob
// patterns, list files, duplicates and missing files. The command itself (decoding, output formats,
// exit codes, parity with torchvision) is tested through the program: tests/cli_classify.cmake.
//
// The helper belongs to the program, not to the library: the test compiles it in. The suite name is
// lower case so that `ctest -R classify` selects it with the CLI tests.
#include "vision/image_list.h"
#include "vision/preprocess.h"

#include <gmock/gmock.h>
#include <opencv2/core.hpp>
#include <opencv2/imgcodecs.hpp>
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <fstream>

#include <sys/stat.h>
#include <unistd.h>

namespace {
namespace fs = std::filesystem;
using attnkit::vision::expand_inputs;
using attnkit::vision::is_image_name;
using attnkit::vision::read_list_file;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

/// A fresh folder holding a small tree of empty files:
///   b.png a.JPG notes.txt .hidden.png sub/c.png sub/deeper/d.bmp empty/
fs::path make_tree(const std::string& name) {
  const auto root = fs::temp_directory_path() / ("attnkit_test_classify_" + std::to_string(::getpid())) / name;
  fs::remove_all(root);
  fs::create_directories(root / "sub" / "deeper");
  fs::create_directories(root / "empty");
  for (const char* f : {"b.png", "a.JPG", "notes.txt", ".hidden.png", "sub/c.png", "sub/deeper/d.bmp"}) std::ofstream(root / f) << "x";
  return root;
}

std::string p(const fs::path& path) { return path.string(); }

TEST(classify_inputs, ImageNamesByExtensionInAnyCase) {
  EXPECT_TRUE(is_image_name("x.png"));
  EXPECT_TRUE(is_image_name("dir/x.JPEG"));
  EXPECT_TRUE(is_image_name("x.webp"));
  EXPECT_FALSE(is_image_name("x.txt"));
  EXPECT_FALSE(is_image_name("png"));
}

TEST(classify_inputs, FolderGivesItsImagesSortedNotSubfolders) {
  const auto root = make_tree("folder");
  const auto list = expand_inputs({p(root)});
  EXPECT_THAT(list.files, ElementsAre(p(root / ".hidden.png"), p(root / "a.JPG"), p(root / "b.png")));
  EXPECT_TRUE(list.warnings.empty());
}

TEST(classify_inputs, RecursiveDescends) {
  const auto root = make_tree("recursive");
  const auto list = expand_inputs({p(root)}, {true});
  EXPECT_THAT(list.files, ElementsAre(p(root / ".hidden.png"), p(root / "a.JPG"), p(root / "b.png"), p(root / "sub" / "c.png"),
                                      p(root / "sub" / "deeper" / "d.bmp")));
}

// A folder that cannot be listed is an error for that input (the old code listed it as empty: a
// warning, and exit 0); the other inputs are still expanded.
TEST(classify_inputs, UnreadableFolderIsAnErrorAndTheRestGoOn) {
  if (::geteuid() == 0) GTEST_SKIP() << "root reads every folder: permissions cannot be tested";
  const auto root = make_tree("unreadable");
  std::filesystem::permissions(root / "sub", std::filesystem::perms::none);
  const auto list = expand_inputs({p(root / "sub"), p(root / "b.png")});
  std::filesystem::permissions(root / "sub", std::filesystem::perms::owner_all);
  EXPECT_THAT(list.files, ElementsAre(p(root / "b.png")));
  ASSERT_EQ(list.errors.size(), 1u);
  EXPECT_EQ(list.errors[0].first, p(root / "sub"));
  EXPECT_THAT(list.errors[0].second, HasSubstr("cannot list the folder"));
  EXPECT_TRUE(list.warnings.empty());
}

TEST(classify_inputs, FilesKeepTheirOrderAndMissingFilesAreKept) {
  const auto root = make_tree("files");
  // Named files are kept whatever their extension (the command reports what it cannot decode).
  const auto list = expand_inputs({p(root / "b.png"), p(root / "missing.png"), p(root / "notes.txt")});
  EXPECT_THAT(list.files, ElementsAre(p(root / "b.png"), p(root / "missing.png"), p(root / "notes.txt")));
}

TEST(classify_inputs, DuplicatesAreDroppedKeepingTheFirst) {
  const auto root = make_tree("dups");
  const auto list = expand_inputs({p(root / "b.png"), p(root), p(root / "." / "a.JPG"), p(root / "sub" / ".." / "b.png")});
  EXPECT_THAT(list.files, ElementsAre(p(root / "b.png"), p(root / ".hidden.png"), p(root / "a.JPG")));
}

TEST(classify_inputs, PatternsAreExpandedLikeTheShellWould) {
  const auto root = make_tree("glob");
  EXPECT_THAT(expand_inputs({p(root / "*.png")}).files, ElementsAre(p(root / "b.png")));  // * skips dot files, as sh
  EXPECT_THAT(expand_inputs({p(root / "[ab].*")}).files, ElementsAre(p(root / "a.JPG"), p(root / "b.png")));
  // A folder matched by a pattern is expanded like a named folder.
  EXPECT_THAT(expand_inputs({p(root / "su?")}).files, ElementsAre(p(root / "sub" / "c.png")));
  EXPECT_THAT(expand_inputs({p(root / "*" / "*.png")}).files, ElementsAre(p(root / "sub" / "c.png")));
}

TEST(classify_inputs, AFileNamedLikeAPatternIsAFile) {
  const auto root = make_tree("literal");
  std::ofstream(root / "[1].png") << "x";
  EXPECT_THAT(expand_inputs({p(root / "[1].png")}).files, ElementsAre(p(root / "[1].png")));
}

TEST(classify_inputs, InputsGivingNothingAreWarnedAbout) {
  const auto root = make_tree("nothing");
  const auto list = expand_inputs({p(root / "empty"), p(root / "*.gif"), p(root / "b.png")});
  EXPECT_THAT(list.files, ElementsAre(p(root / "b.png")));
  ASSERT_EQ(list.warnings.size(), 2u);
  EXPECT_THAT(list.warnings[0], HasSubstr("empty: no image files"));
  EXPECT_THAT(list.warnings[1], HasSubstr("*.gif: no file matches"));
}

TEST(classify_inputs, ListFileEntriesAreRelativeToItsFolder) {
  const auto root = make_tree("list");
  const auto list_path = root / "sub" / "inputs.txt";
  std::ofstream(list_path) << "# a comment\n\n  c.png  \r\n../b.png\n" << p(root / "a.JPG") << "\n   # indented comment\ndeeper\n";
  const auto entries = read_list_file(p(list_path));
  EXPECT_THAT(entries, ElementsAre(p(root / "sub" / "c.png"), p(root / "sub" / ".." / "b.png"), p(root / "a.JPG"),
                                   p(root / "sub" / "deeper")));
  EXPECT_THAT(expand_inputs(entries).files, ElementsAre(p(root / "sub" / "c.png"), p(root / "sub" / ".." / "b.png"),
                                                        p(root / "a.JPG"), p(root / "sub" / "deeper" / "d.bmp")));
}

// "x.png" that is a folder is an error for that input (it used to be a warning and exit 0), named
// or matched by a pattern; a folder named like a folder is still expanded.
TEST(classify_inputs, AFolderNamedLikeAnImageIsAnError) {
  const auto root = make_tree("folder_named_png");
  std::filesystem::create_directories(root / "photo.png");
  const auto list = expand_inputs({p(root / "photo.png"), p(root / "b.png")});
  EXPECT_THAT(list.files, ElementsAre(p(root / "b.png")));
  ASSERT_EQ(list.errors.size(), 1u);
  EXPECT_EQ(list.errors[0].first, p(root / "photo.png"));
  EXPECT_THAT(list.errors[0].second, HasSubstr("is a folder, not an image"));
  EXPECT_EQ(expand_inputs({p(root / "*.png")}).errors.size(), 1u);
}

// A FIFO given as the list file is refused at once instead of blocking the program.
TEST(classify_inputs, ListFileMustBeARegularFile) {
  const auto root = make_tree("list_fifo");
  ASSERT_EQ(::mkfifo(p(root / "list.txt").c_str(), 0600), 0);
  try {
    read_list_file(p(root / "list.txt"));
    FAIL() << "no exception";
  } catch (const std::runtime_error& e) {
    EXPECT_THAT(e.what(), HasSubstr("list.txt: is not a regular file"));
  }
}

// A small JPEG whose frame header claims 30000 × 30000 pixels made libjpeg allocate gigabytes (and
// the file was then classified with exit 0): the header is read first and the file refused.
TEST(classify_inputs, AnImageHeaderClaimingTooManyPixelsIsRefusedBeforeDecoding) {
  const auto root = make_tree("huge_header");
  const unsigned char jpeg[] = {0xFF, 0xD8,                                                  // SOI
                                0xFF, 0xC0, 0x00, 0x0B, 0x08, 0x75, 0x30, 0x75, 0x30, 0x01, 0x01, 0x11, 0x00,  // SOF0
                                0xFF, 0xDA, 0x00, 0x08, 0x01, 0x01, 0x00, 0x00, 0x3F, 0x00,  // SOS
                                0x12, 0x34, 0xFF, 0xD9};                                     // data, EOI
  std::ofstream(root / "huge.jpg", std::ios::binary).write(reinterpret_cast<const char*>(jpeg), sizeof jpeg);
  try {
    attnkit::vision::read_image(p(root / "huge.jpg"));
    FAIL() << "no exception";
  } catch (const std::runtime_error& e) {
    EXPECT_THAT(e.what(), HasSubstr("huge.jpg: the header claims 900000000 pixels"));
  }
}

// libpng and libjpeg print on stderr by themselves; their words become part of the file's one error
// line, and a JPEG whose damaged data libjpeg decodes anyway (it only warns, "Corrupt JPEG data")
// is an error instead of an image classified with exit 0.
TEST(classify_inputs, DecoderMessagesBecomeTheFilesError) {
  const auto root = make_tree("decoder_messages");
  cv::Mat noise(64, 64, CV_8UC3);
  cv::randu(noise, 0, 255);
  std::vector<uchar> png, jpeg;
  ASSERT_TRUE(cv::imencode(".png", noise, png) && cv::imencode(".jpg", noise, jpeg));
  std::ofstream(root / "cut.png", std::ios::binary).write(reinterpret_cast<const char*>(png.data()), 60);
  const auto error_of_image = [](const fs::path& path) -> std::string {
    try {
      attnkit::vision::read_image(p(path));
    } catch (const std::runtime_error& e) {
      return e.what();
    }
    return "";
  };
  EXPECT_THAT(error_of_image(root / "cut.png"), HasSubstr("cut.png: cannot decode the image (unreadable, corrupt or not an "
                                                          "image format OpenCV knows); the decoder says: libpng"));
  // Flipped bytes in the entropy-coded data: each gives an error or a clean decode, and some are
  // the damage libjpeg warns about.
  const uchar start_of_scan[] = {0xFF, 0xDA};
  const size_t scan = std::search(jpeg.begin(), jpeg.end(), std::begin(start_of_scan), std::end(start_of_scan)) - jpeg.begin();
  ASSERT_LT(scan + 200, jpeg.size());
  int damaged = 0;
  for (size_t at = scan + 20; at < scan + 200; at += 9) {
    auto flipped = jpeg;
    flipped[at] ^= 0x5A;
    std::ofstream(root / "flip.jpg", std::ios::binary | std::ios::trunc).write(reinterpret_cast<const char*>(flipped.data()),
                                                                               static_cast<std::streamsize>(flipped.size()));
    const std::string error = error_of_image(root / "flip.jpg");
    damaged += error.find("flip.jpg: the JPEG is damaged (the decoder says: Corrupt JPEG data") != std::string::npos;
  }
  EXPECT_GT(damaged, 0);
}

TEST(classify_inputs, UnreadableListFileIsAnError) {
  try {
    read_list_file("/nonexistent/list.txt");
    FAIL() << "no exception";
  } catch (const std::runtime_error& e) {
    EXPECT_THAT(e.what(), HasSubstr("/nonexistent/list.txt"));
  }
}

}  // namespace
