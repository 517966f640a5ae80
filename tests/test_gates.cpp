// CNN gates (SqueezeExcite, ECA, ChannelAttention, SpatialAttention, CBAM) against timm's SEModule,
// EcaModule and CbamModule and against the official CBAM formulation written out in Python
// (tests/python/refs_gates.py), with the reference's own parameter names mapped onto ours as the
// headers document: outputs, attention maps and gradients in double, then float, bfloat16, odd
// shapes, strided and channels-last inputs, CUDA, and the error messages of bad inputs.
#include <attnkit/modules/cbam.h>
#include <attnkit/modules/channel_attention.h>
#include <attnkit/modules/eca.h>
#include <attnkit/modules/spatial_attention.h>
#include <attnkit/modules/squeeze_excite.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <functional>

#include "testing.h"

using attnkit::testing::all_close;
using attnkit::testing::load_refs;
using attnkit::testing::with_prefix;
using ::testing::HasSubstr;
using Refs = std::map<std::string, torch::Tensor>;
using Rename = std::function<std::string(const std::string&)>;

namespace {

std::string same(const std::string& k) { return k; }

/// Replaces the first matching prefix of `k` by its mapped prefix (the importer's name mapping).
std::string replace_prefix(const std::string& k, const std::vector<std::pair<std::string, std::string>>& map) {
  for (const auto& [from, to] : map)
    if (k.rfind(from, 0) == 0) return to + k.substr(from.size());
  return k;
}

// Official CBAM code (Jongchan/attention-module) -> attnkit names, as documented in cbam.h.
std::string official_to_attnkit(const std::string& k) {
  return replace_prefix(k, {{"ChannelGate.mlp.1.", "channel.fc1."},
                            {"ChannelGate.mlp.3.", "channel.fc2."},
                            {"SpatialGate.spatial.", "spatial."}});
}

// timm CbamModule -> attnkit names, as documented in cbam.h (1x1 conv weights reshape on load).
std::string timm_cbam_to_attnkit(const std::string& k) {
  return replace_prefix(k, {{"spatial.conv.conv.", "spatial.conv."}, {"spatial.conv.bn.", "spatial.bn."}});
}

/// Finds our parameter or buffer named `name` (after renaming), or fails the test.
torch::Tensor find_tensor(torch::nn::Module& m, const std::string& name) {
  auto params = m.named_parameters(true);
  if (auto* p = params.find(name)) return *p;
  auto buffers = m.named_buffers(true);
  if (auto* b = buffers.find(name)) return *b;
  ADD_FAILURE() << "module has no parameter or buffer named " << name;
  return {};
}

/// Loads the reference state of case `c` (renamed, reshaped to our layout, cast to our dtype).
void load_case_state(torch::nn::Module& m, const Refs& refs, const std::string& c, const Rename& rename) {
  torch::NoGradGuard no_grad;
  const auto state = with_prefix(refs, c + ".state.");
  ASSERT_FALSE(state.empty()) << "no state for case " << c;
  size_t loaded = 0;
  for (const auto& [k, v] : state) {
    auto dst = find_tensor(m, rename(k));
    ASSERT_TRUE(dst.defined()) << k;
    ASSERT_EQ(dst.numel(), v.numel()) << "size of " << k;
    dst.copy_(v.reshape(dst.sizes()));
    ++loaded;
  }
  EXPECT_EQ(loaded, m.named_parameters(true).size() + m.named_buffers(true).size()) << "every tensor loaded";
}

template <typename Holder>
void check_one_path(Holder& m, const Refs& refs, const std::string& c, const Rename& rename, double tol, bool record) {
  SCOPED_TRACE("case " + c + (record ? ", recording (composite)" : ", fused"));
  load_case_state(*m, refs, c, rename);
  m->eval();
  m->record_attention(record);
  auto x = refs.at(c + ".x").clone().requires_grad_(true);
  auto y = m->forward(x);
  EXPECT_TRUE(all_close(y, refs.at(c + ".y"), tol)) << "output";
  if (record) EXPECT_TRUE(all_close(m->last_attention(), refs.at(c + ".map"), tol)) << "attention map";

  // Gradients of L = sum(y * g) with respect to the input and every parameter.
  std::vector<torch::Tensor> inputs{x};
  std::vector<std::string> names{"x"};
  for (const auto& p : m->named_parameters(true)) {
    inputs.push_back(p.value());
    names.push_back(p.key());
  }
  auto grads = torch::autograd::grad({y}, inputs, {refs.at(c + ".g")});
  EXPECT_TRUE(all_close(grads[0], refs.at(c + ".gx"), tol)) << "d/dx";
  size_t compared = 0;
  for (const auto& [k, ref_grad] : with_prefix(refs, c + ".grad.")) {
    const auto ours = rename(k);
    auto it = std::find(names.begin(), names.end(), ours);
    ASSERT_NE(it, names.end()) << "no parameter " << ours;
    const auto& gr = grads[it - names.begin()];
    EXPECT_TRUE(all_close(gr, ref_grad.reshape(gr.sizes()), tol)) << "d/d" << ours;
    ++compared;
  }
  EXPECT_EQ(compared, names.size() - 1) << "every parameter's gradient compared";
}

/// A gate's forward as a function of x, on both paths, so one checker serves every block: recording
/// its attention map (which runs the composite math: the fused op never builds the map) and on the
/// fused op (Implementation::Fused, recording off).
template <typename Holder>
void check_against_reference(Holder& m, const Refs& refs, const std::string& c, const Rename& rename,
                             double tol = 1e-10) {
  for (bool fused : {false, true}) {
    m->options.impl(fused ? attnkit::Implementation::Fused : attnkit::Implementation::Auto);
    check_one_path(m, refs, c, rename, tol, /*record=*/!fused);
  }
  m->options.impl(attnkit::Implementation::Auto);
}


/// Output of `m` in `dtype` against the double reference of case `c`: rounding_tolerance over the
/// gate's path (the pooling over H·W and over C, every weight's fan-in), at the scale of |x| (the
/// output is x times gates in (0, 1), and the gates' errors reach it in proportion to |x|); in
/// bfloat16 x, the parameters, the gates and y are each rounded once.
template <typename Holder>
void check_dtype(Holder& m, const Refs& refs, const std::string& c, const Rename& rename, torch::Dtype dtype) {
  SCOPED_TRACE("case " + c + " dtype " + std::string(c10::toString(dtype)));
  m->to(dtype);
  load_case_state(*m, refs, c, rename);
  m->eval();
  torch::NoGradGuard no_grad;
  const auto& x = refs.at(c + ".x");
  auto y = m->forward(x.to(dtype));
  EXPECT_EQ(y.scalar_type(), dtype);
  const int64_t K = x.size(1) + x.size(2) * x.size(3) + attnkit::testing::path_length(*m);
  EXPECT_TRUE(all_close(y, refs.at(c + ".y"), attnkit::testing::rounding_tolerance(dtype, K, attnkit::testing::max_abs(x), 4)));
}

/// Same input as strided views (transposed, sliced) and channels-last: same result as the reference.
template <typename Holder>
void check_layouts(Holder& m, const Refs& refs, const std::string& c, const Rename& rename) {
  SCOPED_TRACE("case " + c);
  load_case_state(*m, refs, c, rename);
  m->eval();
  torch::NoGradGuard no_grad;
  const auto x = refs.at(c + ".x");
  const auto& y = refs.at(c + ".y");
  auto transposed = x.transpose(2, 3).contiguous().transpose(2, 3);
  ASSERT_FALSE(transposed.is_contiguous());
  auto wide = torch::zeros({x.size(0), x.size(1), x.size(2), 2 * x.size(3)}, x.options());
  auto sliced = wide.slice(3, 0, 2 * x.size(3), 2);
  sliced.copy_(x);
  ASSERT_FALSE(sliced.is_contiguous());
  auto last = x.contiguous(torch::MemoryFormat::ChannelsLast);
  EXPECT_TRUE(all_close(m->forward(transposed), y, 1e-10)) << "transposed view";
  EXPECT_TRUE(all_close(m->forward(sliced), y, 1e-10)) << "sliced view";
  EXPECT_TRUE(all_close(m->forward(last), y, 1e-10)) << "channels-last";
}

/// Expects `fn` to throw a c10::Error whose message contains every one of `parts`.
void expect_error(const std::function<void()>& fn, const std::vector<std::string>& parts) {
  try {
    fn();
    ADD_FAILURE() << "expected an error containing \"" << parts.front() << "\"";
  } catch (const c10::Error& e) {
    for (const auto& p : parts) EXPECT_THAT(e.what(), HasSubstr(p));
  }
}

#define REFS_OR_SKIP(var, name)                                     \
  auto var = load_refs(name);                                       \
  if (var.empty()) GTEST_SKIP() << "no Python references (" name ")"

// ---- builders matching the reference cases -------------------------------------------------------------

attnkit::SqueezeExcite se_for(int64_t c) {
  // hw1 was made with rd_channels=4 in timm; the others use timm's defaults (rd_divisor 8).
  return attnkit::SqueezeExcite(attnkit::SqueezeExciteOptions(c).rd_channels(c == 48 ? 4 : 0));
}

attnkit::CBAM official_cbam(const std::string& c, int64_t channels) {
  auto o = attnkit::CBAMOptions(channels);
  if (c == "avg") o.pool(attnkit::ChannelPool::Avg);
  if (c == "max") o.pool(attnkit::ChannelPool::Max);
  if (c == "nosp") o.no_spatial(true);
  if (c == "k3") o.kernel_size(3);
  return attnkit::CBAM(o);
}

const std::vector<std::pair<std::string, int64_t>> kOfficialCases = {
    {"c37", 37}, {"c1", 1}, {"avg", 64}, {"max", 64}, {"nosp", 64}, {"k3", 48}, {"hw1", 32}};

}  // namespace

