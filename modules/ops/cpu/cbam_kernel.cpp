// CPU kernels of the fused CBAM op, the passes over the feature map (see detail/cbam_kernels.h for
// what each computes), and the kernel table; the gates' small math is cbam_gates_kernel.cpp.
//
// Compiled once per CPU capability (this file is listed in ATTNKIT_CPU_KERNELS in CMakeLists.txt);
// vectorised with ATen's Vectorized<T>, threaded with at::parallel_for. Two layouts:
//   NCHW  ([N, C, P] rows of positions): per-channel work walks a row; per-position work walks
//         blocks of positions across all channels, keeping partial results in small stack buffers.
//   NHWC  ([N, P, C] rows of channels): the transpose of the above.
// Per-element arg-max bookkeeping (max-pool gradients) is done in exact "first index wins" order,
// as a scalar fix-up after the vectorised sweep: it touches one element per row.
#include "cbam_kernel.h"

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

// Positions (NCHW) or channels (NHWC) handled by one task of a column-wise sweep.
constexpr int64_t kBlock = 512;
// Rows (channels in NCHW, positions in NHWC) folded into a block's partial results per sweep.
constexpr int kRows = 8;
// Positions per task of the NHWC channel pool (see channel_pool_impl).
constexpr int64_t kPositionChunk = 256;

struct Shape {
  int64_t n, c, p;
};
Shape shape_of(const Tensor& x, bool nhwc) {
  return nhwc ? Shape{x.size(0), x.size(2), x.size(1)} : Shape{x.size(0), x.size(1), x.size(2)};
}

// Positions per task of a per-position sweep over channels (NCHW): at most kBlock (the stack
// buffers), and small enough for about four tasks per thread, so that batch 1 with a 7×7 map still
// splits. Each position's result does not depend on the blocking.
int64_t position_block(int64_t N, int64_t P, int64_t K) {
  const int64_t tasks = 4 * at::get_num_threads();
  const int64_t per_task = (N * P + tasks - 1) / tasks;
  return std::clamp<int64_t>((per_task + K - 1) / K * K, K, kBlock);
}

template <typename T>
const acc_t<T>* opt_ptr(const Tensor& t) {
  return t.defined() ? t.data_ptr<acc_t<T>>() : nullptr;
}


