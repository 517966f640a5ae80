#include "precision.h"

#include "device.h"

#include <attnkit/backbones/inference_model.h>

#include <ATen/cpu/Utils.h>

#include <stdexcept>

namespace attnkit::common {

namespace {

bool cpu_has(const char* name) {
  const auto caps = at::cpu::get_cpu_capabilities();
  const auto it = caps.find(name);
  return it != caps.end() && it->second.isBool() && it->second.toBool();
}

/// Which instructions make bfloat16 fast on this CPU, for the printed reason.
std::string bf16_instructions() {
  if (cpu_has("amx_bf16")) return "AMX-BF16";
  return "AVX512-BF16";
}

}  // namespace

const char* const kPrecisionHelp =
    "Arithmetic of the network: auto = bfloat16 on CUDA and on CPUs with AVX512-BF16 or AMX-BF16 (oneDNN's bf16 "
    "convolutions run there about 1.5-2x faster than float32), else float32; or float32, bfloat16, float16 (CUDA "
    "only). bfloat16 probabilities and maps differ from float32 by about a percent";
const char* const kEagerHelp =
    "Run the module itself (the reference and training path) instead of the frozen inference path (BatchNorm "
    "folded, oneDNN-prepacked weights, channels-last): slower, for comparison and debugging";

std::shared_ptr<InferenceModel> inference_path(std::shared_ptr<Backbone> model, c10::ScalarType dtype, bool eager) {
  if (eager || dtype == c10::kHalf) return nullptr;
  return std::make_shared<InferenceModel>(std::move(model), InferenceOptions().dtype(dtype));
}

Precision resolve_precision(const std::string& name, const c10::Device& device) {
  Precision p;
  if (name == "auto") {
    const bool bf16 = bfloat16_is_fast(device);
    p.dtype = bf16 ? c10::kBFloat16 : c10::kFloat;
    p.description = bf16 ? "bfloat16 (auto: " + (device.is_cuda() ? std::string("CUDA") : bf16_instructions()) + ")"
                         : "float32 (auto: no AVX512-BF16 or AMX-BF16 on this CPU)";
    return p;
  }
  if (name != "float32" && name != "bfloat16" && name != "float16")
    throw std::runtime_error("--precision '" + name + "': expected auto, float32, bfloat16 or float16");
  p.dtype = dtype_from_name(name);
  if (p.dtype == c10::kHalf && !device.is_cuda())
    throw std::runtime_error("--precision float16 needs --device cuda (CPU convolutions have no fast float16 path); use bfloat16");
  p.description = name;
  return p;
}

}  // namespace attnkit::common
