// SelfAttention2d (multi-head and non-local) and LocalAttention2d against independent Python
// references (tests/python/refs_feature_attention.py): explicit softmax attention, timm's
// NonLocalAttn, and a slow per-position loop for neighborhood attention with NATTEN's windows.
#include <attnkit/modules/local_attention2d.h>
#include <attnkit/modules/relative_position.h>
#include <attnkit/modules/self_attention2d.h>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "testing.h"

using attnkit::LocalAttention2d;
using attnkit::LocalAttention2dOptions;
using attnkit::SelfAttention2d;
using attnkit::SelfAttention2dOptions;
using attnkit::SelfAttention2dVariant;
using attnkit::testing::all_close;
using attnkit::testing::load_into;
using attnkit::testing::load_refs;
using attnkit::testing::with_prefix;
using ::testing::HasSubstr;
using Refs = std::map<std::string, torch::Tensor>;

namespace {

#define LOAD_OR_SKIP(var, name)                                     \
  auto var = load_refs(name);                                       \
  if (var.empty()) GTEST_SKIP() << "no Python reference " << name

/// Output and gradients (of sum(y * gout)) w.r.t. x and every parameter, keyed "grad.<name>".
Refs run_with_grads(torch::nn::Module& m, const std::function<torch::Tensor(const torch::Tensor&)>& fwd,
                    const torch::Tensor& x_in, const torch::Tensor& gout) {
  auto x = x_in.detach().clone().requires_grad_(true);
  for (auto& p : m.parameters()) p.mutable_grad() = torch::Tensor();
  auto y = fwd(x);
  (y * gout.to(y.options())).sum().backward();
  Refs out{{"y", y.detach()}, {"grad.x", x.grad()}};
  for (const auto& item : m.named_parameters()) out["grad." + item.key()] = item.value().grad();
  return out;
}

/// Checks y and every grad.* of `refs` that the module has.
void expect_matches(const Refs& got, const Refs& refs, double atol, double rtol = 0.0) {
  EXPECT_TRUE(all_close(got.at("y"), refs.at("y"), atol, rtol)) << "y";
  int grads = 0;
  for (const auto& [k, v] : refs) {
    if (k.rfind("grad.", 0) != 0) continue;
    ASSERT_TRUE(got.count(k)) << "module has no gradient " << k;
    EXPECT_TRUE(all_close(got.at(k), v, atol, rtol)) << k;
    ++grads;
  }
  EXPECT_GE(grads, 3);
}

SelfAttention2d mhsa_from(const Refs& refs, SelfAttention2dOptions o) {
  SelfAttention2d m(o);
  m->to(torch::kDouble);
  load_into(*m, with_prefix(refs, "state."));
  return m;
}

using attnkit::testing::error_of;

/// A block's float32 or bfloat16 output against the float64 reference: testing.h's rounding_tolerance
/// over the block's path (every weight's fan-in, plus the attention's logits, normaliser and weighted
/// sum over at most H·W keys) at the scale of max(|x|, |y|); in bfloat16 the input and weights, the
/// projections, the logits, the softmax and y are rounded once each (6 roundings, 2·2^-8 each).
::testing::AssertionResult close_in(torch::ScalarType dtype, torch::nn::Module& m, const torch::Tensor& y,
                                    const torch::Tensor& x, const torch::Tensor& ref) {
  const int64_t K = attnkit::testing::path_length(m) + 3 * x.size(2) * x.size(3);
  const double scale = std::max(attnkit::testing::max_abs(x), attnkit::testing::max_abs(ref));
  return all_close(y, ref, attnkit::testing::rounding_tolerance(dtype, K, scale, 6));
}

/// Channels-last and a non-contiguous view holding the same values as x.
std::vector<torch::Tensor> layouts_of(const torch::Tensor& x) {
  auto cl = x.contiguous(torch::MemoryFormat::ChannelsLast);
  auto nc = x.transpose(2, 3).contiguous().transpose(2, 3);  // strides of a W×H map, viewed as H×W
  EXPECT_FALSE(nc.is_contiguous());
  return {cl, nc};
}

}  // namespace

// ---- SelfAttention2d, multi-head ----------------------------------------------------------------

TEST(SelfAttention2d, MatchesExplicitSoftmaxAttentionFp64WithGradients) {
  LOAD_OR_SKIP(refs, "feature_attention_mhsa");
  auto m = mhsa_from(refs, SelfAttention2dOptions(8).heads(2));
  auto got = run_with_grads(*m, [&](const torch::Tensor& x) { return m(x); }, refs.at("x"), refs.at("gout"));
  expect_matches(got, refs, 1e-10);
}