// ---- sizes derived from the options ----------------------------------------------------------------

TEST(Gates, HiddenWidthRounding) {
  EXPECT_EQ(attnkit::reduced_channels(37, 16, 0), 2);  // official C // r
  EXPECT_EQ(attnkit::reduced_channels(24, 16, 0), 1);
  EXPECT_EQ(attnkit::reduced_channels(8, 16, 0), 1);   // at least 1, where C // r = 0
  EXPECT_EQ(attnkit::reduced_channels(24, 16, 1), 2);  // timm rounds 1.5 to nearest
  EXPECT_EQ(attnkit::reduced_channels(64, 16, 8), 8);  // timm SE: at least the divisor
  EXPECT_EQ(attnkit::reduced_channels(256, 16, 8), 16);
  EXPECT_EQ(attnkit::reduced_channels(200, 16, 8), 16);  // 12.5 -> nearest multiple of 8
  EXPECT_EQ(attnkit::SqueezeExcite(64)->hidden_channels(), 8);
  EXPECT_EQ(attnkit::SqueezeExcite(attnkit::SqueezeExciteOptions(64).rd_divisor(0))->hidden_channels(), 4);
  EXPECT_EQ(attnkit::ChannelAttention(37)->hidden_channels(), 2);
  EXPECT_EQ(attnkit::ChannelAttention(attnkit::ChannelAttentionOptions(64).rd_channels(5))->hidden_channels(), 5);
  EXPECT_EQ(attnkit::CBAM(attnkit::CBAMOptions::timm_style(24))->channel->hidden_channels(), 2);
}

