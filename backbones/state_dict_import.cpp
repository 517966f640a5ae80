#include <attnkit/backbones/state_dict_import.h>
#include <attnkit/backbones/import_check.h>
#include <attnkit/backbones/file_bytes.h>

#include "detail/torch_archive.h"

#include <caffe2/serialize/inline_container.h>
#include <caffe2/serialize/in_memory_adapter.h>
#include <c10/util/safe_numerics.h>
#include <nlohmann/json.hpp>

#include <memory>
#include <unordered_map>

#include <algorithm>
#include <cctype>
#include <cstring>
#include <fstream>
#include <iterator>
#include <sstream>

namespace attnkit {

namespace {

using json = nlohmann::json;

std::vector<char> read_file(const std::string& path) {
  // Far above any state dict this program imports (a ResNet-152 in float32 is 240 MB).
  constexpr size_t kMaxStateDictBytes = size_t{16} << 30;
  return read_regular_file(path, kMaxStateDictBytes, "read_state_dict");
}

bool starts_with(const std::string& s, const std::string& p) { return s.compare(0, p.size(), p) == 0; }

// ---- safetensors dtypes --------------------------------------------------------------------------

struct DtypeName {
  const char* name;
  torch::ScalarType type;
};
const DtypeName kSafetensorsDtypes[] = {
    {"F64", torch::kFloat64}, {"F32", torch::kFloat32}, {"F16", torch::kFloat16}, {"BF16", torch::kBFloat16},
    {"I64", torch::kInt64},   {"I32", torch::kInt32},   {"I16", torch::kInt16},   {"I8", torch::kInt8},
    {"U8", torch::kUInt8},    {"BOOL", torch::kBool},
};

// ---- torch.save files: a small unpickler ---------------------------------------------------------
// torch::pickle_load cannot read `torch.save(model.state_dict())`: its unpickler turns every
// collections.OrderedDict (the type of every nn.Module state dict) into None. This reader
// interprets the pickle opcodes torch.save emits (protocol 2, plus the few of protocols 3–5 that
// Python may use) and rebuilds tensors from the archive's storages. Anything else in the file
// (optimizer classes, numpy scalars, argparse namespaces, ...) becomes an opaque value and is
// ignored. Every read is bounds-checked: corrupt input is an error, never a crash.

struct PyVal;
using Val = std::shared_ptr<PyVal>;
struct PyVal {
  enum Kind { None, Bool, Int, Float, Str, Tuple, List, Dict, Tensor, Global, Opaque, Mark } kind = None;
  int64_t i = 0;
  double f = 0;
  std::string s;                              // Str; Global: "module.name"
  std::vector<Val> items;                     // Tuple, List
  std::vector<std::pair<Val, Val>> entries;   // Dict (insertion order)
  torch::Tensor tensor;
};

Val make(PyVal::Kind k) {
  auto v = std::make_shared<PyVal>();
  v->kind = k;
  return v;
}

const std::pair<const char*, torch::ScalarType> kStorageTypes[] = {
    {"DoubleStorage", torch::kFloat64}, {"FloatStorage", torch::kFloat32}, {"HalfStorage", torch::kFloat16},
    {"BFloat16Storage", torch::kBFloat16}, {"LongStorage", torch::kInt64}, {"IntStorage", torch::kInt32},
    {"ShortStorage", torch::kInt16},   {"CharStorage", torch::kInt8},     {"ByteStorage", torch::kUInt8},
    {"BoolStorage", torch::kBool},     {"ComplexFloatStorage", torch::kComplexFloat},
    {"ComplexDoubleStorage", torch::kComplexDouble}};

class TorchUnpickler {
 public:
  TorchUnpickler(caffe2::serialize::PyTorchStreamReader& archive, const std::string& what)
      : archive_(archive), what_(what) {}