TEST(SelfAttention2d, Fp32AndBf16) {
  LOAD_OR_SKIP(refs, "feature_attention_mhsa");
  auto m = mhsa_from(refs, SelfAttention2dOptions(8).heads(2));
  m->to(torch::kFloat);
  EXPECT_TRUE(close_in(torch::kFloat, *m, m(refs.at("x").to(torch::kFloat)), refs.at("x"), refs.at("y")));
  m->to(torch::kBFloat16);
  auto y = m(refs.at("x").to(torch::kBFloat16));
  EXPECT_EQ(y.scalar_type(), torch::kBFloat16);
  EXPECT_TRUE(close_in(torch::kBFloat16, *m, y, refs.at("x"), refs.at("y")));
}

TEST(SelfAttention2d, ExplicitHeadDimWithChannelsNotAMultipleOfHeads) {
  LOAD_OR_SKIP(refs, "feature_attention_mhsa_head_dim");
  auto m = mhsa_from(refs, SelfAttention2dOptions(6).heads(4).head_dim(3).qkv_bias(false));
  EXPECT_EQ(m->qkv->weight.size(0), 36);
  EXPECT_FALSE(m->qkv->bias.defined());
  auto got = run_with_grads(*m, [&](const torch::Tensor& x) { return m(x); }, refs.at("x"), refs.at("gout"));
  expect_matches(got, refs, 1e-10);
}

TEST(SelfAttention2d, RelativePositionBiasAtFeatSizeWithGradients) {
  LOAD_OR_SKIP(refs, "feature_attention_mhsa_rel_pos");
  auto m = mhsa_from(refs, SelfAttention2dOptions(8).heads(2).rel_pos(true).feat_size({5, 7}));
  EXPECT_EQ(m->relative_position_bias_table.sizes(), (std::vector<int64_t>{9 * 13, 2}));
  auto got = run_with_grads(*m, [&](const torch::Tensor& x) { return m(x); }, refs.at("x"), refs.at("gout"));
  expect_matches(got, refs, 1e-10);
  EXPECT_TRUE(got.count("grad.relative_position_bias_table"));
  m->record_attention(true);
  m(refs.at("x"));
  EXPECT_TRUE(all_close(m->last_attention(), refs.at("attn_centre"), 1e-12));
}

TEST(SelfAttention2d, RelativePositionTableIsInterpolatedForOtherSizes) {
  LOAD_OR_SKIP(refs, "feature_attention_mhsa_rel_pos");
  auto m = mhsa_from(refs, SelfAttention2dOptions(8).heads(2).rel_pos(true).feat_size({5, 7}));
  m->record_attention(true);
  EXPECT_TRUE(all_close(m(refs.at("x_resized")), refs.at("y_resized"), 1e-10));
  EXPECT_TRUE(all_close(m->last_attention(), refs.at("attn_resized_centre"), 1e-12));
}

TEST(SelfAttention2d, RecordingIsOffByDefaultAndRecordsRequestedRows) {
  LOAD_OR_SKIP(refs, "feature_attention_mhsa");
  auto m = mhsa_from(refs, SelfAttention2dOptions(8).heads(2));
  m(refs.at("x"));
  EXPECT_FALSE(m->recording());
  EXPECT_FALSE(m->last_attention().defined());

  m->record_attention(true);
  auto y = m(refs.at("x"));
  EXPECT_TRUE(all_close(y, refs.at("y"), 1e-10)) << "recording must not change the output";
  const auto& a = m->last_attention();
  ASSERT_EQ(a.sizes(), (std::vector<int64_t>{2, 2, 1, 5, 7}));
  EXPECT_TRUE(all_close(a, refs.at("attn_centre"), 1e-12));
  EXPECT_TRUE(all_close(a.sum({3, 4}), torch::ones({2, 2, 1}, torch::kDouble), 1e-12));

  m->options.record_queries({{0, 0}, {4, 6}, {1, 5}});
  m(refs.at("x"));
  EXPECT_TRUE(all_close(m->last_attention(), refs.at("attn_listed"), 1e-12));

  m->options.record_queries({{5, 0}});
  EXPECT_THAT(error_of([&] { m(refs.at("x")); }), HasSubstr("record_queries entry (5, 0) must lie inside the 5x7 map"));

  m->record_attention(false);
  EXPECT_FALSE(m->last_attention().defined());
}