// ---------------------------------------------------------------------------------------------
template <typename T>
void channel_pool_impl(const Tensor& x, bool nhwc, Tensor& avg_t, Tensor& max_t) {
  using L = Lanes<T>;
  using A = typename L::A;
  using V = typename L::V;
  constexpr int K = L::kSize;
  const Shape sh = shape_of(x, nhwc);
  const int64_t N = sh.n, C = sh.c, P = sh.p;
  const T* xp = x.data_ptr<T>();
  A* avg = avg_t.data_ptr<A>();
  A* mx = max_t.data_ptr<A>();
  const A ninf = -std::numeric_limits<A>::infinity();
  if (!nhwc) {
    // kRows rows side by side, each with its own accumulators: several memory streams in flight
    // instead of one (a single row at a time runs at about half the read bandwidth). Each row's
    // result does not depend on which rows share its group.
    at::parallel_for(0, N * C, grain_for(P), [&](int64_t b, int64_t e) {
      for (int64_t r0 = b; r0 < e; r0 += kRows) {
        const int rows = static_cast<int>(std::min<int64_t>(kRows, e - r0));
        const T* row = xp + r0 * P;
        V vs[kRows], vm[kRows];
        for (int j = 0; j < rows; ++j) {
          vs[j] = V(0);
          vm[j] = V(ninf);
        }
        int64_t i = 0;
        for (; i + K <= P; i += K)
          for (int j = 0; j < rows; ++j) {
            const V v = L::load(row + j * P + i);
            vs[j] += v;
            vm[j] = at::vec::maximum(vm[j], v);
          }
        if (i < P) {
          const int rem = static_cast<int>(P - i);
          for (int j = 0; j < rows; ++j) {
            vs[j] += L::load(row + j * P + i, rem, A(0));
            vm[j] = at::vec::maximum(vm[j], L::load(row + j * P + i, rem, ninf));
          }
        }
        for (int j = 0; j < rows; ++j) {
          avg[r0 + j] = horizontal_sum(vs[j]) / static_cast<A>(P);
          mx[r0 + j] = horizontal_max(vm[j]);
        }
      }
    });
    return;
  }
  // Tasks: (image, block of kBlock channels, chunk of kPositionChunk positions). Splitting the
  // positions too keeps both threads busy at batch 1, where a 256-channel map is one channel block.
  // The chunks are fixed by P alone, so the result does not depend on the thread count: partial
  // sums and maxima per chunk, then combined in chunk order.
  const int64_t blocks = (C + kBlock - 1) / kBlock;
  const int64_t chunks = (P + kPositionChunk - 1) / kPositionChunk;
  std::vector<A> partial_sum(chunks > 1 ? N * chunks * C : 0), partial_max(partial_sum.size());
  const int64_t chunk_len = std::min(kPositionChunk, P);
  at::parallel_for(0, N * blocks * chunks, grain_for(std::min(kBlock, C) * chunk_len), [&](int64_t b, int64_t e) {
    alignas(64) A sum[kBlock];
    alignas(64) A m[kBlock];
    for (int64_t t = b; t < e; ++t) {
      const int64_t n = t / (blocks * chunks), c0 = (t / chunks % blocks) * kBlock, chunk = t % chunks;
      const int64_t cn = std::min(kBlock, C - c0);
      const int64_t p_begin = chunk * kPositionChunk, p_end = std::min(P, p_begin + kPositionChunk);
      std::fill(sum, sum + cn, A(0));
      std::fill(m, m + cn, ninf);
      for (int64_t p0 = p_begin; p0 < p_end; p0 += kRows) {
        const int rows = static_cast<int>(std::min<int64_t>(kRows, p_end - p0));
        const T* row = xp + (n * P + p0) * C + c0;
        for (int64_t j = 0; j < cn; j += K) {
          const int cnt = static_cast<int>(std::min<int64_t>(K, cn - j));
          V vs = V::loadu(sum + j), vm = V::loadu(m + j);
          for (int i = 0; i < rows; ++i) {  // positions in order, as one at a time
            const V v = L::load(row + i * C + j, cnt, A(0));
            vs += v;
            vm = at::vec::maximum(vm, v);
          }
          vs.store(sum + j);
          vm.store(m + j);
        }
      }
      if (chunks == 1) {
        for (int64_t j = 0; j < cn; ++j) {
          avg[n * C + c0 + j] = sum[j] / static_cast<A>(P);
          mx[n * C + c0 + j] = m[j];
        }
      } else {
        std::copy(sum, sum + cn, partial_sum.data() + (n * chunks + chunk) * C + c0);
        std::copy(m, m + cn, partial_max.data() + (n * chunks + chunk) * C + c0);
      }
    }
  });
  if (chunks == 1) return;
  at::parallel_for(0, N, 1, [&](int64_t b, int64_t e) {
    for (int64_t n = b; n < e; ++n)
      for (int64_t c = 0; c < C; ++c) {
        A total = 0, best = ninf;
        for (int64_t chunk = 0; chunk < chunks; ++chunk) {
          total += partial_sum[(n * chunks + chunk) * C + c];
          const A v = partial_max[(n * chunks + chunk) * C + c];
          if (v > best || std::isnan(v)) best = v;  // NaN propagates, as at::vec::maximum above
        }
        avg[n * C + c] = total / static_cast<A>(P);
        mx[n * C + c] = best;
      }
  });
}

