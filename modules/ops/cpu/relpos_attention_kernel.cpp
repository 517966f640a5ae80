// CPU kernels of the fused self-attention op: see relpos_attention_kernels.h for the tiling and the
// on-the-fly bias lookup.
//
// Compiled once per CPU capability (ATTNKIT_CPU_KERNELS in CMakeLists.txt). The tile products run
// on the BLAS that LibTorch itself links (MKL's sgemm_/dgemm_ in the PyPI wheels, the same GEMM
// ATen's own flash attention uses), single-threaded inside each task so that the result does not
// depend on the thread count; where LibTorch exports no such symbol they fall back to at::addmm on
// views of the tiles. Softmax, bias and the elementwise backward are vectorised with Vectorized<T>.
// Forward: one task per (n, head, query tile). Backward: one task per (n, head), which walks its
// query tiles in order and accumulates dK, dV and its table-gradient partial without races.
#include "../detail/relpos_attention_kernels.h"

#include "kernel_dispatch.h"
#include "vec_util.h"

#include <ATen/Dispatch.h>
#include <ATen/Functions.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

// Fortran BLAS and MKL's per-thread control, as exported by libtorch_cpu (weak: null where absent).
extern "C" {
void sgemm_(const char* transa, const char* transb, const int* m, const int* n, const int* k, const float* alpha,
            const float* a, const int* lda, const float* b, const int* ldb, const float* beta, float* c,
            const int* ldc) __attribute__((weak));
void dgemm_(const char* transa, const char* transb, const int* m, const int* n, const int* k, const double* alpha,
            const double* a, const int* lda, const double* b, const int* ldb, const double* beta, double* c,
            const int* ldc) __attribute__((weak));
// (MKL's by-value entry point; the lower-case name in libtorch_cpu is the Fortran one, by pointer.)
int MKL_Set_Num_Threads_Local(int nt) __attribute__((weak));
}