TEST(SelfAttention2d, SinglePositionMapIsProjectedValues) {
  // H·W = 1: softmax over one key is 1, so y = proj(v).
  torch::manual_seed(3);
  SelfAttention2d m(SelfAttention2dOptions(6).heads(3));
  m->to(torch::kDouble);
  auto x = torch::randn({3, 6, 1, 1}, torch::kDouble);
  auto qkv = m->qkv(x);
  auto expected = m->proj(qkv.slice(1, 12, 18));
  EXPECT_TRUE(all_close(m(x), expected, 1e-12));
  m->record_attention(true);
  m(x);
  EXPECT_TRUE(all_close(m->last_attention(), torch::ones({3, 3, 1, 1, 1}, torch::kDouble), 1e-12));
}

TEST(SelfAttention2d, EmptyBatch) {
  for (auto variant : {SelfAttention2dVariant::MultiHead, SelfAttention2dVariant::NonLocal}) {
    SelfAttention2d m(SelfAttention2dOptions(8).heads(2).variant(variant));
    m->eval();
    m->record_attention(true);
    auto x = torch::randn({0, 8, 3, 5}, torch::requires_grad());
    auto y = m(x);
    EXPECT_EQ(y.sizes(), x.sizes());
    y.sum().backward();
    EXPECT_EQ(x.grad().sizes(), x.sizes());
  }
}

TEST(SelfAttention2d, ChannelsLastAndNonContiguousInputs) {
  LOAD_OR_SKIP(refs, "feature_attention_mhsa_rel_pos");
  auto m = mhsa_from(refs, SelfAttention2dOptions(8).heads(2).rel_pos(true).feat_size({5, 7}));
  for (const auto& x : layouts_of(refs.at("x"))) EXPECT_TRUE(all_close(m(x), refs.at("y"), 1e-10));
}

TEST(SelfAttention2d, GradientMatchesFiniteDifferences) {
  // Central differences in double on a tiny map, w.r.t. the input and the bias table (interpolated).
  torch::manual_seed(5);
  SelfAttention2d m(SelfAttention2dOptions(4).heads(2).rel_pos(true).feat_size({3, 3}));
  m->to(torch::kDouble);
  {
    torch::NoGradGuard g;
    m->relative_position_bias_table.normal_(0, 0.5);
  }
  auto x = torch::randn({1, 4, 2, 3}, torch::kDouble).requires_grad_(true);
  auto gout = torch::randn({1, 4, 2, 3}, torch::kDouble);
  auto loss = [&] { return (m(x) * gout).sum(); };
  loss().backward();
  for (torch::Tensor* t : {&x, &m->relative_position_bias_table}) {
    auto analytic = t->grad().clone();
    auto numeric = attnkit::testing::numeric_gradient([&] { return loss().item<double>(); }, *t);
    EXPECT_TRUE(all_close(analytic, numeric, 1e-7));
  }
}

TEST(SelfAttention2d, BadArgumentsNameTheArgument) {
  SelfAttention2d m(SelfAttention2dOptions(8).heads(2));
  EXPECT_THAT(error_of([&] { m(torch::randn({8, 3, 3})); }), HasSubstr("input x must be 4-D [N, C, H, W], got 3-D"));
  EXPECT_THAT(error_of([&] { m(torch::randn({1, 6, 3, 3})); }), HasSubstr("input x must have channels = 8, got 6"));
  EXPECT_THAT(error_of([&] { m(torch::ones({1, 8, 3, 3}, torch::kLong)); }), HasSubstr("input x must be floating point"));
  EXPECT_THAT(error_of([&] { SelfAttention2d(SelfAttention2dOptions(6).heads(4)); }),
              HasSubstr("channels (6) must be a multiple of heads (4)"));
  EXPECT_THAT(error_of([&] { SelfAttention2d(SelfAttention2dOptions(8).heads(0)); }),
              HasSubstr("heads must be positive, got 0"));
  EXPECT_THAT(error_of([&] { SelfAttention2d(SelfAttention2dOptions(8).rel_pos(true)); }),
              HasSubstr("feat_size must be {H, W} with H, W > 0 when rel_pos is on"));
  EXPECT_THAT(error_of([&] {
                SelfAttention2d(SelfAttention2dOptions(8).variant(SelfAttention2dVariant::NonLocal).rel_pos(true).feat_size({2, 2}));
              }),
              HasSubstr("rel_pos must be false for the non_local variant"));
  std::ostringstream s;
  m->pretty_print(s);
  EXPECT_EQ(s.str(), "attnkit::SelfAttention2d(channels=8, variant=mhsa, heads=2, head_dim=4, qkv_bias=true)");
}

