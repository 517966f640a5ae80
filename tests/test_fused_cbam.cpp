// The fused CBAM op against CBAM written with plain ATen ops: forward, every gradient, layouts,
// dtypes, odd shapes, thread counts, and its error messages.
#include <attnkit/attnkit.h>
#include <gmock/gmock.h>
#include <torch/torch.h>
#include <ATen/autocast_mode.h>

#include <limits>
#include <thread>

#include "testing.h"

namespace {

using attnkit::ops::CbamConfig;
using attnkit::ops::CbamWeights;
using attnkit::testing::all_close;
using ::testing::HasSubstr;

// Obviously-correct CBAM, straight from the paper's equations (with ECA's 1-D conv in place of the
// MLP when eca_weight is given, and no channel gate when neither is).
/// The channel gate's logits f(avg) + f(max) ([N, C]); undefined without a channel gate.
torch::Tensor channel_logits(const torch::Tensor& x, const CbamWeights& w, const CbamConfig& cfg) {
  auto mlp = [&](const torch::Tensor& d) {
    if (w.eca_weight.defined())
      return torch::conv1d(d.unsqueeze(1), w.eca_weight, {}, 1, (w.eca_weight.size(-1) - 1) / 2).squeeze(1);
    auto h = torch::relu(torch::matmul(d, w.fc1_weight.flatten(1).t()) + (w.fc1_bias.defined() ? w.fc1_bias : torch::zeros({1}, d.options())));
    return torch::matmul(h, w.fc2_weight.flatten(1).t()) + (w.fc2_bias.defined() ? w.fc2_bias : torch::zeros({1}, d.options()));
  };
  if (!w.fc1_weight.defined() && !w.eca_weight.defined()) return {};
  torch::Tensor logits = torch::zeros({x.size(0), x.size(1)}, x.options());
  if (cfg.pool_avg) logits = logits + mlp(x.mean({2, 3}));
  if (cfg.pool_max) logits = logits + mlp(x.amax({2, 3}));
  return logits;
}

torch::Tensor reference_cbam(const torch::Tensor& x, const CbamWeights& w, const CbamConfig& cfg) {
  auto y = x;
  if (auto logits = channel_logits(x, w, cfg); logits.defined()) y = x * torch::sigmoid(logits).unsqueeze(-1).unsqueeze(-1);
  if (!w.spatial_weight.defined()) return y;
  auto mx = std::get<0>(y.max(1, true));
  auto mean = y.mean(1, true);
  auto z = cfg.spatial_max_first ? torch::cat({mx, mean}, 1) : torch::cat({mean, mx}, 1);
  auto a = torch::conv2d(z, w.spatial_weight, w.spatial_bias, 1, w.spatial_weight.size(-1) / 2);
  if (cfg.use_bn)
    a = torch::batch_norm(a, w.bn_weight, w.bn_bias, w.bn_running_mean, w.bn_running_var, cfg.bn_training,
                          cfg.bn_momentum, cfg.bn_eps, false);
  return y * torch::sigmoid(a);
}

struct Case {
  CbamWeights w;
  CbamConfig cfg;
};

Case make_case(int64_t C, int64_t reduction, int64_t k, torch::Dtype dtype, bool spatial = true, bool bias = true) {
  const int64_t R = std::max<int64_t>(1, C / reduction);
  auto o = torch::TensorOptions().dtype(dtype);
  Case c;
  c.w.fc1_weight = torch::randn({R, C}, o) * 0.5;
  c.w.fc2_weight = torch::randn({C, R}, o) * 0.5;
  if (bias) {
    c.w.fc1_bias = torch::randn({R}, o) * 0.1;
    c.w.fc2_bias = torch::randn({C}, o) * 0.1;
  }
  if (spatial) {
    c.w.spatial_weight = torch::randn({1, 2, k, k}, o) * 0.2;
    c.w.bn_weight = torch::full({1}, 1.3, o);
    c.w.bn_bias = torch::full({1}, -0.2, o);
    c.w.bn_running_mean = torch::full({1}, 0.1, o);
    c.w.bn_running_var = torch::full({1}, 0.7, o);
  }
  return c;
}

// ECA's channel gate (1-D conv of size k across channels, average pooling) with CBAM's spatial gate
// or without it.
Case make_eca_case(int64_t k, torch::Dtype dtype, bool spatial = false) {
  Case c = make_case(8, 2, 7, dtype, spatial);
  c.w.fc1_weight = c.w.fc1_bias = c.w.fc2_weight = c.w.fc2_bias = torch::Tensor();
  c.w.eca_weight = torch::randn({1, 1, k}, torch::TensorOptions().dtype(dtype)) * 0.7;
  c.cfg.pool_max = false;
  return c;
}

// CBAM's spatial gate alone (no channel gate).
Case make_spatial_case(int64_t k, torch::Dtype dtype) {
  Case c = make_case(8, 2, k, dtype);
  c.w.fc1_weight = c.w.fc1_bias = c.w.fc2_weight = c.w.fc2_bias = torch::Tensor();
  return c;
}

std::vector<torch::Tensor*> params(CbamWeights& w) {
  return {&w.fc1_weight, &w.fc1_bias, &w.fc2_weight, &w.fc2_bias, &w.spatial_weight,
          &w.spatial_bias, &w.bn_weight, &w.bn_bias, &w.eca_weight};
}
const char* const kParamNames[] = {"fc1_weight",   "fc1_bias",  "fc2_weight", "fc2_bias",  "spatial_weight",
                                   "spatial_bias", "bn_weight", "bn_bias",    "eca_weight"};

/// The weights in float64 (running statistics too), for a reference on the same values.
CbamWeights to_double(CbamWeights w) {
  for (auto* p : params(w))
    if (p->defined()) *p = p->detach().to(torch::kDouble);
  if (w.bn_running_mean.defined()) {
    w.bn_running_mean = w.bn_running_mean.to(torch::kDouble);
    w.bn_running_var = w.bn_running_var.to(torch::kDouble);
  }
  return w;
}

// ---- how far a float32 / bfloat16 / half result may lie from the float64 reference --------------------
// The rounding of every stage, propagated to the output element by element in float64 (first-order
// error analysis; testing.h's rounding model: a length-n sum whose result is S and whose terms have
// 2-norm T errs by about u·√n·(|S| + 4·T) — the 4 for how far partial sums of random-signed data
// stray — and independent errors add in quadrature; the bound is kRoundingSafety = 16 times that
// estimate: 4 for a Gaussian tail over the ~10⁵ elements a test compares, and 4 to spare). Stages: the pooled
// descriptors (H·W terms), the MLP's two layers (C, then R terms) or ECA's taps, the sigmoid (slope
// g·(1−g)), the gating product, the gated pooling over C, the conv (2·k² taps), BatchNorm's affine
// map, the second sigmoid and product. `io` is the dtype x, the parameters and y are stored in (its
// rounding of y counts, and with `rounded_inputs` that of x and the parameters too); the kernels
// accumulate in float32. Returns the per-element bound on y.
torch::Tensor cbam_forward_error(const torch::Tensor& x_in, const CbamWeights& w_in, const CbamConfig& cfg,
                                 torch::ScalarType io, bool rounded_inputs = false) {
  using torch::Tensor;
  const double u = attnkit::testing::unit_roundoff(torch::kFloat);
  const double ui = rounded_inputs ? attnkit::testing::unit_roundoff(io) : 0.0;
  const double uo = io == torch::kFloat ? 0.0 : attnkit::testing::unit_roundoff(io);
  auto x = x_in.detach().to(torch::kDouble);
  auto w = to_double(w_in);
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3), HW = H * W;
  auto q = [](const Tensor& a, const Tensor& b) { return torch::sqrt(a * a + b * b); };  // quadrature sum
  // u·√n·(|S| + 4·T): the rounding of one length-n sum with result S and terms of 2-norm T.
  auto sum_err = [&](int64_t n, const Tensor& S, const Tensor& T) { return u * std::sqrt(double(n)) * (S.abs() + 4 * T); };
  // A linear map y = A·v (+ bias) applied as `apply`: its own rounding, the inputs' errors e_v carried
  // through |A| in quadrature, and (rounded_inputs) the weights' rounding.
  auto linear = [&](int64_t n, const Tensor& y, const std::function<Tensor(const Tensor&, bool)>& apply, const Tensor& v,
                    const Tensor& e_v) {
    auto T = torch::sqrt(apply(v * v, true));  // ‖terms‖₂ with squared weights
    return q(sum_err(n, y, T) + ui * T, torch::sqrt(apply(e_v * e_v, true)));
  };
  Tensor e_x = ui * x.abs();

