#include <attnkit/backbones/channel_gates.h>
#include <attnkit/modules/cbam.h>
#include <attnkit/modules/channel_attention.h>
#include <attnkit/modules/eca.h>
#include <attnkit/modules/squeeze_excite.h>

#include <algorithm>

namespace attnkit {

namespace {

/// A block's channel gate: the recorder that keeps its weights, and its kind.
struct GateInfo {
  std::string layer, stage, gate;
  AttentionMapRecorder* recorder = nullptr;
};

/// The channel gate inside one block's attention (none: recorder null).
GateInfo find_gate(const torch::nn::AnyModule& attn) {
  GateInfo g;
  if (attn.is_empty()) return g;
  auto* m = attn.ptr().get();
  if (auto* se = dynamic_cast<SqueezeExciteImpl*>(m)) g.recorder = se, g.gate = "se";
  else if (auto* eca = dynamic_cast<ECAImpl*>(m)) g.recorder = eca, g.gate = "eca";
  else if (auto* ch = dynamic_cast<ChannelAttentionImpl*>(m)) g.recorder = ch, g.gate = "channel";
  else if (auto* cbam = dynamic_cast<CBAMImpl*>(m)) {
    if (!cbam->channel.is_empty()) g.recorder = cbam->channel.get(), g.gate = "cbam";
  }
  return g;
}

std::vector<GateInfo> gates_of(Backbone& model) {
  std::vector<GateInfo> out;
  const auto stages = model.stages();
  for (size_t s = 0; s < stages.size(); ++s) {
    int64_t j = 0;
    for (const auto& any : *stages[s]) {
      const std::string stage = "layer" + std::to_string(s + 1);
      const std::string name = stage + "." + std::to_string(j++);
      GateInfo g;
      if (const auto parts = residual_block_parts(*any.ptr())) g = find_gate(parts->attn);
      if (!g.recorder) continue;
      g.layer = name;
      g.stage = stage;
      out.push_back(g);
    }
  }
  return out;
}

std::string join(const std::vector<std::string>& names) {
  std::string out;
  for (const auto& n : names) out += (out.empty() ? "" : ", ") + n;
  return out;
}

}  // namespace

std::vector<std::string> channel_gate_layers(Backbone& model) {
  const auto gates = gates_of(model);
  std::vector<std::string> out;
  for (const auto& g : gates)
    if (std::find(out.begin(), out.end(), g.stage) == out.end()) out.push_back(g.stage);
  for (const auto& g : gates) out.push_back(g.layer);
  if (!out.empty()) out.push_back("all");
  return out;
}

std::vector<ChannelGateWeights> channel_gate_weights(Backbone& model, const torch::Tensor& input,
                                                     const std::vector<std::string>& layers) {
  TORCH_CHECK(input.defined() && input.dim() == 4, "channel_gate_weights: expected an input of shape [N, C, H, W]");
  const auto gates = gates_of(model);
  const auto valid = channel_gate_layers(model);
  TORCH_CHECK(!gates.empty(), "channel_gate_weights: model ", model.config().name(),
              " has no channel gate (se, eca, channel or cbam)");
  std::vector<bool> wanted(gates.size(), layers.empty());
  for (const auto& name : layers) {
    TORCH_CHECK(std::find(valid.begin(), valid.end(), name) != valid.end(), "channel_gate_weights: layer \"", name,
                "\" of ", model.config().name(), " has no channel gate; valid layers: ", join(valid));
    for (size_t i = 0; i < gates.size(); ++i)
      if (name == "all" || gates[i].layer == name || gates[i].stage == name) wanted[i] = true;
  }
  // Recording on where asked, restored afterwards whatever happens.
  std::vector<std::pair<AttentionMapRecorder*, bool>> saved;
  struct Restore {
    std::vector<std::pair<AttentionMapRecorder*, bool>>& saved;
    ~Restore() {
      for (auto& [r, on] : saved) r->record_attention(on);
    }
  } restore{saved};
  for (size_t i = 0; i < gates.size(); ++i)
    if (wanted[i]) {
      saved.emplace_back(gates[i].recorder, gates[i].recorder->recording());
      gates[i].recorder->record_attention(true);
    }
  torch::Device device = torch::kCPU;
  for (const auto& p : model.module().parameters()) {
    device = p.device();
    break;
  }
  {
    torch::NoGradGuard no_grad;
    model.forward(input.to(device));
  }
  std::vector<ChannelGateWeights> out;
  for (size_t i = 0; i < gates.size(); ++i) {
    if (!wanted[i]) continue;
    const auto& w = gates[i].recorder->last_attention();
    TORCH_CHECK(w.defined(), "channel_gate_weights: block ", gates[i].layer, " recorded no weights");
    out.push_back({gates[i].layer, gates[i].gate, w.reshape({w.size(0), -1}).to(torch::kFloat).contiguous()});
  }
  return out;
}

}  // namespace attnkit
