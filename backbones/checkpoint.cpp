#include <attnkit/backbones/checkpoint.h>
#include <attnkit/backbones/file_bytes.h>

#include "detail/torch_archive.h"
#include <attnkit/backbones/named_enum.h>
#include <attnkit/backbones/unfinished_file.h>

#include <nlohmann/json.hpp>
#include <torch/serialize.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fcntl.h>
#include <fstream>
#include <iterator>
#include <string_view>
#include <utility>
#include <sys/stat.h>
#include <unistd.h>

namespace attnkit {

namespace {

using json = nlohmann::json;
constexpr const char* kFormatTag = "attnkit-checkpoint";

// ---- checksum: FNV-1a's step over 64-bit little-endian words (8× fewer multiplies than per byte) -

class Hasher {
 public:
  void feed(const void* data, size_t n) {
    const auto* p = static_cast<const unsigned char*>(data);
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
      uint64_t w;
      std::memcpy(&w, p + i, 8);
      step(w);
    }
    uint64_t tail = 0;
    for (size_t k = 0; i + k < n; ++k) tail |= uint64_t(p[i + k]) << (8 * k);
    step(tail);
    step(static_cast<uint64_t>(n));
  }
  void feed(const std::string& s) { feed(s.data(), s.size()); }
  std::string hex() const {
    char buf[17];
    std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(h_));
    return buf;
  }

 private:
  void step(uint64_t w) {
    h_ ^= w;
    h_ *= 0x100000001b3ULL;
  }
  uint64_t h_ = 0xcbf29ce484222325ULL;
};

std::string checksum(const std::string& config, const StateDict& state) {
  Hasher h;
  h.feed(config);
  for (const auto& [name, t] : state) {
    h.feed(name);
    h.feed(std::string(c10::toString(t.scalar_type())));
    h.feed(t.sizes().data(), t.sizes().size() * sizeof(int64_t));
    auto c = t.contiguous();
    h.feed(c.data_ptr(), c.numel() * c.element_size());
  }
  return h.hex();
}

// ---- JSON --------------------------------------------------------------------------------------

json to_json(const ModelConfig& c) {
  return {{"name", c.name()},
          {"family", to_string(c.family)},
          {"depth", c.depth},
          {"attention", c.attention},
          {"num_classes", c.num_classes},
          {"in_channels", c.in_channels},
          {"width", c.width},
          {"stem", to_string(c.stem)},
          {"shortcut", to_string(c.shortcut)}};
}

json to_json(const Preprocessing& p) {
  return {{"input_height", p.input_height},      {"input_width", p.input_width}, {"resize", to_string(p.resize)},
          {"resize_size", p.resize_size},        {"crop", to_string(p.crop)},    {"color_order", to_string(p.color_order)},
          {"pixel_scale", p.pixel_scale},   {"mean", p.mean},               {"std", p.std}};
}

/// Reads field `key` of `obj` as T; errors name the file and the dotted path of the field.
template <typename T>
T field(const json& obj, const char* key, const std::string& where, const std::string& file) {
  try {
    return obj.at(key).get<T>();
  } catch (const json::exception& e) {
    TORCH_CHECK(false, "read_checkpoint: \"", file, "\": config field ", where, ".", key, " is missing or has the wrong type (",
                e.what(), ")");
  }
}

/// " at <the config's line where parsing failed>" (the config is written one field per line), or "" where
/// the error does not say. A non-finite number (1e999, NaN, Infinity) is such an error: JSON has none.
std::string json_error_line(const std::string& text, const json::exception& e) {
  size_t at = std::string::npos;
  if (const auto* parse = dynamic_cast<const json::parse_error*>(&e)) {
    at = parse->byte > 0 ? parse->byte - 1 : 0;
  } else {  // "number overflow parsing '1e999'": nlohmann names the literal, not where it is
    const std::string what = e.what();
    const auto open = what.find('\''), close = what.rfind('\'');
    if (open != std::string::npos && close > open) at = text.find(what.substr(open + 1, close - open - 1));
  }
  if (at >= text.size()) return "";
  const auto newline = text.rfind('\n', at);
  const auto begin = text.find_first_not_of(' ', newline == std::string::npos ? 0 : newline + 1);
  const auto end = std::min(text.find('\n', at), text.size());
  return begin < end ? " at " + text.substr(begin, end - begin) : "";
}