  Val load() {
    auto [ptr, size] = archive_.getRecord("data.pkl");
    detail::check_pickle(static_cast<const char*>(ptr.get()), size, "");  // bounds before anything is built
    data_ = static_cast<const unsigned char*>(ptr.get());
    size_ = size;
    keep_ = std::move(ptr);
    while (true) {
      const unsigned char op = byte();
      switch (op) {
        case 0x80: byte(); break;                        // PROTO
        case 0x95: take(8); break;                       // FRAME
        case '.': check(stack_.size() == 1, "STOP"); return stack_.back();
        case '(': marks_.push_back(stack_.size()); break;
        case '}': push(make(PyVal::Dict)); break;
        case ']': push(make(PyVal::List)); break;
        case ')': push(make(PyVal::Tuple)); break;
        case 'd': { auto d = make(PyVal::Dict); auto xs = pop_mark(); set_items(d, xs); push(d); break; }
        case 'l': { auto l = make(PyVal::List); l->items = pop_mark(); push(l); break; }
        case 't': { auto t = make(PyVal::Tuple); t->items = pop_mark(); push(t); break; }
        case 0x85: case 0x86: case 0x87: {               // TUPLE1..3
          const size_t n = op - 0x84;
          check(stack_.size() >= n, "TUPLEn");
          auto t = make(PyVal::Tuple);
          t->items.assign(stack_.end() - n, stack_.end());
          stack_.resize(stack_.size() - n);
          push(t);
          break;
        }
        case 'X': push(str(le(4))); break;               // BINUNICODE
        case 0x8c: push(str(byte())); break;             // SHORT_BINUNICODE
        case 0x8d: push(str(le(8))); break;              // BINUNICODE8
        case 'T': push(str(le(4))); break;               // BINSTRING
        case 'U': push(str(byte())); break;              // SHORT_BINSTRING
        case 'B': push(str(le(4))); break;               // BINBYTES
        case 'C': push(str(byte())); break;              // SHORT_BINBYTES
        case 'J': push(integer(static_cast<int32_t>(le(4)))); break;
        case 'K': push(integer(byte())); break;
        case 'M': push(integer(le(2))); break;
        case 0x8a: {                                     // LONG1
          const size_t n = byte();
          check(n <= 8, "LONG1 wider than 64 bits");
          const unsigned char* p = take(n);
          uint64_t v = 0;
          for (size_t k = 0; k < n; ++k) v |= uint64_t(p[k]) << (8 * k);
          if (n > 0 && n < 8 && (p[n - 1] & 0x80)) v |= ~uint64_t(0) << (8 * n);  // sign-extend
          push(integer(static_cast<int64_t>(v)));
          break;
        }
        case 'G': {                                      // BINFLOAT, big-endian
          const unsigned char* p = take(8);
          uint64_t v = 0;
          for (int k = 0; k < 8; ++k) v = (v << 8) | p[k];
          auto x = make(PyVal::Float);
          std::memcpy(&x->f, &v, 8);
          push(x);
          break;
        }
        case 0x88: case 0x89: { auto b = make(PyVal::Bool); b->i = op == 0x88; push(b); break; }
        case 'N': push(make(PyVal::None)); break;
        case 'c': {                                      // GLOBAL "module\nname\n"
          auto g = make(PyVal::Global);
          g->s = line();  // two statements: the order of the two reads matters
          g->s += "." + line();
          push(g);
          break;
        }
        case 0x93: {                                     // STACK_GLOBAL
          auto name = pop(), module = pop();
          auto g = make(PyVal::Global);
          g->s = module->s + "." + name->s;
          push(g);
          break;
        }
        case 'R': { auto args = pop(), fn = pop(); push(reduce(fn, args)); break; }
        case 0x81: { pop(); pop(); push(make(PyVal::Opaque)); break; }  // NEWOBJ
        case 'b': pop(); check(!stack_.empty(), "BUILD"); break;        // BUILD: state ignored
        case 'q': memo(byte()); break;
        case 'r': memo(le(4)); break;
        case 0x94: memo(memo_.size()); break;            // MEMOIZE
        case 'h': push(get(byte())); break;
        case 'j': push(get(le(4))); break;
        case 's': { auto v = pop(), k = pop(); set_items(top(), {k, v}); break; }
        case 'u': { auto xs = pop_mark(); set_items(top(), xs); break; }
        case 'a': { auto v = pop(); append(top(), {v}); break; }
        case 'e': { auto xs = pop_mark(); append(top(), xs); break; }
        case 0x8f: push(make(PyVal::List)); break;       // EMPTY_SET (as a list)
        case 0x90: { auto xs = pop_mark(); append(top(), xs); break; }  // ADDITEMS
        case 'Q': push(persistent(pop())); break;        // BINPERSID
        case '0': pop(); break;
        case '1': pop_mark(); break;
        case '2': push(top()); break;
        default:
          TORCH_CHECK(false, "read_state_dict: ", what_, ": unsupported pickle opcode 0x", std::hex, int(op), std::dec,
                      " at byte ", pos_ - 1, " of data.pkl");
      }
    }
  }

