// CPU kernels of the fused CBAM op, the gates' small math in direct loops: the spatial gate's k×k
// convolution, the channel gate's MLP and ECA's 1-D convolution, forward and backward. At batch 1
// and CIFAR-sized maps these tiny tensors cost more as a dozen ATen calls than a pass over x.
// Compiled once per CPU capability, like cbam_kernel.cpp.
#include "cbam_kernel.h"

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
  // Even and odd taps along a row in two sets of accumulators: each chain of dependent FMAs is half
  // as long (one set ran at the FMA's latency, about a third of its throughput).
  V acc[NV], acc_odd[NV];
  for (int v = 0; v < NV; ++v) acc[v] = acc_odd[v] = V(0);
  for (int i = 0; i < maps; ++i)
    for (int64_t dy = 0; dy < k; ++dy) {
      const A* row = src + i * map_stride + dy * row_stride;
      const A* wr = w + (i * k + dy) * k;
      int64_t dx = 0;
      for (; dx + 1 < k; dx += 2) {
        const V w_even(wr[dx]), w_odd(wr[dx + 1]);
        for (int v = 0; v < NV; ++v) {
          acc[v] = at::vec::fmadd(V::loadu(row + dx + v * K), w_even, acc[v]);
          acc_odd[v] = at::vec::fmadd(V::loadu(row + dx + 1 + v * K), w_odd, acc_odd[v]);
        }
      }
      if (dx < k) {
        const V w_last(wr[dx]);
        for (int v = 0; v < NV; ++v) acc[v] = at::vec::fmadd(V::loadu(row + dx + v * K), w_last, acc[v]);
      }
    }
  for (int v = 0; v < NV; ++v) {
    V o = (acc[v] + acc_odd[v]) * scale + shift;
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
// The channel gate's MLP on the [N, C] descriptors: two matrix-vector products whose weights (up to
// 2 MB at C = 2048) usually come from memory, so the loops are built to stream them once at full
// speed. A dot product in one accumulator is bound by the FMA's latency, not by the reads: with
// the weights in cache that was most of the gate's time at 7×7 maps.

// out[j] = dot(w, d[j]) for ND descriptor rows of length n: w is read once for all of them, and U
// independent accumulators per descriptor hide the FMA latency. Fixed order: thread-count independent.
template <typename A, int ND>
void row_dots(const A* w, const A* const* d, int64_t n, A* out) {
  using V = at::vec::Vectorized<A>;
  constexpr int K = V::size();
  constexpr int U = 4;
  V acc[ND][U];
  for (int j = 0; j < ND; ++j)
    for (int u = 0; u < U; ++u) acc[j][u] = V(0);
  int64_t i = 0;
  for (; i + U * K <= n; i += U * K)
    for (int u = 0; u < U; ++u) {
      const V wv = V::loadu(w + i + u * K);
      for (int j = 0; j < ND; ++j) acc[j][u] = at::vec::fmadd(wv, V::loadu(d[j] + i + u * K), acc[j][u]);
    }
  for (; i < n; i += K) {
    const int cnt = static_cast<int>(std::min<int64_t>(K, n - i));
    const V wv = V::loadu(w + i, cnt);  // loadu with a count fills the other lanes with zeros
    for (int j = 0; j < ND; ++j) acc[j][0] = at::vec::fmadd(wv, V::loadu(d[j] + i, cnt), acc[j][0]);
  }
  for (int j = 0; j < ND; ++j) out[j] = lane_sum((acc[j][0] + acc[j][1]) + (acc[j][2] + acc[j][3]));
}

// out[r] = dot(w + r * ld, h) for NR consecutive weight rows of length n: h is loaded once per step
// for all rows, and the rows' accumulators are NR independent chains.
template <typename A, int NR>
void rows_dot(const A* w, int64_t ld, const A* h, int64_t n, A* out) {
  using V = at::vec::Vectorized<A>;
  constexpr int K = V::size();
  V acc[NR];
  for (int r = 0; r < NR; ++r) acc[r] = V(0);
  for (int64_t i = 0; i < n; i += K) {
    const int cnt = static_cast<int>(std::min<int64_t>(K, n - i));
    const V hv = V::loadu(h + i, cnt);
    for (int r = 0; r < NR; ++r) acc[r] = at::vec::fmadd(V::loadu(w + r * ld + i, cnt), hv, acc[r]);
  }
  for (int r = 0; r < NR; ++r) out[r] = lane_sum(acc[r]);
}

// Both descriptors share each weight row's read, and since fc2 is linear, f(avg) + f(max) =
// w2 (relu(h_avg) + relu(h_max)) + 2 b2: one fc2 product. Tasks own weight rows and loop over the
// batch inside, so each row is read from memory once per call, not once per sample.
template <typename A>
void mlp_gate_impl(const Tensor& avg_t, const Tensor& max_t, const Tensor& w1_t, const Tensor& b1_t,
                   const Tensor& w2_t, const Tensor& b2_t, Tensor& g_t) {
  const int64_t N = g_t.size(0), C = g_t.size(1), R = w1_t.size(0);
  const A* avg = avg_t.defined() ? avg_t.data_ptr<A>() : nullptr;
  const A* mx = max_t.defined() ? max_t.data_ptr<A>() : nullptr;
  const A* w1 = w1_t.data_ptr<A>();
  const A* w2 = w2_t.data_ptr<A>();
  const A* b1 = b1_t.defined() ? b1_t.data_ptr<A>() : nullptr;
  const A* b2 = b2_t.defined() ? b2_t.data_ptr<A>() : nullptr;
  const A terms = static_cast<A>((avg != nullptr) + (mx != nullptr));
  A* g = g_t.data_ptr<A>();
  std::vector<A> hidden(N * R);
  // fc1 + relu, summed over the descriptors.
  at::parallel_for(0, R, grain_for(N * C), [&](int64_t b, int64_t e) {
    for (int64_t r = b; r < e; ++r) {
      const A bias = b1 ? b1[r] : A(0);
      for (int64_t n = 0; n < N; ++n) {
        A dots[2];
        if (avg && mx) {
          const A* d[2] = {avg + n * C, mx + n * C};
          row_dots<A, 2>(w1 + r * C, d, C, dots);
          hidden[n * R + r] = std::max(dots[0] + bias, A(0)) + std::max(dots[1] + bias, A(0));
        } else {
          const A* d[1] = {(avg ? avg : mx) + n * C};
          row_dots<A, 1>(w1 + r * C, d, C, dots);
          hidden[n * R + r] = std::max(dots[0] + bias, A(0));
        }
      }
    }
  });
  // fc2 and the sigmoid, kRowsPerDot rows of w2 at a time.
  constexpr int64_t kRowsPerDot = 8;
  const int64_t blocks = (C + kRowsPerDot - 1) / kRowsPerDot;
  at::parallel_for(0, blocks, grain_for(N * kRowsPerDot * R), [&](int64_t b, int64_t e) {
    for (int64_t blk = b; blk < e; ++blk) {
      const int64_t c0 = blk * kRowsPerDot, rows = std::min(kRowsPerDot, C - c0);
      for (int64_t n = 0; n < N; ++n) {
        A* gn = g + n * C + c0;
        const A* h = hidden.data() + n * R;
        if (rows == kRowsPerDot) {
          rows_dot<A, kRowsPerDot>(w2 + c0 * R, R, h, R, gn);
        } else {
          for (int64_t r = 0; r < rows; ++r) rows_dot<A, 1>(w2 + (c0 + r) * R, R, h, R, gn + r);
        }
        for (int64_t r = 0; r < rows; ++r) gn[r] += b2 ? terms * b2[c0 + r] : A(0);
        sigmoid_in_place(gn, rows);
      }
    }
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
          const A* row[1] = {d[j] + n * C};
          A pre;
          row_dots<A, 1>(w1 + r * C, row, C, &pre);  // as forward computed it
          pre += b1 ? b1[r] : A(0);
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

}  // namespace

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

}  // namespace CPU_CAPABILITY
}  // namespace attnkit::ops::cpu
