// RMSNorm and LayerNorm over the last dimension of contiguous [rows, cols] tensors.
//   rms:   rstd = 1 / sqrt(mean(x^2) + eps),            y = x * rstd * w
//   layer: mean = mean(x), var = mean((x - mean)^2),   rstd = 1 / sqrt(var + eps),
//          y = (x - mean) * rstd * w + b
// Statistics accumulate in float (double for float64); the variance is two-pass, which is
// exact enough for rows that fit in cache and avoids the cancellation of E[x^2] - E[x]^2.
// A row whose statistics left the accumulator's range (squares of |x| past ~1e19 overflow a
// float, squares below ~1e-19 underflow it) is redone in long double, whose range holds any
// float's or double's square: layerNorm([1e20, -1e20]) is [1, -1], not [0, 0].
// mean/rstd are written (float32, float64 for float64 x) when asked, for the backward pass.
// float32 rows: two vectors per step (two sums), and the next row prefetched while this one is
// read from cache (LayerNorm's variance and output passes, RMSNorm's output pass); a large
// float32 output is written around the caches.
#include <cmath>

#include "common.h"
#include "prefetch.h"
#include "simd.h"

namespace dualroute {
namespace cpu {
namespace DR_ISA {
namespace {

// The smallest mean square the fast path trusts: below it the squares may have lost bits.
template <typename A>
constexpr A tiny_mean_square() {
  return std::is_same_v<A, double> ? A(1e-290) : A(1e-30);
}

// One row in long double (the slow path above); returns mean and rstd in the accumulator type.
template <typename T>
void norm_row_wide(bool layer, const T* xr, T* yr, const T* pw, const T* pb, int64_t cols, float eps,
                   typename Num<T>::acc* mean_out, typename Num<T>::acc* rstd_out) {
  using A = typename Num<T>::acc;
  using L = long double;
  L mean = 0, ss = 0;
  if (layer) {
    for (int64_t j = 0; j < cols; ++j) mean += static_cast<L>(Num<T>::load(xr[j]));
    mean /= static_cast<L>(cols);
  }
  for (int64_t j = 0; j < cols; ++j) {
    const L d = static_cast<L>(Num<T>::load(xr[j])) - mean;
    ss += d * d;
  }
  const L rstd = 1.0L / std::sqrt(ss / static_cast<L>(cols) + static_cast<L>(eps));
  for (int64_t j = 0; j < cols; ++j) {
    L y = (static_cast<L>(Num<T>::load(xr[j])) - mean) * rstd;
    if (pw) y *= static_cast<L>(Num<T>::load(pw[j]));
    if (pb) y += static_cast<L>(Num<T>::load(pb[j]));
    yr[j] = Num<T>::store(static_cast<A>(y));
  }
  *mean_out = static_cast<A>(mean);
  *rstd_out = static_cast<A>(rstd);
}

template <typename T>
void norm_typed(bool layer, const View& out, const View& x, const View& w, const View& b, float eps,
                const View& mean_out, const View& rstd_out) {
  using A = typename Num<T>::acc;
  const int64_t cols = x.ndim ? x.shape[x.ndim - 1] : 1;
  const int64_t rows = cols ? view_numel(x) / cols : 0;
  const T* px = static_cast<const T*>(x.data);
  T* po = static_cast<T*>(out.data);
  const T* pw = static_cast<const T*>(w.data);
  const T* pb = static_cast<const T*>(b.data);
  using S = std::conditional_t<std::is_same_v<T, double>, double, float>;  // statistics dtype
  S* pmean = static_cast<S*>(mean_out.data);
  S* prstd = static_cast<S*>(rstd_out.data);
  // a large output goes around the caches (simd.h's vstream; prefetch.h's stream_stores):
  // bench/stores.ts over 16384 x 1024, two runs (memory contended / not): rmsNorm 1.14x / 1.02x,
  // layerNorm 1.07x / 0.98x, as the norms' backward (docs/architecture.md)
  const bool stream = stream_stores(po, rows * cols, cols);
  parallel_for(rows, std::max<int64_t>(1, 8192 / std::max<int64_t>(cols, 1)), [&](int64_t lo, int64_t hi) {
    for (int64_t r = lo; r < hi; ++r) {
      const T* xr = px + r * cols;
      T* yr = po + r * cols;
      A mean = 0, ss = 0;
      // the next row of this chunk, prefetched while this one is worked on from cache
      // (the chunk's last row: its own lines, already in cache)
      const bool more = r + 1 < hi;
      const T* next_x = more ? xr + cols : xr;
      T* next_y = more ? yr + cols : yr;
      if constexpr (std::is_same_v<T, float>) {
        // two vectors per step with two sums: the adds' latency is not the pace
        vf a0 = vset1(0), a1 = vset1(0);
        int64_t j = 0;
        if (layer) {
          for (; j + 2 * kVecF <= cols; j += 2 * kVecF) {
            a0 += vload(xr + j);
            a1 += vload(xr + j + kVecF);
          }
          for (; j + kVecF <= cols; j += kVecF) a0 += vload(xr + j);
          mean = hsum(a0 + a1);
          for (; j < cols; ++j) mean += xr[j];
          mean /= static_cast<A>(cols);
        }
        const vf vm = vset1(mean);
        a0 = vset1(0);
        a1 = vset1(0);
        // LayerNorm reads the row from cache here (its first pass went to memory); RMSNorm's
        // first pass is this one (its own lines: on their way already)
        const T* pf = layer ? next_x : xr;
        for (j = 0; j + 2 * kVecF <= cols; j += 2 * kVecF) {
          prefetch_r(pf, j);
          const vf d0 = vload(xr + j) - vm, d1 = vload(xr + j + kVecF) - vm;
          a0 += d0 * d0;
          a1 += d1 * d1;
        }
        for (; j + kVecF <= cols; j += kVecF) {
          const vf d = vload(xr + j) - vm;
          a0 += d * d;
        }
        ss = hsum(a0 + a1);
        for (; j < cols; ++j) ss += (xr[j] - mean) * (xr[j] - mean);
      } else {
        if (layer) {
          for (int64_t j = 0; j < cols; ++j) mean += Num<T>::load(xr[j]);
          mean /= static_cast<A>(cols);
        }
        for (int64_t j = 0; j < cols; ++j) {
          A d = Num<T>::load(xr[j]) - mean;
          ss += d * d;
        }
      }
      if (!(ss >= tiny_mean_square<A>() * static_cast<A>(cols)) || !std::isfinite(ss) || !std::isfinite(mean)) {
        // out of the accumulator's range (or NaN/inf in the row, which the wide pass keeps)
        A wm, wr;
        norm_row_wide<T>(layer, xr, yr, pw, pb, cols, eps, &wm, &wr);
        if (pmean) pmean[r] = static_cast<S>(wm);
        if (prstd) prstd[r] = static_cast<S>(wr);
        continue;
      }
      A rstd = A(1) / std::sqrt(ss / static_cast<A>(cols) + static_cast<A>(eps));
      if (pmean) pmean[r] = static_cast<S>(mean);
      if (prstd) prstd[r] = static_cast<S>(rstd);
      int64_t j = 0;
      if constexpr (std::is_same_v<T, float>) {
        const vf vm = vset1(mean), vr = vset1(rstd);
        // RMSNorm's next row had no pass from cache to be prefetched in: it is here
        const T* pf = layer ? xr : next_x;
        with_store_form(stream, [&](auto st) {
          constexpr bool kStream = decltype(st)::value;
          auto out = [&](int64_t k) {
            vf y = (vload(xr + k) - vm) * vr;
            if (pw) y *= vload(pw + k);
            if (pb) y += vload(pb + k);
            vput(yr + k, y, kStream);
          };
          for (; j + 2 * kVecF <= cols; j += 2 * kVecF) {
            prefetch_r(pf, j);
            if constexpr (!kStream) prefetch_w(next_y, j);
            out(j);
            out(j + kVecF);
          }
          for (; j + kVecF <= cols; j += kVecF) out(j);
        });
      }
      for (; j < cols; ++j) {
        A y = (Num<T>::load(xr[j]) - mean) * rstd;
        if (pw) y *= Num<T>::load(pw[j]);
        if (pb) y += Num<T>::load(pb[j]);
        yr[j] = Num<T>::store(y);
      }
    }
    if (stream) vstream_fence();
  });
}

}  // namespace

void rms_norm(const View& out, const View& x, const View& w, float eps, const View& rstd) {
  dispatch_float(dt(x), "rms_norm", [&](auto tag) {
    norm_typed<decltype(tag)>(false, out, x, w, View{}, eps, View{}, rstd);
  });
}

void layer_norm(const View& out, const View& x, const View& w, const View& b, float eps, const View& mean,
                const View& rstd) {
  dispatch_float(dt(x), "layer_norm", [&](auto tag) { norm_typed<decltype(tag)>(true, out, x, w, b, eps, mean, rstd); });
}

}  // namespace DR_ISA
}  // namespace cpu
}  // namespace dualroute