namespace attnkit::ops::cpu {
inline namespace CPU_CAPABILITY {
namespace {

using at::Tensor;

// Tile sizes, ATen's flash attention's: a logits tile is query_tile(L) × kKeyTile (at most 512 KiB
// in float). 256 query rows amortise each key tile best (measured: 64 rows are ~8% slower forward
// at L = 3136, more backward); short sequences take 64 to keep enough tasks for the threads.
constexpr int64_t kKeyTile = 512;
int64_t query_tile(int64_t L) { return L >= 768 ? 256 : 64; }

// MKL single-threaded for the lifetime of a task (the tasks themselves are the parallelism).
struct SingleThreadedBlas {
  int previous = 0;
  SingleThreadedBlas() {
    if (MKL_Set_Num_Threads_Local) previous = MKL_Set_Num_Threads_Local(1);
  }
  ~SingleThreadedBlas() {
    if (MKL_Set_Num_Threads_Local) MKL_Set_Num_Threads_Local(previous);
  }
};

/// Row-major C[M, N] = alpha · op(A)[M, K] · op(B)[K, N] + beta · C (beta = 0: C is not read).
template <typename A>
void gemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, A alpha, const A* a, int64_t lda, const A* b,
          int64_t ldb, A beta, A* c, int64_t ldc) {
  if (M == 0 || N == 0) return;
  auto* blas = [] {
    if constexpr (std::is_same_v<A, float>) return sgemm_;
    else return dgemm_;
  }();
  if (blas) {
    // Column-major BLAS sees each row-major matrix transposed: Cᵀ = op(B)ᵀ · op(A)ᵀ.
    const char ta = trans_b ? 'T' : 'N', tb = trans_a ? 'T' : 'N';
    const int m = static_cast<int>(N), n = static_cast<int>(M), k = static_cast<int>(K);
    const int la = static_cast<int>(ldb), lb = static_cast<int>(lda), lc = static_cast<int>(ldc);
    blas(&ta, &tb, &m, &n, &k, &alpha, b, &la, a, &lb, &beta, c, &lc);
    return;
  }
  const auto opt = at::TensorOptions().dtype(c10::CppTypeToScalarType<A>::value);
  auto view = [&](const A* p, int64_t rows, int64_t cols, int64_t ld, bool trans) {
    auto t = at::from_blob(const_cast<A*>(p), {trans ? cols : rows, trans ? rows : cols}, {ld, 1}, opt);
    return trans ? t.t() : t;
  };
  Tensor cm = at::from_blob(c, {M, N}, {ldc, 1}, opt);
  at::addmm_out(cm, cm, view(a, M, K, lda, trans_a), view(b, K, N, ldb, trans_b), beta, alpha);
}

/// A [N, heads, L, d] tensor with unit last stride: row l of (n, h) starts at row(n, h, l).
template <typename P>
struct Rows {
  P* base;
  int64_t sn, sh, sl, heads;
  template <typename Tn>
  explicit Rows(Tn* p, const Tensor& t) : base(p), sn(t.stride(0)), sh(t.stride(1)), sl(t.stride(2)), heads(t.size(1)) {}
  P* at(int64_t b, int64_t l) const { return base + (b / heads) * sn + (b % heads) * sh + l * sl; }
};
template <typename A>
Rows<const A> rows_of(const Tensor& t) {
  return Rows<const A>(t.data_ptr<A>(), t);
}
template <typename A>
Rows<A> mutable_rows_of(Tensor& t) {
  return Rows<A>(t.data_ptr<A>(), t);
}

/// Keys [start, start + len) of a key tile (offsets within the tile) that lie on one map row, and
/// off_j of the first of them.
struct Run {
  int64_t start, len, off;
};
/// The runs of every key tile of an H×W map.
std::vector<std::vector<Run>> key_runs(int64_t L, int64_t W) {
  std::vector<std::vector<Run>> tiles;
  for (int64_t j0 = 0; j0 < L; j0 += kKeyTile) {
    const int64_t j1 = std::min(L, j0 + kKeyTile);
    std::vector<Run> runs;
    for (int64_t j = j0; j < j1;) {
      const int64_t y = j / W, x = j % W, len = std::min(j1, (y + 1) * W) - j;
      runs.push_back({j - j0, len, y * (2 * W - 1) + x});
      j += len;
    }
    tiles.push_back(std::move(runs));
  }
  return tiles;
}
/// c_i: where query i's runs start in the flipped table.
int64_t query_base(int64_t i, int64_t H, int64_t W) {
  const int64_t T = (2 * H - 1) * (2 * W - 1);
  return T - 1 - ((i / W + H - 1) * (2 * W - 1) + i % W + W - 1);
}

/// dst[0, n) += src[0, n) (runs are short, about W: the tail is one partial vector, not a scalar loop)
template <typename A>
void add_into(A* dst, const A* src, int64_t n) {
  using V = at::vec::Vectorized<A>;
  int64_t i = 0;
  for (; i + V::size() <= n; i += V::size()) (V::loadu(dst + i) + V::loadu(src + i)).store(dst + i);
  if (i < n) {
    const int r = static_cast<int>(n - i);
    (V::loadu(dst + i, r) + V::loadu(src + i, r)).store(dst + i, r);
  }
}

template <typename A>
at::vec::Vectorized<A> vexp(const at::vec::Vectorized<A>& v) {
  if constexpr (std::is_same_v<A, float>) return v.exp_u20();  // ATen's flash attention uses the same
  else return v.exp();
}

/// s[0, n) = exp(s - m); returns the sum.
template <typename A>
A exp_and_sum(A* s, int64_t n, A m) {
  using V = at::vec::Vectorized<A>;
  constexpr int K = V::size();
  const V vm(m);
  V acc(0);
  int64_t i = 0;
  for (; i + K <= n; i += K) {
    const V e = vexp(V::loadu(s + i) - vm);
    e.store(s + i);
    acc += e;
  }
  A sum = horizontal_sum(acc);
  for (; i < n; ++i) {
    s[i] = std::exp(s[i] - m);
    sum += s[i];
  }
  return sum;
}

template <typename A>
A row_max(const A* s, int64_t n) {
  using V = at::vec::Vectorized<A>;
  constexpr int K = V::size();
  const A ninf = -std::numeric_limits<A>::infinity();
  V acc(ninf);
  int64_t i = 0;
  for (; i + K <= n; i += K) acc = at::vec::maximum(acc, V::loadu(s + i));
  A m = horizontal_max(acc);
  for (; i < n; ++i) m = nan_max(m, s[i]);
  return m;
}

template <typename A>
void scale_row(A* p, int64_t n, A f) {
  using V = at::vec::Vectorized<A>;
  int64_t i = 0;
  for (; i + V::size() <= n; i += V::size()) (V::loadu(p + i) * V(f)).store(p + i);
  for (; i < n; ++i) p[i] *= f;
}

template <typename A>
A dot(const A* a, const A* b, int64_t n) {
  using V = at::vec::Vectorized<A>;
  V acc(0);
  int64_t i = 0;
  for (; i + V::size() <= n; i += V::size()) acc += V::loadu(a + i) * V::loadu(b + i);
  A s = horizontal_sum(acc);
  for (; i < n; ++i) s += a[i] * b[i];
  return s;
}

/// Shape of one problem, and the logits of one tile: S = scale · Q_i K_jᵀ + bias.
template <typename A>
struct Problem {
  Rows<const A> q, k, v;
  const A* rtab;  // [heads, T] flipped table, or null
  int64_t heads, L, d, H, W, T, qtile;
  A scale;
  std::vector<std::vector<Run>> runs;

  Problem(const Tensor& q_, const Tensor& k_, const Tensor& v_, const Tensor& rtab_, int64_t H_, int64_t W_, double s)
      : q(rows_of<A>(q_)), k(rows_of<A>(k_)), v(rows_of<A>(v_)),
        rtab(rtab_.defined() ? rtab_.data_ptr<A>() : nullptr), heads(q_.size(1)), L(q_.size(2)), d(q_.size(3)),
        H(H_), W(W_), T((2 * H_ - 1) * (2 * W_ - 1)), qtile(query_tile(L)), scale(static_cast<A>(s)), runs(key_runs(L, W_)) {}

  int64_t query_tiles() const { return (L + qtile - 1) / qtile; }
  int64_t key_tiles() const { return (L + kKeyTile - 1) / kKeyTile; }

  /// Logits of queries [i0, i0 + mq) against key tile kt into s (row stride nk).
  void logits(int64_t b, int64_t i0, int64_t mq, int64_t kt, int64_t nk, A* s) const {
    const int64_t j0 = kt * kKeyTile;
    gemm<A>(false, true, mq, nk, d, scale, q.at(b, i0), q.sl, k.at(b, j0), k.sl, A(0), s, nk);
    if (!rtab) return;
    const A* table = rtab + (b % heads) * T;
    for (int64_t r = 0; r < mq; ++r) {
      const A* from = table + query_base(i0 + r, H, W);
      for (const Run& run : runs[kt]) add_into(s + r * nk + run.start, from + run.off, run.len);
    }
  }
};

// ---------------------------------------------------------------------------------------------
template <typename A>
void forward_impl(const Tensor& q_, const Tensor& k_, const Tensor& v_, const Tensor& rtab, int64_t H, int64_t W,
                  double scale, Tensor& out_, Tensor& lse_) {
  const Problem<A> p(q_, k_, v_, rtab, H, W, scale);
  const Rows<A> out = mutable_rows_of<A>(out_);
  A* lse = lse_.data_ptr<A>();
  const int64_t nqt = p.query_tiles(), nkt = p.key_tiles(), B = q_.size(0) * p.heads, L = p.L, d = p.d;
  const A ninf = -std::numeric_limits<A>::infinity();
  at::parallel_for(0, B * nqt, 1, [&](int64_t t0, int64_t t1) {
    SingleThreadedBlas single;
    const int64_t QT = p.qtile;
    std::vector<A> s(static_cast<size_t>(QT * kKeyTile)), m(QT), l(QT);
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t b = t / nqt, i0 = (t % nqt) * QT, mq = std::min(QT, L - i0);
      std::fill(m.begin(), m.end(), ninf);
      std::fill(l.begin(), l.end(), A(0));
      A* o = out.at(b, i0);
      for (int64_t kt = 0; kt < nkt; ++kt) {
        const int64_t nk = std::min(kKeyTile, L - kt * kKeyTile);
        p.logits(b, i0, mq, kt, nk, s.data());
        for (int64_t r = 0; r < mq; ++r) {
          A* row = s.data() + r * nk;
          const A m_new = nan_max(m[r], row_max(row, nk));
          const A sum = exp_and_sum(row, nk, m_new);
          // Online softmax: rescale what the earlier key tiles contributed.
          const A factor = kt == 0 ? A(0) : std::exp(m[r] - m_new);
          if (kt > 0 && factor != A(1)) scale_row(o + r * out.sl, d, factor);
          l[r] = l[r] * factor + sum;
          m[r] = m_new;
        }
        gemm<A>(false, false, mq, d, nk, A(1), s.data(), nk, p.v.at(b, kt * kKeyTile), p.v.sl, kt == 0 ? A(0) : A(1),
                o, out.sl);
      }
      for (int64_t r = 0; r < mq; ++r) {
        scale_row(o + r * out.sl, d, A(1) / l[r]);
        lse[b * L + i0 + r] = m[r] + std::log(l[r]);
      }
    }
  });
}

template <typename A>
void backward_impl(const Tensor& dout_, const Tensor& q_, const Tensor& k_, const Tensor& v_, const Tensor& out_,
                   const Tensor& lse_, const Tensor& rtab, int64_t H, int64_t W, double scale, Tensor& dq_,
                   Tensor& dk_, Tensor& dv_, Tensor& dtable_) {
  const Problem<A> p(q_, k_, v_, rtab, H, W, scale);
  const Rows<const A> dout = rows_of<A>(dout_), out = rows_of<A>(out_);
  const Rows<A> dq = mutable_rows_of<A>(dq_), dk = mutable_rows_of<A>(dk_), dv = mutable_rows_of<A>(dv_);
  const A* lse = lse_.data_ptr<A>();
  const int64_t N = q_.size(0), heads = p.heads, B = N * heads, L = p.L, d = p.d, T = p.T;
  const int64_t nqt = p.query_tiles(), nkt = p.key_tiles();
  const bool want_table = dtable_.defined() && p.rtab;
  // One flipped partial table per (n, head), summed over n in order at the end.
  std::vector<A> partial(want_table ? static_cast<size_t>(B * T) : 0, A(0));
  at::parallel_for(0, B, 1, [&](int64_t b0, int64_t b1) {
    SingleThreadedBlas single;
    const int64_t QT = p.qtile;
    std::vector<A> s(static_cast<size_t>(QT * kKeyTile)), ds(s.size()), delta(QT);
    for (int64_t b = b0; b < b1; ++b) {
      A* dtab = want_table ? partial.data() + b * T : nullptr;
      for (int64_t qt = 0; qt < nqt; ++qt) {
        const int64_t i0 = qt * QT, mq = std::min(QT, L - i0);
        const A* go = dout.at(b, i0);
        for (int64_t r = 0; r < mq; ++r) delta[r] = dot(go + r * dout.sl, out.at(b, i0 + r), d);
        for (int64_t kt = 0; kt < nkt; ++kt) {
          const int64_t j0 = kt * kKeyTile, nk = std::min(kKeyTile, L - j0);
          p.logits(b, i0, mq, kt, nk, s.data());
          for (int64_t r = 0; r < mq; ++r) {  // P = exp(S - lse)
            A* row = s.data() + r * nk;
            exp_and_sum(row, nk, lse[b * L + i0 + r]);
          }
          const A first_q = qt == 0 ? A(0) : A(1);
          // dV_j += Pᵀ dO_i;  dP = dO_i V_jᵀ
          gemm<A>(true, false, nk, d, mq, A(1), s.data(), nk, go, dout.sl, first_q, dv.at(b, j0), dv.sl);
          gemm<A>(false, true, mq, nk, d, A(1), go, dout.sl, p.v.at(b, j0), p.v.sl, A(0), ds.data(), nk);
          // dS = P ∘ (dP - delta)
          using V = at::vec::Vectorized<A>;
          for (int64_t r = 0; r < mq; ++r) {
            const A* pr = s.data() + r * nk;
            A* dr = ds.data() + r * nk;
            const V vd(delta[r]);
            int64_t j = 0;
            for (; j + V::size() <= nk; j += V::size())
              (V::loadu(pr + j) * (V::loadu(dr + j) - vd)).store(dr + j);
            for (; j < nk; ++j) dr[j] = pr[j] * (dr[j] - delta[r]);
            if (dtab) {
              A* to = dtab + query_base(i0 + r, H, W);
              for (const Run& run : p.runs[kt]) add_into(to + run.off, dr + run.start, run.len);
            }
          }
          // dQ_i += scale · dS K_j;  dK_j += scale · dSᵀ Q_i
          gemm<A>(false, false, mq, d, nk, p.scale, ds.data(), nk, p.k.at(b, j0), p.k.sl, kt == 0 ? A(0) : A(1),
                  dq.at(b, i0), dq.sl);
          gemm<A>(true, false, nk, d, mq, p.scale, ds.data(), nk, p.q.at(b, i0), p.q.sl, first_q, dk.at(b, j0), dk.sl);
        }
      }
    }
  });
  if (!want_table) return;
  // dtable[t, h] = Σ_n partial[n, h][T - 1 - t], n in order: the same sums whatever the thread count.
  A* dtable = dtable_.data_ptr<A>();
  at::parallel_for(0, T, 1024, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t)
      for (int64_t h = 0; h < heads; ++h) {
        A acc(0);
        for (int64_t n = 0; n < N; ++n) acc += partial[static_cast<size_t>((n * heads + h) * T + T - 1 - t)];
        dtable[t * heads + h] = acc;
      }
  });
}

// ---------------------------------------------------------------------------------------------
void forward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& rtab, int64_t height, int64_t width,
             double scale, Tensor& out, Tensor& lse) {
  AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "attnkit::relpos_attention", [&] {
    forward_impl<scalar_t>(q, k, v, rtab, height, width, scale, out, lse);
  });
}
void backward(const Tensor& dout, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out,
              const Tensor& lse, const Tensor& rtab, int64_t height, int64_t width, double scale, Tensor& dq,
              Tensor& dk, Tensor& dv, Tensor& dtable) {
  AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "attnkit::relpos_attention_backward", [&] {
    backward_impl<scalar_t>(dout, q, k, v, out, lse, rtab, height, width, scale, dq, dk, dv, dtable);
  });
}

}  // namespace
}  // namespace CPU_CAPABILITY

// One table per compiled capability: relpos_attention_kernel_table_DEFAULT(), ..._AVX2(), ...
ATTNKIT_DEFINE_KERNEL_TABLE(RelposAttentionKernelTable, relpos_attention_kernel_table, CPU_CAPABILITY::forward,
                            CPU_CAPABILITY::backward)

}  // namespace attnkit::ops::cpu
