// CBAM's forward and backward over a device's kernel table: input checks, the small math on the
// pooled descriptors and maps (MLP / ECA, the spatial k×k conv, BatchNorm, sigmoids), the layouts.
// The memory-bound passes over the feature map are the table's (cpu/, cuda/).
#include "cbam_passes.h"

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <torch/autograd.h>

#include <cmath>
#include <functional>
#include <tuple>
#include <utility>
#include <vector>

namespace attnkit::ops::detail {
namespace {

using at::Tensor;

at::ScalarType acc_type(at::ScalarType t) { return t == at::kDouble ? at::kDouble : at::kFloat; }

void check_param(const Tensor& t, const char* name, const Tensor& x, std::initializer_list<int64_t> shape) {
  if (!t.defined()) return;
  TORCH_CHECK(t.device() == x.device(), "attnkit::cbam: ", name, " is on ", t.device(), " but x is on ", x.device());
  TORCH_CHECK(t.is_floating_point(), "attnkit::cbam: ", name, " must be floating point, got ", t.scalar_type());
  TORCH_CHECK(t.sizes() == at::IntArrayRef(shape), "attnkit::cbam: expected ", name, " of shape ",
              at::IntArrayRef(shape), ", got ", t.sizes());
}

void check_inputs(const Tensor& x, const CbamWeights& w, const CbamConfig& cfg, const Tensor& residual) {
  TORCH_CHECK(x.dim() == 4, "attnkit::cbam: expected x of shape [N, C, H, W], got ", x.sizes());
  TORCH_CHECK(x.is_floating_point(), "attnkit::cbam: x must be floating point, got ", x.scalar_type());
  TORCH_CHECK(x.size(2) * x.size(3) > 0, "attnkit::cbam: x must have H, W > 0, got ", x.sizes());
  TORCH_CHECK(cfg.pool_avg || cfg.pool_max, "attnkit::cbam: at least one of pool_avg, pool_max must be set");
  const int64_t C = x.size(1);
  if (residual.defined()) {
    TORCH_CHECK(residual.device() == x.device(), "attnkit::cbam: residual is on ", residual.device(), " but x is on ",
                x.device());
    TORCH_CHECK(residual.scalar_type() == x.scalar_type(), "attnkit::cbam: residual must have x's dtype ",
                x.scalar_type(), ", got ", residual.scalar_type());
    TORCH_CHECK(residual.sizes() == x.sizes(), "attnkit::cbam: residual must have x's shape ", x.sizes(), ", got ",
                residual.sizes());
  }
  TORCH_CHECK(w.fc1_weight.defined() == w.fc2_weight.defined(),
              "attnkit::cbam: fc1_weight and fc2_weight go together (both, or neither)");
  TORCH_CHECK(!(w.fc1_weight.defined() && w.eca_weight.defined()),
              "attnkit::cbam: give the MLP (fc1_weight, fc2_weight) or eca_weight, not both");
  TORCH_CHECK(w.fc1_weight.defined() || w.eca_weight.defined() || w.spatial_weight.defined(),
              "attnkit::cbam: no gate: give fc1_weight and fc2_weight, eca_weight or spatial_weight");
  if (w.fc1_weight.defined()) {
    const int64_t R = w.fc1_weight.size(0);
    if (w.fc1_weight.dim() == 4) check_param(w.fc1_weight, "fc1_weight", x, {R, C, 1, 1});
    else check_param(w.fc1_weight, "fc1_weight", x, {R, C});
    check_param(w.fc1_bias, "fc1_bias", x, {R});
    if (w.fc2_weight.dim() == 4) check_param(w.fc2_weight, "fc2_weight", x, {C, R, 1, 1});
    else check_param(w.fc2_weight, "fc2_weight", x, {C, R});
    check_param(w.fc2_bias, "fc2_bias", x, {C});
  }
  if (w.eca_weight.defined()) {
    const int64_t k = w.eca_weight.size(-1);
    TORCH_CHECK(k % 2 == 1, "attnkit::cbam: eca_weight must have an odd kernel size, got ", k);
    check_param(w.eca_weight, "eca_weight", x, {1, 1, k});
  }
  if (w.spatial_weight.defined()) {
    const int64_t k = w.spatial_weight.size(-1);
    TORCH_CHECK(k % 2 == 1, "attnkit::cbam: spatial_weight must have an odd kernel size, got ", k);
    check_param(w.spatial_weight, "spatial_weight", x, {1, 2, k, k});
    check_param(w.spatial_bias, "spatial_bias", x, {1});
    if (cfg.use_bn) {
      check_param(w.bn_weight, "bn_weight", x, {1});
      check_param(w.bn_bias, "bn_bias", x, {1});
      check_param(w.bn_running_mean, "bn_running_mean", x, {1});
      check_param(w.bn_running_var, "bn_running_var", x, {1});
      TORCH_CHECK(cfg.bn_training || (w.bn_running_mean.defined() && w.bn_running_var.defined()),
                  "attnkit::cbam: BatchNorm in eval mode needs bn_running_mean and bn_running_var");
    }
  }
}

// ---- the small math, shared by forward and by backward's recomputation -----------------------------
Tensor as_matrix(const Tensor& w, at::ScalarType t) { return w.flatten(1).to(t); }
Tensor opt_to(const Tensor& t, at::ScalarType s) { return t.defined() ? t.to(s) : t; }

bool has_channel_gate(const CbamWeights& w) { return w.fc1_weight.defined() || w.eca_weight.defined(); }

/// g = sigmoid(f(avg) + f(max)) on the [N, C] descriptors (accumulation dtype); f is the MLP or ECA's
/// 1-D convolution across channels.
Tensor channel_gate(const Tensor& avg, const Tensor& max, const CbamWeights& w, const CbamConfig& cfg) {
  const auto t = avg.scalar_type();
  std::function<Tensor(const Tensor&)> f;
  if (w.eca_weight.defined()) {
    const Tensor we = w.eca_weight.to(t);
    const int64_t pad = (we.size(-1) - 1) / 2;
    f = [we, pad](const Tensor& d) { return at::conv1d(d.unsqueeze(1), we, {}, 1, pad).squeeze(1); };
  } else {
    const Tensor w1 = as_matrix(w.fc1_weight, t), w2 = as_matrix(w.fc2_weight, t);
    const Tensor b1 = opt_to(w.fc1_bias, t), b2 = opt_to(w.fc2_bias, t);
    f = [w1, w2, b1, b2](const Tensor& d) { return at::linear(at::relu(at::linear(d, w1, b1)), w2, b2); };
  }
  // Both descriptors go through f as one batch of 2N rows: half the (small, overhead-bound) ATen calls.
  if (cfg.pool_avg && cfg.pool_max) {
    const int64_t N = avg.size(0);
    const Tensor both = f(at::cat({avg, max}, 0));
    return at::sigmoid(both.narrow(0, 0, N) + both.narrow(0, N, N));
  }
  return at::sigmoid(f(cfg.pool_avg ? avg : max));
}

/// The value of a one-element tensor on the CPU (the spatial gate's scalars), or `fallback` if undefined.
double scalar_of(const Tensor& t, double fallback) {
  if (!t.defined()) return fallback;
  TORCH_INTERNAL_ASSERT(t.is_cpu() && t.numel() == 1);
  double v = 0;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, t.scalar_type(), "attnkit::cbam",
                                  [&] { v = static_cast<double>(*t.const_data_ptr<scalar_t>()); });
  return v;
}

/// `t` as a contiguous tensor of dtype `type` (itself when it already is one), for the kernels.
Tensor dense(const Tensor& t, at::ScalarType type) {
  if (!t.defined() || (t.scalar_type() == type && t.is_contiguous())) return t;
  return t.to(type).contiguous();
}

/// Forward's channel gate: the table's direct loops where it has them (CPU), else channel_gate().
Tensor channel_gate_forward(const Tensor& avg, const Tensor& max, const CbamWeights& w, const CbamConfig& cfg,
                            const CbamKernelTable& k) {
  const auto t = avg.scalar_type();
  const Tensor a = cfg.pool_avg ? avg : Tensor(), m = cfg.pool_max ? max : Tensor();
  if (w.eca_weight.defined() && k.eca_gate) {
    Tensor g = at::empty_like(avg);
    k.eca_gate(a, m, dense(w.eca_weight, t), g);
    return g;
  }
  if (w.fc1_weight.defined() && k.mlp_gate) {
    Tensor g = at::empty_like(avg);
    k.mlp_gate(a, m, dense(w.fc1_weight, t), dense(w.fc1_bias, t), dense(w.fc2_weight, t), dense(w.fc2_bias, t), g);
    return g;
  }
  return channel_gate(avg, max, w, cfg).contiguous();
}

/// The spatial conv's weight as the kernels take it: [2, k, k] in the accumulation dtype, zmax's
/// weights first whatever the module's stacking order.
Tensor spatial_kernel(const CbamWeights& w, const CbamConfig& cfg, at::ScalarType t) {
  const int64_t k = w.spatial_weight.size(-1);
  Tensor wk = dense(w.spatial_weight, t).view({2, k, k});
  return cfg.spatial_max_first ? wk : wk.flip(0);  // flip copies: contiguous
}

/// Eval-mode BatchNorm's running mean and 1 / sqrt(running var + eps), read on the CPU.
std::pair<double, double> running_stats(const CbamWeights& w, const CbamConfig& cfg) {
  return {scalar_of(w.bn_running_mean, 0.0), 1.0 / std::sqrt(scalar_of(w.bn_running_var, 1.0) + cfg.bn_eps)};
}

/// s = sigmoid(bn(conv([zmax, zmean]))) as [N, H*W]. `update_stats` lets BatchNorm touch its
/// running statistics (the forward pass) or not (backward's recomputation). `conv`: the table's
/// direct convolution when it has one and no gradient is wanted (forward), else ATen's conv2d.
/// Forward in eval mode on the CPU is thus one kernel call; the ATen path serves CUDA (whose
/// backward differentiates it) and training-mode BatchNorm.
Tensor spatial_gate(const Tensor& zmax, const Tensor& zmean, int64_t H, int64_t W, const CbamWeights& w,
                    const CbamConfig& cfg, bool update_stats, const CbamKernelTable* conv = nullptr) {
  const auto t = zmax.scalar_type();
  const int64_t N = zmax.size(0);
  const int64_t k = w.spatial_weight.size(-1);
  Tensor a;
  if (conv && conv->spatial_conv) {
    const Tensor wk = spatial_kernel(w, cfg, t);
    // Its epilogue applies the conv bias and, in eval mode, BatchNorm: both are one affine map of the
    // conv's output, so the whole gate is one pass over the small map.
    const double bias = scalar_of(w.spatial_bias, 0.0);
    if (!cfg.use_bn || !cfg.bn_training) {
      double scale = 1.0, shift = bias;
      if (cfg.use_bn) {
        const auto [mean, invstd] = running_stats(w, cfg);
        scale = scalar_of(w.bn_weight, 1.0) * invstd;
        shift = (bias - mean) * scale + scalar_of(w.bn_bias, 0.0);
      }
      Tensor s = at::empty({N, H * W}, zmax.options());
      conv->spatial_conv(zmax, zmean, H, W, wk, scale, shift, /*sigmoid=*/true, s);
      return s;
    }
    a = at::empty({N, H * W}, zmax.options());
    conv->spatial_conv(zmax, zmean, H, W, wk, 1.0, bias, /*sigmoid=*/false, a);
    a = a.view({N, 1, H, W});
  } else {
    const Tensor z = cfg.spatial_max_first ? at::stack({zmax, zmean}, 1) : at::stack({zmean, zmax}, 1);
    a = at::conv2d(z.view({N, 2, H, W}), w.spatial_weight.to(t), opt_to(w.spatial_bias, t), 1, k / 2);
  }
  if (cfg.use_bn) {
    const bool batch_stats = cfg.bn_training;
    Tensor rm = batch_stats && !update_stats ? Tensor() : w.bn_running_mean;
    Tensor rv = batch_stats && !update_stats ? Tensor() : w.bn_running_var;
    // BatchNorm works in the accumulation dtype; running statistics kept in another dtype (a module
    // converted to half, say) are read through a copy and, when updated, written back.
    const bool convert = rm.defined() && rm.scalar_type() != t;
    Tensor rm_t = convert ? rm.to(t) : rm, rv_t = convert ? rv.to(t) : rv;
    a = at::batch_norm(a, opt_to(w.bn_weight, t), opt_to(w.bn_bias, t), rm_t, rv_t, batch_stats, cfg.bn_momentum,
                       cfg.bn_eps, /*cudnn_enabled=*/true);
    if (convert && batch_stats && update_stats) {
      at::NoGradGuard no_grad;
      rm.copy_(rm_t);
      rv.copy_(rv_t);
    }
  }
  return at::sigmoid(a).view({N, H * W});
}

// ---- the small math's backward in direct loops (tables that have them: CPU) ------------------------
// Differentiating the ATen composition instead costs an autograd graph and ATen's convolution
// backward per call: at CIFAR-sized maps that made CBAM's backward slower than the composite's.

bool has_direct_backward(const CbamKernelTable& k) {
  return k.spatial_conv && k.spatial_conv_backward && k.mlp_gate_backward && k.eca_gate_backward;
}

/// `grad` (accumulation dtype) as the gradient of parameter `p`: p's shape and dtype.
Tensor as_grad_of(const Tensor& grad, const Tensor& p) { return grad.view(p.sizes()).to(p.scalar_type()); }

// Gradients of the parameters present, each with its WeightSlot.
using ParamGrads = std::vector<std::pair<size_t, Tensor>>;

struct SpatialGrads {
  Tensor dzmax, dzmean;
  ParamGrads params;
};

/// s = sigmoid(bn(conv(z) + bias)) backward from ds. BatchNorm as in forward: running statistics in
/// eval mode, batch statistics (biased variance) in training mode.
SpatialGrads spatial_gate_backward(const Tensor& zmax, const Tensor& zmean, const Tensor& s, const Tensor& ds, int64_t H,
                                   int64_t W, const CbamWeights& w, const CbamConfig& cfg, const CbamKernelTable& k) {
  const auto t = zmax.scalar_type();
  const int64_t N = zmax.size(0), P = H * W, M = N * P, ks = w.spatial_weight.size(-1);
  const Tensor wk = spatial_kernel(w, cfg, t);
  const double bias = scalar_of(w.spatial_bias, 0.0);
  Tensor a1 = at::empty({N, P}, zmax.options()), da = at::empty({N, P}, zmax.options());
  k.spatial_conv(zmax, zmean, H, W, wk, 1.0, bias, /*sigmoid=*/false, a1);  // the pre-BatchNorm map
  const double gamma = scalar_of(w.bn_weight, 1.0);
  double dgamma = 0, dbeta = 0, dbias = 0;
  AT_DISPATCH_FLOATING_TYPES(t, "attnkit::cbam_backward", [&] {
    const scalar_t* a = a1.const_data_ptr<scalar_t>();
    const scalar_t* sv = s.const_data_ptr<scalar_t>();
    const scalar_t* dsv = ds.const_data_ptr<scalar_t>();
    scalar_t* dav = da.mutable_data_ptr<scalar_t>();
    for (int64_t i = 0; i < M; ++i) dav[i] = dsv[i] * sv[i] * (scalar_t(1) - sv[i]);  // through the sigmoid
    if (cfg.use_bn) {
      double mean, invstd;
      if (cfg.bn_training) {
        double sum = 0, sq = 0;
        for (int64_t i = 0; i < M; ++i) sum += a[i];
        mean = sum / M;
        for (int64_t i = 0; i < M; ++i) sq += (a[i] - mean) * (a[i] - mean);
        invstd = 1.0 / std::sqrt(sq / M + cfg.bn_eps);
      } else {
        std::tie(mean, invstd) = running_stats(w, cfg);
      }
      for (int64_t i = 0; i < M; ++i) {
        dbeta += dav[i];
        dgamma += dav[i] * (a[i] - mean) * invstd;
      }
      const double scale = gamma * invstd;
      for (int64_t i = 0; i < M; ++i) {
        double g = dav[i];
        // Batch statistics depend on every element: their gradient terms (mean of dy, of dy * x_hat).
        if (cfg.bn_training) g -= (dbeta + (a[i] - mean) * invstd * dgamma) / M;
        dav[i] = static_cast<scalar_t>(g * scale);
      }
    }
    for (int64_t i = 0; i < M; ++i) dbias += dav[i];
  });
  SpatialGrads out;
  Tensor dwk = at::empty({2, ks, ks}, zmax.options());
  out.dzmax = at::empty({N, P}, zmax.options());
  out.dzmean = at::empty({N, P}, zmax.options());
  k.spatial_conv_backward(zmax, zmean, H, W, wk, da, dwk, out.dzmax, out.dzmean);
  if (!cfg.spatial_max_first) dwk = dwk.flip(0);
  auto scalar_grad = [&](double v, const Tensor& p) { return at::full(p.sizes(), v, p.options()); };
  out.params.emplace_back(kSpatialWeight, as_grad_of(dwk, w.spatial_weight));
  if (w.spatial_bias.defined()) out.params.emplace_back(kSpatialBias, scalar_grad(dbias, w.spatial_bias));
  if (cfg.use_bn && w.bn_weight.defined()) out.params.emplace_back(kBnWeight, scalar_grad(dgamma, w.bn_weight));
  if (cfg.use_bn && w.bn_bias.defined()) out.params.emplace_back(kBnBias, scalar_grad(dbeta, w.bn_bias));
  return out;
}

struct ChannelGrads {
  Tensor davg, dmax;  // undefined for a descriptor the gate does not pool
  ParamGrads params;
};

/// g = sigmoid(f(avg) + f(max)) backward from dg (the MLP or ECA's convolution).
ChannelGrads channel_gate_backward(const Tensor& avg, const Tensor& max, const Tensor& g, const Tensor& dg,
                                   const CbamWeights& w, const CbamConfig& cfg, const CbamKernelTable& k) {
  const auto t = avg.scalar_type();
  const int64_t N = avg.size(0), C = avg.size(1);
  const Tensor a = cfg.pool_avg ? avg : Tensor(), m = cfg.pool_max ? max : Tensor();
  ChannelGrads out;
  if (cfg.pool_avg) out.davg = at::empty({N, C}, avg.options());
  if (cfg.pool_max) out.dmax = at::empty({N, C}, avg.options());
  if (w.eca_weight.defined()) {
    Tensor dwe = at::empty({w.eca_weight.numel()}, avg.options());
    k.eca_gate_backward(a, m, dense(w.eca_weight, t), g, dg, out.davg, out.dmax, dwe);
    out.params.emplace_back(kEcaWeight, as_grad_of(dwe, w.eca_weight));
    return out;
  }
  const Tensor w1 = dense(w.fc1_weight, t), w2 = dense(w.fc2_weight, t);
  const int64_t R = w.fc1_weight.size(0);
  Tensor dw1 = at::empty({R, C}, avg.options()), dw2 = at::empty({C, R}, avg.options());
  Tensor db1 = w.fc1_bias.defined() ? at::empty({R}, avg.options()) : Tensor();
  Tensor db2 = w.fc2_bias.defined() ? at::empty({C}, avg.options()) : Tensor();
  k.mlp_gate_backward(a, m, w1, dense(w.fc1_bias, t), w2, g, dg, out.davg, out.dmax, dw1, db1, dw2, db2);
  out.params.emplace_back(kFc1Weight, as_grad_of(dw1, w.fc1_weight));
  out.params.emplace_back(kFc2Weight, as_grad_of(dw2, w.fc2_weight));
  if (db1.defined()) out.params.emplace_back(kFc1Bias, as_grad_of(db1, w.fc1_bias));
  if (db2.defined()) out.params.emplace_back(kFc2Bias, as_grad_of(db2, w.fc2_bias));
  return out;
}

// ---- layout ------------------------------------------------------------------------------------------
struct Layout {
  bool nhwc;
  Tensor flat;  // [N, C, P] or [N, P, C], contiguous
};
/// Whether the kernels read x as [N, P, C]: channels-last inputs, and on the CPU maps of one position
/// with several channels, which are both layouts in memory. The NCHW loops would take those as N·C
/// rows of one element each; as one row of C channels per image they are vector loops (1×2048×1×1
/// on a 2-core AVX2 EPYC: 196 -> 51-61 µs, most of it now the MLP's 2 MB of weights). The CUDA
/// kernels keep their choice.
bool runs_channels_last(const Tensor& x) {
  if (!x.is_contiguous(at::MemoryFormat::ChannelsLast)) return false;
  const bool one_position = x.size(2) * x.size(3) == 1 && x.size(1) > 1;
  return !x.is_contiguous() || (one_position && x.is_cpu());
}
Layout kernel_layout(const Tensor& x) {
  const int64_t N = x.size(0), C = x.size(1), P = x.size(2) * x.size(3);
  if (runs_channels_last(x)) return {true, x.permute({0, 2, 3, 1}).reshape({N, P, C})};
  if (x.is_contiguous()) return {false, x.view({N, C, P})};
  return {false, x.contiguous().view({N, C, P})};
}
// A tensor of x's shape and layout, and its flat kernel view.
std::pair<Tensor, Tensor> empty_like_layout(const Tensor& x, bool nhwc) {
  const int64_t N = x.size(0), C = x.size(1), P = x.size(2) * x.size(3);
  if (nhwc) {
    Tensor t = at::empty_like(x, at::MemoryFormat::ChannelsLast);
    return {t, t.permute({0, 2, 3, 1}).view({N, P, C})};
  }
  Tensor t = at::empty(x.sizes(), x.options().memory_format(at::MemoryFormat::Contiguous));
  return {t, t.view({N, C, P})};
}
Tensor flat_like(const Tensor& t, bool nhwc) {
  const int64_t N = t.size(0), C = t.size(1), P = t.size(2) * t.size(3);
  if (nhwc) return t.contiguous(at::MemoryFormat::ChannelsLast).permute({0, 2, 3, 1}).view({N, P, C});
  return t.contiguous().view({N, C, P});
}

// ---- forward -------------------------------------------------------------------------------------------
struct Forward {
  Tensor out, avg, max, g, zmax, zmean, s;
  bool nhwc;
};

/// A tensor of x's shape and layout to write the output into, and its flat kernel view: `into`
/// itself where it already has x's layout (the apply pass reads each residual element before it
/// writes the output element in its place), else a new tensor.
std::pair<Tensor, Tensor> output_for(const Tensor& x, bool nhwc, const Tensor& into) {
  const auto layout = nhwc ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  if (into.defined() && into.is_contiguous(layout)) return {into, flat_like(into, nhwc)};  // a view, no copy
  return empty_like_layout(x, nhwc);
}

/// The forward pass; with `into` defined (the residual, for cbam_into_residual) the output is
/// written into it.
Forward forward_impl(const CbamKernelTable& k, const Tensor& x, const CbamWeights& w, const CbamConfig& cfg,
                     const Tensor& residual, const Tensor& into = {}) {
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  const auto acc = x.options().dtype(acc_type(x.scalar_type()));
  Forward f;
  const Layout in = kernel_layout(x);
  f.nhwc = in.nhwc;
  auto [out, out_flat] = output_for(x, in.nhwc, into);
  f.out = out;
  if (N == 0) return f;
  if (has_channel_gate(w)) {
    f.avg = at::empty({N, C}, acc);
    f.max = at::empty({N, C}, acc);
    k.channel_pool(in.flat, in.nhwc, f.avg, f.max);
    at::NoGradGuard no_grad;
    f.g = channel_gate_forward(f.avg, f.max, w, cfg, k);
  } else {
    f.g = at::ones({N, C}, acc);  // the spatial gate alone
  }
  if (w.spatial_weight.defined()) {
    f.zmax = at::empty({N, H * W}, acc);
    f.zmean = at::empty({N, H * W}, acc);
    k.gated_pool(in.flat, in.nhwc, f.g, f.zmax, f.zmean);
    at::NoGradGuard no_grad;
    f.s = spatial_gate(f.zmax, f.zmean, H, W, w, cfg, /*update_stats=*/true, &k).contiguous();
  }
  // The residual joins in x's layout (a copy only if it comes in another one).
  const Tensor res_flat = residual.defined() ? flat_like(residual, in.nhwc) : Tensor();
  k.apply_gates(in.flat, in.nhwc, f.g, f.s, res_flat, cfg.relu, out_flat);
  return f;
}


// ---- backward --------------------------------------------------------------------------------------
bool wants(int64_t needs_grad, size_t slot) { return (needs_grad >> slot) & 1; }

/// The small math's backward by autograd on leaves standing in for its inputs: for tables without
/// direct backward loops (CUDA). The Autograd kernel called _cbam_backward below autograd, so
/// autograd is switched back on for this recomputation only.
struct SmallMathAutograd {
  c10::impl::ForceDispatchKeyGuard with_autograd;
  at::AutoGradMode grad_mode{true};
  SmallMathAutograd()
      : with_autograd(c10::impl::tls_local_dispatch_key_set().included_,
                      c10::impl::tls_local_dispatch_key_set().excluded_ -
                          c10::autograd_dispatch_keyset_with_ADInplaceOrView) {}
};

/// One backward pass: the gradients flow from the output through the epilogue (ReLU, residual),
/// the spatial gate and the channel gate to x. Each stage is one method; the results collect in
/// `out` (one slot per kGrad*).
class CbamBackward {
 public:
  CbamBackward(const CbamKernelTable& k, const Tensor& x, const CbamSaved& saved, const CbamWeights& weights,
               const CbamConfig& cfg, int64_t needs_grad)
      : k_(k), x_(x), sv_(saved), w_(weights), cfg_(cfg), needs_(needs_grad), out_(kGradSlots),
        nhwc_(runs_channels_last(x)),
        acc_(x.options().dtype(acc_type(x.scalar_type()))), direct_(has_direct_backward(k)) {
    // The differentiable weights as leaves where a gradient is wanted (the autograd recomputation
    // differentiates with respect to them).
    p_ = {&w_.fc1_weight, &w_.fc1_bias, &w_.fc2_weight,  &w_.fc2_bias, &w_.spatial_weight,
          &w_.spatial_bias, &w_.bn_weight, &w_.bn_bias, &w_.eca_weight};
    for (size_t i = 0; i < p_.size(); ++i)
      if (p_[i]->defined()) *p_[i] = p_[i]->detach().requires_grad_(want_param(i));
  }

