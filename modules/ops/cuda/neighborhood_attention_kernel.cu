// CUDA kernels of the fused neighborhood attention op: the same passes and window geometry as the
// CPU table (see neighborhood_attention_kernels.h); the per-axis window tables (NeighborhoodGeometry)
// are copied to the device as one small int64 tensor per call.
//
// Thread mapping: a *group* of G lanes per query (forward, backward's query pass) or per key (key
// pass), G = the power of two >= head_dim, at most 32 (so groups never straddle a warp). Lane l of a
// group owns head_dim elements l, l+G, l+2G, ... Why:
//   - the G lanes read G consecutive elements of one key/value row: each load is one coalesced
//     segment, whatever the strides between rows (q, k, v are usually views of a channels-last
//     projection, rows 3·C apart);
//   - a dot product is a per-lane partial sum and log2(G) shuffles within the group: no shared
//     memory, no __syncthreads; the xor butterfly leaves the same bits in every lane, so every lane
//     takes the same softmax branch;
//   - for head_dim < 32 (8 or 16 are common) several queries share a warp instead of idling lanes;
//   - queries are numbered with x fastest, so the groups of a block are neighbouring queries whose
//     windows share all but one column of keys: most key/value loads hit L1.
// Shuffles name only the group's lanes (mask), so groups of one warp may loop a different number
// of times (key pass: border keys are in more windows). Each lane accumulates at most kPerLane
// elements in registers; head_dim > G·kPerLane (> 256) runs in chunks, recomputing the logits.
//
// Forward: one pass over the k² slots with an online softmax (running maximum and sum, rescaled
// accumulator); writes out and lse.
// Backward recomputes P = exp(logit - lse) and dS = P·(dO·v - Δ) where needed instead of storing
// k² numbers per query (O(1) extra memory per query), and has no atomics (each output element is
// written by one group in a fixed order: results are the same bits from run to run):
//   query pass (group per query): Δ = Σ P·(dO·v) over the window (which is dO·out) into a
//     [queries] buffer, then dq = scale · Σ dS·k;
//   key pass (group per key, only when dk/dv are wanted): dk = scale · Σ dS·q and dv = Σ P·dO over
//     the queries whose windows hold the key (the inverse window rule: WindowAxis first_query ..
//     last_query, stepping by the dilation);
//   bias pass (with rpb): a block per (head, table entry, batch slice) sums dS over the (query, key)
//     pairs at that relative offset into a partial table [slices, heads, (2k-1)²], summed over
//     slices afterwards.
// Accumulation is in float (double for double inputs), as on the CPU.
#include "../detail/neighborhood_attention_kernels.h"

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include <algorithm>
#include <limits>
#include <vector>