 private:
  void check(bool ok, const char* op) {
    TORCH_CHECK(ok, "read_state_dict: ", what_, ": malformed pickle (", op, " at byte ", pos_, " of data.pkl)");
  }
  const unsigned char* take(size_t n) {
    check(n <= size_ - pos_, "unexpected end of data");
    const unsigned char* p = data_ + pos_;
    pos_ += n;
    return p;
  }
  unsigned char byte() { return *take(1); }
  uint64_t le(size_t n) {
    const unsigned char* p = take(n);
    uint64_t v = 0;
    for (size_t k = 0; k < n; ++k) v |= uint64_t(p[k]) << (8 * k);
    return v;
  }
  std::string line() {
    std::string out;
    for (char c; (c = static_cast<char>(byte())) != '\n';) out += c;
    return out;
  }
  Val str(uint64_t n) {
    check(n <= size_ - pos_, "string past the end");
    auto v = make(PyVal::Str);
    v->s.assign(reinterpret_cast<const char*>(take(n)), n);
    return v;
  }
  Val integer(int64_t x) {
    auto v = make(PyVal::Int);
    v->i = x;
    return v;
  }
  void push(Val v) { stack_.push_back(std::move(v)); }
  Val pop() {
    check(!stack_.empty() && (marks_.empty() || stack_.size() > marks_.back()), "pop from an empty stack");
    auto v = stack_.back();
    stack_.pop_back();
    return v;
  }
  Val& top() {
    check(!stack_.empty(), "empty stack");
    return stack_.back();
  }
  std::vector<Val> pop_mark() {
    check(!marks_.empty() && marks_.back() <= stack_.size(), "MARK");
    std::vector<Val> xs(stack_.begin() + static_cast<std::ptrdiff_t>(marks_.back()), stack_.end());
    stack_.resize(marks_.back());
    marks_.pop_back();
    return xs;
  }
  void memo(uint64_t idx) {
    check(!stack_.empty() && idx <= (1u << 26), "PUT");
    if (memo_.size() <= idx) memo_.resize(idx + 1);
    memo_[idx] = stack_.back();
  }
  Val get(uint64_t idx) {
    check(idx < memo_.size() && memo_[idx], "GET of an unknown memo entry");
    return memo_[idx];
  }
  void set_items(const Val& d, const std::vector<Val>& xs) {
    check(xs.size() % 2 == 0, "SETITEMS with an odd count");
    if (d->kind != PyVal::Dict) return;  // items of an opaque object
    for (size_t k = 0; k < xs.size(); k += 2) d->entries.emplace_back(xs[k], xs[k + 1]);
  }
  void append(const Val& l, const std::vector<Val>& xs) {
    if (l->kind == PyVal::List) l->items.insert(l->items.end(), xs.begin(), xs.end());
  }
  Val reduce(const Val& fn, const Val& args) {
    const std::string name = fn->kind == PyVal::Global ? fn->s : "";
    const auto& a = args->items;
    if (name == "collections.OrderedDict") return make(PyVal::Dict);
    // torch::pickle_save (TorchScript's pickler) wraps typed containers: restore_type_tag(dict, "Dict[str,Tensor]"),
    // build_intlist([...]), ...; the wrapped value is the first argument.
    if (name == "torch.jit._pickle.restore_type_tag" || name.rfind("torch.jit._pickle.build_", 0) == 0) {
      check(!a.empty(), "torch.jit._pickle arguments");
      return a[0];
    }
    if (name == "torch._utils._rebuild_tensor_v2" || name == "torch._utils._rebuild_tensor") {
      check(a.size() >= 4 && a[0]->kind == PyVal::Tensor && a[1]->kind == PyVal::Int && a[2]->kind == PyVal::Tuple &&
                a[3]->kind == PyVal::Tuple,
            "_rebuild_tensor arguments");
      std::vector<int64_t> sizes, strides;
      for (const auto& x : a[2]->items) { check(x->kind == PyVal::Int && x->i >= 0, "tensor size"); sizes.push_back(x->i); }
      for (const auto& x : a[3]->items) { check(x->kind == PyVal::Int && x->i >= 0, "tensor stride"); strides.push_back(x->i); }
      check(sizes.size() == strides.size(), "tensor sizes and strides");
      const auto& storage = a[0]->tensor;
      int64_t last = a[1]->i;  // largest element index the view touches
      bool empty = false;
      for (size_t k = 0; k < sizes.size(); ++k) {
        if (sizes[k] == 0) empty = true;
        else last += (sizes[k] - 1) * strides[k];
      }
      check(a[1]->i >= 0 && (empty || last < storage.numel()), "tensor view outside its storage");
      // State dicts are dense: a view with more elements than its storage holds (stride 0, overlaps)
      // would turn a small file into a huge allocation when it is copied.
      int64_t elements = 1;
      bool overflow = false;
      for (const int64_t s : sizes) overflow |= c10::mul_overflows(elements, s, &elements);
      check(empty || (!overflow && elements <= storage.numel()),
            "tensor with more elements than its storage holds (stride 0 or overlapping)");
      auto v = make(PyVal::Tensor);
      v->tensor = empty ? torch::empty(sizes, storage.options()) : storage.as_strided(sizes, strides, a[1]->i);
      return v;
    }
    if (name == "torch._utils._rebuild_parameter" || name == "torch._utils._rebuild_parameter_with_state") {
      check(!a.empty(), "_rebuild_parameter arguments");
      return a[0];
    }
    return make(PyVal::Opaque);
  }
  Val persistent(const Val& pid) {
    const auto& a = pid->items;
    check(pid->kind == PyVal::Tuple && a.size() >= 5 && a[0]->kind == PyVal::Str && a[0]->s == "storage" &&
              a[1]->kind == PyVal::Global && a[2]->kind == PyVal::Str && a[4]->kind == PyVal::Int,
          "persistent id");
    const std::string& key = a[2]->s;
    auto cached = storages_.find(key);
    auto v = make(PyVal::Tensor);
    if (cached != storages_.end()) {
      v->tensor = cached->second;
      return v;
    }
    const std::string type = a[1]->s.substr(a[1]->s.rfind('.') + 1);
    auto it = std::find_if(std::begin(kStorageTypes), std::end(kStorageTypes),
                           [&](const auto& t) { return type == t.first; });
    TORCH_CHECK(it != std::end(kStorageTypes), "read_state_dict: ", what_, ": unsupported storage type ", a[1]->s);
    const std::string record = "data/" + key;
    TORCH_CHECK(archive_.hasRecord(record), "read_state_dict: ", what_, ": missing record ", record);
    const int64_t numel = a[4]->i;
    const size_t nbytes = static_cast<size_t>(numel) * c10::elementSize(it->second);
    TORCH_CHECK(numel >= 0 && archive_.getRecordSize(record) == nbytes, "read_state_dict: ", what_, ": record ",
                record, " has ", archive_.getRecordSize(record), " bytes, expected ", nbytes);
    auto t = torch::empty({numel}, torch::TensorOptions().dtype(it->second));
    if (nbytes) archive_.getRecord(record, t.data_ptr(), nbytes);
    storages_[key] = t;
    v->tensor = t;
    return v;
  }