  // Channel gate.
  Tensor g = torch::ones({N, C, 1, 1}, x.options()), e_g = torch::zeros_like(g);
  if (w.fc1_weight.defined() || w.eca_weight.defined()) {
    Tensor l = torch::zeros({N, C}, x.options()), e_l2 = torch::zeros({N, C}, x.options());
    auto mlp_err = [&](const Tensor& d, const Tensor& e_d) {  // adds f(d)'s value and error to l, e_l2
      if (w.eca_weight.defined()) {
        const auto& k = w.eca_weight;
        auto conv = [&](const Tensor& v, bool squared) {
          return torch::conv1d(v.unsqueeze(1), squared ? k * k : k, {}, 1, (k.size(-1) - 1) / 2).squeeze(1);
        };
        auto out = conv(d, false);
        l = l + out;
        e_l2 = e_l2 + linear(k.numel(), out, conv, d, e_d).pow(2);
        return;
      }
      auto w1 = w.fc1_weight.flatten(1), w2 = w.fc2_weight.flatten(1);
      auto fc1 = [&](const Tensor& v, bool squared) { return torch::matmul(v, (squared ? w1 * w1 : w1).t()); };
      auto fc2 = [&](const Tensor& v, bool squared) { return torch::matmul(v, (squared ? w2 * w2 : w2).t()); };
      auto a1 = fc1(d, false) + (w.fc1_bias.defined() ? w.fc1_bias : torch::zeros({1}, d.options()));
      auto on = (a1 > 0).to(torch::kDouble);
      auto h = a1 * on, e_h = linear(C, a1, fc1, d, e_d) * on;
      auto out = fc2(h, false) + (w.fc2_bias.defined() ? w.fc2_bias : torch::zeros({1}, d.options()));
      l = l + out;
      e_l2 = e_l2 + linear(w1.size(0), out, fc2, h, e_h).pow(2);
    };
    auto xf = x.flatten(2);
    if (cfg.pool_avg) {
      auto d = xf.mean(2);
      auto e_d = q(sum_err(HW, d, xf.norm(2, 2) / HW), torch::sqrt((e_x * e_x).flatten(2).sum(2)) / HW);
      mlp_err(d, e_d);
    }
    if (cfg.pool_max) {
      auto [d, idx] = xf.max(2);
      mlp_err(d, e_x.flatten(2).gather(2, idx.unsqueeze(2)).squeeze(2));
    }
    auto gl = torch::sigmoid(l);
    e_g = (gl * (1 - gl) * (torch::sqrt(e_l2) + u * l.abs()) + 2 * u * gl).view({N, C, 1, 1});
    g = gl.view({N, C, 1, 1});
  }
  auto y1 = x * g;
  auto e_y1 = x.abs() * e_g + g * e_x + u * y1.abs();
  const double floor = attnkit::testing::underflow_floor(io);
  const double c = attnkit::testing::kRoundingSafety;
  if (!w.spatial_weight.defined()) return c * e_y1 + 2 * uo * y1.abs() + floor;

  // Spatial gate.
  auto zmean = y1.mean(1, true);
  auto e_zmean = q(sum_err(C, zmean, y1.norm(2, 1, true) / C), torch::sqrt((e_y1 * e_y1).sum(1, true)) / C);
  auto [zmax, imax] = y1.max(1, true);
  auto e_zmax = e_y1.gather(1, imax);
  auto z = cfg.spatial_max_first ? torch::cat({zmax, zmean}, 1) : torch::cat({zmean, zmax}, 1);
  auto e_z = cfg.spatial_max_first ? torch::cat({e_zmax, e_zmean}, 1) : torch::cat({e_zmean, e_zmax}, 1);
  const auto& sw = w.spatial_weight;
  auto conv = [&](const Tensor& v, bool squared) { return torch::conv2d(v, squared ? sw * sw : sw, {}, 1, sw.size(-1) / 2); };
  auto a = conv(z, false) + (w.spatial_bias.defined() ? w.spatial_bias.view({1, 1, 1, 1}) : torch::zeros({1}, x.options()));
  auto e_a = linear(sw.numel(), a, conv, z, e_z);
  if (cfg.use_bn) {
    const bool batch = cfg.bn_training;
    auto mean = batch ? a.mean() : w.bn_running_mean.squeeze();
    auto var = batch ? a.var(/*unbiased=*/false) : w.bn_running_var.squeeze();
    auto scale = (w.bn_weight.defined() ? w.bn_weight.squeeze() : torch::ones({}, x.options())) / torch::sqrt(var + cfg.bn_eps);
    auto shift = w.bn_bias.defined() ? w.bn_bias.squeeze() : torch::zeros({}, x.options());
    a = (a - mean) * scale + shift;
    // Batch statistics: their sums over N·H·W move every element by about the mean error, twice.
    e_a = e_a * scale.abs() * (batch ? 3.0 : 1.0) + 2 * u * a.abs();
  }
  auto s = torch::sigmoid(a);
  auto e_s = s * (1 - s) * e_a + 2 * u * s;
  auto y = y1 * s;
  return c * (y1.abs() * e_s + s * e_y1 + u * y.abs()) + 2 * uo * y.abs() + floor;  // 2·u_io: the output's rounding on top
}

/// Gradients: testing.h's rounding_tolerance with CBAM's path — every gradient element accumulates the
/// forward's reductions again (H·W, C, 2·R or ECA's taps, C, 2·k², BatchNorm's N·H·W with batch
/// statistics) and the parameter gradients their sums over the N·H·W positions — at the scale of the
/// largest reference gradient.
attnkit::testing::Tolerance cbam_grad_tolerance(const torch::Tensor& x, const CbamWeights& w, const CbamConfig& cfg,
                                                torch::ScalarType io, const torch::Tensor& ref_grad, bool parameter) {
  const int64_t N = x.size(0), C = x.size(1), HW = x.size(2) * x.size(3);
  int64_t K = 0;
  if (w.fc1_weight.defined()) K += HW + C + 2 * w.fc1_weight.size(0);
  if (w.eca_weight.defined()) K += HW + 2 * w.eca_weight.numel();
  if (w.spatial_weight.defined()) K += C + w.spatial_weight.numel() + (cfg.use_bn && cfg.bn_training ? N * HW : 0);
  if (parameter) K += N * HW;
  return attnkit::testing::rounding_tolerance(io, K, attnkit::testing::max_abs(ref_grad));
}