/// Reads the optional number `key` of `obj`: NaN when it is absent or null (not recorded).
double optional_number(const json& obj, const char* key, const std::string& where, const std::string& file) {
  if (!obj.contains(key) || obj.at(key).is_null()) return std::nan("");
  return field<double>(obj, key, where, file);
}

/// Only the recorded numbers: JSON has no NaN (nlohmann would write null, which reads back as absent anyway).
json to_json(const Calibration& c) {
  json j = {{"temperature", c.temperature}, {"split", c.split}, {"images", c.images}, {"bins", c.bins}};
  const std::pair<const char*, double> numbers[] = {
      {"nll_before", c.nll_before}, {"nll_after", c.nll_after}, {"ece_before", c.ece_before}, {"ece_after", c.ece_after}};
  for (const auto& [key, value] : numbers)
    if (std::isfinite(value)) j[key] = value;
  return j;
}

Calibration calibration_from_json(const json& obj, const std::string& file) {
  TORCH_CHECK(obj.is_object(), "read_checkpoint: \"", file, "\": config field config.calibration must be an object");
  Calibration c;
  c.temperature = field<double>(obj, "temperature", "calibration", file);
  if (obj.contains("split")) c.split = field<std::string>(obj, "split", "calibration", file);
  if (obj.contains("images")) c.images = field<int64_t>(obj, "images", "calibration", file);
  if (obj.contains("bins")) c.bins = field<int64_t>(obj, "bins", "calibration", file);
  c.nll_before = optional_number(obj, "nll_before", "calibration", file);
  c.nll_after = optional_number(obj, "nll_after", "calibration", file);
  c.ece_before = optional_number(obj, "ece_before", "calibration", file);
  c.ece_after = optional_number(obj, "ece_after", "calibration", file);
  try {
    c.validate();
  } catch (const c10::Error& e) {
    TORCH_CHECK(false, "read_checkpoint: \"", file, "\": config field ", e.what_without_backtrace());
  }
  return c;
}

/// Reads field `key` of `obj` as the name of an enum's value, parsed by `parse`; an unknown name is an
/// error naming the file and the field and listing the valid names.
template <typename E>
E enum_field(const json& obj, const char* key, const std::string& where, const std::string& file,
             E (*parse)(const std::string&, const std::string&)) {
  const auto name = field<std::string>(obj, key, where, file);
  try {
    return parse(name, "config field " + where + "." + key);
  } catch (const c10::Error& e) {
    TORCH_CHECK(false, "read_checkpoint: \"", file, "\": ", e.what_without_backtrace());
  }
}

}  // namespace

// ---- atomic files ------------------------------------------------------------------------------

namespace {

/// c10::Error "cannot <what> <path>: <errno text>" (the wording the apps have always printed).
[[noreturn]] void fail_errno(int err, const std::string& what, const std::string& path) {
  C10_THROW_ERROR(Error, c10::str("cannot ", what, " ", path, ": ", std::strerror(err)));
}

void write_all(int fd, std::string_view bytes, const std::string& tmp) {
  while (!bytes.empty()) {
    const ssize_t n = ::write(fd, bytes.data(), bytes.size());
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) fail_errno(errno, "write", tmp);
    bytes.remove_prefix(static_cast<size_t>(n));
  }
}

}  // namespace

