// Running sums, top-k selection and stable sorting on the CPU.
//
// cumsum: x, out contiguous [outer, dim, inner], running sums over dim (reverse: from the end;
// exclusive: out[d] holds the sum of the elements before d). Tasks own whole (outer, block of
// inner) columns; a block of up to kInnerBlock accumulators walks dim, so each step reads and
// writes one contiguous run (vectorised by the compiler); inner == 1 is a plain row scan.
// float32 and bfloat16 accumulate in float, float64 in double, int32 in int64 with a check that
// every written sum fits int32 (else a RangeError naming the first position).
//
// topk and sort: x contiguous [rows, n] along the last axis. One task per row sorts int32 row
// indices by value: std::partial_sort (topk, O(n log k)) or std::stable_sort, comparing values
// with NaN as the largest (numpy's and PyTorch's order) and ties broken by the lower index, so
// topk is deterministic and sort is stable in both directions.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <numeric>
#include <vector>

#include "common.h"

namespace dualroute {
namespace cpu {
namespace DR_ISA {
namespace {

constexpr int64_t kInnerBlock = 256;

template <typename T>
void cumsum_typed(T* out, const T* x, int64_t outer, int64_t dim, int64_t inner, bool reverse, bool exclusive) {
  using A = typename std::conditional<std::is_same_v<T, int32_t>, int64_t, typename Num<T>::acc>::type;
  const int64_t blocks = (inner + kInnerBlock - 1) / kInnerBlock;
  std::atomic<int64_t> bad{INT64_MAX};
  parallel_for(outer * blocks, std::max<int64_t>(1, 65536 / std::max<int64_t>(dim * std::min(inner, kInnerBlock), 1)),
               [&](int64_t b, int64_t e) {
                 A acc[kInnerBlock];
                 for (int64_t task = b; task < e; ++task) {
                   const int64_t o = task / blocks, i0 = (task % blocks) * kInnerBlock;
                   const int64_t w = std::min(kInnerBlock, inner - i0);
                   std::fill(acc, acc + w, A(0));
                   for (int64_t s = 0; s < dim; ++s) {
                     const int64_t d = reverse ? dim - 1 - s : s;
                     const int64_t base = (o * dim + d) * inner + i0;
                     const T* px = x + base;
                     T* po = out + base;
                     if (exclusive) {
                       for (int64_t i = 0; i < w; ++i) {
                         const A v = static_cast<A>(Num<T>::load(px[i]));
                         po[i] = Num<T>::store(static_cast<typename Num<T>::acc>(acc[i]));
                         acc[i] += v;
                       }
                     } else {
                       for (int64_t i = 0; i < w; ++i) {
                         acc[i] += static_cast<A>(Num<T>::load(px[i]));
                         po[i] = Num<T>::store(static_cast<typename Num<T>::acc>(acc[i]));
                       }
                     }
                     if constexpr (std::is_same_v<T, int32_t>) {
                       // the values written at this step: the sums before (exclusive) or after the add
                       for (int64_t i = 0; i < w; ++i) {
                         const A v = exclusive ? acc[i] - static_cast<A>(px[i]) : acc[i];
                         if (v < INT32_MIN || v > INT32_MAX) {
                           const int64_t pos = base + i;
                           int64_t cur = bad.load();
                           while (pos < cur && !bad.compare_exchange_weak(cur, pos)) {
                           }
                         }
                       }
                     }
                   }
                 }
               });
  if constexpr (std::is_same_v<T, int32_t>) {
    const int64_t pos = bad.load();
    if (pos != INT64_MAX)
      fail(ErrorCode::Range, "cumsum: the running sum at flat position ", pos,
           " leaves int32's range [-2147483648, 2147483647]; cast to float64 (CPU) or float32 first");
  }
}

// Value order with NaN as the largest value (all NaNs equal).
template <typename A>
inline bool less_nan_last(A a, A b) {
  if constexpr (std::is_floating_point_v<A>) {
    if (a != a) return false;
    if (b != b) return true;
  }
  return a < b;
}

// Row r's values as compute-type numbers (bf16 widened once per row).
template <typename T>
void load_row(const T* x, int64_t n, std::vector<typename Num<T>::acc>& v) {
  v.resize(static_cast<size_t>(n));
  for (int64_t j = 0; j < n; ++j) v[j] = Num<T>::load(x[j]);
}

template <typename T>
void topk_typed(T* values, int32_t* indices, const T* x, int64_t rows, int64_t n, int k, bool largest) {
  using A = typename Num<T>::acc;
  parallel_for(rows, std::max<int64_t>(1, 16384 / std::max<int64_t>(n, 1)), [&](int64_t b, int64_t e) {
    std::vector<A> v;
    std::vector<int32_t> idx;
    for (int64_t r = b; r < e; ++r) {
      load_row(x + r * n, n, v);
      idx.resize(static_cast<size_t>(n));
      std::iota(idx.begin(), idx.end(), 0);
      // best first: larger (smaller) values, then the lower index
      auto better = [&](int32_t i, int32_t j) {
        if (largest ? less_nan_last(v[j], v[i]) : less_nan_last(v[i], v[j])) return true;
        if (largest ? less_nan_last(v[i], v[j]) : less_nan_last(v[j], v[i])) return false;
        return i < j;
      };
      std::partial_sort(idx.begin(), idx.begin() + k, idx.end(), better);
      for (int j = 0; j < k; ++j) {
        indices[r * k + j] = idx[j];
        values[r * k + j] = x[r * n + idx[j]];
      }
    }
  });
}

template <typename T>
void sort_typed(T* values, int32_t* indices, const T* x, int64_t rows, int64_t n, bool descending) {
  using A = typename Num<T>::acc;
  parallel_for(rows, std::max<int64_t>(1, 4096 / std::max<int64_t>(n, 1)), [&](int64_t b, int64_t e) {
    std::vector<A> v;
    std::vector<int32_t> idx;
    for (int64_t r = b; r < e; ++r) {
      load_row(x + r * n, n, v);
      idx.resize(static_cast<size_t>(n));
      std::iota(idx.begin(), idx.end(), 0);
      // stable_sort keeps equal values in index order in either direction
      if (descending)
        std::stable_sort(idx.begin(), idx.end(), [&](int32_t i, int32_t j) { return less_nan_last(v[j], v[i]); });
      else
        std::stable_sort(idx.begin(), idx.end(), [&](int32_t i, int32_t j) { return less_nan_last(v[i], v[j]); });
      for (int64_t j = 0; j < n; ++j) {
        indices[r * n + j] = idx[j];
        values[r * n + j] = x[r * n + idx[j]];
      }
    }
  });
}

template <typename F>
void dispatch_num(DType t, const char* kernel, F&& f) {
  dispatch_dtype(t, kernel, [&](auto tag) {
    using T = decltype(tag);
    if constexpr (std::is_same_v<T, uint8_t>) {
      fail(ErrorCode::DType, kernel, ": bool tensors are not supported");
    } else {
      f(tag);
    }
  });
}

}  // namespace

void cumsum(const View& out, const View& x, int64_t outer, int64_t dim, int64_t inner, bool reverse, bool exclusive) {
  if (outer * dim * inner == 0) return;
  dispatch_num(dt(x), "cumsum", [&](auto tag) {
    using T = decltype(tag);
    cumsum_typed<T>(static_cast<T*>(out.data), static_cast<const T*>(x.data), outer, dim, inner, reverse, exclusive);
  });
}

void topk(const View& values, const View& indices, const View& x, int k, bool largest) {
  const int64_t n = x.ndim ? x.shape[x.ndim - 1] : 1;
  const int64_t rows = n ? view_numel(x) / n : 0;
  if (rows == 0 || k == 0) return;
  dispatch_num(dt(x), "topk", [&](auto tag) {
    using T = decltype(tag);
    topk_typed<T>(static_cast<T*>(values.data), static_cast<int32_t*>(indices.data), static_cast<const T*>(x.data),
                  rows, n, k, largest);
  });
}

void sort(const View& values, const View& indices, const View& x, bool descending) {
  const int64_t n = x.ndim ? x.shape[x.ndim - 1] : 1;
  const int64_t rows = n ? view_numel(x) / n : 0;
  if (rows == 0) return;
  dispatch_num(dt(x), "sort", [&](auto tag) {
    using T = decltype(tag);
    sort_typed<T>(static_cast<T*>(values.data), static_cast<int32_t*>(indices.data), static_cast<const T*>(x.data),
                  rows, n, descending);
  });
}

}  // namespace DR_ISA
}  // namespace cpu
}  // namespace dualroute