// ---------------------------------------------------------------------------------------------
template <typename T>
void gated_pool_impl(const Tensor& x, bool nhwc, const Tensor& g_t, Tensor& zmax_t, Tensor& zmean_t) {
  using L = Lanes<T>;
  using A = typename L::A;
  using V = typename L::V;
  constexpr int K = L::kSize;
  const Shape sh = shape_of(x, nhwc);
  const int64_t N = sh.n, C = sh.c, P = sh.p;
  const T* xp = x.data_ptr<T>();
  const A* g = g_t.data_ptr<A>();
  A* zmax = zmax_t.data_ptr<A>();
  A* zmean = zmean_t.data_ptr<A>();
  const A ninf = -std::numeric_limits<A>::infinity();
  const A inv_c = A(1) / static_cast<A>(C);
  if (!nhwc) {
    const int64_t pb = position_block(N, P, K), blocks = (P + pb - 1) / pb;
    at::parallel_for(0, N * blocks, grain_for(pb * C), [&](int64_t b, int64_t e) {
      alignas(64) A sum[kBlock];
      alignas(64) A m[kBlock];
      for (int64_t t = b; t < e; ++t) {
        const int64_t n = t / blocks, p0 = (t % blocks) * pb, pn = std::min(pb, P - p0);
        std::fill(sum, sum + pn, A(0));
        std::fill(m, m + pn, ninf);
        // kRows channel rows per sweep of the block: the partial results go through the stack buffers
        // once per kRows channels, not once per channel. Channels are still added in order.
        for (int64_t c0 = 0; c0 < C; c0 += kRows) {
          const int rows = static_cast<int>(std::min<int64_t>(kRows, C - c0));
          const T* row[kRows];
          V gc[kRows];
          for (int i = 0; i < rows; ++i) {
            row[i] = xp + (n * C + c0 + i) * P + p0;
            gc[i] = V(g[n * C + c0 + i]);
          }
          for (int64_t j = 0; j < pn; j += K) {
            const int cnt = static_cast<int>(std::min<int64_t>(K, pn - j));
            V vs = V::loadu(sum + j), vm = V::loadu(m + j);
            for (int i = 0; i < rows; ++i) {
              const V v = L::load(row[i] + j, cnt) * gc[i];
              vs += v;
              vm = at::vec::maximum(vm, v);
            }
            vs.store(sum + j);
            vm.store(m + j);
          }
        }
        for (int64_t j = 0; j < pn; ++j) {
          zmax[n * P + p0 + j] = m[j];
          zmean[n * P + p0 + j] = sum[j] * inv_c;
        }
      }
    });
    return;
  }
  // A position's channels in kChains interleaved sums and maxima: one chain of dependent adds along
  // the row was bound by the add's latency (about 3x a read of the row from L3).
  constexpr int kChains = 4;
  static_assert(kChains == 4, "the chains are combined below as a fixed tree of four");
  at::parallel_for(0, N * P, grain_for(C), [&](int64_t b, int64_t e) {
    for (int64_t r = b; r < e; ++r) {
      const int64_t n = r / P;
      const T* row = xp + r * C;
      const A* gn = g + n * C;
      V vs[kChains], vm[kChains];
      for (int u = 0; u < kChains; ++u) {
        vs[u] = V(0);
        vm[u] = V(ninf);
      }
      int64_t c = 0;
      for (; c + kChains * K <= C; c += kChains * K)
        for (int u = 0; u < kChains; ++u) {
          const V v = L::load(row + c + u * K) * V::loadu(gn + c + u * K);
          vs[u] += v;
          vm[u] = at::vec::maximum(vm[u], v);
        }
      for (; c + K <= C; c += K) {
        const V v = L::load(row + c) * V::loadu(gn + c);
        vs[0] += v;
        vm[0] = at::vec::maximum(vm[0], v);
      }
      if (c < C) {
        const int rem = static_cast<int>(C - c);
        const V v = L::load(row + c, rem) * V::loadu(gn + c, rem);
        vs[0] += v;
        vm[0] = at::vec::maximum(vm[0], V::set(V(ninf), v, rem));
      }
      // Lanes combined by shuffle trees: a chain of eight dependent scalar steps per position was as
      // long as the whole row's loads at C = 64-256.
      zmax[r] = lane_max(at::vec::maximum(at::vec::maximum(vm[0], vm[1]), at::vec::maximum(vm[2], vm[3])));
      zmean[r] = lane_sum((vs[0] + vs[1]) + (vs[2] + vs[3])) * inv_c;
    }
  });
}

