// Synchronised BatchNorm (modules/batch_norm.h) against torch's own BatchNorm in float64 on the batch
// the processes hold together. Two processes are simulated by two threads that meet in an in-memory
// all-reduce; the real c10d path is tests/python/check_distributed.py's parity case.
#include <attnkit/backbones/resnet.h>
#include <attnkit/modules/batch_norm.h>
#include <attnkit/modules/cbam.h>

#include <gmock/gmock.h>

#include "testing.h"

#include <condition_variable>
#include <mutex>
#include <thread>

namespace {

using attnkit::BatchNormSync;
using attnkit::testing::all_close;
using attnkit::testing::max_abs;
using attnkit::testing::rounding_tolerance;

// One process: the sum over the processes is the tensor itself. Counts its calls.
class AloneSync : public BatchNormSync {
 public:
  void all_reduce_sum(torch::Tensor&) const override { ++calls; }
  mutable int calls = 0;
};

// Two threads standing for two processes: each call waits for the other thread's and both get the sum.
class PairSync : public BatchNormSync {
 public:
  void all_reduce_sum(torch::Tensor& t) const override {
    std::unique_lock<std::mutex> lock(mutex_);
    const int64_t round = round_;
    sum_ = arrived_ == 0 ? t.clone() : sum_ + t;
    if (++arrived_ == 2) {
      result_ = sum_;
      arrived_ = 0;
      ++round_;
      done_.notify_all();
    } else {
      done_.wait(lock, [&] { return round_ != round; });
    }
    t.copy_(result_);
  }

