// Sequence attention: functional (scaled) dot-product attention, AdditiveAttention and
// MultiheadAttention against independent Python references (torch SDPA, torch.nn.MultiheadAttention,
// plain-torch Bahdanau attention; tests/python/refs_sequence.py), with gradients, odd shapes,
// non-contiguous inputs, reduced precision, CUDA, and the error messages of bad inputs.
#include <attnkit/modules/additive_attention.h>
#include <attnkit/modules/functional.h>
#include <attnkit/modules/multihead_attention.h>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "testing.h"

#include <functional>
#include <limits>
#include <string>
#include <vector>

namespace {

namespace F = attnkit::functional;
using attnkit::testing::all_close;
using attnkit::testing::cuda_available;
using attnkit::testing::load_into;
using attnkit::testing::load_refs;
using attnkit::testing::with_prefix;
using Refs = std::map<std::string, torch::Tensor>;
using ::testing::HasSubstr;

#define LOAD_REFS_OR_SKIP(var, name)                                       \
  const Refs var = load_refs(name);                                        \
  if (var.empty()) GTEST_SKIP() << "no Python references on this machine"

// Same values, non-contiguous layout (last two dims swapped in memory).
torch::Tensor noncontiguous(const torch::Tensor& t) {
  if (t.dim() < 2) return t;
  return t.transpose(-1, -2).contiguous().transpose(-1, -2);
}

// Runs `fn` and returns the c10::Error message ("" if nothing was thrown).
std::string error_of(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const c10::Error& e) {
    return e.what();
  }
  return "";
}

struct Variant {
  torch::Dtype dtype;
  torch::Device device;
  bool noncontig;
  double atol, rtol;
};

// The variant's tolerance: float64 its own atol/rtol; float32 and bfloat16 against the float64
// reference from testing.h's rounding_tolerance over the K terms on the result's path, at `scale`
// (the values' magnitude times the softmax's gain 1 + max|logit|); in bfloat16 the inputs, the
// weights, the scores, the softmax and the output are each rounded once (5 roundings).
attnkit::testing::Tolerance tolerance(const Variant& v, int64_t K, double scale) {
  if (v.dtype == torch::kDouble) return {v.atol, v.rtol};
  return attnkit::testing::rounding_tolerance(v.dtype, K, scale, 5);
}

// Converts a reference input: floating tensors to the variant's dtype, everything to its device.
torch::Tensor in(const torch::Tensor& t, const Variant& v) {
  auto out = t.is_floating_point() ? t.to(v.device, v.dtype) : t.to(v.device);
  return v.noncontig ? noncontiguous(out) : out;
}

// ---- functional ---------------------------------------------------------------------------------

const std::vector<std::string> kSdpaCases = {"basic",      "scale",       "dot",         "causal_wide",
                                             "causal_tall", "bool_2d",    "bool_keys",   "float_full",
                                             "float_heads", "causal_bool", "single"};

attnkit::AttentionOutput run_sdpa(const Refs& c, const std::string& name, const Variant& v, torch::Tensor q,
                                  torch::Tensor k, torch::Tensor val) {
  F::AttentionFuncOptions o;
  o.need_weights(true).causal(name.rfind("causal", 0) == 0);
  if (c.count("mask")) o.mask(in(c.at("mask"), v));
  if (c.count("scale")) o.scale(c.at("scale").item<double>());
  return name == "dot" ? F::dot_product_attention(q, k, val, o) : F::scaled_dot_product_attention(q, k, val, o);
}

void check_sdpa(const Refs& refs, const Variant& v, bool grads) {
  for (const auto& name : kSdpaCases) {
    SCOPED_TRACE("case " + name);
    const auto c = with_prefix(refs, name + ".");
    auto q = in(c.at("q"), v).requires_grad_(grads), k = in(c.at("k"), v).requires_grad_(grads),
         val = in(c.at("v"), v).requires_grad_(grads);
    auto res = run_sdpa(c, name, v, q, k, val);
    EXPECT_EQ(res.output.scalar_type(), v.dtype);
    EXPECT_EQ(res.output.device().type(), v.device.type());
    const double s = c.count("scale") ? c.at("scale").item<double>() : name == "dot" ? 1.0 : 1.0 / std::sqrt(double(q.size(-1)));
    const double gain = 1 + s * attnkit::testing::max_abs(torch::matmul(c.at("q"), c.at("k").transpose(-1, -2)));
    const int64_t K = q.size(-1) + 2 * k.size(-2);
    EXPECT_TRUE(all_close(res.output, c.at("out"), tolerance(v, K, attnkit::testing::max_abs(c.at("v")) * gain)));
    EXPECT_TRUE(all_close(res.weights, c.at("weights"), tolerance(v, K, gain)));
    if (grads) {
      auto g = torch::autograd::grad({res.output}, {q, k, val}, {in(c.at("grad_out"), v)});
      // Gradients are checked in float64 only (grads is false for the other variants).
      EXPECT_TRUE(all_close(g[0], c.at("dq"), v.atol, v.rtol)) << "dq";
      EXPECT_TRUE(all_close(g[1], c.at("dk"), v.atol, v.rtol)) << "dk";
      EXPECT_TRUE(all_close(g[2], c.at("dv"), v.atol, v.rtol)) << "dv";
    }
  }
}