// ---------------------------------------------------------------------------------------------
// The last pass over one row of n elements: out = x * a * b (+ residual) (then ReLU), the channel
// gate times the spatial gate, each either one value per element (a pointer) or one for the row.
// NCHW rows: a = the channel's gate (scalar), b = the spatial gate (row, or none); NHWC rows: a = the
// channel gates (row), b = the position's spatial gate (scalar). Everything the loop reads is a
// local or an argument, and whole vectors go through plain loads and stores: with the partial
// store's memcpy inside the loop, the compiler reloaded every captured variable after each store.
template <typename T, bool kResidual, bool kRelu>
void gate_row(const T* x, const acc_t<T>* a_row, acc_t<T> a, const acc_t<T>* b_row, acc_t<T> b, const T* res, T* out,
              int64_t n) {
  using L = Lanes<T>;
  using A = acc_t<T>;
  using V = typename L::V;
  constexpr int K = L::kSize;
  const V va(a), vb(b);
  auto value = [&](int64_t i, int cnt) {
    V v = L::load(x + i, cnt) * (a_row ? V::loadu(a_row + i, cnt) : va);
    v = v * (b_row ? V::loadu(b_row + i, cnt) : vb);
    if constexpr (kResidual) v = v + L::load(res + i, cnt);
    if constexpr (kRelu) v = at::vec::maximum(v, V(A(0)));  // propagates NaN, as torch.relu
    return v;
  };
  int64_t i = 0;
  for (; i + K <= n; i += K) L::store(out + i, value(i, K));
  if (i < n) {
    const int cnt = static_cast<int>(n - i);
    L::store(out + i, value(i, cnt), cnt);
  }
}

template <typename T, bool kResidual, bool kRelu>
void apply_gates_rows(const T* xp, bool nhwc, const Shape& sh, const acc_t<T>* g, const acc_t<T>* s, const T* rp,
                      T* op) {
  using A = acc_t<T>;
  const int64_t N = sh.n, C = sh.c, P = sh.p;
  if (!nhwc) {
    at::parallel_for(0, N * C, grain_for(P), [=](int64_t b, int64_t e) {
      for (int64_t r = b; r < e; ++r)
        gate_row<T, kResidual, kRelu>(xp + r * P, nullptr, g[r], s ? s + (r / C) * P : nullptr, A(1),
                                      rp ? rp + r * P : nullptr, op + r * P, P);
    });
    return;
  }
  at::parallel_for(0, N * P, grain_for(C), [=](int64_t b, int64_t e) {
    for (int64_t r = b; r < e; ++r)
      gate_row<T, kResidual, kRelu>(xp + r * C, g + (r / P) * C, A(1), nullptr, s ? s[r] : A(1),
                                    rp ? rp + r * C : nullptr, op + r * C, C);
  });
}

template <typename T>
void apply_gates_impl(const Tensor& x, bool nhwc, const Tensor& g_t, const Tensor& s_t, const Tensor& res_t, bool relu,
                      Tensor& out) {
  const Shape sh = shape_of(x, nhwc);
  const T* xp = x.data_ptr<T>();
  const T* rp = res_t.defined() ? res_t.data_ptr<T>() : nullptr;
  T* op = out.data_ptr<T>();
  const acc_t<T>* g = g_t.data_ptr<acc_t<T>>();
  const acc_t<T>* s = opt_ptr<T>(s_t);
  if (rp && relu) apply_gates_rows<T, true, true>(xp, nhwc, sh, g, s, rp, op);
  else if (rp) apply_gates_rows<T, true, false>(xp, nhwc, sh, g, s, rp, op);
  else if (relu) apply_gates_rows<T, false, true>(xp, nhwc, sh, g, s, rp, op);
  else apply_gates_rows<T, false, false>(xp, nhwc, sh, g, s, rp, op);
}