TEST(Gates, EcaKernelSizeFromChannels) {
  // t = int(|log2 C + 1| / 2), k = t odd ? t : t + 1
  EXPECT_EQ(attnkit::eca_kernel_size(1), 1);
  EXPECT_EQ(attnkit::eca_kernel_size(4), 1);
  EXPECT_EQ(attnkit::eca_kernel_size(16), 3);
  EXPECT_EQ(attnkit::eca_kernel_size(64), 3);
  EXPECT_EQ(attnkit::eca_kernel_size(256), 5);
  EXPECT_EQ(attnkit::eca_kernel_size(2048), 7);
  EXPECT_EQ(attnkit::eca_kernel_size(4, 2.0, 1.0, 3), 3);  // timm's clamp
  EXPECT_EQ(attnkit::ECA(256)->kernel_size(), 5);
  EXPECT_EQ(attnkit::ECA(attnkit::ECAOptions(256).kernel_size(9))->kernel_size(), 9);
  EXPECT_EQ(attnkit::ECA(256)->conv->weight.sizes(), (std::vector<int64_t>{1, 1, 5}));
}

TEST(Gates, ParameterNamesAndShapes) {
  auto names = [](torch::nn::Module& m) {
    std::map<std::string, std::vector<int64_t>> out;
    for (const auto& p : m.named_parameters(true)) out[p.key()] = p.value().sizes().vec();
    for (const auto& b : m.named_buffers(true)) out[b.key()] = b.value().sizes().vec();
    return out;
  };
  using Shapes = std::map<std::string, std::vector<int64_t>>;
  auto se = attnkit::SqueezeExcite(64);
  EXPECT_EQ(names(*se), (Shapes{{"fc1.weight", {8, 64, 1, 1}}, {"fc1.bias", {8}}, {"fc2.weight", {64, 8, 1, 1}},
                                {"fc2.bias", {64}}}));
  auto cbam = attnkit::CBAM(37);
  EXPECT_EQ(names(*cbam), (Shapes{{"channel.fc1.weight", {2, 37}},
                                  {"channel.fc1.bias", {2}},
                                  {"channel.fc2.weight", {37, 2}},
                                  {"channel.fc2.bias", {37}},
                                  {"spatial.conv.weight", {1, 2, 7, 7}},
                                  {"spatial.bn.weight", {1}},
                                  {"spatial.bn.bias", {1}},
                                  {"spatial.bn.running_mean", {1}},
                                  {"spatial.bn.running_var", {1}},
                                  {"spatial.bn.num_batches_tracked", {}}}));
  // Official init: the spatial BatchNorm weight starts at 0, so a fresh spatial gate is 0.5 everywhere.
  EXPECT_EQ(cbam->spatial->bn->weight.item<double>(), 0.0);
  EXPECT_EQ(attnkit::CBAM(attnkit::CBAMOptions::timm_style(37))->spatial->bn->weight.item<double>(), 1.0);
  EXPECT_EQ(attnkit::CBAM(attnkit::CBAMOptions::timm_style(37))->channel->fc1->bias.defined(), false);
  EXPECT_FALSE(attnkit::CBAM(attnkit::CBAMOptions(8).no_spatial(true))->spatial);
  EXPECT_FALSE(attnkit::SpatialAttention(attnkit::SpatialAttentionOptions().batch_norm(false))->bn);
}

