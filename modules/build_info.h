// What this build of attnkit contains: version, LibTorch version, whether CUDA kernels are compiled in.
#pragma once

#include <string>
#include <utility>
#include <vector>

namespace attnkit {

struct BuildInfo {
  std::string version;        ///< attnkit's version, e.g. "0.1.0"
  std::string torch_version;  ///< LibTorch version attnkit was compiled against
  bool cuda_kernels = false;  ///< attnkit's own CUDA kernels are compiled into the library
  bool cuda_available = false;  ///< a CUDA device can be used right now (runtime check)
  /// attnkit's CPU kernels were compiled with OpenMP, so at::parallel_for in them uses LibTorch's
  /// threads (without it, ATen's header-only parallel_for silently runs on one thread).
  bool parallel_kernels = false;
  /// The instruction set ATen and attnkit's CPU kernels use here: "DEFAULT", "AVX2" or "AVX512"
  /// (the best this CPU has, or what the environment variable ATEN_CPU_CAPABILITY asks for).
  std::string cpu_capability;
  /// The copy of each fused op's CPU kernels that runs: {{"cbam", "AVX512"}, ...}.
  std::vector<std::pair<std::string, std::string>> cpu_kernel_copies;
};

/// Describes the library as built and the machine it runs on.
BuildInfo build_info();

}  // namespace attnkit