// ---------------------------------------------------------------------------------------------
template <typename T>
void backward_spatial_impl(const Tensor& dy_t, const Tensor& x, bool nhwc, const Tensor& g_t, Tensor& ds_t,
                           Tensor& best_t) {
  using L = Lanes<T>;
  using A = typename L::A;
  using V = typename L::V;
  constexpr int K = L::kSize;
  const Shape sh = shape_of(x, nhwc);
  const int64_t N = sh.n, C = sh.c, P = sh.p;
  const T* xp = x.data_ptr<T>();
  const T* dyp = dy_t.data_ptr<T>();
  const A* g = g_t.data_ptr<A>();
  A* ds = ds_t.data_ptr<A>();
  int32_t* best_c = best_t.data_ptr<int32_t>();
  const A ninf = -std::numeric_limits<A>::infinity();
  if (!nhwc) {
    const int64_t pb = position_block(N, P, K), blocks = (P + pb - 1) / pb;
    at::parallel_for(0, N * blocks, grain_for(pb * C), [&](int64_t b, int64_t e) {
      alignas(64) A acc[kBlock];
      alignas(64) A best[kBlock];
      alignas(64) A arg[kBlock];
      for (int64_t t = b; t < e; ++t) {
        const int64_t n = t / blocks, p0 = (t % blocks) * pb, pn = std::min(pb, P - p0);
        std::fill(acc, acc + pn, A(0));
        std::fill(best, best + pn, ninf);
        std::fill(arg, arg + pn, A(0));
        for (int64_t c = 0; c < C; ++c) {
          const V gc(g[n * C + c]);
          const V cv(static_cast<A>(c));
          const int64_t off = (n * C + c) * P + p0;
          for (int64_t j = 0; j < pn; j += K) {
            const int cnt = static_cast<int>(std::min<int64_t>(K, pn - j));
            const V y = L::load(xp + off + j, cnt) * gc;
            (V::loadu(acc + j) + L::load(dyp + off + j, cnt) * y).store(acc + j);
            const V bv = V::loadu(best + j);
            const V take = y > bv;  // strict: the first channel wins ties
            V::blendv(bv, y, take).store(best + j);
            V::blendv(V::loadu(arg + j), cv, take).store(arg + j);
          }
        }
        for (int64_t j = 0; j < pn; ++j) {
          ds[n * P + p0 + j] = acc[j];
          best_c[n * P + p0 + j] = static_cast<int32_t>(arg[j]);
        }
      }
    });
    return;
  }
  at::parallel_for(0, N * P, grain_for(C), [&](int64_t b, int64_t e) {
    alignas(64) A vals[K];
    alignas(64) A idxs[K];
    for (int64_t r = b; r < e; ++r) {
      const A* gn = g + (r / P) * C;
      const T* row = xp + r * C;
      const T* drow = dyp + r * C;
      V acc(0), best(ninf), arg(0);
      for (int64_t c = 0; c < C; c += K) {
        const int cnt = static_cast<int>(std::min<int64_t>(K, C - c));
        const V y = V::set(V(ninf), L::load(row + c, cnt) * V::loadu(gn + c, cnt), cnt);
        acc += L::load(drow + c, cnt) * V::set(V(0), y, cnt);
        const V take = y > best;
        best = V::blendv(best, y, take);
        arg = V::blendv(arg, V::arange(static_cast<A>(c), A(1)), take);
      }
      // Lanes hold the first maximum of their own channel subsets; the answer is the lowest index
      // among the lanes that reach the overall maximum.
      best.store(vals);
      arg.store(idxs);
      A m = vals[0];
      for (int l = 1; l < K; ++l) m = std::max(m, vals[l]);
      A first = static_cast<A>(C);
      for (int l = 0; l < K; ++l)
        if (vals[l] == m) first = std::min(first, idxs[l]);
      ds[r] = horizontal_sum(acc);
      best_c[r] = first < static_cast<A>(C) ? static_cast<int32_t>(first) : 0;
    }
  });
}