  caffe2::serialize::PyTorchStreamReader& archive_;
  std::string what_;
  at::DataPtr keep_;
  const unsigned char* data_ = nullptr;
  size_t size_ = 0, pos_ = 0;
  std::vector<Val> stack_, memo_;
  std::vector<size_t> marks_;
  std::unordered_map<std::string, torch::Tensor> storages_;
};

Val find_key(const Val& dict, const std::string& key) {
  for (const auto& [k, v] : dict->entries)
    if (k->kind == PyVal::Str && k->s == key) return v;
  return nullptr;
}

void collect_tensors(const Val& value, const std::string& what, StateDict& out) {
  TORCH_CHECK(value->kind == PyVal::Dict, "read_state_dict: ", what, " does not hold a dict of tensors (a state dict)");
  for (const auto& [k, v] : value->entries)
    if (k->kind == PyVal::Str && v->kind == PyVal::Tensor) out[k->s] = v->tensor;
}

}  // namespace

// ---- reading -------------------------------------------------------------------------------------

StateDict parse_safetensors(const std::vector<char>& bytes, const std::string& what) {
  TORCH_CHECK(bytes.size() >= 8, what, ": too short for a safetensors file (", bytes.size(), " bytes)");
  uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | static_cast<unsigned char>(bytes[i]);
  TORCH_CHECK(header_len <= bytes.size() - 8, what, ": safetensors header length ", header_len,
              " exceeds the file (", bytes.size(), " bytes; truncated?)");
  json header;
  try {
    header = json::parse(bytes.begin() + 8, bytes.begin() + 8 + static_cast<std::ptrdiff_t>(header_len));
  } catch (const std::exception& e) {
    TORCH_CHECK(false, what, ": safetensors header is not valid JSON (", e.what(), ")");
  }
  TORCH_CHECK(header.is_object(), what, ": safetensors header must be a JSON object");
  const char* data = bytes.data() + 8 + header_len;
  const uint64_t data_size = bytes.size() - 8 - header_len;
  StateDict out;
  struct Range {
    uint64_t begin, end;
    std::string name;
  };
  std::vector<Range> ranges;
  for (const auto& [name, entry] : header.items()) {
    if (name == "__metadata__") continue;
    try {
      const std::string dtype = entry.at("dtype").get<std::string>();
      auto it = std::find_if(std::begin(kSafetensorsDtypes), std::end(kSafetensorsDtypes),
                             [&](const DtypeName& d) { return dtype == d.name; });
      TORCH_CHECK(it != std::end(kSafetensorsDtypes), what, ": tensor \"", name, "\" has unsupported dtype ", dtype);
      std::vector<int64_t> shape;
      uint64_t numel = 1;
      for (const auto& d : entry.at("shape")) {
        const int64_t v = d.get<int64_t>();
        TORCH_CHECK(v >= 0, what, ": tensor \"", name, "\" has a negative dimension");
        // No shape may hold more elements than the file has bytes (nor overflow the count).
        TORCH_CHECK(v == 0 || numel <= data_size / static_cast<uint64_t>(v), what, ": tensor \"", name,
                    "\" has a shape larger than the file's data (", data_size, " bytes)");
        shape.push_back(v);
        numel *= static_cast<uint64_t>(v);
      }
      const auto& offs = entry.at("data_offsets");
      TORCH_CHECK(offs.is_array() && offs.size() == 2, what, ": tensor \"", name, "\": data_offsets must be [begin, end]");
      const uint64_t begin = offs[0].get<uint64_t>(), end = offs[1].get<uint64_t>();
      TORCH_CHECK(begin <= end && end <= data_size, what, ": tensor \"", name, "\" has data_offsets [", begin, ", ",
                  end, "] outside the data (", data_size, " bytes; truncated?)");
      const uint64_t nbytes = numel * c10::elementSize(it->type);
      TORCH_CHECK(end - begin == nbytes, what, ": tensor \"", name, "\" of shape ", c10::IntArrayRef(shape), " and dtype ",
                  dtype, " needs ", nbytes, " bytes, data_offsets give ", end - begin);
      auto t = torch::empty(shape, torch::TensorOptions().dtype(it->type));
      if (nbytes) std::memcpy(t.data_ptr(), data + begin, nbytes);
      out[name] = t;
      ranges.push_back({begin, end, name});
    } catch (const nlohmann::json::exception& e) {
      TORCH_CHECK(false, what, ": malformed safetensors entry \"", name, "\" (", e.what(), ")");
    }
  }
  // As the safetensors format (and its Python reader) requires: the tensors' byte ranges tile the
  // data exactly, in order, with no gap, overlap or trailing bytes.
  std::sort(ranges.begin(), ranges.end(), [](const Range& a, const Range& b) { return a.begin < b.begin; });
  uint64_t next = 0;
  for (const auto& r : ranges) {
    TORCH_CHECK(r.begin == next, what, ": tensor \"", r.name, "\" has data_offsets [", r.begin, ", ", r.end, "], but ",
                next == 0 ? std::string("the data starts at 0") : "the previous tensor ends at " + std::to_string(next),
                " (overlapping or shifted offsets)");
    next = r.end;
  }
  TORCH_CHECK(next == data_size, what, ": ", data_size - next, " bytes after the last tensor's data (data_offsets "
              "must cover the data exactly)");
  return out;
}

StateDict read_state_dict(const std::string& path) {
  const auto bytes = read_file(path);
  const std::string what = "\"" + path + "\"";
  TORCH_CHECK(!bytes.empty(), "read_state_dict: ", what, " is empty");
  // torch.save's zip format starts with a local file header ("PK\x03\x04"); safetensors with its
  // header length then '{'.
  const bool zip = bytes.size() >= 4 && std::memcmp(bytes.data(), "PK\x03\x04", 4) == 0;
  if (!zip) {
    if (bytes.size() > 8 && bytes[8] == '{') return parse_safetensors(bytes, what);
    TORCH_CHECK(!(bytes.size() > 2 && static_cast<unsigned char>(bytes[0]) == 0x80), "read_state_dict: ", what,
                " is in PyTorch's legacy (pre-1.6) format; re-save it with torch.save(..., "
                "_use_new_zipfile_serialization=True) or as .safetensors");
    TORCH_CHECK(false, "read_state_dict: ", what, " is neither a torch.save zip file nor a safetensors file");
  }
  Val value;
  try {
    detail::check_zip_archive(bytes.data(), bytes.size(), "");  // before miniz reads a byte of it
    caffe2::serialize::PyTorchStreamReader archive(
        std::make_shared<caffe2::serialize::MemoryReadAdapter>(bytes.data(), static_cast<off_t>(bytes.size())));
    value = TorchUnpickler(archive, what).load();
  } catch (const c10::Error& e) {
    TORCH_CHECK(false, "read_state_dict: cannot read ", what, " as a torch.save file: ", e.what_without_backtrace());
  } catch (const std::exception& e) {
    TORCH_CHECK(false, "read_state_dict: cannot read ", what, " as a torch.save file: ", e.what());
  }
  StateDict out;
  if (value->kind == PyVal::Dict) {
    // A training checkpoint holds the state dict under one of these keys.
    for (const char* key : {"state_dict", "model_state_dict", "model", "state"}) {
      auto inner = find_key(value, key);
      if (inner && inner->kind == PyVal::Dict) {
        collect_tensors(inner, what + "[\"" + key + "\"]", out);
        TORCH_CHECK(!out.empty(), "read_state_dict: ", what, "[\"", key, "\"] holds no tensors");
        return out;
      }
    }
  }
  collect_tensors(value, what, out);
  TORCH_CHECK(!out.empty(), "read_state_dict: ", what, " holds no tensors");
  return out;
}

void write_safetensors(const StateDict& state, const std::string& path) {
  json header = json::object();
  std::vector<torch::Tensor> tensors;
  uint64_t offset = 0;
  for (const auto& [name, t] : state) {
    const auto type = t.scalar_type();
    auto it = std::find_if(std::begin(kSafetensorsDtypes), std::end(kSafetensorsDtypes),
                           [type](const DtypeName& d) { return d.type == type; });
    TORCH_CHECK(it != std::end(kSafetensorsDtypes), "write_safetensors: tensor \"", name, "\" has unsupported dtype ",
                t.scalar_type());
    auto c = t.detach().to(torch::kCPU).contiguous();
    const uint64_t n = c.numel() * c.element_size();
    header[name] = {{"dtype", it->name}, {"shape", c.sizes().vec()}, {"data_offsets", {offset, offset + n}}};
    offset += n;
    tensors.push_back(c);
  }
  std::string h = header.dump();
  h.append((8 - h.size() % 8) % 8, ' ');  // the format aligns the data to 8 bytes
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  TORCH_CHECK(out, "write_safetensors: cannot open \"", path, "\" for writing");
  uint64_t len = h.size();
  char len_bytes[8];
  for (int i = 0; i < 8; ++i) len_bytes[i] = static_cast<char>((len >> (8 * i)) & 0xff);
  out.write(len_bytes, 8);
  out.write(h.data(), static_cast<std::streamsize>(h.size()));
  for (const auto& c : tensors) out.write(static_cast<const char*>(c.data_ptr()), c.numel() * c.element_size());
  TORCH_CHECK(out.good(), "write_safetensors: error writing \"", path, "\"");
}

// ---- key maps ------------------------------------------------------------------------------------

namespace {

/// One renaming: in `layout`, the first occurrence of `from` in a key becomes `to`.
struct KeyRule {
  const char* layout;
  const char* from;
  const char* to;
};

// Order matters within a layout: the block attention is renamed first, then names inside it.
const KeyRule kKeyRules[] = {
    // timm: create_attn() modules live at `se` whatever their kind.
    {"timm", ".se.", ".attn."},
    {"timm", ".attn.spatial.conv.conv.", ".attn.spatial.conv."},
    {"timm", ".attn.spatial.conv.bn.", ".attn.spatial.bn."},
    // Official CBAM (Jongchan/attention-module, MODELS/model_resnet.py + cbam.py).
    {"cbam-official", ".cbam.ChannelGate.mlp.1.", ".attn.channel.fc1."},
    {"cbam-official", ".cbam.ChannelGate.mlp.3.", ".attn.channel.fc2."},
    {"cbam-official", ".cbam.SpatialGate.spatial.conv.", ".attn.spatial.conv."},
    {"cbam-official", ".cbam.SpatialGate.spatial.bn.", ".attn.spatial.bn."},
};

}  // namespace

const std::vector<std::string>& state_dict_layouts() {
  static const std::vector<std::string> names = {"auto", "attnkit", "torchvision", "timm", "cbam-official"};
  return names;
}

std::string detect_layout(const StateDict& state) {
  bool se = false;
  for (const auto& item : state) {
    if (item.first.find(".cbam.ChannelGate.") != std::string::npos) return "cbam-official";
    se = se || item.first.find(".se.") != std::string::npos;
  }
  return se ? "timm" : "torchvision";
}

StateDict map_state_dict(const StateDict& state, const std::string& layout_in) {
  const auto& layouts = state_dict_layouts();
  if (std::find(layouts.begin(), layouts.end(), layout_in) == layouts.end()) {
    std::string valid;
    for (const auto& n : layouts) valid += (valid.empty() ? "\"" : ", \"") + n + "\"";
    TORCH_CHECK(false, "map_state_dict: unknown layout \"", layout_in, "\"; valid layouts: ", valid);
  }
  StateDict stripped;
  for (const auto& [k, v] : state) stripped[starts_with(k, "module.") ? k.substr(7) : k] = v;
  const std::string layout = layout_in == "auto" ? detect_layout(stripped) : layout_in;
  StateDict out;
  for (const auto& [k, v] : stripped) {
    std::string key = k;
    for (const auto& rule : kKeyRules) {
      if (layout != rule.layout) continue;
      const auto pos = key.find(rule.from);
      if (pos != std::string::npos) key.replace(pos, std::strlen(rule.from), rule.to);
    }
    TORCH_CHECK(out.emplace(key, v).second, "map_state_dict: two entries map to \"", key, "\"");
  }
  return out;
}

// ---- loading -------------------------------------------------------------------------------------

namespace {

/// The module pattern a key belongs to: every number becomes "*", and the key is cut after an
/// attention block ("layer3.5.attn.fc1.weight" → "layer*.*.attn.*") or at its tensor's name
/// ("layer1.0.conv1.weight" → "layer*.*.conv1.*").
std::string key_group(const std::string& key) {
  std::vector<std::string> names;
  std::istringstream parts(key);
  for (std::string part; std::getline(parts, part, '.');) {
    std::string masked;
    for (size_t i = 0; i < part.size(); ++i) {
      if (!std::isdigit(static_cast<unsigned char>(part[i]))) masked += part[i];
      else if (i == 0 || !std::isdigit(static_cast<unsigned char>(part[i - 1]))) masked += '*';
    }
    names.push_back(masked);
  }
  std::string out;
  for (size_t i = 0; i + 1 < names.size(); ++i) {
    out += names[i] + ".";
    if (names[i] == "attn") break;
  }
  return out + "*";
}

/// A few names as they are; more as the first few and their groups with counts, so that 80
/// missing attention keys read as one line ("a, b, c, ... (all in layer*.*.attn.*)").
std::string describe_keys(const std::vector<std::string>& names) {
  constexpr size_t kListed = 5, kFirst = 3, kGroups = 6;
  std::ostringstream s;
  const size_t listed = names.size() <= kListed ? names.size() : kFirst;
  for (size_t i = 0; i < listed; ++i) s << (i ? ", " : "") << names[i];
  if (listed == names.size()) return s.str();
  std::vector<std::pair<std::string, size_t>> groups;  // in order of first appearance
  for (const auto& n : names) {
    const std::string g = key_group(n);
    auto it = std::find_if(groups.begin(), groups.end(), [&](const auto& e) { return e.first == g; });
    if (it == groups.end()) groups.emplace_back(g, 1);
    else ++it->second;
  }
  s << ", ... (";
  if (groups.size() == 1) {
    s << "all in " << groups[0].first;
  } else {
    for (size_t i = 0; i < groups.size() && i < kGroups; ++i)
      s << (i ? ", " : "") << groups[i].first << ": " << groups[i].second;
    if (groups.size() > kGroups) s << ", ...";
  }
  s << ")";
  return s.str();
}

}  // namespace

bool is_attention_key(const std::string& key) {
  return key.rfind("attn.", 0) == 0 || key.find(".attn.") != std::string::npos;
}

std::string ImportReport::summary() const {
  std::ostringstream s;
  s << loaded.size() << " tensors loaded";
  auto list = [&](const char* what, const std::vector<std::string>& names) {
    s << "; " << names.size() << " " << what;
    if (!names.empty()) s << ": " << describe_keys(names);
  };
  list("missing", missing);
  list("unexpected", unexpected);
  return s.str();
}

void check_import(const ImportReport& report, const ImportPolicy& policy, const std::string& what) {
  TORCH_CHECK(!report.loaded.empty(), "import: no tensor of ", what,
              " matches the model (wrong architecture or key layout?): ", report.summary());
  std::vector<std::string> needed;  // missing keys outside the attention blocks
  for (const auto& k : report.missing)
    if (!is_attention_key(k)) needed.push_back(k);
  TORCH_CHECK(policy.allow_missing || needed.empty(), "import: ", what, " lacks ", needed.size(),
              " tensors the model needs (", describe_keys(needed),
              "); pass --allow-missing to keep them at their initialisation");
  TORCH_CHECK(policy.allow_unexpected || report.unexpected.empty(), "import: ", what, " has ",
              report.unexpected.size(), " tensors the model has no place for (", describe_keys(report.unexpected),
              "); pass --allow-unexpected to ignore them");
}

namespace {
/// Whether a and b are equal after dropping trailing 1s (Linear [O, I] vs 1×1 conv [O, I, 1, 1]).
bool same_but_trailing_ones(c10::IntArrayRef a, c10::IntArrayRef b) {
  auto trim = [](c10::IntArrayRef s) {
    auto v = s.vec();
    while (v.size() > 1 && v.back() == 1) v.pop_back();
    return v;
  };
  return trim(a) == trim(b);
}
}  // namespace

ImportReport load_state_dict(torch::nn::Module& module, const StateDict& state, bool strict) {
  ImportReport report;
  auto params = module.named_parameters(/*recurse=*/true);
  auto buffers = module.named_buffers(/*recurse=*/true);
  std::vector<std::pair<std::string, torch::Tensor>> targets;
  for (const auto& p : params) targets.emplace_back(p.key(), p.value());
  for (const auto& b : buffers) targets.emplace_back(b.key(), b.value());
  // Check everything before copying anything, so a failed load leaves the module unchanged.
  std::vector<std::pair<torch::Tensor, torch::Tensor>> copies;
  for (const auto& [name, dst] : targets) {
    auto it = state.find(name);
    if (it == state.end()) {
      report.missing.push_back(name);
      continue;
    }
    const auto& src = it->second;
    TORCH_CHECK(src.defined(), "load_state_dict: \"", name, "\" is an undefined tensor");
    // Copying a complex tensor into a real one would keep the real part with only a warning.
    TORCH_CHECK(!src.is_complex() || dst.is_complex(), "load_state_dict: \"", name, "\" is complex (",
                src.scalar_type(), ") but the model's tensor is real (", dst.scalar_type(), ")");
    if (src.sizes() != dst.sizes()) {
      TORCH_CHECK(same_but_trailing_ones(src.sizes(), dst.sizes()), "load_state_dict: shape mismatch for \"", name,
                  "\": the state dict has ", src.sizes(), ", the model expects ", dst.sizes());
    }
    copies.emplace_back(dst, src.reshape(dst.sizes()));
    report.loaded.push_back(name);
  }
  for (const auto& [name, t] : state) {
    bool known = params.contains(name) || buffers.contains(name);
    if (!known) report.unexpected.push_back(name);
  }
  TORCH_CHECK(!strict || (report.missing.empty() && report.unexpected.empty()),
              "load_state_dict (strict): keys do not match: ", report.summary());
  torch::NoGradGuard no_grad;
  for (auto& [dst, src] : copies) dst.copy_(src);
  return report;
}

ImportReport import_state_dict(torch::nn::Module& module, const std::string& path, const std::string& layout,
                               bool strict) {
  return load_state_dict(module, map_state_dict(read_state_dict(path), layout), strict);
}

}  // namespace attnkit
