// The fused neighborhood attention op against the same math written with plain ATen ops (gathering
// each query's window through neighborhood_index, as LocalAttention2d's composite path does):
// forward, gradients of q, k, v and rpb, dtypes, window shapes, layouts, thread counts, finite
// differences and error messages; then LocalAttention2d's fused path against its composite path;
// then, where a GPU exists, the CUDA kernels and the block on CUDA against the CPU.
#include <attnkit/attnkit.h>
#include <attnkit/modules/ops/neighborhood_attention.h>
#include <attnkit/modules/relative_position.h>

#include <gmock/gmock.h>
#include <torch/torch.h>

#include "testing.h"

#ifdef ATTNKIT_WITH_CUDA
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#endif

namespace {

using attnkit::testing::all_close;
using attnkit::testing::error_of;
using ::testing::HasSubstr;
using Tensor = torch::Tensor;

// Every query's window, gathered: keys and values [N, heads, L, k², D], the scaled query
// [N, heads, L, 1, D] and the logits scale·q·k_window + rpb [N, heads, L, k²].
struct Windows {
  Tensor k, v, q_scaled, logits;
};
Windows windows(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& rpb, int64_t ks, int64_t dil) {
  const int64_t N = q.size(0), heads = q.size(1), H = q.size(2), W = q.size(3), D = q.size(4), L = H * W;
  const auto nb = attnkit::neighborhood_index(H, W, ks, dil, q.device());
  auto flat = [&](const Tensor& t) { return t.reshape({N, heads, L, D}); };
  auto gather = [&](const Tensor& t) { return flat(t).index_select(2, nb.keys.view(-1)).view({N, heads, L, ks * ks, D}); };
  Windows w{gather(k), gather(v), (flat(q) / std::sqrt(static_cast<double>(D))).unsqueeze(-2), {}};
  w.logits = torch::matmul(w.k, w.q_scaled.transpose(-1, -2)).squeeze(-1);
  if (rpb.defined())
    w.logits = w.logits + rpb.reshape({heads, -1}).index_select(1, nb.bias.view(-1)).view({heads, L, ks * ks}).to(w.logits.scalar_type());
  return w;
}

// softmax(scale·q·k_window + rpb) · v_window, from ATen ops: [N, heads, H, W, D].
Tensor reference(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& rpb, int64_t ks, int64_t dil) {
  const auto w = windows(q, k, v, rpb, ks, dil);
  auto attn = torch::softmax(w.logits, -1);
  return torch::matmul(attn.unsqueeze(-2), w.v).squeeze(-2).view(q.sizes());
}

struct Inputs {
  Tensor q, k, v, rpb;
};

Inputs make_inputs(std::vector<int64_t> shape, int64_t ks, torch::Dtype dtype, bool bias = true) {
  auto o = torch::TensorOptions().dtype(dtype);
  Inputs in{torch::randn(shape, o), torch::randn(shape, o), torch::randn(shape, o)};
  if (bias) in.rpb = torch::randn({shape[1], 2 * ks - 1, 2 * ks - 1}, o);
  return in;
}

struct Result {
  Tensor y, dq, dk, dv, drpb;
};

template <typename Fn>
Result run(const Inputs& in, const Tensor& dy, Fn&& fn) {
  auto leaf = [](const Tensor& t) { return t.defined() ? t.detach().clone().requires_grad_(true) : t; };
  Tensor q = leaf(in.q), k = leaf(in.k), v = leaf(in.v), rpb = leaf(in.rpb);
  Tensor y = fn(q, k, v, rpb);
  Result r{y.detach()};
  if (y.numel() == 0) return r;
  std::vector<Tensor> inputs = {q, k, v};
  if (rpb.defined()) inputs.push_back(rpb);
  auto g = torch::autograd::grad({y}, inputs, {dy});
  r.dq = g[0];
  r.dk = g[1];
  r.dv = g[2];
  if (rpb.defined()) r.drpb = g[3];
  return r;
}

// How far the op's float32 / bf16 / half output may lie from the float64 reference on the same
// values: testing.h's attention model over each query's k² window keys.
Tensor local_forward_error(const Inputs& in, int64_t ks, int64_t dil) {
  auto d = [](const Tensor& t) { return t.defined() ? t.detach().to(torch::kDouble) : t; };
  const auto w = windows(d(in.q), d(in.k), d(in.v), d(in.rpb), ks, dil);
  auto terms = torch::sqrt(torch::matmul(w.k * w.k, (w.q_scaled * w.q_scaled).transpose(-1, -2)).squeeze(-1));
  auto weighted = [&](const Tensor& p, bool squared) { return (p.unsqueeze(-1) * (squared ? w.v * w.v : w.v)).sum(-2); };
  return attnkit::testing::attention_forward_error(w.logits, terms, in.q.size(4), weighted, in.q.scalar_type())
      .view(in.q.sizes());
}

// Gradients: rounding_tolerance over the backward's path — the dot products (2·D terms), the sums
// over the k² keys and over the ≤ k² queries that see a key, and for the bias the sum over every
// query — at the scale of the largest reference gradient.
attnkit::testing::Tolerance local_grad_tolerance(const Inputs& in, int64_t ks, const Tensor& ref_grad, bool bias) {
  const int64_t D = in.q.size(4), queries = in.q.size(0) * in.q.size(2) * in.q.size(3);
  return attnkit::testing::rounding_tolerance(in.q.scalar_type(), 2 * D + 3 * ks * ks + (bias ? queries : 0),
                                              attnkit::testing::max_abs(ref_grad), /*io_roundings=*/2);  // dy and the result
}

// Fused vs reference, forward and all gradients, in the inputs' dtype (reference in double):
// float64 to 1e-10, other dtypes within local_forward_error / local_grad_tolerance.
void check(const Inputs& in, int64_t ks, int64_t dil) {
  auto to64 = [](const Tensor& t) { return t.defined() ? t.to(torch::kDouble) : t; };
  const Inputs ref_in{to64(in.q), to64(in.k), to64(in.v), to64(in.rpb)};
  auto dy = torch::randn(in.q.sizes(), torch::kDouble);
  const bool exact = in.q.scalar_type() == torch::kDouble;
  auto fused = run(in, dy.to(in.q.scalar_type()), [&](const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& rpb) {
    return attnkit::ops::neighborhood_attention(q, k, v, rpb, ks, dil);
  });
  auto ref = run(ref_in, dy, [&](const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& rpb) {
    return reference(q, k, v, rpb, ks, dil);
  });
  ASSERT_EQ(fused.y.scalar_type(), in.q.scalar_type());
  if (exact) {
    ASSERT_TRUE(all_close(fused.y, ref.y, 1e-10)) << "forward, k=" << ks << " d=" << dil << " " << in.q.sizes();
  } else {
    ASSERT_TRUE(all_close(fused.y, ref.y, local_forward_error(in, ks, dil))) << "forward, k=" << ks << " d=" << dil << " " << in.q.sizes();
  }
  if (ref.y.numel() == 0) return;
  auto tol = [&](const Tensor& r, bool bias) {
    return exact ? attnkit::testing::Tolerance{bias ? 1e-9 : 1e-10} : local_grad_tolerance(in, ks, r, bias);
  };
  EXPECT_TRUE(all_close(fused.dq, ref.dq, tol(ref.dq, false))) << "grad q";
  EXPECT_TRUE(all_close(fused.dk, ref.dk, tol(ref.dk, false))) << "grad k";
  EXPECT_TRUE(all_close(fused.dv, ref.dv, tol(ref.dv, false))) << "grad v";
  if (in.rpb.defined()) {
    ASSERT_TRUE(fused.drpb.defined());
    EXPECT_EQ(fused.drpb.scalar_type(), in.rpb.scalar_type());
    // Summed over every query of every image.
    EXPECT_TRUE(all_close(fused.drpb, ref.drpb, tol(ref.drpb, true))) << "grad rpb";
  }
}

TEST(FusedLocalAttentionOp, MatchesReferenceFloat64AcrossWindows) {
  torch::manual_seed(1);
  for (int64_t ks : {1, 3, 7})
    for (int64_t dil : {1, 2})
      for (bool bias : {true, false}) {
        const int64_t span = ks * dil;
        // H != W, and a side of exactly k·d (every dilation group has exactly k members).
        check(make_inputs({2, 3, span, span + 5, 13}, ks, torch::kDouble, bias), ks, dil);
      }
}

TEST(FusedLocalAttentionOp, OddHeadDims) {
  torch::manual_seed(2);
  for (int64_t d : {1, 5, 13, 16, 33})
    check(make_inputs({1, 2, 9, 8, d}, 3, torch::kDouble), 3, 1);
}

TEST(FusedLocalAttentionOp, Float32) {
  torch::manual_seed(3);
  check(make_inputs({2, 4, 14, 11, 32}, 7, torch::kFloat), 7, 1);
  check(make_inputs({1, 2, 12, 13, 5}, 3, torch::kFloat), 3, 2);
  // A head dim wider than a vector but not a multiple of one (16 float lanes with AVX512, 8 with
  // AVX2): the vector loop and its tail both run (narrower heads take the plain loop).
  check(make_inputs({1, 2, 9, 10, 21}, 3, torch::kFloat), 3, 1);
}

TEST(FusedLocalAttentionOp, ReducedPrecision) {
  torch::manual_seed(4);
  for (auto dtype : {torch::kBFloat16, torch::kHalf}) {
    auto in = make_inputs({2, 2, 9, 10, 16}, 3, dtype);
    // Inputs rounded to 8 (bf16) or 11 (fp16) bits, compared with double math on the same rounded
    // values: the output's own rounding plus float accumulation (local_forward_error with io = dtype).
    check(in, 3, 1);
  }
}

// N = 0: empty output and gradients, and a zero rpb gradient (on in's device).
void expect_empty_batch_works(Inputs in) {
  for (auto* t : {&in.q, &in.k, &in.v, &in.rpb}) t->requires_grad_(true);
  auto y = attnkit::ops::neighborhood_attention(in.q, in.k, in.v, in.rpb, 3, 1);
  EXPECT_EQ(y.sizes(), in.q.sizes());
  y.sum().backward();
  EXPECT_EQ(in.q.grad().sizes(), in.q.sizes());
  EXPECT_EQ(in.k.grad().sizes(), in.k.sizes());
  ASSERT_TRUE(in.rpb.grad().defined());
  EXPECT_EQ(in.rpb.grad().abs().sum().item<float>(), 0.0f);
}

TEST(FusedLocalAttentionOp, EmptyBatch) { expect_empty_batch_works(make_inputs({0, 2, 5, 6, 4}, 3, torch::kFloat)); }

TEST(FusedLocalAttentionOp, StridedInputs) {
  torch::manual_seed(5);
  // Views of a channels-last qkv projection: zero-copy, head_dim contiguous, other strides packed.
  const int64_t N = 2, heads = 3, D = 5, H = 7, W = 9;
  auto qkv = torch::randn({N, 3 * heads * D, H, W}, torch::kDouble).contiguous(torch::MemoryFormat::ChannelsLast);
  auto [q, k, v] = attnkit::ops::split_qkv(qkv, heads);
  EXPECT_EQ(q.data_ptr(), qkv.data_ptr()) << "split_qkv copies a channels-last projection";
  EXPECT_EQ(q.stride(4), 1);
  auto rpb = torch::randn({heads, 5, 5}, torch::kDouble);
  check({q, k, v, rpb}, 3, 2);
  // The same from an NCHW projection (head_dim strided by H·W: copied by the op).
  auto [q2, k2, v2] = attnkit::ops::split_qkv(qkv.contiguous(), heads);
  EXPECT_TRUE(attnkit::ops::neighborhood_attention(q2, k2, v2, rpb, 3, 2)
                  .equal(attnkit::ops::neighborhood_attention(q, k, v, rpb, 3, 2)));
  // Transposed head_dim, sliced heads, expanded batch, and an rpb that is not contiguous.
  auto base = torch::randn({N, heads, W, H, D}, torch::kDouble);
  auto qt = base.transpose(2, 3);
  auto kt = torch::randn({N, heads, H, W, 2 * D}, torch::kDouble).slice(4, 0, 2 * D, 2);
  auto vt = torch::randn({1, heads, H, W, D}, torch::kDouble).expand({N, -1, -1, -1, -1});
  auto rpb_t = torch::randn({heads, 5, 5}, torch::kDouble).transpose(1, 2);
  check({qt, kt, vt, rpb_t}, 3, 1);
}

TEST(FusedLocalAttentionOp, PackedQkvEqualsSeparateViews) {
  torch::manual_seed(15);
  const int64_t heads = 2, D = 5;
  for (auto fmt : {torch::MemoryFormat::ChannelsLast, torch::MemoryFormat::Contiguous}) {
    auto qkv = torch::randn({2, 3 * heads * D, 8, 9}, torch::kDouble).contiguous(fmt).requires_grad_(true);
    auto rpb = torch::randn({heads, 5, 5}, torch::kDouble).requires_grad_(true);
    auto y = attnkit::ops::neighborhood_attention_qkv(qkv, heads, rpb, 3, 2);
    auto [q, k, v] = attnkit::ops::split_qkv(qkv, heads);
    auto yr = attnkit::ops::neighborhood_attention(q, k, v, rpb, 3, 2);
    ASSERT_TRUE(y.equal(yr));
    auto dy = torch::randn_like(y);
    auto g = torch::autograd::grad({y}, {qkv, rpb}, {dy});
    auto gr = torch::autograd::grad({yr}, {qkv, rpb}, {dy});
    EXPECT_TRUE(g[0].equal(gr[0])) << "grad qkv";
    EXPECT_TRUE(g[1].equal(gr[1])) << "grad rpb";
    EXPECT_EQ(g[0].suggest_memory_format(), torch::MemoryFormat::ChannelsLast) << "one gradient, the rows' layout";
  }
  EXPECT_THAT(error_of([&] { attnkit::ops::neighborhood_attention_qkv(torch::randn({1, 12, 4, 4}), 2, Tensor(), 5); }),
              HasSubstr("q's map of size 4x4 is smaller than the window"));
}

TEST(FusedLocalAttentionOp, GradientOfQAloneSkipsKeysAndValues) {
  torch::manual_seed(16);
  auto in = make_inputs({1, 2, 7, 8, 6}, 3, torch::kDouble);
  auto q = in.q.clone().requires_grad_(true);
  auto y = attnkit::ops::neighborhood_attention(q, in.k, in.v, in.rpb, 3, 2);
  auto dy = torch::randn_like(y);
  auto dq = torch::autograd::grad({y}, {q}, {dy})[0];
  auto full = run(in, dy, [](const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& rpb) {
    return attnkit::ops::neighborhood_attention(q, k, v, rpb, 3, 2);
  });
  EXPECT_TRUE(dq.equal(full.dq));
}

TEST(FusedLocalAttentionOp, OutputIsStoredHeadsLast) {
  auto in = make_inputs({2, 3, 6, 7, 4}, 3, torch::kFloat);
  auto y = attnkit::ops::neighborhood_attention(in.q, in.k, in.v, in.rpb, 3);
  auto merged = attnkit::ops::merge_heads(y);
  EXPECT_EQ(merged.sizes(), torch::IntArrayRef({2, 12, 6, 7}));
  EXPECT_TRUE(merged.is_contiguous(torch::MemoryFormat::ChannelsLast));
  EXPECT_EQ(merged.data_ptr(), y.data_ptr()) << "merge_heads copies the op's output";
  EXPECT_TRUE(merged.equal(y.permute({0, 1, 4, 2, 3}).reshape({2, 12, 6, 7})));
}

TEST(FusedLocalAttentionOp, SameResultWithOneAndTwoThreads) {
  torch::manual_seed(6);
  auto in = make_inputs({2, 4, 15, 17, 13}, 5, torch::kFloat);
  auto dy = torch::randn(in.q.sizes());
  const int prev = torch::get_num_threads();
  Result runs[2];
  for (int threads : {1, 2}) {
    torch::set_num_threads(threads);
    runs[threads - 1] = run(in, dy, [](const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& rpb) {
      return attnkit::ops::neighborhood_attention(q, k, v, rpb, 5, 2);
    });
  }
  torch::set_num_threads(prev);
  // Every output element is written by one task in a fixed order: bit-identical.
  EXPECT_TRUE(runs[0].y.equal(runs[1].y));
  EXPECT_TRUE(runs[0].dq.equal(runs[1].dq));
  EXPECT_TRUE(runs[0].dk.equal(runs[1].dk));
  EXPECT_TRUE(runs[0].dv.equal(runs[1].dv));
  EXPECT_TRUE(runs[0].drpb.equal(runs[1].drpb));
}

TEST(FusedLocalAttentionOp, FiniteDifferenceGradient) {
  torch::manual_seed(7);
  auto in = make_inputs({1, 2, 4, 5, 3}, 3, torch::kDouble);
  auto dy = torch::randn(in.q.sizes(), torch::kDouble);
  auto r = run(in, dy, [](const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& rpb) {
    return attnkit::ops::neighborhood_attention(q, k, v, rpb, 3, 1);
  });
  auto loss = [&] { return (attnkit::ops::neighborhood_attention(in.q, in.k, in.v, in.rpb, 3, 1) * dy).sum().item<double>(); };
  Tensor* inputs[] = {&in.q, &in.k, &in.v, &in.rpb};
  Tensor analytic[] = {r.dq, r.dk, r.dv, r.drpb};
  for (int m = 0; m < 4; ++m) {
    auto numeric = attnkit::testing::numeric_gradient(loss, *inputs[m]);
    EXPECT_TRUE(all_close(analytic[m], numeric, 1e-7)) << "input " << m;
  }
}

TEST(FusedLocalAttentionOp, BadInputNamesTheArgument) {
  auto in = make_inputs({1, 2, 9, 9, 4}, 3, torch::kFloat);
  auto call = [&](const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& rpb, int64_t ks = 3, int64_t dil = 1) {
    return [=] { attnkit::ops::neighborhood_attention(q, k, v, rpb, ks, dil); };
  };
  EXPECT_THAT(error_of(call(in.q[0], in.k, in.v, in.rpb)),
              HasSubstr("expected q of shape [N, heads, H, W, head_dim], got [2, 9, 9, 4]"));
  EXPECT_THAT(error_of(call(in.q, in.k.narrow(4, 0, 3), in.v, in.rpb)),
              HasSubstr("expected k of the shape of q [1, 2, 9, 9, 4], got [1, 2, 9, 9, 3]"));
  EXPECT_THAT(error_of(call(in.q, in.k, in.v.to(torch::kDouble), in.rpb)), HasSubstr("v has dtype Double but q has Float"));
  EXPECT_THAT(error_of(call(in.q.to(torch::kInt), in.k.to(torch::kInt), in.v.to(torch::kInt), in.rpb)),
              HasSubstr("q must be floating point, got Int"));
  EXPECT_THAT(error_of(call(in.q, in.k.to(torch::kMeta), in.v, in.rpb)), HasSubstr("k is on meta but q is on cpu"));
  EXPECT_THAT(error_of(call(in.q.to(torch::kMeta), in.k.to(torch::kMeta), in.v.to(torch::kMeta), Tensor())),
              HasSubstr("q is on meta but attnkit has no kernel for this op on that device"));
  EXPECT_THAT(error_of(call(in.q, in.k, in.v, in.rpb, 4)), HasSubstr("kernel_size must be odd and >= 1, got 4"));
  EXPECT_THAT(error_of(call(in.q, in.k, in.v, Tensor(), 3, 0)), HasSubstr("dilation must be >= 1, got 0"));
  EXPECT_THAT(error_of(call(in.q, in.k, in.v, Tensor(), 5, 2)),
              HasSubstr("q's map of size 9x9 is smaller than the window: H and W must be >= kernel_size*dilation = 10"));
  EXPECT_THAT(error_of(call(in.q, in.k, in.v, torch::randn({2, 3, 3}))),
              HasSubstr("expected rpb of shape [heads, 2*kernel_size-1, 2*kernel_size-1] = [2, 5, 5], got [2, 3, 3]"));
  EXPECT_THAT(error_of(call(in.q, in.k, in.v, in.rpb.to(torch::kInt))), HasSubstr("rpb must be floating point"));
  EXPECT_THAT(error_of([&] { attnkit::ops::split_qkv(torch::randn({1, 10, 4, 4}), 2); }),
              HasSubstr("expected qkv of shape [N, 3*heads*head_dim, H, W] with heads = 2, got [1, 10, 4, 4]"));
}

TEST(FusedLocalAttentionOp, CallableThroughTheDispatcher) {
  auto op = c10::Dispatcher::singleton().findSchemaOrThrow("attnkit::neighborhood_attention", "");
  EXPECT_THAT(toString(op.schema()), HasSubstr("attnkit::neighborhood_attention(Tensor q, Tensor k, Tensor v, Tensor? rpb"));
  // Under inference mode the op runs below autograd (the CPU kernel registration).
  auto in = make_inputs({1, 2, 5, 5, 4}, 3, torch::kFloat);
  Tensor y;
  {
    c10::InferenceMode guard;
    y = attnkit::ops::neighborhood_attention(in.q, in.k, in.v, in.rpb, 3);
  }
  auto to64 = [](const Tensor& t) { return t.to(torch::kDouble); };
  EXPECT_TRUE(all_close(y, reference(to64(in.q), to64(in.k), to64(in.v), to64(in.rpb), 3, 1), local_forward_error(in, 3, 1)));
}

}  // namespace