// ---------------------------------------------------------------------------------------------
template <typename T>
void backward_gate_impl(const Tensor& dy_t, const Tensor& x, bool nhwc, const Tensor& s_t, const Tensor& dzmax_t,
                        const Tensor& dzmean_t, const Tensor& best_t, const Tensor& max_t, Tensor& dg_t,
                        Tensor& argmax_t) {
  using L = Lanes<T>;
  using A = typename L::A;
  using V = typename L::V;
  constexpr int K = L::kSize;
  const Shape sh = shape_of(x, nhwc);
  const int64_t N = sh.n, C = sh.c, P = sh.p;
  const T* xp = x.data_ptr<T>();
  const T* dyp = dy_t.data_ptr<T>();
  const A* s = opt_ptr<T>(s_t);
  const A* dzmax = opt_ptr<T>(dzmax_t);
  const A* dzmean = opt_ptr<T>(dzmean_t);
  const int32_t* best_c = best_t.defined() ? best_t.data_ptr<int32_t>() : nullptr;
  const A* mx = max_t.data_ptr<A>();
  A* dg = dg_t.data_ptr<A>();
  int32_t* argmax_p = argmax_t.data_ptr<int32_t>();
  const A inv_c = A(1) / static_cast<A>(C);

  if (!nhwc) {
    at::parallel_for(0, N * C, grain_for(P), [&](int64_t b, int64_t e) {
      for (int64_t r = b; r < e; ++r) {
        const int64_t n = r / C;
        const T* row = xp + r * P;
        const T* drow = dyp + r * P;
        V acc(0);
        for (int64_t i = 0; i < P; i += K) {
          const int cnt = static_cast<int>(std::min<int64_t>(K, P - i));
          V t = L::load(drow + i, cnt);
          if (s) t = t * V::loadu(s + n * P + i, cnt);
          if (dzmean) t = t + V::loadu(dzmean + n * P + i, cnt) * V(inv_c);
          acc += L::load(row + i, cnt) * t;  // padded lanes load 0
        }
        dg[r] = horizontal_sum(acc);
        const A m = mx[r];
        int64_t i = 0;
        while (i < P - 1 && !(static_cast<A>(row[i]) == m)) ++i;
        argmax_p[r] = static_cast<int32_t>(i);
      }
    });
  } else {
    const int64_t blocks = (C + kBlock - 1) / kBlock;
    at::parallel_for(0, N * blocks, grain_for(std::min(kBlock, C) * P), [&](int64_t b, int64_t e) {
      alignas(64) A acc[kBlock];
      alignas(64) A found[kBlock];
      for (int64_t t = b; t < e; ++t) {
        const int64_t n = t / blocks, c0 = (t % blocks) * kBlock, cn = std::min(kBlock, C - c0);
        std::fill(acc, acc + cn, A(0));
        std::fill(found, found + cn, static_cast<A>(P));
        for (int64_t p = 0; p < P; ++p) {
          const int64_t off = (n * P + p) * C + c0;
          const V sp(s ? s[n * P + p] : A(1));
          const V zm(dzmean ? dzmean[n * P + p] * inv_c : A(0));
          const V pv(static_cast<A>(p));
          for (int64_t j = 0; j < cn; j += K) {
            const int cnt = static_cast<int>(std::min<int64_t>(K, cn - j));
            const V xv = L::load(xp + off + j, cnt);
            (V::loadu(acc + j) + xv * (L::load(dyp + off + j, cnt) * sp + zm)).store(acc + j);
            const V f = V::loadu(found + j);
            const V hit = (xv == V::loadu(mx + n * C + c0 + j, cnt)) & (f == V(static_cast<A>(P)));
            V::blendv(f, pv, hit).store(found + j);
          }
        }
        for (int64_t j = 0; j < cn; ++j) {
          dg[n * C + c0 + j] = acc[j];
          argmax_p[n * C + c0 + j] = static_cast<int32_t>(std::min<A>(found[j], static_cast<A>(P - 1)));
        }
      }
    });
  }
  // The channel-max path of the spatial gate: each position sends dzmax to its arg-max channel.
  if (dzmax) {
    at::parallel_for(0, N, grain_for(P), [&](int64_t b, int64_t e) {
      for (int64_t n = b; n < e; ++n)
        for (int64_t p = 0; p < P; ++p) {
          const int64_t c = best_c[n * P + p];
          const int64_t xi = nhwc ? (n * P + p) * C + c : (n * C + c) * P + p;
          dg[n * C + c] += static_cast<A>(xp[xi]) * dzmax[n * P + p];
        }
    });
  }
}

