// --precision and --eager, shared by the commands that run a network without gradients (classify,
// eval, stream, visualize).
#pragma once

#include <attnkit/backbones/inference_model.h>

#include <c10/core/Device.h>
#include <c10/core/ScalarType.h>

#include <memory>
#include <string>

namespace attnkit::common {

/// What --precision resolved to, and why (printed by the commands).
struct Precision {
  c10::ScalarType dtype = c10::kFloat;
  /// e.g. "bfloat16 (auto: AVX512-BF16)", "float32 (auto: no AVX512-BF16 or AMX on this CPU)", "float32".
  std::string description;
};

/// "auto" → bfloat16 where it is faster on `device` (CUDA; a CPU with AVX512-BF16 or AMX-BF16:
/// attnkit::bfloat16_is_fast), else float32; "float32", "bfloat16", or "float16" (CUDA only). Throws
/// std::runtime_error naming the value otherwise.
Precision resolve_precision(const std::string& name, const c10::Device& device);

/// `model` frozen for inference in `dtype` (its parameters must already be in `dtype`, or float32 for
/// bfloat16); null with `eager` or for float16, which the inference path does not run.
std::shared_ptr<InferenceModel> inference_path(std::shared_ptr<Backbone> model, c10::ScalarType dtype, bool eager);

/// The help text of --precision (what auto picks on which machine).
extern const char* const kPrecisionHelp;
/// The help text of --eager.
extern const char* const kEagerHelp;

}  // namespace attnkit::common
