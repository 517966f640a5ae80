#include <attnkit/backbones/file_bytes.h>

#include <c10/util/Exception.h>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

namespace attnkit {

namespace {

/// Closes a descriptor when the read ends, however it ends.
struct FdCloser {
  int fd;
  ~FdCloser() { ::close(fd); }
};

}  // namespace

std::vector<char> read_regular_file(const std::string& path, size_t max_bytes, const std::string& who) {
  const std::string where = (who.empty() ? "" : who + ": ") + path + ": ";
  const int fd = ::open(path.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC);
  if (fd < 0) {
    const int err = errno;
    TORCH_CHECK(err != ENOENT, where, "no such file");
    TORCH_CHECK(false, where, "cannot open: ", std::strerror(err));
  }
  FdCloser closer{fd};
  struct stat st {};
  TORCH_CHECK(::fstat(fd, &st) == 0, where, "cannot stat: ", std::strerror(errno));
  TORCH_CHECK(!S_ISDIR(st.st_mode), where, "is a folder, not a file");
  TORCH_CHECK(S_ISREG(st.st_mode), where, "is not a regular file (a FIFO, socket or device)");
  TORCH_CHECK(static_cast<uint64_t>(st.st_size) <= max_bytes, where, st.st_size, " bytes, more than the ", max_bytes,
              " accepted");
  std::vector<char> bytes(static_cast<size_t>(st.st_size));
  size_t got = 0;
  while (got < bytes.size()) {
    const ssize_t n = ::read(fd, bytes.data() + got, bytes.size() - got);
    if (n < 0 && errno == EINTR) continue;
    TORCH_CHECK(n >= 0, where, "read error: ", std::strerror(errno));
    if (n == 0) break;  // the file shrank while being read: the reader finds it truncated
    got += static_cast<size_t>(n);
  }
  bytes.resize(got);
  return bytes;
}

}  // namespace attnkit