TEST(Sdpa, MatchesTorchInDoubleWithGradients) {
  LOAD_REFS_OR_SKIP(refs, "sequence_sdpa");
  check_sdpa(refs, {torch::kDouble, torch::kCPU, false, 1e-10, 0}, true);
}

TEST(Sdpa, MatchesTorchWithNonContiguousInputs) {
  LOAD_REFS_OR_SKIP(refs, "sequence_sdpa");
  check_sdpa(refs, {torch::kDouble, torch::kCPU, true, 1e-10, 0}, true);
}

TEST(Sdpa, MatchesTorchInFloat) {
  LOAD_REFS_OR_SKIP(refs, "sequence_sdpa");
  check_sdpa(refs, {torch::kFloat, torch::kCPU, false, 1e-5, 0}, false);
}

TEST(Sdpa, MatchesTorchInBFloat16) {
  LOAD_REFS_OR_SKIP(refs, "sequence_sdpa");
  // bf16 keeps 8 bits of mantissa: inputs alone carry ~0.4% error, scores sum D of them; the
  // largest error seen over all cases is ~0.013 (weights and outputs are O(1)).
  check_sdpa(refs, {torch::kBFloat16, torch::kCPU, false, 2.5e-2, 1e-2}, false);
}

TEST(Sdpa, MatchesTorchOnCuda) {
  if (!cuda_available()) GTEST_SKIP() << "CUDA not available";
  LOAD_REFS_OR_SKIP(refs, "sequence_sdpa");
  check_sdpa(refs, {torch::kDouble, torch::kCUDA, false, 1e-10, 0}, true);
  check_sdpa(refs, {torch::kFloat, torch::kCUDA, true, 1e-5, 0}, false);
}

TEST(Sdpa, FullyMaskedRowGivesZerosLikeTorch) {
  LOAD_REFS_OR_SKIP(refs, "sequence_sdpa");
  const auto c = with_prefix(refs, "dead.");
  auto q = c.at("q").clone().requires_grad_(), k = c.at("k").clone().requires_grad_(),
       v = c.at("v").clone().requires_grad_();
  auto res = F::scaled_dot_product_attention(q, k, v, F::AttentionFuncOptions().mask(c.at("mask")).need_weights(true));
  EXPECT_TRUE(all_close(res.output, c.at("out"), 1e-10));
  EXPECT_TRUE(res.weights[1][2].eq(0).all().item<bool>());
  EXPECT_TRUE(all_close(res.weights.sum(-1)[0], torch::ones({4}, torch::kDouble), 1e-12));
  auto g = torch::autograd::grad({res.output.sum()}, {q, k, v});
  for (const auto& t : g) EXPECT_TRUE(t.isfinite().all().item<bool>());
  EXPECT_TRUE(g[0][1][2].eq(0).all().item<bool>()) << "the dead query gets no gradient";
}

// Central differences in double through the masked path (a float mask with -inf entries, one fully
// masked row, causal, a scale override): the analytic gradient of the safe softmax must match.
TEST(Sdpa, GradientsMatchFiniteDifferences) {
  torch::manual_seed(3);
  auto opts = torch::TensorOptions().dtype(torch::kDouble);
  std::vector<torch::Tensor> xs = {torch::randn({2, 4, 3}, opts), torch::randn({2, 5, 3}, opts),
                                   torch::randn({2, 5, 2}, opts)};
  auto mask = torch::randn({4, 5}, opts);
  mask[0][1] = -std::numeric_limits<double>::infinity();
  mask[3].fill_(-std::numeric_limits<double>::infinity());
  const auto o = F::AttentionFuncOptions().mask(mask).causal(true).scale(0.8);
  auto w = torch::randn({2, 4, 2}, opts);  // objective: sum(output * w)
  auto f = [&](const std::vector<torch::Tensor>& in) {
    return (F::scaled_dot_product_attention(in[0], in[1], in[2], o).output * w).sum();
  };
  for (auto& x : xs) x.requires_grad_();
  auto analytic = torch::autograd::grad({f(xs)}, xs);
  for (size_t i = 0; i < xs.size(); ++i) {
    auto numeric = attnkit::testing::numeric_gradient([&] { return f(xs).item<double>(); }, xs[i]);
    EXPECT_TRUE(all_close(analytic[i], numeric, 1e-7)) << "input " << i;
  }
}