// Checks forward and the gradients of x and every parameter against the reference: float64 to 1e-10
// (parameter gradients, sums over every position, 1e-9); float32 against the float64 reference on
// the same values, within cbam_forward_error / cbam_grad_tolerance.
void check_against_reference(const torch::Tensor& x_in, Case c) {
  const bool exact = x_in.scalar_type() == torch::kDouble;
  CbamWeights ref_w = exact ? c.w : to_double(c.w);
  for (auto* p : params(c.w))
    if (p->defined()) *p = p->detach().clone().requires_grad_(true);
  for (auto* p : params(ref_w))
    if (p->defined()) *p = p->detach().clone().requires_grad_(true);
  // Separate running statistics: training mode updates them and both sides must update equally.
  if (c.w.bn_running_mean.defined()) {
    c.w.bn_running_mean = c.w.bn_running_mean.clone();
    c.w.bn_running_var = c.w.bn_running_var.clone();
  }
  auto x = x_in.detach().clone().requires_grad_(true);
  auto xr = x_in.detach().to(torch::kDouble).requires_grad_(true);
  auto y = attnkit::ops::cbam(x, c.w, c.cfg);
  auto yr = reference_cbam(xr, ref_w, c.cfg);
  EXPECT_EQ(y.is_contiguous(torch::MemoryFormat::ChannelsLast) && !y.is_contiguous(),
            x_in.is_contiguous(torch::MemoryFormat::ChannelsLast) && !x_in.is_contiguous())
      << "output keeps the input layout";
  auto dy = torch::randn(x_in.sizes(), torch::kDouble);
  if (y.numel()) {
    y.backward(dy.to(y.scalar_type()));
    yr.backward(dy);
  }
  auto ps = params(c.w), rs = params(ref_w);
  if (exact) {
    ASSERT_TRUE(all_close(y, yr, 1e-10)) << "forward";
  } else {
    ASSERT_TRUE(all_close(y, yr, cbam_forward_error(x_in, c.w, c.cfg, x_in.scalar_type()))) << "forward";
  }
  if (c.w.bn_running_mean.defined() && c.cfg.bn_training) {
    // The running statistics are sums over N·H·W of the conv output.
    const auto tol = exact ? attnkit::testing::Tolerance{1e-10}
                           : attnkit::testing::rounding_tolerance(x_in.scalar_type(), x_in.numel(), attnkit::testing::max_abs(ref_w.bn_running_var) + 1);
    EXPECT_TRUE(all_close(c.w.bn_running_mean, ref_w.bn_running_mean, tol)) << "running mean update";
    EXPECT_TRUE(all_close(c.w.bn_running_var, ref_w.bn_running_var, tol)) << "running var update";
  }
  if (y.numel() == 0) return;
  auto grad_tol = [&](const torch::Tensor& ref_grad, bool parameter) {
    return exact ? attnkit::testing::Tolerance{parameter ? 1e-9 : 1e-10}
                 : cbam_grad_tolerance(x_in, c.w, c.cfg, x_in.scalar_type(), ref_grad, parameter);
  };
  EXPECT_TRUE(all_close(x.grad(), xr.grad(), grad_tol(xr.grad(), false))) << "grad x";
  for (size_t i = 0; i < ps.size(); ++i) {
    if (!ps[i]->defined()) continue;
    ASSERT_TRUE(ps[i]->grad().defined()) << kParamNames[i];
    EXPECT_TRUE(all_close(ps[i]->grad(), rs[i]->grad(), grad_tol(rs[i]->grad(), true))) << "grad " << kParamNames[i];
  }
}

// relu(cbam(x) + residual), the epilogue that ends a ResNet block inside the op: forward and the
// gradients of x, the parameters and the residual, for every combination of the two options and
// for a residual in another layout than x.
void check_epilogue(const torch::Tensor& x_in, const torch::Tensor& res_in, Case c, bool relu) {
  SCOPED_TRACE(::testing::Message() << "relu " << relu << ", residual " << res_in.defined());
  c.cfg.relu = relu;
  CbamWeights ref_w = c.w;
  for (auto* p : params(c.w))
    if (p->defined()) *p = p->detach().clone().requires_grad_(true);
  for (auto* p : params(ref_w))
    if (p->defined()) *p = p->detach().clone().requires_grad_(true);
  auto x = x_in.detach().clone().requires_grad_(true), xr = x_in.detach().clone().requires_grad_(true);
  torch::Tensor res, resr;
  if (res_in.defined()) {
    res = res_in.detach().clone().requires_grad_(true);
    resr = res_in.detach().clone().requires_grad_(true);
  }
  auto y = attnkit::ops::cbam(x, c.w, c.cfg, res);
  auto yr = reference_cbam(xr, ref_w, c.cfg);
  if (resr.defined()) yr = yr + resr;
  if (relu) yr = torch::relu(yr);
  ASSERT_TRUE(all_close(y, yr, 1e-10)) << "forward";
  if (relu) EXPECT_GT((y == 0).sum().item<int64_t>(), 0) << "the test should reach the ReLU's zero side";
  auto dy = torch::randn_like(yr);
  y.backward(dy);
  yr.backward(dy);
  EXPECT_TRUE(all_close(x.grad(), xr.grad(), 1e-10)) << "grad x";
  if (res.defined()) EXPECT_TRUE(all_close(res.grad(), resr.grad(), 1e-10)) << "grad residual";
  auto ps = params(c.w), rs = params(ref_w);
  for (size_t i = 0; i < ps.size(); ++i)
    if (ps[i]->defined()) EXPECT_TRUE(all_close(ps[i]->grad(), rs[i]->grad(), 1e-9)) << "grad of parameter " << i;
}

TEST(FusedCbam, ResidualAndReluEpilogue) {
  torch::manual_seed(31);
  auto x = torch::randn({2, 37, 9, 11}, torch::kDouble);
  auto res = torch::randn({2, 37, 9, 11}, torch::kDouble);
  for (const auto& c : {make_case(37, 8, 7, torch::kDouble), make_case(37, 8, 7, torch::kDouble, /*spatial=*/false),
                        make_spatial_case(5, torch::kDouble), make_eca_case(3, torch::kDouble)}) {
    for (bool relu : {true, false}) {
      check_epilogue(x, res, c, relu);
      check_epilogue(x.contiguous(torch::MemoryFormat::ChannelsLast), res, c, relu);  // residual in another layout
      check_epilogue(x, res.contiguous(torch::MemoryFormat::ChannelsLast), c, relu);
    }
    check_epilogue(x, torch::Tensor(), c, /*relu=*/true);
  }
  // Inference (no autograd) takes the same kernels; float32 and batch 0 too.
  torch::NoGradGuard no_grad;
  auto c = make_case(37, 8, 7, torch::kFloat);
  c.cfg.relu = true;
  auto xf = x.to(torch::kFloat), rf = res.to(torch::kFloat);
  // The residual add: the rounding of the product before it and of the sum, ≤ u·(|y| + |residual|) each.
  const auto bound = cbam_forward_error(xf, c.w, c.cfg, torch::kFloat) +
                     2 * attnkit::testing::unit_roundoff(torch::kFloat) * (xf.abs() + rf.abs()).to(torch::kDouble);
  EXPECT_TRUE(all_close(attnkit::ops::cbam(xf, c.w, c.cfg, rf),
                        torch::relu(reference_cbam(x, to_double(c.w), c.cfg) + rf.to(torch::kDouble)), bound));
  auto empty = torch::randn({0, 37, 9, 11});
  EXPECT_EQ(attnkit::ops::cbam(empty, c.w, c.cfg, empty).sizes(), empty.sizes());
}

// The small math on [N, C] (MLP, sigmoid) and on the [N, H·W] map (conv, bias, eval-mode BatchNorm,
// sigmoid) runs in direct loops in forward: wide layers at batch 1 as in a ResNet-50's last stage,
// a hidden width that is not a multiple of the vector width, and parameters in another dtype than x.
TEST(FusedCbam, WideChannelsAtBatchOne) {
  torch::manual_seed(32);
  auto c = make_case(520, 24, 7, torch::kFloat);  // R = 21
  // Float32 against the float64 reference on the same values, within the bound the computation gives.
  auto expect_close = [&](const torch::Tensor& x, const CbamWeights& w, const char* what) {
    EXPECT_TRUE(all_close(attnkit::ops::cbam(x, w, c.cfg), reference_cbam(x.to(torch::kDouble), to_double(c.w), c.cfg),
                          cbam_forward_error(x, c.w, c.cfg, torch::kFloat)))
        << what;
  };
  for (auto fmt : {torch::MemoryFormat::Contiguous, torch::MemoryFormat::ChannelsLast}) {
    auto x = torch::randn({1, 520, 7, 7}).contiguous(fmt);
    expect_close(x, c.w, "float32 parameters");
    // Float64 parameters on a float32 map are converted for the kernels: exactly the float32 values.
    expect_close(x, to_double(c.w), "float64 parameters");
  }
  c.w.bn_weight = c.w.bn_bias = torch::Tensor();  // BatchNorm without affine parameters, a conv bias
  c.w.spatial_bias = torch::full({1}, 0.3);
  expect_close(torch::randn({1, 520, 14, 14}), c.w, "no BatchNorm affine, conv bias");
}

