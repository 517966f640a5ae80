// CUDA kernels of the fused self-attention op (attnkit::ops::relpos_attention): flash-attention-2
// on the GPU, with the Swin bias gathered from the flipped table (see relpos_attention_kernels.h).
//
// Threads: blocks of 4 warps. A warp owns `kRows` rows of the block (queries in forward and dq,
// keys in dk/dv); a lane owns one column of the 32-wide tile streamed past them (a key, or a query)
// while the logits are made, and 1/32 of the head dim while the products with V, K, Q or dO are
// accumulated, in registers. The streamed tile is staged in shared memory with rows padded to D + 1
// (conflict-free when each lane reads its own row); the block's own rows are staged once.
//   forward: one block per (n, head, tile of rows); online softmax per row (running max and sum);
//            writes out and logsumexp.
//   backward: delta = rowsum(dO ∘ O); dq (one pass over the key tiles per query tile) and dk, dv (one
//            pass over the query tiles per key tile), each recomputing P = exp(S - lse) from the
//            logsumexp, so that every output element has one writer: no atomics.
//   table gradient (dq pass): each warp adds its rows' dS, row after row, into a shared-memory window
//            of the table indices that the (query tile, key tile) pair touches; the four windows are
//            summed in warp order into a partial table private to the block, and the partials are
//            summed in order at the end. The dq blocks loop over their work (a grid of
//            about the resident capacity per head) so that the partials stay few: deterministic on
//            one GPU (the grid depends on its SM count, so the last bits may differ between GPUs).
// The head dim is a template bucket D in {32, 64, 128, 256}, zero-padded in shared memory (so d ≤ 256).
// Inputs in any floating dtype, read and written natively; arithmetic in float (double for double).
// Never run here (no GPU on the machine that wrote it): tests/test_fused_self_attention.cpp's CUDA
// cases and compute-sanitizer are what check it.
#include <attnkit/modules/ops/relpos_attention.h>
#include "../detail/relpos_attention_kernels.h"

#include <ATen/AccumulateType.h>
#include <ATen/Dispatch.h>
#include <ATen/cuda/CUDAContext.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAGuard.h>

#include <algorithm>
#include <climits>
#include <type_traits>