TEST(Gates, FreshSpatialGateIsHalf) {
  auto sa = attnkit::SpatialAttention();
  sa->eval();
  sa->record_attention(true);
  auto x = torch::randn({2, 5, 4, 3}, torch::kDouble);
  sa->to(torch::kDouble);
  EXPECT_TRUE(all_close(sa->forward(x), 0.5 * x, 1e-15));
  EXPECT_TRUE(all_close(sa->last_attention(), torch::full({2, 1, 4, 3}, 0.5, torch::kDouble), 1e-15));
}

// ---- parity with the references, double precision, values and gradients ---------------------------------

TEST(Gates, SqueezeExciteMatchesTimm) {
  REFS_OR_SKIP(refs, "gates_se");
  for (const auto& [c, ch] : std::vector<std::pair<std::string, int64_t>>{{"c64", 64}, {"c37", 37}, {"c1", 1}, {"hw1", 48}}) {
    auto m = se_for(ch);
    m->to(torch::kDouble);
    check_against_reference(m, refs, c, same);
  }
}

TEST(Gates, EcaMatchesTimmAndPaper) {
  REFS_OR_SKIP(refs, "gates_eca");
  const std::vector<std::pair<std::string, attnkit::ECAOptions>> cases = {
      {"c64", attnkit::ECAOptions(64)},
      {"c256", attnkit::ECAOptions(256)},
      {"c4timm", attnkit::ECAOptions(4).min_kernel_size(3)},
      {"c4paper", attnkit::ECAOptions(4)},
      {"c1", attnkit::ECAOptions(1)}};
  for (const auto& [c, o] : cases) {
    auto m = attnkit::ECA(o);
    m->to(torch::kDouble);
    check_against_reference(m, refs, c, same);
  }
}

TEST(Gates, CbamMatchesTimm) {
  REFS_OR_SKIP(refs, "gates_cbam_timm");
  for (const auto& [c, ch] : std::vector<std::pair<std::string, int64_t>>{{"c24", 24}, {"hw1", 32}}) {
    auto m = attnkit::CBAM(attnkit::CBAMOptions::timm_style(ch));
    m->to(torch::kDouble);
    check_against_reference(m, refs, c, timm_cbam_to_attnkit);
  }
}

TEST(Gates, CbamMatchesOfficialFormulation) {
  REFS_OR_SKIP(refs, "gates_cbam_official");
  for (const auto& [c, ch] : kOfficialCases) {
    auto m = official_cbam(c, ch);
    m->to(torch::kDouble);
    check_against_reference(m, refs, c, official_to_attnkit);
  }
}