TEST(Sdpa, DefaultsAndEmptyBatch) {
  auto q = torch::randn({0, 3, 5, 6}), k = torch::randn({0, 3, 7, 6}), v = torch::randn({0, 3, 7, 4});
  auto res = F::scaled_dot_product_attention(q, k, v);
  EXPECT_EQ(res.output.sizes(), (std::vector<int64_t>{0, 3, 5, 4}));
  EXPECT_FALSE(res.weights.defined()) << "weights only when asked for";
  // scale 1/sqrt(D) by default; dot_product_attention is the scale-1 form.
  auto q1 = torch::randn({2, 5, 4}, torch::kDouble), k1 = torch::randn({2, 6, 4}, torch::kDouble),
       v1 = torch::randn({2, 6, 3}, torch::kDouble);
  auto a = F::scaled_dot_product_attention(q1, k1, v1).output;
  auto b = F::dot_product_attention(q1 * 0.5, k1, v1).output;
  EXPECT_TRUE(all_close(a, b, 1e-12));
}

TEST(Sdpa, DropoutZeroesAndRescalesWeights) {
  torch::manual_seed(0);
  auto q = torch::randn({2, 6, 4}, torch::kDouble), k = torch::randn({2, 8, 4}, torch::kDouble),
       v = torch::randn({2, 8, 3}, torch::kDouble);
  auto plain = F::scaled_dot_product_attention(q, k, v, F::AttentionFuncOptions().need_weights(true));
  auto dropped = F::scaled_dot_product_attention(q, k, v, F::AttentionFuncOptions().need_weights(true).dropout(0.5));
  auto kept = dropped.weights.ne(0);
  EXPECT_GT(kept.logical_not().sum().item<int64_t>(), 0);
  EXPECT_TRUE(all_close(dropped.weights.masked_select(kept), plain.weights.masked_select(kept) * 2.0, 1e-12));
  EXPECT_TRUE(all_close(dropped.output, torch::matmul(dropped.weights, v), 1e-12));
}

TEST(Sdpa, BadInputsNameTheArgument) {
  auto q = torch::randn({2, 3, 5, 6}, torch::kDouble), k = torch::randn({2, 3, 7, 6}, torch::kDouble),
       v = torch::randn({2, 3, 7, 4}, torch::kDouble);
  auto sdpa = [](torch::Tensor a, torch::Tensor b, torch::Tensor c, F::AttentionFuncOptions o = {}) {
    return [=] { F::scaled_dot_product_attention(a, b, c, o); };
  };
  EXPECT_THAT(error_of(sdpa(torch::randn({6}), k, v)),
              HasSubstr("scaled_dot_product_attention: query must have at least 2 dims [..., Lq, D], got shape [6]"));
  EXPECT_THAT(error_of(sdpa(q, k[0], v)), HasSubstr("key must have the query's rank 4"));
  EXPECT_THAT(error_of(sdpa(q, k.to(torch::kFloat), v)),
              HasSubstr("key dtype must equal the query's dtype Double, got Float"));
  EXPECT_THAT(error_of(sdpa(q, k, v.to(torch::kFloat))),
              HasSubstr("value dtype must equal the query's dtype Double, got Float"));
  EXPECT_THAT(error_of(sdpa(q, k.narrow(-1, 0, 5), v)), HasSubstr("key's last dim must equal the query's D=6, got 5"));
  EXPECT_THAT(error_of(sdpa(q, k, v.narrow(-2, 0, 6))),
              HasSubstr("value's length (dim -2) must equal the key's Lk=7, got 6"));
  EXPECT_THAT(error_of(sdpa(q, torch::randn({2, 4, 7, 6}, torch::kDouble), v)),
              HasSubstr("key's leading (batch) dims must equal the query's [2, 3], got [2, 4]"));
  EXPECT_THAT(error_of(sdpa(q, k, v, F::AttentionFuncOptions().mask(torch::ones({4, 7}, torch::kBool)))),
              HasSubstr("mask of shape [4, 7] must broadcast to the scores' shape [..., Lq, Lk] = [2, 3, 5, 7]"));
  EXPECT_THAT(error_of(sdpa(q, k, v, F::AttentionFuncOptions().mask(torch::ones({1, 2, 3, 5, 7}, torch::kBool)))),
              HasSubstr("mask of shape [1, 2, 3, 5, 7] must broadcast"));
  EXPECT_THAT(error_of(sdpa(q, k, v, F::AttentionFuncOptions().mask(torch::ones({5, 7}, torch::kInt)))),
              HasSubstr("mask must be bool (true = attend) or of the query's dtype Double, got Int"));
  EXPECT_THAT(error_of(sdpa(q.to(torch::kInt), k.to(torch::kInt), v.to(torch::kInt))),
              HasSubstr("query must be floating point, got dtype Int"));
  EXPECT_THAT(error_of([&] { F::dot_product_attention(q, k[0], v); }),
              HasSubstr("dot_product_attention: key must have the query's rank 4"));
}

