#include "distributed.h"

#include <c10/util/Exception.h>
#include <c10/util/Logging.h>
#include <torch/csrc/autograd/grad_mode.h>
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroup.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>  // with apps/train/gloo_declarations (see its README)
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#include <torch/csrc/distributed/c10d/comm.hpp>
#include <torch/csrc/distributed/c10d/reducer.hpp>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <sstream>
#include <stdexcept>

namespace attnkit::train {

namespace {

std::optional<std::string> env(const char* name) {
  const char* v = std::getenv(name);
  if (v == nullptr || *v == '\0') return std::nullopt;
  return std::string(v);
}

int env_int(const char* name, int min_value) {
  const auto v = env(name);
  if (!v) throw std::runtime_error(std::string("distributed launch: ") + name + " is not set (launch with torchrun)");
  try {
    size_t used = 0;
    const int n = std::stoi(*v, &used);
    if (used == v->size() && n >= min_value) return n;
  } catch (const std::exception&) {
  }
  throw std::runtime_error(std::string("distributed launch: ") + name + "='" + *v + "' is not an integer >= " +
                           std::to_string(min_value));
}

std::string first_line(std::string s) {
  const auto end = s.find('\n');
  if (end != std::string::npos) s.resize(end);
  return s;
}

/// Runs `f`, a call that communicates; a failure of the communication (c10::DistError, or the plain
/// std::exception Gloo throws, anything but LibTorch's other c10::Errors) becomes a CollectiveError.
template <typename F>
auto collective(int rank, int world, std::chrono::milliseconds timeout, F&& f) -> decltype(f()) {
  try {
    return f();
  } catch (const CollectiveError&) {
    throw;
  } catch (const std::exception& e) {
    const auto* c10_error = dynamic_cast<const c10::Error*>(&e);
    if (c10_error && !dynamic_cast<const c10::DistError*>(&e)) throw;
    const std::string what = first_line(c10_error ? c10_error->what_without_backtrace() : e.what());
    throw CollectiveError("rank " + std::to_string(rank) + " of " + std::to_string(world) +
                          ": the process group failed (another process died, hung past --dist-timeout " +
                          std::to_string(std::chrono::duration_cast<std::chrono::seconds>(timeout).count()) +
                          " s, or the network broke): " + what);
  }
}

}  // namespace

std::optional<LaunchEnvironment> launch_environment() {
  if (!env("RANK") && !env("WORLD_SIZE")) return std::nullopt;
  LaunchEnvironment e;
  e.world_size = env_int("WORLD_SIZE", 1);
  e.rank = env_int("RANK", 0);
  if (e.rank >= e.world_size) {
    throw std::runtime_error("distributed launch: RANK=" + std::to_string(e.rank) + " is not below WORLD_SIZE=" +
                             std::to_string(e.world_size));
  }
  e.local_rank = env("LOCAL_RANK") ? env_int("LOCAL_RANK", 0) : 0;
  const auto addr = env("MASTER_ADDR");
  if (!addr) throw std::runtime_error("distributed launch: MASTER_ADDR is not set (launch with torchrun)");
  e.master_addr = *addr;
  e.master_port = env_int("MASTER_PORT", 1);
  if (e.master_port > 65535) throw std::runtime_error("distributed launch: MASTER_PORT=" + std::to_string(e.master_port) + " is not a port");
  e.agent_store = env("TORCHELASTIC_USE_AGENT_STORE").value_or("") == "True";
  e.restart_count = env("TORCHELASTIC_RESTART_COUNT") ? env_int("TORCHELASTIC_RESTART_COUNT", 0) : 0;
  return e;
}

struct Distributed::Group {
  c10::intrusive_ptr<c10d::Store> store;
  c10::intrusive_ptr<c10d::ProcessGroup> pg;
};

Distributed::Distributed(LaunchEnvironment launch, DistributedOptions options)
    : launch_(std::move(launch)), options_(std::move(options)), group_(std::make_unique<Group>()) {}

Distributed::~Distributed() = default;

std::shared_ptr<Distributed> Distributed::join(const LaunchEnvironment& launch, const std::string& device,
                                               const DistributedOptions& options) {
  const bool cuda = torch::Device(device).is_cuda();
  std::string backend = options.backend == "auto" ? (cuda ? "nccl" : "gloo") : options.backend;
  if (backend == "nccl") {
    throw std::runtime_error(
        "--dist-backend nccl: this attnkit has no NCCL process group (it is built for the CPU's Gloo only); "
        "use --dist-backend gloo" + std::string(cuda ? " (Gloo with CUDA tensors has not been run on a GPU yet)" : ""));
  }
  if (backend != "gloo") throw std::runtime_error("--dist-backend '" + options.backend + "': expected auto, gloo or nccl");
  std::shared_ptr<Distributed> d(new Distributed(launch, options));
  d->backend_ = backend;

  // While the processes meet, c10d logs every failed connection attempt with a backtrace; a failure
  // ends in the one line below instead (TORCH_CPP_LOG_LEVEL, where set, keeps c10d's own logs).
  struct QuietLogs {
    int saved = FLAGS_caffe2_log_level;
    QuietLogs() {
      if (!env("TORCH_CPP_LOG_LEVEL")) FLAGS_caffe2_log_level = 3;  // FATAL only
    }
    ~QuietLogs() { FLAGS_caffe2_log_level = saved; }
  } quiet;
  try {
    // Rendezvous: torchrun's agent hosts the store (every worker a client, keys under the attempt's prefix,
    // as torch.distributed's env:// does); a launch without the agent has rank 0 host it.
    c10d::TCPStoreOptions so;
    so.port = static_cast<std::uint16_t>(launch.master_port);
    so.isServer = !launch.agent_store && launch.rank == 0;
    so.numWorkers = launch.world_size;
    so.waitWorkers = !launch.agent_store;
    so.timeout = options.timeout;
    c10::intrusive_ptr<c10d::Store> store = c10::make_intrusive<c10d::TCPStore>(launch.master_addr, so);
    if (launch.agent_store) {
      store = c10::make_intrusive<c10d::PrefixStore>("/worker/attempt_" + std::to_string(launch.restart_count), store);
    }
    // The group's own keys under a prefix of their own, as torch.distributed names its default group.
    store = c10::make_intrusive<c10d::PrefixStore>("attnkit", store);

    auto gloo_options = c10d::ProcessGroupGloo::Options::create(options.timeout);
    if (const auto ifnames = env("GLOO_SOCKET_IFNAME")) {  // as torch.distributed reads it: a,b,c
      std::stringstream list(*ifnames);
      std::string name;
      while (std::getline(list, name, ',')) {
        if (!name.empty()) gloo_options->devices.push_back(c10d::ProcessGroupGloo::createDeviceForInterface(name));
      }
    }
    if (gloo_options->devices.empty()) gloo_options->devices.push_back(c10d::ProcessGroupGloo::createDefaultDevice());
    c10::intrusive_ptr<c10d::Backend> gloo =
        c10::make_intrusive<c10d::ProcessGroupGloo>(store, launch.rank, launch.world_size, gloo_options);

    auto pg = c10::make_intrusive<c10d::ProcessGroup>(store, launch.rank, launch.world_size);
    pg->setBackend(c10::DeviceType::CPU, c10d::ProcessGroup::BackendType::GLOO, gloo);
    if (cuda) pg->setBackend(c10::DeviceType::CUDA, c10d::ProcessGroup::BackendType::GLOO, gloo);
    pg->setDefaultBackend(c10d::ProcessGroup::BackendType::GLOO);
    d->group_->store = store;
    d->group_->pg = pg;
  } catch (const std::exception& e) {
    const auto* c10_error = dynamic_cast<const c10::Error*>(&e);
    throw std::runtime_error("rank " + std::to_string(launch.rank) + " of " + std::to_string(launch.world_size) +
                             ": cannot meet the other processes at " + launch.master_addr + ":" +
                             std::to_string(launch.master_port) + " (--dist-timeout " +
                             std::to_string(std::chrono::duration_cast<std::chrono::seconds>(options.timeout).count()) +
                             " s): " + first_line(c10_error ? c10_error->what_without_backtrace() : e.what()));
  }
  return d;
}

std::string Distributed::describe() const {
  std::ostringstream s;
  s << backend_ << ", " << world_size() << " processes (this is rank " << rank() << ", local rank " << local_rank()
    << "), timeout " << std::chrono::duration_cast<std::chrono::seconds>(options_.timeout).count() << " s";
  if (launch_.restart_count > 0) s << ", restart " << launch_.restart_count;
  return s.str();
}

void Distributed::all_reduce_sum(torch::Tensor& t) const {
  std::vector<at::Tensor> tensors = {t};
  collective(rank(), world_size(), timeout(), [&] { group_->pg->allreduce(tensors)->wait(); });
}

void Distributed::broadcast(torch::Tensor& t) const {
  std::vector<at::Tensor> tensors = {t};
  c10d::BroadcastOptions o;
  o.rootRank = 0;
  collective(rank(), world_size(), timeout(), [&] { group_->pg->broadcast(tensors, o)->wait(); });
}

void Distributed::broadcast(std::string& s) const {
  auto size = torch::tensor({static_cast<int64_t>(s.size())}, torch::kLong);
  broadcast(size);
  auto bytes = torch::empty({size.item<int64_t>()}, torch::kUInt8);
  if (is_main() && !s.empty()) std::memcpy(bytes.data_ptr<uint8_t>(), s.data(), s.size());
  if (bytes.numel() > 0) broadcast(bytes);
  s.assign(reinterpret_cast<const char*>(bytes.data_ptr<uint8_t>()), static_cast<size_t>(bytes.numel()));
}

void Distributed::broadcast(torch::nn::Module& module) const {
  torch::NoGradGuard no_grad;
  std::vector<at::Tensor> tensors;
  for (const auto& p : module.parameters()) tensors.push_back(p);
  for (const auto& b : module.buffers()) tensors.push_back(b);
  // Coalesced into 256 MB messages, as DistributedDataParallel broadcasts the module state.
  if (tensors.empty()) return;
  collective(rank(), world_size(), timeout(), [&] { c10d::broadcast_coalesced(group_->pg, tensors, 256u << 20, 0); });
}

void Distributed::barrier() const {
  collective(rank(), world_size(), timeout(), [&] { group_->pg->barrier()->wait(); });
}

void throw_if_rank0_failed(const Distributed& dist, std::string message) {
  dist.broadcast(message);
  if (!message.empty()) throw std::runtime_error(message);
}

namespace {

// BatchNorm's per-channel sums, all-reduced like any other tensor (blocking; inside backward too, where
// the Reducer's own bucket all-reduces run: every process issues both in the same order).
class ProcessGroupBatchNormSync : public attnkit::BatchNormSync {
 public:
  explicit ProcessGroupBatchNormSync(std::shared_ptr<const Distributed> dist) : dist_(std::move(dist)) {}
  void all_reduce_sum(torch::Tensor& t) const override { dist_->all_reduce_sum(t); }

