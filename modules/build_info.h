// What this build of attnkit contains: version, LibTorch version, whether CUDA kernels are compiled in.
#pragma once

#include <string>

namespace attnkit {

struct BuildInfo {
  std::string version;        ///< attnkit's version, e.g. "0.1.0"
  std::string torch_version;  ///< LibTorch version attnkit was compiled against
  bool cuda_kernels = false;  ///< attnkit's own CUDA kernels are compiled into the library
  bool cuda_available = false;  ///< a CUDA device can be used right now (runtime check)
  /// attnkit's CPU kernels were compiled with OpenMP, so at::parallel_for in them uses LibTorch's
  /// threads (without it, ATen's header-only parallel_for silently runs on one thread).
  bool parallel_kernels = false;
};

/// Describes the library as built and the machine it runs on.
BuildInfo build_info();

}  // namespace attnkit
