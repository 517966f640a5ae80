// CUDA kernels of the fused CBAM op: the same passes as the CPU table (see cbam_kernels.h).
//
// Mapping to threads, chosen so that global loads coalesce in both layouts:
//   reductions over positions (per n, c):  NCHW -> one block per row, block reduction;
//                                          NHWC -> one thread per (n, c), positions in a loop.
//   reductions over channels (per n, p):   NCHW -> one thread per (n, p), channels in a loop;
//                                          NHWC -> one warp per row, warp reduction.
//   elementwise passes: one thread per element (grid-stride), layout-aware indexing.
// Accumulation is in float (double for double inputs). Arg-max ties resolve to the first index,
// as on the CPU. The only atomics are the per-position scatter of the channel-max gradient into
// dg, whose summation order (and so its last bits) can vary between runs.
#include "../detail/cbam_kernels.h"

#include <ATen/Dispatch.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include <cfloat>

namespace attnkit::ops::cuda {
namespace {

using at::Tensor;

template <typename T>
struct Acc {
  using type = float;
};
template <>
struct Acc<double> {
  using type = double;
};
template <typename T>
using acc_t = typename Acc<T>::type;

template <typename A>
__device__ __forceinline__ A neg_inf() {
  return -INFINITY;
}

template <typename A>
__device__ __forceinline__ A nan_max(A a, A b) {
  return (b > a || b != b) ? b : a;
}

template <typename A>
__device__ __forceinline__ A warp_sum(A v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
  return v;
}
template <typename A>
__device__ __forceinline__ A warp_max(A v) {
  for (int o = 16; o > 0; o >>= 1) v = nan_max(v, __shfl_down_sync(0xffffffffu, v, o));
  return v;
}
__device__ __forceinline__ int warp_min_int(int v) {
  for (int o = 16; o > 0; o >>= 1) v = min(v, __shfl_down_sync(0xffffffffu, v, o));
  return v;
}

// Block-wide reductions for blocks of kThreads threads; result valid in thread 0. `identity` fills
// the lanes of the last warp that hold no partial result.
constexpr int kThreads = 256;
template <typename A, typename Op>
__device__ A block_reduce(A v, Op op, A identity, A* shared) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  v = op(v);
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  if (warp == 0) {
    v = lane < kThreads / 32 ? shared[lane] : identity;
    v = op(v);
  }
  __syncthreads();
  return v;
}

unsigned blocks_for(int64_t n, int threads = kThreads) {
  return static_cast<unsigned>(std::min<int64_t>((n + threads - 1) / threads, 65535 * 8));
}

// ---------------------------------------------------------------------------------------------
template <typename T, typename A>
__global__ void channel_pool_rows(const T* x, int64_t P, A* avg, A* mx) {  // NCHW: block per (n, c)
  __shared__ A sh[kThreads / 32];
  const T* row = x + blockIdx.x * P;
  A s = 0, m = neg_inf<A>();
  for (int64_t i = threadIdx.x; i < P; i += kThreads) {
    const A v = static_cast<A>(row[i]);
    s += v;
    m = nan_max(m, v);
  }
  s = block_reduce(s, [](A v) { return warp_sum(v); }, A(0), sh);
  m = block_reduce(m, [](A v) { return warp_max(v); }, neg_inf<A>(), sh);
  if (threadIdx.x == 0) {
    avg[blockIdx.x] = s / static_cast<A>(P);
    mx[blockIdx.x] = m;
  }
}

template <typename T, typename A>
__global__ void channel_pool_cols(const T* x, int64_t N, int64_t C, int64_t P, A* avg, A* mx) {  // NHWC
  for (int64_t t = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; t < N * C; t += int64_t(gridDim.x) * blockDim.x) {
    const int64_t n = t / C, c = t % C;
    const T* base = x + n * P * C + c;
    A s = 0, m = neg_inf<A>();
    for (int64_t p = 0; p < P; ++p) {
      const A v = static_cast<A>(base[p * C]);
      s += v;
      m = nan_max(m, v);
    }
    avg[t] = s / static_cast<A>(P);
    mx[t] = m;
  }
}

// ---------------------------------------------------------------------------------------------
template <typename T, typename A>
__global__ void gated_pool_nchw(const T* x, const A* g, int64_t N, int64_t C, int64_t P, A* zmax, A* zmean) {
  for (int64_t t = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; t < N * P; t += int64_t(gridDim.x) * blockDim.x) {
    const int64_t n = t / P, p = t % P;
    const T* base = x + n * C * P + p;
    const A* gn = g + n * C;
    A s = 0, m = neg_inf<A>();
    for (int64_t c = 0; c < C; ++c) {
      const A v = static_cast<A>(base[c * P]) * gn[c];
      s += v;
      m = nan_max(m, v);
    }
    zmax[t] = m;
    zmean[t] = s / static_cast<A>(C);
  }
}

template <typename T, typename A>
__global__ void gated_pool_nhwc(const T* x, const A* g, int64_t N, int64_t C, int64_t P, A* zmax, A* zmean) {
  const int lane = threadIdx.x & 31;
  const int64_t warps = int64_t(gridDim.x) * (blockDim.x / 32);
  for (int64_t r = (blockIdx.x * int64_t(blockDim.x) + threadIdx.x) / 32; r < N * P; r += warps) {
    const T* row = x + r * C;
    const A* gn = g + (r / P) * C;
    A s = 0, m = neg_inf<A>();
    for (int64_t c = lane; c < C; c += 32) {
      const A v = static_cast<A>(row[c]) * gn[c];
      s += v;
      m = nan_max(m, v);
    }
    s = warp_sum(s);
    m = warp_max(m);
    if (lane == 0) {
      zmax[r] = m;
      zmean[r] = s / static_cast<A>(C);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// (n, c, p) of flat element i in either layout.
__device__ __forceinline__ void decompose(int64_t i, int64_t C, int64_t P, bool nhwc, int64_t& n, int64_t& c,
                                          int64_t& p) {
  n = i / (C * P);
  if (nhwc) {
    c = i % C;
    p = (i / C) % P;
  } else {
    p = i % P;
    c = (i / P) % C;
  }
}

template <typename T, typename A>
__global__ void apply_gates_kernel(const T* x, const A* g, const A* s, const T* residual, bool relu, int64_t N,
                                   int64_t C, int64_t P, bool nhwc, T* out) {
  const int64_t total = N * C * P;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    int64_t n, c, p;
    decompose(i, C, P, nhwc, n, c, p);
    A v = static_cast<A>(x[i]) * g[n * C + c];
    if (s) v *= s[n * P + p];
    if (residual) v += static_cast<A>(residual[i]);  // same layout as x: same flat index
    if (relu && v < A(0)) v = A(0);                   // NaN stays NaN, as torch.relu
    out[i] = static_cast<T>(v);
  }
}

// ---------------------------------------------------------------------------------------------
template <typename T, typename A>
__global__ void backward_spatial_nchw(const T* dy, const T* x, const A* g, int64_t N, int64_t C, int64_t P, A* ds,
                                      int32_t* best_c) {
  for (int64_t t = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; t < N * P; t += int64_t(gridDim.x) * blockDim.x) {
    const int64_t n = t / P, p = t % P;
    const int64_t base = n * C * P + p;
    const A* gn = g + n * C;
    A acc = 0, best = neg_inf<A>();
    int32_t arg = 0;
    for (int64_t c = 0; c < C; ++c) {
      const A y = static_cast<A>(x[base + c * P]) * gn[c];
      acc += static_cast<A>(dy[base + c * P]) * y;
      if (y > best) {
        best = y;
        arg = static_cast<int32_t>(c);
      }
    }
    ds[t] = acc;
    best_c[t] = arg;
  }
}

template <typename T, typename A>
__global__ void backward_spatial_nhwc(const T* dy, const T* x, const A* g, int64_t N, int64_t C, int64_t P, A* ds,
                                      int32_t* best_c) {
  const int lane = threadIdx.x & 31;
  const int64_t warps = int64_t(gridDim.x) * (blockDim.x / 32);
  for (int64_t r = (blockIdx.x * int64_t(blockDim.x) + threadIdx.x) / 32; r < N * P; r += warps) {
    const A* gn = g + (r / P) * C;
    A acc = 0, best = neg_inf<A>();
    int arg = static_cast<int>(C);
    for (int64_t c = lane; c < C; c += 32) {
      const A y = static_cast<A>(x[r * C + c]) * gn[c];
      acc += static_cast<A>(dy[r * C + c]) * y;
      if (y > best) {
        best = y;
        arg = static_cast<int>(c);
      }
    }
    acc = warp_sum(acc);
    const A m = __shfl_sync(0xffffffffu, warp_max(best), 0);
    const int first = warp_min_int(best == m ? arg : static_cast<int>(C));
    if (lane == 0) {
      ds[r] = acc;
      best_c[r] = first < C ? first : 0;
    }
  }
}

// ---------------------------------------------------------------------------------------------
template <typename T, typename A>
__global__ void backward_gate_rows(const T* dy, const T* x, const A* s, const A* dzmean, const A* mx, int64_t C,
                                   int64_t P, A* dg, int32_t* argmax_p) {  // NCHW: block per (n, c)
  __shared__ A sh[kThreads / 32];
  __shared__ int shi[kThreads / 32];
  const int64_t r = blockIdx.x, n = r / C;
  const T* row = x + r * P;
  const T* drow = dy + r * P;
  const A inv_c = A(1) / static_cast<A>(C);
  const A m = mx[r];
  A acc = 0;
  int first = static_cast<int>(P);
  for (int64_t i = threadIdx.x; i < P; i += kThreads) {
    A t = static_cast<A>(drow[i]);
    if (s) t *= s[n * P + i];
    if (dzmean) t += dzmean[n * P + i] * inv_c;
    const A xv = static_cast<A>(row[i]);
    acc += xv * t;
    if (xv == m && i < first) first = static_cast<int>(i);
  }
  acc = block_reduce(acc, [](A v) { return warp_sum(v); }, A(0), sh);
  // Smallest index: reuse the reduction with an int shared buffer.
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  first = warp_min_int(first);
  if (lane == 0) shi[warp] = first;
  __syncthreads();
  if (warp == 0) {
    first = lane < kThreads / 32 ? shi[lane] : static_cast<int>(P);
    first = warp_min_int(first);
  }
  if (threadIdx.x == 0) {
    dg[r] = acc;
    argmax_p[r] = first < P ? first : static_cast<int>(P - 1);
  }
}

template <typename T, typename A>
__global__ void backward_gate_cols(const T* dy, const T* x, const A* s, const A* dzmean, const A* mx, int64_t N,
                                   int64_t C, int64_t P, A* dg, int32_t* argmax_p) {  // NHWC: thread per (n, c)
  const A inv_c = A(1) / static_cast<A>(C);
  for (int64_t t = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; t < N * C; t += int64_t(gridDim.x) * blockDim.x) {
    const int64_t n = t / C, c = t % C;
    const A m = mx[t];
    A acc = 0;
    int64_t first = -1;
    for (int64_t p = 0; p < P; ++p) {
      const int64_t i = (n * P + p) * C + c;
      A tv = static_cast<A>(dy[i]);
      if (s) tv *= s[n * P + p];
      if (dzmean) tv += dzmean[n * P + p] * inv_c;
      const A xv = static_cast<A>(x[i]);
      acc += xv * tv;
      if (first < 0 && xv == m) first = p;
    }
    dg[t] = acc;
    argmax_p[t] = static_cast<int32_t>(first < 0 ? P - 1 : first);
  }
}

// The channel-max path: each position sends dzmax to its arg-max channel.
template <typename T, typename A>
__global__ void scatter_best_c_into_dg(const T* x, const A* dzmax, const int32_t* best_c, int64_t N, int64_t C,
                                       int64_t P, bool nhwc, A* dg) {
  for (int64_t t = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; t < N * P; t += int64_t(gridDim.x) * blockDim.x) {
    const int64_t n = t / P, p = t % P, c = best_c[t];
    const int64_t xi = nhwc ? (n * P + p) * C + c : (n * C + c) * P + p;
    atomicAdd(dg + n * C + c, static_cast<A>(x[xi]) * dzmax[t]);
  }
}

// ---------------------------------------------------------------------------------------------
template <typename T, typename A>
__global__ void backward_input_kernel(const T* dy, const A* g, const A* s, const A* dzmean, const A* davg, int64_t N,
                                      int64_t C, int64_t P, bool nhwc, T* dx) {
  const int64_t total = N * C * P;
  const A inv_c = A(1) / static_cast<A>(C), inv_p = A(1) / static_cast<A>(P);
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    int64_t n, c, p;
    decompose(i, C, P, nhwc, n, c, p);
    A t = static_cast<A>(dy[i]);
    if (s) t *= s[n * P + p];
    if (dzmean) t += dzmean[n * P + p] * inv_c;
    A v = t * g[n * C + c];
    if (davg) v += davg[n * C + c] * inv_p;
    dx[i] = static_cast<T>(v);
  }
}

// Fix-ups touching one element per (n, c) or per (n, p): distinct addresses within each launch.
template <typename T, typename A>
__global__ void add_dmax_at_argmax(const A* dmax, const int32_t* argmax_p, int64_t N, int64_t C, int64_t P, bool nhwc,
                                   T* dx) {
  for (int64_t t = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; t < N * C; t += int64_t(gridDim.x) * blockDim.x) {
    const int64_t n = t / C, c = t % C, p = argmax_p[t];
    const int64_t i = nhwc ? (n * P + p) * C + c : (n * C + c) * P + p;
    dx[i] = static_cast<T>(static_cast<A>(dx[i]) + dmax[t]);
  }
}
template <typename T, typename A>
__global__ void add_dzmax_at_best_c(const A* g, const A* dzmax, const int32_t* best_c, int64_t N, int64_t C, int64_t P,
                                    bool nhwc, T* dx) {
  for (int64_t t = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; t < N * P; t += int64_t(gridDim.x) * blockDim.x) {
    const int64_t n = t / P, p = t % P, c = best_c[t];
    const int64_t i = nhwc ? (n * P + p) * C + c : (n * C + c) * P + p;
    dx[i] = static_cast<T>(static_cast<A>(dx[i]) + g[n * C + c] * dzmax[t]);
  }
}

// ---------------------------------------------------------------------------------------------
struct Dims {
  int64_t N, C, P;
};
Dims dims(const Tensor& x, bool nhwc) {
  return nhwc ? Dims{x.size(0), x.size(2), x.size(1)} : Dims{x.size(0), x.size(1), x.size(2)};
}
template <typename A>
const A* opt(const Tensor& t) {
  return t.defined() ? t.data_ptr<A>() : nullptr;
}

#define ATTNKIT_CUDA_DISPATCH(x, name, ...) \
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, (x).scalar_type(), name, __VA_ARGS__)

void channel_pool(const Tensor& x, bool nhwc, Tensor& avg, Tensor& max) {
  const c10::cuda::CUDAGuard guard(x.device());
  auto stream = at::cuda::getCurrentCUDAStream();
  const Dims d = dims(x, nhwc);
  const int64_t N = d.N, C = d.C, P = d.P;
  ATTNKIT_CUDA_DISPATCH(x, "attnkit::channel_pool", [&] {
    using A = acc_t<scalar_t>;
    if (nhwc)
      channel_pool_cols<scalar_t, A><<<blocks_for(N * C), kThreads, 0, stream>>>(x.data_ptr<scalar_t>(), N, C, P,
                                                                                  avg.data_ptr<A>(), max.data_ptr<A>());
    else
      channel_pool_rows<scalar_t, A><<<static_cast<unsigned>(N * C), kThreads, 0, stream>>>(
          x.data_ptr<scalar_t>(), P, avg.data_ptr<A>(), max.data_ptr<A>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

void gated_pool(const Tensor& x, bool nhwc, const Tensor& g, Tensor& zmax, Tensor& zmean) {
  const c10::cuda::CUDAGuard guard(x.device());
  auto stream = at::cuda::getCurrentCUDAStream();
  const Dims d = dims(x, nhwc);
  const int64_t N = d.N, C = d.C, P = d.P;
  ATTNKIT_CUDA_DISPATCH(x, "attnkit::gated_pool", [&] {
    using A = acc_t<scalar_t>;
    if (nhwc)
      gated_pool_nhwc<scalar_t, A><<<blocks_for(N * P * 32), kThreads, 0, stream>>>(
          x.data_ptr<scalar_t>(), g.data_ptr<A>(), N, C, P, zmax.data_ptr<A>(), zmean.data_ptr<A>());
    else
      gated_pool_nchw<scalar_t, A><<<blocks_for(N * P), kThreads, 0, stream>>>(
          x.data_ptr<scalar_t>(), g.data_ptr<A>(), N, C, P, zmax.data_ptr<A>(), zmean.data_ptr<A>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

void apply_gates(const Tensor& x, bool nhwc, const Tensor& g, const Tensor& s, const Tensor& residual, bool relu,
                 Tensor& out) {
  const c10::cuda::CUDAGuard guard(x.device());
  auto stream = at::cuda::getCurrentCUDAStream();
  const Dims d = dims(x, nhwc);
  const int64_t N = d.N, C = d.C, P = d.P;
  ATTNKIT_CUDA_DISPATCH(x, "attnkit::apply_gates", [&] {
    using A = acc_t<scalar_t>;
    apply_gates_kernel<scalar_t, A><<<blocks_for(N * C * P), kThreads, 0, stream>>>(
        x.data_ptr<scalar_t>(), g.data_ptr<A>(), opt<A>(s), residual.defined() ? residual.data_ptr<scalar_t>() : nullptr,
        relu, N, C, P, nhwc, out.data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

void backward_spatial(const Tensor& dy, const Tensor& x, bool nhwc, const Tensor& g, Tensor& ds, Tensor& best_c) {
  const c10::cuda::CUDAGuard guard(x.device());
  auto stream = at::cuda::getCurrentCUDAStream();
  const Dims d = dims(x, nhwc);
  const int64_t N = d.N, C = d.C, P = d.P;
  ATTNKIT_CUDA_DISPATCH(x, "attnkit::backward_spatial", [&] {
    using A = acc_t<scalar_t>;
    if (nhwc)
      backward_spatial_nhwc<scalar_t, A><<<blocks_for(N * P * 32), kThreads, 0, stream>>>(
          dy.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(), g.data_ptr<A>(), N, C, P, ds.data_ptr<A>(),
          best_c.data_ptr<int32_t>());
    else
      backward_spatial_nchw<scalar_t, A><<<blocks_for(N * P), kThreads, 0, stream>>>(
          dy.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(), g.data_ptr<A>(), N, C, P, ds.data_ptr<A>(),
          best_c.data_ptr<int32_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

void backward_gate(const Tensor& dy, const Tensor& x, bool nhwc, const Tensor& s, const Tensor& dzmax,
                   const Tensor& dzmean, const Tensor& best_c, const Tensor& max, Tensor& dg, Tensor& argmax_p) {
  const c10::cuda::CUDAGuard guard(x.device());
  auto stream = at::cuda::getCurrentCUDAStream();
  const Dims d = dims(x, nhwc);
  const int64_t N = d.N, C = d.C, P = d.P;
  ATTNKIT_CUDA_DISPATCH(x, "attnkit::backward_gate", [&] {
    using A = acc_t<scalar_t>;
    if (nhwc)
      backward_gate_cols<scalar_t, A><<<blocks_for(N * C), kThreads, 0, stream>>>(
          dy.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(), opt<A>(s), opt<A>(dzmean), max.data_ptr<A>(), N, C, P,
          dg.data_ptr<A>(), argmax_p.data_ptr<int32_t>());
    else
      backward_gate_rows<scalar_t, A><<<static_cast<unsigned>(N * C), kThreads, 0, stream>>>(
          dy.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(), opt<A>(s), opt<A>(dzmean), max.data_ptr<A>(), C, P,
          dg.data_ptr<A>(), argmax_p.data_ptr<int32_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    if (dzmax.defined()) {
      scatter_best_c_into_dg<scalar_t, A><<<blocks_for(N * P), kThreads, 0, stream>>>(
          x.data_ptr<scalar_t>(), dzmax.data_ptr<A>(), best_c.data_ptr<int32_t>(), N, C, P, nhwc, dg.data_ptr<A>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
}

void backward_input(const Tensor& dy, const Tensor& x, bool nhwc, const Tensor& g, const Tensor& s,
                    const Tensor& dzmax, const Tensor& dzmean, const Tensor& best_c, const Tensor& davg,
                    const Tensor& dmax, const Tensor& argmax_p, Tensor& dx) {
  const c10::cuda::CUDAGuard guard(x.device());
  auto stream = at::cuda::getCurrentCUDAStream();
  const Dims d = dims(x, nhwc);
  const int64_t N = d.N, C = d.C, P = d.P;
  ATTNKIT_CUDA_DISPATCH(x, "attnkit::backward_input", [&] {
    using A = acc_t<scalar_t>;
    backward_input_kernel<scalar_t, A><<<blocks_for(N * C * P), kThreads, 0, stream>>>(
        dy.data_ptr<scalar_t>(), g.data_ptr<A>(), opt<A>(s), opt<A>(dzmean), opt<A>(davg), N, C, P, nhwc,
        dx.data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    if (dmax.defined()) {
      add_dmax_at_argmax<scalar_t, A><<<blocks_for(N * C), kThreads, 0, stream>>>(
          dmax.data_ptr<A>(), argmax_p.data_ptr<int32_t>(), N, C, P, nhwc, dx.data_ptr<scalar_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    if (dzmax.defined()) {
      add_dzmax_at_best_c<scalar_t, A><<<blocks_for(N * P), kThreads, 0, stream>>>(
          g.data_ptr<A>(), dzmax.data_ptr<A>(), best_c.data_ptr<int32_t>(), N, C, P, nhwc, dx.data_ptr<scalar_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
}

}  // namespace

const CbamKernelTable& cbam_kernels() {
  static const CbamKernelTable table{channel_pool,     gated_pool,    apply_gates,
                                     backward_spatial, backward_gate, backward_input};
  return table;
}

}  // namespace attnkit::ops::cuda