TEST(Gates, ChannelAndSpatialGatesAloneMatchOfficial) {
  // The official CBAM's gates one at a time: ChannelAttention alone must equal the no_spatial CBAM,
  // and the spatial gate alone must map the channel-gated input to the full CBAM output.
  REFS_OR_SKIP(refs, "gates_cbam_official");
  auto ca = attnkit::ChannelAttention(64);
  ca->to(torch::kDouble);
  auto channel_only = [](const std::string& k) { return replace_prefix(k, {{"ChannelGate.mlp.1.", "fc1."}, {"ChannelGate.mlp.3.", "fc2."}}); };
  check_against_reference(ca, refs, "nosp", channel_only);

  auto ca37 = attnkit::ChannelAttention(37);
  auto sa = attnkit::SpatialAttention();
  ca37->to(torch::kDouble);
  sa->to(torch::kDouble);
  torch::NoGradGuard no_grad;
  for (const auto& [k, v] : with_prefix(refs, "c37.state.")) {
    if (k.rfind("ChannelGate.", 0) == 0) find_tensor(*ca37, channel_only(k)).copy_(v);
    else find_tensor(*sa, replace_prefix(k, {{"SpatialGate.spatial.", ""}})).copy_(v);
  }
  ca37->eval();
  sa->eval();
  sa->record_attention(true);
  EXPECT_TRUE(all_close(sa->forward(ca37->forward(refs.at("c37.x"))), refs.at("c37.y"), 1e-10));
  EXPECT_TRUE(all_close(sa->last_attention(), refs.at("c37.map"), 1e-10));
}

TEST(Gates, CbamTrainingModeBatchNorm) {
  // Batch statistics in the forward, running statistics moved by the official momentum 0.01.
  REFS_OR_SKIP(refs, "gates_cbam_official");
  auto m = attnkit::CBAM(24);
  m->to(torch::kDouble);
  load_case_state(*m, refs, "train", official_to_attnkit);
  m->train();
  auto x = refs.at("train.x").clone().requires_grad_(true);
  auto y = m->forward(x);
  EXPECT_TRUE(all_close(y, refs.at("train.y"), 1e-10));
  auto gx = torch::autograd::grad({y}, {x}, {refs.at("train.g")})[0];
  EXPECT_TRUE(all_close(gx, refs.at("train.gx"), 1e-10));
  EXPECT_TRUE(all_close(m->spatial->bn->running_mean, refs.at("train.running_mean"), 1e-12));
  EXPECT_TRUE(all_close(m->spatial->bn->running_var, refs.at("train.running_var"), 1e-12));
  EXPECT_EQ(m->spatial->bn->num_batches_tracked.item<int64_t>(),
            refs.at("train.state.SpatialGate.spatial.bn.num_batches_tracked").item<int64_t>() + 1);
}

// ---- gradients by central differences (independent of Python) ------------------------------------------

TEST(Gates, GradientsMatchFiniteDifferences) {
  torch::manual_seed(7);
  auto cbam = attnkit::CBAM(attnkit::CBAMOptions(5).reduction(2).kernel_size(3));
  cbam->to(torch::kDouble);
  {
    torch::NoGradGuard no_grad;
    for (auto& p : cbam->parameters()) p.copy_(torch::randn_like(p) * 0.5);
    cbam->spatial->bn->running_mean.fill_(0.2);
    cbam->spatial->bn->running_var.fill_(1.3);
  }
  cbam->eval();
  auto x = torch::randn({2, 5, 3, 4}, torch::kDouble);
  auto g = torch::randn({2, 5, 3, 4}, torch::kDouble);
  auto loss = [&] { return (cbam->forward(x) * g).sum(); };

  std::vector<torch::Tensor> wrt{x.requires_grad_(true)};
  for (auto& p : cbam->parameters()) wrt.push_back(p);
  auto grads = torch::autograd::grad({loss()}, wrt);
  x.requires_grad_(false);

  const double eps = 1e-6;
  torch::NoGradGuard no_grad;
  for (size_t i = 0; i < wrt.size(); ++i) {
    for (int trial = 0; trial < 2; ++trial) {
      auto dir = torch::randn_like(wrt[i]);
      wrt[i].add_(dir, eps);
      const double up = loss().item<double>();
      wrt[i].add_(dir, -2 * eps);
      const double down = loss().item<double>();
      wrt[i].add_(dir, eps);
      const double numeric = (up - down) / (2 * eps);
      const double analytic = (grads[i] * dir).sum().item<double>();
      EXPECT_NEAR(analytic, numeric, 1e-6 * (1 + std::abs(numeric))) << "tensor " << i;
    }
  }
}