// ---- SelfAttention2d, non-local (timm NonLocalAttn) ---------------------------------------------

TEST(SelfAttention2d, NonLocalLoadsTimmStateAndMatchesItFp64) {
  LOAD_OR_SKIP(refs, "feature_attention_non_local");
  SelfAttention2d m(SelfAttention2dOptions(16).variant(SelfAttention2dVariant::NonLocal));
  EXPECT_EQ(m->inner_dim(), 8);
  m->to(torch::kDouble);
  // every tensor of timm's state dict, by its timm name, and nothing else
  auto state = with_prefix(refs, "state.");
  EXPECT_EQ(state.size(), m->named_parameters().size() + m->named_buffers().size());
  load_into(*m, state);
  m->eval();
  auto got = run_with_grads(*m, [&](const torch::Tensor& x) { return m(x); }, refs.at("x"), refs.at("gout"));
  expect_matches(got, refs, 1e-10);

  m->record_attention(true);
  m(refs.at("x"));
  EXPECT_TRUE(all_close(m->last_attention(), refs.at("attn_centre"), 1e-12));

  m->train();  // batch statistics
  EXPECT_TRUE(all_close(m(refs.at("x")), refs.at("y_train"), 1e-10));

  load_into(*m, state);  // the train-mode call moved the running statistics
  m->eval();
  m->to(torch::kFloat);
  EXPECT_TRUE(close_in(torch::kFloat, *m, m(refs.at("x").to(torch::kFloat)), refs.at("x"), refs.at("y")));
}

TEST(SelfAttention2d, NonLocalStartsAsIdentity) {
  SelfAttention2d m(SelfAttention2dOptions(12).variant(SelfAttention2dVariant::NonLocal).rd_channels(5));
  EXPECT_EQ(m->t->weight.size(0), 5);
  auto x = torch::randn({2, 12, 4, 3});
  EXPECT_TRUE(m(x).equal(x));
}

// ---- LocalAttention2d ---------------------------------------------------------------------------

struct LocalCase {
  const char* ref;
  int64_t channels, heads, kernel, dilation;
  bool rpb;
};

class LocalAttention2dParity : public ::testing::TestWithParam<LocalCase> {};

LocalAttention2d local_from(const Refs& refs, const LocalCase& c) {
  LocalAttention2d m(LocalAttention2dOptions(c.channels).heads(c.heads).kernel_size(c.kernel).dilation(c.dilation).rel_pos_bias(c.rpb));
  m->to(torch::kDouble);
  load_into(*m, with_prefix(refs, "state."));
  return m;
}

TEST_P(LocalAttention2dParity, MatchesPerPositionLoopFp64WithGradientsAndMaps) {
  const auto c = GetParam();
  LOAD_OR_SKIP(refs, c.ref);
  auto m = local_from(refs, c);
  EXPECT_EQ(m->rpb.defined(), c.rpb);
  auto got = run_with_grads(*m, [&](const torch::Tensor& x) { return m(x); }, refs.at("x"), refs.at("gout"));
  expect_matches(got, refs, 1e-10);
  EXPECT_EQ(got.count("grad.rpb"), c.rpb ? 1u : 0u);

  EXPECT_FALSE(m->last_attention().defined());
  m->record_attention(true);
  m(refs.at("x"));
  const auto& a = m->last_attention();
  EXPECT_TRUE(all_close(a, refs.at("attn"), 1e-12));
  EXPECT_TRUE(all_close(a.sum({4, 5}), torch::ones(a.sizes().slice(0, 4), torch::kDouble), 1e-12));
}

TEST_P(LocalAttention2dParity, ChannelsLastAndNonContiguousInputs) {
  const auto c = GetParam();
  LOAD_OR_SKIP(refs, c.ref);
  auto m = local_from(refs, c);
  for (const auto& x : layouts_of(refs.at("x"))) EXPECT_TRUE(all_close(m(x), refs.at("y"), 1e-10));
}

