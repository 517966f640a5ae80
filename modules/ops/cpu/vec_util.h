// Small helpers over ATen's Vectorized<T> shared by attnkit's CPU kernels.
//
// Kernels accumulate in `acc_t<T>` (double for double, float otherwise) and load/store through
// Lanes<T>, which converts on the fly for reduced-precision inputs (bfloat16, half). Tails shorter
// than a vector are loaded partially and padded with a neutral value, so one code path serves
// every length.
//
// This header is compiled once per CPU capability (DEFAULT, AVX2, AVX512: see modules/ops/cpu in
// CMakeLists.txt); everything here lives in the inline namespace CPU_CAPABILITY like ATen's own
// vector code, so the copies never clash.
#pragma once

#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include <type_traits>

namespace attnkit::ops::cpu {
inline namespace CPU_CAPABILITY {

template <typename T>
using acc_t = std::conditional_t<std::is_same_v<T, double>, double, float>;

template <typename T>
struct Lanes {
  using A = acc_t<T>;
  using V = at::vec::Vectorized<A>;
  static constexpr int kSize = V::size();

  /// Loads `count` (≤ kSize) elements; missing lanes are `pad`.
  static V load(const T* p, int count = kSize, A pad = A(0)) {
    if constexpr (std::is_same_v<T, A>) {
      if (count == kSize) return V::loadu(p);
      return V::set(V(pad), V::loadu(p, count), count);
    } else {
      if (count == kSize) {  // ATen's vector conversion (one instruction on AVX-512)
        V out;
        at::vec::load_to_float<T>(p, out);
        return out;
      }
      alignas(64) A buf[kSize];
      for (int i = 0; i < kSize; ++i) buf[i] = i < count ? static_cast<A>(p[i]) : pad;
      return V::loadu(buf);
    }
  }
  static void store(T* p, const V& v, int count = kSize) {
    if constexpr (std::is_same_v<T, A>) {
      v.store(p, count);
    } else {
      alignas(64) A buf[kSize];
      v.store(buf);
      at::vec::convert(buf, p, count);  // vectorised, rounding to nearest even like static_cast
    }
  }
};

/// Max that propagates NaN, like torch.amax and max pooling.
template <typename A>
inline A nan_max(A a, A b) {
  return (b > a || b != b) ? b : a;
}

template <typename A>
inline A horizontal_sum(const at::vec::Vectorized<A>& v) {
  alignas(64) A buf[at::vec::Vectorized<A>::size()];
  v.store(buf);
  A s = 0;
  for (int i = 0; i < at::vec::Vectorized<A>::size(); ++i) s += buf[i];
  return s;
}

#if defined(CPU_CAPABILITY_AVX2) || defined(CPU_CAPABILITY_AVX512)
// The two lane-wise operations the reductions below fold with, on 128- and 256-bit registers.
struct AddLanes {
  __m128 operator()(__m128 a, __m128 b) const { return _mm_add_ps(a, b); }
  __m128d operator()(__m128d a, __m128d b) const { return _mm_add_pd(a, b); }
  __m256 operator()(__m256 a, __m256 b) const { return _mm256_add_ps(a, b); }
  __m256d operator()(__m256d a, __m256d b) const { return _mm256_add_pd(a, b); }
};
/// max per lane, NaN where either is NaN (as at::vec::maximum and torch.amax).
struct NanMaxLanes {
  __m128 operator()(__m128 a, __m128 b) const { return _mm_or_ps(_mm_max_ps(a, b), _mm_cmpunord_ps(a, b)); }
  __m128d operator()(__m128d a, __m128d b) const { return _mm_or_pd(_mm_max_pd(a, b), _mm_cmpunord_pd(a, b)); }
  __m256 operator()(__m256 a, __m256 b) const { return _mm256_or_ps(_mm256_max_ps(a, b), _mm256_cmp_ps(a, b, _CMP_UNORD_Q)); }
  __m256d operator()(__m256d a, __m256d b) const {
    return _mm256_or_pd(_mm256_max_pd(a, b), _mm256_cmp_pd(a, b, _CMP_UNORD_Q));
  }
};

/// The lanes of x folded by `op` as a balanced tree of shuffles: halves, then quarters, ...
template <typename Op>
inline float fold_lanes_256(__m256 x, Op op) {
  __m128 s = op(_mm256_castps256_ps128(x), _mm256_extractf128_ps(x, 1));
  s = op(s, _mm_movehl_ps(s, s));
  return _mm_cvtss_f32(op(s, _mm_shuffle_ps(s, s, 1)));
}
template <typename Op>
inline double fold_lanes_256(__m256d x, Op op) {
  const __m128d s = op(_mm256_castpd256_pd128(x), _mm256_extractf128_pd(x, 1));
  return _mm_cvtsd_f64(op(s, _mm_unpackhi_pd(s, s)));
}

/// fold_lanes_256 for this copy's vector width. (AVX-512: the halves go through memory, as GCC 12
/// warns about its own 512-bit extract intrinsics.)
template <typename A, typename Op>
inline A fold_lanes(const at::vec::Vectorized<A>& v, Op op) {
#if defined(CPU_CAPABILITY_AVX512)
  alignas(64) A buf[at::vec::Vectorized<A>::size()];
  v.store(buf);
  constexpr int half = at::vec::Vectorized<A>::size() / 2;
  if constexpr (std::is_same_v<A, float>) return fold_lanes_256(op(_mm256_load_ps(buf), _mm256_load_ps(buf + half)), op);
  else return fold_lanes_256(op(_mm256_load_pd(buf), _mm256_load_pd(buf + half)), op);
#else
  return fold_lanes_256(v, op);
#endif
}
#endif

/// Sum of the lanes as a balanced tree of shuffles and adds (short dependency chains, for sums taken
/// once per dot product or position), the same order on every call.
template <typename A>
inline A lane_sum(const at::vec::Vectorized<A>& v) {
#if defined(CPU_CAPABILITY_AVX2) || defined(CPU_CAPABILITY_AVX512)
  return fold_lanes(v, AddLanes{});
#else
  constexpr int K = at::vec::Vectorized<A>::size();
  alignas(64) A buf[K];
  v.store(buf);
  for (int width = K / 2; width > 0; width /= 2)
    for (int i = 0; i < width; ++i) buf[i] += buf[i + width];
  return buf[0];
#endif
}

template <typename A>
inline A horizontal_max(const at::vec::Vectorized<A>& v) {
  alignas(64) A buf[at::vec::Vectorized<A>::size()];
  v.store(buf);
  A m = buf[0];
  for (int i = 1; i < at::vec::Vectorized<A>::size(); ++i) m = nan_max(m, buf[i]);
  return m;
}

/// Max of the lanes, NaN if any lane is NaN, as lane_sum's tree: for maxima taken once per
/// position, where horizontal_max's chain of compares would be the loop's latency.
template <typename A>
inline A lane_max(const at::vec::Vectorized<A>& v) {
#if defined(CPU_CAPABILITY_AVX2) || defined(CPU_CAPABILITY_AVX512)
  return fold_lanes(v, NanMaxLanes{});
#else
  return horizontal_max(v);
#endif
}

}  // namespace CPU_CAPABILITY
}  // namespace attnkit::ops::cpu