 private:
  std::shared_ptr<const Distributed> dist_;
};

}  // namespace

std::shared_ptr<const attnkit::BatchNormSync> batch_norm_sync_of(std::shared_ptr<const Distributed> dist) {
  TORCH_CHECK(dist, "batch_norm_sync_of: dist is null");
  return std::make_shared<ProcessGroupBatchNormSync>(std::move(dist));
}

// ---- GradientSync -----------------------------------------------------------------------------------

struct GradientSync::Impl {
  std::unique_ptr<c10d::Reducer> reducer;
  c10::intrusive_ptr<c10d::ProcessGroup> pg;
  int rank = 0, world = 1;
  std::chrono::milliseconds timeout{0};
  template <typename F>
  auto run(F&& f) -> decltype(f()) {
    return collective(rank, world, timeout, std::forward<F>(f));
  }
};

GradientSync::GradientSync(const Distributed& dist, torch::nn::Module& module, int64_t bucket_bytes)
    : impl_(std::make_unique<Impl>()) {
  impl_->pg = dist.group().pg;
  impl_->rank = dist.rank();
  impl_->world = dist.world_size();
  impl_->timeout = dist.timeout();
  std::vector<at::Tensor> params;
  for (const auto& p : module.parameters()) {
    if (p.requires_grad()) {
      params.push_back(p);
      gradient_bytes_ += p.numel() * static_cast<int64_t>(p.element_size());
    }
  }
  if (params.empty()) throw std::runtime_error("GradientSync: the model has no trainable parameters");
  // DistributedDataParallel's bucketing: a small first bucket (1 MB) so that communication starts early
  // in backward, then buckets of `bucket_bytes`; listed last parameters first, as backward produces them.
  constexpr int64_t kFirstBucketBytes = 1 << 20;
  const std::vector<bool> sparse(params.size(), false);
  auto [indices, limits] = c10d::compute_bucket_assignment_by_size(
      params, {static_cast<size_t>(kFirstBucketBytes), static_cast<size_t>(bucket_bytes)}, sparse, {}, std::nullopt);
  std::reverse(indices.begin(), indices.end());
  std::reverse(limits.begin(), limits.end());
  impl_->reducer = std::make_unique<c10d::Reducer>(params, indices, impl_->pg, sparse, bucket_bytes,
                                                   /*find_unused_parameters=*/false, /*gradient_as_bucket_view=*/false,
                                                   std::unordered_map<size_t, std::string>{}, kFirstBucketBytes,
                                                   /*skip_all_reduce_unused_params=*/false, /*use_python_reducer=*/false,
                                                   std::vector<int64_t>(limits.begin(), limits.end()));
}

GradientSync::~GradientSync() = default;

void GradientSync::before_forward() {
  impl_->run([&] {
    impl_->reducer->rebuild_buckets();
    impl_->reducer->prepare_for_forward();
  });
}

void GradientSync::backward(const torch::Tensor& mean_loss, int64_t images, int64_t global_images) {
  impl_->reducer->prepare_for_backward({});
  const int64_t world = impl_->world;
  // The buckets' all-reduces run (and fail) inside backward.
  impl_->run([&] {
    if (images * world == global_images) {
      mean_loss.backward();
    } else {
      (mean_loss * (static_cast<double>(images * world) / static_cast<double>(global_images))).backward();
    }
  });
}

double GradientSync::time_allreduce_ms(int repeats) const {
  std::vector<at::Tensor> buffer = {torch::zeros({std::max<int64_t>(gradient_bytes_ / 4, 1)}, torch::kFloat)};
  impl_->run([&] { impl_->pg->allreduce(buffer)->wait(); });  // warm-up: first use of the connections
  const auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < repeats; ++i) impl_->run([&] { impl_->pg->allreduce(buffer)->wait(); });
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count() / std::max(repeats, 1);
}

}  // namespace attnkit::train