TEST(FusedCbam, MatchesReferenceFloat64) {
  torch::manual_seed(1);
  check_against_reference(torch::randn({2, 37, 9, 11}, torch::kDouble), make_case(37, 16, 7, torch::kDouble));
}

TEST(FusedCbam, MatchesReferenceFloat32) {
  torch::manual_seed(2);
  check_against_reference(torch::randn({3, 64, 14, 14}), make_case(64, 16, 7, torch::kFloat));
}

TEST(FusedCbam, ChannelsLastAndNonContiguous) {
  torch::manual_seed(3);
  auto c = make_case(48, 16, 3, torch::kDouble);
  auto x = torch::randn({2, 48, 7, 5}, torch::kDouble);
  check_against_reference(x.contiguous(torch::MemoryFormat::ChannelsLast), c);
  check_against_reference(torch::randn({2, 5, 7, 48}, torch::kDouble).permute({0, 3, 2, 1}), c);
  check_against_reference(torch::randn({2, 96, 7, 5}, torch::kDouble).slice(1, 0, 96, 2), c);
}

TEST(FusedCbam, OddShapes) {
  torch::manual_seed(4);
  for (auto nhwc : {false, true}) {
    auto fmt = nhwc ? torch::MemoryFormat::ChannelsLast : torch::MemoryFormat::Contiguous;
    check_against_reference(torch::randn({2, 1, 5, 6}, torch::kDouble).contiguous(fmt), make_case(1, 16, 3, torch::kDouble));
    check_against_reference(torch::randn({3, 19, 1, 1}, torch::kDouble).contiguous(fmt), make_case(19, 4, 7, torch::kDouble));
    check_against_reference(torch::randn({1, 33, 3, 17}, torch::kDouble).contiguous(fmt), make_case(33, 16, 5, torch::kDouble));
    check_against_reference(torch::randn({0, 8, 4, 4}, torch::kDouble).contiguous(fmt), make_case(8, 2, 3, torch::kDouble));
  }
}

// The channels-last channel pool splits positions into chunks of 256 so that batch 1 keeps both
// threads busy: a map of several chunks with a partial last one, and a NaN in the last chunk still
// reaches its channel's maximum (so every output of its image is NaN), as in the NCHW path.
TEST(FusedCbam, ChannelsLastPoolOverManyPositions) {
  torch::manual_seed(12);
  check_against_reference(torch::randn({2, 40, 23, 29}, torch::kDouble).contiguous(torch::MemoryFormat::ChannelsLast),
                          make_case(40, 8, 7, torch::kDouble));
  auto c = make_case(40, 8, 7, torch::kFloat);
  auto x = torch::randn({2, 40, 23, 29});
  x[0][5][22][28].fill_(std::numeric_limits<float>::quiet_NaN());
  for (auto fmt : {torch::MemoryFormat::Contiguous, torch::MemoryFormat::ChannelsLast}) {
    auto y = attnkit::ops::cbam(x.contiguous(fmt), c.w, c.cfg);
    EXPECT_TRUE(y[0].isnan().all().item<bool>()) << fmt;
    EXPECT_TRUE(y[1].isfinite().all().item<bool>()) << fmt;
  }
}

// The spatial gate's per-position max and mean over channels (lanes combined by shuffle trees in
// the vector copies): a NaN at one position reaches exactly the outputs whose k×k window holds that
// position, as in the composite reference, and the other outputs match it. C = 94 runs the
// four-chain loop, the single-vector loop and a partial tail with 8- and with 16-lane vectors; the
// NaN sits in the tail's channels in both.
TEST(FusedCbam, NanAtOnePositionReachesItsWindowOnly) {
  torch::manual_seed(21);
  Case c = make_spatial_case(7, torch::kFloat);
  auto x = torch::randn({2, 94, 12, 13});
  x[1][90][5][6].fill_(std::numeric_limits<float>::quiet_NaN());
  const auto ref = reference_cbam(x, c.w, c.cfg);
  // The exact values, and the derived per-element bound on the op's rounding (finite away from the
  // NaN's window).
  const auto exact = reference_cbam(x.to(torch::kDouble), to_double(c.w), c.cfg);
  const auto finite = ref.isfinite();
  const auto bound = cbam_forward_error(x, c.w, c.cfg, torch::kFloat).expand_as(exact).masked_select(finite);
  for (auto fmt : {torch::MemoryFormat::Contiguous, torch::MemoryFormat::ChannelsLast}) {
    SCOPED_TRACE(fmt == torch::MemoryFormat::Contiguous ? "contiguous" : "channels-last");
    const auto y = attnkit::ops::cbam(x.contiguous(fmt), c.w, c.cfg);
    EXPECT_TRUE(y.isnan().equal(ref.isnan()));
    EXPECT_TRUE(y[1][0][5][6].isnan().item<bool>());       // the NaN's own position
    EXPECT_TRUE(y[1][0][11][12].isfinite().item<bool>());  // outside its 7x7 window
    EXPECT_TRUE(y[0].isfinite().all().item<bool>());
    EXPECT_TRUE(torch::allclose(y.masked_select(finite), ref.masked_select(finite), 1e-5, 1e-6));
    EXPECT_TRUE(all_close(y.masked_select(finite), exact.masked_select(finite), bound));
  }
}

TEST(FusedCbam, Variants) {
  torch::manual_seed(5);
  auto x = torch::randn({2, 24, 6, 7}, torch::kDouble);
  auto c = make_case(24, 4, 7, torch::kDouble);
  c.cfg.spatial_max_first = false;  // timm's [mean, max]
  check_against_reference(x, c);
  c.cfg.pool_max = false;  // SE-style average-only descriptor
  check_against_reference(x, c);
  c.cfg.pool_max = true;
  c.cfg.pool_avg = false;
  check_against_reference(x, c);
  c = make_case(24, 4, 7, torch::kDouble, /*spatial=*/false, /*bias=*/false);  // channel gate alone
  check_against_reference(x, c);
  c = make_case(24, 4, 7, torch::kDouble);
  c.cfg.use_bn = false;
  c.w.bn_weight = c.w.bn_bias = c.w.bn_running_mean = c.w.bn_running_var = torch::Tensor();
  c.w.spatial_bias = torch::randn({1}, torch::kDouble);
  check_against_reference(x, c);
}

// ECA and the spatial gate alone run through the same op: every layout, dtype and odd shape.
void check_gate_cases(const Case& c, const char* what) {
  SCOPED_TRACE(what);
  for (auto nhwc : {false, true}) {
    auto fmt = nhwc ? torch::MemoryFormat::ChannelsLast : torch::MemoryFormat::Contiguous;
    check_against_reference(torch::randn({2, 37, 9, 11}, torch::kDouble).contiguous(fmt), c);  // odd C
    check_against_reference(torch::randn({3, 19, 1, 1}, torch::kDouble).contiguous(fmt), c);   // H·W = 1
    check_against_reference(torch::randn({2, 1, 5, 6}, torch::kDouble).contiguous(fmt), c);    // C = 1
    check_against_reference(torch::randn({0, 8, 4, 4}, torch::kDouble).contiguous(fmt), c);    // N = 0
  }
  check_against_reference(torch::randn({2, 5, 7, 48}, torch::kDouble).permute({0, 3, 2, 1}), c);
  check_against_reference(torch::randn({2, 96, 7, 5}, torch::kDouble).slice(1, 0, 96, 2), c);
}

