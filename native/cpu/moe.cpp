// Mixture-of-experts kernels on the CPU: the dispatch plan, token movement between the token
// layout [T, D] and the grouped layout (rows grouped by expert), and the grouped GEMM.
//
// Layouts of the grouped buffer (N rows of D):
//   dropless  N = T * K; expert e owns rows [offsets[e], offsets[e+1]) with offsets the
//             exclusive cumsum of the per-expert counts (offsets [E+1]); rows past offsets[E]
//             (entries the router dropped) are empty. A static shape: nothing is read back.
//   capacity  N = E * C ([E, C, D] viewed as rows): expert e owns rows [e C, (e+1) C).
// Entry (t, k) (expert e = indices[t, k], slot p = positions[t, k], -1 when dropped) goes to
// row offsets[e] + p (dropless) or e C + p (capacity).
//
// moe_plan computes that row for every entry (rows [T, K], -1 when dropped) and its inverse
// (sources [N]: t K + k, -1 for an empty row), checking every value it reads (expert in [0, E),
// p >= -1, p inside its expert's range, offsets increasing inside [0, N], no row taken twice).
// Every later kernel reads the plan only, so none of them writes or reads through an unchecked
// index, and every one of them is a gather (each output element written once, in a fixed order:
// deterministic, no atomics):
//   moe_gather   out[r] = w[s] x[s / K] for s = sources[r] (0 for empty rows): the dispatch, and
//                the combine's gradient dy[r] = w[s] dout[s / K]
//   moe_combine  out[t] = sum_k w[t, k] y[rows[t, k]]: the combine, and the dispatch's gradient
//                (w = 1)
//   moe_combine_weight_grad  dw[t, k] = dot(y[rows[t, k]], dout[t])
// Vectorised along D (simd.h), parallel over rows / tokens.
//
// grouped_matmul: per expert, the existing blocked matmul (matmul.cpp) on its row range of a and
// out (sub-views, no copies); rows owned by no expert are zeroed. Experts whose product is too
// small to use the pool (< 8e6 multiply-adds, matmul.cpp's threshold) run side by side, one per
// task; larger ones one after another, each threaded inside. The weight gradient
// out[e] = a_e^T g_e is the same with trans_a (a reduction over the expert's rows).
// Offsets are clamped so that expert ranges are consecutive, increasing and inside [0, N) (the
// same rule on both backends): start_0 = min(max(offsets[0], 0), N), start_e = end_{e-1},
// end_e = min(max(offsets[e+1], start_e), N); rows before start_0 and from end_{E-1} on are
// zero. Valid offsets (moe_plan checks them) pass as they are.
#include <atomic>
#include <vector>

#include "common.h"
#include "simd.h"

