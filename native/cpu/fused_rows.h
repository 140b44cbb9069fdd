// Helpers of the fused kernels (fused.cpp: add + RMSNorm; fused_act.cpp: bias + activation):
// lanes, rounding to the stored dtype, and the fixed-order column sums of the backward kernels.
// Included only by those two sources (compiled once per ISA variant).
#pragma once
#include <vector>

#include "common.h"
#include "simd.h"

namespace dualroute {
namespace cpu {
namespace DR_ISA {
namespace fused_detail {

// float32 and bfloat16 go through vector lanes; float64 does not.
template <typename T>
constexpr bool kVec = !std::is_same_v<T, double>;
template <typename T>
using Stat = std::conditional_t<std::is_same_v<T, double>, double, float>;
template <typename T>
using Acc = typename Num<T>::acc;

template <typename T>
inline Acc<T> ld(T v) {
  return Num<T>::load(v);
}
// A value rounded to T and back (what storing it and reading it again gives).
template <typename T>
inline Acc<T> rnd(Acc<T> v) {
  return Num<T>::load(Num<T>::store(v));
}
template <typename T>
inline vf vrnd(vf v) {
  if constexpr (std::is_same_v<T, bf16>) {
    bf16 t[kVecF];
    vstore(t, v);
    return vload(t);
  } else {
    return v;
  }
}
template <typename T, int U>
DR_VINLINE VN<U> vrnd(VN<U> v) {
  for (int k = 0; k < U; ++k) v.v[k] = vrnd<T>(v.v[k]);
  return v;
}

template <typename A>
constexpr A tiny_mean_square() {
  return std::is_same_v<A, double> ? A(1e-290) : A(1e-30);
}

// Rows per task for row kernels: about 8192 elements a task.
inline int64_t row_grain(int64_t cols) { return std::max<int64_t>(1, 8192 / std::max<int64_t>(cols, 1)); }

// The chunked, fixed-order row reduction of the backward kernels: row(r, partial) handles row r
// and adds its [cols] contribution into `partial` (nullptr when no sum is wanted); the sums of
// the chunks are added in chunk order into out [cols] (not written when out is nullptr; zeros
// when there are no rows).
template <typename T, typename Row>
void rows_with_colsum(int64_t rows, int64_t cols, T* out, Row&& row) {
  using A = Acc<T>;
  if (!out) {
    parallel_for(rows, row_grain(cols), [&](int64_t lo, int64_t hi) {
      for (int64_t r = lo; r < hi; ++r) row(r, static_cast<A*>(nullptr));
      vstream_fence();  // for a row kernel that writes around the caches (simd.h's vstream)
    });
    return;
  }
  const int64_t nchunks = std::min<int64_t>(rows, std::max<int64_t>(1, 4 * static_cast<int64_t>(num_threads())));
  ChunkRows<A> part(nchunks, cols);
  if (nchunks > 0) {
    parallel_for(nchunks, 1, [&](int64_t lo, int64_t hi) {
      for (int64_t c = lo; c < hi; ++c) {
        const int64_t r0 = rows * c / nchunks, r1 = rows * (c + 1) / nchunks;
        A* pc = part.row(c);
        for (int64_t r = r0; r < r1; ++r) row(r, pc);
      }
      vstream_fence();
    });
  }
  // the rows through locals: read through the object, its members are reloaded at every step
  // (the stores to out might alias them)
  const A* p0 = part.row(0);
  const int64_t ps = part.stride();
  parallel_for(cols, 4096, [&](int64_t lo, int64_t hi) {
    for (int64_t j = lo; j < hi; ++j) {
      A s = 0;
      for (int64_t c = 0; c < nchunks; ++c) s += p0[c * ps + j];
      out[j] = Num<T>::store(s);
    }
  });
}

}  // namespace fused_detail
}  // namespace DR_ISA
}  // namespace cpu
}  // namespace dualroute