TEST(FusedCbam, EcaMatchesReference) {
  torch::manual_seed(21);
  check_gate_cases(make_eca_case(5, torch::kDouble), "eca k=5");
  check_gate_cases(make_eca_case(1, torch::kDouble), "eca k=1");
  auto c = make_eca_case(3, torch::kDouble);
  c.cfg.pool_max = true;  // both descriptors through the same conv
  check_gate_cases(c, "eca avg+max");
  check_gate_cases(make_eca_case(3, torch::kDouble, /*spatial=*/true), "eca + spatial gate");
  check_against_reference(torch::randn({3, 67, 15, 15}), make_eca_case(5, torch::kFloat));
}

TEST(FusedCbam, SpatialGateAloneMatchesReference) {
  torch::manual_seed(22);
  check_gate_cases(make_spatial_case(7, torch::kDouble), "spatial k=7");
  auto c = make_spatial_case(3, torch::kDouble);
  c.cfg.spatial_max_first = false;
  c.cfg.bn_training = true;
  check_gate_cases(c, "spatial [mean, max], batch statistics");
  c = make_spatial_case(5, torch::kDouble);
  c.cfg.use_bn = false;
  c.w.bn_weight = c.w.bn_bias = c.w.bn_running_mean = c.w.bn_running_var = torch::Tensor();
  c.w.spatial_bias = torch::randn({1}, torch::kDouble);
  check_gate_cases(c, "spatial, conv bias, no BatchNorm");
  check_against_reference(torch::randn({3, 67, 15, 15}), make_spatial_case(7, torch::kFloat));
  check_against_reference(torch::randn({3, 67, 15, 15}).contiguous(torch::MemoryFormat::ChannelsLast),
                          make_spatial_case(7, torch::kFloat));
}

TEST(FusedCbam, BatchNormTrainingModeUpdatesRunningStats) {
  torch::manual_seed(6);
  auto c = make_case(32, 8, 7, torch::kDouble);
  c.cfg.bn_training = true;
  check_against_reference(torch::randn({4, 32, 8, 8}, torch::kDouble), c);
  check_against_reference(torch::randn({4, 32, 8, 8}, torch::kDouble).contiguous(torch::MemoryFormat::ChannelsLast), c);
}

TEST(FusedCbam, ConvWeightsAsStoredByTimm) {
  torch::manual_seed(7);
  auto c = make_case(32, 8, 7, torch::kDouble);
  c.w.fc1_weight = c.w.fc1_weight.view({4, 32, 1, 1});
  c.w.fc2_weight = c.w.fc2_weight.view({32, 4, 1, 1});
  check_against_reference(torch::randn({2, 32, 5, 5}, torch::kDouble), c);
}

TEST(FusedCbam, ReducedPrecision) {
  torch::manual_seed(8);
  for (auto dtype : {torch::kBFloat16, torch::kHalf}) {
    auto c64 = make_case(40, 8, 7, torch::kDouble);
    auto x64 = torch::randn({2, 40, 9, 9}, torch::kDouble);
    auto expected = reference_cbam(x64, c64.w, c64.cfg);
    auto c = c64;
    for (auto* p : params(c.w))
      if (p->defined()) *p = p->to(dtype);
    c.w.bn_running_mean = c.w.bn_running_mean.to(dtype);
    c.w.bn_running_var = c.w.bn_running_var.to(dtype);
    auto y = attnkit::ops::cbam(x64.to(dtype), c.w, c.cfg);
    EXPECT_EQ(y.scalar_type(), dtype);
    // Inputs and weights rounded to 8 (bf16) or 11 (fp16) bits against the unrounded reference,
    // float32 accumulation, the output rounded again.
    EXPECT_TRUE(all_close(y, expected, cbam_forward_error(x64, c64.w, c64.cfg, dtype, /*rounded_inputs=*/true))) << dtype;
    for (const auto& g : {make_eca_case(5, torch::kDouble), make_spatial_case(7, torch::kDouble)}) {
      auto gr = g;
      for (auto* p : params(gr.w))
        if (p->defined()) *p = p->to(dtype);
      auto yg = attnkit::ops::cbam(x64.to(dtype), gr.w, gr.cfg);
      EXPECT_EQ(yg.scalar_type(), dtype);
      EXPECT_TRUE(all_close(yg, reference_cbam(x64, g.w, g.cfg), cbam_forward_error(x64, g.w, g.cfg, dtype, true)))
          << dtype << (g.w.eca_weight.defined() ? " eca" : " spatial");
    }
  }
}

TEST(FusedCbam, SameResultWithOneAndTwoThreads) {
  torch::manual_seed(9);
  // The 1024-channel case splits the MLP's weight rows and the per-position passes across threads
  // at a 7×7 map (the 64-channel maps run their small math in one task).
  const std::vector<std::pair<Case, std::vector<int64_t>>> cases = {
      {make_case(64, 16, 7, torch::kFloat), {3, 64, 20, 20}},
      {make_case(1024, 16, 7, torch::kFloat), {2, 1024, 7, 7}},
      {make_case(1024, 16, 7, torch::kFloat), {2, 1024, 1, 1}},  // one position: read channels-last
      {make_eca_case(5, torch::kFloat, /*spatial=*/true), {3, 64, 20, 20}},
      {make_spatial_case(7, torch::kFloat), {3, 64, 20, 20}}};
  for (auto [c, shape] : cases) {
    for (auto* p : params(c.w))
      if (p->defined()) p->requires_grad_(true);
    // The channel gate's first weight (the spatial gate alone: BatchNorm's weight).
    const bool mlp = c.w.fc1_weight.defined();
    auto& first = mlp ? c.w.fc1_weight : c.w.eca_weight.defined() ? c.w.eca_weight : c.w.bn_weight;
    for (auto fmt : {torch::MemoryFormat::Contiguous, torch::MemoryFormat::ChannelsLast}) {
      SCOPED_TRACE(mlp ? "mlp" : c.w.eca_weight.defined() ? "eca" : "spatial");
      auto x = torch::randn(shape).contiguous(fmt);
      std::vector<torch::Tensor> runs[2];
      const int prev = torch::get_num_threads();
      for (int threads : {1, 2}) {
        torch::set_num_threads(threads);
        auto xi = x.clone().requires_grad_(true);
        auto y = attnkit::ops::cbam(xi, c.w, c.cfg);
        auto grads = torch::autograd::grad({y}, {xi, first, c.w.spatial_weight}, {torch::ones_like(y)});
        runs[threads - 1] = {y, grads[0], grads[1], grads[2]};
      }
      torch::set_num_threads(prev);
      // attnkit's passes give each output element to exactly one task: bit-identical results.
      for (size_t i = 0; i < 2; ++i) EXPECT_TRUE(runs[0][i].equal(runs[1][i])) << "output " << i;
      // The weight gradients too: the small math's backward sums over fixed blocks in a fixed order.
      EXPECT_TRUE(runs[0][2].equal(runs[1][2])) << "first weight grad";
      EXPECT_TRUE(runs[0][3].equal(runs[1][3])) << "spatial weight grad";
    }
  }
}

// Calls from several threads at once share no mutable state (caches, statics): each thread gets the
// result it gets alone. The ThreadSanitizer preset runs this (there without OpenMP: see the preset).
TEST(FusedCbam, ConcurrentCallsFromTwoThreads) {
  torch::manual_seed(10);
  auto c = make_case(24, 4, 7, torch::kFloat);
  std::vector<torch::Tensor> inputs = {torch::randn({2, 24, 9, 11}), torch::randn({3, 24, 6, 6}).contiguous(torch::MemoryFormat::ChannelsLast)};
  auto run = [&](const torch::Tensor& x) {
    auto xi = x.clone().requires_grad_(true);
    auto y = attnkit::ops::cbam(xi, c.w, c.cfg);
    auto gx = torch::autograd::grad({y}, {xi}, {torch::ones_like(y)})[0];
    return std::vector<torch::Tensor>{y.detach(), gx};
  };
  std::vector<std::vector<torch::Tensor>> alone, together(inputs.size());
  for (const auto& x : inputs) alone.push_back(run(x));
  std::vector<std::thread> threads;
  for (size_t i = 0; i < inputs.size(); ++i)
    threads.emplace_back([&, i] {
      for (int rep = 0; rep < 3; ++rep) together[i] = run(inputs[i]);
    });
  for (auto& t : threads) t.join();
  for (size_t i = 0; i < inputs.size(); ++i)
    for (size_t j = 0; j < 2; ++j) EXPECT_TRUE(alone[i][j].equal(together[i][j])) << "input " << i << " result " << j;
}

