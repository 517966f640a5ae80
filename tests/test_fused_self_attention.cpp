// The fused self-attention op (attnkit::ops::relpos_attention) against softmax attention written
// with plain ATen ops (the (H·W)² logits materialised, the Swin bias built by explicit loops):
// forward, gradients of q, k, v and the table, dtypes, odd shapes, layouts, thread counts, errors;
// and SelfAttention2d's fused path against its composite one; on CPU and, where a GPU exists, CUDA.
#include <attnkit/attnkit.h>
#include <gmock/gmock.h>
#include <torch/torch.h>

#include <functional>
#include <set>

#include "testing.h"

namespace {

using attnkit::Implementation;
using attnkit::SelfAttention2d;
using attnkit::SelfAttention2dOptions;
using attnkit::SelfAttention2dVariant;
using attnkit::ops::relpos_attention;
using attnkit::testing::all_close;
using attnkit::testing::error_of;
using ::testing::HasSubstr;
using torch::Tensor;

// Swin's relative_position_index, written out: entry [i, j] is (dy + H - 1)(2W - 1) + dx + W - 1
// for the offset (dy, dx) of query i minus key j.
Tensor swin_index(int64_t H, int64_t W) {
  const int64_t L = H * W;
  auto idx = torch::empty({L, L}, torch::kLong);
  auto a = idx.accessor<int64_t, 2>();
  for (int64_t i = 0; i < L; ++i)
    for (int64_t j = 0; j < L; ++j)
      a[i][j] = (i / W - j / W + H - 1) * (2 * W - 1) + (i % W - j % W + W - 1);
  return idx;
}

// scale·q kᵀ + the table's bias, materialised: [N, heads, L, L].
Tensor relpos_logits(const Tensor& q, const Tensor& k, const Tensor& table, int64_t H, int64_t W, double scale) {
  auto logits = torch::matmul(q, k.transpose(-1, -2)) * scale;
  if (table.defined()) {
    const int64_t L = H * W;
    auto bias = table.index_select(0, swin_index(H, W).view(-1)).view({L, L, table.size(1)}).permute({2, 0, 1});
    logits = logits + bias;
  }
  return logits;
}

// softmax(scale·q kᵀ + bias) v with everything materialised.
Tensor reference(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& table, int64_t H, int64_t W,
                 double scale) {
  return torch::matmul(torch::softmax(relpos_logits(q, k, table, H, W, scale), -1), v);
}

struct Shape {
  int64_t n, heads, h, w, d;
};
std::ostream& operator<<(std::ostream& os, const Shape& s) {
  return os << s.n << "x" << s.heads << " heads, " << s.h << "x" << s.w << " map, d=" << s.d;
}

struct Inputs {
  Tensor q, k, v, table, gout;
};
Inputs make_inputs(const Shape& s, torch::Dtype dtype, bool with_table = true) {
  auto o = torch::TensorOptions().dtype(dtype);
  const int64_t L = s.h * s.w;
  Inputs in;
  in.q = torch::randn({s.n, s.heads, L, s.d}, o);
  in.k = torch::randn({s.n, s.heads, L, s.d}, o);
  in.v = torch::randn({s.n, s.heads, L, s.d}, o);
  if (with_table) in.table = torch::randn({(2 * s.h - 1) * (2 * s.w - 1), s.heads}, o);
  in.gout = torch::randn({s.n, s.heads, L, s.d}, o);
  return in;
}

// Output and the gradients of sum(out · gout) w.r.t. q, k, v and the table.
std::vector<Tensor> run(const std::function<Tensor(const Tensor&, const Tensor&, const Tensor&, const Tensor&)>& f,
                        const Inputs& in) {
  std::vector<Tensor> leaves = {in.q.detach().clone().requires_grad_(true), in.k.detach().clone().requires_grad_(true),
                                in.v.detach().clone().requires_grad_(true)};
  if (in.table.defined()) leaves.push_back(in.table.detach().clone().requires_grad_(true));
  const Tensor table = in.table.defined() ? leaves[3] : Tensor();
  auto out = f(leaves[0], leaves[1], leaves[2], table);
  (out * in.gout.to(out.scalar_type())).sum().backward();
  std::vector<Tensor> result = {out.detach()};
  for (const auto& l : leaves) result.push_back(l.grad());
  return result;
}

std::vector<Tensor> run_fused(const Inputs& in, const Shape& s) {
  return run([&](const Tensor& q, const Tensor& k, const Tensor& v,
                 const Tensor& t) { return relpos_attention(q, k, v, t, s.h, s.w); },
             in);
}
// The reference in float64 on the same values.
std::vector<Tensor> run_reference(const Inputs& in, const Shape& s) {
  Inputs in64{in.q.to(torch::kDouble), in.k.to(torch::kDouble), in.v.to(torch::kDouble),
              in.table.defined() ? in.table.to(torch::kDouble) : Tensor(), in.gout.to(torch::kDouble)};
  const double scale = 1.0 / std::sqrt(static_cast<double>(s.d));
  return run([&](const Tensor& q, const Tensor& k, const Tensor& v,
                 const Tensor& t) { return reference(q, k, v, t, s.h, s.w, scale); },
             in64);
}

// The same values in other layouts: q stored [N, heads, d, L] (last stride L: copied), k a slice of
// a wider tensor (row stride 2d: read in place), v stored [L, N, heads, d], the table transposed.
Inputs strided(const Inputs& in) {
  Inputs out = in;
  out.q = in.q.transpose(-1, -2).contiguous().transpose(-1, -2);
  out.k = torch::cat({in.k, torch::randn_like(in.k)}, -1).narrow(-1, 0, in.k.size(-1));
  out.v = in.v.permute({2, 0, 1, 3}).contiguous().permute({1, 2, 0, 3});
  out.table = in.table.t().contiguous().t();
  EXPECT_FALSE(out.q.is_contiguous());
  EXPECT_FALSE(out.k.is_contiguous());
  return out;
}

// Gradients (entries 1...) against grad_atol / grad_rtol where given, else atol / rtol.
void expect_close(const std::vector<Tensor>& got, const std::vector<Tensor>& want, double atol, double rtol,
                  const std::string& what, double grad_atol = -1, double grad_rtol = -1) {
  const char* names[] = {"out", "dq", "dk", "dv", "dtable"};
  ASSERT_EQ(got.size(), want.size()) << what;
  for (size_t i = 0; i < got.size(); ++i) {
    ASSERT_TRUE(got[i].defined()) << what << ": " << names[i] << " undefined";
    const bool grad = i > 0 && grad_atol >= 0;
    EXPECT_TRUE(all_close(got[i], want[i], grad ? grad_atol : atol, grad ? grad_rtol : rtol)) << what << ": " << names[i];
  }
}

// Shapes: odd d, L below / across / not a multiple of the query tiles (64 rows below L = 768, 256
// from there) and the 512-key tiles, H ≠ W, H·W = 1.
const std::vector<Shape> kShapes = {{2, 2, 5, 7, 5}, {1, 3, 9, 11, 13}, {1, 1, 1, 1, 4}, {2, 2, 3, 24, 8},
                                    {1, 2, 23, 25, 16}, {1, 1, 1, 9, 3}, {1, 2, 28, 29, 5}};

TEST(RelposAttention, MatchesExplicitSoftmaxFp64WithGradients) {
  torch::manual_seed(0);
  for (const auto& s : kShapes)
    for (bool with_table : {true, false}) {
      auto in = make_inputs(s, torch::kDouble, with_table);
      std::ostringstream what;
      what << s << (with_table ? ", bias" : ", no bias");
      expect_close(run_fused(in, s), run_reference(in, s), 1e-10, 0.0, what.str());
    }
}

// Runs in `dtype` (results in `dtype`) against the float64 reference on the same values: the output
// within testing.h's attention model (all L = H·W keys per query, the table's bias in every logit),
// the gradients within rounding_tolerance over the backward's path (2·d-term dot products, sums over
// the L keys and the L queries, for the table over all N·L queries).
void check_low_precision(torch::Dtype dtype, const std::vector<Shape>& shapes) {
  using attnkit::testing::max_abs;
  for (const auto& s : shapes) {
    auto in = make_inputs(s, dtype);
    std::ostringstream what;
    what << s << " " << dtype;
    auto got = run_fused(in, s);
    for (const auto& t : got) EXPECT_EQ(t.scalar_type(), dtype) << what.str();
    const auto want = run_reference(in, s);
    const int64_t L = s.h * s.w;
    const double scale = 1.0 / std::sqrt(double(s.d));
    auto q = in.q.to(torch::kDouble), k = in.k.to(torch::kDouble), v = in.v.to(torch::kDouble);
    auto logits = relpos_logits(q, k, in.table.defined() ? in.table.to(torch::kDouble) : Tensor(), s.h, s.w, scale);
    auto terms = torch::sqrt(torch::matmul(q * q, (k * k).transpose(-1, -2))) * scale;
    auto weighted = [&](const Tensor& w, bool squared) { return torch::matmul(w, squared ? v * v : v); };
    EXPECT_TRUE(all_close(got[0], want[0], attnkit::testing::attention_forward_error(logits, terms, s.d, weighted, dtype)))
        << what.str() << ": out";
    const char* names[] = {"out", "dq", "dk", "dv", "dtable"};
    for (size_t i = 1; i < got.size(); ++i) {
      const int64_t K = 2 * s.d + 3 * L + (i == 4 ? s.n * L : 0);
      EXPECT_TRUE(all_close(got[i], want[i], attnkit::testing::rounding_tolerance(dtype, K, max_abs(want[i]), /*io_roundings: gout, result=*/2)))
          << what.str() << ": " << names[i];
    }
  }
}

TEST(RelposAttention, Fp32MatchesFp64Reference) {
  torch::manual_seed(1);
  check_low_precision(torch::kFloat, kShapes);
}

TEST(RelposAttention, Bf16WithinRounding) {
  torch::manual_seed(2);
  // Float accumulation, one rounding to bfloat16 (8 bits of mantissa) at the end.
  check_low_precision(torch::kBFloat16, {{2, 2, 5, 7, 8}, {1, 2, 9, 11, 13}});
}

TEST(RelposAttention, ExplicitScale) {
  torch::manual_seed(3);
  const Shape s{1, 2, 4, 5, 6};
  auto in = make_inputs(s, torch::kDouble);
  auto got = relpos_attention(in.q, in.k, in.v, in.table, s.h, s.w, 0.3);
  EXPECT_TRUE(all_close(got, reference(in.q, in.k, in.v, in.table, s.h, s.w, 0.3), 1e-10));
  EXPECT_FALSE(all_close(got, reference(in.q, in.k, in.v, in.table, s.h, s.w, 0.5), 1e-3));
}

TEST(RelposAttention, NonContiguousAndExpandedInputs) {
  torch::manual_seed(4);
  const Shape s{2, 3, 6, 5, 7};
  const int64_t L = s.h * s.w;
  auto in = make_inputs(s, torch::kDouble);
  auto want = run_reference(in, s);
  expect_close(run_fused(strided(in), s), want, 1e-10, 0.0, "strided");
  // A key/value tensor broadcast over the heads (stride 0).
  auto k1 = in.k.narrow(1, 0, 1).expand({s.n, s.heads, L, s.d});
  auto got = relpos_attention(in.q, k1, in.v, in.table, s.h, s.w);
  EXPECT_TRUE(all_close(got, reference(in.q, k1, in.v, in.table, s.h, s.w, 1.0 / std::sqrt(7.0)), 1e-10));
}

TEST(RelposAttention, EmptyBatchAndNoGradMode) {
  const Shape s{0, 2, 3, 4, 5};
  auto in = make_inputs(s, torch::kFloat);
  auto got = run_fused(in, s);
  EXPECT_EQ(got[0].sizes(), (std::vector<int64_t>{0, 2, 12, 5}));
  EXPECT_EQ(got[1].sizes(), got[0].sizes());
  ASSERT_TRUE(got[4].defined());
  EXPECT_EQ(got[4].sizes(), in.table.sizes());
  EXPECT_EQ(got[4].abs().sum().item<float>(), 0.0f);
  // Inference mode goes below the autograd key, to the CPU kernel directly.
  const Shape s2{1, 2, 3, 4, 5};
  auto in2 = make_inputs(s2, torch::kDouble);
  c10::InferenceMode guard;
  auto y = relpos_attention(in2.q, in2.k, in2.v, in2.table, 3, 4);
  EXPECT_TRUE(all_close(y, reference(in2.q, in2.k, in2.v, in2.table, 3, 4, 1.0 / std::sqrt(5.0)), 1e-10));
}

TEST(RelposAttention, SameBitsForOneAndTwoThreads) {
  torch::manual_seed(5);
  // Several (n, head) tasks, several 256-row query tiles and two key tiles, batch > 1 for the table sum.
  const Shape s{3, 2, 28, 29, 16};
  auto in = make_inputs(s, torch::kFloat);
  const int before = at::get_num_threads();
  at::set_num_threads(1);
  auto one = run_fused(in, s);
  at::set_num_threads(2);
  auto two = run_fused(in, s);
  at::set_num_threads(before);
  for (size_t i = 0; i < one.size(); ++i) EXPECT_TRUE(torch::equal(one[i], two[i])) << "tensor " << i;
}

TEST(RelposAttention, GradientMatchesFiniteDifferences) {
  torch::manual_seed(6);
  const Shape s{1, 2, 2, 3, 3};
  auto in = make_inputs(s, torch::kDouble);
  auto analytic = run_fused(in, s);
  std::vector<Tensor> vars = {in.q.clone(), in.k.clone(), in.v.clone(), in.table.clone()};
  auto loss = [&] {
    return (relpos_attention(vars[0], vars[1], vars[2], vars[3], s.h, s.w) * in.gout).sum().item<double>();
  };
  int64_t checked = 0;
  for (size_t a = 0; a < vars.size(); ++a) {
    auto numeric = attnkit::testing::numeric_gradient(loss, vars[a]);
    EXPECT_TRUE(all_close(analytic[a + 1].reshape(numeric.sizes()), numeric, 1e-7)) << "input " << a;
    checked += numeric.numel();
  }
  EXPECT_EQ(checked, 3 * 6 * 2 * 3 + 15 * 2);
}

TEST(RelposAttention, BadArgumentsNameTheArgument) {
  auto q = torch::randn({1, 2, 6, 4}), table = torch::randn({15, 2});
  auto call = [&](const Tensor& qq, const Tensor& k, const Tensor& v, const Tensor& t, int64_t h, int64_t w) {
    return [=] { relpos_attention(qq, k, v, t, h, w); };
  };
  EXPECT_THAT(error_of(call(q[0], q[0], q[0], table, 2, 3)), HasSubstr("q must be 4-D"));
  EXPECT_THAT(error_of(call(q, q.narrow(2, 0, 5), q, table, 2, 3)), HasSubstr("k must have q's shape"));
  EXPECT_THAT(error_of(call(q, q, q.narrow(3, 0, 3), table, 2, 3)), HasSubstr("v must have q's shape"));
  EXPECT_THAT(error_of(call(q.to(torch::kLong), q.to(torch::kLong), q.to(torch::kLong), table, 2, 3)),
              HasSubstr("q must be floating point"));
  EXPECT_THAT(error_of(call(q, q.to(torch::kDouble), q, table, 2, 3)), HasSubstr("k has dtype Double but q has Float"));
  EXPECT_THAT(error_of(call(q, q, q.to(torch::kMeta), table, 2, 3)), HasSubstr("v is on meta but q is on cpu"));
  EXPECT_THAT(error_of(call(q, q, q, table, 3, 3)), HasSubstr("must equal L = q.size(2) = 6"));
  EXPECT_THAT(error_of(call(q, q, q, table, 0, 6)), HasSubstr("height and width must be positive"));
  EXPECT_THAT(error_of(call(q, q, q, torch::randn({16, 2}), 2, 3)), HasSubstr("table must be [(2·height-1)(2·width-1), heads] = [15, 2]"));
  EXPECT_THAT(error_of(call(q, q, q, torch::randn({15, 3}), 2, 3)), HasSubstr("got [15, 3]"));
  EXPECT_THAT(error_of(call(q, q, q, table.to(torch::kInt), 2, 3)), HasSubstr("table must be floating point"));
  EXPECT_THAT(error_of(call(q, q, q, table.to(torch::kMeta), 2, 3)), HasSubstr("table is on meta"));
  auto qm = q.to(torch::kMeta);
  EXPECT_THAT(error_of(call(qm, qm, qm, Tensor(), 2, 3)), HasSubstr("no kernel for q on device meta"));
}

TEST(RelposAttention, CudaTensorsAreRejectedClearlyWithoutCudaKernels) {
  if (!attnkit::testing::cuda_available()) GTEST_SKIP() << "no CUDA device";
  if (attnkit::ops::has_relpos_attention_kernel(torch::Device(torch::kCUDA, 0))) GTEST_SKIP() << "built with CUDA kernels";
  auto q = torch::randn({1, 2, 6, 4}, torch::kCUDA);
  EXPECT_THAT(error_of([&] { relpos_attention(q, q, q, Tensor(), 2, 3); }), HasSubstr("no kernel for q on device cuda"));
}

// ---- SelfAttention2d ------------------------------------------------------------------------------

// Whether the autograd graph behind y contains a node whose name contains `name`.
bool graph_has(const Tensor& y, const std::string& name) {
  std::vector<torch::autograd::Node*> todo = {y.grad_fn().get()};
  std::set<torch::autograd::Node*> seen;
  while (!todo.empty()) {
    auto* n = todo.back();
    todo.pop_back();
    if (!n || !seen.insert(n).second) continue;
    if (n->name().find(name) != std::string::npos) return true;
    for (const auto& e : n->next_edges()) todo.push_back(e.function.get());
  }
  return false;
}

// y and the gradients of x and every parameter, for the module with `impl`.
std::map<std::string, Tensor> module_run(SelfAttention2d& m, Implementation impl, const Tensor& x_in, const Tensor& gout,
                                         bool* fused = nullptr) {
  attnkit::set_implementation(*m, impl);
  m->zero_grad();
  auto x = x_in.detach().clone().requires_grad_(true);
  auto y = m->forward(x);
  if (fused) *fused = graph_has(y, "RelposAttention");
  (y * gout).sum().backward();
  std::map<std::string, Tensor> out = {{"y", y.detach()}, {"grad.x", x.grad()}};
  for (const auto& p : m->named_parameters()) out["grad." + p.key()] = p.value().grad().clone();
  return out;
}

void expect_same(const std::map<std::string, Tensor>& got, const std::map<std::string, Tensor>& want, double atol,
                 const std::string& what) {
  ASSERT_EQ(got.size(), want.size());
  for (const auto& [k, v] : want) {
    ASSERT_TRUE(got.at(k).defined()) << what << ": " << k;
    EXPECT_TRUE(all_close(got.at(k), v, atol)) << what << ": " << k;
  }
}

TEST(SelfAttention2dFused, AutoRunsTheFusedOpWithRelPosAndMatchesCompositeFp64) {
  torch::manual_seed(7);
  // feat_size 5×7; inputs at that size and at others (the table is resized first).
  SelfAttention2d m(SelfAttention2dOptions(12).heads(3).rel_pos(true).feat_size({5, 7}));
  m->to(torch::kDouble);
  for (auto hw : std::vector<std::pair<int64_t, int64_t>>{{5, 7}, {4, 9}, {1, 1}}) {
    auto x = torch::randn({2, 12, hw.first, hw.second}, torch::kDouble);
    auto gout = torch::randn_like(x);
    bool fused = false, composite_fused = true;
    auto got = module_run(m, Implementation::Auto, x, gout, &fused);
    auto want = module_run(m, Implementation::Composite, x, gout, &composite_fused);
    EXPECT_TRUE(fused) << "Auto with rel_pos should run the fused op";
    EXPECT_FALSE(composite_fused);
    EXPECT_EQ(got.size(), 7u);  // y, x, qkv weight/bias, proj weight/bias, table
    expect_same(got, want, 1e-10, std::to_string(hw.first) + "x" + std::to_string(hw.second));
    // On a 1×1 map each softmax runs over one key: its gradient, and so the table's, is zero by
    // mathematics (p = 1, dS = p·(dp − p·dp) = 0 exactly). Elsewhere the table must get a gradient.
    const double table_grad = got.at("grad.relative_position_bias_table").abs().sum().item<double>();
    if (hw.first * hw.second == 1)
      EXPECT_EQ(table_grad, 0.0);
    else
      EXPECT_GT(table_grad, 0.0);
  }
}

TEST(SelfAttention2dFused, AutoRunsTheFusedOpWithoutRelPosAndSdpaForNonLocal) {
  torch::manual_seed(8);
  SelfAttention2d m(SelfAttention2dOptions(8).heads(2).head_dim(5));
  m->to(torch::kDouble);
  auto x = torch::randn({2, 8, 6, 5}, torch::kDouble), gout = torch::randn_like(x);
  bool composite_fused = true, fused = false;
  auto want = module_run(m, Implementation::Composite, x, gout, &composite_fused);
  auto got = module_run(m, Implementation::Auto, x, gout, &fused);
  EXPECT_FALSE(composite_fused);
  EXPECT_TRUE(fused);
  expect_same(got, want, 1e-10, "mhsa without bias");
  // The non-local variant: SDPA under Auto, the fused op under impl=fused.
  SelfAttention2d nl(SelfAttention2dOptions(16).variant(SelfAttention2dVariant::NonLocal).rd_channels(8));
  nl->to(torch::kDouble);
  {
    torch::NoGradGuard no_grad;
    nl->norm->weight.fill_(0.7);  // timm starts it at 0, which would hide the attention
  }
  auto x2 = torch::randn({2, 16, 4, 5}, torch::kDouble), g2 = torch::randn_like(x2);
  bool auto_fused = true;
  auto want2 = module_run(nl, Implementation::Auto, x2, g2, &auto_fused);
  auto got2 = module_run(nl, Implementation::Fused, x2, g2, &fused);
  EXPECT_FALSE(auto_fused);
  EXPECT_TRUE(fused);
  expect_same(got2, want2, 1e-10, "non_local");
}

TEST(SelfAttention2dFused, ChannelsLastNonContiguousFp32AndBf16) {
  torch::manual_seed(9);
  SelfAttention2d m(SelfAttention2dOptions(16).heads(2).rel_pos(true).feat_size({6, 5}));
  auto x = torch::randn({2, 16, 6, 5}), gout = torch::randn_like(x);
  m->to(torch::kDouble);
  auto want = module_run(m, Implementation::Composite, x.to(torch::kDouble), gout.to(torch::kDouble));
  m->to(torch::kFloat);
  const std::vector<std::pair<std::string, Tensor>> layouts = {
      {"contiguous", x},
      {"channels-last", x.contiguous(torch::MemoryFormat::ChannelsLast)},
      {"non-contiguous", torch::cat({x, x}, 3).narrow(3, 0, 5)},
      {"transposed", x.transpose(2, 3).contiguous().transpose(2, 3)}};
  // The block's path: the qkv conv (C terms), the attention (2·d-term dot products, sums over the L
  // keys and queries), the proj conv (C); parameter gradients add their sums over the N·L positions.
  const int64_t C = 16, L = 30, d = 8, K = 2 * C + 2 * d + 3 * L, positions = 2 * L;
  auto tol = [&](torch::ScalarType dtype, const std::string& key, const Tensor& v) {
    const bool parameter = key != "y" && key != "grad.x";
    return attnkit::testing::rounding_tolerance(dtype, K + (parameter ? positions : 0), attnkit::testing::max_abs(v),
                                                /*io_roundings: x, gout and weights, qkv, attention, result=*/5);
  };
  for (const auto& [name, xi] : layouts) {
    auto got = module_run(m, Implementation::Fused, xi, gout);
    for (const auto& [k, v] : want) EXPECT_TRUE(all_close(got.at(k), v, tol(torch::kFloat, k, v))) << name << ": " << k;
  }
  m->to(torch::kBFloat16);
  auto got = module_run(m, Implementation::Fused, x.to(torch::kBFloat16), gout.to(torch::kBFloat16));
  EXPECT_EQ(got.at("y").scalar_type(), torch::kBFloat16);
  // Against the float64 block with the unrounded weights: the weights', x's and gout's rounding count.
  EXPECT_TRUE(all_close(got.at("y"), want.at("y"), tol(torch::kBFloat16, "y", want.at("y")))) << "bf16 y";
  EXPECT_TRUE(all_close(got.at("grad.x"), want.at("grad.x"), tol(torch::kBFloat16, "grad.x", want.at("grad.x")))) << "bf16 grad.x";
}

TEST(SelfAttention2dFused, RecordingAndEmptyBatchAndSetImplementation) {
  torch::manual_seed(10);
  SelfAttention2d m(SelfAttention2dOptions(8).heads(2).rel_pos(true).feat_size({4, 4}).record_queries({{1, 2}, {3, 0}}));
  m->to(torch::kDouble);
  auto x = torch::randn({2, 8, 4, 4}, torch::kDouble);
  m->record_attention(true);
  attnkit::set_implementation(*m, Implementation::Composite);
  m->forward(x);
  auto want = m->last_attention();
  EXPECT_EQ(attnkit::set_implementation(*m, Implementation::Auto), 1);
  EXPECT_EQ(m->options.impl(), Implementation::Auto);
  m->forward(x);
  auto got = m->last_attention();
  EXPECT_EQ(got.sizes(), (std::vector<int64_t>{2, 2, 2, 4, 4}));
  EXPECT_TRUE(all_close(got, want, 1e-12));
  m->record_attention(false);
  // N = 0 through the fused path: an empty output and empty/zero gradients.
  auto x0 = torch::randn({0, 8, 4, 4}, torch::kDouble), g0 = torch::randn_like(x0);
  auto got0 = module_run(m, Implementation::Fused, x0, g0);
  EXPECT_EQ(got0.at("y").sizes(), x0.sizes());
  EXPECT_EQ(got0.at("grad.relative_position_bias_table").abs().sum().item<double>(), 0.0);
  std::ostringstream s;
  m->pretty_print(s);
  EXPECT_THAT(s.str(), HasSubstr("impl=fused"));
}

// ---- CUDA: the op and the block on the GPU against the float64 reference on the CPU ----------------

// Why the CUDA cases cannot run here, or "" where they can.
std::string cuda_skip_reason() {
  if (!attnkit::testing::cuda_available()) return "no CUDA device";
  if (!attnkit::ops::has_relpos_attention_kernel(torch::Device(torch::kCUDA, 0))) return "built without CUDA kernels";
  return "";
}
#define ATTNKIT_SKIP_WITHOUT_CUDA_KERNELS()                              \
  if (const auto why = cuda_skip_reason(); !why.empty()) GTEST_SKIP() << why

const torch::Device kCuda(torch::kCUDA, 0);

Inputs on(const Inputs& in, const torch::Device& dev) {
  return {in.q.to(dev), in.k.to(dev), in.v.to(dev), in.table.defined() ? in.table.to(dev) : Tensor(), in.gout.to(dev)};
}

// Head dims in every bucket (24, 33 → 64, 96, 128, 200 → 256), L below / across / not a multiple of
// the 32-wide tiles, H·W = 1, one-row and one-column maps, maps wider than a tile.
const std::vector<Shape> kCudaShapes = {{2, 2, 5, 7, 24},  {1, 3, 9, 11, 64}, {1, 1, 1, 1, 4},  {2, 2, 3, 24, 96},
                                        {1, 2, 23, 25, 128}, {1, 1, 1, 70, 24}, {1, 2, 13, 1, 8}, {1, 2, 6, 40, 200},
                                        {2, 1, 4, 5, 33}};

struct CudaTolerance {
  torch::Dtype dtype;
  double atol, rtol, grad_atol, grad_rtol;
};
// float64 and float32 as on the CPU; bfloat16 / float16 round the output and every gradient once
// (and backward reads the rounded output), the arithmetic is float.
const std::vector<CudaTolerance> kCudaTolerances = {{torch::kDouble, 1e-10, 0, 1e-10, 0},
                                                    {torch::kFloat, 1e-5, 1e-5, 1e-5, 1e-5},
                                                    {torch::kBFloat16, 2e-2, 1e-2, 6e-2, 2e-2},
                                                    {torch::kHalf, 4e-3, 4e-3, 2e-2, 1e-2}};

TEST(RelposAttentionCuda, MatchesFp64ReferenceEveryDtypeAndShape) {
  ATTNKIT_SKIP_WITHOUT_CUDA_KERNELS();
  torch::manual_seed(20);
  for (const auto& tol : kCudaTolerances)
    for (const auto& s : kCudaShapes)
      for (bool with_table : {true, false}) {
        auto in = make_inputs(s, tol.dtype, with_table);  // rounded to the dtype on the CPU
        std::ostringstream what;
        what << s << " " << tol.dtype << (with_table ? ", bias" : ", no bias");
        auto got = run_fused(on(in, kCuda), s);
        for (const auto& t : got) {
          EXPECT_TRUE(t.is_cuda()) << what.str();
          EXPECT_EQ(t.scalar_type(), tol.dtype) << what.str();
        }
        expect_close(got, run_reference(in, s), tol.atol, tol.rtol, what.str(), tol.grad_atol, tol.grad_rtol);
      }
}

TEST(RelposAttentionCuda, MoreWorkThanOneWaveOfBlocks) {
  ATTNKIT_SKIP_WITHOUT_CUDA_KERNELS();
  torch::manual_seed(21);
  // 300 · 2 query tiles per head: more than a resident wave, so the dq blocks loop over their work
  // items and the table gradient goes through several per-block partials.
  const Shape s{300, 2, 7, 9, 32};
  auto in = make_inputs(s, torch::kFloat);
  expect_close(run_fused(on(in, kCuda), s), run_reference(in, s), 1e-5, 1e-5, "300 images");
}

TEST(RelposAttentionCuda, NonContiguousExpandedAndExplicitScale) {
  ATTNKIT_SKIP_WITHOUT_CUDA_KERNELS();
  torch::manual_seed(22);
  const Shape s{2, 3, 6, 5, 40};
  const int64_t L = s.h * s.w;
  const auto in_cpu = make_inputs(s, torch::kDouble);
  const auto want = run_reference(in_cpu, s);
  const auto in = on(in_cpu, kCuda);
  expect_close(run_fused(strided(in), s), want, 1e-10, 0.0, "strided");
  // k broadcast over the heads (head stride 0), and a scale other than d^-0.5.
  auto k1 = in.k.narrow(1, 0, 1).expand({s.n, s.heads, L, s.d});
  auto got = relpos_attention(in.q, k1, in.v, in.table, s.h, s.w, 0.3);
  EXPECT_TRUE(all_close(got, reference(in.q.cpu(), k1.cpu(), in.v.cpu(), in.table.cpu(), s.h, s.w, 0.3), 1e-10));
}

TEST(RelposAttentionCuda, SameBitsTwiceEmptyBatchInferenceModeAndHeadDimLimit) {
  ATTNKIT_SKIP_WITHOUT_CUDA_KERNELS();
  torch::manual_seed(23);
  const Shape s{3, 2, 28, 29, 16};
  auto in = on(make_inputs(s, torch::kFloat), kCuda);
  auto one = run_fused(in, s), two = run_fused(in, s);
  for (size_t i = 0; i < one.size(); ++i) EXPECT_TRUE(torch::equal(one[i], two[i])) << "tensor " << i;
  // N = 0: empty results, a zero table gradient.
  const Shape s0{0, 2, 3, 4, 24};
  auto in0 = on(make_inputs(s0, torch::kFloat), kCuda);
  auto got0 = run_fused(in0, s0);
  EXPECT_EQ(got0[0].sizes(), (std::vector<int64_t>{0, 2, 12, 24}));
  ASSERT_TRUE(got0[4].defined());
  EXPECT_EQ(got0[4].sizes(), in0.table.sizes());
  EXPECT_EQ(got0[4].abs().sum().item<float>(), 0.0f);
  // Inference mode: the CUDA key directly, below autograd.
  const Shape s2{1, 2, 3, 4, 5};
  auto in2 = make_inputs(s2, torch::kDouble);
  auto want2 = reference(in2.q, in2.k, in2.v, in2.table, 3, 4, 1.0 / std::sqrt(5.0));
  {
    c10::InferenceMode guard;
    auto g2 = on(in2, kCuda);
    EXPECT_TRUE(all_close(relpos_attention(g2.q, g2.k, g2.v, g2.table, 3, 4), want2, 1e-10));
  }
  // Head dims above 256: a clear error.
  auto big = torch::randn({1, 1, 4, 257}, kCuda);
  EXPECT_THAT(error_of([&] { relpos_attention(big, big, big, Tensor(), 2, 2); }), HasSubstr("head dim d = 257"));
}

// The block on CUDA (Auto, Fused) against the same block on the CPU (Composite).
TEST(SelfAttention2dFusedCuda, AutoRunsFusedWithRelPosAndSdpaWithoutAndMatchesCpu) {
  ATTNKIT_SKIP_WITHOUT_CUDA_KERNELS();
  torch::manual_seed(24);
  for (bool rel_pos : {true, false}) {
    auto opts = SelfAttention2dOptions(24).heads(3);
    if (rel_pos) opts.rel_pos(true).feat_size({5, 7});
    SelfAttention2d cpu(opts), gpu(opts);
    cpu->to(torch::kDouble);
    gpu->to(torch::kDouble);
    {
      torch::NoGradGuard no_grad;
      auto src = cpu->named_parameters();
      for (auto& p : gpu->named_parameters()) p.value().copy_(src[p.key()]);
    }
    gpu->to(kCuda);
    for (auto hw : std::vector<std::pair<int64_t, int64_t>>{{5, 7}, {6, 9}, {1, 1}}) {
      auto x = torch::randn({2, 24, hw.first, hw.second}, torch::kDouble), gout = torch::randn_like(x);
      const std::string what = (rel_pos ? "rel_pos " : "no bias ") + std::to_string(hw.first) + "x" +
                               std::to_string(hw.second);
      auto want = module_run(cpu, Implementation::Composite, x, gout);
      bool fused = !rel_pos;
      auto got = module_run(gpu, Implementation::Auto, x.to(kCuda), gout.to(kCuda), &fused);
      // Auto on CUDA: the fused op only once kernel_verification() lists it as verified there, and then
      // exactly when there is a bias.
      EXPECT_EQ(fused, rel_pos && attnkit::auto_runs_fused(attnkit::FusedOp::RelposAttention, torch::kCUDA))
          << what << ": Auto on CUDA";
      expect_same(got, want, 1e-9, what + " Auto");
      got = module_run(gpu, Implementation::Fused, x.to(kCuda), gout.to(kCuda), &fused);
      EXPECT_TRUE(fused) << what;
      expect_same(got, want, 1e-9, what + " Fused");
    }
  }
}

// Float32 convolutions and matmuls in IEEE precision (cuDNN takes TF32 by default) for a scope.
struct NoTf32 {
  bool cudnn = at::globalContext().allowTF32CuDNN(), cublas = at::globalContext().allowTF32CuBLAS();
  NoTf32() {
    at::globalContext().setAllowTF32CuDNN(false);
    at::globalContext().setAllowTF32CuBLAS(false);
  }
  ~NoTf32() {
    at::globalContext().setAllowTF32CuDNN(cudnn);
    at::globalContext().setAllowTF32CuBLAS(cublas);
  }
};

TEST(SelfAttention2dFusedCuda, ChannelsLastFp32Bf16AndNonLocal) {
  ATTNKIT_SKIP_WITHOUT_CUDA_KERNELS();
  torch::manual_seed(25);
  const NoTf32 ieee;  // the qkv and proj convolutions, compared at 1e-4
  SelfAttention2d m(SelfAttention2dOptions(128).heads(2).rel_pos(true).feat_size({6, 5}));  // head dim 64
  auto x = torch::randn({2, 128, 6, 5}), gout = torch::randn_like(x);
  m->to(torch::kDouble);
  auto want = module_run(m, Implementation::Composite, x.to(torch::kDouble), gout.to(torch::kDouble));
  m->to(kCuda, torch::kFloat);
  for (auto fmt : {torch::MemoryFormat::Contiguous, torch::MemoryFormat::ChannelsLast}) {
    bool fused = false;
    auto got = module_run(m, Implementation::Fused, x.to(kCuda).contiguous(fmt), gout.to(kCuda), &fused);
    EXPECT_TRUE(fused);
    for (const auto& [k, v] : want) EXPECT_TRUE(all_close(got.at(k), v, 1e-4, 1e-4)) << fmt << ": " << k;
  }
  m->to(torch::kBFloat16);
  auto got = module_run(m, Implementation::Fused, x.to(kCuda, torch::kBFloat16), gout.to(kCuda, torch::kBFloat16));
  EXPECT_EQ(got.at("y").scalar_type(), torch::kBFloat16);
  EXPECT_TRUE(all_close(got.at("y"), want.at("y"), 5e-2, 5e-2)) << "bf16 y";
  EXPECT_TRUE(all_close(got.at("grad.x"), want.at("grad.x"), 5e-2, 5e-2)) << "bf16 grad.x";
  // The non-local variant under impl=fused (one head of rd = 8).
  SelfAttention2d nl(SelfAttention2dOptions(16).variant(SelfAttention2dVariant::NonLocal).rd_channels(8));
  nl->to(torch::kDouble);
  {
    torch::NoGradGuard no_grad;
    nl->norm->weight.fill_(0.7);
  }
  auto x2 = torch::randn({2, 16, 4, 5}, torch::kDouble), g2 = torch::randn_like(x2);
  auto want2 = module_run(nl, Implementation::Composite, x2, g2);
  nl->to(kCuda);
  bool fused = false;
  auto got2 = module_run(nl, Implementation::Fused, x2.to(kCuda), g2.to(kCuda), &fused);
  EXPECT_TRUE(fused);
  expect_same(got2, want2, 1e-9, "non_local on CUDA");
}

}  // namespace
