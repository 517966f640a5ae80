// Files being written that must not outlive their writer: atomic writes' temporaries, videos
// being encoded. A normal failure removes them through UnfinishedFile's destructor; a SIGINT or
// SIGTERM through remove_unfinished_files(), which a signal handler may call; a SIGKILL or power
// cut leaves them behind, and the next write to the same target removes them
// (remove_stale_unfinished_files). Their names carry the writer's process id for that.
#pragma once

#include <string>

namespace attnkit {

/// Owns the temporary file `path` until keep(): the destructor removes it, and so does
/// remove_unfinished_files() while the object lives. Movable, not copyable.
class UnfinishedFile {
 public:
  UnfinishedFile() = default;
  explicit UnfinishedFile(std::string path);
  UnfinishedFile(UnfinishedFile&& other) noexcept;
  UnfinishedFile& operator=(UnfinishedFile&& other) noexcept;
  UnfinishedFile(const UnfinishedFile&) = delete;
  UnfinishedFile& operator=(const UnfinishedFile&) = delete;
  ~UnfinishedFile();

  const std::string& path() const { return path_; }
  /// The file became the real one (renamed over its target) or is left for the user to rescue:
  /// nothing removes it any more.
  void keep() noexcept;

 private:
  void remove_now() noexcept;

  std::string path_;
  int slot_ = -1;  // its entry in the table remove_unfinished_files() reads; -1: not listed
};

/// Removes every live UnfinishedFile's file. Async-signal-safe (unlink on a fixed table, no
/// allocation, no locks): meant for a SIGINT/SIGTERM handler before the process dies.
void remove_unfinished_files() noexcept;

/// The name prefix of `target`'s temporaries of kind `kind` written by this process, in the same
/// folder (so the final rename is atomic): "DIR/.NAME.KIND-PID-".
std::string unfinished_name_prefix(const std::string& target, const std::string& kind);

/// Removes `target`'s temporaries of kind `kind` ("DIR/.NAME.KIND-PID-*") left by a writer that
/// died: the process PID no longer exists and the file has not changed for `min_age_seconds` (a
/// writer on another machine sharing the folder keeps its file fresh). Best effort, never throws;
/// returns how many it removed.
int remove_stale_unfinished_files(const std::string& target, const std::string& kind, int min_age_seconds = 60);

}  // namespace attnkit
