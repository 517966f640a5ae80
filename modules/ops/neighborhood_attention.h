// attnkit::ops::neighborhood_attention — (dilated) neighborhood attention as one fused op,
// registered as torch.ops.attnkit.neighborhood_attention.
//
//   out[n, h, y, x] = Σ_slots softmax(scale · q[n, h, y, x]·k[n, h, key] + rpb[h, rel]) · v[n, h, key]
//
// over the k×k window of keys of query (y, x) — NATTEN's window rule (k odd, dilation d, the window
// shifts inward at the borders so that every query sees exactly k×k keys; see relative_position.h) —
// with rel = (key - query)/d + k - 1 per axis, and scale = head_dim^-0.5 unless given. Exactly
// LocalAttention2d's composite math, without gathering the k²·C window values: one pass per query
// computes the k² logits, their softmax and the weighted sum of values.
//
// Layout. q, k, v are [N, heads, H, W, head_dim] with head_dim contiguous and any other strides, so
// they can be zero-copy views of the qkv projection written as [N, H, W, 3·C] (channels-last, channels
// ordered [q|k|v][head][head_dim]): that is what split_qkv returns. A q/k/v whose head_dim is not
// contiguous (e.g. views of an NCHW conv output) is copied first. neighborhood_attention_qkv takes
// that projection itself, [N, 3·C, H, W] (channels-last: no copy), and returns its gradient as one
// tensor written in place by the kernels (with three views, autograd would stack three gradients). The output is [N, heads, H, W,
// head_dim] stored as [N, H, W, heads, head_dim]: merge_heads views it as the [N, C, H, W]
// channels-last tensor that the output projection takes.
//
// Memory. Forward allocates the output and the log-sum-exp of the logits ([N, heads, H, W], float)
// and saves q, k, v, rpb and that for backward: the attention weights are recomputed in backward
// rather than stored (k² per query and head would be more than the output itself for head_dim < k²).
// Backward allocates dq, dk, dv, per thread 2·H·W·k² floats (the weights and logit gradients of one
// (n, head) plane at a time) and (with rpb) [N·heads, (2k-1)²] partial bias gradients; no atomics,
// so results do not depend on the thread count. On CUDA: one number per query (and with rpb at most
// [64, heads, (2k-1)²] partial sums), no atomics either: the same bits from run to run.
//
// Dtypes float32, float64, bfloat16, float16 (all accumulate in float, or double for double); rpb of
// any floating dtype (its gradient comes back in that dtype). CPU, and CUDA in builds with CUDA
// kernels (ATTNKIT_WITH_CUDA; elsewhere CUDA tensors are an error and LocalAttention2d runs its
// composite path there). Double backward is not supported.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>
#include <tuple>

namespace attnkit::ops {

/// The fused op. q, k, v: [N, heads, H, W, head_dim], same sizes, dtype and device; rpb: [heads,
/// 2k-1, 2k-1] or undefined; H, W >= kernel_size·dilation. Validates with messages naming the argument.
at::Tensor neighborhood_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                  const at::Tensor& rpb, int64_t kernel_size, int64_t dilation = 1,
                                  std::optional<double> scale = std::nullopt);

/// The same op on the packed projection qkv [N, 3·heads·head_dim, H, W], channels [q|k|v][head][head_dim]
/// (the 1×1 conv's output; channels-last is read in place, other layouts are copied once).
/// torch.ops.attnkit.neighborhood_attention_qkv.
at::Tensor neighborhood_attention_qkv(const at::Tensor& qkv, int64_t heads, const at::Tensor& rpb,
                                      int64_t kernel_size, int64_t dilation = 1,
                                      std::optional<double> scale = std::nullopt);

/// q, k, v as [N, heads, H, W, head_dim] views of the qkv projection `qkv` [N, 3·heads·head_dim, H, W]
/// (channels [q|k|v][head][head_dim]); zero-copy when qkv is channels-last, else one copy to it.
std::tuple<at::Tensor, at::Tensor, at::Tensor> split_qkv(const at::Tensor& qkv, int64_t heads);

/// The op's output [N, heads, H, W, head_dim] as [N, heads·head_dim, H, W] (a channels-last view of
/// the op's own output; a copy for other strides).
at::Tensor merge_heads(const at::Tensor& out);

/// True when attnkit has a fused neighborhood attention kernel for tensors on this device (CPU; CUDA
/// in builds with CUDA kernels).
bool has_neighborhood_attention_kernel(const at::Device& device);

}  // namespace attnkit::ops
