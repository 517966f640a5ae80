#include "torch_archive.h"

#include <caffe2/serialize/in_memory_adapter.h>
#include <caffe2/serialize/inline_container.h>
#include <torch/csrc/jit/serialization/unpickler.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <cstring>
#include <memory>
#include <unordered_map>

namespace attnkit::detail {
namespace {

/// The bytes of the record whose buffer starts at each address: what a storage can really hold.
using RecordSizes = std::unordered_map<const void*, size_t>;

void check_tensor(const at::Tensor& t, const RecordSizes& records, const std::string& who) {
  const auto it = records.find(t.storage().data());
  const size_t have = it == records.end() ? 0 : it->second;
  // The pickle names each storage's element count; LibTorch takes it as the storage's size whatever
  // the record holds, so a larger count would leave a storage reaching past its buffer.
  TORCH_CHECK(t.storage().nbytes() <= have || (t.storage().nbytes() == 0), who, "a storage of ", t.storage().nbytes(),
              " bytes but its data record holds ", have);
  if (t.numel() == 0) return;
  TORCH_CHECK(t.storage_offset() >= 0, who, "a tensor has a negative storage offset");
  int64_t last = t.storage_offset();
  for (int64_t d = 0; d < t.dim(); ++d) {
    TORCH_CHECK(t.stride(d) >= 0, who, "a tensor of shape ", t.sizes(), " has a negative stride");
    last += (t.size(d) - 1) * t.stride(d);
  }
  const auto need = static_cast<size_t>(last + 1) * t.element_size();
  // A checkpoint's tensors are dense: more elements than bytes to hold them (stride 0, overlaps)
  // would only inflate a small file into a huge allocation when the tensor is copied.
  const auto elements = static_cast<size_t>(t.numel()) * t.element_size();
  TORCH_CHECK(need <= have && elements <= have, who, "a tensor of shape ", t.sizes(), " and dtype ", t.scalar_type(),
              " needs ", std::max(need, elements), " bytes but its data record holds ", have);
}

void check_tensors(const c10::IValue& v, const RecordSizes& records, const std::string& who, int depth) {
  TORCH_CHECK(depth < 64, who, "the archive nests containers more than 64 deep");
  if (v.isTensor()) {
    check_tensor(v.toTensor(), records, who);
  } else if (v.isGenericDict()) {
    for (const auto& item : v.toGenericDict()) {
      check_tensors(item.key(), records, who, depth + 1);
      check_tensors(item.value(), records, who, depth + 1);
    }
  } else if (v.isList()) {
    for (const auto& item : v.toListRef()) check_tensors(item, records, who, depth + 1);
  } else if (v.isTuple()) {
    for (const auto& item : v.toTupleRef().elements()) check_tensors(item, records, who, depth + 1);
  } else if (v.isTensorList()) {
    for (const auto& t : v.toTensorVector()) check_tensor(t, records, who);
  }
}

// ---- zip structure -------------------------------------------------------------------------------
// Little-endian fields at checked offsets: every read goes through Bytes, which refuses to leave
// the buffer.
struct Bytes {
  const unsigned char* p;
  size_t n;
  const std::string& who;