TEST(FusedCbam, FiniteDifferenceGradient) {
  torch::manual_seed(10);
  auto c = make_case(6, 2, 3, torch::kDouble);
  auto x = torch::randn({1, 6, 4, 3}, torch::kDouble).requires_grad_(true);
  auto dy = torch::randn({1, 6, 4, 3}, torch::kDouble);
  auto loss = [&](const torch::Tensor& xi) { return (attnkit::ops::cbam(xi, c.w, c.cfg) * dy).sum().item<double>(); };
  auto y = attnkit::ops::cbam(x, c.w, c.cfg);
  auto g = torch::autograd::grad({y}, {x}, {dy})[0];
  const double h = 1e-6;
  auto flat = x.detach().flatten();
  for (int64_t i = 0; i < flat.numel(); ++i) {
    auto xp = flat.clone(), xm = flat.clone();
    xp[i] += h;
    xm[i] -= h;
    const double fd = (loss(xp.view(x.sizes())) - loss(xm.view(x.sizes()))) / (2 * h);
    EXPECT_NEAR(g.flatten()[i].item<double>(), fd, 1e-6) << "element " << i;
  }
}

TEST(FusedCbam, BadInputNamesTheArgument) {
  auto c = make_case(16, 4, 7, torch::kFloat);
  auto expect_error = [&](const torch::Tensor& x, const CbamWeights& w, const std::string& text) {
    try {
      attnkit::ops::cbam(x, w, c.cfg);
      ADD_FAILURE() << "expected an error containing: " << text;
    } catch (const c10::Error& e) {
      EXPECT_THAT(e.what(), HasSubstr(text));
    }
  };
  expect_error(torch::randn({2, 16, 5}), c.w, "expected x of shape [N, C, H, W], got [2, 16, 5]");
  expect_error(torch::randn({2, 8, 5, 5}), c.w, "expected fc1_weight of shape [4, 8], got [4, 16]");
  expect_error(torch::ones({2, 16, 5, 5}, torch::kLong), c.w, "x must be floating point");
  auto w = c.w;
  w.spatial_weight = torch::randn({1, 2, 4, 4});
  expect_error(torch::randn({2, 16, 5, 5}), w, "odd kernel size");
  w = c.w;
  w.fc2_bias = torch::randn({15});
  expect_error(torch::randn({2, 16, 5, 5}), w, "expected fc2_bias of shape [16], got [15]");
  w = c.w;
  w.fc2_weight = torch::Tensor();
  expect_error(torch::randn({2, 16, 5, 5}), w, "fc1_weight and fc2_weight go together");
  w = c.w;
  w.eca_weight = torch::randn({1, 1, 3});
  expect_error(torch::randn({2, 16, 5, 5}), w, "give the MLP (fc1_weight, fc2_weight) or eca_weight, not both");
  w = CbamWeights{};
  expect_error(torch::randn({2, 16, 5, 5}), w, "no gate");
  w.eca_weight = torch::randn({1, 1, 4});
  expect_error(torch::randn({2, 16, 5, 5}), w, "eca_weight must have an odd kernel size, got 4");
  auto good = make_case(16, 4, 3, torch::kFloat);
  auto x16 = torch::randn({2, 16, 5, 5});
  auto expect_residual_error = [&](const torch::Tensor& r, const std::string& what) {
    try {
      attnkit::ops::cbam(x16, good.w, good.cfg, r);
      ADD_FAILURE() << "expected: " << what;
    } catch (const c10::Error& e) {
      EXPECT_THAT(e.what(), HasSubstr(what));
    }
  };
  expect_residual_error(torch::randn({2, 16, 5, 4}), "residual must have x's shape [2, 16, 5, 5], got [2, 16, 5, 4]");
  expect_residual_error(torch::randn({2, 16, 5, 5}, torch::kDouble), "residual must have x's dtype Float, got Double");
}

// cbam_into_residual: the op's result written into the residual's own buffer (the inference path's
// block ends). Same kernels, same order as cbam() with that residual, so the same bits; every gate
// combination, both layouts, with and without ReLU, a residual in the other layout (copied in),
// bfloat16 maps under autocast; refused where a gradient is wanted.
TEST(FusedCbam, IntoResidual) {
  torch::manual_seed(14);
  const std::vector<std::pair<const char*, Case>> cases = {
      {"cbam", make_case(24, 4, 7, torch::kFloat)},
      {"channel gate alone", make_case(24, 4, 7, torch::kFloat, /*spatial=*/false)},
      {"eca + spatial", make_eca_case(5, torch::kFloat, /*spatial=*/true)},
      {"spatial alone", make_spatial_case(3, torch::kFloat)}};
  torch::NoGradGuard no_grad;
  for (const auto& [what, c0] : cases) {
    const int64_t C = c0.w.fc2_weight.defined() ? 24 : 8;
    for (auto x_fmt : {torch::MemoryFormat::Contiguous, torch::MemoryFormat::ChannelsLast})
      for (auto res_fmt : {torch::MemoryFormat::Contiguous, torch::MemoryFormat::ChannelsLast})
        for (bool relu : {false, true}) {
          SCOPED_TRACE(::testing::Message() << what << ", x " << x_fmt << ", residual " << res_fmt << ", relu " << relu);
          Case c = c0;
          c.cfg.relu = relu;
          auto x = torch::randn({3, C, 9, 11}).contiguous(x_fmt);
          auto residual = torch::randn({3, C, 9, 11}).contiguous(res_fmt);
          const auto expected = attnkit::ops::cbam(x, c.w, c.cfg, residual);
          const void* buffer = residual.data_ptr();
          const auto version = residual._version();
          auto& result = attnkit::ops::cbam_into_residual(residual, x, c.w, c.cfg);
          EXPECT_EQ(&result, &residual);
          EXPECT_EQ(residual.data_ptr(), buffer) << "written into the residual's buffer";
          EXPECT_TRUE(residual.equal(expected));
          EXPECT_GT(residual._version(), version) << "the residual is marked as changed";
        }
  }
  // bfloat16 maps with float32 weights, under autocast (the bfloat16 inference path).
  auto c = make_case(24, 4, 7, torch::kFloat);
  c.cfg.relu = true;
  auto x = torch::randn({2, 24, 8, 6}).to(torch::kBFloat16).contiguous(torch::MemoryFormat::ChannelsLast);
  auto residual = torch::randn({2, 24, 8, 6}).to(torch::kBFloat16).contiguous(torch::MemoryFormat::ChannelsLast);
  at::autocast::set_autocast_enabled(at::kCPU, true);
  const auto expected = attnkit::ops::cbam(x, c.w, c.cfg, residual);
  attnkit::ops::cbam_into_residual(residual, x, c.w, c.cfg);
  at::autocast::set_autocast_enabled(at::kCPU, false);
  EXPECT_EQ(residual.scalar_type(), torch::kBFloat16);
  EXPECT_TRUE(residual.equal(expected)) << "bfloat16 under autocast";
}