namespace attnkit::ops::cuda {
namespace {

using at::Tensor;

constexpr const char* kWho = "attnkit::relpos_attention (CUDA): ";
constexpr int kWarps = 4, kThreads = kWarps * 32;
constexpr int kTile = 32;  // the streamed tile: one key (or query) per lane

template <typename T>
using acc_t = at::acc_type<T, /*is_cuda=*/true>;  // float, double for double

/// Rows per warp for head-dim bucket D: 16 / 8 accumulators per lane and operand (float / double).
template <int D, typename A>
constexpr int rows_per_warp() {
  const int r = (sizeof(A) == 8 ? 256 : 512) / D;
  return r > 8 ? 8 : (r < 1 ? 1 : r);
}

__device__ __forceinline__ float exp_(float x) { return expf(x); }
__device__ __forceinline__ double exp_(double x) { return ::exp(x); }
__device__ __forceinline__ float log_(float x) { return logf(x); }
__device__ __forceinline__ double log_(double x) { return ::log(x); }

template <typename A>
__device__ __forceinline__ A nan_max(A a, A b) {
  return (b > a || b != b) ? b : a;
}
// Butterfly reductions: every lane gets the result.
template <typename A>
__device__ __forceinline__ A warp_max(A v) {
  for (int o = 16; o > 0; o >>= 1) v = nan_max(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}
template <typename A>
__device__ __forceinline__ A warp_sum(A v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

/// A [N, heads, L, d] tensor with unit last stride.
template <typename P>
struct Rows {
  P* base;
  int64_t sn, sh, sl;
  __device__ P* row(int64_t b, int heads, int64_t l) const { return base + (b / heads) * sn + (b % heads) * sh + l * sl; }
};
template <typename T>
Rows<const T> rows_of(const Tensor& t) {
  return {t.data_ptr<T>(), t.stride(0), t.stride(1), t.stride(2)};
}
template <typename T>
Rows<T> mutable_rows_of(Tensor& t) {
  return {t.data_ptr<T>(), t.stride(0), t.stride(1), t.stride(2)};
}

/// The problem's sizes, and the flipped-table geometry: bias(i, j) = rtab[h][base(i) + off(j)].
struct Map {
  int heads, L, d, H, W, T;
  __device__ int off(int j) const { return (j / W) * (2 * W - 1) + j % W; }
  __device__ int base(int i) const { return T - 1 - ((i / W + H - 1) * (2 * W - 1) + i % W + W - 1); }
};

/// Stages rows [first, first + count) of t (rows ≥ L and columns ≥ d as zeros) into dst[r][c],
/// row stride `ld`, as A.
template <int D, typename T, typename A>
__device__ __forceinline__ void stage(A* dst, int ld, const Rows<const T>& t, int64_t b, int64_t first, int count,
                                      const Map& m) {
  for (int e = threadIdx.x; e < count * D; e += kThreads) {
    const int r = e / D, c = e % D;
    const int64_t l = first + r;
    dst[r * ld + c] = (l < m.L && c < m.d) ? static_cast<A>(t.row(b, m.heads, l)[c]) : A(0);
  }
}

// ---------------------------------------------------------------------------------------------
// Forward: block = kWarps·R queries of one (n, head); lane = key of the streamed tile, then 1/32 of d.
template <typename T, int D>
__global__ void __launch_bounds__(kThreads)
    forward_kernel(Rows<const T> q, Rows<const T> k, Rows<const T> v, const acc_t<T>* __restrict__ rtab, Map m,
                   acc_t<T> scale, int query_tiles, Rows<T> out, acc_t<T>* __restrict__ lse) {
  using A = acc_t<T>;
  constexpr int R = rows_per_warp<D, A>(), BR = kWarps * R, NC = D / 32;
  extern __shared__ __align__(16) unsigned char smem[];
  A* q_s = reinterpret_cast<A*>(smem);  // [BR][D]
  A* k_s = q_s + BR * D;                // [kTile][D + 1]
  A* v_s = k_s + kTile * (D + 1);       // [kTile][D]
  A* p_s = v_s + kTile * D;             // [kWarps][R][kTile]

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t b = blockIdx.x / query_tiles;
  const int i0 = static_cast<int>(blockIdx.x % query_tiles) * BR;
  const A* table = rtab ? rtab + static_cast<int64_t>(b % m.heads) * m.T : nullptr;
  A* p_w = p_s + warp * R * kTile;
  stage<D>(q_s, D, q, b, i0, BR, m);

  A mx[R], sum[R], o[R][NC];
  int qbase[R];
#pragma unroll
  for (int r = 0; r < R; ++r) {
    mx[r] = -INFINITY;
    sum[r] = 0;
#pragma unroll
    for (int t = 0; t < NC; ++t) o[r][t] = 0;
    qbase[r] = m.base(min(i0 + warp * R + r, m.L - 1));  // rows past L: any index in range
  }

  for (int j0 = 0; j0 < m.L; j0 += kTile) {
    __syncthreads();  // the previous tile is consumed (and q_s is staged)
    stage<D>(k_s, D + 1, k, b, j0, kTile, m);
    stage<D>(v_s, D, v, b, j0, kTile, m);
    __syncthreads();
    const int j = j0 + lane;
    const bool key_ok = j < m.L;
    A s[R];
#pragma unroll
    for (int r = 0; r < R; ++r) s[r] = 0;
#pragma unroll 8
    for (int c = 0; c < D; ++c) {
      const A kc = k_s[lane * (D + 1) + c];
#pragma unroll
      for (int r = 0; r < R; ++r) s[r] += q_s[(warp * R + r) * D + c] * kc;
    }
    const int offj = key_ok ? m.off(j) : 0;
#pragma unroll
    for (int r = 0; r < R; ++r) {
      const A logit = key_ok ? s[r] * scale + (table ? table[qbase[r] + offj] : A(0)) : A(-INFINITY);
      const A m_new = nan_max(mx[r], warp_max(logit));
      const A m_use = m_new == A(-INFINITY) ? A(0) : m_new;  // all -inf so far: keep zeros, no NaN
      const A p = exp_(logit - m_use);
      const A factor = exp_(mx[r] - m_use);
      sum[r] = sum[r] * factor + warp_sum(p);
      mx[r] = m_new;
#pragma unroll
      for (int t = 0; t < NC; ++t) o[r][t] *= factor;
      p_w[r * kTile + lane] = p;
    }
    __syncwarp();
#pragma unroll 4
    for (int jj = 0; jj < kTile; ++jj) {
#pragma unroll
      for (int t = 0; t < NC; ++t) {
        const A vv = v_s[jj * D + lane + 32 * t];
#pragma unroll
        for (int r = 0; r < R; ++r) o[r][t] += p_w[r * kTile + jj] * vv;
      }
    }
  }
#pragma unroll
  for (int r = 0; r < R; ++r) {
    const int i = i0 + warp * R + r;
    if (i >= m.L) continue;
    const A inv = A(1) / sum[r];
    T* dst = out.row(b, m.heads, i);
#pragma unroll
    for (int t = 0; t < NC; ++t) {
      const int c = lane + 32 * t;
      if (c < m.d) dst[c] = static_cast<T>(o[r][t] * inv);
    }
    if (lane == 0) lse[b * m.L + i] = mx[r] + log_(sum[r]);
  }
}

// ---------------------------------------------------------------------------------------------
// Backward, first pass: delta[b, i] = Σ_c dout · out (one warp per row).
template <typename T>
__global__ void __launch_bounds__(kThreads)
    delta_kernel(Rows<const T> dout, Rows<const T> out, Map m, int64_t rows, acc_t<T>* __restrict__ delta) {
  using A = acc_t<T>;
  const int lane = threadIdx.x % 32;
  const int64_t warps = static_cast<int64_t>(gridDim.x) * kWarps;
  for (int64_t w = blockIdx.x * static_cast<int64_t>(kWarps) + threadIdx.x / 32; w < rows; w += warps) {
    const int64_t b = w / m.L, i = w % m.L;
    const T* g = dout.row(b, m.heads, i);
    const T* o = out.row(b, m.heads, i);
    A acc = 0;
    for (int c = lane; c < m.d; c += 32) acc += static_cast<A>(g[c]) * static_cast<A>(o[c]);
    acc = warp_sum(acc);
    if (lane == 0) delta[w] = acc;
  }
}

// dq, and the table gradient. Grid: (slots, heads); block (s, h) takes work items s, s + slots, ...
// of its head (item = (n, query tile)). partial: [slots, heads, T] zeros, or null (no table gradient).
template <typename T, int D>
__global__ void __launch_bounds__(kThreads)
    dq_kernel(Rows<const T> q, Rows<const T> k, Rows<const T> v, Rows<const T> dout, const acc_t<T>* __restrict__ lse,
              const acc_t<T>* __restrict__ delta, const acc_t<T>* __restrict__ rtab, Map m, acc_t<T> scale,
              int query_tiles, int64_t items, Rows<T> dq, acc_t<T>* __restrict__ partial, int window) {
  using A = acc_t<T>;
  constexpr int R = rows_per_warp<D, A>(), BR = kWarps * R, NC = D / 32;
  extern __shared__ __align__(16) unsigned char smem[];
  A* q_s = reinterpret_cast<A*>(smem);  // [BR][D]
  A* g_s = q_s + BR * D;                // dout [BR][D]
  A* k_s = g_s + BR * D;                // [kTile][D + 1]
  A* v_s = k_s + kTile * (D + 1);       // [kTile][D + 1]
  A* ds_s = v_s + kTile * (D + 1);      // [kWarps][R][kTile]
  A* win_s = ds_s + kWarps * R * kTile;  // [kWarps][window]

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, h = blockIdx.y;
  const A* table = rtab ? rtab + static_cast<int64_t>(h) * m.T : nullptr;
  A* part = partial ? partial + (static_cast<int64_t>(blockIdx.x) * m.heads + h) * m.T : nullptr;
  A* ds_w = ds_s + warp * R * kTile;
  A* win_w = win_s + warp * window;
  if (part)
    for (int e = threadIdx.x; e < kWarps * window; e += kThreads) win_s[e] = 0;

  for (int64_t item = blockIdx.x; item < items; item += gridDim.x) {
    const int64_t b = (item / query_tiles) * m.heads + h;
    const int i0 = static_cast<int>(item % query_tiles) * BR;
    __syncthreads();  // the previous item is done with q_s, g_s
    stage<D>(q_s, D, q, b, i0, BR, m);
    stage<D>(g_s, D, dout, b, i0, BR, m);
    A acc[R][NC], row_lse[R], row_delta[R];
    int qbase[R];
    bool row_ok[R];
#pragma unroll
    for (int r = 0; r < R; ++r) {
      const int i = i0 + warp * R + r;
      row_ok[r] = i < m.L;
      row_lse[r] = row_ok[r] ? lse[b * m.L + i] : A(0);
      row_delta[r] = row_ok[r] ? delta[b * m.L + i] : A(0);
      qbase[r] = m.base(min(i, m.L - 1));
#pragma unroll
      for (int t = 0; t < NC; ++t) acc[r][t] = 0;
    }
    // The table indices of this query tile lie in [base(last row), base(i0)] + off(key).
    const int base_lo = m.base(min(i0 + BR - 1, m.L - 1)), base_hi = m.base(i0);

    for (int j0 = 0; j0 < m.L; j0 += kTile) {
      __syncthreads();  // the previous tile is consumed and its window flushed (q_s, g_s staged)
      stage<D>(k_s, D + 1, k, b, j0, kTile, m);
      stage<D>(v_s, D + 1, v, b, j0, kTile, m);
      __syncthreads();
      const int j = j0 + lane;
      const bool key_ok = j < m.L;
      const int offj = key_ok ? m.off(j) : 0;
      A s[R], dp[R];
#pragma unroll
      for (int r = 0; r < R; ++r) s[r] = dp[r] = 0;
#pragma unroll 8
      for (int c = 0; c < D; ++c) {
        const A kc = k_s[lane * (D + 1) + c], vc = v_s[lane * (D + 1) + c];
#pragma unroll
        for (int r = 0; r < R; ++r) {
          s[r] += q_s[(warp * R + r) * D + c] * kc;
          dp[r] += g_s[(warp * R + r) * D + c] * vc;
        }
      }
#pragma unroll
      for (int r = 0; r < R; ++r) {
        A ds = 0;
        if (key_ok && row_ok[r]) {
          const A p = exp_(s[r] * scale + (table ? table[qbase[r] + offj] : A(0)) - row_lse[r]);
          ds = p * (dp[r] - row_delta[r]);
        }
        ds_w[r * kTile + lane] = ds;
      }
      __syncwarp();
      // dq_i += dS_ij k_j (scaled at the end)
#pragma unroll 4
      for (int jj = 0; jj < kTile; ++jj) {
#pragma unroll
        for (int t = 0; t < NC; ++t) {
          const A kv = k_s[jj * (D + 1) + lane + 32 * t];
#pragma unroll
          for (int r = 0; r < R; ++r) acc[r][t] += ds_w[r * kTile + jj] * kv;
        }
      }
      if (!part) continue;
      // Table gradient: the warp's rows in order into its window (within a row the indices differ).
      const int j_last = min(j0 + kTile, m.L) - 1;
      const int lo = base_lo + m.off(j0);
      const int used = base_hi - base_lo + m.off(j_last) - m.off(j0) + 1;
#pragma unroll
      for (int r = 0; r < R; ++r) {
        if (key_ok && row_ok[r]) win_w[qbase[r] + offj - lo] += ds_w[r * kTile + lane];
        __syncwarp();
      }
      __syncthreads();
      for (int e = threadIdx.x; e < used; e += kThreads) {
        A total = 0;
#pragma unroll
        for (int w = 0; w < kWarps; ++w) {
          total += win_s[w * window + e];
          win_s[w * window + e] = 0;
        }
        part[lo + e] += total;
      }
    }
#pragma unroll
    for (int r = 0; r < R; ++r) {
      if (!row_ok[r]) continue;
      T* dst = dq.row(b, m.heads, i0 + warp * R + r);
#pragma unroll
      for (int t = 0; t < NC; ++t) {
        const int c = lane + 32 * t;
        if (c < m.d) dst[c] = static_cast<T>(acc[r][t] * scale);
      }
    }
  }
}

// dk and dv: block = kWarps·R keys of one (n, head); lane = query of the streamed tile, then 1/32 of d.
template <typename T, int D>
__global__ void __launch_bounds__(kThreads)
    dkdv_kernel(Rows<const T> q, Rows<const T> k, Rows<const T> v, Rows<const T> dout, const acc_t<T>* __restrict__ lse,
                const acc_t<T>* __restrict__ delta, const acc_t<T>* __restrict__ rtab, Map m, acc_t<T> scale,
                int key_tiles, Rows<T> dk, Rows<T> dv) {
  using A = acc_t<T>;
  constexpr int R = rows_per_warp<D, A>(), BR = kWarps * R, NC = D / 32;
  extern __shared__ __align__(16) unsigned char smem[];
  A* k_s = reinterpret_cast<A*>(smem);  // [BR][D]
  A* v_s = k_s + BR * D;                // [BR][D]
  A* q_s = v_s + BR * D;                // [kTile][D + 1]
  A* g_s = q_s + kTile * (D + 1);       // dout [kTile][D + 1]
  A* p_s = g_s + kTile * (D + 1);       // [kWarps][R][kTile]
  A* ds_s = p_s + kWarps * R * kTile;   // [kWarps][R][kTile]
  A* lse_s = ds_s + kWarps * R * kTile;  // [kTile]
  A* delta_s = lse_s + kTile;           // [kTile]

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t b = blockIdx.x / key_tiles;
  const int j0 = static_cast<int>(blockIdx.x % key_tiles) * BR;
  const A* table = rtab ? rtab + static_cast<int64_t>(b % m.heads) * m.T : nullptr;
  A* p_w = p_s + warp * R * kTile;
  A* ds_w = ds_s + warp * R * kTile;
  stage<D>(k_s, D, k, b, j0, BR, m);
  stage<D>(v_s, D, v, b, j0, BR, m);

  A adk[R][NC], adv[R][NC];
  int koff[R];
  bool key_ok[R];
#pragma unroll
  for (int r = 0; r < R; ++r) {
    const int j = j0 + warp * R + r;
    key_ok[r] = j < m.L;
    koff[r] = m.off(min(j, m.L - 1));
#pragma unroll
    for (int t = 0; t < NC; ++t) adk[r][t] = adv[r][t] = 0;
  }

  for (int i0 = 0; i0 < m.L; i0 += kTile) {
    __syncthreads();  // the previous tile is consumed (and k_s, v_s are staged)
    stage<D>(q_s, D + 1, q, b, i0, kTile, m);
    stage<D>(g_s, D + 1, dout, b, i0, kTile, m);
    if (threadIdx.x < kTile) {
      const int i = i0 + threadIdx.x;
      lse_s[threadIdx.x] = i < m.L ? lse[b * m.L + i] : A(0);
      delta_s[threadIdx.x] = i < m.L ? delta[b * m.L + i] : A(0);
    }
    __syncthreads();
    const int i = i0 + lane;
    const bool query_ok = i < m.L;
    const int qb = m.base(min(i, m.L - 1));
    A s[R], dp[R];
#pragma unroll
    for (int r = 0; r < R; ++r) s[r] = dp[r] = 0;
#pragma unroll 8
    for (int c = 0; c < D; ++c) {
      const A qc = q_s[lane * (D + 1) + c], gc = g_s[lane * (D + 1) + c];
#pragma unroll
      for (int r = 0; r < R; ++r) {
        s[r] += qc * k_s[(warp * R + r) * D + c];
        dp[r] += gc * v_s[(warp * R + r) * D + c];
      }
    }
#pragma unroll
    for (int r = 0; r < R; ++r) {
      A p = 0;
      if (query_ok && key_ok[r]) p = exp_(s[r] * scale + (table ? table[qb + koff[r]] : A(0)) - lse_s[lane]);
      p_w[r * kTile + lane] = p;
      ds_w[r * kTile + lane] = p * (dp[r] - delta_s[lane]);
    }
    __syncwarp();
    // dv_j += P_ij dout_i;  dk_j += dS_ij q_i (scaled at the end)
#pragma unroll 4
    for (int ii = 0; ii < kTile; ++ii) {
#pragma unroll
      for (int t = 0; t < NC; ++t) {
        const A gv = g_s[ii * (D + 1) + lane + 32 * t], qv = q_s[ii * (D + 1) + lane + 32 * t];
#pragma unroll
        for (int r = 0; r < R; ++r) {
          adv[r][t] += p_w[r * kTile + ii] * gv;
          adk[r][t] += ds_w[r * kTile + ii] * qv;
        }
      }
    }
  }
#pragma unroll
  for (int r = 0; r < R; ++r) {
    if (!key_ok[r]) continue;
    const int j = j0 + warp * R + r;
    T* dk_row = dk.row(b, m.heads, j);
    T* dv_row = dv.row(b, m.heads, j);
#pragma unroll
    for (int t = 0; t < NC; ++t) {
      const int c = lane + 32 * t;
      if (c >= m.d) continue;
      dk_row[c] = static_cast<T>(adk[r][t] * scale);
      dv_row[c] = static_cast<T>(adv[r][t]);
    }
  }
}

// dtable[t, h] = Σ_s partial[s, h, T - 1 - t], s in order.
template <typename A>
__global__ void __launch_bounds__(kThreads)
    reduce_table_kernel(const A* __restrict__ partial, int slots, int heads, int T, A* __restrict__ dtable) {
  const int64_t total = static_cast<int64_t>(T) * heads;
  for (int64_t e = blockIdx.x * static_cast<int64_t>(kThreads) + threadIdx.x; e < total;
       e += static_cast<int64_t>(gridDim.x) * kThreads) {
    const int t = static_cast<int>(e / heads), h = static_cast<int>(e % heads);
    A acc = 0;
    for (int s = 0; s < slots; ++s) acc += partial[(static_cast<int64_t>(s) * heads + h) * T + (T - 1 - t)];
    dtable[e] = acc;
  }
}

// ---------------------------------------------------------------------------------------------
Map map_of(const Tensor& q, int64_t height, int64_t width) {
  const int64_t L = q.size(2), T = (2 * height - 1) * (2 * width - 1);
  TORCH_CHECK(q.size(3) <= kRelposAttentionMaxCudaHeadDim, kWho, "head dim d = ", q.size(3),
              " is above the CUDA kernels' ", kRelposAttentionMaxCudaHeadDim, "; use Implementation::Composite");
  TORCH_CHECK(T < INT_MAX / 2 && q.size(1) < 65536, kWho, "map ", height, "x", width, " or heads ", q.size(1),
              " too large for the CUDA kernels");
  return {static_cast<int>(q.size(1)), static_cast<int>(L), static_cast<int>(q.size(3)), static_cast<int>(height),
          static_cast<int>(width), static_cast<int>(T)};
}

/// Calls f(std::integral_constant<int, D>) for the smallest bucket D ≥ d.
template <typename F>
void with_head_dim(int d, F&& f) {
  if (d <= 32) f(std::integral_constant<int, 32>{});
  else if (d <= 64) f(std::integral_constant<int, 64>{});
  else if (d <= 128) f(std::integral_constant<int, 128>{});
  else f(std::integral_constant<int, 256>{});
}

/// Lets `kernel` use `bytes` of dynamic shared memory (an error naming the sizes where the GPU has less).
template <typename Kernel>
void allow_shared_memory(Kernel kernel, size_t bytes, const Map& m, const char* pass) {
  const auto* prop = at::cuda::getCurrentDeviceProperties();
  TORCH_CHECK(bytes <= prop->sharedMemPerBlockOptin, kWho, pass, " needs ", bytes,
              " bytes of shared memory per block for head dim ", m.d, " and map width ", m.W, ", this GPU has ",
              prop->sharedMemPerBlockOptin, "; use Implementation::Composite");
  if (bytes > 48 * 1024)
    C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes)));
}

unsigned grid_for(int64_t blocks) {
  TORCH_CHECK(blocks < INT_MAX, kWho, "too many blocks (", blocks, ")");
  return static_cast<unsigned>(blocks);
}

/// The largest span off(a + n) - off(a) of n + 1 consecutive positions: n plus W - 1 per row crossed.
int64_t span(int64_t n, const Map& m) {
  return n + static_cast<int64_t>(m.W - 1) * std::min<int64_t>(m.H - 1, (n + m.W - 1) / m.W);
}

#define ATTNKIT_RELPOS_CUDA_DISPATCH(t, name, ...) \
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, t, name, __VA_ARGS__)

