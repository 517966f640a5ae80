// CPU kernels of the fused neighborhood attention op: see neighborhood_attention_kernels.h for what
// each pass computes.
//
// Compiled once per CPU capability (modules/ops/cpu/*_kernel.cpp, see CMakeLists.txt); threaded with
// at::parallel_for over rows (n, head, y) of queries (forward) or (n, head) planes (backward), each
// written by one task; vectorised with ATen's Vectorized<T> along head_dim (dot products and
// axpys), and along the k² slots for the softmax's exponentials. Everything accumulates in
// acc_t<T> (float for float/bfloat16/half, double for double).
#include "../detail/neighborhood_attention_kernels.h"

#include "kernel_dispatch.h"
#include "vec_util.h"

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

namespace attnkit::ops::cpu {
inline namespace CPU_CAPABILITY {
namespace {

using at::Tensor;

// Aim for tasks of at least this many multiply-adds so that small maps are not split needlessly.
constexpr int64_t kGrainFlops = 32768;

// A [N, heads, H, W, head_dim] tensor with head_dim contiguous: element pointers by position.
template <typename T>
struct Map {
  T* p;
  int64_t sn, sh, sy, sx;
  explicit Map(const Tensor& t)
      : p(t.data_ptr<T>()), sn(t.stride(0)), sh(t.stride(1)), sy(t.stride(2)), sx(t.stride(3)) {}
  T* at(int64_t n, int64_t h, int64_t y, int64_t x) const { return p + n * sn + h * sh + y * sy + x * sx; }
};

// Σ a[i]·b[i], i < d, in the accumulation type (a, b: any mix of T and acc_t<T>).
template <typename TA, typename TB>
inline acc_t<TB> dot(const TA* a, const TB* b, int64_t d) {
  using V = typename Lanes<TB>::V;
  constexpr int K = Lanes<TB>::kSize;
  if (d < K) {
    // Heads narrower than a vector (e.g. 4 channels of a 16-channel block with 4 heads): a partial
    // load pads through a stack buffer and a horizontal sum follows, ~10x the cost of these few FMAs.
    acc_t<TB> sum = 0;
    for (int64_t i = 0; i < d; ++i) sum += static_cast<acc_t<TB>>(a[i]) * static_cast<acc_t<TB>>(b[i]);
    return sum;
  }
  V acc(0);
  int64_t i = 0;
  for (; i + K <= d; i += K) acc = at::vec::fmadd(Lanes<TA>::load(a + i), Lanes<TB>::load(b + i), acc);
  if (i < d) {
    const int r = static_cast<int>(d - i);
    acc = at::vec::fmadd(Lanes<TA>::load(a + i, r), Lanes<TB>::load(b + i, r), acc);
  }
  return lane_sum(acc);
}

// acc[i] += alpha · x[i], i < d.
template <typename T>
inline void axpy(acc_t<T>* acc, acc_t<T> alpha, const T* x, int64_t d) {
  using L = Lanes<T>;
  using V = typename L::V;
  constexpr int K = L::kSize;
  if (d < K) {  // narrow heads: see dot()
    for (int64_t i = 0; i < d; ++i) acc[i] += alpha * static_cast<acc_t<T>>(x[i]);
    return;
  }
  const V a(alpha);
  int64_t i = 0;
  for (; i + K <= d; i += K) at::vec::fmadd(a, L::load(x + i), V::loadu(acc + i)).store(acc + i);
  if (i < d) {
    const int r = static_cast<int>(d - i);
    at::vec::fmadd(a, L::load(x + i, r), Lanes<acc_t<T>>::load(acc + i, r)).store(acc + i, r);
  }
}

// dst[i] = scale · src[i], converted to T.
template <typename T>
inline void store_scaled(T* dst, const acc_t<T>* src, acc_t<T> scale, int64_t d) {
  using L = Lanes<T>;
  using V = typename L::V;
  constexpr int K = L::kSize;
  if (d < K) {  // narrow heads: see dot()
    for (int64_t i = 0; i < d; ++i) dst[i] = static_cast<T>(scale * src[i]);
    return;
  }
  for (int64_t i = 0; i < d; i += K) {
    const int r = static_cast<int>(std::min<int64_t>(K, d - i));
    L::store(dst + i, Lanes<acc_t<T>>::load(src + i, r) * V(scale), r);
  }
}

// p[j] = exp(p[j] - shift), j < n; returns Σ p[j].
template <typename A>
inline A exp_shifted(A* p, int64_t n, A shift) {
  using V = at::vec::Vectorized<A>;
  constexpr int K = V::size();
  V sum(0);
  for (int64_t j = 0; j < n; j += K) {
    const int r = static_cast<int>(std::min<int64_t>(K, n - j));
    const V e = (Lanes<A>::load(p + j, r, -std::numeric_limits<A>::infinity()) - V(shift)).exp();
    e.store(p + j, r);
    sum += e;
  }
  return lane_sum(sum);
}

struct Sizes {
  int64_t n, heads, h, w, d, ks, k2, dil, tw;
};
Sizes sizes_of(const Tensor& q, const NeighborhoodGeometry& g) {
  return {q.size(0), q.size(1), q.size(2), q.size(3), q.size(4), g.kernel_size, g.kernel_size * g.kernel_size,
          g.dilation, 2 * g.kernel_size - 1};
}
int64_t grain_rows(const Sizes& s) { return std::max<int64_t>(1, kGrainFlops / std::max<int64_t>(1, s.w * s.k2 * s.d)); }

template <typename A>
const A* opt_ptr(const Tensor& t) {
  return t.defined() ? t.data_ptr<A>() : nullptr;
}

// Logits of query (n, h, y, x) for its k² window slots into `logits`; returns their maximum.
template <typename T>
inline acc_t<T> window_logits(const Map<T>& K, const T* qp, int64_t n, int64_t h, int64_t y, int64_t x,
                              const Sizes& s, const NeighborhoodGeometry& g, const acc_t<T>* bias,
                              acc_t<T>* logits) {
  using A = acc_t<T>;
  const A scale = static_cast<A>(g.scale);
  const int64_t sy = g.rows.start[y], sx = g.cols.start[x];
  // The bias table entry of slot (i, j): ((key - query) / d + k - 1) per axis.
  const A* brow = bias ? bias + (h * s.tw + (sy - y) / s.dil + s.ks - 1) * s.tw + (sx - x) / s.dil + s.ks - 1 : nullptr;
  A m = -std::numeric_limits<A>::infinity();
  for (int64_t i = 0; i < s.ks; ++i)
    for (int64_t j = 0; j < s.ks; ++j) {
      A l = dot(qp, K.at(n, h, sy + i * s.dil, sx + j * s.dil), s.d) * scale;
      if (brow) l += brow[i * s.tw + j];
      logits[i * s.ks + j] = l;
      m = std::max(m, l);
    }
  return m;
}

// ---------------------------------------------------------------------------------------------
template <typename T>
void forward_impl(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& rpb, const NeighborhoodGeometry& g,
                  Tensor& out, Tensor& lse) {
  using A = acc_t<T>;
  const Sizes s = sizes_of(q, g);
  const Map<T> Q(q), K(k), Vm(v), O(out);
  const A* bias = opt_ptr<A>(rpb);
  A* lse_p = lse.data_ptr<A>();
  at::parallel_for(0, s.n * s.heads * s.h, grain_rows(s), [&](int64_t begin, int64_t end) {
    std::vector<A> weights(s.k2), acc(s.d);
    for (int64_t r = begin; r < end; ++r) {
      const int64_t y = r % s.h, h = (r / s.h) % s.heads, n = r / (s.h * s.heads);
      const int64_t sy = g.rows.start[y];
      for (int64_t x = 0; x < s.w; ++x) {
        const A m = window_logits(K, Q.at(n, h, y, x), n, h, y, x, s, g, bias, weights.data());
        const A sum = exp_shifted(weights.data(), s.k2, m);
        const A inv = A(1) / sum;
        std::fill(acc.begin(), acc.end(), A(0));
        const int64_t sx = g.cols.start[x];
        for (int64_t i = 0; i < s.ks; ++i)
          for (int64_t j = 0; j < s.ks; ++j)
            axpy(acc.data(), weights[i * s.ks + j] * inv, Vm.at(n, h, sy + i * s.dil, sx + j * s.dil), s.d);
        store_scaled(O.at(n, h, y, x), acc.data(), A(1), s.d);
        lse_p[r * s.w + x] = m + std::log(sum);
      }
    }
  });
}

// ---------------------------------------------------------------------------------------------
template <typename T>
void backward_impl(const Tensor& dout, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& rpb,
                   const Tensor& lse, const NeighborhoodGeometry& g, Tensor& dq, Tensor& dk, Tensor& dv,
                   Tensor& drpb) {
  using A = acc_t<T>;
  const Sizes s = sizes_of(q, g);
  const bool kv = dk.defined();
  const Map<T> Q(q), K(k), Vm(v), DO(dout), DQ(dq), DK(kv ? dk : dq), DV(kv ? dv : dq);
  const A* bias = opt_ptr<A>(rpb);
  const A* lse_p = lse.data_ptr<A>();
  const A scale = static_cast<A>(g.scale);
  const int64_t planes = s.n * s.heads, plane = s.h * s.w, table = s.tw * s.tw;
  // The bias gradient: one partial table per plane, added up below in a fixed order.
  std::vector<A> partial(bias ? static_cast<size_t>(planes * table) : 0, A(0));
  at::parallel_for(0, planes, 1, [&](int64_t begin, int64_t end) {
    // P and dS (d loss / d logit) of every (query, slot) of one plane: the key pass reads them back.
    std::vector<A> p(static_cast<size_t>(plane * s.k2)), ds(p.size()), dp(s.k2), acc(s.d), acc2(s.d);
    for (int64_t pl = begin; pl < end; ++pl) {
      const int64_t n = pl / s.heads, h = pl % s.heads;
      A* part = bias ? partial.data() + pl * table : nullptr;
      // Query pass: P, dS and dq per query.
      for (int64_t y = 0; y < s.h; ++y) {
        const int64_t sy = g.rows.start[y];
        for (int64_t x = 0; x < s.w; ++x) {
          const int64_t sx = g.cols.start[x];
          A* pq = p.data() + (y * s.w + x) * s.k2;
          A* dsq = ds.data() + (y * s.w + x) * s.k2;
          const T* dop = DO.at(n, h, y, x);
          window_logits(K, Q.at(n, h, y, x), n, h, y, x, s, g, bias, pq);
          exp_shifted(pq, s.k2, lse_p[pl * plane + y * s.w + x]);  // the attention weights P
          A dsum = 0;
          for (int64_t i = 0; i < s.ks; ++i)
            for (int64_t j = 0; j < s.ks; ++j) {
              const int64_t slot = i * s.ks + j;
              dp[slot] = dot(dop, Vm.at(n, h, sy + i * s.dil, sx + j * s.dil), s.d);
              dsum += pq[slot] * dp[slot];
            }
          std::fill(acc.begin(), acc.end(), A(0));
          A* prow = part ? part + ((sy - y) / s.dil + s.ks - 1) * s.tw + (sx - x) / s.dil + s.ks - 1 : nullptr;
          for (int64_t i = 0; i < s.ks; ++i)
            for (int64_t j = 0; j < s.ks; ++j) {
              const int64_t slot = i * s.ks + j;
              dsq[slot] = pq[slot] * (dp[slot] - dsum);
              axpy(acc.data(), dsq[slot], K.at(n, h, sy + i * s.dil, sx + j * s.dil), s.d);
              if (prow) prow[i * s.tw + j] += dsq[slot];
            }
          store_scaled(DQ.at(n, h, y, x), acc.data(), scale, s.d);
        }
      }
      if (!kv) continue;
      // Key pass: dk = scale · Σ dS·q and dv = Σ P·dO over the queries whose windows hold the key.
      for (int64_t ky = 0; ky < s.h; ++ky) {
        for (int64_t kx = 0; kx < s.w; ++kx) {
          std::fill(acc.begin(), acc.end(), A(0));
          std::fill(acc2.begin(), acc2.end(), A(0));
          for (int64_t y = g.rows.first_query[ky]; y <= g.rows.last_query[ky]; y += s.dil) {
            const int64_t i = (ky - g.rows.start[y]) / s.dil;
            for (int64_t x = g.cols.first_query[kx]; x <= g.cols.last_query[kx]; x += s.dil) {
              const int64_t idx = (y * s.w + x) * s.k2 + i * s.ks + (kx - g.cols.start[x]) / s.dil;
              axpy(acc.data(), ds[idx], Q.at(n, h, y, x), s.d);
              axpy(acc2.data(), p[idx], DO.at(n, h, y, x), s.d);
            }
          }
          store_scaled(DK.at(n, h, ky, kx), acc.data(), scale, s.d);
          store_scaled(DV.at(n, h, ky, kx), acc2.data(), A(1), s.d);
        }
      }
    }
  });
  if (!bias) return;
  A* out = drpb.data_ptr<A>();
  for (int64_t h = 0; h < s.heads; ++h)
    for (int64_t t = 0; t < table; ++t) {
      A sum = 0;
      for (int64_t n = 0; n < s.n; ++n) sum += partial[(n * s.heads + h) * table + t];
      out[h * table + t] = sum;
    }
}

// ---------------------------------------------------------------------------------------------
#define ATTNKIT_DISPATCH(x, name, ...) \
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, (x).scalar_type(), name, __VA_ARGS__)

void forward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& rpb, const NeighborhoodGeometry& g,
             Tensor& out, Tensor& lse) {
  ATTNKIT_DISPATCH(q, "attnkit::neighborhood_attention", [&] { forward_impl<scalar_t>(q, k, v, rpb, g, out, lse); });
}
void backward(const Tensor& dout, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& rpb,
              const Tensor& lse, const NeighborhoodGeometry& g, Tensor& dq, Tensor& dk, Tensor& dv, Tensor& drpb) {
  ATTNKIT_DISPATCH(q, "attnkit::neighborhood_attention_backward",
                   [&] { backward_impl<scalar_t>(dout, q, k, v, rpb, lse, g, dq, dk, dv, drpb); });
}

}  // namespace
}  // namespace CPU_CAPABILITY

ATTNKIT_DEFINE_KERNEL_TABLE(NeighborhoodAttentionKernelTable, neighborhood_attention_kernel_table,
                            CPU_CAPABILITY::forward, CPU_CAPABILITY::backward)

}  // namespace attnkit::ops::cpu
