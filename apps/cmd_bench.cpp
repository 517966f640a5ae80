// attnkit bench: times each op's fused kernels against the same math composed from stock LibTorch
// ops, and against a plain copy of the input (one read + one write: the memory-traffic yardstick),
// all in the same run (in interleaved rounds, so that load drifts hit every impl alike), and prints medians and ratios. `--json` prints one object per line.
//
// Memory (CPU): one extra, untimed run per case with LibTorch's CPU allocator wrapped by a counter
// gives the peak bytes of tensor storage allocated during the run beyond what was live before it
// (outputs, saved activations, gradients and oneDNN's buffers included).
#include "commands.h"
#include "validators.h"

#include "common/device.h"

#include <attnkit/attnkit.h>
#include <attnkit/modules/ops/neighborhood_attention.h>
#include <c10/core/CPUAllocator.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <mutex>
#include <unordered_map>
#include <chrono>
#include <cstring>
#include <iomanip>
#include <iostream>
#include <sstream>

namespace attnkit::app {
namespace {

struct BenchArgs {
  std::vector<std::string> ops = {"cbam"};
  std::vector<int64_t> shape;  // N,C,H,W; empty: the op's default
  int64_t batch = 0;           // overrides N when > 0
  int threads = 0;             // 0: LibTorch's default
  std::string dtype = "float32";
  std::string layout = "nchw";  // or nhwc: channels-last, the layout of InferenceModel's feature maps
  std::string device = "auto";
  std::string attention = "cbam";
  std::string pass = "both";
  int iters = 0;  // 0: enough for ~1 s per case, between 5 and 200
  int warmup = 3;
  bool json = false;
};

// One thing to time: a forward closure, and whether forward+backward makes sense for it.
struct Impl {
  std::string name;
  std::function<torch::Tensor()> forward;
  bool backward = true;
  std::function<void()> after_backward = [] {};  // e.g. drop gradients that would accumulate
  // Modules: eval mode for the forward pass (inference), training mode for forward+backward.
  std::function<void(bool training)> set_training = [](bool) {};
};

// LibTorch's CPU allocator with a count of live bytes and their peak, installed only while measuring.
// Its pointers are their own context (as the default allocator's are), so raw_allocate works too
// (oneDNN allocates its buffers that way: they are counted).
class CountingCpuAllocator final : public c10::Allocator {
 public:
  /// Peak bytes allocated beyond those live when it started, while running `fn`.
  static int64_t peak_extra_bytes(const std::function<void()>& fn) {
    CountingCpuAllocator& counter = instance();
    c10::Allocator* inner = c10::GetCPUAllocator();
    TORCH_CHECK(inner->raw_deleter(), "bench: the CPU allocator has no raw deleter; cannot count its memory");
    {
      std::lock_guard<std::mutex> lock(counter.mutex_);
      counter.inner_ = inner;
      counter.live_ = counter.peak_ = 0;
      counter.sizes_.clear();
    }
    // (An allocator replaces the current one when its priority is at least the current one's.)
    c10::SetCPUAllocator(&counter, /*priority=*/255);
    try {
      fn();
    } catch (...) {
      c10::SetCPUAllocator(inner, 255);
      throw;
    }
    c10::SetCPUAllocator(inner, /*priority=*/255);
    std::lock_guard<std::mutex> lock(counter.mutex_);
    return counter.peak_;
  }

  c10::DataPtr allocate(size_t n) override {
    void* p = inner_->raw_allocate(n);
    std::lock_guard<std::mutex> lock(mutex_);
    sizes_[p] = static_cast<int64_t>(n);
    live_ += static_cast<int64_t>(n);
    peak_ = std::max(peak_, live_);
    return {p, p, &release, c10::Device(c10::kCPU)};
  }
  c10::DeleterFnPtr raw_deleter() const override { return &release; }
  void copy_data(void* dest, const void* src, std::size_t count) const override { std::memcpy(dest, src, count); }