TEST(FusedCbam, IntoResidualRefusesGradientsAndBadResiduals) {
  auto c = make_case(16, 4, 7, torch::kFloat);
  auto x = torch::randn({2, 16, 5, 5});
  auto expect_error = [&](torch::Tensor residual, const torch::Tensor& input, const std::string& what) {
    try {
      attnkit::ops::cbam_into_residual(residual, input, c.w, c.cfg);
      ADD_FAILURE() << "expected an error: " << what;
    } catch (const c10::Error& e) {
      EXPECT_THAT(e.what(), HasSubstr(what));
    }
  };
  const auto residual = torch::randn({2, 16, 5, 5});
  const auto before = residual.clone();
  expect_error(residual, x.clone().requires_grad_(true), "requires a gradient");
  EXPECT_TRUE(residual.equal(before)) << "a refused call leaves the residual as it was";
  expect_error(torch::Tensor(), x, "residual is undefined");
  expect_error(torch::randn({2, 16, 5, 4}), x, "residual must have x's shape [2, 16, 5, 5], got [2, 16, 5, 4]");
  expect_error(torch::randn({2, 16, 5, 5}, torch::kDouble), x, "residual must have x's dtype Float, got Double");
}

TEST(FusedCbam, CallableThroughTheDispatcher) {
  // torch.ops.attnkit.cbam is what Python sees once libattnkit is loaded.
  auto op = c10::Dispatcher::singleton().findSchemaOrThrow("attnkit::cbam", "");
  EXPECT_THAT(toString(op.schema()), HasSubstr("attnkit::cbam(Tensor x"));
  // The into-residual variant says that it writes its residual (alias annotation c!).
  auto into = c10::Dispatcher::singleton().findSchemaOrThrow("attnkit::_cbam_into_residual", "");
  EXPECT_THAT(toString(into.schema()), HasSubstr("Tensor(c!)? residual"));
}

}  // namespace

// ---- the modules on their fused and composite paths ---------------------------------------------
namespace {

template <typename Module, typename Options>
void expect_same_module_results(const Options& opts, bool training) {
  torch::manual_seed(11);
  Module fused(Options(opts).impl(attnkit::Implementation::Fused));
  Module composite(Options(opts).impl(attnkit::Implementation::Composite));
  fused->to(torch::kDouble);
  composite->to(torch::kDouble);
  {
    torch::NoGradGuard no_grad;
    for (auto& p : fused->named_parameters()) p.value().normal_(0, 0.5);
    auto src = fused->named_buffers();
    for (auto& b : composite->named_buffers()) b.value().copy_(src[b.key()]);
    auto ps = fused->named_parameters();
    for (auto& p : composite->named_parameters()) p.value().copy_(ps[p.key()]);
  }
  fused->train(training);
  composite->train(training);
  for (auto fmt : {torch::MemoryFormat::Contiguous, torch::MemoryFormat::ChannelsLast}) {
    auto x = torch::randn({3, 40, 6, 7}, torch::kDouble).contiguous(fmt).requires_grad_(true);
    auto xr = x.detach().clone().requires_grad_(true);
    auto y = fused->forward(x), yr = composite->forward(xr);
    ASSERT_TRUE(all_close(y, yr, 1e-10));
    auto dy = torch::randn_like(y);
    y.backward(dy);
    yr.backward(dy);
    EXPECT_TRUE(all_close(x.grad(), xr.grad(), 1e-10));
    auto pr = composite->named_parameters();
    for (auto& p : fused->named_parameters())
      EXPECT_TRUE(all_close(p.value().grad(), pr[p.key()].grad(), 1e-9)) << p.key();
    auto br = composite->named_buffers();
    for (auto& b : fused->named_buffers()) EXPECT_TRUE(all_close(b.value(), br[b.key()], 1e-12)) << b.key();

    // The residual epilogue: relu(block(x) + shortcut) on both paths, gradients included.
    auto sc = torch::randn_like(x).requires_grad_(true), scr = sc.detach().clone().requires_grad_(true);
    auto z = fused->forward_add_relu(x, sc), zr = composite->forward_add_relu(xr, scr);
    ASSERT_TRUE(all_close(z, zr, 1e-10)) << "forward_add_relu";
    if (!training) EXPECT_TRUE(all_close(z, torch::relu(fused->forward(x) + sc), 1e-12));
    z.backward(dy);
    zr.backward(dy);
    EXPECT_TRUE(all_close(sc.grad(), scr.grad(), 1e-10)) << "grad shortcut";
    EXPECT_TRUE(all_close(x.grad(), xr.grad(), 1e-10)) << "grad x through forward_add_relu";

    // forward_add_relu_into: into the shortcut's buffer on the fused path without gradients, the
    // same bits as forward_add_relu; a new tensor on the composite path or where x wants a gradient.
    if (training) continue;  // (another forward would update BatchNorm's running statistics again)
    auto expected = fused->forward_add_relu(x, sc).detach();
    auto into = sc.detach().clone(), kept = sc.detach().clone();
    torch::Tensor out, out_composite;
    {
      torch::NoGradGuard no_grad;
      out = fused->forward_add_relu_into(x.detach(), into);
      out_composite = composite->forward_add_relu_into(xr.detach(), kept);
    }
    EXPECT_EQ(out.data_ptr(), into.data_ptr()) << "fused: written into the shortcut";
    EXPECT_TRUE(out.equal(expected)) << "forward_add_relu_into";
    EXPECT_TRUE(kept.equal(sc.detach())) << "composite: the shortcut is left as it was";
    EXPECT_TRUE(all_close(out_composite, zr, 1e-10)) << "composite forward_add_relu_into";
    auto with_grad = sc.detach().clone();
    auto out_grad = fused->forward_add_relu_into(x, with_grad);
    EXPECT_TRUE(with_grad.equal(sc.detach())) << "x wants a gradient: the shortcut is left as it was";
    EXPECT_TRUE(out_grad.requires_grad());
  }
}

TEST(FusedModules, CbamFusedEqualsComposite) {
  expect_same_module_results<attnkit::CBAM>(attnkit::CBAMOptions(40).reduction(8), /*training=*/false);
  expect_same_module_results<attnkit::CBAM>(attnkit::CBAMOptions(40).reduction(8), /*training=*/true);
  expect_same_module_results<attnkit::CBAM>(attnkit::CBAMOptions::timm_style(40).reduction(8), true);
  expect_same_module_results<attnkit::CBAM>(attnkit::CBAMOptions(40).no_spatial(true), true);
}

TEST(FusedModules, ChannelGatesFusedEqualsComposite) {
  for (auto pool : {attnkit::ChannelPool::Avg, attnkit::ChannelPool::Max, attnkit::ChannelPool::AvgMax})
    expect_same_module_results<attnkit::ChannelAttention>(attnkit::ChannelAttentionOptions(40).reduction(4).pool(pool), true);
  expect_same_module_results<attnkit::SqueezeExcite>(attnkit::SqueezeExciteOptions(40), true);
  expect_same_module_results<attnkit::ECA>(attnkit::ECAOptions(40), true);
  expect_same_module_results<attnkit::ECA>(attnkit::ECAOptions(40).kernel_size(5), false);
}

TEST(FusedModules, SpatialGateFusedEqualsComposite) {
  expect_same_module_results<attnkit::SpatialAttention>(attnkit::SpatialAttentionOptions(), /*training=*/false);
  expect_same_module_results<attnkit::SpatialAttention>(attnkit::SpatialAttentionOptions(), /*training=*/true);
  expect_same_module_results<attnkit::SpatialAttention>(attnkit::SpatialAttentionOptions::timm_style(), true);
}

// Blocks without an epilogue (and no block at all) compose relu(block(x) + shortcut); a shortcut of
// another shape is an error that names both shapes, never a broadcast.
TEST(ResidualEpilogue, BlocksWithoutOneAndBadShortcuts) {
  torch::manual_seed(13);
  auto x = torch::randn({2, 16, 6, 6}), sc = torch::randn({2, 16, 6, 6});
  torch::nn::AnyModule none;
  EXPECT_TRUE(torch::equal(attnkit::forward_add_relu(none, x, sc), torch::relu(x + sc)));
  torch::nn::AnyModule local(attnkit::LocalAttention2d(attnkit::LocalAttention2dOptions(16).heads(2).kernel_size(3)));
  EXPECT_TRUE(torch::equal(attnkit::forward_add_relu(local, x, sc), torch::relu(local.forward(x) + sc)));
  torch::nn::AnyModule cbam(attnkit::CBAM(attnkit::CBAMOptions(16).reduction(4)));
  cbam.ptr()->eval();
  // The same kernel either way; the fused add rounds once where the composite rounds y first.
  auto y = cbam.forward(x);
  EXPECT_TRUE(all_close(attnkit::forward_add_relu(cbam, x, sc), torch::relu(y + sc),
                        2 * attnkit::testing::unit_roundoff(torch::kFloat) * (attnkit::testing::max_abs(y) + attnkit::testing::max_abs(sc))));
  for (auto* block : {&none, &local, &cbam}) {
    try {
      attnkit::forward_add_relu(*block, x, torch::randn({2, 16, 1, 1}));
      ADD_FAILURE() << "expected a shape error";
    } catch (const c10::Error& e) {
      EXPECT_THAT(e.what(), ::testing::AnyOf(HasSubstr("shortcut of shape [2, 16, 1, 1] does not match"),
                                             HasSubstr("residual must have x's shape [2, 16, 6, 6]")));
    }
    try {
      attnkit::forward_add_relu(*block, x, sc.to(torch::kDouble));
      ADD_FAILURE() << "expected a dtype error";
    } catch (const c10::Error& e) {
      EXPECT_THAT(e.what(), ::testing::AnyOf(HasSubstr("shortcut of dtype Double does not match"),
                                             HasSubstr("residual must have x's dtype Float, got Double")));
    }
  }
}

TEST(FusedModules, RecordingFallsBackToTheCompositePathUnderAuto) {
  attnkit::CBAM block(attnkit::CBAMOptions(16).reduction(4));
  block->record_attention(true);
  auto y = block->forward(torch::randn({1, 16, 5, 5}));
  ASSERT_TRUE(block->last_attention().defined());
  EXPECT_EQ(block->last_attention().sizes(), torch::IntArrayRef({1, 1, 5, 5}));
  attnkit::CBAM forced(attnkit::CBAMOptions(16).reduction(4).impl(attnkit::Implementation::Fused));
  forced->record_attention(true);
  try {
    forced->forward(torch::randn({1, 16, 5, 5}));
    ADD_FAILURE() << "expected an error";
  } catch (const c10::Error& e) {
    EXPECT_THAT(e.what(), HasSubstr("impl=fused cannot record attention maps"));
  }
}

}  // namespace