// ---- reduced precision -----------------------------------------------------------------------------------

TEST(Gates, FloatAndBFloat16MatchDoubleReference) {
  auto se_refs = load_refs("gates_se");
  auto eca_refs = load_refs("gates_eca");
  auto timm_refs = load_refs("gates_cbam_timm");
  auto off_refs = load_refs("gates_cbam_official");
  if (se_refs.empty() || eca_refs.empty() || timm_refs.empty() || off_refs.empty()) GTEST_SKIP() << "no references";
  for (auto dtype : {torch::kFloat, torch::kBFloat16}) {
    auto se = se_for(64);
    check_dtype(se, se_refs, "c64", same, dtype);
    auto eca = attnkit::ECA(256);
    check_dtype(eca, eca_refs, "c256", same, dtype);
    auto tc = attnkit::CBAM(attnkit::CBAMOptions::timm_style(24));
    check_dtype(tc, timm_refs, "c24", timm_cbam_to_attnkit, dtype);
    auto oc = official_cbam("c37", 37);
    check_dtype(oc, off_refs, "c37", official_to_attnkit, dtype);
  }
}

// ---- layouts and odd shapes ------------------------------------------------------------------------------

TEST(Gates, StridedAndChannelsLastInputs) {
  auto se_refs = load_refs("gates_se");
  auto eca_refs = load_refs("gates_eca");
  auto off_refs = load_refs("gates_cbam_official");
  if (se_refs.empty() || eca_refs.empty() || off_refs.empty()) GTEST_SKIP() << "no references";
  auto se = se_for(64);
  se->to(torch::kDouble);
  check_layouts(se, se_refs, "c64", same);
  auto eca = attnkit::ECA(256);
  eca->to(torch::kDouble);
  check_layouts(eca, eca_refs, "c256", same);
  auto oc = official_cbam("c37", 37);
  oc->to(torch::kDouble);
  check_layouts(oc, off_refs, "c37", official_to_attnkit);
}

TEST(Gates, ChannelsLastOutputKeepsShapeAndGradients) {
  auto m = attnkit::CBAM(attnkit::CBAMOptions(16).reduction(4));
  m->to(torch::kDouble);
  m->eval();
  auto x = torch::randn({2, 16, 5, 3}, torch::kDouble);
  auto xl = x.contiguous(torch::MemoryFormat::ChannelsLast).requires_grad_(true);
  auto xc = x.clone().requires_grad_(true);
  auto yl = m->forward(xl);
  auto yc = m->forward(xc);
  EXPECT_TRUE(all_close(yl, yc, 1e-12));
  yl.sum().backward();
  yc.sum().backward();
  EXPECT_TRUE(all_close(xl.grad(), xc.grad(), 1e-12));
}

TEST(Gates, EmptyBatch) {
  auto x = torch::randn({0, 16, 4, 5}, torch::kDouble).requires_grad_(true);
  auto run = [&](auto m) {
    m->to(torch::kDouble);
    m->eval();
    m->record_attention(true);
    auto y = m->forward(x);
    EXPECT_EQ(y.sizes(), x.sizes());
    y.sum().backward();
    EXPECT_EQ(x.grad().sizes(), x.sizes());
    EXPECT_EQ(m->last_attention().size(0), 0);
  };
  run(attnkit::SqueezeExcite(16));
  run(attnkit::ECA(16));
  run(attnkit::ChannelAttention(16));
  run(attnkit::SpatialAttention());
  run(attnkit::CBAM(16));
}

// ---- attention maps --------------------------------------------------------------------------------------

