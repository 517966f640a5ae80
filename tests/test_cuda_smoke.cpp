// On a GPU machine: the CUDA code compiled into attnkit runs and gives the right answer.
#include <attnkit/attnkit.h>

#include "testing.h"

#ifdef ATTNKIT_WITH_CUDA
namespace attnkit::ops {
at::Tensor cuda_iota(int64_t n, at::Device device);
}

TEST(CudaSmoke, KernelRunsOnDevice) {
  if (!attnkit::testing::cuda_available()) GTEST_SKIP() << "no CUDA device";
  for (int64_t n : {0, 1, 255, 256, 257, 100003}) {
    auto y = attnkit::ops::cuda_iota(n, torch::Device(torch::kCUDA, 0));
    EXPECT_TRUE(y.cpu().equal(torch::arange(n, torch::kFloat))) << "n=" << n;
  }
}
#else
TEST(CudaSmoke, KernelRunsOnDevice) { GTEST_SKIP() << "attnkit built without CUDA kernels"; }
#endif