TEST(Sdpa, DeviceMismatchNamesTheDevice) {
  if (!cuda_available()) GTEST_SKIP() << "CUDA not available";
  auto q = torch::randn({2, 5, 6}), k = torch::randn({2, 7, 6}), v = torch::randn({2, 7, 4});
  EXPECT_THAT(error_of([&] { F::scaled_dot_product_attention(q, k.cuda(), v); }),
              HasSubstr("key must be on the query's device cpu, got cuda:0"));
  EXPECT_THAT(error_of([&] {
                F::scaled_dot_product_attention(q, k, v, F::AttentionFuncOptions().mask(torch::ones({5, 7}).cuda()));
              }),
              HasSubstr("mask must be on the query's device cpu"));
}

// ---- AdditiveAttention --------------------------------------------------------------------------

struct AdditiveCase {
  std::string name;
  int64_t dq, dk, hidden;
  bool bias;
};
const std::vector<AdditiveCase> kAdditiveCases = {
    {"nomask", 4, 6, 7, false}, {"key_mask", 5, 3, 4, false}, {"query_mask_bias", 3, 3, 5, true}};

void check_additive(const Refs& refs, const Variant& v, bool grads) {
  for (const auto& ac : kAdditiveCases) {
    SCOPED_TRACE("case " + ac.name);
    const auto c = with_prefix(refs, ac.name + ".");
    attnkit::AdditiveAttention attn(attnkit::AdditiveAttentionOptions(ac.dq, ac.dk, ac.hidden).bias(ac.bias));
    attn->to(torch::kDouble);
    const auto state = with_prefix(c, "state.");
    EXPECT_EQ(attn->named_parameters().size(), state.size()) << "same parameters as the reference";
    load_into(*attn, state);
    attn->to(v.device, v.dtype);
    auto q = in(c.at("query"), v).requires_grad_(grads), k = in(c.at("key"), v).requires_grad_(grads),
         val = in(c.at("value"), v).requires_grad_(grads);
    auto res = attn(q, k, val, c.count("mask") ? in(c.at("mask"), v) : torch::Tensor());
    EXPECT_EQ(res.output.scalar_type(), v.dtype);
    // The path: both projections (dq, dk terms), the score (hidden terms), the sums over the keys.
    const int64_t K = ac.dq + ac.dk + ac.hidden + 2 * k.size(-2);
    EXPECT_TRUE(all_close(res.output, c.at("out"), tolerance(v, K, attnkit::testing::max_abs(c.at("value")))));
    EXPECT_TRUE(all_close(res.weights, c.at("weights"), tolerance(v, K, 1.0)));
    if (grads) {
      std::vector<torch::Tensor> wrt = {q, k, val, attn->query_proj->weight, attn->key_proj->weight,
                                        attn->score_proj->weight};
      if (ac.bias) wrt.push_back(attn->key_proj->bias);
      auto g = torch::autograd::grad({res.output}, wrt, {in(c.at("grad_out"), v)});
      const std::vector<std::string> names = {"dquery", "dkey", "dvalue", "dquery_proj.weight",
                                              "dkey_proj.weight", "dscore_proj.weight", "dkey_proj.bias"};
      for (size_t i = 0; i < g.size(); ++i) EXPECT_TRUE(all_close(g[i], c.at(names[i]), v.atol, v.rtol)) << names[i];
    }
  }
}

TEST(AdditiveAttention, MatchesPlainTorchInDoubleWithGradients) {
  LOAD_REFS_OR_SKIP(refs, "sequence_additive");
  check_additive(refs, {torch::kDouble, torch::kCPU, false, 1e-10, 0}, true);
}

TEST(AdditiveAttention, MatchesWithNonContiguousInputs) {
  LOAD_REFS_OR_SKIP(refs, "sequence_additive");
  check_additive(refs, {torch::kDouble, torch::kCPU, true, 1e-10, 0}, true);
}

TEST(AdditiveAttention, MatchesInFloatAndBFloat16) {
  LOAD_REFS_OR_SKIP(refs, "sequence_additive");
  check_additive(refs, {torch::kFloat, torch::kCPU, false, 1e-5, 0}, false);
  check_additive(refs, {torch::kBFloat16, torch::kCPU, false, 2.5e-2, 1e-2}, false);
}

TEST(AdditiveAttention, MatchesOnCuda) {
  if (!cuda_available()) GTEST_SKIP() << "CUDA not available";
  LOAD_REFS_OR_SKIP(refs, "sequence_additive");
  check_additive(refs, {torch::kDouble, torch::kCUDA, false, 1e-10, 0}, true);
  check_additive(refs, {torch::kFloat, torch::kCUDA, true, 1e-5, 0}, false);
}

