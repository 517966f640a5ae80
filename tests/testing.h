// Helpers shared by the test suites: loading Python-made references, tolerances that follow from the
// computation, comparisons, finite differences, error messages.
#pragma once

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <dirent.h>
#include <unistd.h>
#include <vector>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <iterator>
#include <map>
#include <stdexcept>
#include <string>

namespace attnkit::testing {

/// Loads build/tests/refs/<name>.pt (a dict of tensors written by tests/python). Where the setup
/// script's Python exists the file must be there; elsewhere the calling test is skipped.
inline std::map<std::string, torch::Tensor> load_refs(const std::string& name) {
  // ATTNKIT_REFS_DIR in the environment overrides the build tree's folder (scripts/gpu_check.sh
  // carries the references the CUDA cases need to another machine).
  const char* dir = std::getenv("ATTNKIT_REFS_DIR");
  const std::string path = std::string(dir ? dir : ATTNKIT_REFS_DIR) + "/" + name + ".pt";
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

/// The absolute error a value can carry near zero whatever its relative precision: one subnormal step
/// of half (2^-24), or 4 × float32's (and bfloat16's) smallest normal number, since a CPU may flush
/// subnormals to zero. Every bound made by an error model adds it.
inline double underflow_floor(torch::ScalarType dtype) {
  if (dtype == torch::kDouble) return std::ldexp(1.0, -1022);
  if (dtype == torch::kHalf) return std::ldexp(1.0, -24);
  return std::ldexp(1.0, -124);  // 4 × FLT_MIN
}

/// |actual - expected| <= atol + rtol·|expected|, element by element.
struct Tolerance {
  double atol = 0;
  double rtol = 0;
  Tolerance operator*(double k) const { return {atol * k, rtol * k}; }
};

/// How far a result may lie from the exact value: c·u·√K·scale, plus the storage dtype's own rounding.
///   K      the terms accumulated along the result's path, all reductions added (e.g. H·W + C + 2·R + …).
///   scale  the magnitude of the quantities on that path, as seen at the result: max|result| times
///          the largest gain on the way (e.g. max(1, max|logit|) where logits feed a sigmoid or softmax).
/// Why: each rounding errs by at most u relatively; the errors of a length-K accumulation add like a
/// random walk (Higham & Mary, SIAM J. Sci. Comput. 41(5), 2019: error ≤ λ·√K·u·Σ|terms| with
/// probability 1 − 2·exp(−λ²/2), for any summation order, blocking, vector width or FMA use — so on
/// every CPU and kernel copy). c = 16 = λ·λ' with λ = 4 for that walk (and for the largest of the
/// many elements a test compares) and λ' = 4 for how far the partial sums of random-signed test data
/// stray from the result's scale. Accumulation is in float32 for float32, bfloat16 and half (what
/// ATen and attnkit's kernels do), in float64 for float64.
/// Below float32, every rounding to `io` on the path costs up to 2·u_io·scale more: `io_roundings`
/// counts them — the output's (1), the inputs' and weights' where the reference had them exact, and
/// each intermediate a block stores in io (a conv's output that the next layer reads, say).
constexpr double kRoundingSafety = 16.0;
inline Tolerance rounding_tolerance(torch::ScalarType io, int64_t K, double scale, int io_roundings = 1) {
  const double u_acc = unit_roundoff(io == torch::kDouble ? torch::kDouble : torch::kFloat);
  const double u_io = unit_roundoff(io);
  double atol = kRoundingSafety * u_acc * std::sqrt(static_cast<double>(std::max<int64_t>(K, 1))) * scale;
  if (io != torch::kDouble && io != torch::kFloat) atol += 2 * u_io * scale * io_roundings;
  return {atol, 0.0};
}

/// Per-element bound on softmax(l)·V against a float64 reference, from the same first-order model
/// as the CBAM tests' (a length-n sum with result S and terms of 2-norm T errs by about
/// u·√n·(|S| + 4·T); independent errors add in quadrature; the bound is kRoundingSafety times the
/// estimate, plus the output's rounding to `io` and underflow_floor):
///   logits   l [..., Lq, keys] in float64, bias included
///   terms    √Σ_d (scale·q_d·k_d)² for every logit [..., Lq, keys]: the dot products' term norms
///   weighted(w, squared) = Σ_keys w·V (or w·V² with squared) → [..., Lq, D]
///   head_dim D of the dot products. Accumulation in float32, values stored in `io`.
inline torch::Tensor attention_forward_error(const torch::Tensor& logits, const torch::Tensor& terms, int64_t head_dim,
                                             const std::function<torch::Tensor(const torch::Tensor&, bool)>& weighted,
                                             torch::ScalarType io) {
  const double u = unit_roundoff(torch::kFloat), uo = io == torch::kFloat ? 0.0 : unit_roundoff(io);
  const int64_t keys = logits.size(-1);
  auto e_l = u * std::sqrt(double(head_dim)) * (logits.abs() + 4 * terms) + u * logits.abs();
  auto p = torch::softmax(logits, -1);
  auto e_p = p * (e_l + (p * e_l).sum(-1, true)) + u * std::sqrt(double(keys)) * p + 2 * u * p;
  auto y = weighted(p, false);
  auto own = u * std::sqrt(double(keys)) * (y.abs() + 4 * torch::sqrt(weighted(p * p, true)));
  auto carried = torch::sqrt(weighted(e_p * e_p, true));
  // The output's rounding to io (≤ u_io·|y|) on top of the computation's own error: 2·u_io·|y|.
  return kRoundingSafety * torch::sqrt(own * own + carried * carried) + 2 * uo * y.abs() + underflow_floor(io);
}

/// The terms a network's output accumulates along its path: every conv's and linear layer's
/// reduction length (in_channels·kh·kw, in_features) added — the K of rounding_tolerance for a model.
inline int64_t path_length(torch::nn::Module& m) {
  int64_t K = 0;
  for (const auto& p : m.parameters())
    if (p.dim() >= 2) K += p.numel() / p.size(0);
  return K;
}

/// Two float32 computations of the same math by different paths (no exact reference on either side):
/// twice rounding_tolerance, since both round.
inline Tolerance float32_pair_tolerance(int64_t K, double scale) { return rounding_tolerance(torch::kFloat, K, scale) * 2; }

/// Max |t| as a double (0 for an empty tensor): the magnitudes the bounds above are made of.
inline double max_abs(const torch::Tensor& t) {
  return t.numel() ? t.detach().abs().max().to(torch::kDouble).item<double>() : 0.0;
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
  if (std::getenv("ATTNKIT_TEST_MARGINS") && atol > 0)
    std::printf("margin: largest error/bound %.3g (max error %.3g)\n", worst / atol, (a - e).abs().max().item<double>());
  if (worst <= atol) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << "max |actual - expected| - rtol*|expected| = " << worst
                                       << " > atol " << atol << " (at flat index " << err.argmax().item<int64_t>() << ")";
}

/// The same with a bound per element (`atol` broadcasts against the result): for error models that
/// follow each element's own computation.
inline ::testing::AssertionResult all_close(const torch::Tensor& actual, const torch::Tensor& expected,
                                            const torch::Tensor& atol) {
  if (actual.sizes() != expected.sizes())
    return ::testing::AssertionFailure() << "shape " << actual.sizes() << " != expected " << expected.sizes();
  if (actual.numel() == 0) return ::testing::AssertionSuccess();
  auto err = (actual.detach().to(torch::kCPU, torch::kDouble) - expected.detach().to(torch::kCPU, torch::kDouble)).abs();
  auto bound = atol.detach().to(torch::kCPU, torch::kDouble).expand_as(err);
  auto ratio = (err / bound.clamp_min(1e-300)).flatten();
  const int64_t worst = ratio.argmax().item<int64_t>();
  // ATTNKIT_TEST_MARGINS=1: how close each comparison came to its bound (1 = at the bound).
  if (std::getenv("ATTNKIT_TEST_MARGINS"))
    std::printf("margin: largest error/bound %.3g (there: error %.3g, bound %.3g, expected %.3g; max error %.3g)\n",
                ratio[worst].item<double>(), err.flatten()[worst].item<double>(), bound.flatten()[worst].item<double>(),
                expected.detach().to(torch::kDouble).flatten()[worst].item<double>(), err.max().item<double>());
  if ((err <= bound).all().item<bool>()) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << "|actual - expected| = " << err.flatten()[worst].item<double>()
                                       << " > its bound " << bound.flatten()[worst].item<double>() << " at flat index "
                                       << worst << " (the largest error/bound ratio, " << ratio[worst].item<double>() << ")";
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

/// The message of the error `f` throws, or "<no error>": a c10::Error (the library's; without its
/// backtrace) or a std::runtime_error (the program's, apps/).
inline std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const c10::Error& e) {
    return e.what_without_backtrace();
  } catch (const std::runtime_error& e) {
    return e.what();
  }
  return "<no error>";
}

/// Whether CUDA tests can run here.
/// A fresh folder under /tmp, removed with its files (not subfolders) at the end of the scope.
class TempDir {
 public:
  explicit TempDir(const std::string& tag = "attnkit_test") {
    std::string pattern = "/tmp/" + tag + "_XXXXXX";
    path_ = ::mkdtemp(pattern.data());
  }
  ~TempDir() {
    for (const auto& f : files()) ::unlink(file(f).c_str());
    ::rmdir(path_.c_str());
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::string& path() const { return path_; }
  std::string file(const std::string& name) const { return path_ + "/" + name; }
  /// Every entry's name, hidden ones included, sorted.
  std::vector<std::string> files() const {
    std::vector<std::string> out;
    if (DIR* d = ::opendir(path_.c_str())) {
      while (auto* e = ::readdir(d))
        if (std::string(e->d_name) != "." && std::string(e->d_name) != "..") out.push_back(e->d_name);
      ::closedir(d);
    }
    std::sort(out.begin(), out.end());
    return out;
  }

 private:
  std::string path_;
};

inline bool cuda_available() { return torch::cuda::is_available(); }

}  // namespace attnkit::testing
