// Helpers shared by the CPU kernel sources: element access by dtype, dtype switches and
// strided iteration. Included only by kernel sources (compiled once per ISA variant).
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#include "../core/dtype.h"
#include "../core/error.h"
#include "../core/parallel.h"
#include "../core/view.h"
#include "kernels.h"

namespace dualroute {
namespace cpu {
namespace DR_ISA {

// Num<T>: how a stored element becomes a value to compute with and back. bfloat16 computes
// in float; the rest compute in their own type.
template <typename T>
struct Num {
  using acc = T;
  static acc load(T v) { return v; }
  static T store(acc v) { return v; }
};
template <>
struct Num<bf16> {
  using acc = float;
  static float load(bf16 v) { return bf16_to_float(v); }
  static bf16 store(float v) { return float_to_bf16(v); }
};

// Calls f(T{}) with T the C++ type of dtype. Bool is uint8_t.
template <typename F>
void dispatch_dtype(DType t, const char* kernel, F&& f) {
  switch (t) {
    case DType::F32: return f(float{});
    case DType::F64: return f(double{});
    case DType::BF16: return f(bf16{});
    case DType::I32: return f(int32_t{});
    case DType::Bool: return f(uint8_t{});
  }
  fail(ErrorCode::DType, kernel, ": unknown dtype ", static_cast<int>(t));
}

// The float dtypes only.
template <typename F>
void dispatch_float(DType t, const char* kernel, F&& f) {
  switch (t) {
    case DType::F32: return f(float{});
    case DType::F64: return f(double{});
    case DType::BF16: return f(bf16{});
    default: fail(ErrorCode::DType, kernel, ": expected a float dtype, got ", dtype_name(t));
  }
}

inline DType dt(const View& v) { return static_cast<DType>(v.dtype); }

// Converts a value of any stored type to double and back, for copies and casts. Float to
// int truncates toward zero, saturates at the int32 range and maps NaN to 0 (never UB).
template <typename T>
inline double to_double(T v) {
  return static_cast<double>(Num<T>::load(v));
}
template <typename T>
inline T from_double(double v) {
  if constexpr (std::is_same_v<T, int32_t>) {
    if (!(v == v)) return 0;
    if (v >= 2147483647.0) return std::numeric_limits<int32_t>::max();
    if (v <= -2147483648.0) return std::numeric_limits<int32_t>::min();
    return static_cast<int32_t>(v);
  } else if constexpr (std::is_same_v<T, uint8_t>) {
    return v != 0 ? 1 : 0;
  } else if constexpr (std::is_same_v<T, bf16>) {
    return float_to_bf16(static_cast<float>(v));
  } else {
    return static_cast<T>(v);
  }
}

// Strided iteration over N operands sharing one shape. Dimensions of size 1 are dropped and
// neighbours that are contiguous in every operand are merged, so a contiguous tensor becomes
// one long run. fn(ptr offsets[N] (elements), count, inner strides[N]) handles one run.
template <int N>
struct Iter {
  int ndim = 0;
  int64_t shape[kMaxDims];
  int64_t strides[N][kMaxDims];

  Iter(int nd, const int64_t* shp, const int64_t* const* str) {
    for (int d = 0; d < nd; ++d) {
      if (shp[d] == 1) continue;
      if (ndim > 0) {
        bool merge = true;
        for (int k = 0; k < N; ++k)
          if (strides[k][ndim - 1] != str[k][d] * shp[d]) merge = false;
        if (merge) {
          shape[ndim - 1] *= shp[d];
          for (int k = 0; k < N; ++k) strides[k][ndim - 1] = str[k][d];
          continue;
        }
      }
      shape[ndim] = shp[d];
      for (int k = 0; k < N; ++k) strides[k][ndim] = str[k][d];
      ++ndim;
    }
    if (ndim == 0) {  // a scalar: one run of one element
      ndim = 1;
      shape[0] = 1;
      for (int k = 0; k < N; ++k) strides[k][0] = 1;
    }
  }

  int64_t numel() const {
    int64_t n = 1;
    for (int d = 0; d < ndim; ++d) n *= shape[d];
    return n;
  }

  // Runs fn over every element, in parallel. `cost` is a rough per-element weight.
  template <typename F>
  void run(F&& fn, int64_t cost = 1) const {
    const int64_t inner = shape[ndim - 1];
    const int64_t total = numel();
    if (total == 0) return;
    const int64_t grain_elems = std::max<int64_t>(1, 32768 / std::max<int64_t>(cost, 1));
    int64_t inner_s[N];
    for (int k = 0; k < N; ++k) inner_s[k] = strides[k][ndim - 1];
    if (ndim == 1) {
      parallel_for(inner, grain_elems, [&](int64_t b, int64_t e) {
        int64_t off[N];
        for (int k = 0; k < N; ++k) off[k] = b * inner_s[k];
        fn(off, e - b, inner_s);
      });
      return;
    }
    const int64_t rows = total / inner;
    parallel_for(rows, std::max<int64_t>(1, grain_elems / inner), [&](int64_t b, int64_t e) {
      int64_t idx[kMaxDims] = {0};
      int64_t r = b;
      for (int d = ndim - 2; d >= 0; --d) {
        idx[d] = r % shape[d];
        r /= shape[d];
      }
      for (int64_t row = b; row < e; ++row) {
        int64_t off[N];
        for (int k = 0; k < N; ++k) {
          off[k] = 0;
          for (int d = 0; d < ndim - 1; ++d) off[k] += idx[d] * strides[k][d];
        }
        fn(off, inner, inner_s);
        for (int d = ndim - 2; d >= 0; --d) {
          if (++idx[d] < shape[d]) break;
          idx[d] = 0;
        }
      }
    });
  }
};

template <int N>
Iter<N> make_iter(const View& shape_of, const View* const (&ops)[N]) {
  const int64_t* str[N];
  for (int k = 0; k < N; ++k) str[k] = ops[k]->strides;
  return Iter<N>(shape_of.ndim, shape_of.shape, str);
}

// The per-chunk partial rows of the backward kernels' chunked column sums (dweight, dbias): chunk
// c's `cols` accumulators start on a cache line of their own and end before the next chunk's, so
// threads working on neighbouring chunks never write one line. Packed back to back, the line where
// one chunk's row ended and the next one's began went back and forth between the cores on every
// row the two threads summed (bench/elementwise.ts's biasActBackward gelu row, which sums dbias:
// 52% of the memory rate before, 73% after, bench/results/elementwise-cpu-2026-12-02h.json and
// -02i). Zeroed.
template <typename A>
class ChunkRows {
 public:
  ChunkRows(int64_t chunks, int64_t cols)
      : stride_((cols * static_cast<int64_t>(sizeof(A)) + 63) / 64 * 64 / static_cast<int64_t>(sizeof(A))),
        buf_(static_cast<size_t>(std::max<int64_t>(chunks, 0) * stride_ + 64 / static_cast<int64_t>(sizeof(A))), A(0)) {
    const uintptr_t p = reinterpret_cast<uintptr_t>(buf_.data());
    base_ = buf_.data() + ((64 - p % 64) % 64) / sizeof(A);
  }
  A* row(int64_t c) { return base_ + c * stride_; }
  int64_t stride() const { return stride_; }  // elements from one chunk's row to the next

 private:
  int64_t stride_;
  std::vector<A> buf_;
  A* base_;
};

}  // namespace DR_ISA
}  // namespace cpu
}  // namespace dualroute