  std::vector<Tensor> run(const Tensor& grad, bool has_residual) {
    if (x_.size(0) == 0 || !grad.defined()) return out_;
    through_epilogue(grad, has_residual);
    if (w_.spatial_weight.defined()) through_spatial_gate();
    if (has_channel_gate(w_)) through_channel_gate();
    if (wants(needs_, kGradX)) into_input();
    return out_;
  }

 private:
  bool want_param(size_t i) const { return p_[i]->defined() && wants(needs_, kGradWeight0 + i); }
  void keep(const ParamGrads& grads) {
    for (const auto& [i, g] : grads)
      if (want_param(i)) out_[kGradWeight0 + i] = g;
  }

  // Through the epilogue first: the ReLU passes the gradient where the output is positive, the
  // residual's gradient is what reaches the gates.
  void through_epilogue(const Tensor& grad, bool has_residual) {
    Tensor gy = grad.to(x_.scalar_type());
    if (cfg_.relu) gy = at::threshold_backward(gy, sv_.out, 0);
    if (has_residual && wants(needs_, kGradResidual)) out_[kGradResidual] = gy;
    dy_ = flat_like(gy, nhwc_);
    xf_ = flat_like(x_, nhwc_);
  }

  // ds from the big tensor, then back through conv/BN on the small map.
  void through_spatial_gate() {
    const int64_t N = x_.size(0), H = x_.size(2), W = x_.size(3);
    Tensor ds = at::empty({N, H * W}, acc_);
    best_c_ = at::empty({N, H * W}, acc_.dtype(at::kInt));
    k_.backward_spatial(dy_, xf_, nhwc_, sv_.g, ds, best_c_);
    if (direct_) {
      SpatialGrads sg = spatial_gate_backward(sv_.zmax, sv_.zmean, sv_.s, ds, H, W, w_, cfg_, k_);
      dzmax_ = sg.dzmax;
      dzmean_ = sg.dzmean;
      keep(sg.params);
      return;
    }
    SmallMathAutograd autograd_on;
    Tensor zmax_l = sv_.zmax.detach().requires_grad_(true), zmean_l = sv_.zmean.detach().requires_grad_(true);
    Tensor s_re = spatial_gate(zmax_l, zmean_l, H, W, w_, cfg_, /*update_stats=*/false);
    auto dz = small_backward(s_re, {zmax_l, zmean_l}, ds, {kSpatialWeight, kSpatialBias, kBnWeight, kBnBias});
    dzmax_ = dz[0].defined() ? dz[0].contiguous() : at::zeros_like(sv_.zmax);
    dzmean_ = dz[1].defined() ? dz[1].contiguous() : at::zeros_like(sv_.zmean);
  }