TEST(Gates, AttentionMapsOnlyWhenRecording) {
  auto x = torch::randn({2, 8, 5, 3});
  auto check = [&](auto m, std::vector<int64_t> shape) {
    m->eval();
    auto y = m->forward(x);
    EXPECT_FALSE(m->last_attention().defined()) << "off by default";
    m->record_attention(true);
    y = m->forward(x);
    ASSERT_TRUE(m->last_attention().defined());
    EXPECT_EQ(m->last_attention().sizes(), shape);
    EXPECT_FALSE(m->last_attention().requires_grad());
    auto map = m->last_attention();
    auto scale = map.dim() == 2 ? map.unsqueeze(-1).unsqueeze(-1) : map;
    // The same product in float32, rounded once each side.
    EXPECT_TRUE(all_close(y, x * scale, 2 * attnkit::testing::unit_roundoff(torch::kFloat) * attnkit::testing::max_abs(x)))
        << "the recorded map is what scales x";
    EXPECT_GE(map.min().item().toDouble(), 0.0);
    EXPECT_LE(map.max().item().toDouble(), 1.0);
    m->record_attention(false);
    EXPECT_FALSE(m->last_attention().defined()) << "turning recording off drops the map";
  };
  check(attnkit::SqueezeExcite(8), {2, 8});
  check(attnkit::ECA(8), {2, 8});
  check(attnkit::ChannelAttention(8), {2, 8});
  check(attnkit::SpatialAttention(), {2, 1, 5, 3});
  check(attnkit::CBAM(attnkit::CBAMOptions(8).no_spatial(true)), {2, 8});

  // CBAM records the spatial map; its channel child records the channel map when asked.
  auto cbam = attnkit::CBAM(attnkit::CBAMOptions(8).reduction(2));
  {
    torch::NoGradGuard no_grad;
    cbam->spatial->bn->weight.fill_(1.0);  // a non-constant spatial map
  }
  cbam->eval();
  cbam->record_attention(true);
  cbam->forward(x);
  EXPECT_EQ(cbam->last_attention().sizes(), (std::vector<int64_t>{2, 1, 5, 3}));
  EXPECT_FALSE(cbam->channel->last_attention().defined());
  EXPECT_FALSE(cbam->spatial->last_attention().defined());
  cbam->channel->record_attention(true);
  auto y = cbam->forward(x);
  const auto& cmap = cbam->channel->last_attention();
  ASSERT_EQ(cmap.sizes(), (std::vector<int64_t>{2, 8}));
  // Two products, rounded in either order: 2u each side.
  EXPECT_TRUE(all_close(y, x * cmap.unsqueeze(-1).unsqueeze(-1) * cbam->last_attention(),
                        4 * attnkit::testing::unit_roundoff(torch::kFloat) * attnkit::testing::max_abs(x)));
}

// ---- bad input and bad options ---------------------------------------------------------------------------

TEST(Gates, BadInputMessages) {
  auto cbam = attnkit::CBAM(256);
  expect_error([&] { cbam->forward(torch::randn({2, 128, 7, 7})); },
               {"CBAM: expected input of shape [N, 256, H, W], got [2, 128, 7, 7]"});
  expect_error([&] { cbam->forward(torch::randn({2, 256})); },
               {"CBAM: expected a 4-D input of shape [N, 256, H, W], got [2, 256]"});
  expect_error([&] { cbam->forward(torch::ones({2, 256, 3, 3}, torch::kLong)); },
               {"CBAM: expected a floating-point input", "Long"});
  expect_error([&] { cbam->forward(torch::ones({2, 256, 3, 3}, torch::kDouble)); },
               {"CBAM: expected input of dtype Float (the parameters' dtype), got Double"});
  expect_error([&] { cbam->forward(torch::ones({2, 256, 0, 3})); }, {"CBAM:", "H, W >= 1", "[2, 256, 0, 3]"});
  expect_error([&] { attnkit::SqueezeExcite(64)->forward(torch::randn({1, 64, 3, 3, 3})); },
               {"SqueezeExcite: expected a 4-D input of shape [N, 64, H, W], got [1, 64, 3, 3, 3]"});
  expect_error([&] { attnkit::ECA(64)->forward(torch::randn({1, 63, 3, 3})); },
               {"ECA: expected input of shape [N, 64, H, W], got [1, 63, 3, 3]"});
  expect_error([&] { attnkit::ChannelAttention(4)->forward(torch::randn({1, 5, 3, 3})); },
               {"ChannelAttention: expected input of shape [N, 4, H, W], got [1, 5, 3, 3]"});
  expect_error([&] { attnkit::SpatialAttention()->forward(torch::randn({3, 3, 3})); },
               {"SpatialAttention: expected a 4-D input of shape [N, C, H, W], got [3, 3, 3]"});
  expect_error([&] { attnkit::SpatialAttention()->forward(torch::ones({1, 3, 3, 3}, torch::kInt)); },
               {"SpatialAttention: expected a floating-point input", "Int"});
}

