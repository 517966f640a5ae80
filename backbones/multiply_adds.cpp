#include <attnkit/backbones/multiply_adds.h>
#include <attnkit/modules/implementation.h>

#include <ATen/record_function.h>
#include <torch/nn/module.h>
#include <torch/utils.h>

#include <algorithm>
#include <cstring>
#include <functional>
#include <memory>
#include <numeric>
#include <utility>
#include <vector>

namespace attnkit {
namespace {

// RecordFunction takes plain function pointers: the tally lives in thread-local state, set up and
// torn down by one count_multiply_adds call on this thread.
struct Tally {
  int64_t multiply_adds = 0;
  int depth = 0;  // counted ops open around the current one
};
thread_local Tally* tally = nullptr;

/// Marks an op that was counted, so that its end closes it.
struct Counted : at::ObserverContext {};

std::vector<int64_t> sizes_of(const c10::IValue& v) { return v.isTensor() ? v.toTensor().sizes().vec() : std::vector<int64_t>{}; }

int64_t product(const std::vector<int64_t>& v, size_t from = 0, size_t to = SIZE_MAX) {
  const size_t end = std::min(to, v.size());
  // Over iterators: GCC 12 warned (-Waggressive-loop-optimizations) on the indexed loop once inlined.
  return std::accumulate(v.begin() + std::min(from, end), v.begin() + end, int64_t{1}, std::multiplies<>());
}

/// aten::convolution(input, weight, bias, stride, padding, dilation, transposed, output_padding, groups)
int64_t convolution(c10::ArrayRef<c10::IValue> in) {
  const auto x = sizes_of(in[0]), w = sizes_of(in[1]);
  if (x.size() < 3 || w.size() != x.size()) return 0;
  const auto stride = in[3].toIntVector(), padding = in[4].toIntVector(), dilation = in[5].toIntVector();
  const bool transposed = in[6].toBool();
  const int64_t groups = in[8].toInt();
  const size_t spatial = x.size() - 2;
  const auto at = [](const std::vector<int64_t>& v, size_t i) { return v.size() == 1 ? v[0] : v[i]; };
  if (transposed) {  // every input element meets the whole kernel: N · C_in · spatial_in · (C_out/groups) · k
    return product(x) * (w[1]) * product(w, 2);
  }
  int64_t out = 1;
  for (size_t i = 0; i < spatial; ++i)
    out *= (x[2 + i] + 2 * at(padding, i) - at(dilation, i) * (w[2 + i] - 1) - 1) / at(stride, i) + 1;
  return x[0] * w[0] * out * (x[1] / groups) * product(w, 2);
}

int64_t count(const at::RecordFunction& fn) {
  const char* name = fn.name();
  const auto in = fn.inputs();
  if (std::strcmp(name, "aten::convolution") == 0 && in.size() >= 9) return convolution(in);
  if (std::strcmp(name, "aten::linear") == 0 && in.size() >= 2) {
    const auto x = sizes_of(in[0]), w = sizes_of(in[1]);
    return w.size() == 2 ? product(x) * w[0] : 0;
  }
  const bool mm = std::strcmp(name, "aten::mm") == 0, addmm = std::strcmp(name, "aten::addmm") == 0;
  if (mm || addmm) {
    const auto a = sizes_of(in[mm ? 0 : 1]), b = sizes_of(in[mm ? 1 : 2]);
    return a.size() == 2 && b.size() == 2 ? a[0] * a[1] * b[1] : 0;
  }
  const bool bmm = std::strcmp(name, "aten::bmm") == 0, baddbmm = std::strcmp(name, "aten::baddbmm") == 0;
  if (bmm || baddbmm) {
    const auto a = sizes_of(in[bmm ? 0 : 1]), b = sizes_of(in[bmm ? 1 : 2]);
    return a.size() == 3 && b.size() == 3 ? a[0] * a[1] * a[2] * b[2] : 0;
  }
  return -1;  // not an op that is counted
}

std::unique_ptr<at::ObserverContext> on_start(const at::RecordFunction& fn) {
  if (tally == nullptr || tally->depth > 0) {
    // Inside a counted op: nested products are its implementation. Still open a level for
    // counted names so that the outer end is matched.
    if (tally != nullptr && count(fn) >= 0) {
      ++tally->depth;
      return std::make_unique<Counted>();
    }
    return nullptr;
  }
  const int64_t n = count(fn);
  if (n < 0) return nullptr;
  tally->multiply_adds += n;
  ++tally->depth;
  return std::make_unique<Counted>();
}

void on_end(const at::RecordFunction& /*fn*/, at::ObserverContext* ctx) {
  if (tally != nullptr && ctx != nullptr) --tally->depth;
}

/// Restores the blocks' implementations and the module's mode on the way out.
class CompositeForCounting {
 public:
  explicit CompositeForCounting(torch::nn::Module& root) : root_(root), was_training_(root.is_training()) {
    for (const auto& m : root.modules())
      if (auto* block = dynamic_cast<HasImplementation*>(m.get())) saved_.emplace_back(block, block->implementation());
    set_implementation(root, Implementation::Composite);
    root.eval();
  }
  ~CompositeForCounting() {
    for (auto& [block, impl] : saved_) block->set_implementation(impl);
    root_.train(was_training_);
  }
  CompositeForCounting(const CompositeForCounting&) = delete;
  CompositeForCounting& operator=(const CompositeForCounting&) = delete;

 private:
  torch::nn::Module& root_;
  bool was_training_;
  std::vector<std::pair<HasImplementation*, Implementation>> saved_;
};

}  // namespace

int64_t count_multiply_adds(Backbone& model, const torch::Tensor& input) {
  TORCH_CHECK(tally == nullptr, "count_multiply_adds: already counting on this thread");
  CompositeForCounting composite(model.module());
  Tally t;
  tally = &t;
  const auto handle = at::addThreadLocalCallback(
      at::RecordFunctionCallback(&on_start, &on_end).needsInputs(true).scopes({at::RecordScope::FUNCTION}));
  try {
    torch::NoGradGuard no_grad;
    model.forward(input);
  } catch (...) {
    at::removeCallback(handle);
    tally = nullptr;
    throw;
  }
  at::removeCallback(handle);
  tally = nullptr;
  return t.multiply_adds;
}

int64_t count_parameters(Backbone& model) {
  int64_t n = 0;
  for (const auto& p : model.module().parameters()) n += p.numel();
  return n;
}

}  // namespace attnkit