// ---- LocalAttention2d on its fused and composite paths ------------------------------------------
namespace {

using attnkit::Implementation;
using attnkit::LocalAttention2d;
using attnkit::LocalAttention2dOptions;

// Two blocks with the same weights, one per implementation.
std::pair<LocalAttention2d, LocalAttention2d> block_pair(LocalAttention2dOptions o, torch::Dtype dtype) {
  LocalAttention2d fused(LocalAttention2dOptions(o).impl(Implementation::Fused));
  LocalAttention2d composite(LocalAttention2dOptions(o).impl(Implementation::Composite));
  fused->to(dtype);
  composite->to(dtype);
  torch::NoGradGuard no_grad;
  for (auto& p : fused->named_parameters()) p.value().normal_(0, 0.2);
  auto src = fused->named_parameters();
  for (auto& p : composite->named_parameters()) p.value().copy_(src[p.key()]);
  return {fused, composite};
}

// Fused against composite, both in x's dtype: float64 to 1e-10 (parameter gradients 1e-9); float32
// within twice (both sides round) rounding_tolerance over the block's path — the qkv conv (C terms),
// the window attention (2·head_dim-term dot products, sums over the k² keys and the ≤ k² queries that
// see a key), the proj conv (C) — and, for parameter gradients, their sums over the N·H·W positions.
void expect_same_block_results(const LocalAttention2dOptions& o, const Tensor& x_in) {
  auto [fused, composite] = block_pair(o, x_in.scalar_type());
  const bool exact = x_in.scalar_type() == torch::kDouble;
  const int64_t C = o.channels(), kk = o.kernel_size() * o.kernel_size(), hd = C / o.heads();
  const int64_t K = 2 * C + 2 * hd + 3 * kk, positions = x_in.size(0) * x_in.size(2) * x_in.size(3);
  auto tol = [&](const Tensor& want, bool parameter) {
    return exact ? attnkit::testing::Tolerance{parameter ? 1e-9 : 1e-10}
                 : attnkit::testing::rounding_tolerance(x_in.scalar_type(), K + (parameter ? positions : 0),
                                                        attnkit::testing::max_abs(want)) * 2;
  };
  auto x = x_in.detach().clone().requires_grad_(true), xr = x_in.detach().clone().requires_grad_(true);
  auto y = fused->forward(x), yr = composite->forward(xr);
  ASSERT_TRUE(all_close(y, yr, tol(yr, false))) << "forward";
  EXPECT_EQ(y.suggest_memory_format(), x_in.suggest_memory_format()) << "the fused path keeps x's memory format";
  if (y.numel() == 0) return;
  auto dy = torch::randn_like(yr);
  y.backward(dy);
  yr.backward(dy);
  EXPECT_TRUE(all_close(x.grad(), xr.grad(), tol(xr.grad(), false))) << "grad x";
  auto pr = composite->named_parameters();
  int checked = 0;
  for (auto& p : fused->named_parameters()) {
    ASSERT_TRUE(p.value().grad().defined()) << p.key();
    EXPECT_TRUE(all_close(p.value().grad(), pr[p.key()].grad(), tol(pr[p.key()].grad(), true))) << "grad " << p.key();
    ++checked;
  }
  EXPECT_GE(checked, 3);
}

TEST(FusedLocalAttention2d, FusedEqualsCompositeFloat64) {
  torch::manual_seed(11);
  for (auto fmt : {torch::MemoryFormat::Contiguous, torch::MemoryFormat::ChannelsLast}) {
    auto x = torch::randn({2, 24, 10, 13}, torch::kDouble).contiguous(fmt);
    expect_same_block_results(LocalAttention2dOptions(24).heads(3).kernel_size(3), x);
    expect_same_block_results(LocalAttention2dOptions(24).heads(4).kernel_size(5).dilation(2), x);
    expect_same_block_results(LocalAttention2dOptions(24).heads(2).kernel_size(3).rel_pos_bias(false).qkv_bias(false), x);
  }
  // Non-contiguous input; odd head_dim (15 channels, 3 heads of 5); map of exactly k·d.
  auto wide = torch::randn({2, 30, 7, 7}, torch::kDouble).slice(1, 0, 30, 2);
  expect_same_block_results(LocalAttention2dOptions(15).heads(3).kernel_size(7), wide);
  expect_same_block_results(LocalAttention2dOptions(8).heads(2).kernel_size(3),
                            torch::randn({0, 8, 5, 6}, torch::kDouble));
}

TEST(FusedLocalAttention2d, FusedEqualsCompositeFloat32AndBf16) {
  torch::manual_seed(12);
  auto x = torch::randn({2, 32, 14, 12});
  expect_same_block_results(LocalAttention2dOptions(32).heads(4).kernel_size(7), x);
  auto [fused, composite] = block_pair(LocalAttention2dOptions(32).heads(4).kernel_size(7), torch::kBFloat16);
  auto y = fused->forward(x.to(torch::kBFloat16));
  EXPECT_EQ(y.scalar_type(), torch::kBFloat16);
  // Against float32 math on the same bf16 weights and input: the bf16 storage of the projections'
  // outputs and of y (2·u_bf16 each, at the output's scale, through the proj conv's C terms).
  composite->to(torch::kFloat);
  auto want = composite->forward(x.to(torch::kBFloat16).to(torch::kFloat));
  EXPECT_TRUE(all_close(y, want, attnkit::testing::rounding_tolerance(torch::kBFloat16, 2 * 32 + 2 * 8 + 3 * 49,
                                                                     attnkit::testing::max_abs(want), /*io_roundings: qkv, attention, y=*/3)));
}

TEST(FusedLocalAttention2d, AutoIsFusedOnCpuAndCompositeWhileRecording) {
  torch::manual_seed(13);
  LocalAttention2d block(LocalAttention2dOptions(8).heads(2).kernel_size(3));
  EXPECT_EQ(block->options.impl(), Implementation::Auto);
  // Channels-last in: the fused path answers channels-last, the composite path NCHW.
  auto x = torch::randn({1, 8, 6, 7}).contiguous(torch::MemoryFormat::ChannelsLast);
  auto y = block->forward(x);
  EXPECT_TRUE(y.is_contiguous(torch::MemoryFormat::ChannelsLast) && !y.is_contiguous()) << "Auto ran composite";
  block->record_attention(true);
  auto y_rec = block->forward(x);
  EXPECT_TRUE(y_rec.is_contiguous()) << "recording ran the fused path";
  ASSERT_TRUE(block->last_attention().defined());
  EXPECT_EQ(block->last_attention().sizes(), torch::IntArrayRef({1, 2, 6, 7, 3, 3}));
  // The two paths in float32: twice the rounding of the block's path (as in expect_same_block_results).
  EXPECT_TRUE(all_close(y, y_rec, attnkit::testing::rounding_tolerance(torch::kFloat, 2 * 8 + 2 * 4 + 3 * 9, attnkit::testing::max_abs(y)) * 2));
  block->options.impl(Implementation::Fused);
  EXPECT_THAT(error_of([&] { block->forward(x); }), HasSubstr("impl=fused cannot record attention maps"));
}

TEST(FusedLocalAttention2d, SetImplementationSwitchesTheBlock) {
  auto model = torch::nn::Sequential(LocalAttention2d(LocalAttention2dOptions(8).heads(2).kernel_size(3)));
  EXPECT_EQ(attnkit::set_implementation(*model, Implementation::Composite), 1);
  EXPECT_EQ(model->at<attnkit::LocalAttention2dImpl>(0).options.impl(), Implementation::Composite);
}

TEST(FusedLocalAttention2d, SameResultWithOneAndTwoThreads) {
  torch::manual_seed(14);
  auto [fused, composite] = block_pair(LocalAttention2dOptions(16).heads(2).kernel_size(5), torch::kFloat);
  auto x = torch::randn({2, 16, 12, 13});
  const int prev = torch::get_num_threads();
  std::vector<Tensor> runs[2];
  for (int threads : {1, 2}) {
    torch::set_num_threads(threads);
    auto xi = x.clone().requires_grad_(true);
    auto y = fused->forward(xi);
    auto g = torch::autograd::grad({y}, {xi, fused->rpb}, {torch::ones_like(y)});
    runs[threads - 1] = {y, g[0], g[1]};
  }
  torch::set_num_threads(prev);
  // The op is deterministic, but the projections are GEMMs whose split may follow the thread count:
  // twice the rounding of the block's path (the rpb gradient sums over the N·H·W positions too).
  const int64_t K = 2 * 16 + 2 * 8 + 3 * 25;
  for (size_t i = 0; i < 3; ++i)
    EXPECT_TRUE(all_close(runs[0][i], runs[1][i],
                          attnkit::testing::rounding_tolerance(torch::kFloat, K + (i == 2 ? 2 * 12 * 13 : 0), attnkit::testing::max_abs(runs[0][i])) * 2))
        << i;
}

}  // namespace