TEST(Gates, BadOptionMessages) {
  expect_error([] { attnkit::ECA(attnkit::ECAOptions(64).kernel_size(4)); }, {"ECA: kernel_size must be odd", "got 4"});
  expect_error([] { attnkit::SpatialAttention(attnkit::SpatialAttentionOptions().kernel_size(6)); },
               {"SpatialAttention: kernel_size must be odd and positive, got 6"});
  expect_error([] { attnkit::SqueezeExcite(attnkit::SqueezeExciteOptions(64).reduction(0)); },
               {"SqueezeExcite: reduction must be >= 1, got 0"});
  expect_error([] { attnkit::ChannelAttention(0); }, {"ChannelAttention: channels must be >= 1, got 0"});
  expect_error([] { attnkit::CBAM(attnkit::CBAMOptions(16).kernel_size(0)); }, {"SpatialAttention: kernel_size", "got 0"});
}

TEST(Gates, PrettyPrintShowsOptions) {
  std::ostringstream s;
  s << *attnkit::CBAM(64);
  EXPECT_THAT(s.str(), HasSubstr("attnkit::CBAM(channels=64, reduction=16, kernel_size=7"));
  EXPECT_THAT(s.str(), HasSubstr("attnkit::ChannelAttention(channels=64, hidden=4"));
  EXPECT_THAT(s.str(), HasSubstr("attnkit::SpatialAttention(kernel_size=7, pool_order=max,mean"));
}

// ---- CUDA ------------------------------------------------------------------------------------------------

TEST(Gates, CudaMatchesReference) {
  if (!attnkit::testing::cuda_available()) GTEST_SKIP() << "no CUDA device";
  REFS_OR_SKIP(refs, "gates_cbam_official");
  auto se_refs = load_refs("gates_se");
  auto eca_refs = load_refs("gates_eca");
  const torch::Device cuda(torch::kCUDA);
  auto on_cuda = [&](auto m, const Refs& r, const std::string& c, const Rename& rename) {
    SCOPED_TRACE("case " + c);
    m->to(torch::kDouble);
    load_case_state(*m, r, c, rename);
    m->to(cuda);
    m->eval();
    auto x = r.at(c + ".x").to(cuda).requires_grad_(true);
    auto y = m->forward(x);
    EXPECT_TRUE(y.is_cuda());
    EXPECT_TRUE(all_close(y, r.at(c + ".y"), 1e-9));
    auto gx = torch::autograd::grad({y}, {x}, {r.at(c + ".g").to(cuda)})[0];
    EXPECT_TRUE(all_close(gx, r.at(c + ".gx"), 1e-9));
    auto yl = m->forward(r.at(c + ".x").to(cuda).contiguous(torch::MemoryFormat::ChannelsLast));
    EXPECT_TRUE(all_close(yl, r.at(c + ".y"), 1e-9)) << "channels-last";
    m->to(torch::kFloat);
    EXPECT_TRUE(all_close(m->forward(r.at(c + ".x").to(cuda, torch::kFloat)), r.at(c + ".y"), 1e-5)) << "float";
  };
  on_cuda(official_cbam("c37", 37), refs, "c37", official_to_attnkit);
  on_cuda(official_cbam("hw1", 32), refs, "hw1", official_to_attnkit);
  if (!se_refs.empty()) on_cuda(se_for(64), se_refs, "c64", same);
  if (!eca_refs.empty()) on_cuda(attnkit::ECA(256), eca_refs, "c256", same);
}

TEST(Gates, CudaDeviceMismatchMessage) {
  if (!attnkit::testing::cuda_available()) GTEST_SKIP() << "no CUDA device";
  auto m = attnkit::CBAM(16);
  expect_error([&] { m->forward(torch::randn({1, 16, 3, 3}, torch::Device(torch::kCUDA))); },
               {"CBAM: expected input on cpu (the parameters' device), got cuda:0"});
  auto sa = attnkit::SpatialAttention();
  sa->to(torch::Device(torch::kCUDA));
  expect_error([&] { sa->forward(torch::randn({1, 16, 3, 3})); },
               {"SpatialAttention: expected input on cuda:0 (the parameters' device), got cpu"});
}
