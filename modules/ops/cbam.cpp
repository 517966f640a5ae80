// attnkit::cbam: validation, the small ATen math around the fused passes, autograd, registration.
#include <attnkit/modules/ops/cbam.h>

#include <attnkit/modules/ops/cbam_kernels.h>

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <cmath>
#include <functional>
#include <tuple>
#include <utility>
#include <vector>

namespace attnkit::ops {
namespace {

using at::Tensor;

const CbamKernelTable& kernels_for(const at::Device& device) {
  TORCH_CHECK(has_fused_kernels(device), "attnkit::cbam: no fused kernel for device ", device,
              " in this build; use the module's composite implementation");
#ifdef ATTNKIT_WITH_CUDA
  if (device.is_cuda()) return cuda::cbam_kernels();
#endif
  return cpu::cbam_kernels();
}

at::ScalarType acc_type(at::ScalarType t) { return t == at::kDouble ? at::kDouble : at::kFloat; }

// The differentiable parameters' fixed order (differentiable() below): the index of each one's
// gradient in backward.
enum Param : size_t { kFc1Weight, kFc1Bias, kFc2Weight, kFc2Bias, kSpatialWeight, kSpatialBias, kBnWeight, kBnBias,
                      kEcaWeight, kParams };

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

// Gradients of the parameters present, each with its Param index.
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
Layout kernel_layout(const Tensor& x) {
  const int64_t N = x.size(0), C = x.size(1), P = x.size(2) * x.size(3);
  if (x.is_contiguous()) return {false, x.view({N, C, P})};
  if (x.is_contiguous(at::MemoryFormat::ChannelsLast)) return {true, x.permute({0, 2, 3, 1}).reshape({N, P, C})};
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

Forward forward_impl(const Tensor& x, const CbamWeights& w, const CbamConfig& cfg, const Tensor& residual) {
  // The small math runs in the accumulation dtype whatever autocast says: the kernels read it so.
  c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  const auto acc = x.options().dtype(acc_type(x.scalar_type()));
  Forward f;
  const Layout in = kernel_layout(x);
  f.nhwc = in.nhwc;
  auto [out, out_flat] = empty_like_layout(x, in.nhwc);
  f.out = out;
  if (N == 0) return f;
  const auto& k = kernels_for(x.device());
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

// ---- autograd --------------------------------------------------------------------------------------------
// Leaves standing in for the op's inputs while backward recomputes the small math with autograd
// (tables without direct backward loops: CUDA).
Tensor leaf(const Tensor& t) { return t.defined() ? t.detach().requires_grad_(t.requires_grad()) : t; }

// The differentiable parameters in a fixed order. Only the defined ones become autograd inputs
// (a custom Function cannot take undefined tensors); a bit mask remembers which.
std::vector<Tensor> differentiable(const CbamWeights& w) {
  return {w.fc1_weight, w.fc1_bias, w.fc2_weight, w.fc2_bias, w.spatial_weight, w.spatial_bias, w.bn_weight, w.bn_bias,
          w.eca_weight};
}
// Which of them belong to the channel gate and which to the spatial gate.
const std::vector<size_t> kChannelParams = {kFc1Weight, kFc1Bias, kFc2Weight, kFc2Bias, kEcaWeight};
const std::vector<size_t> kSpatialParams = {kSpatialWeight, kSpatialBias, kBnWeight, kBnBias};

struct CbamFunction : public torch::autograd::Function<CbamFunction> {
  // inputs: the defined parameters, then the residual if there is one (autograd tracks them there).
  static Tensor forward(torch::autograd::AutogradContext* ctx, const Tensor& x, at::TensorList inputs,
                        const CbamWeights& w, const CbamConfig& cfg, bool has_residual) {
    Forward f = forward_impl(x, w, cfg, has_residual ? inputs.back() : Tensor());
    int64_t present = 0;
    const auto all = differentiable(w);
    for (size_t i = 0; i < kParams; ++i)
      if (all[i].defined()) present |= int64_t{1} << i;
    // In training mode BatchNorm has just updated the running statistics in place, and backward
    // normalises with batch statistics anyway: keep them out of the saved set.
    const Tensor rm = cfg.bn_training ? Tensor() : w.bn_running_mean;
    const Tensor rv = cfg.bn_training ? Tensor() : w.bn_running_var;
    std::vector<Tensor> to_save = {x, f.avg, f.max, f.g, f.zmax, f.zmean, f.s, rm, rv};
    to_save.insert(to_save.end(), all.begin(), all.end());
    to_save.push_back(cfg.relu ? f.out : Tensor());  // ReLU's backward needs the output's sign
    ctx->save_for_backward(to_save);
    ctx->saved_data["present"] = present;
    ctx->saved_data["flags"] = std::vector<bool>{cfg.pool_avg, cfg.pool_max, cfg.spatial_max_first, cfg.use_bn,
                                                 cfg.bn_training, f.nhwc, cfg.relu, has_residual};
    ctx->saved_data["momentum"] = cfg.bn_momentum;
    ctx->saved_data["eps"] = cfg.bn_eps;
    return f.out;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const Tensor& x = saved[0];
    const Tensor &avg = saved[1], &max = saved[2], &g = saved[3], &zmax = saved[4], &zmean = saved[5], &s = saved[6];
    std::vector<Tensor> p(kParams);
    for (size_t i = 0; i < kParams; ++i) p[i] = leaf(saved[9 + i]);
    const CbamWeights w{p[0], p[1], p[2], p[3], p[4], p[5], p[6], p[7], saved[7], saved[8], p[8]};
    const auto flags = ctx->saved_data["flags"].toBoolList();
    const CbamConfig cfg{flags[0], flags[1], flags[2], flags[3], flags[4], ctx->saved_data["momentum"].toDouble(),
                         ctx->saved_data["eps"].toDouble()};
    const bool nhwc = flags[5], relu = flags[6], has_residual = flags[7];
    const int64_t present = ctx->saved_data["present"].toInt();
    const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);

    std::vector<Tensor> param_grads(kParams);
    Tensor dx, dresidual;
    c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
    if (N > 0 && grads[0].defined()) {
      const auto& k = kernels_for(x.device());
      const auto acc = x.options().dtype(acc_type(x.scalar_type()));
      // Through the epilogue first: the ReLU passes the gradient where the output is positive, the
      // residual's gradient is what reaches the gates.
      Tensor gy = grads[0].to(x.scalar_type());
      if (relu) gy = at::threshold_backward(gy, saved[9 + kParams], 0);
      if (has_residual) dresidual = gy;
      const Tensor dy = flat_like(gy, nhwc);
      const Tensor xf = flat_like(x, nhwc);
      at::AutoGradMode enable_grad(true);
      // Gradients of `out` w.r.t. `inputs` (leaves), for every parameter in `which` that wants one.
      auto small_backward = [&](const Tensor& out, std::vector<Tensor> inputs, const Tensor& grad,
                                const std::vector<size_t>& which) {
        const size_t fixed = inputs.size();
        for (size_t i : which)
          if (p[i].defined() && p[i].requires_grad()) inputs.push_back(p[i]);
        auto gs = torch::autograd::grad({out}, inputs, {grad}, false, false, /*allow_unused=*/true);
        size_t next = fixed;
        for (size_t i : which)
          if (p[i].defined() && p[i].requires_grad()) param_grads[i] = gs[next++];
        gs.resize(fixed);
        return gs;
      };

      // The small math's gradients in direct loops where the table has them, else by autograd.
      const bool direct = has_direct_backward(k);
      auto keep_grads = [&](const ParamGrads& grads) {
        for (const auto& [i, grad] : grads)
          if (p[i].defined() && p[i].requires_grad()) param_grads[i] = grad;
      };

      // Spatial gate: ds from the big tensor, then back through conv/BN on the small map.
      Tensor dzmax, dzmean, best_c;
      if (w.spatial_weight.defined()) {
        Tensor ds = at::empty({N, H * W}, acc);
        best_c = at::empty({N, H * W}, acc.dtype(at::kInt));
        k.backward_spatial(dy, xf, nhwc, g, ds, best_c);
        if (direct) {
          SpatialGrads sg = spatial_gate_backward(zmax, zmean, s, ds, H, W, w, cfg, k);
          dzmax = sg.dzmax;
          dzmean = sg.dzmean;
          keep_grads(sg.params);
        } else {
          Tensor zmax_l = zmax.detach().requires_grad_(true), zmean_l = zmean.detach().requires_grad_(true);
          Tensor s_re = spatial_gate(zmax_l, zmean_l, H, W, w, cfg, /*update_stats=*/false);
          auto dz = small_backward(s_re, {zmax_l, zmean_l}, ds, kSpatialParams);
          dzmax = dz[0].defined() ? dz[0].contiguous() : at::zeros_like(zmax);
          dzmean = dz[1].defined() ? dz[1].contiguous() : at::zeros_like(zmean);
        }
      }
      // Channel gate: dg from the big tensor, then back through the MLP (or ECA's conv) on the
      // descriptors. Without one, g = 1 and nothing flows that way.
      Tensor davg, dmax, argmax_p;
      if (has_channel_gate(w)) {
        Tensor dg = at::empty({N, C}, acc);
        argmax_p = at::empty({N, C}, acc.dtype(at::kInt));
        k.backward_gate(dy, xf, nhwc, s, dzmax, dzmean, best_c, max, dg, argmax_p);
        if (direct) {
          ChannelGrads cg = channel_gate_backward(avg, max, g, dg, w, cfg, k);
          davg = cg.davg;
          dmax = cg.dmax;
          keep_grads(cg.params);
        } else {
          Tensor avg_l = avg.detach().requires_grad_(true), max_l = max.detach().requires_grad_(true);
          auto dd = small_backward(channel_gate(avg_l, max_l, w, cfg), {avg_l, max_l}, dg, kChannelParams);
          if (dd[0].defined()) davg = dd[0].contiguous();
          if (dd[1].defined()) dmax = dd[1].contiguous();
        }
      }
      if (x.requires_grad()) {
        Tensor dx_flat;
        std::tie(dx, dx_flat) = empty_like_layout(x, nhwc);
        k.backward_input(dy, xf, nhwc, g, s, dzmax, dzmean, best_c, davg, dmax, argmax_p, dx_flat);
      }
    }
    // One gradient per autograd input: x, each defined parameter, the residual, then the three
    // non-tensor arguments.
    torch::autograd::variable_list out = {dx};
    for (size_t i = 0; i < kParams; ++i)
      if (present & (int64_t{1} << i)) out.push_back(param_grads[i]);
    if (has_residual) out.push_back(dresidual);
    out.resize(out.size() + 3);
    return out;
  }
};

bool needs_grad(std::initializer_list<const Tensor*> ts) {
  if (!torch::GradMode::is_enabled()) return false;
  for (const Tensor* t : ts)
    if (t->defined() && t->requires_grad()) return true;
  return false;
}

Tensor value_or_undefined(const std::optional<Tensor>& t) { return t.has_value() ? *t : Tensor(); }

// The op's schema as a C++ signature: optional tensors arrive as std::optional.
#define ATTNKIT_CBAM_OP_ARGS                                                                                      \
  const Tensor &x, const std::optional<Tensor>&fc1_w, const std::optional<Tensor>&fc1_b,                         \
      const std::optional<Tensor>&fc2_w,                                                                          \
      const std::optional<Tensor>&fc2_b, const std::optional<Tensor>&sw, const std::optional<Tensor>&sb,         \
      const std::optional<Tensor>&bnw, const std::optional<Tensor>&bnb, const std::optional<Tensor>&rm,          \
      const std::optional<Tensor>&rv, bool pool_avg, bool pool_max, bool max_first, bool use_bn, bool bn_training, \
      double momentum, double eps, const std::optional<Tensor>&eca_w, const std::optional<Tensor>&res, bool relu
#define ATTNKIT_CBAM_UNPACK_ARGS                                                                                   \
  const CbamWeights w{value_or_undefined(fc1_w), value_or_undefined(fc1_b), value_or_undefined(fc2_w),         \
                      value_or_undefined(fc2_b), value_or_undefined(sw),    value_or_undefined(sb),            \
                      value_or_undefined(bnw),   value_or_undefined(bnb),   value_or_undefined(rm),            \
                      value_or_undefined(rv),    value_or_undefined(eca_w)};                                  \
  const CbamConfig cfg{pool_avg, pool_max, max_first, use_bn, bn_training, momentum, eps, relu};                 \
  const Tensor residual = value_or_undefined(res);                                                              \
  check_inputs(x, w, cfg, residual)

// Autograd key: records the fused backward when a gradient is wanted.
Tensor cbam_op(ATTNKIT_CBAM_OP_ARGS) {
  ATTNKIT_CBAM_UNPACK_ARGS;
  if (!needs_grad({&x, &w.fc1_weight, &w.fc1_bias, &w.fc2_weight, &w.fc2_bias, &w.spatial_weight,
                   &w.spatial_bias, &w.bn_weight, &w.bn_bias, &w.eca_weight, &residual})) {
    at::AutoDispatchBelowADInplaceOrView guard;
    return forward_impl(x, w, cfg, residual).out;
  }
  torch::autograd::variable_list inputs;
  for (const auto& t : differentiable(w))
    if (t.defined()) inputs.push_back(t);
  if (residual.defined()) inputs.push_back(residual);
  return CbamFunction::apply(x, at::TensorList(inputs), w, cfg, residual.defined());
}

// CPU and CUDA keys: forward only (reached below autograd, e.g. under inference mode).
Tensor cbam_forward_only(ATTNKIT_CBAM_OP_ARGS) {
  ATTNKIT_CBAM_UNPACK_ARGS;
  return forward_impl(x, w, cfg, residual).out;
}

}  // namespace

bool has_fused_kernels(const at::Device& device) {
#ifdef ATTNKIT_WITH_CUDA
  if (device.is_cuda()) return true;
#endif
  return device.is_cpu();
}

at::Tensor cbam(const at::Tensor& x, const CbamWeights& w, const CbamConfig& cfg, const at::Tensor& residual) {
  static auto op = c10::Dispatcher::singleton().findSchemaOrThrow("attnkit::cbam", "").typed<decltype(cbam_op)>();
  auto opt = [](const Tensor& t) { return t.defined() ? std::optional<Tensor>(t) : std::nullopt; };
  TORCH_CHECK(x.defined(), "attnkit::cbam: x is undefined");
  return op.call(x, opt(w.fc1_weight), opt(w.fc1_bias), opt(w.fc2_weight), opt(w.fc2_bias), opt(w.spatial_weight),
                 opt(w.spatial_bias), opt(w.bn_weight), opt(w.bn_bias), opt(w.bn_running_mean),
                 opt(w.bn_running_var), cfg.pool_avg, cfg.pool_max, cfg.spatial_max_first, cfg.use_bn,
                 cfg.bn_training, cfg.bn_momentum, cfg.bn_eps, opt(w.eca_weight), opt(residual), cfg.relu);
}

TORCH_LIBRARY_FRAGMENT(attnkit, m) {
  m.def(
      "cbam(Tensor x, Tensor? fc1_weight, Tensor? fc1_bias, Tensor? fc2_weight, Tensor? fc2_bias, "
      "Tensor? spatial_weight, Tensor? spatial_bias, Tensor? bn_weight, Tensor? bn_bias, "
      "Tensor(a!)? bn_running_mean, Tensor(b!)? bn_running_var, bool pool_avg=True, bool pool_max=True, "
      "bool spatial_max_first=True, bool use_bn=True, bool bn_training=False, float bn_momentum=0.1, "
      "float bn_eps=1e-5, Tensor? eca_weight=None, Tensor? residual=None, bool relu=False) -> Tensor");
}
TORCH_LIBRARY_IMPL(attnkit, CPU, m) { m.impl("cbam", cbam_forward_only); }
#ifdef ATTNKIT_WITH_CUDA
TORCH_LIBRARY_IMPL(attnkit, CUDA, m) { m.impl("cbam", cbam_forward_only); }
#endif
TORCH_LIBRARY_IMPL(attnkit, Autograd, m) { m.impl("cbam", cbam_op); }

}  // namespace attnkit::ops
