// The kernels of the fused self-attention op (attnkit::ops::relpos_attention): one table per CPU
// instruction set, and one for CUDA.
//
// Flash-attention-2 on the CPU: the queries of one (n, head) are cut into tiles of 64 or 256 rows
// and the keys into tiles of 512; a tile of logits S = scale·Q Kᵀ (+ bias) is at most 256 × 512,
// lives in a per-thread buffer and is never written out, so memory is
// O(L·d) whatever L is. Forward keeps a running max and sum per query row (online softmax) and
// saves logsumexp; backward recomputes each tile of probabilities from logsumexp.
//
// The relative position bias is looked up on the fly. With the Swin index
//   idx(i, j) = (y_i - y_j + H - 1)(2W - 1) + (x_i - x_j + W - 1)
// and the table flipped along its rows (rtab[t] = table[T - 1 - t], T = (2H-1)(2W-1)), the bias of
// query i and key j is rtab[c_i + off_j] with c_i = T - 1 - idx(i, 0) and off_j = y_j(2W - 1) + x_j:
// within one map row of keys it is a contiguous run of rtab, so adding it (and accumulating its
// gradient) is a vector add per run.
//
// Tensors: q, k, v, out, dout, dq, dk, dv are [N, heads, L, d] with the last stride 1 and any other
// strides (a row stride of at least d), all of one dtype: float or double for the CPU table (the op
// upcasts bfloat16/half), any floating dtype for the CUDA table (read natively, float arithmetic).
// lse is [N, heads, L] contiguous in the accumulation dtype (double for double, float otherwise).
// rtab is [heads, T] contiguous, accumulation dtype, or undefined (no bias); dtable is [T, heads]
// contiguous (the table's own orientation), accumulation dtype, or undefined.
//
// CPU: modules/ops/cpu/relpos_attention_kernel.cpp, one copy per CPU capability.
// CUDA: modules/ops/cuda/relpos_attention_kernel.cu (head dim d ≤ 256; the same tiling idea with
// 32-wide tiles, see that file), only in builds with CUDA kernels.
#pragma once

#include <ATen/core/Tensor.h>

namespace attnkit::ops {

struct RelposAttentionKernelTable {
  /// out = softmax(scale·q kᵀ + bias) v; lse = logsumexp of each row of logits.
  void (*forward)(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& rtab,
                  int64_t height, int64_t width, double scale, at::Tensor& out, at::Tensor& lse);
  /// dq, dk, dv (overwritten) and, when defined, dtable (overwritten). Deterministic. CPU: the same
  /// bits for any thread count (each (n, head) is one task, the table gradient summed over n in a
  /// fixed order). CUDA: the same bits run to run on one GPU (no atomics; the table gradient's
  /// partial sums depend on the GPU's SM count).
  void (*backward)(const at::Tensor& dout, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                   const at::Tensor& out, const at::Tensor& lse, const at::Tensor& rtab, int64_t height,
                   int64_t width, double scale, at::Tensor& dq, at::Tensor& dk, at::Tensor& dv, at::Tensor& dtable);
};

namespace cpu {
/// The kernels for the best instruction set this CPU supports.
const RelposAttentionKernelTable& relpos_attention_kernels();
}  // namespace cpu

namespace cuda {
/// The CUDA kernels (defined only when attnkit is built with CUDA kernels).
const RelposAttentionKernelTable& relpos_attention_kernels();
}  // namespace cuda

}  // namespace attnkit::ops
