// Helpers shared by the test suites: loading Python-made references, tolerance checks.
#pragma once

#include <gtest/gtest.h>
#include <torch/torch.h>

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

/// The message of the c10::Error that f throws (without the backtrace), or "no error".
inline std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const c10::Error& e) {
    return e.what_without_backtrace();
  }
  return "no error";
}

/// Whether CUDA tests can run here.
inline bool cuda_available() { return torch::cuda::is_available(); }

}  // namespace attnkit::testing