  // dg from the big tensor, then back through the MLP (or ECA's conv) on the descriptors.
  void through_channel_gate() {
    const int64_t N = x_.size(0), C = x_.size(1);
    Tensor dg = at::empty({N, C}, acc_);
    argmax_p_ = at::empty({N, C}, acc_.dtype(at::kInt));
    k_.backward_gate(dy_, xf_, nhwc_, sv_.s, dzmax_, dzmean_, best_c_, sv_.max, dg, argmax_p_);
    if (direct_) {
      ChannelGrads cg = channel_gate_backward(sv_.avg, sv_.max, sv_.g, dg, w_, cfg_, k_);
      davg_ = cg.davg;
      dmax_ = cg.dmax;
      keep(cg.params);
      return;
    }
    SmallMathAutograd autograd_on;
    Tensor avg_l = sv_.avg.detach().requires_grad_(true), max_l = sv_.max.detach().requires_grad_(true);
    auto dd = small_backward(channel_gate(avg_l, max_l, w_, cfg_), {avg_l, max_l}, dg,
                             {kFc1Weight, kFc1Bias, kFc2Weight, kFc2Bias, kEcaWeight});
    if (dd[0].defined()) davg_ = dd[0].contiguous();
    if (dd[1].defined()) dmax_ = dd[1].contiguous();
  }