// ---- CUDA: the fused kernels on the GPU against the CPU kernels --------------------------------------
// The CPU kernels are checked against plain ATen math above; each case here runs the same inputs
// (rounded to the dtype under test) through the CUDA kernels in that dtype and through the CPU
// kernels in float64, and compares the output and every gradient.
namespace {

const torch::Device kCuda(torch::kCUDA, 0);

#define ATTNKIT_SKIP_WITHOUT_CUDA_KERNELS()                                                                         \
  if (!attnkit::testing::cuda_available()) GTEST_SKIP() << "no CUDA device";                                         \
  if (!attnkit::ops::has_neighborhood_attention_kernel(kCuda)) GTEST_SKIP() << "attnkit built without CUDA kernels"

struct Tol {
  torch::Dtype dtype;
  double atol, rtol, grad_atol;  // grad_atol: dq, dk, dv; the rpb gradient (a sum over all queries) gets 10x
};
// Against float64 math on the same rounded inputs: fp64 and fp32 to their accumulation error; bf16 and
// fp16 to the rounding of the output (and gradients) to 8 and 11 bits plus float accumulation.
const Tol kTols[] = {{torch::kDouble, 1e-10, 0, 1e-10},
                     {torch::kFloat, 1e-5, 1e-5, 1e-5},
                     {torch::kBFloat16, 0.02, 0.01, 0.08},
                     {torch::kHalf, 0.004, 0.01, 0.016}};

Inputs map_inputs(const Inputs& in, const std::function<Tensor(const Tensor&)>& f) {
  auto g = [&](const Tensor& t) { return t.defined() ? f(t) : t; };
  return {g(in.q), g(in.k), g(in.v), g(in.rpb)};
}

Result op_result(const Inputs& in, const Tensor& dy, int64_t ks, int64_t dil) {
  return run(in, dy, [&](const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& rpb) {
    return attnkit::ops::neighborhood_attention(q, k, v, rpb, ks, dil);
  });
}

// `gpu`: the inputs on the GPU in the dtype under test (any layout); the reference runs on the CPU
// in float64 from the same values.
void check_cuda(const Inputs& gpu, int64_t ks, int64_t dil, const Tol& t, const std::string& what) {
  SCOPED_TRACE(what + " k=" + std::to_string(ks) + " d=" + std::to_string(dil));
  ASSERT_EQ(gpu.q.device(), kCuda);
  const Inputs ref_in = map_inputs(gpu, [](const Tensor& x) { return x.to(torch::kCPU, torch::kDouble); });
  const auto dy = torch::randn(gpu.q.sizes(), torch::kDouble).to(gpu.q.scalar_type());
  const Result got = op_result(gpu, dy.to(kCuda), ks, dil);
  const Result ref = op_result(ref_in, dy.to(torch::kDouble), ks, dil);
  ASSERT_EQ(got.y.device(), kCuda);
  ASSERT_EQ(got.y.scalar_type(), gpu.q.scalar_type());
  ASSERT_TRUE(all_close(got.y, ref.y, t.atol, t.rtol)) << t.dtype << " forward " << gpu.q.sizes();
  if (ref.y.numel() == 0) return;
  EXPECT_TRUE(all_close(got.dq, ref.dq, t.grad_atol, t.rtol)) << t.dtype << " grad q";
  EXPECT_TRUE(all_close(got.dk, ref.dk, t.grad_atol, t.rtol)) << t.dtype << " grad k";
  EXPECT_TRUE(all_close(got.dv, ref.dv, t.grad_atol, t.rtol)) << t.dtype << " grad v";
  if (gpu.rpb.defined()) {
    ASSERT_TRUE(got.drpb.defined());
    EXPECT_EQ(got.drpb.device(), kCuda);
    EXPECT_EQ(got.drpb.scalar_type(), gpu.rpb.scalar_type());
    EXPECT_TRUE(all_close(got.drpb, ref.drpb, t.grad_atol * 10, t.rtol)) << t.dtype << " grad rpb";
  }
}

Inputs cuda_inputs(std::vector<int64_t> shape, int64_t ks, torch::Dtype dtype, bool bias = true) {
  return map_inputs(make_inputs(shape, ks, torch::kDouble, bias), [&](const Tensor& x) { return x.to(kCuda, dtype); });
}

TEST(FusedLocalAttentionCuda, MatchesCpuAcrossWindowsAndDtypes) {
  ATTNKIT_SKIP_WITHOUT_CUDA_KERNELS();
  torch::manual_seed(21);
  for (const Tol& t : kTols)
    for (auto [ks, dil] : {std::pair<int64_t, int64_t>{1, 1}, {3, 1}, {5, 1}, {7, 1}, {3, 2}, {5, 2}})
      for (bool bias : {true, false}) {
        const int64_t span = ks * dil;
        // H != W, one side of exactly k·d; head_dim 13 (not a multiple of 8: a group of 16 lanes).
        check_cuda(cuda_inputs({2, 3, span, span + 5, 13}, ks, t.dtype, bias), ks, dil, t,
                   bias ? "windows, bias" : "windows, no bias");
      }
}

TEST(FusedLocalAttentionCuda, HeadDimsFromOneLaneToSeveralChunks) {
  ATTNKIT_SKIP_WITHOUT_CUDA_KERNELS();
  torch::manual_seed(22);
  // Groups of 1..32 lanes; 33 and 100: several registers per lane; 257 and 300: two chunks of 256.
  for (const Tol& t : {kTols[0], kTols[1], kTols[2]})
    for (int64_t d : {1, 3, 8, 17, 32, 33, 100, 257, 300}) {
      check_cuda(cuda_inputs({1, 2, 9, 8, d}, 3, t.dtype), 3, 1, t, "head_dim " + std::to_string(d));
      check_cuda(cuda_inputs({2, 1, 10, 11, d}, 5, t.dtype), 5, 2, t, "head_dim " + std::to_string(d));
    }
}

TEST(FusedLocalAttentionCuda, LargerMapManyBlocks) {
  ATTNKIT_SKIP_WITHOUT_CUDA_KERNELS();
  torch::manual_seed(23);
  // More groups than one grid-stride round of small blocks, heads of 32, NAT's k = 7.
  check_cuda(cuda_inputs({3, 4, 40, 37, 32}, 7, torch::kFloat), 7, 1, kTols[1], "40x37");
  check_cuda(cuda_inputs({2, 2, 30, 33, 16}, 7, torch::kDouble), 7, 3, kTols[0], "30x33 d=3");
}

TEST(FusedLocalAttentionCuda, SinglePositionAndEmptyBatch) {
  ATTNKIT_SKIP_WITHOUT_CUDA_KERNELS();
  torch::manual_seed(24);
  for (const Tol& t : kTols) {
    check_cuda(cuda_inputs({2, 3, 1, 1, 6}, 1, t.dtype), 1, 1, t, "H*W = 1");
    check_cuda(cuda_inputs({0, 2, 5, 6, 4}, 3, t.dtype), 3, 1, t, "N = 0");
  }
  expect_empty_batch_works(cuda_inputs({0, 2, 5, 6, 4}, 3, torch::kFloat));
}

TEST(FusedLocalAttentionCuda, StridedInputs) {
  ATTNKIT_SKIP_WITHOUT_CUDA_KERNELS();
  torch::manual_seed(25);
  const int64_t N = 2, heads = 3, D = 5, H = 7, W = 9;
  for (const Tol& t : {kTols[0], kTols[1], kTols[3]}) {
    // Views of a channels-last qkv projection (zero-copy, rows 3·C apart).
    auto qkv = torch::randn({N, 3 * heads * D, H, W}, torch::kDouble).to(kCuda, t.dtype)
                   .contiguous(torch::MemoryFormat::ChannelsLast);
    auto [q, k, v] = attnkit::ops::split_qkv(qkv, heads);
    EXPECT_EQ(q.data_ptr(), qkv.data_ptr());
    auto rpb = torch::randn({heads, 5, 5}, torch::kDouble).to(kCuda, t.dtype);
    check_cuda({q, k, v, rpb}, 3, 2, t, "channels-last qkv views");
    // Transposed H/W, head_dim strided by 2 (copied by the op), a batch expanded with stride 0, and a
    // transposed rpb.
    auto qt = torch::randn({N, heads, W, H, D}, torch::kDouble).to(kCuda, t.dtype).transpose(2, 3);
    auto kt = torch::randn({N, heads, H, W, 2 * D}, torch::kDouble).to(kCuda, t.dtype).slice(4, 0, 2 * D, 2);
    auto vt = torch::randn({1, heads, H, W, D}, torch::kDouble).to(kCuda, t.dtype).expand({N, -1, -1, -1, -1});
    auto rpb_t = torch::randn({heads, 5, 5}, torch::kDouble).to(kCuda, t.dtype).transpose(1, 2);
    check_cuda({qt, kt, vt, rpb_t}, 3, 1, t, "transposed / sliced / expanded");
  }
}

TEST(FusedLocalAttentionCuda, PackedQkvAndGradientOfQAlone) {
  ATTNKIT_SKIP_WITHOUT_CUDA_KERNELS();
  torch::manual_seed(26);
  const int64_t heads = 2, D = 5;
  for (auto fmt : {torch::MemoryFormat::ChannelsLast, torch::MemoryFormat::Contiguous}) {
    auto qkv_cpu = torch::randn({2, 3 * heads * D, 8, 9}, torch::kDouble).contiguous(fmt);
    auto rpb_cpu = torch::randn({heads, 5, 5}, torch::kDouble);
    auto dy = torch::randn({2, heads, 8, 9, D}, torch::kDouble);
    std::vector<Tensor> results[2];
    for (int dev = 0; dev < 2; ++dev) {
      auto qkv = (dev ? qkv_cpu.to(kCuda) : qkv_cpu.clone()).requires_grad_(true);
      auto rpb = (dev ? rpb_cpu.to(kCuda) : rpb_cpu.clone()).requires_grad_(true);
      auto y = attnkit::ops::neighborhood_attention_qkv(qkv, heads, rpb, 3, 2);
      auto g = torch::autograd::grad({y}, {qkv, rpb}, {dev ? dy.to(kCuda) : dy});
      results[dev] = {y, g[0], g[1]};
      if (dev) EXPECT_EQ(g[0].suggest_memory_format(), torch::MemoryFormat::ChannelsLast);
    }
    for (size_t i = 0; i < 3; ++i) EXPECT_TRUE(all_close(results[1][i], results[0][i], 1e-10)) << i;
  }
  // Only q wants a gradient: the key pass is skipped; dq is the same as with all gradients.
  auto in = cuda_inputs({1, 2, 7, 8, 6}, 3, torch::kDouble);
  auto q = in.q.clone().requires_grad_(true);
  auto y = attnkit::ops::neighborhood_attention(q, in.k, in.v, in.rpb, 3, 2);
  auto dy = torch::randn_like(y);
  auto dq = torch::autograd::grad({y}, {q}, {dy})[0];
  EXPECT_TRUE(dq.equal(op_result(in, dy, 3, 2).dq));
}

TEST(FusedLocalAttentionCuda, SameBitsEveryRunAndOnAnyStream) {
  ATTNKIT_SKIP_WITHOUT_CUDA_KERNELS();
  torch::manual_seed(27);
  auto in = cuda_inputs({2, 4, 15, 17, 13}, 5, torch::kFloat);
  auto dy = torch::randn(in.q.sizes(), in.q.options());
  const Result a = op_result(in, dy, 5, 2);
  Result b = op_result(in, dy, 5, 2);
#ifdef ATTNKIT_WITH_CUDA
  {
    // On a side stream: the kernels and their small copies must follow the current stream.
    c10::cuda::CUDAStreamGuard side(c10::cuda::getStreamFromPool());
    b = op_result(in, dy, 5, 2);
    c10::cuda::getCurrentCUDAStream().synchronize();
  }
#endif
  // No atomics: every output element is summed by one group in a fixed order.
  EXPECT_TRUE(a.y.equal(b.y));
  EXPECT_TRUE(a.dq.equal(b.dq));
  EXPECT_TRUE(a.dk.equal(b.dk));
  EXPECT_TRUE(a.dv.equal(b.dv));
  EXPECT_TRUE(a.drpb.equal(b.drpb));
}

TEST(FusedLocalAttentionCuda, InferenceModeAndDeviceErrors) {
  ATTNKIT_SKIP_WITHOUT_CUDA_KERNELS();
  auto in = cuda_inputs({1, 2, 5, 5, 4}, 3, torch::kFloat);
  Tensor y;
  {
    c10::InferenceMode guard;  // below autograd: the CUDA key's registration
    y = attnkit::ops::neighborhood_attention(in.q, in.k, in.v, in.rpb, 3);
  }
  EXPECT_TRUE(all_close(y, attnkit::ops::neighborhood_attention(in.q.cpu(), in.k.cpu(), in.v.cpu(), in.rpb.cpu(), 3),
                        1e-5, 1e-5));
  EXPECT_THAT(error_of([&] { attnkit::ops::neighborhood_attention(in.q, in.k, in.v, in.rpb.cpu(), 3); }),
              HasSubstr("rpb is on cpu but q is on cuda:0"));
  EXPECT_THAT(error_of([&] { attnkit::ops::neighborhood_attention(in.q, in.k.cpu(), in.v, in.rpb, 3); }),
              HasSubstr("k is on cpu but q is on cuda:0"));
}

// LocalAttention2d on the GPU (Implementation::Fused: the CUDA kernel, which Auto does not run on CUDA
// until kernel_verification() says so) equals the same block on the CPU.
TEST(FusedLocalAttentionCuda, BlockOnCudaEqualsBlockOnCpu) {
  ATTNKIT_SKIP_WITHOUT_CUDA_KERNELS();
  torch::manual_seed(28);
  struct Case {
    LocalAttention2dOptions o;
    std::vector<int64_t> shape;
  };
  const Case cases[] = {{LocalAttention2dOptions(24).heads(3).kernel_size(3), {2, 24, 10, 13}},
                        {LocalAttention2dOptions(32).heads(4).kernel_size(7), {2, 32, 14, 12}},
                        {LocalAttention2dOptions(24).heads(4).kernel_size(5).dilation(2), {1, 24, 11, 10}},
                        {LocalAttention2dOptions(15).heads(3).kernel_size(3).rel_pos_bias(false), {2, 15, 7, 7}}};
  for (const Tol& t : {kTols[0], kTols[1]})
    for (const auto& c : cases)
      for (auto fmt : {torch::MemoryFormat::Contiguous, torch::MemoryFormat::ChannelsLast}) {
        LocalAttention2d cpu_block(c.o), gpu_block(LocalAttention2dOptions(c.o).impl(Implementation::Fused));
        cpu_block->to(t.dtype);
        gpu_block->to(kCuda, t.dtype);
        {
          torch::NoGradGuard no_grad;
          for (auto& p : cpu_block->named_parameters()) p.value().normal_(0, 0.2);
          auto src = cpu_block->named_parameters();
          for (auto& p : gpu_block->named_parameters()) p.value().copy_(src[p.key()]);
        }
        auto x_cpu = torch::randn(c.shape, t.dtype).contiguous(fmt).requires_grad_(true);
        auto x_gpu = x_cpu.detach().to(kCuda).contiguous(fmt).requires_grad_(true);
        auto y_cpu = cpu_block->forward(x_cpu), y_gpu = gpu_block->forward(x_gpu);
        if (fmt == torch::MemoryFormat::ChannelsLast)
          EXPECT_TRUE(y_gpu.is_contiguous(torch::MemoryFormat::ChannelsLast)) << "the fused path keeps channels-last";
        const double tol = t.dtype == torch::kDouble ? 1e-10 : 1e-4;
        ASSERT_TRUE(all_close(y_gpu, y_cpu, tol, tol)) << t.dtype << " forward";
        auto dy = torch::randn_like(y_cpu);
        y_cpu.backward(dy);
        y_gpu.backward(dy.to(kCuda));
        EXPECT_TRUE(all_close(x_gpu.grad(), x_cpu.grad(), tol * 10, tol)) << t.dtype << " grad x";
        auto cpu_params = cpu_block->named_parameters();
        for (auto& p : gpu_block->named_parameters())
          EXPECT_TRUE(all_close(p.value().grad(), cpu_params[p.key()].grad(), tol * 100, tol)) << "grad " << p.key();
      }
  // Reduced precision runs end to end on the fused path.
  LocalAttention2d block(LocalAttention2dOptions(16).heads(2).kernel_size(3).impl(Implementation::Fused));
  block->to(kCuda, torch::kBFloat16);
  auto x = torch::randn({2, 16, 9, 9}, torch::TensorOptions().device(kCuda).dtype(torch::kBFloat16)).requires_grad_(true);
  auto y = block->forward(x);
  EXPECT_EQ(y.scalar_type(), torch::kBFloat16);
  y.sum().backward();
  EXPECT_TRUE(x.grad().isfinite().all().item<bool>());
}

}  // namespace
