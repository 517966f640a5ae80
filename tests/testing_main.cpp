// main() of every test suite: GoogleTest's, plus the two knobs CTest turns to run a suite once per
// kernel copy and thread count (tests/CMakeLists.txt):
//   environment ATEN_CPU_CAPABILITY=default|avx2|avx512  the instruction set ATen and attnkit's kernels
//               use (read by ATen; attnkit follows ATen's choice). A copy this CPU cannot execute
//               skips the whole suite instead of dying of SIGILL.
//   argument --threads=N  LibTorch's intra-op threads for the suite.
// and one test, linked into every suite, that the copy asked for is the copy that runs.
#include <ATen/Version.h>
#include <ATen/cpu/Utils.h>
#include <attnkit/attnkit.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <algorithm>
#include <cctype>
#include <cstdlib>
#include <stdexcept>
#include <string>

namespace {

/// A feature flag of at::cpu::get_cpu_capabilities(); a name it does not know is an error, not a
/// "no" (a misspelt name would otherwise skip every suite of the matrix without a word).
bool cpu_has(const std::string& feature) {
  static const auto caps = at::cpu::get_cpu_capabilities();
  const auto it = caps.find(feature);
  if (it == caps.end() || !it->second.isBool()) throw std::runtime_error("unknown CPU feature name " + feature);
  return it->second.toBool();
}

/// What ATen needs for its AVX2 / AVX512 copies (aten/src/ATen/native/DispatchStub.cpp).
bool cpu_can_run(const std::string& copy) {
  if (copy == "AVX512")
    return cpu_has("avx512_f") && cpu_has("avx512_bw") && cpu_has("avx512_vl") && cpu_has("avx512_dq") && cpu_has("fma3");
  if (copy == "AVX2") return cpu_has("avx2") && cpu_has("fma3");
  return true;
}

/// The copy ATEN_CPU_CAPABILITY asks for, upper-case ("" when unset).
std::string requested_copy() {
  const char* env = std::getenv("ATEN_CPU_CAPABILITY");
  std::string s = env ? env : "";
  std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return std::toupper(c); });
  return s;
}

/// --threads=N (0: LibTorch's default).
int requested_threads = 0;

class KernelCopyAndThreads : public ::testing::Environment {
 public:
  void SetUp() override {
    const std::string copy = requested_copy();
    if (!copy.empty() && !cpu_can_run(copy)) GTEST_SKIP() << "this CPU cannot execute the " << copy << " kernels";
    if (requested_threads > 0) torch::set_num_threads(requested_threads);
  }
};

/// LibTorch seeds its default generator from the system's entropy, so a test that draws weights or
/// inputs without seeding would see other numbers in every process (a margin test once failed that
/// way under load, 3 runs in 25). Every test starts from the same seed instead, whatever ran before
/// it in the process: a failure reproduces.
class SeedEveryTest : public ::testing::EmptyTestEventListener {
  void OnTestStart(const ::testing::TestInfo& /*test*/) override { torch::manual_seed(0); }
};

}  // namespace

// The override works: with ATEN_CPU_CAPABILITY set, every op's table is that copy; without it, the
// best this CPU can execute. Runs in every suite, under every entry of CTest's matrix.
TEST(KernelCopy, TheRequestedCopyRuns) {
  // The copy ATen picks by itself is one this CPU can run (checks the feature names above).
  if (requested_copy().empty()) EXPECT_TRUE(cpu_can_run(at::get_cpu_capability()));
  std::string expected = requested_copy();
  if (expected.empty()) expected = at::get_cpu_capability();  // ATen's own choice for this CPU
  const auto info = attnkit::build_info();
  EXPECT_EQ(info.cpu_capability, expected);
  ASSERT_EQ(info.cpu_kernel_copies.size(), 3u);
  for (const auto& [op, copy] : info.cpu_kernel_copies) EXPECT_EQ(copy, expected) << op;
  if (requested_threads > 0) EXPECT_EQ(torch::get_num_threads(), requested_threads);
}

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);  // leaves the arguments that are not GoogleTest's
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg.rfind("--threads=", 0) == 0) requested_threads = std::atoi(arg.c_str() + 10);
  }
  ::testing::AddGlobalTestEnvironment(new KernelCopyAndThreads);
  ::testing::UnitTest::GetInstance()->listeners().Append(new SeedEveryTest);
  return RUN_ALL_TESTS();
}