  void into_input() {
    auto [dx, dx_flat] = empty_like_layout(x_, nhwc_);
    k_.backward_input(dy_, xf_, nhwc_, sv_.g, sv_.s, dzmax_, dzmean_, best_c_, davg_, dmax_, argmax_p_, dx_flat);
    out_[kGradX] = dx;
  }

  // Gradients of `y` w.r.t. `inputs` (leaves) by autograd, and of every parameter in `which` that
  // wants one (kept in out_).
  std::vector<Tensor> small_backward(const Tensor& y, std::vector<Tensor> inputs, const Tensor& dy_small,
                                     const std::vector<size_t>& which) {
    const size_t fixed = inputs.size();
    for (size_t i : which)
      if (want_param(i)) inputs.push_back(*p_[i]);
    auto gs = torch::autograd::grad({y}, inputs, {dy_small}, false, false, /*allow_unused=*/true);
    size_t next = fixed;
    for (size_t i : which)
      if (want_param(i)) out_[kGradWeight0 + i] = gs[next++];
    gs.resize(fixed);
    return gs;
  }

  const CbamKernelTable& k_;
  const Tensor& x_;
  const CbamSaved& sv_;
  CbamWeights w_;
  const CbamConfig& cfg_;
  const int64_t needs_;
  std::vector<Tensor> out_;
  std::vector<Tensor*> p_;
  const bool nhwc_;
  const at::TensorOptions acc_;
  const bool direct_;
  Tensor dy_, xf_;                  // the output's gradient and x, in the kernels' flat layout
  Tensor dzmax_, dzmean_, best_c_;  // from the spatial gate (undefined without one)
  Tensor davg_, dmax_, argmax_p_;   // from the channel gate (undefined without one)
};

}  // namespace