INSTANTIATE_TEST_SUITE_P(
    Windows, LocalAttention2dParity,
    ::testing::Values(LocalCase{"feature_attention_local_k3_d1", 8, 2, 3, 1, true},
                      LocalCase{"feature_attention_local_k3_d2", 8, 2, 3, 2, true},
                      LocalCase{"feature_attention_local_k5_d1", 8, 2, 5, 1, true},
                      LocalCase{"feature_attention_local_k3_d1_no_rpb", 8, 2, 3, 1, false},
                      LocalCase{"feature_attention_local_k3_d3_no_rpb", 8, 2, 3, 3, false},
                      LocalCase{"feature_attention_local_k5_d2", 4, 1, 5, 2, true}),
    [](const ::testing::TestParamInfo<LocalCase>& info) { return std::string(info.param.ref).substr(18); });

TEST(LocalAttention2d, Fp32AndBf16) {
  const LocalCase c{"feature_attention_local_k3_d2", 8, 2, 3, 2, true};
  LOAD_OR_SKIP(refs, c.ref);
  auto m = local_from(refs, c);
  m->to(torch::kFloat);
  EXPECT_TRUE(close_in(torch::kFloat, *m, m(refs.at("x").to(torch::kFloat)), refs.at("x"), refs.at("y")));
  m->to(torch::kBFloat16);
  auto y = m(refs.at("x").to(torch::kBFloat16));
  EXPECT_EQ(y.scalar_type(), torch::kBFloat16);
  EXPECT_TRUE(close_in(torch::kBFloat16, *m, y, refs.at("x"), refs.at("y")));
}

TEST(LocalAttention2d, GradientMatchesFiniteDifferences) {
  torch::manual_seed(6);
  LocalAttention2d m(LocalAttention2dOptions(2).heads(1).kernel_size(3));
  m->to(torch::kDouble);
  {
    torch::NoGradGuard g;
    m->rpb.normal_(0, 0.5);
  }
  auto x = torch::randn({1, 2, 3, 4}, torch::kDouble).requires_grad_(true);
  auto gout = torch::randn({1, 2, 3, 4}, torch::kDouble);
  auto loss = [&] { return (m(x) * gout).sum(); };
  loss().backward();
  for (torch::Tensor* t : {&x, &m->rpb}) {
    auto analytic = t->grad().clone();
    auto numeric = attnkit::testing::numeric_gradient([&] { return loss().item<double>(); }, *t);
    EXPECT_TRUE(all_close(analytic, numeric, 1e-7));
  }
}

TEST(LocalAttention2d, WindowsShiftInwardPerDilationGroup) {
  // NATTEN's windows along an axis of 11 with k = 3: starts written out by hand.
  std::vector<int64_t> d1, d2;
  for (int64_t i = 0; i < 11; ++i) {
    d1.push_back(attnkit::neighborhood_window_start(i, 11, 3, 1));
    d2.push_back(attnkit::neighborhood_window_start(i, 11, 3, 2));
  }
  EXPECT_EQ(d1, (std::vector<int64_t>{0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 8}));
  // groups {0,2,..,10} (6 members) and {1,3,..,9} (5 members)
  EXPECT_EQ(d2, (std::vector<int64_t>{0, 1, 0, 1, 2, 3, 4, 5, 6, 5, 6}));
  auto nb = attnkit::neighborhood_index(6, 6, 3, 2, torch::kCPU);
  ASSERT_EQ(nb.keys.sizes(), (std::vector<int64_t>{36, 9}));
  // query (0, 0): keys rows {0, 2, 4} × cols {0, 2, 4}; bias slots (key - query)/2 + 2 = 2..4
  EXPECT_TRUE(nb.keys[0].equal(torch::tensor({0, 2, 4, 12, 14, 16, 24, 26, 28}, torch::kLong)));
  EXPECT_TRUE(nb.bias[0].equal(torch::tensor({12, 13, 14, 17, 18, 19, 22, 23, 24}, torch::kLong)));
  // cached: same storage on the second call
  EXPECT_TRUE(attnkit::neighborhood_index(6, 6, 3, 2, torch::kCPU).keys.is_same(nb.keys));
}

TEST(LocalAttention2d, EmptyBatch) {
  LocalAttention2d m(LocalAttention2dOptions(8).heads(2).kernel_size(3));
  m->record_attention(true);
  auto x = torch::randn({0, 8, 4, 5}, torch::requires_grad());
  auto y = m(x);
  EXPECT_EQ(y.sizes(), x.sizes());
  EXPECT_EQ(m->last_attention().sizes(), (std::vector<int64_t>{0, 2, 4, 5, 3, 3}));
  y.sum().backward();
  EXPECT_EQ(x.grad().sizes(), x.sizes());
}

