// CPU kernels of the fused CBAM op: see cbam_kernel.h for what each pass computes.
//
// Compiled once per CPU capability (this file is listed in ATTNKIT_CPU_KERNELS in CMakeLists.txt);
// vectorised with ATen's Vectorized<T>, threaded with at::parallel_for. Two layouts:
//   NCHW  ([N, C, P] rows of positions): per-channel work walks a row; per-position work walks
//         blocks of positions across all channels, keeping partial results in small stack buffers.
//   NHWC  ([N, P, C] rows of channels): the transpose of the above.
// Per-element arg-max bookkeeping (max-pool gradients) is done in exact "first index wins" order,
// as a scalar fix-up after the vectorised sweep: it touches one element per row.
#include <attnkit/modules/ops/cbam_kernels.h>

#include "kernel_dispatch.h"
#include "vec_util.h"

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <limits>
#include <vector>

namespace attnkit::ops::cpu {
inline namespace CPU_CAPABILITY {
namespace {

using at::Tensor;

// Positions (NCHW) or channels (NHWC) handled by one task of a column-wise sweep.
constexpr int64_t kBlock = 512;
// Aim for tasks of about this many elements so that small maps are not split needlessly.
constexpr int64_t kGrainElements = 32768;
// Rows (channels in NCHW, positions in NHWC) folded into a block's partial results per sweep.
constexpr int kRows = 8;

struct Shape {
  int64_t n, c, p;
};
Shape shape_of(const Tensor& x, bool nhwc) {
  return nhwc ? Shape{x.size(0), x.size(2), x.size(1)} : Shape{x.size(0), x.size(1), x.size(2)};
}
// Units (rows, blocks, samples) per task when each unit touches `row_len` elements: small tensors
// run inline, without waking the other threads (which costs more than a pass over a few kB).
int64_t grain_for(int64_t row_len) { return std::max<int64_t>(1, kGrainElements / std::max<int64_t>(1, row_len)); }

// Positions per task of a per-position sweep over channels (NCHW): at most kBlock (the stack
// buffers), and small enough for about four tasks per thread, so that batch 1 with a 7×7 map still
// splits. Each position's result does not depend on the blocking.
int64_t position_block(int64_t N, int64_t P, int64_t K) {
  const int64_t tasks = 4 * at::get_num_threads();
  const int64_t per_task = (N * P + tasks - 1) / tasks;
  return std::clamp<int64_t>((per_task + K - 1) / K * K, K, kBlock);
}

template <typename A>
at::vec::Vectorized<A> sigmoid_of(const at::vec::Vectorized<A>& v) {
  using V = at::vec::Vectorized<A>;
  return V(1) / (V(1) + v.neg().exp());
}

// p[i] = sigmoid(p[i]) for i < n.
template <typename A>
void sigmoid_in_place(A* p, int64_t n) {
  using V = at::vec::Vectorized<A>;
  for (int64_t i = 0; i < n; i += V::size()) {
    const int cnt = static_cast<int>(std::min<int64_t>(V::size(), n - i));
    sigmoid_of(V::loadu(p + i, cnt)).store(p + i, cnt);
  }
}

// Dot product of two contiguous rows of length n.
template <typename A>
A dot(const A* a, const A* b, int64_t n) {
  using V = at::vec::Vectorized<A>;
  constexpr int K = V::size();
  V acc(0);
  int64_t i = 0;
  for (; i + K <= n; i += K) acc = at::vec::fmadd(V::loadu(a + i), V::loadu(b + i), acc);
  if (i < n) acc = at::vec::fmadd(V::loadu(a + i, n - i), V::loadu(b + i, n - i), acc);
  return lane_sum(acc);
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
  const int64_t blocks = (C + kBlock - 1) / kBlock;
  at::parallel_for(0, N * blocks, grain_for(std::min(kBlock, C) * P), [&](int64_t b, int64_t e) {
    alignas(64) A sum[kBlock];
    alignas(64) A m[kBlock];
    for (int64_t t = b; t < e; ++t) {
      const int64_t n = t / blocks, c0 = (t % blocks) * kBlock, cn = std::min(kBlock, C - c0);
      std::fill(sum, sum + cn, A(0));
      std::fill(m, m + cn, ninf);
      for (int64_t p0 = 0; p0 < P; p0 += kRows) {
        const int rows = static_cast<int>(std::min<int64_t>(kRows, P - p0));
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
      for (int64_t j = 0; j < cn; ++j) {
        avg[n * C + c0 + j] = sum[j] / static_cast<A>(P);
        mx[n * C + c0 + j] = m[j];
      }
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
  at::parallel_for(0, N * P, grain_for(C), [&](int64_t b, int64_t e) {
    for (int64_t r = b; r < e; ++r) {
      const int64_t n = r / P;
      const T* row = xp + r * C;
      const A* gn = g + n * C;
      V vs(0), vm(ninf);
      int64_t c = 0;
      for (; c + K <= C; c += K) {
        const V v = L::load(row + c) * V::loadu(gn + c);
        vs += v;
        vm = at::vec::maximum(vm, v);
      }
      if (c < C) {
        const int rem = static_cast<int>(C - c);
        const V v = L::load(row + c, rem) * V::loadu(gn + c, rem);
        vs += v;
        vm = at::vec::maximum(vm, V::set(V(ninf), v, rem));
      }
      zmax[r] = horizontal_max(vm);
      zmean[r] = horizontal_sum(vs) * inv_c;
    }
  });
}

// ---------------------------------------------------------------------------------------------
template <typename T>
void apply_gates_impl(const Tensor& x, bool nhwc, const Tensor& g_t, const Tensor& s_t, const Tensor& res_t, bool relu,
                      Tensor& out) {
  using L = Lanes<T>;
  using A = typename L::A;
  using V = typename L::V;
  constexpr int K = L::kSize;
  const Shape sh = shape_of(x, nhwc);
  const int64_t N = sh.n, C = sh.c, P = sh.p;
  const T* xp = x.data_ptr<T>();
  const T* rp = res_t.defined() ? res_t.data_ptr<T>() : nullptr;
  T* op = out.data_ptr<T>();
  const A* g = g_t.data_ptr<A>();
  const A* s = opt_ptr<T>(s_t);
  // The epilogue on the `cnt` values at flat offset `off`: + residual, ReLU.
  auto finish = [rp, relu](V v, int64_t off, int cnt) {
    if (rp) v = v + L::load(rp + off, cnt);
    if (relu) v = at::vec::maximum(v, V(0));  // propagates NaN, as torch.relu
    return v;
  };
  if (!nhwc) {
    at::parallel_for(0, N * C, grain_for(P), [&](int64_t b, int64_t e) {
      for (int64_t r = b; r < e; ++r) {
        const V gc(g[r]);
        const A* srow = s ? s + (r / C) * P : nullptr;
        for (int64_t i = 0; i < P; i += K) {
          const int cnt = static_cast<int>(std::min<int64_t>(K, P - i));
          V v = L::load(xp + r * P + i, cnt) * gc;
          if (srow) v = v * V::loadu(srow + i, cnt);
          L::store(op + r * P + i, finish(v, r * P + i, cnt), cnt);
        }
      }
    });
    return;
  }
  at::parallel_for(0, N * P, grain_for(C), [&](int64_t b, int64_t e) {
    for (int64_t r = b; r < e; ++r) {
      const A* gn = g + (r / P) * C;
      const V sp(s ? s[r] : A(1));
      for (int64_t c = 0; c < C; c += K) {
        const int cnt = static_cast<int>(std::min<int64_t>(K, C - c));
        const V v = L::load(xp + r * C + c, cnt) * V::loadu(gn + c, cnt) * sp;
        L::store(op + r * C + c, finish(v, r * C + c, cnt), cnt);
      }
    }
  });
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
// The k×k convolution of the spatial gate. A task copies the rows its outputs need (of both maps)
// into a zero-padded window once, so the taps need no bounds checks; each output row is computed in
// chunks of up to kConvVectors vectors held in registers through all 2·k·k taps (accumulating in
// memory instead made the conv latency-bound: it cost more than a pass over x at small maps).
constexpr int kConvVectors = 4;

// One chunk of NV vectors of an output row: the accumulators' count is a compile-time constant so
// that they stay in registers. src: the chunk's first input (map 0, top tap row) in the padded
// window; the second map is `map_stride` further, each tap row `row_stride`.
template <typename A, int NV>
void conv_chunk(const A* src, int maps, int64_t map_stride, int64_t row_stride, const A* w, int64_t k,
                const at::vec::Vectorized<A>& scale, const at::vec::Vectorized<A>& shift, bool sigmoid, A* out,
                int64_t len) {
  using V = at::vec::Vectorized<A>;
  constexpr int K = V::size();
  V acc[NV];
  for (int v = 0; v < NV; ++v) acc[v] = V(0);
  for (int i = 0; i < maps; ++i)
    for (int64_t dy = 0; dy < k; ++dy) {
      const A* row = src + i * map_stride + dy * row_stride;
      const A* wr = w + (i * k + dy) * k;
      for (int64_t dx = 0; dx < k; ++dx) {
        const V wv(wr[dx]);
        for (int v = 0; v < NV; ++v) acc[v] = at::vec::fmadd(V::loadu(row + dx + v * K), wv, acc[v]);
      }
    }
  for (int v = 0; v < NV; ++v) {
    V o = acc[v] * scale + shift;
    if (sigmoid) o = sigmoid_of(o);
    o.store(out + v * K, static_cast<int>(std::min<int64_t>(K, len - v * K)));
  }
}

// Rows h0 - r .. h0 - r + rows - 1 of sample n of each of the `maps` inputs in[i] [N, H*W], into
// `window` ([maps, rows, Wp], row y at offset r): zeros outside the map and around it.
template <typename A>
void pad_rows(std::vector<A>& window, const A* const* in, int maps, int64_t n, int64_t H, int64_t W, int64_t h0,
              int64_t rows, int64_t r, int64_t Wp) {
  window.assign(maps * rows * Wp, A(0));
  for (int i = 0; i < maps; ++i)
    for (int64_t y = 0; y < rows; ++y) {
      const int64_t ih = h0 - r + y;
      if (ih >= 0 && ih < H) std::copy_n(in[i] + (n * H + ih) * W, W, window.data() + (i * rows + y) * Wp + r);
    }
}

// out_m[n, p] = scale * sum over (i, dy, dx) of w[i, dy, dx] * in_i[n, p shifted by (dy, dx)] + shift
// (then sigmoid), for `maps` inputs in[i] [N, H*W] and one output [N, H*W]: the forward conv (two
// maps) and, with the kernel flipped, the backward conv to the inputs (one map).
template <typename A>
void conv_maps(const A* const* in, int maps, int64_t N, int64_t H, int64_t W, const A* w, int64_t k, A scale, A shift,
               bool sigmoid, A* out) {
  using V = at::vec::Vectorized<A>;
  constexpr int K = V::size();
  const int64_t r = k / 2;
  const int64_t Wp = W + 2 * r + kConvVectors * K;  // [r zeros][W values][zeros]: chunks may overrun W
  const V vscale(scale), vshift(shift);
  at::parallel_for(0, N * H, grain_for(W * k * k * maps), [&](int64_t b, int64_t e) {
    std::vector<A> window;
    for (int64_t t = b; t < e;) {
      // The rows [h0, h1) of sample n in this task, and their padded inputs: rows h0 - r .. h1 + r.
      const int64_t n = t / H, h0 = t % H, h1 = std::min(H, h0 + (e - t));
      const int64_t rows = h1 - h0 + 2 * r;
      pad_rows(window, in, maps, n, H, W, h0, rows, r, Wp);
      for (int64_t h = h0; h < h1; ++h) {
        A* o = out + (n * H + h) * W;
        for (int64_t j0 = 0; j0 < W; j0 += kConvVectors * K) {
          const A* src = window.data() + (h - h0) * Wp + j0;
          const int64_t len = std::min<int64_t>(kConvVectors * K, W - j0);
          switch ((len + K - 1) / K) {
            case 1: conv_chunk<A, 1>(src, maps, rows * Wp, Wp, w, k, vscale, vshift, sigmoid, o + j0, len); break;
            case 2: conv_chunk<A, 2>(src, maps, rows * Wp, Wp, w, k, vscale, vshift, sigmoid, o + j0, len); break;
            case 3: conv_chunk<A, 3>(src, maps, rows * Wp, Wp, w, k, vscale, vshift, sigmoid, o + j0, len); break;
            default: conv_chunk<A, 4>(src, maps, rows * Wp, Wp, w, k, vscale, vshift, sigmoid, o + j0, len); break;
          }
        }
      }
      t += h1 - h0;
    }
  });
}

template <typename A>
void spatial_conv_impl(const Tensor& zmax_t, const Tensor& zmean_t, int64_t H, int64_t W, const Tensor& w_t,
                       A scale, A shift, bool sigmoid, Tensor& a_t) {
  const A* z[2] = {zmax_t.data_ptr<A>(), zmean_t.data_ptr<A>()};
  conv_maps<A>(z, 2, zmax_t.size(0), H, W, w_t.data_ptr<A>(), w_t.size(-1), scale, shift, sigmoid, a_t.data_ptr<A>());
}

// Rows of (n, h) per partial sum of the conv's weight gradient: fixed, so the sum's order (and its
// rounding) does not depend on the thread count.
constexpr int64_t kWeightGradRows = 8;

// The conv's backward: dz_i = conv(da, flipped w_i) (the transposed convolution), and
// dweight[i, dy, dx] = sum over (n, p) of da[n, p] * z_i[n, p shifted by (dy, dx)].
template <typename A>
void spatial_conv_backward_impl(const Tensor& zmax_t, const Tensor& zmean_t, int64_t H, int64_t W, const Tensor& w_t,
                                const Tensor& da_t, Tensor& dw_t, Tensor& dzmax_t, Tensor& dzmean_t) {
  using V = at::vec::Vectorized<A>;
  constexpr int K = V::size();
  const int64_t N = zmax_t.size(0), k = w_t.size(-1), r = k / 2, taps = k * k;
  const A* z[2] = {zmax_t.data_ptr<A>(), zmean_t.data_ptr<A>()};
  const A* w = w_t.data_ptr<A>();
  const A* da = da_t.data_ptr<A>();
  // Inputs' gradients: one single-map convolution each with the kernel turned by 180 degrees.
  A* dz[2] = {dzmax_t.data_ptr<A>(), dzmean_t.data_ptr<A>()};
  for (int i = 0; i < 2; ++i) {
    std::vector<A> flipped(taps);
    for (int64_t t = 0; t < taps; ++t) flipped[t] = w[i * taps + taps - 1 - t];
    conv_maps<A>(&da, 1, N, H, W, flipped.data(), k, A(1), A(0), false, dz[i]);
  }
  // Weight gradient: partial sums over fixed blocks of rows, then added in block order. Within a
  // block each tap accumulates whole vectors across the row (lanes summed once per block, not once
  // per row); da's row is zero-padded to whole vectors, so the padding adds nothing.
  const int64_t row_blocks = (H + kWeightGradRows - 1) / kWeightGradRows, blocks = N * row_blocks;
  const int64_t Wv = (W + K - 1) / K * K;
  std::vector<A> partial(blocks * 2 * taps, A(0));
  at::parallel_for(0, blocks, grain_for(kWeightGradRows * W * 2 * taps), [&](int64_t b, int64_t e) {
    const int64_t Wp = Wv + 2 * r + K;  // a padded input row: [r zeros][W values][zeros]
    std::vector<A> window, darow(Wv), acc(2 * taps * Wv);
    for (int64_t blk = b; blk < e; ++blk) {
      const int64_t n = blk / row_blocks, h0 = (blk % row_blocks) * kWeightGradRows;
      const int64_t h1 = std::min(H, h0 + kWeightGradRows), rows = h1 - h0 + 2 * r;
      pad_rows(window, z, 2, n, H, W, h0, rows, r, Wp);  // the block's input rows, copied once
      std::fill(acc.begin(), acc.end(), A(0));
      for (int64_t h = h0; h < h1; ++h) {
        std::copy_n(da + (n * H + h) * W, W, darow.data());  // lanes W.. stay zero
        for (int i = 0; i < 2; ++i)
          for (int64_t dy = 0; dy < k; ++dy) {
            const A* line = window.data() + (i * rows + (h - h0) + dy) * Wp;
            for (int64_t dx = 0; dx < k; ++dx) {
              A* tap = acc.data() + ((i * k + dy) * k + dx) * Wv;
              for (int64_t j = 0; j < Wv; j += K)
                at::vec::fmadd(V::loadu(darow.data() + j), V::loadu(line + dx + j), V::loadu(tap + j)).store(tap + j);
            }
          }
      }
      A* part = partial.data() + blk * 2 * taps;
      for (int64_t t = 0; t < 2 * taps; ++t) {
        V sum(0);
        for (int64_t j = 0; j < Wv; j += K) sum += V::loadu(acc.data() + t * Wv + j);
        part[t] = lane_sum(sum);
      }
    }
  });
  A* dw = dw_t.data_ptr<A>();
  std::fill(dw, dw + 2 * taps, A(0));
  for (int64_t blk = 0; blk < blocks; ++blk)
    for (int64_t t = 0; t < 2 * taps; ++t) dw[t] += partial[blk * 2 * taps + t];
}

// ---------------------------------------------------------------------------------------------
// The channel gate's MLP on the [N, C] descriptors. Both descriptors share each weight row's read,
// and since fc2 is linear, f(avg) + f(max) = w2 (relu(h_avg) + relu(h_max)) + 2 b2: one fc2 product.
template <typename A>
void mlp_gate_impl(const Tensor& avg_t, const Tensor& max_t, const Tensor& w1_t, const Tensor& b1_t,
                   const Tensor& w2_t, const Tensor& b2_t, Tensor& g_t) {
  const int64_t N = g_t.size(0), C = g_t.size(1), R = w1_t.size(0);
  const A* d[2] = {avg_t.defined() ? avg_t.data_ptr<A>() : nullptr, max_t.defined() ? max_t.data_ptr<A>() : nullptr};
  const A* w1 = w1_t.data_ptr<A>();
  const A* w2 = w2_t.data_ptr<A>();
  const A* b1 = b1_t.defined() ? b1_t.data_ptr<A>() : nullptr;
  const A* b2 = b2_t.defined() ? b2_t.data_ptr<A>() : nullptr;
  const A terms = static_cast<A>((d[0] != nullptr) + (d[1] != nullptr));
  A* g = g_t.data_ptr<A>();
  std::vector<A> hidden(N * R);
  // fc1 + relu, summed over the descriptors: one task per block of weight rows.
  at::parallel_for(0, N * R, grain_for(C), [&](int64_t b, int64_t e) {
    for (int64_t t = b; t < e; ++t) {
      const int64_t n = t / R, r = t % R;
      A h = 0;
      for (const A* dn : d) {
        if (!dn) continue;
        const A v = dot(w1 + r * C, dn + n * C, C) + (b1 ? b1[r] : A(0));
        h += std::max(v, A(0));
      }
      hidden[t] = h;
    }
  });
  // fc2 and the sigmoid: g is [N, C] contiguous, so a task's range of (n, c) is one run of g.
  at::parallel_for(0, N * C, grain_for(R), [&](int64_t b, int64_t e) {
    for (int64_t t = b; t < e; ++t) {
      const int64_t n = t / C, c = t % C;
      g[t] = dot(w2 + c * R, hidden.data() + n * R, R) + (b2 ? terms * b2[c] : A(0));
    }
    sigmoid_in_place(g + b, e - b);
  });
}

// The MLP gate's backward. With do = dg * g * (1 - g) and h_d = relu(w1 d + b1) for each pooled
// descriptor d: dw2 = do^T (sum of h_d), db2 = terms * sum of do, dh = w2^T do (shared by the
// descriptors), dpre_d = dh * [w1 d + b1 > 0], dd = w1^T dpre_d, dw1 = sum of dpre_d^T d, db1 = sum
// of dpre_d. Each weight-gradient row sums over the batch in order: thread-count independent.
template <typename A>
void mlp_gate_backward_impl(const Tensor& avg_t, const Tensor& max_t, const Tensor& w1_t, const Tensor& b1_t,
                            const Tensor& w2_t, const Tensor& g_t, const Tensor& dg_t, Tensor& davg_t, Tensor& dmax_t,
                            Tensor& dw1_t, Tensor& db1_t, Tensor& dw2_t, Tensor& db2_t) {
  using V = at::vec::Vectorized<A>;
  constexpr int K = V::size();
  const int64_t N = g_t.size(0), C = g_t.size(1), R = w1_t.size(0);
  const A* d[2] = {avg_t.defined() ? avg_t.data_ptr<A>() : nullptr, max_t.defined() ? max_t.data_ptr<A>() : nullptr};
  A* dd[2] = {davg_t.defined() ? davg_t.data_ptr<A>() : nullptr, dmax_t.defined() ? dmax_t.data_ptr<A>() : nullptr};
  const A* w1 = w1_t.data_ptr<A>();
  const A* w2 = w2_t.data_ptr<A>();
  const A* b1 = b1_t.defined() ? b1_t.data_ptr<A>() : nullptr;
  const A* g = g_t.data_ptr<A>();
  const A* dg = dg_t.data_ptr<A>();
  const A terms = static_cast<A>((d[0] != nullptr) + (d[1] != nullptr));
  // y += a * x over n elements.
  auto axpy = [](A a, const A* x, A* y, int64_t n) {
    const V va(a);
    int64_t i = 0;
    for (; i + K <= n; i += K) at::vec::fmadd(va, V::loadu(x + i), V::loadu(y + i)).store(y + i);
    for (; i < n; ++i) y[i] += a * x[i];
  };
  std::vector<A> dout(N * C), hsum(N * R, A(0)), dpre(2 * N * R, A(0));
  for (int64_t t = 0; t < N * C; ++t) dout[t] = dg[t] * g[t] * (A(1) - g[t]);
  at::parallel_for(0, N, grain_for(C * R * 4), [&](int64_t b, int64_t e) {
    std::vector<A> dh(R);
    for (int64_t n = b; n < e; ++n) {
      std::fill(dh.begin(), dh.end(), A(0));
      for (int64_t c = 0; c < C; ++c) axpy(dout[n * C + c], w2 + c * R, dh.data(), R);
      for (int j = 0; j < 2; ++j) {
        if (!d[j]) continue;
        A* dp = dpre.data() + (j * N + n) * R;
        for (int64_t r = 0; r < R; ++r) {
          const A pre = dot(w1 + r * C, d[j] + n * C, C) + (b1 ? b1[r] : A(0));
          hsum[n * R + r] += std::max(pre, A(0));
          dp[r] = pre > A(0) ? dh[r] : A(0);
        }
        if (dd[j]) {
          A* out = dd[j] + n * C;
          std::fill(out, out + C, A(0));
          for (int64_t r = 0; r < R; ++r) axpy(dp[r], w1 + r * C, out, C);
        }
      }
    }
  });
  // Weight gradients, one row per task unit, the batch summed in order.
  A* dw1 = dw1_t.data_ptr<A>();
  A* db1 = db1_t.defined() ? db1_t.data_ptr<A>() : nullptr;
  at::parallel_for(0, R, grain_for(N * C * 2), [&](int64_t b, int64_t e) {
    for (int64_t r = b; r < e; ++r) {
      A* row = dw1 + r * C;
      std::fill(row, row + C, A(0));
      A bias = 0;
      for (int64_t n = 0; n < N; ++n)
        for (int j = 0; j < 2; ++j) {
          if (!d[j]) continue;
          const A a = dpre[(j * N + n) * R + r];
          axpy(a, d[j] + n * C, row, C);
          bias += a;
        }
      if (db1) db1[r] = bias;
    }
  });
  A* dw2 = dw2_t.data_ptr<A>();
  A* db2 = db2_t.defined() ? db2_t.data_ptr<A>() : nullptr;
  at::parallel_for(0, C, grain_for(N * R), [&](int64_t b, int64_t e) {
    for (int64_t c = b; c < e; ++c) {
      A* row = dw2 + c * R;
      std::fill(row, row + R, A(0));
      A bias = 0;
      for (int64_t n = 0; n < N; ++n) {
        axpy(dout[n * C + c], hsum.data() + n * R, row, R);
        bias += dout[n * C + c];
      }
      if (db2) db2[c] = terms * bias;
    }
  });
}

// ECA's backward: with do = dg * g * (1 - g) and line = avg + max, dweight[j] = sum over (n, c) of
// do[n, c] * line[n, c + j - r], dline[n, c] = sum over j of weight[j] * do[n, c - j + r]; each
// pooled descriptor receives dline.
template <typename A>
void eca_gate_backward_impl(const Tensor& avg_t, const Tensor& max_t, const Tensor& w_t, const Tensor& g_t,
                            const Tensor& dg_t, Tensor& davg_t, Tensor& dmax_t, Tensor& dw_t) {
  const int64_t N = g_t.size(0), C = g_t.size(1), k = w_t.numel(), r = k / 2;
  const A* w = w_t.data_ptr<A>();
  const A* avg = avg_t.defined() ? avg_t.data_ptr<A>() : nullptr;
  const A* mx = max_t.defined() ? max_t.data_ptr<A>() : nullptr;
  const A* g = g_t.data_ptr<A>();
  const A* dg = dg_t.data_ptr<A>();
  A* dw = dw_t.data_ptr<A>();
  std::fill(dw, dw + k, A(0));
  std::vector<A> line(C + 2 * r, A(0)), dout(C + 2 * r, A(0));
  for (int64_t n = 0; n < N; ++n) {  // [N, C] is tiny: one thread, the batch in order
    for (int64_t c = 0; c < C; ++c) {
      line[r + c] = (avg ? avg[n * C + c] : A(0)) + (mx ? mx[n * C + c] : A(0));
      const A gv = g[n * C + c];
      dout[r + c] = dg[n * C + c] * gv * (A(1) - gv);
    }
    for (int64_t j = 0; j < k; ++j)
      for (int64_t c = 0; c < C; ++c) dw[j] += dout[r + c] * line[c + j];
    for (int64_t c = 0; c < C; ++c) {
      A v = 0;
      for (int64_t j = 0; j < k; ++j) v += w[j] * dout[c + 2 * r - j];
      if (avg_t.defined() && davg_t.defined()) davg_t.data_ptr<A>()[n * C + c] = v;
      if (max_t.defined() && dmax_t.defined()) dmax_t.data_ptr<A>()[n * C + c] = v;
    }
  }
}

// ECA's gate: a k-tap convolution across channels (zero padded) of avg + max (linear, so one pass).
template <typename A>
void eca_gate_impl(const Tensor& avg_t, const Tensor& max_t, const Tensor& w_t, Tensor& g_t) {
  const int64_t N = g_t.size(0), C = g_t.size(1), k = w_t.numel(), r = k / 2;
  const A* w = w_t.data_ptr<A>();
  const A* avg = avg_t.defined() ? avg_t.data_ptr<A>() : nullptr;
  const A* mx = max_t.defined() ? max_t.data_ptr<A>() : nullptr;
  A* g = g_t.data_ptr<A>();
  at::parallel_for(0, N, grain_for(C * k), [&](int64_t b, int64_t e) {
    std::vector<A> line(C + 2 * r, A(0));  // [r zeros][avg + max][r zeros]
    for (int64_t n = b; n < e; ++n) {
      for (int64_t c = 0; c < C; ++c) line[r + c] = (avg ? avg[n * C + c] : A(0)) + (mx ? mx[n * C + c] : A(0));
      A* gn = g + n * C;
      for (int64_t c = 0; c < C; ++c) {
        A a = 0;
        for (int64_t j = 0; j < k; ++j) a += w[j] * line[c + j];
        gn[c] = a;
      }
      sigmoid_in_place(gn, C);
    }
  });
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

void spatial_conv(const Tensor& zmax, const Tensor& zmean, int64_t H, int64_t W, const Tensor& weight, double scale,
                  double shift, bool sigmoid, Tensor& a) {
  AT_DISPATCH_FLOATING_TYPES(zmax.scalar_type(), "attnkit::spatial_conv", [&] {
    spatial_conv_impl<scalar_t>(zmax, zmean, H, W, weight, static_cast<scalar_t>(scale), static_cast<scalar_t>(shift),
                                sigmoid, a);
  });
}
void mlp_gate(const Tensor& avg, const Tensor& max, const Tensor& w1, const Tensor& b1, const Tensor& w2,
              const Tensor& b2, Tensor& g) {
  AT_DISPATCH_FLOATING_TYPES(g.scalar_type(), "attnkit::mlp_gate",
                             [&] { mlp_gate_impl<scalar_t>(avg, max, w1, b1, w2, b2, g); });
}
void spatial_conv_backward(const Tensor& zmax, const Tensor& zmean, int64_t H, int64_t W, const Tensor& weight,
                           const Tensor& da, Tensor& dweight, Tensor& dzmax, Tensor& dzmean) {
  AT_DISPATCH_FLOATING_TYPES(zmax.scalar_type(), "attnkit::spatial_conv_backward", [&] {
    spatial_conv_backward_impl<scalar_t>(zmax, zmean, H, W, weight, da, dweight, dzmax, dzmean);
  });
}
void mlp_gate_backward(const Tensor& avg, const Tensor& max, const Tensor& w1, const Tensor& b1, const Tensor& w2,
                       const Tensor& g, const Tensor& dg, Tensor& davg, Tensor& dmax, Tensor& dw1, Tensor& db1,
                       Tensor& dw2, Tensor& db2) {
  AT_DISPATCH_FLOATING_TYPES(g.scalar_type(), "attnkit::mlp_gate_backward", [&] {
    mlp_gate_backward_impl<scalar_t>(avg, max, w1, b1, w2, g, dg, davg, dmax, dw1, db1, dw2, db2);
  });
}
void eca_gate_backward(const Tensor& avg, const Tensor& max, const Tensor& weight, const Tensor& g, const Tensor& dg,
                       Tensor& davg, Tensor& dmax, Tensor& dweight) {
  AT_DISPATCH_FLOATING_TYPES(g.scalar_type(), "attnkit::eca_gate_backward",
                             [&] { eca_gate_backward_impl<scalar_t>(avg, max, weight, g, dg, davg, dmax, dweight); });
}
void eca_gate(const Tensor& avg, const Tensor& max, const Tensor& weight, Tensor& g) {
  AT_DISPATCH_FLOATING_TYPES(g.scalar_type(), "attnkit::eca_gate", [&] { eca_gate_impl<scalar_t>(avg, max, weight, g); });
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