namespace dualroute {
namespace cpu {
namespace DR_ISA {
namespace {

// Row [start, end) of each expert under the clamping rule above.
void expert_ranges(const int32_t* off, int64_t E, int64_t N, std::vector<int64_t>& start, std::vector<int64_t>& end) {
  start.resize(static_cast<size_t>(E));
  end.resize(static_cast<size_t>(E));
  int64_t prev = std::min<int64_t>(std::max<int64_t>(off[0], 0), N);
  for (int64_t e = 0; e < E; ++e) {
    const int64_t s = prev;
    const int64_t f = std::min<int64_t>(std::max<int64_t>(off[e + 1], s), N);
    start[e] = s;
    end[e] = f;
    prev = f;
  }
}

// dst[0, D) = s * src (S the stats type; T stored)
template <typename T, typename S>
inline void scaled_copy(T* dst, const T* src, S s, int64_t D) {
  if constexpr (std::is_same_v<T, double>) {
    for (int64_t j = 0; j < D; ++j) dst[j] = s * src[j];
  } else {
    const float f = static_cast<float>(s);
    int64_t j = 0;
    const vf fv = vset1(f);
    for (; j + kVecF <= D; j += kVecF) vstore(dst + j, vload(src + j) * fv);
    for (; j < D; ++j) dst[j] = Num<T>::store(f * Num<T>::load(src[j]));
  }
}

// acc[0, D) += s * src
template <typename T, typename A>
inline void axpy(A* acc, const T* src, A s, int64_t D) {
  if constexpr (std::is_same_v<T, double>) {
    for (int64_t j = 0; j < D; ++j) acc[j] += s * src[j];
  } else {
    int64_t j = 0;
    const vf sv = vset1(s);
    for (; j + kVecF <= D; j += kVecF) vstore(acc + j, vload(acc + j) + sv * vload(src + j));
    for (; j < D; ++j) acc[j] += s * Num<T>::load(src[j]);
  }
}

template <typename T, typename A>
inline A dot(const T* a, const T* b, int64_t D) {
  if constexpr (std::is_same_v<T, double>) {
    double s = 0;
    for (int64_t j = 0; j < D; ++j) s += a[j] * b[j];
    return s;
  } else {
    vf s0 = vf{}, s1 = vf{};
    int64_t j = 0;
    for (; j + 2 * kVecF <= D; j += 2 * kVecF) {
      s0 += vload(a + j) * vload(b + j);
      s1 += vload(a + j + kVecF) * vload(b + j + kVecF);
    }
    for (; j + kVecF <= D; j += kVecF) s0 += vload(a + j) * vload(b + j);
    float s = hsum(s0 + s1);
    for (; j < D; ++j) s += Num<T>::load(a[j]) * Num<T>::load(b[j]);
    return s;
  }
}

// The plan's values are trusted by the kernels below only after this (moe_plan made them; a
// caller of the native op may pass anything): a value outside [-1, limit) is a RangeError.
void check_map(const char* kernel, const char* arg, const int32_t* p, int64_t n, int64_t limit) {
  for (int64_t i = 0; i < n; ++i)
    if (p[i] < -1 || p[i] >= limit)
      fail(ErrorCode::Range, kernel, ": ", arg, "[", i, "] = ", p[i], " is outside [-1, ", limit, ")");
}

template <typename T>
using StatsOf = typename std::conditional<std::is_same_v<T, double>, double, float>::type;

}  // namespace

void moe_plan(const View& rows, const View& sources, const View& indices, const View& positions, const View& offsets,
              int experts, int capacity) {
  const int64_t T_ = indices.shape[0], K = indices.shape[1], N = sources.shape[0], E = experts;
  const int32_t* idx = static_cast<const int32_t*>(indices.data);
  const int32_t* pos = static_cast<const int32_t*>(positions.data);
  const int32_t* off = static_cast<const int32_t*>(offsets.data);
  int32_t* prow = static_cast<int32_t*>(rows.data);
  int32_t* psrc = static_cast<int32_t*>(sources.data);
  if (off) {
    for (int64_t e = 0; e < E; ++e)
      if (off[e] < 0 || off[e + 1] < off[e] || off[e + 1] > N)
        fail(ErrorCode::Range, "moePlan: offsets must increase inside [0, ", N, "]: offsets[", e, "] = ", off[e],
             ", offsets[", e + 1, "] = ", off[e + 1]);
  }
  // rows, in entry order; the first bad entry (smallest t * K + k) is reported
  std::atomic<int64_t> bad{INT64_MAX};
  parallel_for(T_ * K, 16384, [&](int64_t b, int64_t f) {
    for (int64_t i = b; i < f; ++i) {
      const int32_t e = idx[i], p = pos[i];
      bool ok = e >= 0 && e < E && p >= -1;
      if (ok && p >= 0) ok = off ? p < static_cast<int64_t>(off[e + 1]) - off[e] : p < capacity;
      if (!ok) {
        int64_t cur = bad.load();
        while (i < cur && !bad.compare_exchange_weak(cur, i)) {
        }
        prow[i] = -1;
        continue;
      }
      prow[i] = p < 0 ? -1 : static_cast<int32_t>(off ? off[e] + p : static_cast<int64_t>(e) * capacity + p);
    }
  });
  const int64_t b = bad.load();
  if (b != INT64_MAX) {
    const int64_t t = b / K, k = b % K;
    const int32_t e = idx[b], p = pos[b];
    if (e < 0 || e >= E)
      fail(ErrorCode::Range, "moePlan: indices[", t, ", ", k, "] = ", e, " is outside [0, ", E, ")");
    if (off)
      fail(ErrorCode::Range, "moePlan: positions[", t, ", ", k, "] = ", p, " is outside [-1, ",
           static_cast<int64_t>(off[e + 1]) - off[e], ") (expert ", e, " holds ", static_cast<int64_t>(off[e + 1]) - off[e],
           " rows)");
    fail(ErrorCode::Range, "moePlan: positions[", t, ", ", k, "] = ", p, " is outside [-1, ", capacity,
         ") (the capacity)");
  }
  std::fill(psrc, psrc + N, -1);
  for (int64_t i = 0; i < T_ * K; ++i) {
    const int32_t r = prow[i];
    if (r < 0) continue;
    if (psrc[r] >= 0)
      fail(ErrorCode::Range, "moePlan: entries (", psrc[r] / K, ", ", psrc[r] % K, ") and (", i / K, ", ", i % K,
           ") share row ", r, " (expert ", idx[i], ", position ", pos[i], "): positions must be distinct per expert");
    psrc[r] = static_cast<int32_t>(i);
  }
}

void moe_gather(const View& out, const View& x, const View& sources, const View& weights, int k) {
  const int64_t N = out.shape[0], D = out.shape[1];
  const int32_t* src = static_cast<const int32_t*>(sources.data);
  check_map("moeGather", "sources", src, N, x.shape[0] * k);
  if (N == 0 || D == 0) return;
  dispatch_float(dt(x), "moe_gather", [&](auto tag) {
    using T = decltype(tag);
    using S = StatsOf<T>;
    T* po = static_cast<T*>(out.data);
    const T* px = static_cast<const T*>(x.data);
    const S* pw = static_cast<const S*>(weights.data);
    parallel_for(N, std::max<int64_t>(1, 32768 / D), [&](int64_t b, int64_t f) {
      for (int64_t r = b; r < f; ++r) {
        const int32_t s = src[r];
        T* o = po + r * D;
        if (s < 0) {
          std::memset(static_cast<void*>(o), 0, sizeof(T) * D);
        } else if (!pw) {
          std::memcpy(static_cast<void*>(o), px + (s / k) * D, sizeof(T) * D);
        } else {
          scaled_copy<T, S>(o, px + (s / k) * D, pw[s], D);
        }
      }
    });
  });
}

void moe_combine(const View& out, const View& y, const View& rows, const View& weights) {
  const int64_t T_ = out.shape[0], D = out.shape[1], K = rows.shape[1];
  const int32_t* pr = static_cast<const int32_t*>(rows.data);
  check_map("moeCombine", "rows", pr, T_ * K, y.shape[0]);
  if (T_ == 0 || D == 0) return;
  dispatch_float(dt(y), "moe_combine", [&](auto tag) {
    using T = decltype(tag);
    using S = StatsOf<T>;
    using A = S;  // accumulate in float (double for double)
    T* po = static_cast<T*>(out.data);
    const T* py = static_cast<const T*>(y.data);
    const S* pw = static_cast<const S*>(weights.data);
    parallel_for(T_, std::max<int64_t>(1, 16384 / std::max<int64_t>(D * K, 1)), [&](int64_t b, int64_t f) {
      std::vector<A> acc(static_cast<size_t>(D));
      for (int64_t t = b; t < f; ++t) {
        std::fill(acc.begin(), acc.end(), A(0));
        for (int64_t k = 0; k < K; ++k) {
          const int32_t r = pr[t * K + k];
          if (r < 0) continue;
          axpy<T, A>(acc.data(), py + static_cast<int64_t>(r) * D, pw ? pw[t * K + k] : A(1), D);
        }
        T* o = po + t * D;
        for (int64_t j = 0; j < D; ++j) o[j] = Num<T>::store(acc[j]);
      }
    });
  });
}

void moe_combine_weight_grad(const View& dweights, const View& y, const View& rows, const View& dout) {
  const int64_t T_ = dout.shape[0], D = dout.shape[1], K = rows.shape[1];
  const int32_t* pr = static_cast<const int32_t*>(rows.data);
  check_map("moeCombineWeightGrad", "rows", pr, T_ * K, y.shape[0]);
  if (T_ * K == 0) return;
  dispatch_float(dt(y), "moe_combine_weight_grad", [&](auto tag) {
    using T = decltype(tag);
    using S = StatsOf<T>;
    S* pdw = static_cast<S*>(dweights.data);
    const T* py = static_cast<const T*>(y.data);
    const T* pd = static_cast<const T*>(dout.data);
    parallel_for(T_ * K, std::max<int64_t>(1, 16384 / std::max<int64_t>(D, 1)), [&](int64_t b, int64_t f) {
      for (int64_t i = b; i < f; ++i) {
        const int32_t r = pr[i];
        pdw[i] = r < 0 ? S(0) : dot<T, S>(py + static_cast<int64_t>(r) * D, pd + (i / K) * D, D);
      }
    });
  });
}

namespace {

// One GEMM per expert on sub-views: C_e (rows of e) = op(A_e) op(B_e) via matmul(); `make`
// fills the MatmulArgs of expert e (or returns false to skip it). Small products run side by
// side, one expert per task; large ones in turn with the pool inside.
template <typename Make>
void per_expert(int64_t E, const Make& make) {
  constexpr double kParallelMNK = 8e6;  // matmul.cpp's threshold for threading one product
  std::vector<int64_t> small, large;
  for (int64_t e = 0; e < E; ++e) {
    MatmulArgs a{};
    if (!make(e, a)) continue;
    (double(a.m) * double(a.n) * double(a.k) >= kParallelMNK ? large : small).push_back(e);
  }
  parallel_for(static_cast<int64_t>(small.size()), 1, [&](int64_t b, int64_t f) {
    for (int64_t i = b; i < f; ++i) {
      MatmulArgs a{};
      make(small[i], a);
      matmul(a);  // below the threshold: on this thread
    }
  });
  for (int64_t e : large) {
    MatmulArgs a{};
    make(e, a);
    matmul(a);
  }
}

}  // namespace

void grouped_matmul(const View& out, const View& a, const View& b, const View& offsets, bool trans_b) {
  const int64_t N = a.shape[0], Kd = a.shape[1], E = b.shape[0];
  const int64_t n = out.shape[1];
  std::vector<int64_t> start, end;
  expert_ranges(static_cast<const int32_t*>(offsets.data), E, N, start, end);
  const int64_t es = dtype_size(dt(a));
  char* po = static_cast<char*>(out.data);
  // rows owned by no expert: zero (before start_0, and from the last expert's end on)
  auto zero_rows = [&](int64_t r0, int64_t r1) {
    if (r1 > r0) std::memset(po + r0 * n * es, 0, static_cast<size_t>((r1 - r0) * n * es));
  };
  const int32_t* off = static_cast<const int32_t*>(offsets.data);
  const int64_t head = std::min<int64_t>(std::max<int64_t>(off[0], 0), N);
  zero_rows(0, head);
  zero_rows(E ? end[E - 1] : head, N);
  if (n == 0) return;
  per_expert(E, [&](int64_t e, MatmulArgs& m) {
    const int64_t rows = end[e] - start[e];
    if (rows == 0) return false;
    m.batch = 1;
    m.m = rows;
    m.n = n;
    m.k = Kd;
    m.a = static_cast<const char*>(a.data) + start[e] * Kd * es;
    m.lda = Kd;
    m.trans_a = 0;
    m.b = static_cast<const char*>(b.data) + e * Kd * n * es;
    m.ldb = trans_b ? Kd : n;
    m.trans_b = trans_b ? 1 : 0;
    m.c = po + start[e] * n * es;
    m.ldc = n;
    m.dtype = a.dtype;
    m.alpha = 1.f;
    m.beta = 0.f;
    return true;
  });
}

void grouped_matmul_weight_grad(const View& out, const View& a, const View& g, const View& offsets) {
  const int64_t N = a.shape[0], Kd = a.shape[1], n = g.shape[1], E = out.shape[0];
  std::vector<int64_t> start, end;
  expert_ranges(static_cast<const int32_t*>(offsets.data), E, N, start, end);
  const int64_t es = dtype_size(dt(a));
  if (Kd == 0 || n == 0) return;
  per_expert(E, [&](int64_t e, MatmulArgs& m) {
    const int64_t rows = end[e] - start[e];
    m.batch = 1;
    m.m = Kd;
    m.n = n;
    m.k = rows;  // 0 rows: matmul writes beta * C = 0
    m.a = static_cast<const char*>(a.data) + start[e] * Kd * es;
    m.lda = Kd;
    m.trans_a = 1;
    m.b = static_cast<const char*>(g.data) + start[e] * n * es;
    m.ldb = n;
    m.trans_b = 0;
    m.c = static_cast<char*>(out.data) + e * Kd * n * es;
    m.ldc = n;
    m.dtype = a.dtype;
    m.alpha = 1.f;
    m.beta = 0.f;
    return true;
  });
}

}  // namespace DR_ISA
}  // namespace cpu
}  // namespace dualroute