 private:
  static void release(void* p) {
    auto& self = instance();
    c10::Allocator* inner = nullptr;
    {
      std::lock_guard<std::mutex> lock(self.mutex_);
      // oneDNN frees through whichever allocator is current: p may predate this one.
      if (auto it = self.sizes_.find(p); it != self.sizes_.end()) {
        self.live_ -= it->second;
        self.sizes_.erase(it);
      }
      inner = self.inner_;
    }
    inner->raw_deallocate(p);
  }
  static CountingCpuAllocator& instance();
  std::mutex mutex_;
  std::unordered_map<void*, int64_t> sizes_;
  c10::Allocator* inner_ = nullptr;
  int64_t live_ = 0, peak_ = 0;
};

CountingCpuAllocator& CountingCpuAllocator::instance() {
  static CountingCpuAllocator counter;
  return counter;
}

struct Timing {
  double median_ms = 0, min_ms = 0;
};

void sync(const torch::Device& d) {
  if (d.is_cuda()) torch::cuda::synchronize(d.index());
}

// Times several functions in interleaved rounds (one call of each per round), so that a machine
// whose load drifts during the run slows them alike and their ratios stay meaningful.
std::vector<Timing> time_interleaved(const std::vector<std::function<void()>>& fns, const torch::Device& device,
                                     int warmup, int iters) {
  for (const auto& fn : fns)
    for (int i = 0; i < warmup; ++i) fn();
  std::vector<std::vector<double>> ms(fns.size());
  auto once = [&](size_t f) {
    const auto t0 = std::chrono::steady_clock::now();
    fns[f]();
    sync(device);
    ms[f].push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
  };
  for (size_t f = 0; f < fns.size(); ++f) once(f);
  if (iters <= 0) {  // calibrate: about one second per case
    double round = 0;
    for (const auto& m : ms) round += m.back();
    iters = static_cast<int>(std::clamp(1000.0 * fns.size() / std::max(round, 1e-3), 5.0, 200.0));
  }
  for (auto& m : ms) m.clear();
  for (int i = 0; i < iters; ++i)
    for (size_t f = 0; f < fns.size(); ++f) once(f);
  std::vector<Timing> out;
  for (auto& m : ms) {
    std::sort(m.begin(), m.end());
    out.push_back({m[m.size() / 2], m.front()});
  }
  return out;
}

std::string shape_str(torch::IntArrayRef s) {
  std::ostringstream o;
  for (size_t i = 0; i < s.size(); ++i) o << (i ? "x" : "") << s[i];
  return o.str();
}

// A block built twice, fused and composite, with the same weights.
template <typename Module, typename Options>
std::vector<Impl> module_pair(Options opts, const torch::Tensor& x) {
  Module fused(opts.impl(Implementation::Fused));
  Module composite(opts.impl(Implementation::Composite));
  fused->to(x.device(), x.scalar_type());
  composite->to(x.device(), x.scalar_type());
  {
    torch::NoGradGuard no_grad;
    auto src = fused->named_parameters();
    for (auto& p : composite->named_parameters()) p.value().copy_(src[p.key()]);
  }
  auto mode = [](auto m) { return [m](bool training) mutable { m->train(training); }; };
  return {{"fused", [fused, x]() mutable { return fused->forward(x); }, true, [] {}, mode(fused)},
          {"composite", [composite, x]() mutable { return composite->forward(x); }, true, [] {}, mode(composite)}};
}

/// LocalAttention2d fused and composite, and where the device has the kernel, the attention core
/// alone: the fused op on q, k, v views of a channels-last qkv projection.
std::vector<Impl> local_impls(const torch::Tensor& x) {
  const int64_t C = x.size(1), heads = 4, k = 7;
  auto impls = module_pair<LocalAttention2d>(LocalAttention2dOptions(C).heads(heads).kernel_size(k), x);
  if (!ops::has_neighborhood_attention_kernel(x.device())) return impls;
  auto qkv = torch::randn({x.size(0), 3 * C, x.size(2), x.size(3)}, x.options())
                 .contiguous(torch::MemoryFormat::ChannelsLast)
                 .requires_grad_(x.requires_grad());
  auto rpb = (torch::randn({heads, 2 * k - 1, 2 * k - 1}, x.options()) * 0.02).requires_grad_(x.requires_grad());
  const auto core = [qkv, rpb, heads, k]() {
    auto [q, kk, v] = ops::split_qkv(qkv, heads);
    return ops::neighborhood_attention(q, kk, v, rpb, k);
  };
  const auto drop_grads = [qkv, rpb]() mutable {
    qkv.mutable_grad().reset();
    rpb.mutable_grad().reset();
  };
  impls.push_back({"op", core, true, drop_grads});
  return impls;
}

/// 4 heads of 64 for the default 256 channels, with a relative position bias for this map size:
/// "fused" runs ops::relpos_attention, "composite" SDPA with the bias expanded into a mask.
std::vector<Impl> self_attention_impls(const torch::Tensor& x) {
  const int64_t C = x.size(1), heads = std::max<int64_t>(1, C / 64), N = x.size(0), H = x.size(2), W = x.size(3), L = H * W;
  auto impls = module_pair<SelfAttention2d>(SelfAttention2dOptions(C).heads(heads).rel_pos(true).feat_size({H, W}), x);
  // The block without a bias: the fused op against SDPA (what Auto runs there).
  for (auto& impl : module_pair<SelfAttention2d>(SelfAttention2dOptions(C).heads(heads), x))
    impls.push_back({"nobias-" + (impl.name == "fused" ? impl.name : std::string("sdpa")), impl.forward, true, [] {}, impl.set_training});
  // The attention core alone on q, k, v of the same sizes: attnkit's op with and without the bias,
  // and ATen's own scaled_dot_product_attention (no bias).
  const bool grad = x.requires_grad();
  auto q = torch::randn({N, heads, L, C / heads}, x.options()).requires_grad_(grad);
  auto k = torch::randn_like(q).requires_grad_(grad), v = torch::randn_like(q).requires_grad_(grad);
  auto table = (torch::randn({(2 * H - 1) * (2 * W - 1), heads}, x.options()) * 0.02).requires_grad_(grad);
  impls.push_back({"core+bias", [=]() { return ops::relpos_attention(q, k, v, table, H, W); }});
  impls.push_back({"core", [=]() { return ops::relpos_attention(q, k, v, torch::Tensor(), H, W); }});
  impls.push_back({"sdpa", [q, k, v]() { return at::scaled_dot_product_attention(q, k, v); }});
  return impls;
}

std::vector<Impl> impls_for(const std::string& op, const torch::Tensor& x) {
  const int64_t C = x.size(1);
  if (op == "cbam") return module_pair<CBAM>(CBAMOptions(C), x);
  if (op == "channel") return module_pair<ChannelAttention>(ChannelAttentionOptions(C), x);
  if (op == "se") return module_pair<SqueezeExcite>(SqueezeExciteOptions(C), x);
  if (op == "spatial") return module_pair<SpatialAttention>(SpatialAttentionOptions(), x);
  if (op == "eca") return module_pair<ECA>(ECAOptions(C), x);
  if (op == "local") return local_impls(x);
  if (op == "self") return self_attention_impls(x);
  TORCH_CHECK(false, "bench: unknown op ", op);
}

std::vector<Impl> resnet_impls(const std::string& op, const torch::Tensor& x, const BenchArgs& args) {
  auto build = [&](const std::string& attention, Implementation impl) {
    std::shared_ptr<Backbone> model = make_model(op + (attention.empty() ? "" : "-" + attention), 1000, x.size(1));
    set_implementation(model->module(), impl);
    model->module().eval();
    model->module().to(x.device(), x.scalar_type());
    return model;
  };
  auto plain = build("", Implementation::Auto);
  auto composite = build(args.attention, Implementation::Composite);
  auto fused = build(args.attention, Implementation::Fused);
  std::vector<Impl> impls = {{"none", [plain, x]() { return plain->forward(x); }, false},
                             {"composite", [composite, x]() { return composite->forward(x); }, false},
                             {"fused", [fused, x]() { return fused->forward(x); }, false}};
  // The inference path (InferenceModel: folded, prepacked, channels-last) of the same two networks.
  if (x.scalar_type() == torch::kFloat || x.scalar_type() == torch::kBFloat16 || x.scalar_type() == torch::kDouble) {
    const auto options = InferenceOptions().dtype(x.scalar_type());
    auto frozen = std::make_shared<InferenceModel>(fused, options);
    auto frozen_plain = std::make_shared<InferenceModel>(plain, options);
    impls.push_back({"inference", [frozen, x]() { return frozen->forward(x); }, false});
    impls.push_back({"inference-none", [frozen_plain, x]() { return frozen_plain->forward(x); }, false});
  }
  return impls;
}

// ---- plan: the device, and per op its input and what to time ----------------------------------------

torch::Device bench_device(const std::string& name) {
  const torch::Device device = name == "auto" ? (torch::cuda::is_available() ? torch::Device(torch::kCUDA) : torch::Device(torch::kCPU))
                                              : torch::Device(name);
  TORCH_CHECK(!device.is_cuda() || torch::cuda::is_available(), "bench: --device cuda but no CUDA device is available");
  return device;
}

bool is_resnet(const std::string& op) { return op.rfind("resnet", 0) == 0; }

/// --shape (or the op's default) with --batch applied.
std::vector<int64_t> input_shape(const std::string& op, const BenchArgs& args) {
  std::vector<int64_t> shape = args.shape;
  if (shape.empty()) {
    if (is_resnet(op)) shape = {1, 3, 224, 224};
    else if (op == "local") shape = {2, 128, 56, 56};
    else if (op == "self") shape = {1, 256, 56, 56};
    else shape = {8, 256, 56, 56};
  }
  TORCH_CHECK(shape.size() == 4, "bench: --shape must be N,C,H,W, got ", shape.size(), " numbers");
  if (args.batch > 0) shape[0] = args.batch;
  return shape;
}

/// One op's cases: its input and every implementation to time on it, the copy yardstick last.
struct OpCase {
  std::string op;
  std::vector<int64_t> shape;
  torch::Tensor x;
  std::vector<Impl> impls;
};

OpCase plan_op(const std::string& op, const BenchArgs& args, const torch::Device& device, torch::ScalarType dtype) {
  OpCase c{op, input_shape(op, args)};
  c.x = torch::randn(c.shape, torch::TensorOptions().device(device).dtype(dtype));
  if (args.layout == "nhwc") c.x = c.x.contiguous(torch::MemoryFormat::ChannelsLast);
  if (!is_resnet(op)) c.x.requires_grad_(true);  // forward passes run under NoGradGuard
  c.impls = is_resnet(op) ? resnet_impls(op, c.x, args) : impls_for(op, c.x);
  // The yardstick: copying x once (read + write), what any elementwise pass at least costs.
  auto out = torch::empty_like(c.x);
  c.impls.push_back({"copy", [x = c.x, out]() mutable { return out.copy_(x.detach()); }, false});
  return c;
}

std::vector<std::string> passes_for(const std::string& op, const std::string& pass) {
  std::vector<std::string> passes;
  if (pass != "backward") passes.push_back("forward");
  if (pass != "forward" && !is_resnet(op)) passes.push_back("backward");
  return passes;
}

// ---- run: time one pass of every impl, interleaved; measure the CPU memory -----------------------

/// What one call of `impl` does in `pass`: inference without autograd, or forward+backward.
std::function<void()> timed_call(Impl& impl, torch::Tensor& x, const std::string& pass) {
  if (pass == "forward" || impl.name == "copy") {
    return [&impl]() {
      torch::NoGradGuard no_grad;
      impl.forward();
    };
  }
  return [&impl, &x]() {
    auto y = impl.forward();
    y.backward(torch::ones_like(y));
    x.mutable_grad().reset();  // no accumulation pass between iterations
    impl.after_backward();
  };
}

struct PassResult {
  std::map<std::string, Timing> timing;
  /// CPU only, every impl but the copy.
  std::map<std::string, int64_t> peak_bytes;
};

PassResult time_pass(OpCase& c, const std::string& pass, const BenchArgs& args, const torch::Device& device) {
  for (auto& impl : c.impls) impl.set_training(pass == "backward");
  std::vector<std::string> names;
  std::vector<std::function<void()>> fns;
  for (auto& impl : c.impls) {
    if (pass == "backward" && !impl.backward && impl.name != "copy") continue;
    names.push_back(impl.name);
    fns.push_back(timed_call(impl, c.x, pass));
  }
  PassResult result;
  const auto timings = time_interleaved(fns, device, args.warmup, args.iters);
  for (size_t i = 0; i < fns.size(); ++i) {
    result.timing[names[i]] = timings[i];
    if (device.is_cpu() && names[i] != "copy") result.peak_bytes[names[i]] = CountingCpuAllocator::peak_extra_bytes(fns[i]);
  }
  return result;
}

// ---- report: one JSON row per impl, then (without --json) the table -------------------------------

/// The input's memory layout as it is (not as asked): "nhwc" for channels-last, else "nchw". A
/// tensor that is both (one channel, or 1×1 maps) counts as nchw.
std::string layout_of(const torch::Tensor& x) {
  return !x.is_contiguous() && x.is_contiguous(torch::MemoryFormat::ChannelsLast) ? "nhwc" : "nchw";
}

std::vector<nlohmann::json> result_rows(const OpCase& c, const std::string& pass, const BenchArgs& args,
                                        const torch::Device& device, PassResult& r) {
  auto& t = r.timing;
  const bool resnet = is_resnet(c.op);
  std::vector<nlohmann::json> rows;
  for (const auto& [name, timing] : t) {
    nlohmann::json row = {{"op", c.op}, {"pass", pass}, {"shape", shape_str(c.shape)}, {"layout", layout_of(c.x)},
                          {"dtype", args.dtype},
                          {"device", device.str()}, {"threads", torch::get_num_threads()}, {"impl", name},
                          {"median_ms", timing.median_ms}, {"min_ms", timing.min_ms}};
    if (resnet) row["attention"] = args.attention;
    if (r.peak_bytes.count(name)) row["peak_extra_mb"] = static_cast<double>(r.peak_bytes[name]) / (1 << 20);
    // The copy is a yardstick, not a competitor: no speed-up or "x none" for it.
    if (t.count("composite") && name != "composite" && name != "copy") row["vs_composite"] = t["composite"].median_ms / timing.median_ms;
    if (name != "copy") row["x_copy"] = timing.median_ms / t["copy"].median_ms;
    if (t.count("sdpa") && name != "copy") row["x_sdpa"] = timing.median_ms / t["sdpa"].median_ms;
    // x none: against the same path without attention (eager: none; inference: inference-none).
    const std::string plain = name.rfind("inference", 0) == 0 ? "inference-none" : "none";
    if (resnet && t.count(plain) && name != plain && name != "copy") row["vs_none"] = timing.median_ms / t[plain].median_ms;
    rows.push_back(row);
  }
  return rows;
}

/// `key` of `row` with `precision` digits (and `suffix`), or "" when the row has no such column.
std::string optional_column(const nlohmann::json& row, const char* key, int precision, const char* suffix = "") {
  if (!row.contains(key)) return "";
  std::ostringstream s;
  s << std::fixed << std::setprecision(precision) << row[key].get<double>() << suffix;
  return s.str();
}

void print_table(const std::vector<nlohmann::json>& rows) {
  std::cout << std::left << std::setw(10) << "op" << std::setw(10) << "pass" << std::setw(16) << "shape"
            << std::setw(8) << "layout" << std::setw(10) << "dtype" << std::setw(8) << "threads" << std::setw(14) << "impl" << std::right
            << std::setw(11) << "median ms" << std::setw(11) << "min ms" << std::setw(10) << "speed-up"
            << std::setw(10) << "x copy" << std::setw(10) << "x sdpa" << std::setw(10) << "x none" << std::setw(12)
            << "peak MB" << "\n";
  for (const auto& r : rows) {
    std::cout << std::left << std::setw(10) << r["op"].get<std::string>() << std::setw(10) << r["pass"].get<std::string>()
              << std::setw(16) << r["shape"].get<std::string>() << std::setw(8) << r["layout"].get<std::string>()
              << std::setw(10) << r["dtype"].get<std::string>()
              << std::setw(8) << r["threads"].get<int>() << std::setw(14) << r["impl"].get<std::string>() << std::right
              << std::fixed << std::setprecision(3) << std::setw(11) << r["median_ms"].get<double>() << std::setw(11)
              << r["min_ms"].get<double>() << std::setw(10) << optional_column(r, "vs_composite", 2, "x") << std::setw(10)
              << optional_column(r, "x_copy", 2) << std::setw(10) << optional_column(r, "x_sdpa", 2) << std::setw(10)
              << optional_column(r, "vs_none", 3) << std::setw(12) << optional_column(r, "peak_extra_mb", 1) << "\n";
  }
}

void print_legend() {
  std::cout << "\nforward: inference (eval mode, no autograd); backward: forward+backward in training mode.\n"
               "speed-up: composite median / this median (fused and other rows).\n"
               "x copy: this median / the median of copying the input once (read + write).\n"
               "x none (resnets): this median / the median of the same network without attention (for inference,\n"
               "  inference-none: the same path without attention).\n"
               "resnets: none, composite, fused = the eager module (no attention; attention on ATen ops; on the\n"
               "  fused ops); inference, inference-none = InferenceModel (BatchNorm folded, weights prepacked for\n"
               "  oneDNN, conv + bias + ReLU / + add + ReLU fused, channels-last) with and without attention.\n"
               "x sdpa: this median / the median of ATen's scaled_dot_product_attention (op self).\n"
               "peak MB (CPU): peak tensor storage allocated during one run beyond what was live before it, counted\n"
               "at LibTorch's CPU allocator (outputs, saved tensors, gradients and oneDNN buffers included).\n"
               "local's 'op' row: the fused neighborhood attention op alone on q, k, v views of a channels-last qkv.\n"
               "self: fused/composite = SelfAttention2d with a relative position bias (relpos_attention op /\n"
               "  SDPA with the bias expanded to a heads x L x L mask); core+bias, core = the op alone on\n"
               "  [N, heads, L, d] q, k, v with and without the bias; sdpa = ATen's SDPA alone, no bias;\n"
               "  nobias-fused, nobias-sdpa = SelfAttention2d without a bias on the fused op / on SDPA.\n";
}

int run_bench(const BenchArgs& args) {
  const torch::Device device = bench_device(args.device);
  if (args.threads > 0) torch::set_num_threads(args.threads);
  const auto dtype = common::dtype_from_name(args.dtype);
  torch::manual_seed(0);

  std::vector<nlohmann::json> rows;
  for (const auto& op : args.ops) {
    OpCase c = plan_op(op, args, device, dtype);
    for (const auto& pass : passes_for(op, args.pass)) {
      PassResult result = time_pass(c, pass, args, device);
      for (auto& row : result_rows(c, pass, args, device, result)) {
        // --json prints each row as soon as it is measured (long runs show progress).
        if (args.json) std::cout << row.dump() << std::endl;
        rows.push_back(std::move(row));
      }
    }
  }
  if (args.json) return kOk;
  print_table(rows);
  print_legend();
  return kOk;
}

}  // namespace

Runner add_bench_command(CLI::App& cli) {
  auto args = std::make_shared<BenchArgs>();
  auto* cmd = cli.add_subcommand(
      "bench", "Time fused kernels against stock LibTorch compositions and a memory copy, in one run");
  const std::vector<std::string> ops = {"cbam", "channel", "spatial", "se", "eca", "local", "self", "resnet18", "resnet50"};
  cmd->add_option("--op", args->ops, "Ops to time (several allowed)")
      ->check(CLI::IsMember(ops))->capture_default_str()->delimiter(',');
  cmd->add_option("--shape", args->shape, "Input shape N,C,H,W (default per op: cbam-family 8,256,56,56; local "
                                         "2,128,56,56; self 1,256,56,56; resnets 1,3,224,224)")
      ->delimiter(',')->expected(4)->check(positive_number());
  cmd->add_option("--batch", args->batch, "Batch size N, overriding --shape's")->check(positive_number());
  cmd->add_option("--threads", args->threads, "CPU threads (default: LibTorch's, usually the core count)")
      ->check(CLI::Range(1, 1024));
  cmd->add_option("--dtype", args->dtype, "Element type")
      ->check(CLI::IsMember({"float32", "float64", "bfloat16", "float16"}))->capture_default_str();
  cmd->add_option("--layout", args->layout,
                  "Memory layout of the input: nchw (contiguous) or nhwc (channels-last, the layout InferenceModel "
                  "runs the attention blocks on)")
      ->check(CLI::IsMember({"nchw", "nhwc"}))->capture_default_str();
  cmd->add_option("--device", args->device, "auto (CUDA when available), cpu or cuda")
      ->check(CLI::IsMember({"auto", "cpu", "cuda"}))->capture_default_str();
  cmd->add_option("--attention", args->attention, "Attention block inside the resnets")->capture_default_str();
  cmd->add_option("--pass", args->pass, "forward (inference: modules in eval mode, no autograd), backward (forward+backward in training mode) or both")
      ->check(CLI::IsMember({"forward", "backward", "both"}))->capture_default_str();
  cmd->add_option("--iters", args->iters, "Timed runs per case (default: about one second's worth, 5 to 200)")
      ->check(positive_number());
  cmd->add_option("--warmup", args->warmup, "Untimed runs before timing")->check(non_negative_number())->capture_default_str();
  cmd->add_flag("--json", args->json, "One JSON object per line: op, pass, shape, layout, dtype, threads, impl, median_ms, min_ms, ...");
  return [cmd, args]() -> int { return cmd->parsed() ? run_bench(*args) : -1; };
}

}  // namespace attnkit::app
