// CPU kernel of the fused CBAM op: the spatial gate and the final scaling in one sweep over each
// image's rows (CbamKernelTable::gate_rows in detail/cbam_kernels.h says what it computes).
//
// Why: done as separate passes, the gated channel pool reads the whole map, then the final scaling
// reads it again: at ResNet-50's 8×256×56×56 the map is 25.7 MB, far beyond the caches, so x comes
// from memory twice. Here a row is pooled, and r = k/2 rows later (once the k×k conv has every row
// it needs) that row's gate is computed and the row is scaled while still in the core's cache: k/2+1
// rows of x, 4 × 57 KB at every ResNet-50 stage. Each value is computed by the same code as in the
// passes (cbam_row_parts.h), so the result is the same, bit for bit.
//
// Compiled once per CPU capability (listed in ATTNKIT_CPU_KERNELS in CMakeLists.txt).
#include "cbam_kernel.h"

#include "cbam_row_parts.h"

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <numeric>
#include <vector>

namespace attnkit::ops::cpu {
inline namespace CPU_CAPABILITY {
namespace {

using at::Tensor;

/// Bands of rows per image, so that every thread gets the same number of tasks: 1 when the batch
/// divides among the threads, else the fewest that make it divide. 0 when those bands would be
/// too thin: a band recomputes the pooled rows of its k/2-row halos, so it needs 2k rows or more.
int64_t bands_per_image(int64_t N, int64_t H, int64_t k) {
  const int64_t threads = at::get_num_threads();
  const int64_t bands = threads / std::gcd(N, threads);
  return bands == 1 || H >= bands * 2 * k ? bands : 0;
}

template <typename T>
bool gate_rows_impl(const Tensor& x_t, const Tensor& g_t, int64_t H, int64_t W, const Tensor& w_t, double scale,
                    double shift, const Tensor& res_t, bool relu, Tensor& zmax_t, Tensor& zmean_t, Tensor& s_t,
                    Tensor& out_t) {
  using A = acc_t<T>;
  const int64_t N = x_t.size(0), C = x_t.size(2);
  const int64_t k = w_t.size(-1), r = k / 2;
  const int64_t bands = bands_per_image(N, H, k);
  if (bands == 0) return false;
  const int64_t band_rows = (H + bands - 1) / bands;
  const T* xp = x_t.data_ptr<T>();
  const T* rp = res_t.defined() ? res_t.data_ptr<T>() : nullptr;
  T* op = out_t.data_ptr<T>();
  const A* g = g_t.data_ptr<A>();
  const A* wk = w_t.data_ptr<A>();
  A* zmax = zmax_t.data_ptr<A>();
  A* zmean = zmean_t.data_ptr<A>();
  A* s = s_t.data_ptr<A>();
  const int64_t Wp = padded_width<A>(W, k);
  // One task per (image, band): the counts divide among the threads, so hand each thread its share.
  at::parallel_for(0, N * bands, 1, [&](int64_t b, int64_t e) {
    std::vector<A> window;
    for (int64_t t = b; t < e; ++t) {
      const int64_t n = t / bands, h0 = (t % bands) * band_rows, h1 = std::min(H, h0 + band_rows);
      if (h0 >= h1) continue;
      // The pooled maps of rows h0 - r .. h1 + r - 1 (zeros outside the image), as the conv's padded
      // window: [2 maps][rows][Wp], map row y at window row y - (h0 - r), column offset r.
      const int64_t rows = h1 - h0 + 2 * r;
      window.assign(2 * rows * Wp, A(0));
      const auto pool_row = [&](int64_t y) {
        A* wmax = window.data() + (y - h0 + r) * Wp + r;
        A* wmean = wmax + rows * Wp;
        for (int64_t j = 0; j < W; ++j)
          gated_pool_position(xp + ((n * H + y) * W + j) * C, g + n * C, C, wmax[j], wmean[j]);
      };
      int64_t pooled = std::max<int64_t>(0, h0 - r);  // next row to pool
      for (int64_t h = h0; h < h1; ++h) {
        for (; pooled < std::min(H, h + r + 1); ++pooled) pool_row(pooled);
        A* srow = s + (n * H + h) * W;
        conv_row(window.data(), 2, rows, Wp, h - h0, W, wk, k, static_cast<A>(scale), static_cast<A>(shift),
                 /*sigmoid=*/true, srow);
        for (int64_t j = 0; j < W; ++j) {
          const int64_t off = ((n * H + h) * W + j) * C;
          apply_position(xp + off, g + n * C, srow[j], rp ? rp + off : nullptr, relu, op + off, C);
        }
      }
      for (int64_t h = h0; h < h1; ++h) {  // this band's own rows of the pooled maps
        const A* wmax = window.data() + (h - h0 + r) * Wp + r;
        std::copy_n(wmax, W, zmax + (n * H + h) * W);
        std::copy_n(wmax + rows * Wp, W, zmean + (n * H + h) * W);
      }
    }
  });
  return true;
}

}  // namespace

bool gate_rows(const Tensor& x, const Tensor& g, int64_t H, int64_t W, const Tensor& weight, double scale,
               double shift, const Tensor& residual, bool relu, Tensor& zmax, Tensor& zmean, Tensor& s, Tensor& out) {
  bool done = false;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "attnkit::gate_rows", [&] {
    done = gate_rows_impl<scalar_t>(x, g, H, W, weight, scale, shift, residual, relu, zmax, zmean, s, out);
  });
  return done;
}

}  // namespace CPU_CAPABILITY
}  // namespace attnkit::ops::cpu