namespace attnkit::ops::cuda {
namespace {

using at::Tensor;

constexpr int kThreads = 128;
constexpr int kPerLane = 8;   // head_dim elements per lane held in registers (chunk = G·kPerLane)
constexpr int kMaxSlices = 64;  // batch slices of the bias pass (more blocks for small head counts)

__device__ __forceinline__ float exp_(float x) { return expf(x); }
__device__ __forceinline__ double exp_(double x) { return ::exp(x); }
__device__ __forceinline__ float log_(float x) { return logf(x); }
__device__ __forceinline__ double log_(double x) { return ::log(x); }

// A [N, heads, H, W, head_dim] tensor with head_dim contiguous: element pointers by position.
template <typename T>
struct Map {
  T* p;
  int64_t sn, sh, sy, sx;
  __device__ T* at(int64_t n, int64_t h, int64_t y, int64_t x) const { return p + n * sn + h * sh + y * sy + x * sx; }
};
template <typename T>
Map<T> map_of(const Tensor& t) {
  return {t.data_ptr<T>(), t.stride(0), t.stride(1), t.stride(2), t.stride(3)};
}

// One axis of WindowAxis, on the device.
struct Axis {
  const int64_t *start, *first_query, *last_query;
};

struct Dims {
  int64_t n, heads, h, w, d;
  int64_t ks, dil, tw;  // kernel size, dilation, bias table side 2k-1
  int group;            // G: lanes per query or key
  Axis rows, cols;
  __device__ int64_t queries() const { return n * heads * h * w; }
};

// The G lanes of a group: their lane within the group and their mask within the warp.
struct Group {
  int size, lane;
  unsigned mask;
  __device__ explicit Group(int g) : size(g), lane(threadIdx.x & (g - 1)) {
    const int warp_lane = threadIdx.x & 31;
    mask = g == 32 ? 0xffffffffu : ((1u << g) - 1u) << (warp_lane & ~(g - 1));
  }
  __device__ int64_t first() const { return (blockIdx.x * int64_t(blockDim.x) + threadIdx.x) / size; }
  __device__ int64_t stride() const { return int64_t(gridDim.x) * blockDim.x / size; }
  /// Head_dim index of this lane's register e in the chunk starting at c0.
  __device__ int64_t elem(int64_t c0, int e) const { return c0 + lane + int64_t(e) * size; }
};

// Σ a[i]·b[i], i < d, over the group; the same value in every lane.
template <typename A, typename T>
__device__ __forceinline__ A group_dot(const T* a, const T* b, int64_t d, const Group& g) {
  A s = 0;
  for (int64_t i = g.lane; i < d; i += g.size) s += static_cast<A>(a[i]) * static_cast<A>(b[i]);
  for (int o = g.size / 2; o > 0; o >>= 1) s += __shfl_xor_sync(g.mask, s, o, g.size);
  return s;
}

// (n, h, y, x) of flat query or key index r (x fastest): the layout of lse and Δ.
struct Pos {
  int64_t n, h, y, x;
};
__device__ __forceinline__ Pos pos_of(int64_t r, const Dims& s) {
  return {r / (s.w * s.h * s.heads), (r / (s.w * s.h)) % s.heads, (r / s.w) % s.h, r % s.w};
}

// The bias row of query (y, x): entry [i * tw + j] is slot (i, j)'s (see the CPU kernel).
template <typename A>
__device__ __forceinline__ const A* bias_row(const A* bias, const Pos& p, int64_t sy, int64_t sx, const Dims& s) {
  if (!bias) return nullptr;
  return bias + (p.h * s.tw + (sy - p.y) / s.dil + s.ks - 1) * s.tw + (sx - p.x) / s.dil + s.ks - 1;
}

// scale · q·k + bias (bias: nullptr for none).
template <typename A, typename T>
__device__ __forceinline__ A logit(const T* q, const T* k, A scale, const A* bias, const Dims& s, const Group& g) {
  A l = group_dot<A>(q, k, s.d, g) * scale;
  return bias ? l + *bias : l;
}

// ---------------------------------------------------------------------------------------------
template <typename T, typename A>
__global__ void forward_kernel(Map<T> Q, Map<T> K, Map<T> V, const A* bias, Dims s, A scale, Map<T> O, A* lse) {
  const Group g(s.group);
  constexpr A kNegInf = -std::numeric_limits<A>::infinity();
  for (int64_t r = g.first(); r < s.queries(); r += g.stride()) {
    const Pos p = pos_of(r, s);
    const int64_t sy = s.rows.start[p.y], sx = s.cols.start[p.x];
    const T* qp = Q.at(p.n, p.h, p.y, p.x);
    const A* brow = bias_row(bias, p, sy, sx, s);
    T* op = O.at(p.n, p.h, p.y, p.x);
    A m = kNegInf, sum = 0;
    for (int64_t c0 = 0; c0 < s.d; c0 += int64_t(s.group) * kPerLane) {
      A acc[kPerLane] = {};
      m = kNegInf;
      sum = 0;
      for (int64_t i = 0; i < s.ks; ++i)
        for (int64_t j = 0; j < s.ks; ++j) {
          const int64_t ky = sy + i * s.dil, kx = sx + j * s.dil;
          const A l = logit(qp, K.at(p.n, p.h, ky, kx), scale, brow ? brow + i * s.tw + j : nullptr, s, g);
          const A m_new = m < l ? l : m;
          // Rescale what was summed under the old maximum. While every logit so far is -inf the
          // slot adds nothing (rather than exp(-inf + inf) = NaN).
          const A corr = m_new == kNegInf ? A(1) : exp_(m - m_new);
          const A w = m_new == kNegInf ? A(0) : exp_(l - m_new);
          sum = sum * corr + w;
          m = m_new;
          const T* vp = V.at(p.n, p.h, ky, kx);
#pragma unroll
          for (int e = 0; e < kPerLane; ++e) {
            const int64_t c = g.elem(c0, e);
            if (c < s.d) acc[e] = acc[e] * corr + w * static_cast<A>(vp[c]);
          }
        }
      const A inv = A(1) / sum;
#pragma unroll
      for (int e = 0; e < kPerLane; ++e) {
        const int64_t c = g.elem(c0, e);
        if (c < s.d) op[c] = static_cast<T>(acc[e] * inv);
      }
    }
    if (g.lane == 0) lse[r] = m + log_(sum);
  }
}

// ---------------------------------------------------------------------------------------------
// Query pass: Δ and dq.
template <typename T, typename A>
__global__ void query_pass_kernel(Map<T> DO, Map<T> Q, Map<T> K, Map<T> V, const A* bias, const A* lse, Dims s,
                                  A scale, Map<T> DQ, A* delta) {
  const Group g(s.group);
  for (int64_t r = g.first(); r < s.queries(); r += g.stride()) {
    const Pos p = pos_of(r, s);
    const int64_t sy = s.rows.start[p.y], sx = s.cols.start[p.x];
    const T* qp = Q.at(p.n, p.h, p.y, p.x);
    const T* dop = DO.at(p.n, p.h, p.y, p.x);
    const A* brow = bias_row(bias, p, sy, sx, s);
    const A L = lse[r];
    A dsum = 0;  // Δ = Σ P·(dO·v)
    for (int64_t i = 0; i < s.ks; ++i)
      for (int64_t j = 0; j < s.ks; ++j) {
        const int64_t ky = sy + i * s.dil, kx = sx + j * s.dil;
        const A P = exp_(logit(qp, K.at(p.n, p.h, ky, kx), scale, brow ? brow + i * s.tw + j : nullptr, s, g) - L);
        dsum += P * group_dot<A>(dop, V.at(p.n, p.h, ky, kx), s.d, g);
      }
    T* dqp = DQ.at(p.n, p.h, p.y, p.x);
    for (int64_t c0 = 0; c0 < s.d; c0 += int64_t(s.group) * kPerLane) {
      A acc[kPerLane] = {};
      for (int64_t i = 0; i < s.ks; ++i)
        for (int64_t j = 0; j < s.ks; ++j) {
          const int64_t ky = sy + i * s.dil, kx = sx + j * s.dil;
          const T* kp = K.at(p.n, p.h, ky, kx);
          const A P = exp_(logit(qp, kp, scale, brow ? brow + i * s.tw + j : nullptr, s, g) - L);
          const A dS = P * (group_dot<A>(dop, V.at(p.n, p.h, ky, kx), s.d, g) - dsum);
#pragma unroll
          for (int e = 0; e < kPerLane; ++e) {
            const int64_t c = g.elem(c0, e);
            if (c < s.d) acc[e] += dS * static_cast<A>(kp[c]);
          }
        }
#pragma unroll
      for (int e = 0; e < kPerLane; ++e) {
        const int64_t c = g.elem(c0, e);
        if (c < s.d) dqp[c] = static_cast<T>(acc[e] * scale);
      }
    }
    if (g.lane == 0) delta[r] = dsum;
  }
}

// Key pass: dk and dv by gathering from the queries whose windows hold each key.
template <typename T, typename A>
__global__ void key_pass_kernel(Map<T> DO, Map<T> Q, Map<T> K, Map<T> V, const A* bias, const A* lse,
                                const A* delta, Dims s, A scale, Map<T> DK, Map<T> DV) {
  const Group g(s.group);
  for (int64_t r = g.first(); r < s.queries(); r += g.stride()) {
    const Pos p = pos_of(r, s);  // the key's position
    const T* kp = K.at(p.n, p.h, p.y, p.x);
    const T* vp = V.at(p.n, p.h, p.y, p.x);
    const int64_t plane = (p.n * s.heads + p.h) * s.h * s.w;
    for (int64_t c0 = 0; c0 < s.d; c0 += int64_t(s.group) * kPerLane) {
      A dk[kPerLane] = {}, dv[kPerLane] = {};
      for (int64_t y = s.rows.first_query[p.y]; y <= s.rows.last_query[p.y]; y += s.dil) {
        // Bias table row of this (query row, key row): (key - query) / d + k - 1.
        const A* brow = bias ? bias + (p.h * s.tw + (p.y - y) / s.dil + s.ks - 1) * s.tw + s.ks - 1 : nullptr;
        for (int64_t x = s.cols.first_query[p.x]; x <= s.cols.last_query[p.x]; x += s.dil) {
          const int64_t rq = plane + y * s.w + x;
          const T* qp = Q.at(p.n, p.h, y, x);
          const T* dop = DO.at(p.n, p.h, y, x);
          const A P = exp_(logit(qp, kp, scale, brow ? brow + (p.x - x) / s.dil : nullptr, s, g) - lse[rq]);
          const A dS = P * (group_dot<A>(dop, vp, s.d, g) - delta[rq]);
#pragma unroll
          for (int e = 0; e < kPerLane; ++e) {
            const int64_t c = g.elem(c0, e);
            if (c < s.d) {
              dk[e] += dS * static_cast<A>(qp[c]);
              dv[e] += P * static_cast<A>(dop[c]);
            }
          }
        }
      }
      T* dkp = DK.at(p.n, p.h, p.y, p.x);
      T* dvp = DV.at(p.n, p.h, p.y, p.x);
#pragma unroll
      for (int e = 0; e < kPerLane; ++e) {
        const int64_t c = g.elem(c0, e);
        if (c < s.d) {
          dkp[c] = static_cast<T>(dk[e] * scale);
          dvp[c] = static_cast<T>(dv[e]);
        }
      }
    }
  }
}

// Bias pass: block (entry, head, slice) sums dS over the pairs (query, query + offset(entry)) of
// the images n ≡ slice (mod slices). Rows are skipped block-wide (the row test does not depend on
// the thread), columns per group; the block's groups are then added in a fixed order.
template <typename T, typename A>
__global__ void bias_pass_kernel(Map<T> DO, Map<T> Q, Map<T> K, Map<T> V, const A* bias, const A* lse,
                                 const A* delta, Dims s, A scale, A* partial) {
  __shared__ A sums[kThreads];
  const Group g(s.group);
  const int64_t entry = blockIdx.x, h = blockIdx.y, table = s.tw * s.tw;
  const int64_t oy = (entry / s.tw - (s.ks - 1)) * s.dil, ox = (entry % s.tw - (s.ks - 1)) * s.dil;
  const A* b = bias + h * table + entry;
  const int groups = blockDim.x / s.group, gi = threadIdx.x / s.group;
  const int64_t span = (s.ks - 1) * s.dil;
  A acc = 0;
  for (int64_t n = blockIdx.z; n < s.n; n += gridDim.z) {
    const int64_t plane = (n * s.heads + h) * s.h * s.w;
    for (int64_t y = 0; y < s.h; ++y) {
      const int64_t ky = y + oy, sy = s.rows.start[y];
      if (ky < sy || ky > sy + span) continue;  // key row outside query row y's window
      for (int64_t x = gi; x < s.w; x += groups) {
        const int64_t kx = x + ox, sx = s.cols.start[x];
        if (kx < sx || kx > sx + span) continue;
        const int64_t rq = plane + y * s.w + x;
        const A P = exp_(logit(Q.at(n, h, y, x), K.at(n, h, ky, kx), scale, b, s, g) - lse[rq]);
        acc += P * (group_dot<A>(DO.at(n, h, y, x), V.at(n, h, ky, kx), s.d, g) - delta[rq]);
      }
    }
  }
  if (g.lane == 0) sums[gi] = acc;
  __syncthreads();
  if (threadIdx.x == 0) {
    A total = 0;
    for (int i = 0; i < groups; ++i) total += sums[i];
    partial[(int64_t(blockIdx.z) * s.heads + h) * table + entry] = total;
  }
}

// ---------------------------------------------------------------------------------------------
int group_size(int64_t head_dim) {
  int g = 1;
  while (g < head_dim && g < 32) g *= 2;
  return g;
}

unsigned blocks_for(int64_t items, int group) {
  const int64_t threads = items * group;
  return static_cast<unsigned>(std::clamp<int64_t>((threads + kThreads - 1) / kThreads, 1, 65535 * 8));
}

// The window tables of both axes as one int64 tensor on q's device: start, first_query and
// last_query of the rows, then of the columns. Copied from pinned memory on the current stream
// without waiting (a pageable copy would synchronise the stream on every call); the pinned
// buffer is not reused before the copy is done (the caching host allocator records the stream).
Tensor device_windows(const NeighborhoodGeometry& g, const at::Device& device) {
  std::vector<int64_t> host;
  for (const auto* axis : {&g.rows, &g.cols})
    for (const auto* v : {&axis->start, &axis->first_query, &axis->last_query}) host.insert(host.end(), v->begin(), v->end());
  return at::tensor(host, at::kLong).pin_memory().to(device, /*non_blocking=*/true);
}

Dims dims_of(const Tensor& q, const NeighborhoodGeometry& g, const Tensor& windows) {
  const int64_t H = q.size(2), W = q.size(3);
  const int64_t* w = windows.data_ptr<int64_t>();
  return {q.size(0),
          q.size(1),
          H,
          W,
          q.size(4),
          g.kernel_size,
          g.dilation,
          2 * g.kernel_size - 1,
          group_size(q.size(4)),
          {w, w + H, w + 2 * H},
          {w + 3 * H, w + 3 * H + W, w + 3 * H + 2 * W}};
}

template <typename A>
const A* opt(const Tensor& t) {
  return t.defined() ? t.data_ptr<A>() : nullptr;
}

#define ATTNKIT_CUDA_DISPATCH(x, name, ...) \
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, (x).scalar_type(), name, __VA_ARGS__)

void forward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& rpb, const NeighborhoodGeometry& g,
             Tensor& out, Tensor& lse) {
  const c10::cuda::CUDAGuard guard(q.device());
  auto stream = at::cuda::getCurrentCUDAStream();
  const Tensor windows = device_windows(g, q.device());
  const Dims s = dims_of(q, g, windows);
  ATTNKIT_CUDA_DISPATCH(q, "attnkit::neighborhood_attention", [&] {
    using A = at::opmath_type<scalar_t>;
    forward_kernel<scalar_t, A><<<blocks_for(q.numel() / s.d, s.group), kThreads, 0, stream>>>(
        map_of<scalar_t>(q), map_of<scalar_t>(k), map_of<scalar_t>(v), opt<A>(rpb), s, static_cast<A>(g.scale),
        map_of<scalar_t>(out), lse.data_ptr<A>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

void backward(const Tensor& dout, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& rpb,
              const Tensor& lse, const NeighborhoodGeometry& g, Tensor& dq, Tensor& dk, Tensor& dv, Tensor& drpb) {
  const c10::cuda::CUDAGuard guard(q.device());
  auto stream = at::cuda::getCurrentCUDAStream();
  const Tensor windows = device_windows(g, q.device());
  const Dims s = dims_of(q, g, windows);
  const int64_t items = q.numel() / s.d;  // queries (= keys)
  Tensor delta = at::empty_like(lse);
  ATTNKIT_CUDA_DISPATCH(q, "attnkit::neighborhood_attention_backward", [&] {
    using A = at::opmath_type<scalar_t>;
    const auto Q = map_of<scalar_t>(q), K = map_of<scalar_t>(k), V = map_of<scalar_t>(v), DO = map_of<scalar_t>(dout);
    const A scale = static_cast<A>(g.scale);
    const A* bias = opt<A>(rpb);
    query_pass_kernel<scalar_t, A><<<blocks_for(items, s.group), kThreads, 0, stream>>>(
        DO, Q, K, V, bias, lse.data_ptr<A>(), s, scale, map_of<scalar_t>(dq), delta.data_ptr<A>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    if (dk.defined()) {
      key_pass_kernel<scalar_t, A><<<blocks_for(items, s.group), kThreads, 0, stream>>>(
          DO, Q, K, V, bias, lse.data_ptr<A>(), delta.data_ptr<A>(), s, scale, map_of<scalar_t>(dk),
          map_of<scalar_t>(dv));
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    if (bias) {
      TORCH_CHECK(s.heads <= 65535, "attnkit::neighborhood_attention: CUDA backward takes at most 65535 heads, got ",
                  s.heads);
      const int64_t slices = std::min<int64_t>(s.n, kMaxSlices);
      Tensor partial = at::empty({slices, s.heads, s.tw * s.tw}, lse.options());
      const dim3 grid(static_cast<unsigned>(s.tw * s.tw), static_cast<unsigned>(s.heads), static_cast<unsigned>(slices));
      bias_pass_kernel<scalar_t, A><<<grid, kThreads, 0, stream>>>(DO, Q, K, V, bias, lse.data_ptr<A>(),
                                                                   delta.data_ptr<A>(), s, scale, partial.data_ptr<A>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      drpb.copy_(partial.sum(0).view_as(drpb));
    }
  });
}

}  // namespace

const NeighborhoodAttentionKernelTable& neighborhood_attention_kernels() {
  static const NeighborhoodAttentionKernelTable table{forward, backward};
  return table;
}

}  // namespace attnkit::ops::cuda
