// Which files `attnkit classify` works on (apps/vision/image_list): folders, --recursive, glob
// patterns, list files, duplicates and missing files. The command itself (decoding, output formats,
// exit codes, parity with torchvision) is tested through the program: tests/cli_classify.cmake.
//
// The helper belongs to the program, not to the library: the test compiles it in. The suite name is
// lower case so that `ctest -R classify` selects it with the CLI tests.
#include "vision/image_list.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

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

TEST(classify_inputs, UnreadableListFileIsAnError) {
  try {
    read_list_file("/nonexistent/list.txt");
    FAIL() << "no exception";
  } catch (const std::runtime_error& e) {
    EXPECT_THAT(e.what(), HasSubstr("/nonexistent/list.txt"));
  }
}

}  // namespace
