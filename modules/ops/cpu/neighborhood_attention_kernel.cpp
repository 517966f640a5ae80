// CPU kernels of the fused neighborhood attention op: see neighborhood_attention_kernels.h for what
// each pass computes.
//
// Compiled once per CPU capability (modules/ops/cpu/*_kernel.cpp, see CMakeLists.txt); threaded with
// at::parallel_for over rows (n, head, y) of queries (forward, query pass) or keys (key pass), each
// row written by one task; vectorised with ATen's Vectorized<T> along head_dim (dot products and
// axpys), and along the k² slots for the softmax's exponentials. Everything accumulates in
// acc_t<T> (float for float/bfloat16/half, double for double).
#include <attnkit/modules/ops/neighborhood_attention_kernels.h>

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
void backward_query_impl(const Tensor& dout, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& rpb,
                         const Tensor& lse, const NeighborhoodGeometry& g, Tensor& dq, Tensor& delta, Tensor& drpb) {
  using A = acc_t<T>;
  const Sizes s = sizes_of(q, g);
  const Map<T> Q(q), K(k), Vm(v), DO(dout), DQ(dq);
  const A* bias = opt_ptr<A>(rpb);
  const A* lse_p = lse.data_ptr<A>();
  A* delta_p = delta.data_ptr<A>();
  const int64_t rows = s.n * s.heads * s.h, table = s.tw * s.tw;
  // The bias gradient: one partial table per row, added up below in a fixed order.
  std::vector<A> partial(bias ? static_cast<size_t>(rows * table) : 0, A(0));
  at::parallel_for(0, rows, grain_rows(s), [&](int64_t begin, int64_t end) {
    std::vector<A> p(s.k2), dp(s.k2), acc(s.d);
    for (int64_t r = begin; r < end; ++r) {
      const int64_t y = r % s.h, h = (r / s.h) % s.heads, n = r / (s.h * s.heads);
      const int64_t sy = g.rows.start[y];
      for (int64_t x = 0; x < s.w; ++x) {
        const int64_t sx = g.cols.start[x];
        const T* dop = DO.at(n, h, y, x);
        window_logits(K, Q.at(n, h, y, x), n, h, y, x, s, g, bias, p.data());
        exp_shifted(p.data(), s.k2, lse_p[r * s.w + x]);  // the attention weights P
        A dsum = 0;
        for (int64_t i = 0; i < s.ks; ++i)
          for (int64_t j = 0; j < s.ks; ++j) {
            const int64_t slot = i * s.ks + j;
            dp[slot] = dot(dop, Vm.at(n, h, sy + i * s.dil, sx + j * s.dil), s.d);
            dsum += p[slot] * dp[slot];
          }
        delta_p[r * s.w + x] = dsum;
        std::fill(acc.begin(), acc.end(), A(0));
        A* part = bias ? partial.data() + r * table + ((sy - y) / s.dil + s.ks - 1) * s.tw + (sx - x) / s.dil + s.ks - 1
                       : nullptr;
        for (int64_t i = 0; i < s.ks; ++i)
          for (int64_t j = 0; j < s.ks; ++j) {
            const int64_t slot = i * s.ks + j;
            const A ds = p[slot] * (dp[slot] - dsum);  // d loss / d logit
            axpy(acc.data(), ds, K.at(n, h, sy + i * s.dil, sx + j * s.dil), s.d);
            if (part) part[i * s.tw + j] += ds;
          }
        store_scaled(DQ.at(n, h, y, x), acc.data(), static_cast<A>(g.scale), s.d);
      }
    }
  });
  if (!bias) return;
  A* out = drpb.data_ptr<A>();
  at::parallel_for(0, s.heads * table, 1, [&](int64_t begin, int64_t end) {
    for (int64_t e = begin; e < end; ++e) {
      const int64_t h = e / table, t = e % table;
      A sum = 0;
      for (int64_t n = 0; n < s.n; ++n)
        for (int64_t y = 0; y < s.h; ++y) sum += partial[((n * s.heads + h) * s.h + y) * table + t];
      out[e] = sum;
    }
  });
}