// ---- CUDA: the fused op on the GPU against the CPU reference ----------------------------------------
namespace {

TEST(FusedCbamCuda, MatchesCpuReferenceAllDtypesAndLayouts) {
  if (!attnkit::testing::cuda_available()) GTEST_SKIP() << "no CUDA device";
  if (!attnkit::ops::has_fused_kernels(torch::Device(torch::kCUDA, 0))) GTEST_SKIP() << "built without CUDA kernels";
  torch::manual_seed(20);
  struct Tol {
    torch::Dtype dtype;
    double atol, rtol;
  };
  for (const auto& t : {Tol{torch::kDouble, 1e-10, 0}, Tol{torch::kFloat, 1e-5, 1e-5}, Tol{torch::kBFloat16, 0.05, 0.02},
                        Tol{torch::kHalf, 0.01, 0.01}}) {
    for (auto fmt : {torch::MemoryFormat::Contiguous, torch::MemoryFormat::ChannelsLast}) {
      for (bool training : {false, true}) {
        for (auto shape : {std::vector<int64_t>{3, 37, 9, 11}, std::vector<int64_t>{2, 64, 1, 1},
                           std::vector<int64_t>{64, 24, 7, 7}, std::vector<int64_t>{0, 8, 4, 4}}) {
          auto c = make_case(shape[1], 8, 7, torch::kDouble);
          c.cfg.bn_training = training;
          auto x64 = torch::randn(shape, torch::kDouble);
          auto dy64 = torch::randn(shape, torch::kDouble);
          // Reference: CPU, float64, from the same (rounded) inputs the GPU sees.
          auto xr = x64.to(t.dtype).to(torch::kDouble).clone().requires_grad_(true);
          CbamWeights wr = c.w;
          for (auto* p : params(wr))
            if (p->defined()) *p = p->to(t.dtype).to(torch::kDouble).detach().requires_grad_(true);
          wr.bn_running_mean = wr.bn_running_mean.clone();
          wr.bn_running_var = wr.bn_running_var.clone();
          auto yr = reference_cbam(xr, wr, c.cfg);
          const auto dev = torch::Device(torch::kCUDA, 0);
          auto x = x64.to(t.dtype).to(dev).contiguous(fmt).detach().requires_grad_(true);
          CbamWeights w = c.w;
          for (auto* p : params(w))
            if (p->defined()) *p = p->to(t.dtype).to(dev).detach().requires_grad_(true);
          // Running statistics in float32 at least, as BatchNorm keeps them.
          const auto stat_dtype = t.dtype == torch::kDouble ? torch::kDouble : torch::kFloat;
          w.bn_running_mean = c.w.bn_running_mean.to(stat_dtype).to(dev);
          w.bn_running_var = c.w.bn_running_var.to(stat_dtype).to(dev);
          auto y = attnkit::ops::cbam(x, w, c.cfg);
          EXPECT_TRUE(all_close(y, yr, t.atol, t.rtol)) << t.dtype << " forward " << shape[0];
          if (y.numel() == 0) continue;
          yr.backward(dy64);
          y.backward(dy64.to(t.dtype).to(dev));
          // Gradients sum over many elements: allow for the accumulation error of the dtype.
          const double gtol = t.dtype == torch::kDouble ? 1e-9 : t.atol * 20;
          EXPECT_TRUE(all_close(x.grad(), xr.grad(), gtol, t.rtol * 5)) << t.dtype << " grad x";
          EXPECT_TRUE(all_close(w.fc1_weight.grad(), wr.fc1_weight.grad(), gtol * 10, t.rtol * 5)) << t.dtype << " grad fc1";
          EXPECT_TRUE(all_close(w.spatial_weight.grad(), wr.spatial_weight.grad(), gtol * 10, t.rtol * 5)) << t.dtype << " grad conv";
          if (training) EXPECT_TRUE(all_close(w.bn_running_mean, wr.bn_running_mean, t.atol, t.rtol)) << "running mean";
        }
      }
    }
  }
}

}  // namespace

namespace {

// Mixed precision training runs blocks on bf16 activations with float32 parameters.
TEST(FusedModules, CbamUnderAutocastTakesReducedPrecisionInputs) {
  torch::manual_seed(12);
  attnkit::CBAM block(attnkit::CBAMOptions(32).reduction(8));
  auto x = torch::randn({2, 32, 6, 6});
  auto expected = block->forward(x);
  at::autocast::set_autocast_enabled(at::kCPU, true);
  at::autocast::set_autocast_dtype(at::kCPU, at::kBFloat16);
  for (auto impl : {attnkit::Implementation::Fused, attnkit::Implementation::Composite}) {
    block->options.impl(impl);
    auto y = block->forward(x.to(torch::kBFloat16));
    // bfloat16 against float32: testing.h's rounding_tolerance over CBAM's path (pooling over H·W,
    // the MLP's C and 2·R terms, the gated pooling over C, the 7×7 conv's 98 taps) at |x|'s scale;
    // x, the parameters (composite casts them), the gates and y are rounded to bfloat16 once each.
    const int64_t K = 36 + 32 + 2 * 4 + 32 + 98;
    EXPECT_TRUE(all_close(y, expected, attnkit::testing::rounding_tolerance(torch::kBFloat16, K, attnkit::testing::max_abs(x), 4)))
        << impl;
  }
  at::autocast::set_autocast_enabled(at::kCPU, false);
  try {
    block->forward(x.to(torch::kBFloat16));
    ADD_FAILURE() << "outside autocast a dtype mismatch is an error";
  } catch (const c10::Error& e) {
    EXPECT_THAT(e.what(), HasSubstr("the parameters' dtype"));
  }
}

}  // namespace
