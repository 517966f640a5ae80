// attnkit checkpoints (round trip, atomic write, corrupt/truncated/mismatched files) and the
// state-dict importer (missing/unexpected keys, shape mismatches, key maps, safetensors).
#include <attnkit/attnkit.h>
#include <attnkit/backbones/import_check.h>
#include <attnkit/backbones/backbones.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <caffe2/serialize/in_memory_adapter.h>
#include <caffe2/serialize/inline_container.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <dirent.h>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <sys/stat.h>
#include <unistd.h>

#include "testing.h"

using namespace attnkit;
using ::testing::HasSubstr;

namespace {

using attnkit::testing::error_of;

using attnkit::testing::TempDir;

std::vector<char> read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::vector<char>((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

void write_bytes(const std::string& path, const std::vector<char>& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

/// A small model with non-trivial weights and BatchNorm statistics.
ResNet small_model(const std::string& attention = "") {
  torch::manual_seed(3);
  ResNet model(ResNetOptions(18).stem(Stem::Small).width(0.125).num_classes(3).attention(attention));
  torch::NoGradGuard no_grad;
  for (auto& b : model->named_buffers())
    if (b.key().find("running_") != std::string::npos) b.value().uniform_(0.5, 1.5);
  return model;
}

Checkpoint sample_checkpoint() {
  auto model = small_model();
  return make_checkpoint(*model, {"cat", "dog", "bird"}, Preprocessing::small(32, {0.5, 0.4, 0.3}, {0.2, 0.25, 0.3}),
                         {{"dataset", "toy"}});
}

void expect_same_state(const StateDict& a, const StateDict& b) {
  ASSERT_EQ(a.size(), b.size());
  for (const auto& [k, v] : a) {
    ASSERT_TRUE(b.count(k)) << k;
    EXPECT_EQ(v.scalar_type(), b.at(k).scalar_type()) << k;
    EXPECT_TRUE(v.equal(b.at(k))) << k;  // bit-exact
  }
}

}  // namespace

// ---- round trip --------------------------------------------------------------------------------

TEST(Checkpoint, RoundTripIsExact) {
  TempDir dir;
  auto model = small_model();
  const std::vector<std::string> classes = {"cat", "dog", "bird"};
  Preprocessing pre = Preprocessing::small(32, {0.5, 0.4, 0.3}, {0.2, 0.25, 0.3});
  pre.color_order = ColorOrder::BGR;
  pre.pixel_scale = 1.0 / 3.0;  // not exactly representable: JSON must keep every bit
  const auto saved = make_checkpoint(*model, classes, pre, {{"dataset", "toy"}, {"note", "ünïcode \"quoted\""}});
  save_checkpoint(saved, dir.file("m.attnkit"));

  const auto read = read_checkpoint(dir.file("m.attnkit"));
  EXPECT_EQ(read.config, model->config());
  EXPECT_EQ(read.config.name(), "resnet18");
  EXPECT_EQ(read.config.width, 0.125);
  EXPECT_EQ(read.config.stem, Stem::Small);
  EXPECT_EQ(read.class_names, classes);
  EXPECT_EQ(read.preprocessing, pre);
  EXPECT_EQ(read.metadata, saved.metadata);
  expect_same_state(read.state, saved.state);

  Checkpoint info;
  auto loaded = load_checkpoint(dir.file("m.attnkit"), &info);
  EXPECT_EQ(info.class_names, classes);
  EXPECT_TRUE(info.state.empty());
  model->eval();
  loaded->module().eval();
  auto x = torch::randn({2, 3, 32, 32});
  EXPECT_TRUE(loaded->forward(x).equal(model->forward(x)));
}

TEST(Checkpoint, RoundTripCifarAndAttention) {
  TempDir dir;
  std::string attn;
  for (const auto& n : attention_names())
    if (!n.empty()) attn = n;
  auto model = std::dynamic_pointer_cast<CifarResNetImpl>(
      build_model(parse_model_name(attn.empty() ? "resnet20" : "resnet20-[," + attn + ",]")));
  ASSERT_TRUE(model);
  save_checkpoint(make_checkpoint(*model, {}, Preprocessing::small(32, {0.5, 0.5, 0.5}, {0.25, 0.25, 0.25})),
                  dir.file("c.attnkit"));
  auto loaded = load_checkpoint(dir.file("c.attnkit"));
  EXPECT_EQ(loaded->config(), model->config());
  model->eval();
  loaded->module().eval();
  auto x = torch::randn({1, 3, 32, 32});
  EXPECT_TRUE(loaded->forward(x).equal(model->forward(x)));
}

TEST(Checkpoint, ImagenetPreprocessingDefaults) {
  const auto p = Preprocessing::imagenet();
  EXPECT_EQ(p.color_order, ColorOrder::RGB);
  EXPECT_EQ(p.resize, Resize::ShorterSide);
  EXPECT_EQ(p.resize_size, 256);
  EXPECT_EQ(p.crop, Crop::Center);
  EXPECT_EQ(p.input_height, 224);
  EXPECT_EQ(p.input_width, 224);
  EXPECT_EQ(p.mean, (std::vector<double>{0.485, 0.456, 0.406}));
  EXPECT_EQ(p.std, (std::vector<double>{0.229, 0.224, 0.225}));
  EXPECT_DOUBLE_EQ(p.pixel_scale, 1.0 / 255.0);
}

// ---- atomic writes -----------------------------------------------------------------------------

TEST(Checkpoint, WriteIsAtomicAndLeavesNoTemporaryFiles) {
  TempDir dir;
  const auto path = dir.file("m.attnkit");
  auto first = sample_checkpoint();
  save_checkpoint(first, path);
  auto second = first;
  second.class_names = {"a", "b", "c"};
  save_checkpoint(second, path);  // replaces the file
  EXPECT_EQ(read_checkpoint(path).class_names, second.class_names);
  EXPECT_EQ(dir.files(), std::vector<std::string>{"m.attnkit"});

  // A failed save leaves the previous file untouched and no temporary behind.
  const auto before = read_bytes(path);
  auto bad = first;
  bad.class_names = {"only one"};
  EXPECT_THAT(error_of([&] { save_checkpoint(bad, path); }), HasSubstr("class_names has 1 names, the model has 3"));
  EXPECT_EQ(read_bytes(path), before);
  EXPECT_EQ(dir.files(), std::vector<std::string>{"m.attnkit"});

  EXPECT_THAT(error_of([&] { save_checkpoint(first, dir.file("no/such/folder/m.attnkit")); }),
              HasSubstr("cannot create a temporary file"));
  EXPECT_EQ(dir.files(), std::vector<std::string>{"m.attnkit"});
}

// ---- corrupt, truncated, mismatched files ------------------------------------------------------

TEST(Checkpoint, TruncatedFilesAreErrors) {
  TempDir dir;
  const auto path = dir.file("m.attnkit");
  save_checkpoint(sample_checkpoint(), path);
  const auto bytes = read_bytes(path);
  const auto cut = dir.file("cut.attnkit");
  for (size_t len : {size_t(0), size_t(3), size_t(100), bytes.size() / 3, bytes.size() / 2, bytes.size() - 100,
                     bytes.size() - 22, bytes.size() - 1}) {
    write_bytes(cut, std::vector<char>(bytes.begin(), bytes.begin() + static_cast<std::ptrdiff_t>(len)));
    const auto msg = error_of([&] { read_checkpoint(cut); });
    EXPECT_THAT(msg, HasSubstr("read_checkpoint: \"" + cut + "\"")) << "truncated at " << len;
  }
}

TEST(Checkpoint, FlippedBytesAreErrorsOrHarmless) {
  TempDir dir;
  const auto path = dir.file("m.attnkit");
  const auto saved = sample_checkpoint();
  save_checkpoint(saved, path);
  const auto bytes = read_bytes(path);
  const auto bad = dir.file("bad.attnkit");
  int errors = 0, trials = 0;
  // ~300 positions spread over the whole file (headers, pickle, tensor data, central directory).
  const size_t step = std::max<size_t>(1, bytes.size() / 300);
  for (size_t pos = 0; pos < bytes.size(); pos += step, ++trials) {
    auto copy = bytes;
    copy[pos] = static_cast<char>(copy[pos] ^ 0x5a);
    write_bytes(bad, copy);
    try {
      const auto read = read_checkpoint(bad);
      // Only bytes nothing reads (zip alignment padding, ...) may change without an error, and then
      // the content is exactly what was saved.
      EXPECT_EQ(read.config, saved.config) << "flip at " << pos;
      EXPECT_EQ(read.class_names, saved.class_names) << "flip at " << pos;
      expect_same_state(read.state, saved.state);
    } catch (const c10::Error& e) {
      ++errors;
      EXPECT_THAT(e.what(), HasSubstr(bad)) << "flip at " << pos;
    }
  }
  EXPECT_GT(errors, trials / 2) << "most flips must be detected";
}

TEST(Checkpoint, TamperedWeightsFailTheChecksum) {
  TempDir dir;
  const auto path = dir.file("m.attnkit");
  save_checkpoint(sample_checkpoint(), path);
  // Rewrite the same dict with one weight changed and the old checksum.
  auto root = torch::pickle_load(read_bytes(path)).toGenericDict();
  auto state = root.at(std::string("state")).toGenericDict();
  state.at(std::string("fc.bias")).toTensor().add_(1e-3);
  write_bytes(path, torch::pickle_save(root));
  EXPECT_THAT(error_of([&] { read_checkpoint(path); }), HasSubstr("is corrupt: checksum"));
}

// A storage whose pickle claims more bytes than its data record holds (a crafted or damaged file):
// reading the tensor would run past the record's buffer. It must be refused before that.
TEST(Checkpoint, StorageLargerThanItsRecordIsRefused) {
  TempDir dir;
  const auto path = dir.file("m.attnkit");
  save_checkpoint(sample_checkpoint(), path);
  // The same archive with every data record cut to its first 16 bytes (the pickle still claims the
  // full storages); zip records are rewritten whole, so the archive itself stays well formed.
  const auto original = read_bytes(path);
  caffe2::serialize::PyTorchStreamReader reader(
      std::make_unique<caffe2::serialize::MemoryReadAdapter>(original.data(), original.size()));
  std::vector<char> tampered;
  {
    caffe2::serialize::PyTorchStreamWriter writer([&](const void* buf, size_t n) {
      tampered.insert(tampered.end(), static_cast<const char*>(buf), static_cast<const char*>(buf) + n);
      return n;
    });
    int cut = 0;
    for (const auto& name : reader.getAllRecords()) {
      // (The writer adds its own version and serialization id records.)
      if (name.find("version") != std::string::npos || name.find("serialization_id") != std::string::npos) continue;
      auto [data, size] = reader.getRecord(name);
      const bool tensor_data = name.rfind("data/", 0) == 0 && size > 16;
      cut += tensor_data;
      writer.writeRecord(name, data.get(), tensor_data ? 16 : size);
    }
    ASSERT_GT(cut, 0) << "no data record longer than 16 bytes to cut";
    writer.writeEndOfFile();
  }
  write_bytes(path, tampered);
  const std::string msg = error_of([&] { read_checkpoint(path); });
  EXPECT_THAT(msg, HasSubstr("read_checkpoint: \"" + path + "\" is corrupt or truncated"));
  EXPECT_THAT(msg, HasSubstr("but its data record holds 16"));
}

// Small files that would make an unpickler take gigabytes (a memo index of 0x28000000, a stack
// 200,000 deep, a string "of" 4 GB) or read past its data are refused before unpickling, with
// bounded memory.
TEST(Checkpoint, CraftedPicklesAreRefusedBeforeUnpickling) {
  TempDir dir;
  const auto path = dir.file("crafted.attnkit");
  auto archive_with_pickle = [&](const std::string& pickle) {
    std::vector<char> out;
    {
      caffe2::serialize::PyTorchStreamWriter writer([&](const void* buf, size_t n) {
        out.insert(out.end(), static_cast<const char*>(buf), static_cast<const char*>(buf) + n);
        return n;
      });
      writer.writeRecord("data.pkl", pickle.data(), pickle.size());
      writer.writeEndOfFile();
    }
    write_bytes(path, out);
  };
  auto le32 = [](uint32_t v) { return std::string{char(v), char(v >> 8), char(v >> 16), char(v >> 24)}; };
  const std::string proto = "\x80\x02";
  const std::vector<std::pair<std::string, std::string>> cases = {
      {proto + "]r" + le32(0x28000000) + ".", "a memo index beyond the objects stored so far"},
      {proto + std::string(200000, ']') + ".", "a stack deeper than any state dict needs"},
      {proto + "X" + le32(0xF0000000) + "abc.", "a length past the end of the data"},
      {proto + "]h\x07.", "a memo lookup of an object never stored"},
      {proto + std::string(2000, '(') + ".", "MARKs nested too deep"},
      {proto + "]", "no STOP opcode"},
      {proto + "\xff.", "an unknown opcode"},
  };
  for (const auto& [pickle, expected] : cases) {
    archive_with_pickle(pickle);
    const std::string msg = error_of([&] { read_checkpoint(path); });
    EXPECT_THAT(msg, HasSubstr("is corrupt or truncated: the pickle is damaged or crafted")) << expected;
    EXPECT_THAT(msg, HasSubstr(expected));
    EXPECT_THAT(error_of([&] { read_state_dict(path); }), HasSubstr(expected)) << "read_state_dict";
  }
}

TEST(Checkpoint, WrongFormatVersionAndForeignFiles) {
  TempDir dir;
  const auto path = dir.file("m.attnkit");
  save_checkpoint(sample_checkpoint(), path);
  auto root = torch::pickle_load(read_bytes(path)).toGenericDict();

  auto other = root.copy();
  other.insert_or_assign(std::string("format"), std::string("something-else"));
  write_bytes(dir.file("f.attnkit"), torch::pickle_save(other));
  EXPECT_THAT(error_of([&] { read_checkpoint(dir.file("f.attnkit")); }),
              HasSubstr("has format tag \"something-else\", expected \"attnkit-checkpoint\""));

  auto future = root.copy();
  future.insert_or_assign(std::string("version"), int64_t(99));
  write_bytes(dir.file("v.attnkit"), torch::pickle_save(future));
  EXPECT_THAT(error_of([&] { read_checkpoint(dir.file("v.attnkit")); }),
              HasSubstr("has format version 99; this attnkit reads versions 1 to 1"));

  // A plain state dict is not a checkpoint.
  c10::Dict<std::string, torch::Tensor> plain;
  plain.insert("fc.bias", torch::zeros({3}));
  write_bytes(dir.file("s.pt"), torch::pickle_save(plain));
  EXPECT_THAT(error_of([&] { read_checkpoint(dir.file("s.pt")); }), HasSubstr("has no \"format\" entry"));

  write_bytes(dir.file("t.txt"), {'h', 'e', 'l', 'l', 'o'});
  EXPECT_THAT(error_of([&] { read_checkpoint(dir.file("t.txt")); }), HasSubstr("not a torch zip archive"));
  EXPECT_THAT(error_of([&] { read_checkpoint(dir.file("missing")); }), HasSubstr(dir.file("missing") + ": no such file"));
}

// Weight files named on the command line are opened non-blocking and must be regular files: a
// FIFO used to block the program forever, and a link to /dev/zero made it read until memory ran out.
TEST(Checkpoint, OnlyRegularFilesAreRead) {
  TempDir dir;
  const std::string fifo = dir.file("pipe.attnkit"), zero = dir.file("zero.attnkit"), folder = dir.file("folder.pth");
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
  ASSERT_EQ(::symlink("/dev/zero", zero.c_str()), 0);
  std::filesystem::create_directory(folder);
  for (const auto& path : {fifo, zero}) {
    EXPECT_THAT(error_of([&] { read_checkpoint(path); }),
                HasSubstr("read_checkpoint: " + path + ": is not a regular file (a FIFO, socket or device)"));
    EXPECT_THAT(error_of([&] { attnkit::read_state_dict(path); }),
                HasSubstr("read_state_dict: " + path + ": is not a regular file"));
  }
  EXPECT_THAT(error_of([&] { read_checkpoint(folder); }), HasSubstr(folder + ": is a folder, not a file"));
  EXPECT_THAT(error_of([&] { attnkit::read_state_dict(folder); }), HasSubstr(folder + ": is a folder, not a file"));
}

TEST(Checkpoint, ConfigAndWeightsMismatch) {
  TempDir dir;
  auto ck = sample_checkpoint();
  ck.config.depth = 34;  // the weights are ResNet-18's
  save_checkpoint(ck, dir.file("m.attnkit"));
  const auto msg = error_of([&] { load_checkpoint(dir.file("m.attnkit")); });
  EXPECT_THAT(msg, HasSubstr("(resnet34)"));
  EXPECT_THAT(msg, HasSubstr("missing: layer1.2.conv1.weight"));

  auto wide = sample_checkpoint();
  wide.config.width = 0.25;
  save_checkpoint(wide, dir.file("w.attnkit"));
  EXPECT_THAT(error_of([&] { load_checkpoint(dir.file("w.attnkit")); }),
              HasSubstr("shape mismatch for \"conv1.weight\": the state dict has [8, 3, 3, 3], the model expects [16, 3, 3, 3]"));

  auto gray = sample_checkpoint();
  gray.preprocessing.mean = {0.5};
  EXPECT_THAT(error_of([&] { save_checkpoint(gray, dir.file("g.attnkit")); }),
              HasSubstr("mean and std must have one entry per input channel (3)"));
}

namespace {

/// The error read_checkpoint gives for the checkpoint at `path` with `from` replaced by `to` in its config
/// and the checksum signed again, so that the edit, not the checksum, is what the reader judges.
std::string error_after_config_edit(const std::string& path, const std::string& from, const std::string& to) {
  const auto root = torch::pickle_load(read_bytes(path)).toGenericDict();
  const std::string config = root.at(std::string("config")).toStringRef();
  StateDict state;
  for (const auto& item : root.at(std::string("state")).toGenericDict())
    state[item.key().toStringRef()] = item.value().toTensor();
  const auto at = config.find(from);
  EXPECT_NE(at, std::string::npos) << from;
  auto edited = root.copy();
  const std::string text = std::string(config).replace(at, from.size(), to);
  edited.insert_or_assign(std::string("config"), text);
  edited.insert_or_assign(std::string("checksum"), attnkit::detail::checkpoint_checksum(text, state));
  const auto file = path + ".edited";
  write_bytes(file, torch::pickle_save(edited));
  return error_of([&] { read_checkpoint(file); });
}

}  // namespace

TEST(Checkpoint, UnknownConfigValuesAreErrors) {
  // A checkpoint whose config names a value this attnkit does not know (a newer writer's stem, say)
  // must be refused by name, not built with a guess.
  TempDir dir;
  const auto path = dir.file("m.attnkit");
  save_checkpoint(sample_checkpoint(), path);
  const auto with_value = [&](const std::string& from, const std::string& to) { return error_after_config_edit(path, from, to); };
  EXPECT_THAT(with_value("\"stem\": \"small\"", "\"stem\": \"tiny\""),
              HasSubstr("config field model.stem must be \"imagenet\" or \"small\", got \"tiny\""));
  EXPECT_THAT(with_value("\"family\": \"resnet\"", "\"family\": \"vgg\""),
              HasSubstr("config field model.family must be \"resnet\" or \"cifar_resnet\", got \"vgg\""));
  EXPECT_THAT(with_value("\"shortcut\": \"B\"", "\"shortcut\": \"C\""),
              HasSubstr("config field model.shortcut must be \"A\" or \"B\", got \"C\""));
  EXPECT_THAT(with_value("\"resize\": \"stretch\"", "\"resize\": \"fit\""),
              HasSubstr("config field preprocessing.resize must be \"shorter_side\", \"stretch\" or \"none\", got \"fit\""));
  EXPECT_THAT(with_value("\"crop\": \"none\"", "\"crop\": \"corner\""),
              HasSubstr("config field preprocessing.crop must be \"center\" or \"none\""));
  EXPECT_THAT(with_value("\"color_order\": \"RGB\"", "\"color_order\": \"rgb\""),
              HasSubstr("config field preprocessing.color_order must be \"RGB\", \"BGR\" or \"GRAY\", got \"rgb\""));
  // A name the fields contradict: the program would print one model and run another.
  EXPECT_THAT(with_value("\"name\": \"resnet18\"", "\"name\": \"resnet50-cbam\""),
              HasSubstr("config field model.name is \"resnet50-cbam\" but the other fields describe resnet18"));
  // The untouched file still reads: the edit, not the re-signing, is what is refused.
  EXPECT_EQ(with_value("\"stem\": \"small\"", "\"stem\": \"small\""), "<no error>");
}

// ---- calibration -------------------------------------------------------------------------------

TEST(Checkpoint, CalibrationRoundTripAndOldFiles) {
  TempDir dir;
  auto ck = sample_checkpoint();
  // A file without calibration (every file written before it existed) reads as uncalibrated, T = 1.
  save_checkpoint(ck, dir.file("plain.attnkit"));
  const auto plain = read_checkpoint(dir.file("plain.attnkit"));
  EXPECT_FALSE(plain.calibration.has_value());
  EXPECT_EQ(plain.temperature(), 1.0);
  Calibration c;
  c.temperature = 1.0 / 3.0;  // not exactly representable: JSON must keep every bit
  c.split = "500 images held out of /data/train by attnkit train (--val-size 500, --seed 3)";
  c.images = 500;
  c.nll_before = 0.41;
  c.nll_after = 0.27;
  c.ece_before = 0.083;
  c.ece_after = 0.011;
  ck.calibration = c;
  save_checkpoint(ck, dir.file("calibrated.attnkit"));
  Checkpoint info;
  load_checkpoint(dir.file("calibrated.attnkit"), &info);
  ASSERT_TRUE(info.calibration.has_value());
  EXPECT_EQ(info.temperature(), 1.0 / 3.0);
  EXPECT_EQ(info.calibration->split, c.split);
  EXPECT_EQ(info.calibration->images, 500);
  EXPECT_EQ(info.calibration->bins, 15);
  EXPECT_EQ(info.calibration->nll_before, 0.41);
  EXPECT_EQ(info.calibration->nll_after, 0.27);
  EXPECT_EQ(info.calibration->ece_before, 0.083);
  EXPECT_EQ(info.calibration->ece_after, 0.011);
  // Numbers not recorded stay unknown (NaN), not 0.
  ck.calibration = Calibration{};
  ck.calibration->temperature = 2.0;
  save_checkpoint(ck, dir.file("bare.attnkit"));
  const auto bare = read_checkpoint(dir.file("bare.attnkit"));
  EXPECT_EQ(bare.temperature(), 2.0);
  EXPECT_TRUE(std::isnan(bare.calibration->nll_before) && std::isnan(bare.calibration->ece_after));
  // The temperature is part of the signed config: changing it by hand without re-signing is corruption.
  auto root = torch::pickle_load(read_bytes(dir.file("bare.attnkit"))).toGenericDict();
  std::string config = root.at(std::string("config")).toStringRef();
  config.replace(config.find("\"temperature\": 2.0"), 18, "\"temperature\": 3.0");
  root.insert_or_assign(std::string("config"), config);
  write_bytes(dir.file("tampered.attnkit"), torch::pickle_save(root));
  EXPECT_THAT(error_of([&] { read_checkpoint(dir.file("tampered.attnkit")); }), HasSubstr("checksum"));
}

TEST(Checkpoint, BadTemperaturesAreRefusedNamingTheField) {
  TempDir dir;
  auto ck = sample_checkpoint();
  ck.calibration = Calibration{};
  ck.calibration->temperature = 0.5;
  const auto path = dir.file("m.attnkit");
  save_checkpoint(ck, path);
  const std::string field = "\"temperature\": 0.5";
  for (const char* bad : {"0", "-1.5", "1e-999"}) {
    const auto message = error_after_config_edit(path, field, std::string("\"temperature\": ") + bad);
    EXPECT_THAT(message, HasSubstr("m.attnkit.edited\": config field calibration.temperature must be a finite number > 0"))
        << bad;
  }
  for (const char* bad : {"\"0.5\"", "null", "[0.5]"}) {
    EXPECT_THAT(error_after_config_edit(path, field, std::string("\"temperature\": ") + bad),
                HasSubstr("config field calibration.temperature is missing or has the wrong type"))
        << bad;
  }
  // Not finite: JSON has no such number, and the reader points at the line that holds one.
  for (const char* bad : {"1e999", "Infinity", "NaN"}) {
    EXPECT_THAT(error_after_config_edit(path, field, std::string("\"temperature\": ") + bad),
                HasSubstr(std::string("config is not valid JSON at \"temperature\": ") + bad))
        << bad;
  }
  EXPECT_THAT(error_after_config_edit(path, field, "\"temperatur\": 0.5"), HasSubstr("config field calibration.temperature is missing"));
  EXPECT_THAT(error_after_config_edit(path, "\"calibration\": {", "\"calibration\": 3, \"x\": {"),
              HasSubstr("config field config.calibration must be an object"));
  // The writer refuses what the reader would.
  ck.calibration->temperature = -2;
  EXPECT_THAT(error_of([&] { save_checkpoint(ck, dir.file("w.attnkit")); }),
              HasSubstr("save_checkpoint: calibration.temperature must be a finite number > 0, got -2"));
  ck.calibration->temperature = INFINITY;
  EXPECT_THAT(error_of([&] { save_checkpoint(ck, dir.file("w.attnkit")); }), HasSubstr("finite number > 0, got inf"));
}

// ---- state-dict import -------------------------------------------------------------------------

TEST(StateDictImport, MissingUnexpectedAndShapeMismatch) {
  auto model = small_model();
  StateDict state;
  for (const auto& p : model->named_parameters()) state[p.key()] = p.value().detach().clone() + 1;
  state.erase("fc.bias");
  state["extra.weight"] = torch::zeros({2});
  const auto before_fc = model->fc->bias.clone();
  auto report = load_state_dict(*model, state);
  EXPECT_THAT(report.missing, ::testing::Contains("fc.bias"));
  EXPECT_THAT(report.missing, ::testing::Contains("bn1.running_mean"));  // buffers count too
  EXPECT_EQ(report.unexpected, std::vector<std::string>{"extra.weight"});
  EXPECT_TRUE(model->fc->bias.equal(before_fc));  // missing keys keep their values
  EXPECT_TRUE(model->conv1->weight.equal(state.at("conv1.weight")));
  EXPECT_THAT(report.summary(), HasSubstr("1 unexpected: extra.weight"));

  EXPECT_THAT(error_of([&] { load_state_dict(*model, state, /*strict=*/true); }),
              HasSubstr("keys do not match"));
  EXPECT_THAT(error_of([&] { load_state_dict(*model, state, /*strict=*/true); }), HasSubstr("fc.bias"));

  // A shape mismatch names the key and both shapes, and changes nothing.
  const auto conv_before = model->conv1->weight.clone();
  state["conv1.weight"] = torch::zeros({8, 3, 5, 5});
  state["fc.weight"] = torch::zeros({3, 64});
  EXPECT_THAT(error_of([&] { load_state_dict(*model, state); }),
              HasSubstr("shape mismatch for \"conv1.weight\": the state dict has [8, 3, 5, 5], the model expects [8, 3, 3, 3]"));
  EXPECT_TRUE(model->conv1->weight.equal(conv_before));
}

// What attnkit import refuses (check_import): nothing matched, needed tensors missing, tensors left
// over; and what it allows: the attention blocks of a model missing from a plain model's weights.
TEST(StateDictImport, ImportIsStrictAboutMeaning) {
  auto plain = small_model();
  auto with_cbam = small_model("cbam");
  StateDict state;
  for (const auto& p : plain->named_parameters()) state[p.key()] = p.value().detach().clone();
  for (const auto& b : plain->named_buffers()) state[b.key()] = b.value().detach().clone();

  // Into the CBAM model: only attention tensors are missing; allowed, and summarised as one group.
  auto report = load_state_dict(*with_cbam, state);
  ASSERT_GT(report.missing.size(), 5u);
  EXPECT_NO_THROW(check_import(report, {}, "w.pt"));
  EXPECT_THAT(report.summary(), HasSubstr("80 missing: layer1.0.attn.")) << report.summary();
  EXPECT_THAT(report.summary(), HasSubstr(", ... (all in layer*.*.attn.*); 0 unexpected"));

  // A needed tensor missing, or one left over: errors unless allowed.
  StateDict partial = state;
  partial.erase("layer1.0.conv1.weight");
  report = load_state_dict(*plain, partial);
  EXPECT_THAT(error_of([&] { check_import(report, {}, "w.pt"); }),
              HasSubstr("lacks 1 tensors the model needs (layer1.0.conv1.weight); pass --allow-missing"));
  EXPECT_NO_THROW(check_import(report, {/*allow_missing=*/true, false}, "w.pt"));
  StateDict extra = state;
  extra["head.extra"] = torch::zeros({2});
  report = load_state_dict(*plain, extra);
  EXPECT_THAT(error_of([&] { check_import(report, {}, "w.pt"); }),
              HasSubstr("has 1 tensors the model has no place for (head.extra); pass --allow-unexpected"));
  EXPECT_NO_THROW(check_import(report, {false, /*allow_unexpected=*/true}, "w.pt"));

  // Nothing matched: always an error (it would write a randomly initialised model).
  report = load_state_dict(*plain, StateDict{{"encoder.weight", torch::zeros({3})}});
  EXPECT_THAT(error_of([&] { check_import(report, {true, true}, "w.pt"); }), HasSubstr("no tensor of w.pt matches"));

  // Complex weights are not silently cast to real.
  StateDict complex = state;
  complex["fc.bias"] = torch::zeros(state["fc.bias"].sizes(), torch::kComplexFloat);
  EXPECT_THAT(error_of([&] { load_state_dict(*plain, complex); }), HasSubstr("\"fc.bias\" is complex"));
}

TEST(StateDictImport, LinearAndOneByOneConvWeightsInterchange) {
  torch::nn::Sequential m(torch::nn::Linear(4, 2));
  StateDict state = {{"0.weight", torch::arange(8.0).reshape({2, 4, 1, 1})}, {"0.bias", torch::ones({2})}};
  auto report = load_state_dict(*m, state, /*strict=*/true);
  EXPECT_EQ(report.loaded.size(), 2u);
  EXPECT_TRUE(m[0]->as<torch::nn::Linear>()->weight.equal(torch::arange(8.0).reshape({2, 4})));
  state["0.weight"] = torch::zeros({2, 4, 2, 1});
  EXPECT_THAT(error_of([&] { load_state_dict(*m, state); }), HasSubstr("shape mismatch for \"0.weight\""));
}

TEST(StateDictImport, KeyMaps) {
  const auto t = torch::zeros({1});
  StateDict official = {{"module.conv1.weight", t},
                        {"module.layer1.0.cbam.ChannelGate.mlp.1.weight", t},
                        {"module.layer1.0.cbam.ChannelGate.mlp.3.bias", t},
                        {"module.layer1.0.cbam.SpatialGate.spatial.conv.weight", t},
                        {"module.layer1.0.cbam.SpatialGate.spatial.bn.running_var", t}};
  EXPECT_EQ(detect_layout(official), "cbam-official");
  auto mapped = map_state_dict(official);
  std::vector<std::string> keys;
  for (const auto& kv : mapped) keys.push_back(kv.first);
  EXPECT_EQ(keys, (std::vector<std::string>{"conv1.weight", "layer1.0.attn.channel.fc1.weight",
                                            "layer1.0.attn.channel.fc2.bias", "layer1.0.attn.spatial.bn.running_var",
                                            "layer1.0.attn.spatial.conv.weight"}));
  StateDict timm = {{"layer2.1.se.fc1.weight", t}, {"layer2.1.se.conv.weight", t},
                    {"layer3.0.se.spatial.conv.conv.weight", t}, {"layer3.0.se.spatial.conv.bn.bias", t}};
  EXPECT_EQ(detect_layout(timm), "timm");
  keys.clear();
  for (const auto& kv : map_state_dict(timm)) keys.push_back(kv.first);
  EXPECT_EQ(keys, (std::vector<std::string>{"layer2.1.attn.conv.weight", "layer2.1.attn.fc1.weight",
                                            "layer3.0.attn.spatial.bn.bias", "layer3.0.attn.spatial.conv.weight"}));
  // "attnkit" renames nothing but the DataParallel prefix.
  EXPECT_EQ(map_state_dict({{"module.layer1.0.se.x", t}}, "attnkit").count("layer1.0.se.x"), 1u);
  EXPECT_THAT(error_of([&] { map_state_dict(timm, "keras"); }), HasSubstr("unknown layout \"keras\"; valid layouts"));
}

TEST(StateDictImport, PartialLoadLeavesAttentionAtInit) {
  const auto& names = attention_names();
  auto it = std::find_if(names.begin(), names.end(), [](const std::string& n) { return !n.empty(); });
  if (it == names.end()) GTEST_SKIP() << "no attention registered in make_attention yet";
  auto plain = small_model();
  ResNet with(ResNetOptions(18).stem(Stem::Small).width(0.125).num_classes(3).attention(*it));
  StateDict attn_before;
  for (const auto& p : with->named_parameters())
    if (p.key().find(".attn.") != std::string::npos) attn_before[p.key()] = p.value().clone();
  StateDict state;
  for (const auto& p : plain->named_parameters()) state[p.key()] = p.value();
  for (const auto& b : plain->named_buffers()) state[b.key()] = b.value();
  auto report = load_state_dict(*with, state);
  EXPECT_TRUE(report.unexpected.empty());
  EXPECT_EQ(report.loaded.size(), state.size());
  for (const auto& m : report.missing) EXPECT_THAT(m, HasSubstr(".attn.")) << m;
  for (const auto& p : with->named_parameters())
    if (attn_before.count(p.key())) EXPECT_TRUE(p.value().equal(attn_before.at(p.key()))) << p.key();
}

TEST(StateDictImport, TorchSaveFilesAndTrainingCheckpoints) {
  TempDir dir;
  auto model = small_model();
  c10::Dict<std::string, torch::Tensor> sd;
  for (const auto& p : model->named_parameters()) sd.insert(p.key(), p.value());
  c10::impl::GenericDict ck(c10::StringType::get(), c10::AnyType::get());
  ck.insert(std::string("epoch"), int64_t(3));
  ck.insert(std::string("model"), sd);
  write_bytes(dir.file("ck.pt"), torch::pickle_save(ck));
  const auto state = read_state_dict(dir.file("ck.pt"));
  EXPECT_EQ(state.size(), sd.size());
  EXPECT_TRUE(state.at("fc.weight").equal(model->fc->weight));

  write_bytes(dir.file("legacy.pt"), {'\x80', '\x02', 'c', 'x'});
  EXPECT_THAT(error_of([&] { read_state_dict(dir.file("legacy.pt")); }), HasSubstr("legacy (pre-1.6) format"));
  write_bytes(dir.file("junk.bin"), {'j', 'u', 'n', 'k', 'j', 'u', 'n', 'k', 'x'});
  EXPECT_THAT(error_of([&] { read_state_dict(dir.file("junk.bin")); }),
              HasSubstr("neither a torch.save zip file nor a safetensors file"));
  auto bytes = read_bytes(dir.file("ck.pt"));
  bytes.resize(bytes.size() / 2);
  write_bytes(dir.file("half.pt"), bytes);
  EXPECT_THAT(error_of([&] { read_state_dict(dir.file("half.pt")); }), HasSubstr("cannot read"));
}

TEST(StateDictImport, SafetensorsRoundTripAndErrors) {
  TempDir dir;
  StateDict state = {{"a", torch::randn({2, 3})},
                     {"b", torch::arange(5, torch::kInt64)},
                     {"c", torch::randn({4}).to(torch::kBFloat16)},
                     {"d", torch::tensor({true, false})},
                     {"e", torch::randn({3, 2}).t()},  // non-contiguous
                     {"f", torch::zeros({0, 4})}};
  write_safetensors(state, dir.file("s.safetensors"));
  const auto back = read_state_dict(dir.file("s.safetensors"));
  ASSERT_EQ(back.size(), state.size());
  for (const auto& [k, v] : state) {
    EXPECT_EQ(back.at(k).scalar_type(), v.scalar_type()) << k;
    EXPECT_TRUE(back.at(k).equal(v)) << k;
  }
  // Hand-made headers: data offsets outside the file, wrong sizes, bad dtype, bad JSON, bad length.
  // Built as a string: GCC 12 warns (-Wstringop-overread) about inserting into a vector<char> here.
  auto file = [](const std::string& header, size_t data) {
    std::string bytes;
    for (int i = 0; i < 8; ++i) bytes.push_back(static_cast<char>((header.size() >> (8 * i)) & 0xff));
    bytes += header;
    bytes.append(data, '\0');
    return std::vector<char>(bytes.begin(), bytes.end());
  };
  EXPECT_THAT(error_of([&] { parse_safetensors(file(R"({"x":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})", 4)); }),
              HasSubstr("outside the data (4 bytes; truncated?)"));
  EXPECT_THAT(error_of([&] { parse_safetensors(file(R"({"x":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", 8)); }),
              HasSubstr("needs 12 bytes, data_offsets give 8"));
  EXPECT_THAT(error_of([&] { parse_safetensors(file(R"({"x":{"dtype":"F7","shape":[1],"data_offsets":[0,1]}})", 1)); }),
              HasSubstr("unsupported dtype F7"));
  EXPECT_THAT(error_of([&] { parse_safetensors(file(R"({"x":{"dtype":"F32"}})", 0)); }),
              HasSubstr("malformed safetensors entry \"x\""));
  EXPECT_THAT(error_of([&] { parse_safetensors(file(R"({"x": )", 0)); }), HasSubstr("not valid JSON"));
  auto huge = file("{}", 0);
  huge[5] = 1;
  EXPECT_THAT(error_of([&] { parse_safetensors(huge); }), HasSubstr("exceeds the file"));
  EXPECT_EQ(parse_safetensors(file(R"({"__metadata__":{"format":"pt"}})", 0)).size(), 0u);
  // The byte ranges must tile the data: overlapping, shifted, gaps, trailing bytes, huge shapes.
  EXPECT_THAT(error_of([&] {
                parse_safetensors(file(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                                       R"("b":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})", 8));
              }),
              HasSubstr("overlapping or shifted offsets"));
  EXPECT_THAT(error_of([&] { parse_safetensors(file(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})", 8)); }),
              HasSubstr("overlapping or shifted offsets"));
  EXPECT_THAT(error_of([&] { parse_safetensors(file(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})", 8)); }),
              HasSubstr("4 bytes after the last tensor's data"));
  EXPECT_THAT(error_of([&] {
                parse_safetensors(
                    file(R"({"a":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,0]}})", 0));
              }),
              HasSubstr("has a shape larger than the file's data"));
}

// A bit flipped inside a tensor's data leaves a well-formed archive: only the zip's CRC-32 can tell.
// Both readers (checkpoints and torch.save imports) must refuse it rather than load changed weights.
TEST(StateDictImport, ZipEntriesAreCheckedAgainstTheirCrc) {
  TempDir dir;
  const auto path = dir.file("w.pt");
  c10::Dict<std::string, torch::Tensor> state;
  state.insert("w", torch::randn({64}));
  write_bytes(path, torch::pickle_save(state));
  auto bytes = read_bytes(path);
  caffe2::serialize::PyTorchStreamReader reader(
      std::make_unique<caffe2::serialize::MemoryReadAdapter>(bytes.data(), bytes.size()));
  const auto names = reader.getAllRecords();
  const auto record = std::find_if(names.begin(), names.end(), [](const std::string& n) { return n.rfind("data/", 0) == 0; });
  ASSERT_NE(record, names.end());
  bytes[reader.getRecordOffset(*record) + 5] ^= 0x10;
  write_bytes(path, bytes);
  EXPECT_THAT(error_of([&] { read_state_dict(path); }), HasSubstr("fails its CRC-32 check"));

  const auto ck = dir.file("m.attnkit");
  save_checkpoint(sample_checkpoint(), ck);
  auto ck_bytes = read_bytes(ck);
  caffe2::serialize::PyTorchStreamReader ck_reader(
      std::make_unique<caffe2::serialize::MemoryReadAdapter>(ck_bytes.data(), ck_bytes.size()));
  ck_bytes[ck_reader.getRecordOffset("data/0")] ^= 0x01;
  write_bytes(ck, ck_bytes);
  EXPECT_THAT(error_of([&] { read_checkpoint(ck); }), HasSubstr("fails its CRC-32 check"));
}