void write_file_atomically(const std::string& path, std::string_view bytes) {
  const auto slash = path.find_last_of('/');
  const std::string dir = slash == std::string::npos ? "." : (slash == 0 ? "/" : path.substr(0, slash));
  remove_stale_unfinished_files(path, "tmp");  // left by a writer that was killed (SIGKILL, power cut)
  std::string pattern = unfinished_name_prefix(path, "tmp") + "XXXXXX";
  const int fd = ::mkstemp(pattern.data());
  if (fd < 0) fail_errno(errno, "create a temporary file for", path);
  UnfinishedFile tmp(pattern);  // removed on any failure below, and by a SIGINT/SIGTERM handler
  try {
    write_all(fd, bytes, tmp.path());
    ::fchmod(fd, 0644);  // mkstemp's 0600 would make the file private by surprise
    if (::fsync(fd) != 0) fail_errno(errno, "flush", tmp.path());
  } catch (...) {
    ::close(fd);
    throw;
  }
  if (::close(fd) != 0) fail_errno(errno, "flush", tmp.path());
  if (::rename(tmp.path().c_str(), path.c_str()) != 0) fail_errno(errno, "rename a temporary file onto", path);
  tmp.keep();
  // The rename itself is durable only once the folder is synced; best effort (some filesystems refuse).
  const int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY);
  if (dfd >= 0) {
    ::fsync(dfd);
    ::close(dfd);
  }
}

std::string detail::checkpoint_checksum(const std::string& config, const StateDict& state) {
  return checksum(config, state);
}

// ---- Preprocessing -----------------------------------------------------------------------------

namespace {
const detail::EnumName<Resize> kResizes[] = {
    {Resize::ShorterSide, "shorter_side"}, {Resize::Stretch, "stretch"}, {Resize::None, "none"}};
const detail::EnumName<Crop> kCrops[] = {{Crop::Center, "center"}, {Crop::None, "none"}};
const detail::EnumName<ColorOrder> kColorOrders[] = {
    {ColorOrder::RGB, "RGB"}, {ColorOrder::BGR, "BGR"}, {ColorOrder::Gray, "GRAY"}};
}  // namespace

const char* to_string(Resize resize) { return detail::enum_name(resize, kResizes); }
const char* to_string(Crop crop) { return detail::enum_name(crop, kCrops); }
const char* to_string(ColorOrder order) { return detail::enum_name(order, kColorOrders); }
Resize parse_resize(const std::string& name, const std::string& field) {
  return detail::parse_enum(name, kResizes, field);
}
Crop parse_crop(const std::string& name, const std::string& field) { return detail::parse_enum(name, kCrops, field); }
ColorOrder parse_color_order(const std::string& name, const std::string& field) {
  return detail::parse_enum(name, kColorOrders, field);
}

Preprocessing Preprocessing::imagenet() { return Preprocessing(); }

Preprocessing Preprocessing::small(int64_t size, std::vector<double> mean, std::vector<double> std) {
  Preprocessing p;
  p.input_height = p.input_width = size;
  p.resize = Resize::Stretch;
  p.resize_size = size;
  p.crop = Crop::None;
  p.mean = std::move(mean);
  p.std = std::move(std);
  return p;
}

void Preprocessing::validate(int64_t channels) const {
  TORCH_CHECK(input_height > 0 && input_width > 0, "Preprocessing: input_height and input_width must be positive, got ",
              input_height, "x", input_width);
  TORCH_CHECK(resize != Resize::ShorterSide || resize_size > 0, "Preprocessing: resize_size must be positive, got ",
              resize_size);
  TORCH_CHECK((color_order == ColorOrder::Gray) == (channels == 1), "Preprocessing: color_order \"", color_order,
              "\" does not fit a model with ", channels, " input channels (GRAY is for 1 channel)");
  TORCH_CHECK(pixel_scale > 0, "Preprocessing: pixel_scale must be positive, got ", pixel_scale);
  TORCH_CHECK(static_cast<int64_t>(mean.size()) == channels && static_cast<int64_t>(std.size()) == channels,
              "Preprocessing: mean and std must have one entry per input channel (", channels, "), got ", mean.size(),
              " and ", std.size());
  for (double s : std) TORCH_CHECK(s > 0, "Preprocessing: std entries must be positive, got ", s);
}