TEST(AdditiveAttention, FullyMaskedQueryGivesZeros) {
  torch::manual_seed(0);
  attnkit::AdditiveAttention attn(4, 3, 5);
  attn->to(torch::kDouble);
  auto q = torch::randn({2, 3, 4}, torch::kDouble).requires_grad_();
  auto k = torch::randn({2, 6, 3}, torch::kDouble).requires_grad_();
  auto v = torch::randn({2, 6, 2}, torch::kDouble).requires_grad_();
  auto keep = torch::ones({2, 6}, torch::kBool);
  keep[1].fill_(false);
  auto res = attn(q, k, v, keep);
  EXPECT_TRUE(res.output[1].eq(0).all().item<bool>());
  EXPECT_TRUE(res.weights[1].eq(0).all().item<bool>());
  EXPECT_TRUE(all_close(res.weights[0].sum(-1), torch::ones({3}, torch::kDouble), 1e-12));
  auto g = torch::autograd::grad({res.output.sum()}, {q, k, v, attn->score_proj->weight});
  for (const auto& t : g) EXPECT_TRUE(t.isfinite().all().item<bool>());
  EXPECT_TRUE(g[0][1].eq(0).all().item<bool>());
}

TEST(AdditiveAttention, OddShapes) {
  attnkit::AdditiveAttention attn(4, 3, 5);
  auto res = attn(torch::randn({0, 3, 4}), torch::randn({0, 6, 3}), torch::randn({0, 6, 2}));
  EXPECT_EQ(res.output.sizes(), (std::vector<int64_t>{0, 3, 2}));
  EXPECT_EQ(res.weights.sizes(), (std::vector<int64_t>{0, 3, 6}));
  // One key: the weights are exactly 1, the output is the value.
  auto v = torch::randn({2, 1, 3});
  res = attn(torch::randn({2, 4, 4}), torch::randn({2, 1, 3}), v);
  EXPECT_TRUE(res.weights.eq(1).all().item<bool>());
  EXPECT_TRUE(torch::equal(res.output, v.expand({2, 4, 3})));  // 1·v, one term: exact
}

TEST(AdditiveAttention, DropoutOnlyInTraining) {
  torch::manual_seed(0);
  attnkit::AdditiveAttention attn(attnkit::AdditiveAttentionOptions(4, 4, 8).dropout(0.5));
  auto q = torch::randn({2, 5, 4}), k = torch::randn({2, 9, 4}), v = torch::randn({2, 9, 3});
  attn->eval();
  auto ref = attn(q, k, v);
  attn->train();
  auto tr = attn(q, k, v);
  auto kept = tr.weights.ne(0);
  EXPECT_GT(kept.logical_not().sum().item<int64_t>(), 0);
  // The same softmax in both modes, then ×1/(1-p) = ×2 (exact): weights ≤ 1 differ by their rounding.
  EXPECT_TRUE(all_close(tr.weights.masked_select(kept), ref.weights.masked_select(kept) * 2.0,
                        attnkit::testing::float32_pair_tolerance(1, 2.0)));
}

TEST(AdditiveAttention, BadInputsNameTheArgument) {
  attnkit::AdditiveAttention attn(4, 3, 5);
  auto q = torch::randn({2, 3, 4}), k = torch::randn({2, 6, 3}), v = torch::randn({2, 6, 2});
  auto call = [&](torch::Tensor a, torch::Tensor b, torch::Tensor c, torch::Tensor m = {}) {
    return [=, &attn] { attn(a, b, c, m); };
  };
  EXPECT_THAT(error_of(call(q[0], k, v)),
              HasSubstr("AdditiveAttention: query must be [batch, Lq, query_dim=4], got shape [3, 4]"));
  EXPECT_THAT(error_of(call(torch::randn({2, 3, 5}), k, v)), HasSubstr("query_dim=4], got shape [2, 3, 5]"));
  EXPECT_THAT(error_of(call(q, torch::randn({2, 6, 4}), v)),
              HasSubstr("key must be [batch, Lk, key_dim=3], got shape [2, 6, 4]"));
  EXPECT_THAT(error_of(call(q, torch::randn({3, 6, 3}), v)), HasSubstr("key's batch size must equal the query's B=2, got 3"));
  EXPECT_THAT(error_of(call(q, k, torch::randn({2, 5, 2}))),
              HasSubstr("value must be [B=2, Lk=6, Dv] like the key, got shape [2, 5, 2]"));
  EXPECT_THAT(error_of(call(q, k, v[0])), HasSubstr("value must be [batch, Lk, Dv], got shape [6, 2]"));
  EXPECT_THAT(error_of(call(q.to(torch::kDouble), k, v)),
              HasSubstr("query dtype must equal the parameters' dtype Float, got Double"));
  EXPECT_THAT(error_of(call(q, k, v.to(torch::kDouble))),
              HasSubstr("value dtype must equal the parameters' dtype Float, got Double"));
  EXPECT_THAT(error_of(call(q, k, v, torch::ones({2, 5}, torch::kBool))),
              HasSubstr("mask must be [B=2, Lk=6] or [B=2, Lq=3, Lk=6], got shape [2, 5]"));
  EXPECT_THAT(error_of(call(q, k, v, torch::ones({2, 6}))),
              HasSubstr("mask must be bool (true = keep), got dtype Float"));
  EXPECT_THAT(error_of([] { attnkit::AdditiveAttention(4, 3, 0); }),
              HasSubstr("hidden_dim must be positive, got 0"));
  EXPECT_THAT(error_of([] { attnkit::AdditiveAttention(attnkit::AdditiveAttentionOptions(4, 3, 2).dropout(1.0)); }),
              HasSubstr("dropout must be in [0, 1), got 1"));
  if (cuda_available()) {
    EXPECT_THAT(error_of(call(q, k.cuda(), v)), HasSubstr("key must be on the parameters' device cpu, got cuda:0"));
  }
}

