#include <attnkit/backbones/unfinished_file.h>

#include <atomic>
#include <cerrno>
#include <climits>
#include <csignal>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <dirent.h>
#include <sys/stat.h>
#include <unistd.h>
#include <utility>

namespace attnkit {

namespace {

// The table a signal handler reads: fixed size and preallocated, because the handler may neither
// allocate nor lock. A slot is Free, being Filled by its owner, or Listed (the handler may unlink
// its path). More simultaneous temporaries than slots are still removed by their destructors.
constexpr int kSlots = 64;
enum SlotState : int { kFree = 0, kFilling = 1, kListed = 2 };
struct Slot {
  std::atomic<int> state{kFree};
  char path[PATH_MAX];
};
Slot g_slots[kSlots];

int list_path(const std::string& path) {
  if (path.empty() || path.size() >= PATH_MAX) return -1;
  for (int i = 0; i < kSlots; ++i) {
    int expected = kFree;
    if (!g_slots[i].state.compare_exchange_strong(expected, kFilling)) continue;
    std::memcpy(g_slots[i].path, path.c_str(), path.size() + 1);
    g_slots[i].state.store(kListed, std::memory_order_release);
    return i;
  }
  return -1;
}

void unlist(int slot) {
  if (slot >= 0) g_slots[slot].state.store(kFree, std::memory_order_release);
}

/// (folder, file name) of `path`; the folder is "." for a bare name.
std::pair<std::string, std::string> split(const std::string& path) {
  const auto slash = path.find_last_of('/');
  if (slash == std::string::npos) return {".", path};
  return {slash == 0 ? "/" : path.substr(0, slash), path.substr(slash + 1)};
}

bool process_exists(long pid) {
  if (pid <= 0 || pid > INT_MAX) return false;
  // EPERM: it exists and belongs to someone else.
  return ::kill(static_cast<pid_t>(pid), 0) == 0 || errno == EPERM;
}

}  // namespace

UnfinishedFile::UnfinishedFile(std::string path) : path_(std::move(path)), slot_(list_path(path_)) {}

UnfinishedFile::UnfinishedFile(UnfinishedFile&& other) noexcept
    : path_(std::move(other.path_)), slot_(std::exchange(other.slot_, -1)) {
  other.path_.clear();
}

UnfinishedFile& UnfinishedFile::operator=(UnfinishedFile&& other) noexcept {
  if (this != &other) {
    remove_now();
    path_ = std::move(other.path_);
    other.path_.clear();
    slot_ = std::exchange(other.slot_, -1);
  }
  return *this;
}

UnfinishedFile::~UnfinishedFile() { remove_now(); }

void UnfinishedFile::remove_now() noexcept {
  if (!path_.empty()) ::unlink(path_.c_str());
  keep();
}

void UnfinishedFile::keep() noexcept {
  unlist(slot_);
  slot_ = -1;
  path_.clear();
}

void remove_unfinished_files() noexcept {
  for (auto& slot : g_slots)
    if (slot.state.load(std::memory_order_acquire) == kListed) ::unlink(slot.path);
}

std::string unfinished_name_prefix(const std::string& target, const std::string& kind) {
  const auto [dir, name] = split(target);
  return dir + "/." + name + "." + kind + "-" + std::to_string(::getpid()) + "-";
}

int remove_stale_unfinished_files(const std::string& target, const std::string& kind, int min_age_seconds) {
  const auto [dir, name] = split(target);
  const std::string prefix = "." + name + "." + kind + "-";
  DIR* folder = ::opendir(dir.c_str());
  if (!folder) return 0;
  int removed = 0;
  const std::time_t now = std::time(nullptr);
  while (const dirent* entry = ::readdir(folder)) {
    const std::string file = entry->d_name;
    if (file.compare(0, prefix.size(), prefix) != 0) continue;
    // PID digits, then '-': anything else is not one of ours (an older name, a user's file).
    const char* digits = file.c_str() + prefix.size();
    char* end = nullptr;
    errno = 0;
    const long pid = std::strtol(digits, &end, 10);
    if (end == digits || *end != '-' || errno != 0 || process_exists(pid)) continue;
    const std::string path = dir + "/" + file;
    struct stat info {};
    if (::lstat(path.c_str(), &info) != 0 || !S_ISREG(info.st_mode)) continue;
    if (now - info.st_mtime < min_age_seconds) continue;
    if (::unlink(path.c_str()) == 0) ++removed;
  }
  ::closedir(folder);
  return removed;
}

}  // namespace attnkit
