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
      for (int i = 0; i < count; ++i) p[i] = static_cast<T>(buf[i]);
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

/// Sum of the lanes as a balanced tree: shorter dependency chains than horizontal_sum (for sums
/// computed once per dot product), same order on every call.
template <typename A>
inline A tree_sum(const at::vec::Vectorized<A>& v) {
  constexpr int K = at::vec::Vectorized<A>::size();
  alignas(64) A buf[K];
  v.store(buf);
  for (int width = K / 2; width > 0; width /= 2)
    for (int i = 0; i < width; ++i) buf[i] += buf[i + width];
  return buf[0];
}

template <typename A>
inline A horizontal_max(const at::vec::Vectorized<A>& v) {
  alignas(64) A buf[at::vec::Vectorized<A>::size()];
  v.store(buf);
  A m = buf[0];
  for (int i = 1; i < at::vec::Vectorized<A>::size(); ++i) m = nan_max(m, buf[i]);
  return m;
}

}  // namespace CPU_CAPABILITY
}  // namespace attnkit::ops::cpu