// ---- MultiheadAttention -------------------------------------------------------------------------

struct MhaCase {
  std::string name;
  attnkit::MultiheadAttentionOptions options;
  bool average, self_attn;
};

std::vector<MhaCase> mha_cases() {
  using O = attnkit::MultiheadAttentionOptions;
  return {
      {"self_seqfirst", O(8, 2), true, true},
      {"cross_batchfirst_bool", O(8, 4).batch_first(true), false, false},
      {"float_masks_3d", O(6, 3), true, false},
      {"kvdim_nobias", O(6, 3).batch_first(true).kdim(5).vdim(7).bias(false), false, false},
      {"bias_kv_zero_attn", O(8, 2).add_bias_kv(true).add_zero_attn(true), true, false},
      {"unbatched", O(6, 2), true, false},
      {"single", O(3, 1).batch_first(true), true, false},
  };
}

void check_mha(const Refs& refs, const Variant& v, bool grads) {
  for (const auto& mc : mha_cases()) {
    SCOPED_TRACE("case " + mc.name);
    const auto c = with_prefix(refs, mc.name + ".");
    attnkit::MultiheadAttention mha(mc.options);
    mha->to(torch::kDouble);
    const auto state = with_prefix(c, "state.");
    EXPECT_EQ(mha->named_parameters().size(), state.size()) << "same parameters as torch";
    load_into(*mha, state);
    mha->to(v.device, v.dtype);
    mha->eval();
    auto q = in(c.at("query"), v).requires_grad_(grads);
    auto k = mc.self_attn ? q : in(c.at("key"), v).requires_grad_(grads);
    auto val = mc.self_attn ? q : in(c.at("value"), v).requires_grad_(grads);
    auto kpm = c.count("key_padding_mask") ? in(c.at("key_padding_mask"), v) : torch::Tensor();
    auto am = c.count("attn_mask") ? in(c.at("attn_mask"), v) : torch::Tensor();
    auto res = mha(q, k, val, kpm, true, am, mc.average);
    EXPECT_EQ(res.output.scalar_type(), v.dtype);
    // The path: the input projections (E terms), the logits (head_dim), the sums over the keys, the
    // output projection (E), at the scale of the projected values' inputs.
    const int64_t E = q.size(-1), K = 2 * E + E / mha->options.num_heads() + 2 * k.size(-2);
    const double scale = std::max(attnkit::testing::max_abs(c.at("out")), attnkit::testing::max_abs(val));
    EXPECT_TRUE(all_close(res.output, c.at("out"), tolerance(v, K, scale)));
    EXPECT_TRUE(all_close(res.weights, c.at("weights"), tolerance(v, K, 1.0)));
    auto no_weights = mha(q, k, val, kpm, false, am);
    EXPECT_FALSE(no_weights.weights.defined());
    EXPECT_TRUE(all_close(no_weights.output, c.at("out"), tolerance(v, K, scale)));
    if (grads) {
      const bool packed = mha->packed_in_proj();
      std::vector<torch::Tensor> wrt = {q};
      std::vector<std::string> names = {"dquery"};
      if (!mc.self_attn) {
        wrt.insert(wrt.end(), {k, val});
        names.insert(names.end(), {"dkey", "dvalue"});
      }
      wrt.push_back(packed ? mha->in_proj_weight : mha->k_proj_weight);
      names.push_back(packed ? "din_proj_weight" : "dk_proj_weight");
      wrt.push_back(mha->out_proj->weight);
      names.push_back("dout_proj.weight");
      auto g = torch::autograd::grad({res.output}, wrt, {in(c.at("grad_out"), v)});
      for (size_t i = 0; i < g.size(); ++i) EXPECT_TRUE(all_close(g[i], c.at(names[i]), v.atol, v.rtol)) << names[i];
    }
  }
}