// ---------------------------------------------------------------------------------------------
template <typename T>
void backward_input_impl(const Tensor& dy_t, const Tensor& x, bool nhwc, const Tensor& g_t, const Tensor& s_t,
                         const Tensor& dzmax_t, const Tensor& dzmean_t, const Tensor& best_t, const Tensor& davg_t,
                         const Tensor& dmax_t, const Tensor& argmax_t, Tensor& dx_t) {
  using L = Lanes<T>;
  using A = typename L::A;
  using V = typename L::V;
  constexpr int K = L::kSize;
  const Shape sh = shape_of(x, nhwc);
  const int64_t N = sh.n, C = sh.c, P = sh.p;
  const T* dyp = dy_t.data_ptr<T>();
  const A* g = g_t.data_ptr<A>();
  const A* s = opt_ptr<T>(s_t);
  const A* dzmax = opt_ptr<T>(dzmax_t);
  const A* dzmean = opt_ptr<T>(dzmean_t);
  const int32_t* best_c = best_t.defined() ? best_t.data_ptr<int32_t>() : nullptr;
  const A* davg = opt_ptr<T>(davg_t);
  const A* dmax = opt_ptr<T>(dmax_t);
  const int32_t* argmax_p = argmax_t.defined() ? argmax_t.data_ptr<int32_t>() : nullptr;
  T* dx = dx_t.data_ptr<T>();
  const A inv_c = A(1) / static_cast<A>(C);
  const A inv_p = A(1) / static_cast<A>(P);

  if (!nhwc) {
    at::parallel_for(0, N * C, grain_for(P), [&](int64_t b, int64_t e) {
      for (int64_t r = b; r < e; ++r) {
        const int64_t n = r / C;
        const V gc(g[r]);
        const V base(davg ? davg[r] * inv_p : A(0));
        const T* drow = dyp + r * P;
        T* orow = dx + r * P;
        for (int64_t i = 0; i < P; i += K) {
          const int cnt = static_cast<int>(std::min<int64_t>(K, P - i));
          V t = L::load(drow + i, cnt);
          if (s) t = t * V::loadu(s + n * P + i, cnt);
          if (dzmean) t = t + V::loadu(dzmean + n * P + i, cnt) * V(inv_c);
          L::store(orow + i, t * gc + base, cnt);
        }
        if (dmax) {
          T& ref = orow[argmax_p[r]];
          ref = static_cast<T>(static_cast<A>(ref) + dmax[r]);
        }
      }
    });
    if (dzmax) {
      at::parallel_for(0, N, grain_for(P), [&](int64_t b, int64_t e) {
        for (int64_t n = b; n < e; ++n)
          for (int64_t p = 0; p < P; ++p) {
            const int64_t c = best_c[n * P + p];
            T& ref = dx[(n * C + c) * P + p];
            ref = static_cast<T>(static_cast<A>(ref) + g[n * C + c] * dzmax[n * P + p]);
          }
      });
    }
    return;
  }
  at::parallel_for(0, N * P, grain_for(C), [&](int64_t b, int64_t e) {
    for (int64_t r = b; r < e; ++r) {
      const int64_t n = r / P;
      const A* gn = g + n * C;
      const A* davg_n = davg ? davg + n * C : nullptr;
      const V sp(s ? s[r] : A(1));
      const V zm(dzmean ? dzmean[r] * inv_c : A(0));
      const T* drow = dyp + r * C;
      T* orow = dx + r * C;
      for (int64_t c = 0; c < C; c += K) {
        const int cnt = static_cast<int>(std::min<int64_t>(K, C - c));
        V v = (L::load(drow + c, cnt) * sp + zm) * V::loadu(gn + c, cnt);
        if (davg_n) v = v + V::loadu(davg_n + c, cnt) * V(inv_p);
        L::store(orow + c, v, cnt);
      }
      if (dzmax) {
        const int64_t c = best_c[r];
        orow[c] = static_cast<T>(static_cast<A>(orow[c]) + gn[c] * dzmax[r]);
      }
    }
  });
  if (dmax) {
    at::parallel_for(0, N, grain_for(P), [&](int64_t b, int64_t e) {
      for (int64_t n = b; n < e; ++n)
        for (int64_t c = 0; c < C; ++c) {
          T& ref = dx[(n * P + argmax_p[n * C + c]) * C + c];
          ref = static_cast<T>(static_cast<A>(ref) + dmax[n * C + c]);
        }
    });
  }
}

