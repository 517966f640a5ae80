#include "files.h"

#include <attnkit/backbones/checkpoint.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <stdexcept>

#ifdef ATTNKIT_HAVE_ZLIB
#include <zlib.h>
#endif

namespace attnkit::common {
namespace fs = std::filesystem;

bool is_gzip(const std::string& bytes) {
  return bytes.size() >= 2 && static_cast<unsigned char>(bytes[0]) == 0x1f &&
         static_cast<unsigned char>(bytes[1]) == 0x8b;
}

namespace {

std::string gunzip(const std::string& in, const std::string& path) {
#ifdef ATTNKIT_HAVE_ZLIB
  z_stream zs{};
  // 16 + MAX_WBITS: expect a gzip header and trailer (CRC-32 and size are checked by zlib).
  if (inflateInit2(&zs, 16 + MAX_WBITS) != Z_OK) throw std::runtime_error(path + ": zlib initialisation failed");
  std::string out;
  out.resize(std::max<size_t>(in.size() * 4, 1 << 16));
  zs.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(in.data()));
  zs.avail_in = static_cast<uInt>(in.size());
  int rc = Z_OK;
  while (true) {
    if (zs.total_out == out.size()) out.resize(out.size() * 2);
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
  if (rc != Z_STREAM_END) {
    throw std::runtime_error(path + ": corrupt or truncated gzip file" + (msg.empty() ? "" : " (" + msg + ")"));
  }
  out.resize(produced);
  return out;
#else
  (void)in;
  throw std::runtime_error(path + ": is gzip-compressed and this attnkit was built without zlib; "
                           "decompress it first (gunzip -k " + path + ")");
#endif
}

[[noreturn]] void fail_errno(const std::string& what, const std::string& path) {
  throw std::runtime_error("cannot " + what + " " + path + ": " + std::strerror(errno));
}

}  // namespace

std::string read_file(const std::string& path) {
  std::ifstream file(path, std::ios::binary);
  if (!file) fail_errno("open", path);
  std::ostringstream buffer;
  buffer << file.rdbuf();
  std::string bytes = buffer.str();
  return is_gzip(bytes) ? gunzip(bytes, path) : bytes;
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
