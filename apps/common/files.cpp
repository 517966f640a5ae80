#include "files.h"

#include <attnkit/backbones/checkpoint.h>
#include <attnkit/backbones/file_bytes.h>
#include <attnkit/backbones/unfinished_file.h>

#include <algorithm>
#include <csignal>
#include <cstring>
#include <filesystem>
#include <stdexcept>

#ifdef ATTNKIT_HAVE_ZLIB
#include <zlib.h>
#endif

namespace attnkit::common {
namespace fs = std::filesystem;

namespace {
/// Async-signal-safe: unlink over a fixed table, then the signal's default action. The signal is
/// blocked while its handler runs, so the raise() is delivered, with the default back, on return.
extern "C" void remove_unfinished_files_and_die(int signal_number) {
  remove_unfinished_files();
  std::signal(signal_number, SIG_DFL);
  std::raise(signal_number);
}
}  // namespace

void remove_unfinished_files_on_termination() {
  for (const int signal_number : {SIGINT, SIGTERM, SIGHUP}) {
    struct sigaction current {};
    if (::sigaction(signal_number, nullptr, &current) != 0 || current.sa_handler == SIG_IGN) continue;
    struct sigaction handler {};
    handler.sa_handler = remove_unfinished_files_and_die;
    sigemptyset(&handler.sa_mask);
    ::sigaction(signal_number, &handler, nullptr);
  }
}

bool is_gzip(const std::string& bytes) {
  return bytes.size() >= 2 && static_cast<unsigned char>(bytes[0]) == 0x1f &&
         static_cast<unsigned char>(bytes[1]) == 0x8b;
}

namespace {

/// The decompressed bytes of gzip data `in`, at most `limit`: with `stop_at_limit` the first
/// `limit` bytes (a header); otherwise more than `limit` is an error, found without inflating the
/// rest (an 8 MB file can inflate to gigabytes).
std::string gunzip(const std::string& in, const std::string& path, size_t limit, bool stop_at_limit) {
#ifdef ATTNKIT_HAVE_ZLIB
  z_stream zs{};
  // 16 + MAX_WBITS: expect a gzip header and trailer (CRC-32 and size are checked by zlib).
  if (inflateInit2(&zs, 16 + MAX_WBITS) != Z_OK) throw std::runtime_error(path + ": zlib initialisation failed");
  std::string out;
  // One byte past the limit shows that the data goes on.
  const size_t cap = limit == std::string::npos ? limit : limit + 1;
  out.resize(std::min(std::max<size_t>(in.size() * 4, 1 << 16), cap));
  zs.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(in.data()));
  zs.avail_in = static_cast<uInt>(in.size());
  int rc = Z_OK;
  while (true) {
    if (zs.total_out == out.size()) {
      if (out.size() >= cap) break;
      out.resize(std::min(out.size() * 2, cap));
    }
    zs.next_out = reinterpret_cast<Bytef*>(&out[zs.total_out]);
    zs.avail_out = static_cast<uInt>(std::min<size_t>(out.size() - zs.total_out, 1u << 30));
    rc = inflate(&zs, Z_NO_FLUSH);
    if (rc == Z_STREAM_END) break;
    if (rc == Z_BUF_ERROR && zs.avail_in == 0) break;  // input ended before the gzip trailer
    if (rc != Z_OK) break;
  }
  const size_t produced = zs.total_out;
  const std::string msg = zs.msg ? zs.msg : "";
  inflateEnd(&zs);
  if (produced > limit) {
    if (stop_at_limit) return out.substr(0, limit);
    throw std::runtime_error(path + ": inflates to more than the " + std::to_string(limit) +
                             " bytes expected (damaged, or a different file)");
  }
  if (rc != Z_STREAM_END && !(stop_at_limit && produced == limit)) {
    throw std::runtime_error(path + ": corrupt or truncated gzip file" + (msg.empty() ? "" : " (" + msg + ")"));
  }
  out.resize(produced);
  return out;
#else
  (void)in, (void)limit, (void)stop_at_limit;
  throw std::runtime_error(path + ": is gzip-compressed and this attnkit was built without zlib; "
                           "decompress it first (gunzip -k " + path + ")");
#endif
}

}  // namespace

std::vector<char> read_regular_file(const std::string& path, size_t max_bytes) {
  try {
    return attnkit::read_regular_file(path, max_bytes, "");
  } catch (const c10::Error& e) {
    throw std::runtime_error(e.what_without_backtrace());
  }
}

std::string read_raw_file(const std::string& path) {
  // Far above any data file the program reads (Fashion-MNIST's training images: 47 MB).
  constexpr size_t kMaxDataFileBytes = size_t{16} << 30;
  const std::vector<char> bytes = read_regular_file(path, kMaxDataFileBytes);
  return std::string(bytes.begin(), bytes.end());
}

std::string contents_of(const std::string& raw, const std::string& path, size_t max_bytes) {
  if (is_gzip(raw)) return gunzip(raw, path, max_bytes, /*stop_at_limit=*/false);
  if (raw.size() > max_bytes)
    throw std::runtime_error(path + ": " + std::to_string(raw.size()) + " bytes, more than the " +
                             std::to_string(max_bytes) + " expected");
  return raw;
}

std::string head_of(const std::string& raw, const std::string& path, size_t n) {
  if (is_gzip(raw)) return gunzip(raw, path, n, /*stop_at_limit=*/true);
  return raw.substr(0, n);
}

std::string read_file(const std::string& path, size_t max_bytes) {
  return contents_of(read_raw_file(path), path, max_bytes);
}

std::string find_maybe_gz(const std::string& path) {
  std::error_code ec;
  if (fs::is_regular_file(path, ec)) return path;
  if (fs::is_regular_file(path + ".gz", ec)) return path + ".gz";
  return "";
}

void write_file_atomic(const std::string& path, const std::string& bytes) {
  try {
    write_file_atomically(path, bytes);
  } catch (const c10::Error& e) {
    throw std::runtime_error(e.what_without_backtrace());
  }
}

}  // namespace attnkit::common
