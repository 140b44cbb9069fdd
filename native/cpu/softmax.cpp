// Softmax, log-softmax and fused cross-entropy over rows.
//
// softmax: x, out contiguous [outer, dim, inner]; y = exp(x - max) / sum exp(x - max) over
// dim, log-softmax y = x - max - log(sum exp(x - max)). With inner == 1 a row is contiguous:
// two vectorised passes (exp and sum, stored in out; scale) that read the row from L1/L2, its
// max having been taken while the previous row's exp pass ran (bfloat16 rows recompute the exp
// in the second pass instead of storing it). inner > 1 walks columns with stride `inner`.
//
// cross_entropy: logits [rows, C]; per row lse = log sum exp(x), and with label smoothing s
// the loss against target t is lse - (1 - s) x[t] - (s / C) sum_j x[j] (the mean of -log p
// under the smoothed target distribution). Targets are checked before anything is read.
#include <cmath>
#include <vector>

#include "common.h"
#include "activations.h"
#include "prefetch.h"
#include "simd.h"

namespace dualroute {
namespace cpu {
namespace DR_ISA {
namespace {

// The row-wise kernels read a row from memory once (its max) and then again from L1/L2 (the
// exp passes). The max of row r + 1 is taken inside row r's exp pass (the loads and maxes run
// on pipes the exp's multiply-adds leave free), while a later row's lines are prefetched (one
// per 64 bytes, prefetch.h; the next output row's for writing): its memory reads overlap this
// row's exp work instead of following it. A chunk's first row takes its max in a pass of its
// own; its last row reads no next row.

template <typename T>
float row_max_vec(const T* x, int64_t n) {
  float m = -INFINITY;
  int64_t i = 0;
  if (n >= kVecF) {
    vf vm = vload(x);
    for (i = kVecF; i + kVecF <= n; i += kVecF) vm = vmax(vm, vload(x + i));
    m = hmax(vm);
  }
  for (; i < n; ++i) m = Num<T>::load(x[i]) > m ? Num<T>::load(x[i]) : m;
  return m;
}

// The arguments x - m are <= 0 (m is the row's max), -inf or NaN: vexp_softmax's domain. Four
// vectors in step (their exp chains side by side, simd.h's VN), each with its own sum; a block
// whose lanes are all at or above kExpLo (the usual case) takes vexp_inrange, the same bits as
// vexp_softmax's.
template <int U>
DR_VINLINE VN<U> exp_shifted(VN<U> x, vf m) {
  for (int k = 0; k < U; ++k) x.v[k] -= m;
  if (__builtin_expect(vall(x >= kExpLo), 1)) return vexp_inrange(x);
  for (int k = 0; k < U; ++k) x.v[k] = vexp_softmax(x.v[k]);
  return x;
}

// The max of the next row, taken block by block (four vectors) inside this row's exp pass, then
// over the tail after the last block. vmax may drop a NaN lane: the row's sum still turns NaN.
struct NextMax {
  VN<4> mx = vsplat<VN<4>>(-INFINITY);
  template <typename T>
  DR_VINLINE void block(const T* nx, int64_t i) {
    const VN<4> y = vloadn<4>(nx + i);
    for (int k = 0; k < 4; ++k) mx.v[k] = vmax(mx.v[k], y.v[k]);
  }
  template <typename T>
  float finish(const T* nx, int64_t i, int64_t n) const {
    float m = hmax(vmax(vmax(mx.v[0], mx.v[1]), vmax(mx.v[2], mx.v[3])));
    for (; i + kVecF <= n; i += kVecF) m = std::max(m, hmax(vload(nx + i)));
    for (; i < n; ++i) m = Num<T>::load(nx[i]) > m ? Num<T>::load(nx[i]) : m;
    return m;
  }
};

// out[i] = exp(x[i] - m); returns the sum. With next != nullptr, the next row is read in the
// same pass and its max left in *nmax (NextMax; see sum_exp_rows); next_out is prefetched for writing.
float exp_sum_f32(float* out, const float* x, int64_t n, float m, const float* next, const float* pf, float* next_out,
                  float* nmax) {
  VN<4> s = vsplat<VN<4>>(0.0f);
  NextMax nm;
  const vf vm = vset1(m);
  int64_t i = 0;
  for (; i + 4 * kVecF <= n; i += 4 * kVecF) {
    if (next) {
      prefetch_r4(pf, i);
      nm.block(next, i);
      prefetch_w(next_out, i);
      prefetch_w(next_out, i + 2 * kVecF);
    }
    const VN<4> e = exp_shifted(vloadn<4>(x + i), vm);
    vstoren<4>(out + i, e);
    s = s + e;
  }
  if (next) *nmax = nm.finish(next, i, n);
  for (; i + kVecF <= n; i += kVecF) {
    const vf e = vexp_softmax(vload(x + i) - vm);
    vstore(out + i, e);
    s.v[0] += e;
  }
  float r = hsum((s.v[0] + s.v[1]) + (s.v[2] + s.v[3]));
  for (; i < n; ++i) {
    out[i] = std::exp(x[i] - m);
    r += out[i];
  }
  return r;
}

// The sum of exp(x - m) over a row (in L1/L2). With nx != nullptr (the next row, prefetched by an
// earlier pass) it also leaves nx's max in *nmax and prefetches pf, a later row: the max then
// costs a load and a max per vector beside the exp's multiply-adds instead of a pass of its own.
// (Loading the next row straight from memory, without a prefetch ahead of it, made softmax
// slower: the loads' misses held up the exp work queued behind them.)
template <bool kNext, typename T>
float sum_exp_rows(const T* x, const T* nx, const T* pf, int64_t n, float m, float* nmax) {
  VN<4> s = vsplat<VN<4>>(0.0f);
  NextMax nm;
  const vf vm = vset1(m);
  int64_t i = 0;
  for (; i + 4 * kVecF <= n; i += 4 * kVecF) {
    if constexpr (kNext) {
      prefetch_r4(pf, i);
      nm.block(nx, i);
    }
    s = s + act::exp_nonpos_terms(vloadn<4>(x + i) - m);
  }
  if constexpr (kNext) *nmax = nm.finish(nx, i, n);
  for (; i + kVecF <= n; i += kVecF) s.v[0] += vexp_softmax(vload(x + i) - vm);
  float r = hsum((s.v[0] + s.v[1]) + (s.v[2] + s.v[3]));
  for (; i < n; ++i) r += std::exp(Num<T>::load(x[i]) - m);
  return r;
}
template <typename T>
float sum_exp(const T* x, const T* nx, const T* pf, int64_t n, float m, float* nmax) {
  return nx ? sum_exp_rows<true>(x, nx, pf, n, m, nmax) : sum_exp_rows<false>(x, nx, pf, n, m, nmax);
}

// One contiguous row of float32 or bfloat16. A NaN anywhere in the row makes the sum NaN (the
// exp of NaN is NaN), and so every output, as in PyTorch; so does +inf (inf - inf), and a row
// of -inf only. No separate scan for NaN is needed (vmax may drop NaN lanes, the sum does not).
// m: the row's max. next / next_y: the following row, read in the exp pass (its max left in
// *nmax) and its output prefetched for writing, or nullptr for a chunk's last row.
template <typename T>
void softmax_row_vec(T* y, const T* x, int64_t n, bool log, float m, const T* next, const T* pf, T* next_y,
                     float* nmax) {
  if (log) {
    const float s = sum_exp(x, next, pf, n, m, nmax);
    if (!next) next_y = y;
    const float lse = m + std::log(s);
    const vf vl = vset1(lse);
    int64_t i = 0;
    for (; i + 2 * kVecF <= n; i += 2 * kVecF) {
      prefetch_w(next_y, i);
      vstore(y + i, vload(x + i) - vl);
      vstore(y + i + kVecF, vload(x + i + kVecF) - vl);
    }
    for (; i + kVecF <= n; i += kVecF) vstore(y + i, vload(x + i) - vl);
    for (; i < n; ++i) y[i] = Num<T>::store(Num<T>::load(x[i]) - lse);
    return;
  }
  if constexpr (std::is_same_v<T, float>) {
    // exp stored in y, then scaled: one exp per element
    const float inv = 1.0f / exp_sum_f32(y, x, n, m, next, pf, next_y, nmax);
    const vf vinv = vset1(inv);
    int64_t i = 0;
    for (; i + kVecF <= n; i += kVecF) vstore(y + i, vload(y + i) * vinv);
    for (; i < n; ++i) y[i] *= inv;
  } else {
    // bfloat16: the exp is recomputed rather than rounded to bfloat16 twice
    const float inv = 1.0f / sum_exp(x, next, pf, n, m, nmax);
    if (!next) next_y = y;
    const vf vm = vset1(m), vinv = vset1(inv);
    int64_t i = 0;
    for (; i + 2 * kVecF <= n; i += 2 * kVecF) {
      prefetch_w(next_y, i);
      vstore(y + i, vexp_softmax(vload(x + i) - vm) * vinv);
      vstore(y + i + kVecF, vexp_softmax(vload(x + i + kVecF) - vm) * vinv);
    }
    for (; i + kVecF <= n; i += kVecF) vstore(y + i, vexp_softmax(vload(x + i) - vm) * vinv);
    for (; i < n; ++i) y[i] = Num<T>::store(std::exp(Num<T>::load(x[i]) - m) * inv);
  }
}

template <typename T>
void softmax_typed(const View& out, const View& x, int64_t outer, int64_t dim, int64_t inner, bool log) {
  using A = typename Num<T>::acc;
  T* po = static_cast<T*>(out.data);
  const T* px = static_cast<const T*>(x.data);
  const int64_t rows = outer * inner;
  parallel_for(rows, std::max<int64_t>(1, 16384 / std::max<int64_t>(dim, 1)), [&](int64_t b, int64_t e) {
    [[maybe_unused]] float next_m = 0;  // the row's max, from the previous row's exp pass
    for (int64_t r = b; r < e; ++r) {
      const int64_t o = r / inner, in = r % inner;
      const T* xr = px + o * dim * inner + in;
      T* yr = po + o * dim * inner + in;
      if constexpr (!std::is_same_v<T, double>) {
        if (inner == 1) {
          const bool more = r + 1 < e;
          const float m = r == b ? row_max_vec(xr, dim) : next_m;
          softmax_row_vec(yr, xr, dim, log, m, more ? xr + dim : nullptr, r + 2 < e ? xr + 2 * dim : xr,
                          more ? yr + dim : nullptr, &next_m);
          continue;
        }
      }
      A m = -std::numeric_limits<A>::infinity();
      bool nan = false;
      for (int64_t i = 0; i < dim; ++i) {
        A v = Num<T>::load(xr[i * inner]);
        nan |= v != v;
        m = v > m ? v : m;
      }
      if (nan) {
        for (int64_t i = 0; i < dim; ++i) yr[i * inner] = Num<T>::store(std::numeric_limits<A>::quiet_NaN());
        continue;
      }
      A s = 0;
      for (int64_t i = 0; i < dim; ++i) s += std::exp(Num<T>::load(xr[i * inner]) - m);
      if (log) {
        A lse = m + std::log(s);
        for (int64_t i = 0; i < dim; ++i) yr[i * inner] = Num<T>::store(Num<T>::load(xr[i * inner]) - lse);
      } else {
        A inv = A(1) / s;
        for (int64_t i = 0; i < dim; ++i) yr[i * inner] = Num<T>::store(std::exp(Num<T>::load(xr[i * inner]) - m) * inv);
      }
    }
  });
}

}  // namespace

void softmax(const View& out, const View& x, int64_t outer, int64_t dim, int64_t inner, bool log) {
  dispatch_float(dt(x), "softmax", [&](auto tag) { softmax_typed<decltype(tag)>(out, x, outer, dim, inner, log); });
}

void cross_entropy(const View& loss, const View& logits, const View& targets, int32_t ignore_index,
                   float smoothing, const View& lse) {
  const int64_t rows = logits.shape[0], C = logits.shape[1];
  const int32_t* t = static_cast<const int32_t*>(targets.data);
  for (int64_t r = 0; r < rows; ++r) {
    if (t[r] != ignore_index && (t[r] < 0 || t[r] >= C))
      fail(ErrorCode::Range, "cross_entropy: target ", t[r], " at row ", r, " is outside [0, ", C, ")");
  }
  dispatch_float(dt(logits), "cross_entropy", [&](auto tag) {
    using T = decltype(tag);
    using A = std::conditional_t<std::is_same_v<T, double>, double, float>;
    const T* px = static_cast<const T*>(logits.data);
    A* pl = static_cast<A*>(loss.data);  // float32 (float64 for float64 logits)
    A* plse = static_cast<A*>(lse.data);  // float32 (float64 for float64 logits)
    parallel_for(rows, std::max<int64_t>(1, 16384 / std::max<int64_t>(C, 1)), [&](int64_t b, int64_t e) {
      [[maybe_unused]] float next_m = 0;
      for (int64_t r = b; r < e; ++r) {
        const T* xr = px + r * C;
        A m, s, total = 0;
        if constexpr (!std::is_same_v<T, double>) {
          // the row's max came with the previous row's exp pass (but for a chunk's first row);
          // the row four ahead is prefetched (softmax: two). Four ran faster than two over
          // 16384 x 1024 on two threads in a /tmp loop (2 pairs); softmax was not tried at four.
          m = r == b ? row_max_vec(xr, C) : next_m;
          s = sum_exp(xr, r + 1 < e ? xr + C : nullptr, r + 4 < e ? xr + 4 * C : xr, C, m, &next_m);
          if (smoothing != 0) {
            for (int64_t j = 0; j < C; ++j) total += Num<T>::load(xr[j]);
          }
        } else {
          m = -std::numeric_limits<A>::infinity();
          for (int64_t j = 0; j < C; ++j) m = std::max<A>(m, Num<T>::load(xr[j]));
          s = 0;
          for (int64_t j = 0; j < C; ++j) {
            A v = Num<T>::load(xr[j]);
            s += std::exp(v - m);
            if (smoothing != 0) total += v;
          }
        }
        A l = m + std::log(s);
        if (plse) plse[r] = l;
        if (t[r] == ignore_index) {
          pl[r] = 0;
          continue;
        }
        A xt = Num<T>::load(xr[t[r]]);
        // the smoothing term is skipped when s = 0 so that -inf logits (masked classes) do not
        // turn the loss into 0 * -inf = NaN
        pl[r] = l - (A(1) - A(smoothing)) * xt - (smoothing != 0 ? (A(smoothing) / A(C)) * total : A(0));
      }
    });
  });
}

}  // namespace DR_ISA
}  // namespace cpu
}  // namespace dualroute