  void need(size_t at, size_t len, const char* what) const {
    TORCH_CHECK(at <= n && len <= n - at, who, "the zip archive is damaged: ", what, " at byte ", at,
                " runs past the end of the file (", n, " bytes)");
  }
  uint64_t le(size_t at, int len) const {
    uint64_t v = 0;
    for (int i = len - 1; i >= 0; --i) v = (v << 8) | p[at + i];
    return v;
  }
  uint64_t u16(size_t at) const { return le(at, 2); }
  uint64_t u32(size_t at) const { return le(at, 4); }
  uint64_t u64(size_t at) const { return le(at, 8); }
};

constexpr uint32_t kLocalHeader = 0x04034b50, kCentralHeader = 0x02014b50, kEndOfCentralDir = 0x06054b50,
                   kZip64EndLocator = 0x07064b50, kZip64End = 0x06064b50;

uint32_t crc32_of(const unsigned char* p, size_t n) {
  static const auto table = [] {
    std::array<uint32_t, 256> t{};
    for (uint32_t i = 0; i < 256; ++i) {
      uint32_t c = i;
      for (int k = 0; k < 8; ++k) c = (c & 1) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
      t[i] = c;
    }
    return t;
  }();
  uint32_t c = 0xFFFFFFFFu;
  for (size_t i = 0; i < n; ++i) c = table[(c ^ p[i]) & 0xFF] ^ (c >> 8);
  return c ^ 0xFFFFFFFFu;
}

struct CentralDirectory {
  uint64_t offset, size, entries;
};

/// The end-of-central-directory record (and its zip64 form, which torch always writes).
CentralDirectory find_central_directory(const Bytes& b) {
  TORCH_CHECK(b.n >= 22, b.who, "too short for a zip archive (", b.n, " bytes)");
  size_t eocd = b.n - 22;
  const size_t lowest = b.n > 22 + 65535 ? b.n - 22 - 65535 : 0;
  while (b.u32(eocd) != kEndOfCentralDir) {
    TORCH_CHECK(eocd > lowest, b.who, "not a complete zip archive (no end of central directory: truncated?)");
    --eocd;
  }
  TORCH_CHECK(eocd + 22 + b.u16(eocd + 20) == b.n, b.who, "the zip archive is damaged: its end record's comment "
              "length does not match the file's end");
  CentralDirectory cd{b.u32(eocd + 16), b.u32(eocd + 12), b.u16(eocd + 10)};
  size_t end = eocd;  // where the central directory must end
  if (eocd >= 20 && b.u32(eocd - 20) == kZip64EndLocator) {
    const uint64_t at = b.u64(eocd - 20 + 8);
    b.need(at, 56, "the zip64 end record");
    TORCH_CHECK(b.u32(at) == kZip64End && at + 56 <= eocd - 20, b.who,
                "the zip archive is damaged: bad zip64 end record");
    cd = {b.u64(at + 48), b.u64(at + 40), b.u64(at + 32)};
    end = at;
  }
  TORCH_CHECK(cd.offset <= end && cd.size <= end - cd.offset, b.who,
              "the zip archive is damaged: its central directory lies outside the file");
  TORCH_CHECK(cd.entries <= cd.size / 46, b.who, "the zip archive is damaged: ", cd.entries,
              " entries cannot fit in a central directory of ", cd.size, " bytes");
  return cd;
}

struct Entry {
  std::string name;
  uint64_t data_begin, data_size;
  uint32_t crc;
};

/// The zip64 extra field's values for the central header fields that hold 0xFFFFFFFF.
void read_zip64_extra(const Bytes& b, size_t extra, size_t extra_len, uint64_t& size, uint64_t& csize,
                      uint64_t& offset) {
  for (size_t at = extra; at + 4 <= extra + extra_len;) {
    const uint64_t id = b.u16(at), len = b.u16(at + 2);
    TORCH_CHECK(at + 4 + len <= extra + extra_len, b.who, "the zip archive is damaged: an extra field overruns");
    if (id == 0x0001) {
      size_t f = at + 4;
      for (uint64_t* v : {&size, &csize, &offset}) {
        if (*v != 0xFFFFFFFFu) continue;
        TORCH_CHECK(f + 8 <= at + 4 + len, b.who, "the zip archive is damaged: short zip64 extra field");
        *v = b.u64(f);
        f += 8;
      }
    }
    at += 4 + len;
  }
}

/// An entry's name for an error message: the file's bytes, with anything unprintable as \xNN (a
/// damaged name must not put control characters on the user's terminal).
std::string shown(const std::string& name) {
  std::string out;
  for (const unsigned char c : name) {
    if (c >= 0x20 && c < 0x7F) {
      out += static_cast<char>(c);
    } else {
      static const char hex[] = "0123456789abcdef";
      out += {'\\', 'x', hex[c >> 4], hex[c & 15]};
    }
  }
  return out;
}

/// One central-directory entry at `at` and its local header: names, bounds, stored data.
Entry read_entry(const Bytes& b, size_t& at, const CentralDirectory& cd) {
  b.need(at, 46, "a central directory entry");
  TORCH_CHECK(b.u32(at) == kCentralHeader, b.who, "the zip archive is damaged: bad central directory entry");
  const uint64_t method = b.u16(at + 10), name_len = b.u16(at + 28), extra_len = b.u16(at + 30),
                 comment_len = b.u16(at + 32);
  uint64_t csize = b.u32(at + 20), size = b.u32(at + 24), local = b.u32(at + 42);
  const size_t name_at = at + 46;
  b.need(name_at, name_len + extra_len + comment_len, "a central directory entry's name");
  TORCH_CHECK(name_at + name_len + extra_len + comment_len <= cd.offset + cd.size, b.who,
              "the zip archive is damaged: an entry runs past the central directory");
  Entry e{std::string(reinterpret_cast<const char*>(b.p + name_at), name_len), 0, 0,
          static_cast<uint32_t>(b.u32(at + 16))};
  read_zip64_extra(b, name_at + name_len, extra_len, size, csize, local);
  TORCH_CHECK(method == 0 && csize == size, b.who, "entry \"", shown(e.name),
              "\" is compressed (method ", method, "); torch archives store their records uncompressed");
  b.need(local, 30, "a local header");
  TORCH_CHECK(b.u32(local) == kLocalHeader, b.who, "the zip archive is damaged: entry \"", shown(e.name),
              "\" has no local header at byte ", local);
  const uint64_t local_name = b.u16(local + 26), local_extra = b.u16(local + 28);
  b.need(local + 30, local_name + local_extra, "a local header's name");
  TORCH_CHECK(local_name == name_len && std::memcmp(b.p + local + 30, b.p + name_at, name_len) == 0, b.who,
              "the zip archive is damaged: entry \"", shown(e.name), "\" has another name in its local header");
  e.data_begin = local + 30 + local_name + local_extra;
  e.data_size = size;
  TORCH_CHECK(e.data_begin <= cd.offset && e.data_size <= cd.offset - e.data_begin, b.who,
              "the zip archive is damaged: entry \"", shown(e.name), "\" (", size, " bytes) runs past the data");
  at = name_at + name_len + extra_len + comment_len;
  return e;
}

// ---- pickle opcodes --------------------------------------------------------------------------------
// Limits far above what a state dict or checkpoint needs (a few levels of nesting, a stack of tens)
// and far below what a crafted pickle would use to exhaust memory.
constexpr size_t kMaxPickleStack = 100000;
constexpr size_t kMaxPickleMarks = 1000;

/// Bytes of an opcode's argument: fixed sizes, or a length prefix of 1, 4 or 8 bytes followed by
/// that many bytes, or a newline-terminated text argument (protocol 0).
enum class Arg { kNone, kFixed, kLength, kLine, kTwoLines };
struct OpInfo {
  Arg arg;
  int bytes;       // kFixed: the size; kLength: the size of the length prefix
  int stack;       // effect on the stack height, outside MARK ... pop-to-mark
};

bool op_info(unsigned char op, OpInfo& info) {
  switch (op) {
    // no argument
    case '(': info = {Arg::kNone, 0, 0}; return true;  // MARK (handled apart)
    case '.': case 'R': case 'b': case '0': case 'a': case 0x81: case 0x93:
      info = {Arg::kNone, 0, -1}; return true;  // STOP, REDUCE, BUILD, POP, APPEND, NEWOBJ, STACK_GLOBAL
    case 's': info = {Arg::kNone, 0, -2}; return true;  // SETITEM
    case ')': case '}': case ']': case 'N': case 0x88: case 0x89: case '2': case 0x8f:
      info = {Arg::kNone, 0, 1}; return true;  // EMPTY_TUPLE/DICT/LIST, NONE, TRUE, FALSE, DUP, EMPTY_SET
    case 'Q': case 0x85: case 0x94: info = {Arg::kNone, 0, 0}; return true;  // BINPERSID, TUPLE1, MEMOIZE
    case 0x86: info = {Arg::kNone, 0, -1}; return true;  // TUPLE2
    case 0x87: info = {Arg::kNone, 0, -2}; return true;  // TUPLE3
    case 't': case 'e': case 'u': case 'd': case 'l': case '1': case 0x90:
      info = {Arg::kNone, 0, 0}; return true;  // TUPLE, APPENDS, SETITEMS, DICT, LIST, POP_MARK, ADDITEMS (pop to mark)
    // fixed-size argument
    case 0x80: info = {Arg::kFixed, 1, 0}; return true;  // PROTO
    case 'q': info = {Arg::kFixed, 1, 0}; return true;   // BINPUT
    case 'r': info = {Arg::kFixed, 4, 0}; return true;   // LONG_BINPUT
    case 'h': info = {Arg::kFixed, 1, 1}; return true;   // BINGET
    case 'j': info = {Arg::kFixed, 4, 1}; return true;   // LONG_BINGET
    case 'K': info = {Arg::kFixed, 1, 1}; return true;   // BININT1
    case 'M': info = {Arg::kFixed, 2, 1}; return true;   // BININT2
    case 'J': info = {Arg::kFixed, 4, 1}; return true;   // BININT
    case 'G': info = {Arg::kFixed, 8, 1}; return true;   // BINFLOAT
    case 0x95: info = {Arg::kFixed, 8, 0}; return true;  // FRAME
    // length-prefixed argument
    case 0x8a: case 'U': case 'C': case 0x8c: info = {Arg::kLength, 1, 1}; return true;  // LONG1, SHORT_BIN*
    case 0x8b: case 'T': case 'B': case 'X': info = {Arg::kLength, 4, 1}; return true;   // LONG4, BINSTRING/BYTES/UNICODE
    case 0x8d: case 0x8e: case 0x96: info = {Arg::kLength, 8, 1}; return true;            // BINUNICODE8, BINBYTES8, BYTEARRAY8
    // protocol 0 text arguments
    case 'I': case 'L': case 'S': case 'V': case 'F': case 'P': case 'g':
      info = {Arg::kLine, 0, 1}; return true;
    case 'p': info = {Arg::kLine, 0, 0}; return true;  // PUT
    case 'c': info = {Arg::kTwoLines, 0, 1}; return true;  // GLOBAL
    case 'i': info = {Arg::kTwoLines, 0, 0}; return true;  // INST (pops to mark, pushes 1)
    default: return false;
  }
}

bool pops_to_mark(unsigned char op) {
  return op == 't' || op == 'e' || op == 'u' || op == 'd' || op == 'l' || op == '1' || op == 0x90 || op == 'i';
}
bool pushes_after_mark(unsigned char op) { return op == 't' || op == 'd' || op == 'l' || op == 'i'; }

}  // namespace

void check_pickle(const char* data, size_t size, const std::string& who) {
  const auto* p = reinterpret_cast<const unsigned char*>(data);
  std::vector<size_t> marks;  // stack heights at each open MARK
  size_t height = 0, memo = 0, at = 0;
  auto bad = [&](const char* what) {
    TORCH_CHECK(false, who, "the pickle is damaged or crafted: ", what, " at byte ", at, " of ", size);
  };
  auto line_end = [&](size_t from) {
    const void* nl = std::memchr(p + from, '\n', size - from);
    if (!nl) bad("a text argument without its end");
    return static_cast<size_t>(static_cast<const unsigned char*>(nl) - p) + 1;
  };
  while (at < size) {
    const unsigned char op = p[at];
    OpInfo info{};
    if (!op_info(op, info)) bad("an unknown opcode");
    size_t next = at + 1;
    uint64_t value = 0;
    if (info.arg == Arg::kFixed || info.arg == Arg::kLength) {
      if (size - next < static_cast<size_t>(info.bytes)) bad("an argument past the end");
      for (int i = info.bytes - 1; i >= 0; --i) value = (value << 8) | p[next + i];
      next += info.bytes;
      if (info.arg == Arg::kLength) {
        if (value > size - next) bad("a length past the end of the data");
        next += value;
      }
    } else if (info.arg == Arg::kLine) {
      next = line_end(next);
    } else if (info.arg == Arg::kTwoLines) {
      next = line_end(line_end(next));
    }
    // Memo: an unpickler sizes its table by the largest index; a well-formed pickle numbers its
    // objects 0, 1, 2, ... as it stores them.
    if (op == 'q' || op == 'r') {
      if (value > memo) bad("a memo index beyond the objects stored so far");
      memo = std::max<size_t>(memo, value + 1);
    } else if (op == 0x94 || op == 'p') {
      ++memo;
    } else if ((op == 'h' || op == 'j') && value >= memo) {
      bad("a memo lookup of an object never stored");
    }
    if (op == '(') {
      if (marks.size() >= kMaxPickleMarks) bad("MARKs nested too deep");
      marks.push_back(height);
    } else if (pops_to_mark(op)) {
      if (marks.empty()) bad("a pop to a MARK that was never set");
      height = marks.back() + (pushes_after_mark(op) ? 1 : 0);
      marks.pop_back();
    } else {
      if (info.stack < 0 && height < static_cast<size_t>(-info.stack) + (marks.empty() ? 0 : marks.back()))
        bad("an opcode that pops more than the stack holds");
      height += info.stack;
    }
    if (height > kMaxPickleStack) bad("a stack deeper than any state dict needs");
    at = next;
    if (op == '.') return;  // STOP
  }
  bad("no STOP opcode (truncated?)");
}

void check_zip_archive(const char* data, size_t size, const std::string& who) {
  const Bytes b{reinterpret_cast<const unsigned char*>(data), size, who};
  const CentralDirectory cd = find_central_directory(b);
  std::vector<Entry> entries;
  entries.reserve(cd.entries);
  size_t at = cd.offset;
  for (uint64_t i = 0; i < cd.entries; ++i) entries.push_back(read_entry(b, at, cd));
  std::sort(entries.begin(), entries.end(), [](const Entry& x, const Entry& y) { return x.data_begin < y.data_begin; });
  for (size_t i = 0; i < entries.size(); ++i) {
    const Entry& e = entries[i];
    TORCH_CHECK(i == 0 || entries[i - 1].data_begin + entries[i - 1].data_size <= e.data_begin, who,
                "the zip archive is damaged: entries \"", shown(entries[i - 1].name), "\" and \"", shown(e.name), "\" overlap");
    TORCH_CHECK(crc32_of(b.p + e.data_begin, e.data_size) == e.crc, who, "entry \"", shown(e.name),
                "\" fails its CRC-32 check (the file is damaged)");
  }
}

c10::IValue load_pickle_archive(const std::vector<char>& bytes, const std::string& who) {
  check_zip_archive(bytes.data(), bytes.size(), who);
  caffe2::serialize::PyTorchStreamReader archive(
      std::make_unique<caffe2::serialize::MemoryReadAdapter>(bytes.data(), bytes.size()));
  auto [pickle, pickle_size] = archive.getRecord("data.pkl");
  check_pickle(static_cast<const char*>(pickle.get()), pickle_size, who);
  size_t pos = 0;
  // (The size is copied: C++17 lambdas cannot capture a structured binding.)
  auto read = [&, data = static_cast<const char*>(pickle.get()), size = pickle_size](char* out, size_t n) {
    n = std::min(n, size - pos);
    std::memcpy(out, data + pos, n);
    pos += n;
    return n;
  };
  RecordSizes records;
  auto read_record = [&](const std::string& name) {
    auto [data, size] = archive.getRecord("data/" + name);
    records[data.get()] = size;
    return std::move(data);
  };
  torch::jit::Unpickler unpickler(read, nullptr, nullptr, read_record, std::nullopt);
  unpickler.set_version(archive.version());
  c10::IValue root = unpickler.parse_ivalue();
  check_tensors(root, records, who, 0);
  return root;
}

}  // namespace attnkit::detail
