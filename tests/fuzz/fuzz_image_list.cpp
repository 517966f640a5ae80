// Fuzz target: the image list of classify/visualize (apps/vision/image_list.h): read_list_file on
// the input, then expand_inputs on its entries (files, folders, glob patterns). The first byte's
// low bit chooses `recursive`; the rest is the list file. Its documented error is
// std::runtime_error.
//
// The entries are resolved in a fixed sandbox folder holding images, other files, subfolders, a
// folder named like an image, a FIFO and a symlink loop. Entries that could leave the sandbox
// (absolute paths after resolution, "..", a leading-dot pattern component that glob may match with
// "..", backslash escapes) are dropped first, so that the fuzzer never walks the real file system.
// What expand_inputs promises is checked: no duplicates, nothing from outside the inputs.
#include "vision/image_list.h"

#include "fuzz_target.h"

#include <sys/stat.h>

#include <set>
#include <stdexcept>

namespace {

namespace fs = std::filesystem;

const std::string& sandbox() {
  static const std::string dir = [] {
    const fs::path d = attnkit::fuzz::work_dir() / ("image-list-" + std::to_string(::getpid()));
    fs::remove_all(d);
    for (const char* sub : {"sub/deep", "folder.png", ".hidden", "empty"}) fs::create_directories(d / sub);
    for (const char* file : {"a.png", "b.JPG", "c.jpeg", "notes.txt", ".e.png", "sub/d.tif", "sub/deep/f.webp",
                             "folder.png/g.bmp", ".hidden/h.png", "[x].png", "star*.png"}) {
      std::ofstream(d / file) << "x";
    }
    ::mkfifo((d / "pipe.png").c_str(), 0600);  // nothing may open it: that would hang the target
    fs::create_directory_symlink(".", d / "loop");
    static std::string for_atexit = d.string();
    std::atexit([] { attnkit::fuzz::remove_tree(for_atexit.c_str()); });
    return d.string();
  }();
  return dir;
}

bool inside_sandbox(const std::string& entry) {
  const std::string prefix = sandbox() + "/";
  if (entry.compare(0, prefix.size(), prefix) != 0 || entry.find('\\') != std::string::npos) return false;
  for (const auto& part : fs::path(entry.substr(prefix.size()))) {
    const std::string s = part.string();
    if (s == ".." || (!s.empty() && s[0] == '.' && s.find_first_of("*?[") != std::string::npos)) return false;
  }
  return true;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const std::string list_path = sandbox() + "/list.txt";
  std::ofstream(list_path, std::ios::binary | std::ios::trunc).write(reinterpret_cast<const char*>(data + 1),
                                                                   static_cast<std::streamsize>(size - 1));
  attnkit::vision::ImageListOptions options;
  options.recursive = (data[0] & 1) != 0;
  try {
    std::vector<std::string> inputs;
    for (const auto& entry : attnkit::vision::read_list_file(list_path)) {
      if (inside_sandbox(entry)) inputs.push_back(entry);
    }
    const attnkit::vision::ImageList list = attnkit::vision::expand_inputs(inputs, options);
    std::set<std::string> seen;
    for (const auto& file : list.files) {
      if (!seen.insert(fs::path(file).lexically_normal().string()).second)
        attnkit::fuzz::fail("expand_inputs listed \"" + file + "\" twice");
      if (file.compare(0, sandbox().size(), sandbox()) != 0)
        attnkit::fuzz::fail("expand_inputs gave \"" + file + "\", outside the inputs' folder");
    }
  } catch (const std::runtime_error& e) {
    return attnkit::fuzz::rejected(e.what());
  }
  return attnkit::fuzz::accepted();
}