TEST(MultiheadAttention, MatchesTorchInDoubleWithGradients) {
  LOAD_REFS_OR_SKIP(refs, "sequence_mha");
  check_mha(refs, {torch::kDouble, torch::kCPU, false, 1e-10, 0}, true);
}

TEST(MultiheadAttention, MatchesTorchWithNonContiguousInputs) {
  LOAD_REFS_OR_SKIP(refs, "sequence_mha");
  check_mha(refs, {torch::kDouble, torch::kCPU, true, 1e-10, 0}, true);
}

TEST(MultiheadAttention, MatchesTorchInFloatAndBFloat16) {
  LOAD_REFS_OR_SKIP(refs, "sequence_mha");
  check_mha(refs, {torch::kFloat, torch::kCPU, false, 1e-5, 0}, false);
  check_mha(refs, {torch::kBFloat16, torch::kCPU, false, 2.5e-2, 1e-2}, false);
}

TEST(MultiheadAttention, MatchesTorchOnCuda) {
  if (!cuda_available()) GTEST_SKIP() << "CUDA not available";
  LOAD_REFS_OR_SKIP(refs, "sequence_mha");
  check_mha(refs, {torch::kDouble, torch::kCUDA, false, 1e-10, 0}, true);
  check_mha(refs, {torch::kFloat, torch::kCUDA, true, 1e-5, 0}, false);
}

TEST(MultiheadAttention, ParametersAndInitLikeTorch) {
  attnkit::MultiheadAttention packed(8, 2);
  auto p = packed->named_parameters();
  EXPECT_EQ(p.size(), 4u);
  EXPECT_EQ(p["in_proj_weight"].sizes(), (std::vector<int64_t>{24, 8}));
  EXPECT_EQ(p["in_proj_bias"].sizes(), (std::vector<int64_t>{24}));
  EXPECT_EQ(p["out_proj.weight"].sizes(), (std::vector<int64_t>{8, 8}));
  EXPECT_TRUE(p["in_proj_bias"].eq(0).all().item<bool>());
  EXPECT_TRUE(p["out_proj.bias"].eq(0).all().item<bool>());
  // xavier_uniform on [24, 8]: bound sqrt(6 / (8 + 24)).
  EXPECT_LE(p["in_proj_weight"].abs().max().item<double>(), std::sqrt(6.0 / 32.0));
  attnkit::MultiheadAttention split(attnkit::MultiheadAttentionOptions(6, 3).kdim(5).vdim(7).add_bias_kv(true));
  auto s = split->named_parameters();
  EXPECT_EQ(s.size(), 8u);
  EXPECT_EQ(s.find("in_proj_weight"), nullptr);
  EXPECT_EQ(s["k_proj_weight"].sizes(), (std::vector<int64_t>{6, 5}));
  EXPECT_EQ(s["v_proj_weight"].sizes(), (std::vector<int64_t>{6, 7}));
  EXPECT_EQ(s["bias_k"].sizes(), (std::vector<int64_t>{1, 1, 6}));
}

TEST(MultiheadAttention, FullyMaskedQueryGivesOutputBias) {
  torch::manual_seed(0);
  attnkit::MultiheadAttention mha(attnkit::MultiheadAttentionOptions(8, 2).batch_first(true));
  mha->to(torch::kDouble);
  {
    torch::NoGradGuard ng;
    mha->out_proj->bias.normal_();
  }
  auto q = torch::randn({2, 3, 8}, torch::kDouble).requires_grad_();
  auto kv = torch::randn({2, 5, 8}, torch::kDouble).requires_grad_();
  auto ignore = torch::zeros({2, 5}, torch::kBool);
  ignore[1].fill_(true);
  auto res = mha(q, kv, kv, ignore, true, torch::Tensor(), false);
  EXPECT_TRUE(all_close(res.output[1], mha->out_proj->bias.expand({3, 8}), 1e-12));
  EXPECT_TRUE(res.weights[1].eq(0).all().item<bool>());
  EXPECT_TRUE(res.output.isfinite().all().item<bool>());
  auto g = torch::autograd::grad({res.output.sum()}, {q, kv, mha->in_proj_weight});
  for (const auto& t : g) EXPECT_TRUE(t.isfinite().all().item<bool>());
}

