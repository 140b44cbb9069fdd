// Reductions over trailing dimensions: sum, mean, max, min, and argmax/argmin over one.
//
// The dispatcher permutes the view so that the reduced dimensions come last; the kernel then
// sees x as [kept..., reduced...] with any strides. Two layouts get their own loops:
//  - rows: the reduced dims are contiguous in memory (the common "last axis" case): each
//    output element is a vectorised reduction over one run;
//  - columns: the kept dims are the contiguous ones (reducing a leading axis, as for bias
//    gradients): whole rows of x are accumulated into a row of accumulators, so memory is
//    read in order instead of with a stride.
// Everything else walks the reduced space with the strided iterator.
#include <cmath>
#include <vector>

#include "common.h"
#include "simd.h"

namespace dualroute {
namespace cpu {
namespace DR_ISA {
namespace {

template <typename A>
struct Reducer {
  ReduceOp op;
  A init() const {
    switch (op) {
      case ReduceOp::Max: return std::numeric_limits<A>::has_infinity ? -std::numeric_limits<A>::infinity()
                                                                      : std::numeric_limits<A>::lowest();
      case ReduceOp::Min: return std::numeric_limits<A>::has_infinity ? std::numeric_limits<A>::infinity()
                                                                      : std::numeric_limits<A>::max();
      default: return A(0);
    }
  }
  A combine(A acc, A v) const {
    switch (op) {
      case ReduceOp::Max: return (v > acc || v != v) && acc == acc ? v : acc;
      case ReduceOp::Min: return (v < acc || v != v) && acc == acc ? v : acc;
      default: return acc + v;
    }
  }
};

// The value type reductions accumulate in: float for float32/bfloat16, double for float64,
// int64 for int32 (wrapped back to int32 at the end, as integer sums wrap in PyTorch).
template <typename T>
struct AccOf {
  using type = typename Num<T>::acc;
};
template <>
struct AccOf<int32_t> {
  using type = int64_t;
};

template <typename T>
T finish(ReduceOp op, typename AccOf<T>::type acc, int64_t count) {
  using A = typename AccOf<T>::type;
  if constexpr (std::is_same_v<T, int32_t>) {
    return static_cast<int32_t>(static_cast<uint32_t>(static_cast<uint64_t>(acc)));
  } else {
    if (op == ReduceOp::Mean) acc = count ? acc / static_cast<A>(count) : std::numeric_limits<A>::quiet_NaN();
    return Num<T>::store(acc);
  }
}

// Sum or max/min of a contiguous float32 run with vector accumulators.
float reduce_run_f32(ReduceOp op, const float* p, int64_t n) {
  Reducer<float> r{op};
  int64_t i = 0;
  float acc = r.init();
  if (op == ReduceOp::Sum || op == ReduceOp::Mean) {
    vf s0 = vset1(0), s1 = vset1(0), s2 = vset1(0), s3 = vset1(0);
    for (; i + 4 * kVecF <= n; i += 4 * kVecF) {
      s0 += vload(p + i);
      s1 += vload(p + i + kVecF);
      s2 += vload(p + i + 2 * kVecF);
      s3 += vload(p + i + 3 * kVecF);
    }
    for (; i + kVecF <= n; i += kVecF) s0 += vload(p + i);
    acc = hsum((s0 + s1) + (s2 + s3));
  } else {
    bool has_nan = false;
    vf m = vset1(acc);
    for (; i + kVecF <= n; i += kVecF) {
      vf v = vload(p + i);
      vi isnan = v != v;
      for (int l = 0; l < kVecF; ++l) has_nan |= isnan[l] != 0;
      m = op == ReduceOp::Max ? vmax(m, v) : vmin(m, v);
    }
    if (has_nan) return std::numeric_limits<float>::quiet_NaN();
    for (int l = 0; l < kVecF; ++l) acc = r.combine(acc, m[l]);
  }
  for (; i < n; ++i) acc = r.combine(acc, p[i]);
  return acc;
}

template <typename T>
void reduce_typed(ReduceOp op, const View& out, const View& x, int nreduce) {
  using A = typename AccOf<T>::type;
  const Reducer<A> r{op};
  const int kept = x.ndim - nreduce;
  T* o = static_cast<T*>(out.data);
  const T* px = static_cast<const T*>(x.data);

  // The reduced part as its own (collapsed) iteration space.
  const int64_t* rstr[1] = {x.strides + kept};
  Iter<1> red(nreduce, x.shape + kept, rstr);
  const int64_t rcount = nreduce ? red.numel() : 1;
  const int64_t* kstr[1] = {x.strides};
  Iter<1> keep(kept, x.shape, kstr);
  const int64_t kcount = keep.numel();
  if (kcount == 0) return;

  // Columns: kept dims collapse to one contiguous run, reduced dims to one strided run.
  if (kept > 0 && keep.ndim == 1 && keep.strides[0][0] == 1 && red.ndim == 1 && rcount > 1 && red.strides[0][0] != 1) {
    const int64_t rs = red.strides[0][0];
    parallel_for(kcount, 1024, [&](int64_t b, int64_t e) {
      std::vector<A> acc(e - b, r.init());
      for (int64_t i = 0; i < rcount; ++i) {
        const T* row = px + i * rs;
        for (int64_t j = b; j < e; ++j) acc[j - b] = r.combine(acc[j - b], static_cast<A>(Num<T>::load(row[j])));
      }
      for (int64_t j = b; j < e; ++j) o[j] = finish<T>(op, acc[j - b], rcount);
    });
    return;
  }

  // Rows (and the general case): one output element at a time.
  const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(rcount, 1));
  parallel_for(kcount, grain, [&](int64_t b, int64_t e) {
    int64_t idx[kMaxDims] = {0};
    int64_t rem = b;
    for (int d = kept - 1; d >= 0; --d) {
      idx[d] = rem % x.shape[d];
      rem /= x.shape[d];
    }
    for (int64_t k = b; k < e; ++k) {
      int64_t base = 0;
      for (int d = 0; d < kept; ++d) base += idx[d] * x.strides[d];
      A acc = r.init();
      if (nreduce == 0) {
        acc = static_cast<A>(Num<T>::load(px[base]));
      } else if (red.ndim == 1 && red.strides[0][0] == 1) {
        if constexpr (std::is_same_v<T, float>) {
          acc = reduce_run_f32(op, px + base, rcount);
        } else {
          for (int64_t i = 0; i < rcount; ++i) acc = r.combine(acc, static_cast<A>(Num<T>::load(px[base + i])));
        }
      } else {
        int64_t ridx[kMaxDims] = {0};
        const int64_t inner = red.shape[red.ndim - 1], is = red.strides[0][red.ndim - 1];
        for (int64_t done = 0; done < rcount; done += inner) {
          int64_t off = base;
          for (int d = 0; d < red.ndim - 1; ++d) off += ridx[d] * red.strides[0][d];
          for (int64_t i = 0; i < inner; ++i) acc = r.combine(acc, static_cast<A>(Num<T>::load(px[off + i * is])));
          for (int d = red.ndim - 2; d >= 0; --d) {
            if (++ridx[d] < red.shape[d]) break;
            ridx[d] = 0;
          }
        }
      }
      o[k] = finish<T>(op, acc, rcount);
      for (int d = kept - 1; d >= 0; --d) {
        if (++idx[d] < x.shape[d]) break;
        idx[d] = 0;
      }
    }
  });
}

}  // namespace

void reduce(ReduceOp op, const View& out, const View& x, int nreduce) {
  DType t = dt(x);
  DR_CHECK(t != DType::Bool, DType, "reduce: bool tensors cannot be reduced (cast to int32 first)");
  DR_CHECK(!(t == DType::I32 && op == ReduceOp::Mean), DType, "mean: int32 tensors need a cast to a float dtype first");
  dispatch_dtype(t, "reduce", [&](auto tag) {
    using T = decltype(tag);
    if constexpr (!std::is_same_v<T, uint8_t>) reduce_typed<T>(op, out, x, nreduce);
  });
}

void arg_reduce(ArgReduceOp op, const View& out, const View& x) {
  DType t = dt(x);
  DR_CHECK(t != DType::Bool, DType, "argmax/argmin: bool tensors are not supported");
  dispatch_dtype(t, "arg_reduce", [&](auto tag) {
    using T = decltype(tag);
    if constexpr (!std::is_same_v<T, uint8_t>) {
      const int kept = x.ndim - 1;
      const int64_t n = x.shape[kept], s = x.strides[kept];
      int64_t kcount = 1;
      for (int d = 0; d < kept; ++d) kcount *= x.shape[d];
      int32_t* o = static_cast<int32_t*>(out.data);
      const T* px = static_cast<const T*>(x.data);
      const bool is_max = op == ArgReduceOp::Argmax;
      parallel_for(kcount, std::max<int64_t>(1, 32768 / std::max<int64_t>(n, 1)), [&](int64_t b, int64_t e) {
        for (int64_t k = b; k < e; ++k) {
          int64_t rem = k, base = 0;
          for (int d = kept - 1; d >= 0; --d) {
            base += (rem % x.shape[d]) * x.strides[d];
            rem /= x.shape[d];
          }
          int64_t best = 0;
          auto bv = Num<T>::load(px[base]);
          for (int64_t i = 1; i < n && bv == bv; ++i) {
            auto v = Num<T>::load(px[base + i * s]);
            if (v != v || (is_max ? v > bv : v < bv)) {
              best = i;
              bv = v;
            }
          }
          o[k] = static_cast<int32_t>(best);
        }
      });
    }
  });
}

}  // namespace DR_ISA
}  // namespace cpu
}  // namespace dualroute
