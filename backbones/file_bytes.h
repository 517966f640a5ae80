// Reading a whole file that someone else made (weight files, data sets, image lists, images)
// without trusting what its name promises.
#pragma once

#include <cstddef>
#include <string>
#include <vector>

namespace attnkit {

/// The bytes of the regular file `path`, read whole. The file is opened non-blocking and checked
/// with fstat on the open descriptor, so a FIFO, socket or device named like a data file (or a link
/// to one, such as /dev/zero) is refused instead of blocking the program or reading forever, a
/// folder is refused, and a file larger than `max_bytes` is refused before a byte is read; nothing
/// can swap the file between the check and the read. Errors are c10::Error of the form
/// `WHO: PATH: problem` (`PATH: problem` when `who` is empty), e.g.
/// `read_checkpoint: x.attnkit: is not a regular file (a FIFO, socket or device)`.
std::vector<char> read_regular_file(const std::string& path, size_t max_bytes, const std::string& who);

}  // namespace attnkit