TEST(MultiheadAttention, EmptyBatchAndDropout) {
  torch::manual_seed(0);
  attnkit::MultiheadAttention mha(attnkit::MultiheadAttentionOptions(8, 2).batch_first(true).dropout(0.5));
  auto res = mha(torch::randn({0, 3, 8}), torch::randn({0, 4, 8}), torch::randn({0, 4, 8}), torch::Tensor(), true, torch::Tensor(), false);
  EXPECT_EQ(res.output.sizes(), (std::vector<int64_t>{0, 3, 8}));
  EXPECT_EQ(res.weights.sizes(), (std::vector<int64_t>{0, 2, 3, 4}));
  auto q = torch::randn({2, 3, 8}), kv = torch::randn({2, 6, 8});
  mha->eval();
  auto ref = mha(q, kv, kv, torch::Tensor(), true, torch::Tensor(), false);
  EXPECT_TRUE(all_close(ref.weights.sum(-1), torch::ones({2, 2, 3}), attnkit::testing::rounding_tolerance(torch::kFloat, 2 * 6, 1.0)));
  mha->train();
  auto tr = mha(q, kv, kv, torch::Tensor(), true, torch::Tensor(), false);
  auto kept = tr.weights.ne(0);
  EXPECT_GT(kept.logical_not().sum().item<int64_t>(), 0);
  // The same softmax in both modes, then ×1/(1-p) = ×2 (exact): weights ≤ 1 differ by their rounding.
  EXPECT_TRUE(all_close(tr.weights.masked_select(kept), ref.weights.masked_select(kept) * 2.0,
                        attnkit::testing::float32_pair_tolerance(1, 2.0)));
}

TEST(MultiheadAttention, BadInputsNameTheArgument) {
  using O = attnkit::MultiheadAttentionOptions;
  EXPECT_THAT(error_of([] { attnkit::MultiheadAttention(10, 3); }),
              HasSubstr("MultiheadAttention: embed_dim (10) must be divisible by num_heads (3)"));
  EXPECT_THAT(error_of([] { attnkit::MultiheadAttention(O(8, 2).kdim(0)); }), HasSubstr("kdim must be positive, got 0"));
  EXPECT_THAT(error_of([] { attnkit::MultiheadAttention(O(8, 2).dropout(-0.1)); }),
              HasSubstr("dropout must be in [0, 1), got -0.1"));
  attnkit::MultiheadAttention mha(O(8, 2).kdim(5));
  auto q = torch::randn({4, 2, 8}), k = torch::randn({6, 2, 5}), v = torch::randn({6, 2, 8});
  auto call = [&](torch::Tensor a, torch::Tensor b, torch::Tensor c, torch::Tensor kpm = {}, torch::Tensor am = {}) {
    return [=, &mha] { mha(a, b, c, kpm, true, am); };
  };
  EXPECT_THAT(error_of(call(torch::randn({4, 2, 6}), k, v)),
              HasSubstr("query must be [L, B, embed_dim=8] (or [L, embed_dim=8] unbatched), got shape [4, 2, 6]"));
  EXPECT_THAT(error_of(call(q, torch::randn({6, 2, 8}), v)),
              HasSubstr("key must be [S, B, kdim=5] (the query's rank 3), got shape [6, 2, 8]"));
  EXPECT_THAT(error_of(call(q, k, v[0])), HasSubstr("value must be [S, B, vdim=8] (the query's rank 3), got shape [2, 8]"));
  EXPECT_THAT(error_of(call(q, torch::randn({6, 3, 5}), torch::randn({6, 3, 8}))),
              HasSubstr("key's batch size must equal the query's B=2, got 3"));
  EXPECT_THAT(error_of(call(q, k, torch::randn({7, 2, 8}))),
              HasSubstr("value must have the key's batch size B=2 and length S=6, got shape [7, 2, 8]"));
  EXPECT_THAT(error_of(call(q, k.to(torch::kDouble), v)),
              HasSubstr("key dtype must equal the parameters' dtype Float, got Double"));
  EXPECT_THAT(error_of(call(q, k, v, torch::zeros({2, 5}, torch::kBool))),
              HasSubstr("key_padding_mask must be [B=2, S=6], got shape [2, 5]"));
  EXPECT_THAT(error_of(call(q, k, v, torch::zeros({2, 6}, torch::kInt))),
              HasSubstr("key_padding_mask must be bool (true = ignore) or of the query's dtype Float, got Int"));
  EXPECT_THAT(error_of(call(q, k, v, {}, torch::zeros({6, 4}, torch::kBool))),
              HasSubstr("attn_mask must be [L=4, S=6] or [B*num_heads=4, L=4, S=6], got shape [6, 4]"));
  EXPECT_THAT(error_of(call(q, k, v, {}, torch::zeros({4, 6}, torch::kDouble))),
              HasSubstr("attn_mask must be bool (true = ignore) or of the query's dtype Float, got Double"));
  attnkit::MultiheadAttention bf(O(8, 2).batch_first(true));
  EXPECT_THAT(error_of([&] { bf(torch::randn({2, 4, 7}), torch::randn({2, 4, 8}), torch::randn({2, 4, 8})); }),
              HasSubstr("query must be [B, L, embed_dim=8]"));
  if (cuda_available()) {
    EXPECT_THAT(error_of(call(q, k, v.cuda())), HasSubstr("value must be on the parameters' device cpu, got cuda:0"));
  }
}

}  // namespace