// ---------------------------------------------------------------------------------------------
template <typename T>
void backward_key_impl(const Tensor& dout, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& rpb,
                       const Tensor& lse, const Tensor& delta, const NeighborhoodGeometry& g, Tensor& dk, Tensor& dv) {
  using A = acc_t<T>;
  const Sizes s = sizes_of(q, g);
  const Map<T> Q(q), K(k), Vm(v), DO(dout), DK(dk), DV(dv);
  const A* bias = opt_ptr<A>(rpb);
  const A* lse_p = lse.data_ptr<A>();
  const A* delta_p = delta.data_ptr<A>();
  const A scale = static_cast<A>(g.scale);
  auto most_queries = [&](const WindowAxis& a) {
    int64_t m = 0;
    for (size_t i = 0; i < a.first_query.size(); ++i)
      m = std::max(m, (a.last_query[i] - a.first_query[i]) / s.dil + 1);
    return m;
  };
  const int64_t max_pairs = most_queries(g.rows) * most_queries(g.cols);
  at::parallel_for(0, s.n * s.heads * s.h, grain_rows(s), [&](int64_t begin, int64_t end) {
    // Per key: the attention weight P and d loss / d logit of every query that sees it.
    std::vector<A> p(max_pairs), ds(max_pairs), dk_acc(s.d), dv_acc(s.d);
    for (int64_t r = begin; r < end; ++r) {
      const int64_t ky = r % s.h, h = (r / s.h) % s.heads, n = r / (s.h * s.heads);
      const int64_t y0 = g.rows.first_query[ky], y1 = g.rows.last_query[ky];
      const A* bias_h = bias ? bias + h * s.tw * s.tw : nullptr;
      for (int64_t kx = 0; kx < s.w; ++kx) {
        const int64_t x0 = g.cols.first_query[kx], x1 = g.cols.last_query[kx];
        const T* kp = K.at(n, h, ky, kx);
        const T* vp = Vm.at(n, h, ky, kx);
        // Logits, then P = exp(logit - lse) for all of them at once.
        int64_t c = 0;
        for (int64_t y = y0; y <= y1; y += s.dil)
          for (int64_t x = x0; x <= x1; x += s.dil, ++c) {
            A l = dot(Q.at(n, h, y, x), kp, s.d) * scale;
            if (bias_h) l += bias_h[((ky - y) / s.dil + s.ks - 1) * s.tw + (kx - x) / s.dil + s.ks - 1];
            p[c] = l - lse_p[((n * s.heads + h) * s.h + y) * s.w + x];
          }
        exp_shifted(p.data(), c, A(0));
        c = 0;
        std::fill(dk_acc.begin(), dk_acc.end(), A(0));
        std::fill(dv_acc.begin(), dv_acc.end(), A(0));
        for (int64_t y = y0; y <= y1; y += s.dil)
          for (int64_t x = x0; x <= x1; x += s.dil, ++c) {
            const T* dop = DO.at(n, h, y, x);
            const A dp = dot(dop, vp, s.d);
            ds[c] = p[c] * (dp - delta_p[((n * s.heads + h) * s.h + y) * s.w + x]);
            axpy(dv_acc.data(), p[c], dop, s.d);
            axpy(dk_acc.data(), ds[c], Q.at(n, h, y, x), s.d);
          }
        store_scaled(DK.at(n, h, ky, kx), dk_acc.data(), scale, s.d);
        store_scaled(DV.at(n, h, ky, kx), dv_acc.data(), A(1), s.d);
      }
    }
  });
}

// ---------------------------------------------------------------------------------------------
#define ATTNKIT_DISPATCH(x, name, ...) \
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, (x).scalar_type(), name, __VA_ARGS__)

void forward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& rpb, const NeighborhoodGeometry& g,
             Tensor& out, Tensor& lse) {
  ATTNKIT_DISPATCH(q, "attnkit::neighborhood_attention", [&] { forward_impl<scalar_t>(q, k, v, rpb, g, out, lse); });
}
void backward_query(const Tensor& dout, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& rpb,
                    const Tensor& lse, const NeighborhoodGeometry& g, Tensor& dq, Tensor& delta, Tensor& drpb) {
  ATTNKIT_DISPATCH(q, "attnkit::neighborhood_attention_backward_query",
                   [&] { backward_query_impl<scalar_t>(dout, q, k, v, rpb, lse, g, dq, delta, drpb); });
}
void backward_key(const Tensor& dout, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& rpb,
                  const Tensor& lse, const Tensor& delta, const NeighborhoodGeometry& g, Tensor& dk, Tensor& dv) {
  ATTNKIT_DISPATCH(q, "attnkit::neighborhood_attention_backward_key",
                   [&] { backward_key_impl<scalar_t>(dout, q, k, v, rpb, lse, delta, g, dk, dv); });
}

}  // namespace
}  // namespace CPU_CAPABILITY

ATTNKIT_DEFINE_KERNEL_TABLE(NeighborhoodAttentionKernelTable, neighborhood_attention_kernel_table,
                            CPU_CAPABILITY::forward, CPU_CAPABILITY::backward_query, CPU_CAPABILITY::backward_key)

}  // namespace attnkit::ops::cpu
