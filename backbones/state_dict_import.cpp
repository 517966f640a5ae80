#include <attnkit/backbones/state_dict_import.h>

#include <nlohmann/json.hpp>
#include <torch/serialize.h>

#include <algorithm>
#include <cstring>
#include <fstream>
#include <iterator>
#include <sstream>

namespace attnkit {

namespace {

using json = nlohmann::json;

std::vector<char> read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  TORCH_CHECK(in, "read_state_dict: cannot open \"", path, "\"");
  std::vector<char> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  TORCH_CHECK(!in.bad(), "read_state_dict: error reading \"", path, "\"");
  return bytes;
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

// ---- torch.save files ----------------------------------------------------------------------------

void collect_tensors(const c10::IValue& value, const std::string& what, StateDict& out) {
  TORCH_CHECK(value.isGenericDict(), "read_state_dict: ", what, " holds a ", value.tagKind(),
              ", expected a dict of tensors (a state dict)");
  for (const auto& item : value.toGenericDict()) {
    if (!item.key().isString()) continue;
    if (item.value().isTensor()) out[item.key().toStringRef()] = item.value().toTensor();
  }
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
    } catch (const nlohmann::json::exception& e) {
      TORCH_CHECK(false, what, ": malformed safetensors entry \"", name, "\" (", e.what(), ")");
    }
  }
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
  c10::IValue value;
  try {
    value = torch::pickle_load(bytes);
  } catch (const c10::Error& e) {
    TORCH_CHECK(false, "read_state_dict: cannot read ", what, " as a torch.save file: ", e.what_without_backtrace());
  } catch (const std::exception& e) {
    TORCH_CHECK(false, "read_state_dict: cannot read ", what, " as a torch.save file: ", e.what());
  }
  StateDict out;
  if (value.isGenericDict()) {
    // A training checkpoint holds the state dict under one of these keys.
    for (const char* key : {"state_dict", "model_state_dict", "model", "state"}) {
      auto dict = value.toGenericDict();
      auto it = dict.find(c10::IValue(std::string(key)));
      if (it != dict.end() && it->value().isGenericDict()) {
        collect_tensors(it->value(), what + "[\"" + key + "\"]", out);
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
    auto it = std::find_if(std::begin(kSafetensorsDtypes), std::end(kSafetensorsDtypes),
                           [&](const DtypeName& d) { return d.type == t.scalar_type(); });
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

std::string ImportReport::summary() const {
  std::ostringstream s;
  s << loaded.size() << " tensors loaded";
  auto list = [&](const char* what, const std::vector<std::string>& names) {
    s << "; " << names.size() << " " << what;
    if (names.empty()) return;
    s << ": ";
    for (size_t i = 0; i < names.size(); ++i) s << (i ? ", " : "") << names[i];
  };
  list("missing", missing);
  list("unexpected", unexpected);
  return s.str();
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