 private:
  mutable std::mutex mutex_;
  mutable std::condition_variable done_;
  mutable int arrived_ = 0;
  mutable int64_t round_ = 0;
  mutable torch::Tensor sum_, result_;
};

struct Grads {
  torch::Tensor y, dx, dw, db;
};

// y = sync_batch_norm(x) and the gradients of sum(y * dy), in x's dtype; running statistics updated in
// place.
Grads run_sync(torch::Tensor x, const torch::Tensor& dy, const torch::Tensor& w, const torch::Tensor& b,
               torch::Tensor rm, torch::Tensor rv, std::shared_ptr<const BatchNormSync> sync, double momentum = 0.1) {
  x = x.detach().requires_grad_(true);
  auto wv = w.detach().clone().requires_grad_(true), bv = b.detach().clone().requires_grad_(true);
  auto y = attnkit::sync_batch_norm(x, wv, bv, rm, rv, momentum, 1e-5, std::move(sync));
  (y * dy).sum().backward();
  return {y.detach(), x.grad(), wv.grad(), bv.grad()};
}

// The same through torch::batch_norm on float64 copies: the reference.
Grads run_reference(const torch::Tensor& x, const torch::Tensor& dy, const torch::Tensor& w, const torch::Tensor& b,
                    torch::Tensor rm, torch::Tensor rv, double momentum = 0.1) {
  auto xd = x.detach().to(torch::kDouble).requires_grad_(true);
  auto wd = w.detach().to(torch::kDouble).requires_grad_(true), bd = b.detach().to(torch::kDouble).requires_grad_(true);
  auto y = torch::batch_norm(xd, wd, bd, rm, rv, /*training=*/true, momentum, 1e-5, /*cudnn_enabled=*/false);
  (y * dy.to(torch::kDouble)).sum().backward();
  return {y.detach(), xd.grad(), wd.grad(), bd.grad()};
}

// Bounds for the float32 path against float64 on the same inputs (rounding_tolerance, testing.h): the
// output (x - mean) * invstd * w + b goes through one reduction of K = N*H*W terms per channel for the
// mean and one for the variance, at the scale of max|x - mean| * invstd * |w| + |b| (the subtraction of
// the mean is where |x| rather than the deviation sets the rounding: scale also covers max|x| * invstd
// * |w|). The input gradient adds two more K-term sums of dy and dy * xhat, at the scale of
// invstd * |w| * max|dy| * (1 + max|xhat|).
struct Bounds {
  attnkit::testing::Tolerance y, dx, dwb;
};

Bounds float32_bounds(const torch::Tensor& x, const torch::Tensor& dy, const torch::Tensor& w, const torch::Tensor& b,
                      const Grads& ref) {
  const int64_t K = x.numel() / x.size(1);
  const auto xd = x.to(torch::kDouble);
  const auto sd = (xd.var({0, 2, 3}, /*unbiased=*/false) + 1e-5).sqrt();
  const double invstd = 1 / sd.min().item<double>();
  const double xhat = max_abs((xd - xd.mean({0, 2, 3}, true)) / sd.view({1, -1, 1, 1}));
  const double y_scale = std::max(max_abs(x), 1.0) * invstd * max_abs(w) + max_abs(b) + max_abs(ref.y);
  const double dx_scale = invstd * max_abs(w) * max_abs(dy) * (1 + xhat) * std::max(max_abs(x) * invstd, 1.0);
  return {rounding_tolerance(torch::kFloat, 2 * K, y_scale), rounding_tolerance(torch::kFloat, 4 * K, dx_scale),
          rounding_tolerance(torch::kFloat, K, max_abs(dy) * (1 + xhat) * std::max(max_abs(x) * invstd, 1.0))};
}

torch::Tensor randn(std::vector<int64_t> shape, double mean = 0.5, double std = 2.0) {
  return torch::randn(shape) * std + mean;
}

TEST(SyncBatchNorm, OneProcessIsBatchNorm) {
  for (const auto layout : {"contiguous", "channels_last", "strided"}) {
    SCOPED_TRACE(layout);
    auto x = randn({5, 3, 7, 9});
    if (std::string(layout) == "channels_last") x = x.contiguous(torch::MemoryFormat::ChannelsLast);
    if (std::string(layout) == "strided") x = randn({5, 3, 9, 7}).transpose(2, 3);
    const auto dy = torch::randn({5, 3, 7, 9}), w = torch::rand({3}) + 0.5, b = torch::randn({3});
    auto rm = torch::randn({3}), rv = torch::rand({3}) + 0.5;
    auto rm_ref = rm.to(torch::kDouble), rv_ref = rv.to(torch::kDouble);
    auto sync = std::make_shared<AloneSync>();
    const auto got = run_sync(x, dy, w, b, rm, rv, sync);
    const auto ref = run_reference(x, dy, w, b, rm_ref, rv_ref);
    const auto tol = float32_bounds(x, dy, w, b, ref);
    EXPECT_EQ(sync->calls, 2);  // the statistics in forward, the two gradient sums in backward
    EXPECT_TRUE(all_close(got.y, ref.y, tol.y));
    EXPECT_TRUE(all_close(got.dx, ref.dx, tol.dx));
    EXPECT_TRUE(all_close(got.dw, ref.dw, tol.dwb));
    EXPECT_TRUE(all_close(got.db, ref.db, tol.dwb));
    EXPECT_TRUE(all_close(rm, rm_ref, tol.y));
    EXPECT_TRUE(all_close(rv, rv_ref, tol.y * 4));  // the variance: twice the deviations' relative error
    if (std::string(layout) == "channels_last") EXPECT_TRUE(got.y.is_contiguous(torch::MemoryFormat::ChannelsLast));
  }
}

// The point of it: two processes with their slices (of different sizes) normalise exactly as one
// process with the whole batch, in forward and backward; weight and bias gradients are each process's
// own share, summing to the whole batch's.
TEST(SyncBatchNorm, TwoProcessesAreOneBatch) {
  const auto x = randn({5, 4, 6, 5}), dy = torch::randn({5, 4, 6, 5});
  const auto w = torch::rand({4}) + 0.5, b = torch::randn({4});
  auto rm_ref = torch::zeros({4}, torch::kDouble), rv_ref = torch::ones({4}, torch::kDouble);
  const auto ref = run_reference(x, dy, w, b, rm_ref, rv_ref);
  const auto tol = float32_bounds(x, dy, w, b, ref);

  auto sync = std::make_shared<PairSync>();
  const std::vector<std::pair<int64_t, int64_t>> slices{{0, 3}, {3, 5}};
  std::vector<Grads> got(2);
  std::vector<torch::Tensor> rm{torch::zeros({4}), torch::zeros({4})}, rv{torch::ones({4}), torch::ones({4})};
  std::vector<std::string> errors(2);
  std::vector<std::thread> ranks;
  for (int r = 0; r < 2; ++r)
    ranks.emplace_back([&, r] {
      try {
        const auto [lo, hi] = slices[r];
        got[r] = run_sync(x.slice(0, lo, hi), dy.slice(0, lo, hi), w, b, rm[r], rv[r], sync);
      } catch (const std::exception& e) {
        errors[r] = e.what();
      }
    });
  for (auto& t : ranks) t.join();
  ASSERT_EQ(errors[0] + errors[1], "");
  EXPECT_TRUE(all_close(torch::cat({got[0].y, got[1].y}), ref.y, tol.y));
  EXPECT_TRUE(all_close(torch::cat({got[0].dx, got[1].dx}), ref.dx, tol.dx));
  EXPECT_TRUE(all_close(got[0].dw + got[1].dw, ref.dw, tol.dwb));
  EXPECT_TRUE(all_close(got[0].db + got[1].db, ref.db, tol.dwb));
  for (int r = 0; r < 2; ++r) {
    EXPECT_TRUE(all_close(rm[r], rm_ref, tol.y));
    EXPECT_TRUE(all_close(rv[r], rv_ref, tol.y * 4));
  }
  // And it is not what one slice alone gives (the test can tell the two apart).
  auto rm1 = torch::zeros({4}, torch::kDouble), rv1 = torch::ones({4}, torch::kDouble);
  const auto alone = run_reference(x.slice(0, 0, 3), dy.slice(0, 0, 3), w, b, rm1, rv1);
  EXPECT_GT(max_abs(alone.y - ref.y.slice(0, 0, 3)), 100 * tol.y.atol);
}

TEST(SyncBatchNorm, Bfloat16InputKeepsItsDtype) {
  const auto x = randn({4, 3, 5, 5}).to(torch::kBFloat16), dy = torch::randn({4, 3, 5, 5}).to(torch::kBFloat16);
  const auto w = torch::rand({3}) + 0.5, b = torch::randn({3});
  auto rm_ref = torch::zeros({3}, torch::kDouble), rv_ref = torch::ones({3}, torch::kDouble);
  const auto got = run_sync(x, dy, w, b, torch::zeros({3}), torch::ones({3}), std::make_shared<AloneSync>());
  const auto ref = run_reference(x, dy, w, b, rm_ref, rv_ref);
  EXPECT_EQ(got.y.scalar_type(), torch::kBFloat16);
  EXPECT_EQ(got.dx.scalar_type(), torch::kBFloat16);
  // Computed in float32 from the exact bfloat16 inputs: float32's bounds plus the output's rounding
  // to bfloat16 (one io rounding).
  const int64_t K = x.numel() / 3;
  EXPECT_TRUE(all_close(got.y, ref.y, rounding_tolerance(torch::kBFloat16, 2 * K, max_abs(ref.y) + 1)));
  EXPECT_TRUE(all_close(got.dx, ref.dx, rounding_tolerance(torch::kBFloat16, 4 * K, 4 * max_abs(ref.dx) + 1)));
}

// float64 computes in float64 (the parity test of tests/python/check_distributed.py runs it to 1e-10).
TEST(SyncBatchNorm, Float64StaysFloat64) {
  const auto x = randn({4, 3, 5, 5}).to(torch::kDouble), dy = torch::randn({4, 3, 5, 5}, torch::kDouble);
  const auto w = torch::rand({3}, torch::kDouble) + 0.5, b = torch::randn({3}, torch::kDouble);
  auto rm_ref = torch::zeros({3}, torch::kDouble), rv_ref = torch::ones({3}, torch::kDouble);
  const auto got = run_sync(x, dy, w, b, torch::zeros({3}, torch::kDouble), torch::ones({3}, torch::kDouble),
                            std::make_shared<AloneSync>());
  const auto ref = run_reference(x, dy, w, b, rm_ref, rv_ref);
  EXPECT_EQ(got.y.scalar_type(), torch::kDouble);
  const int64_t K = x.numel() / 3;
  // Two float64 computations of the same math: float32's error model with float64's unit roundoff.
  EXPECT_TRUE(all_close(got.y, ref.y, rounding_tolerance(torch::kDouble, 2 * K, 4 * max_abs(x) + max_abs(ref.y)) * 2));
  EXPECT_TRUE(all_close(got.dx, ref.dx, rounding_tolerance(torch::kDouble, 4 * K, 16 * max_abs(ref.dx) + 16) * 2));
}

// Through the module: batch_norm(bn, x) is bn(x) without a sync or in eval mode, and with one it counts
// the batch, and follows torch's cumulative average when momentum is None.
TEST(SyncBatchNorm, ModuleUpdatesItsBuffers) {
  torch::nn::BatchNorm2d plain(torch::nn::BatchNormOptions(3).momentum(std::nullopt));
  torch::nn::BatchNorm2d synced(torch::nn::BatchNormOptions(3).momentum(std::nullopt));
  auto sync = std::make_shared<AloneSync>();
  attnkit::BatchNormSyncGuard guard(sync);
  for (int step = 0; step < 3; ++step) {
    const auto x = randn({4, 3, 5, 6});
    const auto want = plain->forward(x);
    const auto got = attnkit::batch_norm(synced, x);
    const auto tol = rounding_tolerance(torch::kFloat, 2 * x.numel() / 3, 4 * max_abs(x) + 1) * 2;
    EXPECT_TRUE(all_close(got, want, tol));
    EXPECT_TRUE(all_close(synced->running_mean, plain->running_mean, tol));
    EXPECT_TRUE(all_close(synced->running_var, plain->running_var, tol * 4));
  }
  EXPECT_EQ(synced->num_batches_tracked.item<int64_t>(), 3);
  EXPECT_EQ(sync->calls, 3);  // forward only: nothing needed a gradient

  synced->eval();
  plain->eval();
  const auto x = randn({2, 3, 4, 4});
  EXPECT_TRUE(torch::equal(attnkit::batch_norm(synced, x), synced->forward(x)));
  EXPECT_EQ(sync->calls, 3);  // eval uses the running statistics: nothing to synchronise
}

// A residual block with CBAM under a sync: the same output as without (one process), with the fused
// gate stepping aside for the composite one whose BatchNorm the sync reaches; a block that insists on
// the fused kernel says why it cannot.
TEST(SyncBatchNorm, BlocksUseIt) {
  auto block = attnkit::BasicBlock(attnkit::ResidualBlockOptions(8, 16).stride(2).attention("cbam"));
  const auto x = randn({3, 8, 9, 9});
  auto twin = attnkit::BasicBlock(attnkit::ResidualBlockOptions(8, 16).stride(2).attention("cbam"));
  {
    torch::NoGradGuard no_grad;
    auto src = block->named_parameters(true);
    for (auto& p : twin->named_parameters(true)) p.value().copy_(src[p.key()]);
  }
  const auto want = block->forward(x);
  auto sync = std::make_shared<AloneSync>();
  attnkit::BatchNormSyncGuard guard(sync);
  const auto got = twin->forward(x);
  // bn1, bn2, the shortcut's BatchNorm and CBAM's spatial BatchNorm.
  EXPECT_EQ(sync->calls, 4);
  EXPECT_TRUE(all_close(got, want, rounding_tolerance(torch::kFloat, 2 * 9 * 16 * 9 + 2 * 3 * 81, 8 * max_abs(want) + 8) * 2));
  for (const auto& buffer : {"bn1.running_var", "bn2.running_mean", "downsample.1.running_var"}) {
    SCOPED_TRACE(buffer);
    EXPECT_TRUE(all_close(*twin->named_buffers(true).find(buffer), *block->named_buffers(true).find(buffer),
                          rounding_tolerance(torch::kFloat, 3 * 81 * 2, 64)));
  }

  auto fused = attnkit::CBAM(attnkit::CBAMOptions(16).impl(attnkit::Implementation::Fused));
  EXPECT_THAT([&] { fused->forward(randn({2, 16, 5, 5})); },
              ::testing::ThrowsMessage<c10::Error>(::testing::HasSubstr("synchronised statistics")));
}

TEST(SyncBatchNorm, BadArgumentsAreNamed) {
  auto sync = std::make_shared<AloneSync>();
  const auto x = randn({2, 3, 4, 4});
  const auto bad = [&](const torch::Tensor& in, const torch::Tensor& w, std::shared_ptr<const BatchNormSync> s,
                       double momentum = 0.1) {
    return [=] { attnkit::sync_batch_norm(in, w, {}, {}, {}, momentum, 1e-5, s); };
  };
  using ::testing::HasSubstr;
  using ::testing::ThrowsMessage;
  EXPECT_THAT(bad(x, {}, nullptr), ThrowsMessage<c10::Error>(HasSubstr("sync is null")));
  EXPECT_THAT(bad(x, torch::ones({4}), sync), ThrowsMessage<c10::Error>(HasSubstr("per-channel tensors of 3 values")));
  EXPECT_THAT(bad(x, {}, sync, 2.0), ThrowsMessage<c10::Error>(HasSubstr("momentum must be in [0, 1]")));
  EXPECT_THAT(bad(torch::ones({2, 3}, torch::kLong), {}, sync), ThrowsMessage<c10::Error>(HasSubstr("floating input x")));
  EXPECT_THAT(bad(randn({1, 3, 1, 1}), {}, sync),
              ThrowsMessage<c10::Error>(HasSubstr("more than 1 value per channel over all processes")));
}

}  // namespace