template <typename A>
const A* opt_ptr(const Tensor& t) {
  return t.defined() ? t.data_ptr<A>() : nullptr;
}

void forward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& rtab, int64_t height, int64_t width,
             double scale, Tensor& out, Tensor& lse) {
  const c10::cuda::CUDAGuard guard(q.device());
  const Map m = map_of(q, height, width);
  const int64_t B = q.size(0) * q.size(1);
  if (B == 0) return;
  auto stream = at::cuda::getCurrentCUDAStream();
  ATTNKIT_RELPOS_CUDA_DISPATCH(q.scalar_type(), "attnkit::relpos_attention_cuda", [&] {
    using T = scalar_t;
    using A = acc_t<T>;
    with_head_dim(m.d, [&](auto dim) {
      constexpr int D = decltype(dim)::value, BR = kWarps * rows_per_warp<D, A>();
      const int tiles = (m.L + BR - 1) / BR;
      const size_t bytes = sizeof(A) * (BR * D + kTile * (D + 1) + kTile * D + kWarps * rows_per_warp<D, A>() * kTile);
      auto kernel = forward_kernel<T, D>;
      allow_shared_memory(kernel, bytes, m, "forward");
      kernel<<<grid_for(B * tiles), kThreads, bytes, stream>>>(rows_of<T>(q), rows_of<T>(k), rows_of<T>(v),
                                                               opt_ptr<A>(rtab), m, static_cast<A>(scale), tiles,
                                                               mutable_rows_of<T>(out), lse.data_ptr<A>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
}

void backward(const Tensor& dout, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out,
              const Tensor& lse, const Tensor& rtab, int64_t height, int64_t width, double scale, Tensor& dq,
              Tensor& dk, Tensor& dv, Tensor& dtable) {
  const c10::cuda::CUDAGuard guard(q.device());
  const Map m = map_of(q, height, width);
  const int64_t N = q.size(0), B = N * q.size(1);
  const bool want_table = dtable.defined() && rtab.defined();
  if (B == 0) {
    if (dtable.defined()) dtable.zero_();
    return;
  }
  auto stream = at::cuda::getCurrentCUDAStream();
  const auto* prop = at::cuda::getCurrentDeviceProperties();
  ATTNKIT_RELPOS_CUDA_DISPATCH(q.scalar_type(), "attnkit::relpos_attention_backward_cuda", [&] {
    using T = scalar_t;
    using A = acc_t<T>;
    Tensor delta = at::empty({B * m.L}, lse.options());
    delta_kernel<T><<<grid_for(std::min<int64_t>((B * m.L + kWarps - 1) / kWarps, 65535 * 8)), kThreads, 0, stream>>>(
        rows_of<T>(dout), rows_of<T>(out), m, B * m.L, delta.data_ptr<A>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    with_head_dim(m.d, [&](auto dim) {
      constexpr int D = decltype(dim)::value, R = rows_per_warp<D, A>(), BR = kWarps * R;
      const int tiles = (m.L + BR - 1) / BR;
      // dk, dv
      {
        const size_t bytes = sizeof(A) * (2 * BR * D + 2 * kTile * (D + 1) + 2 * kWarps * R * kTile + 2 * kTile);
        auto kernel = dkdv_kernel<T, D>;
        allow_shared_memory(kernel, bytes, m, "backward (dk, dv)");
        kernel<<<grid_for(B * tiles), kThreads, bytes, stream>>>(
            rows_of<T>(q), rows_of<T>(k), rows_of<T>(v), rows_of<T>(dout), lse.data_ptr<A>(), delta.data_ptr<A>(),
            opt_ptr<A>(rtab), m, static_cast<A>(scale), tiles, mutable_rows_of<T>(dk), mutable_rows_of<T>(dv));
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      }
      // dq and the table gradient
      const int window = want_table ? static_cast<int>(span(BR - 1, m) + span(kTile - 1, m) + 1) : 0;
      const size_t bytes =
          sizeof(A) * (2 * BR * D + 2 * kTile * (D + 1) + kWarps * R * kTile + static_cast<size_t>(kWarps) * window);
      auto kernel = dq_kernel<T, D>;
      allow_shared_memory(kernel, bytes, m, "backward (dq, table)");
      const int64_t items = N * tiles;  // per head
      int64_t slots = items;
      Tensor partial;
      if (want_table) {
        // About one resident wave over all heads: few partial tables, each block busy.
        int per_sm = 0;
        C10_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, kThreads, bytes));
        const int64_t wave = static_cast<int64_t>(std::max(per_sm, 1)) * prop->multiProcessorCount;
        slots = std::clamp<int64_t>((wave + m.heads - 1) / m.heads, 1, items);
        partial = at::zeros({slots * m.heads * m.T}, lse.options());
      }
      kernel<<<dim3(grid_for(slots), static_cast<unsigned>(m.heads)), kThreads, bytes, stream>>>(
          rows_of<T>(q), rows_of<T>(k), rows_of<T>(v), rows_of<T>(dout), lse.data_ptr<A>(), delta.data_ptr<A>(),
          opt_ptr<A>(rtab), m, static_cast<A>(scale), tiles, items, mutable_rows_of<T>(dq), want_table ? partial.data_ptr<A>() : nullptr,
          window);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      if (want_table) {
        const int64_t total = static_cast<int64_t>(m.T) * m.heads;
        reduce_table_kernel<A><<<grid_for(std::min<int64_t>((total + kThreads - 1) / kThreads, 65535 * 8)), kThreads,
                                 0, stream>>>(partial.data_ptr<A>(), static_cast<int>(slots), m.heads, m.T,
                                              dtable.data_ptr<A>());
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      }
    });
  });
  if (dtable.defined() && !want_table) dtable.zero_();
}

}  // namespace

const RelposAttentionKernelTable& relpos_attention_kernels() {
  static const RelposAttentionKernelTable table{forward, backward};
  return table;
}

}  // namespace attnkit::ops::cuda
