// Index kernels: embedding lookup, gather and scatter-add along an axis (torch semantics).
// Every index is checked before any memory is read through it, so a bad token id is a
// RangeError naming the position, never a read out of bounds.
#include <cstring>

#include "common.h"

namespace dualroute {
namespace cpu {
namespace DR_ISA {
namespace {

// Splits a contiguous shape around `axis` into [outer, n, inner].
struct AxisSplit {
  int64_t outer = 1, n = 1, inner = 1;
  AxisSplit(const View& v, int axis) {
    for (int d = 0; d < v.ndim; ++d) {
      if (d < axis) outer *= v.shape[d];
      else if (d == axis) n = v.shape[d];
      else inner *= v.shape[d];
    }
  }
};

void check_indices(const char* kernel, const View& index, int64_t limit) {
  const int32_t* p = static_cast<const int32_t*>(index.data);
  const int64_t n = view_numel(index);
  for (int64_t i = 0; i < n; ++i) {
    if (p[i] < 0 || p[i] >= limit)
      fail(ErrorCode::Range, kernel, ": index ", p[i], " at flat position ", i, " is outside [0, ", limit, ")");
  }
}

// Offset in a contiguous tensor of `shape` of the coordinates of flat position p of `like`,
// with coordinate `axis` replaced by `value`.
inline int64_t remap(const View& like, const View& target, int axis, int64_t p, int64_t value) {
  int64_t off = 0, stride = 1;
  for (int d = like.ndim - 1; d >= 0; --d) {
    int64_t c = p % like.shape[d];
    p /= like.shape[d];
    off += (d == axis ? value : c) * stride;
    stride *= target.shape[d];
  }
  return off;
}

}  // namespace

void embedding(const View& out, const View& ids, const View& table) {
  const int64_t V = table.shape[0], D = table.shape[1];
  const int64_t n = view_numel(ids);
  const int32_t* pi = static_cast<const int32_t*>(ids.data);
  for (int64_t i = 0; i < n; ++i) {
    if (pi[i] < 0 || pi[i] >= V)
      fail(ErrorCode::Range, "embedding: token id ", pi[i], " at position ", i, " is outside [0, ", V, ")");
  }
  const int64_t es = dtype_size(dt(table)) * D;
  const char* pt = static_cast<const char*>(table.data);
  char* po = static_cast<char*>(out.data);
  parallel_for(n, std::max<int64_t>(1, 65536 / std::max<int64_t>(es, 1)), [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) std::memcpy(po + i * es, pt + pi[i] * es, es);
  });
}

void gather(const View& out, const View& x, const View& index, int axis) {
  check_indices("gather", index, x.shape[axis]);
  const int32_t* pi = static_cast<const int32_t*>(index.data);
  const int64_t n = view_numel(index);
  dispatch_dtype(dt(x), "gather", [&](auto tag) {
    using T = decltype(tag);
    const T* px = static_cast<const T*>(x.data);
    T* po = static_cast<T*>(out.data);
    parallel_for(n, 16384, [&](int64_t b, int64_t e) {
      for (int64_t p = b; p < e; ++p) po[p] = px[remap(index, x, axis, p, pi[p])];
    });
  });
}

void scatter_add(const View& out, const View& index, const View& src, int axis) {
  check_indices("scatter_add", index, out.shape[axis]);
  const int32_t* pi = static_cast<const int32_t*>(index.data);
  // Work is split over the positions outside `axis`: two source elements collide only when
  // they differ in their `axis` coordinate alone, so each (outer, inner) fibre is owned by one
  // thread and walks its axis positions in order (deterministic, no atomics).
  AxisSplit sp(index, axis);
  dispatch_dtype(dt(out), "scatter_add", [&](auto tag) {
    using T = decltype(tag);
    if constexpr (std::is_same_v<T, uint8_t>) {
      fail(ErrorCode::DType, "scatter_add: bool tensors are not supported");
    } else {
      const T* ps = static_cast<const T*>(src.data);
      T* po = static_cast<T*>(out.data);
      parallel_for(sp.outer * sp.inner, 4096, [&](int64_t b, int64_t e) {
        for (int64_t f = b; f < e; ++f) {
          const int64_t o = f / sp.inner, in = f % sp.inner;
          for (int64_t j = 0; j < sp.n; ++j) {
            const int64_t p = (o * sp.n + j) * sp.inner + in;
            const int64_t dst = remap(index, out, axis, p, pi[p]);
            if constexpr (std::is_same_v<T, int32_t>) {
              po[dst] = static_cast<int32_t>(static_cast<uint32_t>(po[dst]) + static_cast<uint32_t>(ps[p]));
            } else {
              po[dst] = Num<T>::store(Num<T>::load(po[dst]) + Num<T>::load(ps[p]));
            }
          }
        }
      });
    }
  });
}

}  // namespace DR_ISA
}  // namespace cpu
}  // namespace dualroute
