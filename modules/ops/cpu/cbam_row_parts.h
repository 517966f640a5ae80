// Per-position and per-row pieces of the CBAM kernels, shared by the separate passes (cbam_kernel.cpp,
// cbam_gates_kernel.cpp) and the fused row sweep (cbam_rows_kernel.cpp), so that both compute every
// value with the same instructions in the same order: the fused sweep is bit-for-bit the passes.
//
// Compiled once per CPU capability, like the kernel files that include it (everything lives in the
// inline namespace CPU_CAPABILITY).
#pragma once

#include "vec_util.h"

#include <algorithm>
#include <cstdint>
#include <limits>

namespace attnkit::ops::cpu {
inline namespace CPU_CAPABILITY {

template <typename A>
at::vec::Vectorized<A> sigmoid_of(const at::vec::Vectorized<A>& v) {
  using V = at::vec::Vectorized<A>;
  return V(1) / (V(1) + v.neg().exp());
}

/// Channels-last gated pool of one position: the max and the mean over its C channels of
/// row[c] * gn[c] (NaN propagates through the max, as torch.amax).
template <typename T>
void gated_pool_position(const T* row, const acc_t<T>* gn, int64_t C, acc_t<T>& zmax, acc_t<T>& zmean) {
  using L = Lanes<T>;
  using A = typename L::A;
  using V = typename L::V;
  constexpr int K = L::kSize;
  const A ninf = -std::numeric_limits<A>::infinity();
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
  zmax = horizontal_max(vm);
  zmean = horizontal_sum(vs) * (A(1) / static_cast<A>(C));
}

/// Channels-last final scaling of one position: out = x * gn[c] * sp (+ residual; then ReLU, which
/// keeps NaN as torch.relu). `res` may be null; it may also be `out` itself (read before written).
template <typename T>
void apply_position(const T* x, const acc_t<T>* gn, acc_t<T> sp, const T* res, bool relu, T* out, int64_t C) {
  using L = Lanes<T>;
  using A = typename L::A;
  using V = typename L::V;
  constexpr int K = L::kSize;
  const V s(sp);
  for (int64_t c = 0; c < C; c += K) {
    const int cnt = static_cast<int>(std::min<int64_t>(K, C - c));
    V v = L::load(x + c, cnt) * V::loadu(gn + c, cnt) * s;
    if (res) v = v + L::load(res + c, cnt);
    if (relu) v = at::vec::maximum(v, V(A(0)));
    L::store(out + c, v, cnt);
  }
}

// ---- the spatial gate's k×k convolution, one output row at a time ---------------------------------
// Inputs come as a zero-padded window ([maps][rows][Wp], W values at column offset k/2 of each row),
// so the taps need no bounds checks. A row is computed in chunks of up to kConvVectors vectors held in
// registers through all maps·k·k taps (accumulating in memory instead made the conv latency-bound).
constexpr int kConvVectors = 4;

/// The padded row width for a map of width W: [k/2 zeros][W values][zeros], the tail long enough
/// for a chunk that overruns W.
template <typename A>
constexpr int64_t padded_width(int64_t W, int64_t k) {
  return W + 2 * (k / 2) + kConvVectors * at::vec::Vectorized<A>::size();
}

// One chunk of NV vectors of an output row. src: the chunk's first input (map 0, top tap row) in the
// window; the next map is `map_stride` further, each tap row `row_stride`.
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

/// One output row of width W: out[j] = scale * sum over (i, dy, dx) of w[i, dy, dx] *
/// window[i][top + dy][j + dx] + shift (then sigmoid). `top` is the window row of the output row's
/// first tap row; the window has `rows` rows per map, each Wp wide.
template <typename A>
void conv_row(const A* window, int maps, int64_t rows, int64_t Wp, int64_t top, int64_t W, const A* w, int64_t k,
              A scale, A shift, bool sigmoid, A* out) {
  using V = at::vec::Vectorized<A>;
  constexpr int K = V::size();
  const V vscale(scale), vshift(shift);
  for (int64_t j0 = 0; j0 < W; j0 += kConvVectors * K) {
    const A* src = window + top * Wp + j0;
    const int64_t len = std::min<int64_t>(kConvVectors * K, W - j0);
    switch ((len + K - 1) / K) {
      case 1: conv_chunk<A, 1>(src, maps, rows * Wp, Wp, w, k, vscale, vshift, sigmoid, out + j0, len); break;
      case 2: conv_chunk<A, 2>(src, maps, rows * Wp, Wp, w, k, vscale, vshift, sigmoid, out + j0, len); break;
      case 3: conv_chunk<A, 3>(src, maps, rows * Wp, Wp, w, k, vscale, vshift, sigmoid, out + j0, len); break;
      default: conv_chunk<A, 4>(src, maps, rows * Wp, Wp, w, k, vscale, vshift, sigmoid, out + j0, len); break;
    }
  }
}

}  // namespace CPU_CAPABILITY
}  // namespace attnkit::ops::cpu
