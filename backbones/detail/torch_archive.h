// Reading torch's zip archives (torch::pickle_save / torch.save) without trusting their bytes.
#pragma once

#include <ATen/core/ivalue.h>

#include <string>
#include <vector>

namespace attnkit::detail {

/// Checks a zip archive as torch writes them before LibTorch's zip reader (miniz) sees it: the
/// end-of-central-directory records (zip64 included), every entry's central and local headers, its
/// name and data inside the file, stored (uncompressed) data, no two entries overlapping, and
/// each entry's CRC-32, so a damaged or crafted archive is an error naming what is wrong instead
/// of reads past the buffer or silently changed tensors. Errors start with `who`.
void check_zip_archive(const char* data, size_t size, const std::string& who);

/// Walks a pickle's opcodes without running them and refuses what would make a small file take
/// a lot of memory or time in an unpickler: lengths past the end of the data, memo indices beyond
/// the objects stored so far (an unpickler sizes its memo table by them), a stack or MARK nesting
/// deeper than any state dict needs, opcodes outside protocols 0-5. Errors start with `who`.
void check_pickle(const char* data, size_t size, const std::string& who);

/// check_zip_archive, check_pickle on its data.pkl, then torch::pickle_load, except that every tensor's extent (offset, sizes, strides) is checked against
/// the bytes its data record really holds, before anything reads the tensor: a damaged or crafted
/// archive can claim a storage of 2^20 floats in a record of 16 bytes, which torch::pickle_load
/// accepts and the first read of the tensor then runs past. Errors start with `who`.
c10::IValue load_pickle_archive(const std::vector<char>& bytes, const std::string& who);

}  // namespace attnkit::detail
