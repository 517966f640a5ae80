// Helpers shared by the test suites: loading Python-made references, tolerances that follow from the
// computation, comparisons, finite differences, error messages.
#pragma once

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <fstream>
#include <functional>
#include <iterator>
#include <map>
#include <string>

namespace attnkit::testing {

/// Loads build/tests/refs/<name>.pt (a dict of tensors written by tests/python). Where the setup
/// script's Python exists the file must be there; elsewhere the calling test is skipped.
inline std::map<std::string, torch::Tensor> load_refs(const std::string& name) {
  const std::string path = std::string(ATTNKIT_REFS_DIR) + "/" + name + ".pt";
  std::ifstream in(path, std::ios::binary);
  std::map<std::string, torch::Tensor> out;
  if (!in) {
#ifdef ATTNKIT_REQUIRE_REFS
    ADD_FAILURE() << "missing reference " << path << " (run ctest, whose 'references' fixture makes it)";
#endif
    return out;
  }
  std::vector<char> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  auto dict = torch::pickle_load(bytes).toGenericDict();
  for (const auto& item : dict) out[item.key().toStringRef()] = item.value().toTensor();
  return out;
}

/// Sub-dict of `refs` whose keys start with `prefix`, prefix removed (e.g. a module's state dict).
inline std::map<std::string, torch::Tensor> with_prefix(const std::map<std::string, torch::Tensor>& refs,
                                                        const std::string& prefix) {
  std::map<std::string, torch::Tensor> out;
  for (const auto& [k, v] : refs)
    if (k.rfind(prefix, 0) == 0) out[k.substr(prefix.size())] = v;
  return out;
}

/// Copies tensors into a module's parameters and buffers by name; every name must exist and match.
inline void load_into(torch::nn::Module& module, const std::map<std::string, torch::Tensor>& state) {
  torch::NoGradGuard no_grad;
  auto params = module.named_parameters(true);
  auto buffers = module.named_buffers(true);
  for (const auto& [k, v] : state) {
    torch::Tensor* dst = params.find(k);
    if (!dst) dst = buffers.find(k);
    ASSERT_NE(dst, nullptr) << "module has no parameter or buffer named " << k;
    ASSERT_EQ(dst->sizes(), v.sizes()) << "shape of " << k;
    dst->copy_(v);
  }
}

// ---- tolerances ----------------------------------------------------------------------------------
// A float32 or bfloat16 result is compared with a float64 reference of the same math on the same
// inputs. How far apart they may lie follows from the computation, not from what passed on one CPU:
// the kernels' copies (DEFAULT/AVX2/AVX512), thread counts and CPUs sum in different orders, with or
// without FMA contraction, so the bound must hold for every order.

/// Unit roundoff u of a floating dtype (half the gap from 1 to the next number): the relative error
/// of one correctly rounded operation.
inline double unit_roundoff(torch::ScalarType dtype) {
  switch (dtype) {
    case torch::kDouble:
      return std::ldexp(1.0, -53);
    case torch::kFloat:
      return std::ldexp(1.0, -24);
    case torch::kHalf:
      return std::ldexp(1.0, -11);
    case torch::kBFloat16:
      return std::ldexp(1.0, -8);
    default:
      throw std::invalid_argument("unit_roundoff: not a floating dtype");
  }
}

/// |actual - expected| <= atol + rtol·|expected|, element by element.
struct Tolerance {
  double atol = 0;
  double rtol = 0;
  Tolerance operator+(const Tolerance& o) const { return {atol + o.atol, rtol + o.rtol}; }
  Tolerance operator*(double k) const { return {atol * k, rtol * k}; }
};

/// Safety factor λ of the probabilistic bounds below: each holds per element with probability at
/// least 1 − 2·exp(−λ²/2) ≈ 2.5e-14, so a suite with millions of compared elements still fails by
/// chance less than once in a million runs.
constexpr double kLambda = 8.0;

/// A sum or dot product of `n` terms computed in `dtype`, the terms adding up in absolute value to at
/// most `sum_abs` (e.g. n·max|a|·max|b| for a dot product, max|x| for a mean): its error is at most
/// λ·√n·u·sum_abs for any summation order, blocking, vector width or FMA use (Higham & Mary, "A New
/// Approach to Probabilistic Rounding Error Analysis", SIAM J. Sci. Comput. 41(5), 2019, Thm 3.1).
/// The deterministic worst case (n·u·sum_abs) is √n times looser and never reached by real data.
inline Tolerance reduction_tolerance(torch::ScalarType dtype, int64_t n, double sum_abs) {
  return {kLambda * std::sqrt(static_cast<double>(std::max<int64_t>(n, 1))) * unit_roundoff(dtype) * sum_abs, 0.0};
}

/// `ops` elementwise operations in sequence (a product, exp, sigmoid, division, the output's rounding):
/// each correctly rounded one errs by u relative to its result; ATen's and attnkit's vectorised exp,
/// log and tanh (Sleef's 1-ulp functions) by up to 2u. Charged as 2u each, relative to the result.
inline Tolerance pointwise_tolerance(torch::ScalarType dtype, int ops) { return {0.0, 2.0 * ops * unit_roundoff(dtype)}; }

/// Inputs rounded to `dtype` (the reference keeps them exact): a result made of products of up to
/// `factors` rounded inputs per term, whose terms add up in absolute value to `sum_abs`, moves by at
/// most factors·u·sum_abs (deterministic: each rounded factor is within u of its value).
inline Tolerance input_rounding_tolerance(torch::ScalarType dtype, int factors, double sum_abs) {
  return {factors * unit_roundoff(dtype) * sum_abs, 0.0};
}

/// Max |t| as a double (0 for an empty tensor): the magnitudes the bounds above are made of.
inline double max_abs(const torch::Tensor& t) {
  return t.numel() ? t.detach().abs().max().to(torch::kDouble).item<double>() : 0.0;
}

/// Bounds for softmax(scale·q·kᵀ + bias)·v against a float64 reference: `keys` keys per query, head
/// dimension `head_dim`, |q|, |k|, |v| at most mq, mk, mv; `queries_per_key` queries see each key,
/// and the bias gradient sums over `bias_sum` queries. Accumulation in float32, inputs and outputs
/// stored in `io` (their rounding counts when the reference had the unrounded inputs: rounded_inputs).
/// Forward: the logits' dot products (head_dim terms) err by dl; each weight p moves by at most
/// p·(2·dl + 4u) plus the normaliser's sum, so y = Σ p·v moves by mv·Σ|δp| plus its own k-term sum.
/// Backward: the gradients are sums of the same terms times |dy| (at most max_dy); their magnitudes
/// G are bounded from the inputs' (|dp| ≤ head_dim·|dy|·mv, Σ|dS| ≤ 2·max|dp|), and each is charged
/// the sum of its path's reductions (λ·u·√K·stages·G) plus the forward's relative error times G.
struct AttentionErrorBounds {
  double y = 0, grad_qkv = 0, grad_bias = 0;
};
inline AttentionErrorBounds attention_error_bounds(double mq, double mk, double mv, int64_t head_dim, int64_t keys,
                                                   int64_t queries_per_key, int64_t bias_sum, double scale,
                                                   torch::ScalarType io, bool rounded_inputs = false, double max_dy = 0) {
  const double u = unit_roundoff(torch::kFloat);
  const double ui = rounded_inputs ? unit_roundoff(io) : 0.0;
  const double uo = io == torch::kFloat || io == torch::kDouble ? 0.0 : unit_roundoff(io);
  auto red = [&](int64_t n, double sum_abs) { return reduction_tolerance(torch::kFloat, n, sum_abs).atol; };
  const double logit_sum = scale * head_dim * mq * mk;
  const double dl = red(head_dim, logit_sum) + 2 * ui * logit_sum;
  const double dp = 2 * dl + 4 * u + red(keys, 1.0);  // Σ_i |δp_i| (Σ p = 1)
  AttentionErrorBounds b;
  b.y = red(keys, mv) + mv * dp + ui * mv + uo * mv;
  if (max_dy > 0) {
    const double D = max_dy, dS = 2 * head_dim * D * mv;  // Σ over keys of |dS|
    const double G = std::max({D, queries_per_key * D, scale * mk * dS, queries_per_key * scale * mq * dS});
    const int64_t K = 2 * head_dim + 2 * keys + queries_per_key;
    const double rel = dp + 2 * dl + ui + uo;
    b.grad_qkv = kLambda * u * std::sqrt(double(K)) * 5 * G + rel * G;
    const double Gb = bias_sum * dS;
    b.grad_bias = kLambda * u * std::sqrt(double(K + bias_sum)) * 5 * Gb + rel * Gb;
  }
  return b;
}

/// Max-abs-difference check with a message that says where and by how much.
inline ::testing::AssertionResult all_close(const torch::Tensor& actual, const torch::Tensor& expected,
                                            double atol, double rtol = 0.0) {
  if (actual.sizes() != expected.sizes())
    return ::testing::AssertionFailure() << "shape " << actual.sizes() << " != expected " << expected.sizes();
  if (actual.numel() == 0) return ::testing::AssertionSuccess();
  auto a = actual.detach().to(torch::kCPU, torch::kDouble);
  auto e = expected.detach().to(torch::kCPU, torch::kDouble);
  auto err = (a - e).abs() - rtol * e.abs();
  const double worst = err.max().item<double>();
  if (worst <= atol) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << "max |actual - expected| - rtol*|expected| = " << worst
                                       << " > atol " << atol << " (at flat index " << err.argmax().item<int64_t>() << ")";
}

inline ::testing::AssertionResult all_close(const torch::Tensor& actual, const torch::Tensor& expected,
                                            const Tolerance& tol) {
  return all_close(actual, expected, tol.atol, tol.rtol);
}

/// The gradient of the scalar `loss()` with respect to every element of `t`, by central differences
/// (t is perturbed in place, one element at a time, and restored). Float64 with the default step:
/// truncation error O(h²) ≈ 1e-12 and cancellation ≈ u·|loss|/h ≈ 1e-10·|loss|, so analytic gradients
/// should agree to ~1e-7.
inline torch::Tensor numeric_gradient(const std::function<double()>& loss, torch::Tensor& t, double h = 1e-6) {
  torch::NoGradGuard no_grad;
  auto numeric = torch::zeros_like(t, torch::MemoryFormat::Contiguous);
  auto flat = t.view(-1);
  auto out = numeric.view(-1);
  for (int64_t i = 0; i < flat.numel(); ++i) {
    const double v = flat[i].item<double>();
    flat[i] = v + h;
    const double up = loss();
    flat[i] = v - h;
    const double down = loss();
    flat[i] = v;
    out[i] = (up - down) / (2 * h);
  }
  return numeric;
}

/// The message (without backtrace) of the c10::Error `f` throws, or "<no error>".
inline std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const c10::Error& e) {
    return e.what_without_backtrace();
  }
  return "<no error>";
}

/// Whether CUDA tests can run here.
inline bool cuda_available() { return torch::cuda::is_available(); }

}  // namespace attnkit::testing