void check_cbam_inputs(const CbamArgs& a) {
  TORCH_CHECK(a.x.defined(), "attnkit::cbam: x is undefined");
  check_inputs(a.x, a.w, a.cfg, a.residual);
}

CbamSaved cbam_forward(const CbamKernelTable& k, const CbamArgs& a) {
  Forward f = forward_impl(k, a.x, a.w, a.cfg, a.residual);
  return {f.out, f.avg, f.max, f.g, f.zmax, f.zmean, f.s};
}

void cbam_forward_into_residual(const CbamKernelTable& k, const CbamArgs& a) {
  TORCH_CHECK(a.residual.defined(), "attnkit::cbam_into_residual: residual is undefined");
  const Tensor out = forward_impl(k, a.x, a.w, a.cfg, a.residual, /*into=*/a.residual).out;
  // A residual in another layout than x: the output was computed apart, copy it in.
  if (!out.is_same(a.residual)) a.residual.copy_(out);
}

std::vector<Tensor> cbam_backward(const CbamKernelTable& k, const Tensor& grad, const Tensor& x, const CbamSaved& saved,
                                  const CbamWeights& w, const CbamConfig& cfg, bool has_residual, int64_t needs_grad) {
  return CbamBackward(k, x, saved, w, cfg, needs_grad).run(grad, has_residual);
}

}  // namespace attnkit::ops::detail
