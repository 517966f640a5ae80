// The library loads, reports itself, and the factory's contract holds.
#include <attnkit/attnkit.h>
#include <gtest/gtest.h>

#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>

TEST(Foundation, BuildInfoNamesVersions) {
  const auto info = attnkit::build_info();
  EXPECT_EQ(info.version, ATTNKIT_VERSION);
  EXPECT_FALSE(info.torch_version.empty());
#ifndef ATTNKIT_WITH_CUDA
  EXPECT_FALSE(info.cuda_kernels);
#endif
}

// ATen's parallel_for is a header template: only code compiled with OpenMP runs it on several
// threads. The library (kernels included) and this test get the same flags from attnkit_torch.
TEST(Foundation, ParallelForUsesSeveralThreads) {
  EXPECT_TRUE(attnkit::build_info().parallel_kernels);
  const int prev = at::get_num_threads();
  at::set_num_threads(2);
  std::atomic<int> mask{0};
  at::parallel_for(0, 64, 1, [&](int64_t, int64_t) { mask |= 1 << std::min(at::get_thread_num(), 30); });
  at::set_num_threads(prev);
  EXPECT_EQ(mask.load(), 3) << "parallel_for ran on thread ids mask " << mask.load();
}

TEST(Foundation, EmptyAttentionNameIsIdentity) {
  auto block = attnkit::make_attention("", 4);
  auto x = torch::randn({2, 4, 3, 3});
  EXPECT_TRUE(block.forward(x).equal(x));
}

TEST(Foundation, UnknownAttentionNameListsValidNames) {
  try {
    attnkit::make_attention("bogus", 4);
    FAIL() << "expected an error";
  } catch (const c10::Error& e) {
    EXPECT_NE(std::string(e.what()).find("unknown attention name \"bogus\""), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("valid names"), std::string::npos) << e.what();
  }
}

#include "testing.h"

TEST(Foundation, PythonReferencesLoad) {
  auto refs = attnkit::testing::load_refs("smoke");
  if (refs.empty()) GTEST_SKIP() << "no Python references on this machine";
  EXPECT_TRUE(attnkit::testing::all_close(torch::tanh(refs.at("x")), refs.at("y"), 1e-15));
}

TEST(Factory, EveryNameBuildsAShapePreservingBlock) {
  torch::manual_seed(0);
  auto x = torch::randn({2, 32, 8, 9});
  for (const auto& name : attnkit::attention_names()) {
    auto block = attnkit::make_attention(name, 32);
    auto y = block.forward(x);
    EXPECT_EQ(y.sizes(), x.sizes()) << "attention \"" << name << "\"";
    EXPECT_FALSE(y.isnan().any().item<bool>()) << name;
  }
}

TEST(Factory, NamesAreThoseOfTheIssue) {
  const std::vector<std::string> expected = {"", "se", "eca", "cbam", "channel", "spatial", "self", "nonlocal", "local"};
  EXPECT_EQ(attnkit::attention_names(), expected);
}

// ---- where Implementation::Auto runs attnkit's own kernels (kernel_verification) -------------------
// Checked without a GPU: the decision every block goes through, for every entry of the table.
TEST(KernelVerification, AutoNeverRunsAnUnverifiedKernel) {
  using attnkit::FusedOp;
  using attnkit::Implementation;
  const auto& table = attnkit::kernel_verification();
  for (auto op : {FusedOp::Cbam, FusedOp::NeighborhoodAttention, FusedOp::RelposAttention})
    for (auto device : {c10::DeviceType::CPU, c10::DeviceType::CUDA}) {
      SCOPED_TRACE(std::string(attnkit::to_string(op)) + " on " + c10::DeviceTypeName(device));
      const auto n = std::count_if(table.begin(), table.end(), [&](const auto& e) { return e.op == op && e.device == device; });
      ASSERT_EQ(n, 1) << "one entry per op and device";
      const auto& e = *std::find_if(table.begin(), table.end(), [&](const auto& e) { return e.op == op && e.device == device; });
      EXPECT_GT(std::string(e.evidence).size(), 10u) << "every entry says which run showed it, or why not";
      const c10::Device dev(device, device == c10::DeviceType::CUDA ? 0 : -1);
      // Auto, with a kernel that exists: fused exactly where verified.
      EXPECT_EQ(attnkit::detail::use_fused_kernel(Implementation::Auto, op, dev, true, false, "test"), e.verified);
      EXPECT_EQ(attnkit::auto_runs_fused(op, device), e.verified);
      // Fused opts in whether verified or not; Composite never runs the kernel.
      EXPECT_TRUE(attnkit::detail::use_fused_kernel(Implementation::Fused, op, dev, true, false, "test"));
      EXPECT_FALSE(attnkit::detail::use_fused_kernel(Implementation::Composite, op, dev, true, false, "test"));
    }
  // A device type without an entry is never fused under Auto.
  EXPECT_FALSE(attnkit::auto_runs_fused(FusedOp::Cbam, c10::DeviceType::Meta));
}

// No CUDA kernel has passed its tests on a GPU yet (issue 16): Auto keeps every op composite there.
// Flip this together with the table, after a GPU run.
TEST(KernelVerification, NoCudaKernelIsVerifiedYet) {
  for (const auto& e : attnkit::kernel_verification())
    if (e.device == c10::DeviceType::CUDA) EXPECT_FALSE(e.verified) << attnkit::to_string(e.op);
}