bool Preprocessing::operator==(const Preprocessing& o) const {
  return input_height == o.input_height && input_width == o.input_width && resize == o.resize &&
         resize_size == o.resize_size && crop == o.crop && color_order == o.color_order &&
         pixel_scale == o.pixel_scale && mean == o.mean && std == o.std;
}

// ---- Calibration -------------------------------------------------------------------------------

// The messages start with the field's dotted name: read_checkpoint puts "config field " before them.
void Calibration::validate() const {
  TORCH_CHECK(std::isfinite(temperature) && temperature > 0, "calibration.temperature must be a finite number > 0, got ",
              temperature);
  TORCH_CHECK(bins >= 1, "calibration.bins must be >= 1, got ", bins);
  TORCH_CHECK(images >= 0, "calibration.images must be >= 0, got ", images);
}

// ---- writing -----------------------------------------------------------------------------------

Checkpoint make_checkpoint(Backbone& model, std::vector<std::string> class_names, Preprocessing preprocessing,
                           std::map<std::string, std::string> metadata) {
  Checkpoint c;
  c.config = model.config();
  c.class_names = std::move(class_names);
  c.preprocessing = std::move(preprocessing);
  c.metadata = std::move(metadata);
  torch::NoGradGuard no_grad;
  for (const auto& p : model.module().named_parameters(true)) c.state[p.key()] = p.value().detach().to(torch::kCPU).clone();
  for (const auto& b : model.module().named_buffers(true)) c.state[b.key()] = b.value().detach().to(torch::kCPU).clone();
  return c;
}

void save_checkpoint(const Checkpoint& ck, const std::string& path) {
  TORCH_CHECK(ck.class_names.empty() || static_cast<int64_t>(ck.class_names.size()) == ck.config.num_classes,
              "save_checkpoint: class_names has ", ck.class_names.size(), " names, the model has ", ck.config.num_classes,
              " classes");
  ck.preprocessing.validate(ck.config.in_channels);
  json config = {{"model", to_json(ck.config)},
                 {"class_names", ck.class_names},
                 {"preprocessing", to_json(ck.preprocessing)},
                 {"metadata", ck.metadata}};
  if (ck.calibration) {
    try {
      ck.calibration->validate();
    } catch (const c10::Error& e) {
      TORCH_CHECK(false, "save_checkpoint: ", e.what_without_backtrace());
    }
    config["calibration"] = to_json(*ck.calibration);
  }
  const std::string config_text = config.dump(1);
  StateDict cpu;
  c10::Dict<std::string, torch::Tensor> state;
  for (const auto& [k, v] : ck.state) {
    TORCH_CHECK(v.defined(), "save_checkpoint: tensor \"", k, "\" is undefined");
    cpu[k] = v.detach().to(torch::kCPU).contiguous();
    state.insert(k, cpu[k]);
  }
  c10::impl::GenericDict root(c10::StringType::get(), c10::AnyType::get());
  root.insert(std::string("format"), std::string(kFormatTag));
  root.insert(std::string("version"), kCheckpointVersion);
  root.insert(std::string("config"), config_text);
  root.insert(std::string("state"), state);
  root.insert(std::string("checksum"), checksum(config_text, cpu));
  const std::vector<char> bytes = torch::pickle_save(root);
  write_file_atomically(path, std::string_view(bytes.data(), bytes.size()));
}

// ---- reading -----------------------------------------------------------------------------------

namespace {
/// Far above any checkpoint (ResNet-152 in float32 is 240 MB); the file is read whole into memory.
constexpr size_t kMaxWeightFileBytes = size_t{16} << 30;
}  // namespace

