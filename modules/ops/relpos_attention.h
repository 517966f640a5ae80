// attnkit::ops::relpos_attention — multi-head softmax attention with an optional 2-D relative
// position bias (Swin, Liu et al. 2021), fused and memory-efficient, registered as
// torch.ops.attnkit.relpos_attention.
//
//   out[n, h] = softmax(scale · q[n, h] k[n, h]ᵀ + B_h) v[n, h]
//   B_h[i, j] = table[(y_i - y_j + H - 1)(2W - 1) + (x_i - x_j + W - 1), h]
//
// for the L = H·W positions of an H×W map flattened row-major (i = y·W + x), exactly the bias that
// relative_position_index() + index_select build explicitly. Here the bias is read from the table
// while each tile of logits is made, and the (H·W)² matrix (logits, probabilities or bias) never
// exists: forward and backward need O(L·d) memory (plus one table gradient per (n, head) in
// backward). Backward recomputes the probabilities from the logsumexp saved by forward
// (flash-attention-2), and returns gradients for q, k, v and the table, deterministically (the same
// bits for any thread count). Double backward is not supported.
//
// Layout: q, k, v may have any strides; where their last dimension is contiguous (row stride ≥ d),
// as in views of a [N, L, 3, heads, d] qkv tensor (the 1×1 qkv convolution's output in channels-last
// memory), they are read in place; otherwise one contiguous copy is made. The output is
// [N, heads, L, d] stored as [N, L, heads, d] (so that out.transpose(-1, -2).reshape([N, heads·d, H, W])
// is a channels-last view, no copy). On the CPU float32 and float64 run natively, bfloat16 and
// float16 in float32 (inputs upcast, output rounded back); the CUDA kernels read and write every
// floating dtype natively and compute in float32 (float64 for float64).
//
// Devices: CPU, and CUDA in builds with CUDA kernels (ATTNKIT_WITH_CUDA; head dim d ≤ 256 there).
// The CUDA kernels (modules/ops/cuda/relpos_attention_kernel.cu) were compiled but not yet run on a
// GPU when written: tests/test_fused_self_attention.cpp's CUDA cases check them where one exists.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>

namespace attnkit::ops {

/// q, k, v: [N, heads, L, d] with L = height · width, one floating dtype, one device.
/// table: [(2·height-1)(2·width-1), heads] (a SelfAttention2d table already resized to this map by
/// resize_relative_position_table), any floating dtype, or undefined for no bias.
/// scale: default d^-0.5.
at::Tensor relpos_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& table,
                            int64_t height, int64_t width, std::optional<double> scale = std::nullopt);

/// True when attnkit has a fused self-attention kernel for tensors on this device (CPU, and CUDA in
/// builds with CUDA kernels).
bool has_relpos_attention_kernel(const at::Device& device);

/// The largest head dim d the CUDA kernels take (the CPU kernels take any).
constexpr int64_t kRelposAttentionMaxCudaHeadDim = 256;

}  // namespace attnkit::ops