// ---------------------------------------------------------------------------------------------
#define ATTNKIT_DISPATCH(x, name, ...) \
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, (x).scalar_type(), name, __VA_ARGS__)

void channel_pool(const Tensor& x, bool nhwc, Tensor& avg, Tensor& max) {
  ATTNKIT_DISPATCH(x, "attnkit::channel_pool", [&] { channel_pool_impl<scalar_t>(x, nhwc, avg, max); });
}
void gated_pool(const Tensor& x, bool nhwc, const Tensor& g, Tensor& zmax, Tensor& zmean) {
  ATTNKIT_DISPATCH(x, "attnkit::gated_pool", [&] { gated_pool_impl<scalar_t>(x, nhwc, g, zmax, zmean); });
}
void apply_gates(const Tensor& x, bool nhwc, const Tensor& g, const Tensor& s, const Tensor& residual, bool relu,
                 Tensor& out) {
  ATTNKIT_DISPATCH(x, "attnkit::apply_gates", [&] { apply_gates_impl<scalar_t>(x, nhwc, g, s, residual, relu, out); });
}
void backward_spatial(const Tensor& dy, const Tensor& x, bool nhwc, const Tensor& g, Tensor& ds, Tensor& best_c) {
  ATTNKIT_DISPATCH(x, "attnkit::backward_spatial",
                   [&] { backward_spatial_impl<scalar_t>(dy, x, nhwc, g, ds, best_c); });
}
void backward_gate(const Tensor& dy, const Tensor& x, bool nhwc, const Tensor& s, const Tensor& dzmax,
                   const Tensor& dzmean, const Tensor& best_c, const Tensor& max, Tensor& dg, Tensor& argmax_p) {
  ATTNKIT_DISPATCH(x, "attnkit::backward_gate", [&] {
    backward_gate_impl<scalar_t>(dy, x, nhwc, s, dzmax, dzmean, best_c, max, dg, argmax_p);
  });
}
void backward_input(const Tensor& dy, const Tensor& x, bool nhwc, const Tensor& g, const Tensor& s,
                    const Tensor& dzmax, const Tensor& dzmean, const Tensor& best_c, const Tensor& davg,
                    const Tensor& dmax, const Tensor& argmax_p, Tensor& dx) {
  ATTNKIT_DISPATCH(x, "attnkit::backward_input", [&] {
    backward_input_impl<scalar_t>(dy, x, nhwc, g, s, dzmax, dzmean, best_c, davg, dmax, argmax_p, dx);
  });
}

}  // namespace
}  // namespace CPU_CAPABILITY

// One table per compiled capability, named after it: cbam_kernel_table_DEFAULT(), ..._AVX2(), ...
ATTNKIT_DEFINE_KERNEL_TABLE(CbamKernelTable, cbam_kernel_table, CPU_CAPABILITY::channel_pool,
                            CPU_CAPABILITY::gated_pool, CPU_CAPABILITY::apply_gates,
                            CPU_CAPABILITY::backward_spatial, CPU_CAPABILITY::backward_gate,
                            CPU_CAPABILITY::backward_input, CPU_CAPABILITY::spatial_conv,
                            CPU_CAPABILITY::mlp_gate, CPU_CAPABILITY::eca_gate,
                            CPU_CAPABILITY::spatial_conv_backward, CPU_CAPABILITY::mlp_gate_backward,
                            CPU_CAPABILITY::eca_gate_backward)

}  // namespace attnkit::ops::cpu
