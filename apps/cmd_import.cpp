// attnkit import: converts a PyTorch state dict (torchvision, timm, official CBAM code; torch.save
// zip files or .safetensors) into an attnkit checkpoint that `attnkit eval`/`classify` use as is.
#include "commands.h"

#include <attnkit/attnkit.h>
#include <attnkit/backbones/import_check.h>

#include <filesystem>
#include <fstream>
#include <iostream>

namespace attnkit::app {
namespace {

struct ImportArgs {
  std::string input;
  std::string arch;
  std::string attention;
  std::string classes_file;
  std::string layout = "auto";
  std::string out;
  bool strict = false;
  ImportPolicy policy;
  bool overwrite = false;
};

std::vector<std::string> read_lines(const std::string& path) {
  std::ifstream in(path);
  TORCH_CHECK(in, "import: cannot read --classes file \"", path, "\"");
  std::vector<std::string> lines;
  for (std::string line; std::getline(in, line);) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (!line.empty()) lines.push_back(line);
  }
  return lines;
}

int run_import(const ImportArgs& a) {
  namespace fs = std::filesystem;
  TORCH_CHECK(a.overwrite || !fs::exists(a.out), "import: \"", a.out, "\" exists; pass --overwrite to replace it");
  const StateDict raw = read_state_dict(a.input);
  const std::string layout = a.layout == "auto" ? detect_layout(raw) : a.layout;
  const StateDict state = map_state_dict(raw, layout);

  // The head's size comes from the file, so a 10-class fine-tune imports as a 10-class model.
  int64_t num_classes = 0, in_channels = 0;
  if (auto it = state.find("fc.weight"); it != state.end()) num_classes = it->second.size(0);
  if (auto it = state.find("conv1.weight"); it != state.end()) in_channels = it->second.size(1);
  std::vector<std::string> classes;
  if (!a.classes_file.empty()) {
    classes = read_lines(a.classes_file);
    TORCH_CHECK(num_classes == 0 || static_cast<int64_t>(classes.size()) == num_classes, "import: --classes lists ",
                classes.size(), " names, the weights have ", num_classes, " classes");
    num_classes = static_cast<int64_t>(classes.size());
  }
  const std::string name = a.arch + (a.attention.empty() ? "" : "-" + a.attention);
  auto model = make_model(name, num_classes, in_channels);
  const ImportReport report = load_state_dict(model->module(), state, a.strict);
  check_import(report, a.policy, "\"" + a.input + "\"");
  std::cerr << "import: " << name << " from " << a.input << " (layout " << layout << "): " << report.summary()
            << (report.missing.empty() ? "" : "; the missing tensors keep their initialisation") << "\n";
  if (classes.empty())
    for (int64_t i = 0; i < model->config().num_classes; ++i) classes.push_back("class " + std::to_string(i));
  // torchvision/timm ImageNet models expect their ImageNet preprocessing.
  const Preprocessing pre = Preprocessing::imagenet();
  auto ck = make_checkpoint(*model, classes, pre, {{"imported_from", fs::path(a.input).filename().string()},
                                                   {"layout", layout}});
  save_checkpoint(ck, a.out);
  std::cout << a.out << "\n";
  return kOk;
}

}  // namespace

Runner add_import_command(CLI::App& cli) {
  auto a = std::make_shared<ImportArgs>();
  auto* cmd = cli.add_subcommand("import", "Convert a PyTorch state dict (torchvision, timm, official CBAM) into an "
                                           "attnkit checkpoint");
  cmd->add_option("file", a->input, "torch.save(model.state_dict()) zip file, a training checkpoint with "
                                    "'state_dict' inside, or a .safetensors file")
      ->required()->check(CLI::ExistingFile);
  cmd->add_option("--arch", a->arch, "Architecture: resnet18, resnet34, resnet50, resnet101, resnet152, resnet20, ...")
      ->required();
  cmd->add_option("--attention", a->attention, "Attention in every block (se, eca, cbam, ...); empty: none")
      ->capture_default_str();
  cmd->add_option("--classes", a->classes_file, "Text file with one class name per line (default: 'class N')")
      ->check(CLI::ExistingFile);
  cmd->add_option("--layout", a->layout, "Key layout of the file: auto, or one of the importer's layouts")
      ->capture_default_str();
  cmd->add_flag("--strict", a->strict,
                "Fail on any missing or unexpected key, attention blocks included (default: the attention "
                "blocks' tensors may be missing and keep their initialisation; anything else is an error unless "
                "--allow-missing / --allow-unexpected)");
  cmd->add_flag("--allow-missing", a->policy.allow_missing,
                "Import even when tensors the model needs outside its attention blocks are missing from the "
                "file (they keep their initialisation)");
  cmd->add_flag("--allow-unexpected", a->policy.allow_unexpected,
                "Import even when the file holds tensors the model has no place for (they are ignored)");
  cmd->add_option("--out", a->out, "attnkit checkpoint to write (atomically)")->required();
  cmd->add_flag("--overwrite", a->overwrite, "Replace --out if it exists");
  return [cmd, a]() -> int { return cmd->parsed() ? run_import(*a) : -1; };
}

}  // namespace attnkit::app
