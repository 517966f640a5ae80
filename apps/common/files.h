// File helpers of the whole program (training data, classify's results, visualize's pictures,
// stream's snapshots): whole-file reads that see through gzip, and atomic writes (a kill at any
// moment leaves either the old file or the new one, never a torn one).
#pragma once

#include <string>
#include <vector>

namespace attnkit::common {

/// The bytes of the regular file `path` as stored, at most `max_bytes`: attnkit::read_regular_file
/// (backbones/file_bytes.h: a FIFO, socket, device or folder is refused without blocking), its
/// errors as std::runtime_error ("PATH: problem").
std::vector<char> read_regular_file(const std::string& path, size_t max_bytes);

/// The bytes of `path`; a gzip file (magic 1f 8b) is decompressed. Throws std::runtime_error naming
/// the file when it cannot be opened or is not a regular file, is not valid gzip, holds (or inflates to) more than
/// `max_bytes` — found without inflating the rest — or when this build has no zlib.
std::string read_file(const std::string& path, size_t max_bytes = std::string::npos);

/// read_file in steps, for readers that size the whole read by a header: the file's bytes as
/// stored (read once), their first `n` decompressed bytes (all of them when shorter), and all of
/// them, at most `max_bytes` (the errors of read_file). `path` names the file in errors.
std::string read_raw_file(const std::string& path);
std::string head_of(const std::string& raw, const std::string& path, size_t n);
std::string contents_of(const std::string& raw, const std::string& path, size_t max_bytes);

/// True when `bytes` starts with the gzip magic.
bool is_gzip(const std::string& bytes);

/// Writes `bytes` to `path` atomically: a temporary file in the same folder, fsync, rename over
/// `path`, fsync of the folder. The one implementation is the core library's
/// attnkit::write_file_atomically (checkpoint.h); this only turns its c10::Error into the
/// std::runtime_error every apps function throws. The message names the file.
void write_file_atomic(const std::string& path, const std::string& bytes);

/// Installs handlers so that SIGINT, SIGTERM and SIGHUP remove the program's unfinished files
/// (attnkit::remove_unfinished_files: atomic writes' temporaries, videos being encoded) and then
/// end the program as the signal would have (the shell still sees 130/143). A signal the caller
/// ignores (nohup's SIGHUP) stays ignored; a command that handles SIGINT itself (stream: stop like
/// the q key) installs its own handler over this one for its run.
void remove_unfinished_files_on_termination();

/// `path` when it exists, else `path + ".gz"` when that exists, else "".
std::string find_maybe_gz(const std::string& path);

}  // namespace attnkit::common