TEST(LocalAttention2d, BadArgumentsNameTheArgument) {
  LocalAttention2d m(LocalAttention2dOptions(8).heads(2).kernel_size(5).dilation(2));
  EXPECT_THAT(error_of([&] { m(torch::randn({1, 8, 9, 12})); }),
              HasSubstr("input x of size 9x12 is smaller than the window: H and W must be >= kernel_size*dilation = 10"));
  EXPECT_THAT(error_of([&] { m(torch::randn({1, 8, 10})); }), HasSubstr("input x must be 4-D [N, C, H, W]"));
  EXPECT_THAT(error_of([&] { m(torch::randn({1, 4, 10, 10})); }), HasSubstr("input x must have channels = 8, got 4"));
  EXPECT_THAT(error_of([&] { m(torch::ones({1, 8, 10, 10}, torch::kInt)); }), HasSubstr("input x must be floating point"));
  EXPECT_THAT(error_of([&] { LocalAttention2d(LocalAttention2dOptions(8).heads(3)); }),
              HasSubstr("channels (8) must be a multiple of heads (3)"));
  EXPECT_THAT(error_of([&] { LocalAttention2d(LocalAttention2dOptions(8).kernel_size(4)); }),
              HasSubstr("kernel_size must be odd and >= 1, got 4"));
  EXPECT_THAT(error_of([&] { LocalAttention2d(LocalAttention2dOptions(8).dilation(0)); }),
              HasSubstr("dilation must be >= 1, got 0"));
  std::ostringstream s;
  m->pretty_print(s);
  EXPECT_EQ(s.str(), "attnkit::LocalAttention2d(channels=8, heads=2, kernel_size=5, dilation=2, qkv_bias=true, rel_pos_bias=true)");
}

// ---- CUDA ---------------------------------------------------------------------------------------

TEST(FeatureAttentionCuda, MatchesReferencesOnGpu) {
  if (!attnkit::testing::cuda_available()) GTEST_SKIP() << "no CUDA device";
  {
    LOAD_OR_SKIP(refs, "feature_attention_mhsa_rel_pos");
    auto m = mhsa_from(refs, SelfAttention2dOptions(8).heads(2).rel_pos(true).feat_size({5, 7}));
    m->to(torch::kCUDA);
    auto got = run_with_grads(*m, [&](const torch::Tensor& x) { return m(x); }, refs.at("x").cuda(),
                              refs.at("gout").cuda());
    expect_matches(got, refs, 1e-10);
    EXPECT_TRUE(all_close(m(refs.at("x_resized").cuda()), refs.at("y_resized"), 1e-10));
    m->record_attention(true);
    m(refs.at("x").cuda());
    EXPECT_TRUE(m->last_attention().is_cuda());
    EXPECT_TRUE(all_close(m->last_attention(), refs.at("attn_centre"), 1e-12));
    m->to(torch::kFloat);
    EXPECT_TRUE(close_in(torch::kFloat, *m, m(refs.at("x").cuda().to(torch::kFloat)), refs.at("x"), refs.at("y")));
  }
  {
    LOAD_OR_SKIP(refs, "feature_attention_non_local");
    SelfAttention2d m(SelfAttention2dOptions(16).variant(SelfAttention2dVariant::NonLocal));
    m->to(torch::kDouble);
    load_into(*m, with_prefix(refs, "state."));
    m->eval();
    m->to(torch::kCUDA);
    auto got = run_with_grads(*m, [&](const torch::Tensor& x) { return m(x); }, refs.at("x").cuda(),
                              refs.at("gout").cuda());
    expect_matches(got, refs, 1e-10);
  }
  for (const LocalCase& c : {LocalCase{"feature_attention_local_k3_d2", 8, 2, 3, 2, true},
                             LocalCase{"feature_attention_local_k5_d1", 8, 2, 5, 1, true}}) {
    LOAD_OR_SKIP(refs, c.ref);
    auto m = local_from(refs, c);
    m->to(torch::kCUDA);
    auto got = run_with_grads(*m, [&](const torch::Tensor& x) { return m(x); }, refs.at("x").cuda(),
                              refs.at("gout").cuda());
    expect_matches(got, refs, 1e-10);
    m->record_attention(true);
    m(refs.at("x").cuda().contiguous(torch::MemoryFormat::ChannelsLast));
    EXPECT_TRUE(all_close(m->last_attention(), refs.at("attn"), 1e-12));
    m->to(torch::kBFloat16);
    EXPECT_TRUE(close_in(torch::kBFloat16, *m, m(refs.at("x").cuda().to(torch::kBFloat16)), refs.at("x"), refs.at("y")));
  }
}