Checkpoint read_checkpoint(const std::string& path) {
  const std::vector<char> bytes = read_regular_file(path, kMaxWeightFileBytes, "read_checkpoint");
  TORCH_CHECK(!bytes.empty(), "read_checkpoint: \"", path, "\" is empty");
  TORCH_CHECK(bytes.size() >= 4 && std::memcmp(bytes.data(), "PK\x03\x04", 4) == 0, "read_checkpoint: \"", path,
              "\" is not an attnkit checkpoint (not a torch zip archive)");
  c10::IValue root;
  try {
    root = detail::load_pickle_archive(bytes, "");
  } catch (const c10::Error& e) {
    TORCH_CHECK(false, "read_checkpoint: \"", path, "\" is corrupt or truncated: ", e.what_without_backtrace());
  } catch (const std::exception& e) {
    TORCH_CHECK(false, "read_checkpoint: \"", path, "\" is corrupt or truncated: ", e.what());
  }
  auto get = [&](const char* key) -> c10::IValue {
    TORCH_CHECK(root.isGenericDict(), "read_checkpoint: \"", path, "\" is not an attnkit checkpoint (holds a ",
                root.tagKind(), ", not a dict)");
    auto dict = root.toGenericDict();
    auto it = dict.find(c10::IValue(std::string(key)));
    TORCH_CHECK(it != dict.end(), "read_checkpoint: \"", path, "\" has no \"", key,
                "\" entry (not an attnkit checkpoint, or corrupt)");
    return it->value();
  };
  const auto format = get("format");
  TORCH_CHECK(format.isString() && format.toStringRef() == kFormatTag, "read_checkpoint: \"", path,
              "\" has format tag ", (format.isString() ? "\"" + format.toStringRef() + "\"" : format.tagKind()),
              ", expected \"", kFormatTag, "\"");
  const auto version = get("version");
  TORCH_CHECK(version.isInt() && version.toInt() >= 1 && version.toInt() <= kCheckpointVersion, "read_checkpoint: \"",
              path, "\" has format version ", (version.isInt() ? std::to_string(version.toInt()) : version.tagKind()),
              "; this attnkit reads versions 1 to ", kCheckpointVersion);
  const auto config_value = get("config");
  TORCH_CHECK(config_value.isString(), "read_checkpoint: \"", path, "\": \"config\" must be a string");
  const std::string config_text = config_value.toStringRef();
  const auto state_value = get("state");
  TORCH_CHECK(state_value.isGenericDict(), "read_checkpoint: \"", path, "\": \"state\" must be a dict of tensors");
  Checkpoint ck;
  for (const auto& item : state_value.toGenericDict()) {
    TORCH_CHECK(item.key().isString() && item.value().isTensor(), "read_checkpoint: \"", path,
                "\": \"state\" must map names to tensors");
    const torch::Tensor t = item.value().toTensor();
    // A damaged archive can pair a tensor's shape with a shorter storage: reading it would run past
    // the buffer. Check the extent before anything touches the data.
    int64_t last = t.storage_offset();
    for (int64_t d = 0; d < t.dim(); ++d) last += (t.size(d) - 1) * t.stride(d);
    TORCH_CHECK(t.numel() == 0 || (t.storage_offset() >= 0 && (last + 1) * static_cast<int64_t>(t.element_size()) <=
                                                                  static_cast<int64_t>(t.storage().nbytes())),
                "read_checkpoint: \"", path, "\" is corrupt: tensor \"", item.key().toStringRef(), "\" of shape ",
                t.sizes(), " needs more data than the file holds");
    ck.state[item.key().toStringRef()] = t;
  }
  const auto sum = get("checksum");
  TORCH_CHECK(sum.isString(), "read_checkpoint: \"", path, "\": \"checksum\" must be a string");
  const std::string actual = checksum(config_text, ck.state);
  TORCH_CHECK(sum.toStringRef() == actual, "read_checkpoint: \"", path, "\" is corrupt: checksum ", actual,
              " does not match the stored ", sum.toStringRef());

  json config;
  try {
    config = json::parse(config_text);
  } catch (const json::exception& e) {
    TORCH_CHECK(false, "read_checkpoint: \"", path, "\": config is not valid JSON", json_error_line(config_text, e), " (", e.what(), ")");
  }
  TORCH_CHECK(config.is_object(), "read_checkpoint: \"", path, "\": config must be a JSON object");
  const json model = field<json>(config, "model", "config", path);
  ModelConfig& m = ck.config;
  m.family = enum_field(model, "family", "model", path, parse_model_family);
  m.depth = field<int64_t>(model, "depth", "model", path);
  m.attention = field<std::vector<std::string>>(model, "attention", "model", path);
  m.num_classes = field<int64_t>(model, "num_classes", "model", path);
  m.in_channels = field<int64_t>(model, "in_channels", "model", path);
  m.width = field<double>(model, "width", "model", path);
  m.stem = enum_field(model, "stem", "model", path, parse_stem);
  m.shortcut = enum_field(model, "shortcut", "model", path, parse_shortcut);
  // The name is written from the fields; a name that says otherwise is a damaged or edited config,
  // and classify/eval would print a model that is not the one they run.
  if (model.contains("name")) {
    const auto named = field<std::string>(model, "name", "model", path);
    TORCH_CHECK(named == m.name(), "read_checkpoint: \"", path, "\": config field model.name is \"", named,
                "\" but the other fields describe ", m.name(), " (a damaged or edited config)");
  }
  ck.class_names = field<std::vector<std::string>>(config, "class_names", "config", path);
  const json pre = field<json>(config, "preprocessing", "config", path);
  Preprocessing& p = ck.preprocessing;
  p.input_height = field<int64_t>(pre, "input_height", "preprocessing", path);
  p.input_width = field<int64_t>(pre, "input_width", "preprocessing", path);
  p.resize = enum_field(pre, "resize", "preprocessing", path, parse_resize);
  p.resize_size = field<int64_t>(pre, "resize_size", "preprocessing", path);
  p.crop = enum_field(pre, "crop", "preprocessing", path, parse_crop);
  p.color_order = enum_field(pre, "color_order", "preprocessing", path, parse_color_order);
  p.pixel_scale = field<double>(pre, "pixel_scale", "preprocessing", path);
  p.mean = field<std::vector<double>>(pre, "mean", "preprocessing", path);
  p.std = field<std::vector<double>>(pre, "std", "preprocessing", path);
  if (config.contains("metadata")) ck.metadata = field<std::map<std::string, std::string>>(config, "metadata", "config", path);
  if (config.contains("calibration")) ck.calibration = calibration_from_json(config.at("calibration"), path);
  TORCH_CHECK(ck.class_names.empty() || static_cast<int64_t>(ck.class_names.size()) == m.num_classes,
              "read_checkpoint: \"", path, "\" lists ", ck.class_names.size(), " class names for ", m.num_classes,
              " classes");
  try {
    p.validate(m.in_channels);
  } catch (const c10::Error& e) {
    TORCH_CHECK(false, "read_checkpoint: \"", path, "\": ", e.what_without_backtrace());
  }
  return ck;
}

std::shared_ptr<Backbone> load_model(const Checkpoint& checkpoint) {
  auto model = build_model(checkpoint.config);
  load_state_dict(model->module(), checkpoint.state, /*strict=*/true);
  return model;
}

std::shared_ptr<Backbone> load_checkpoint(const std::string& path, Checkpoint* info) {
  Checkpoint ck = read_checkpoint(path);
  std::shared_ptr<Backbone> model;
  try {
    model = load_model(ck);
  } catch (const c10::Error& e) {
    TORCH_CHECK(false, "load_checkpoint: \"", path, "\" (", ck.config.name(), "): ", e.what_without_backtrace());
  }
  if (info) {
    ck.state.clear();
    *info = std::move(ck);
  }
  return model;
}

}  // namespace attnkit
