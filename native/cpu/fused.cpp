// Fused kernels: what a model step would otherwise spend two or three passes over memory on.
//
//   add_rms_norm:          h = x + residual (rounded to the dtype, as a separate add would store
//                          it); rstd = 1 / sqrt(mean(h^2) + eps); out = h * rstd * w.
//                          One pass reads x and residual and writes h while summing h^2; the
//                          second reads h back from cache (the row was just written) and writes
//                          out. Unfused: add (read 2, write 1) + rmsNorm (read 1, write 1).
//   add_rms_norm_backward: g = dy w, xhat = h rstd:
//                          dx = dh + rstd (g - xhat mean(g xhat)), dw = sum_rows dy xhat.
//                          dx is the gradient of both x and residual; dh (the gradient that
//                          reached h from its other uses, may be absent) is added in the same
//                          pass instead of by a separate add.
//   bias_act:              z = x + bias (bias [cols] over the rows, rounded to the dtype as an
//                          add would store it), out = act(z), act in gelu (erf), geluTanh,
//                          silu, relu. z is never stored.
//   bias_act_backward:     dz = dy act'(z) (z recomputed from x and bias); dx = dz,
//                          dbias = sum_rows dz.
// The bias + activation kernels are in fused_act.cpp (compiled without FMA contraction, like
// elementwise.cpp); the shared helpers in fused_rows.h.
//
// Statistics and sums accumulate as the unfused kernels do (norm.cpp, backward.cpp): float for
// float32 / bfloat16 through the vector lanes of simd.h, double for float64 with plain loops; the
// activations use simd.h's vexp / vnormcdf / vtanh, the forms elementwise.cpp and backward.cpp use,
// so float32 results match the unfused ops. A row whose float statistics leave float's range is
// redone in long double, as norm.cpp does. Parameter gradients (dw, dbias) reduce over rows
// without atomics: a fixed number of row chunks (set by the thread count) each sum into their
// own [cols] partial while they compute dx, and a pass over the columns adds the partials in
// chunk order. All views are contiguous (the dispatcher, native/ops/fused.cpp, makes copies).
#include <cmath>
#include <cstring>

#include "fused_rows.h"
#include "prefetch.h"

namespace dualroute {
namespace cpu {
namespace DR_ISA {
namespace {

using namespace fused_detail;

// ---- add + RMSNorm -------------------------------------------------------------------------

// The row again in long double from the stored h (norm.cpp's slow path).
template <typename T>
Acc<T> add_rms_row_wide(T* yr, const T* hr, const T* pw, int64_t n, float eps) {
  using L = long double;
  L ss = 0;
  for (int64_t j = 0; j < n; ++j) {
    const L v = static_cast<L>(ld(hr[j]));
    ss += v * v;
  }
  const L rstd = 1.0L / std::sqrt(ss / static_cast<L>(n) + static_cast<L>(eps));
  for (int64_t j = 0; j < n; ++j) {
    L y = static_cast<L>(ld(hr[j])) * rstd;
    if (pw) y *= static_cast<L>(ld(pw[j]));
    yr[j] = Num<T>::store(static_cast<Acc<T>>(y));
  }
  return static_cast<Acc<T>>(rstd);
}

template <typename T>
void add_rms_row(T* hr, T* yr, const T* xr, const T* rr, const T* pw, int64_t n, float eps, Stat<T>* rstd_out) {
  using A = Acc<T>;
  A ss = 0;
  int64_t j = 0;
  if constexpr (std::is_same_v<T, float>) {
    // norm.cpp's order: two vectors per step into two sums, then one more vector into the
    // first, so the float32 sum of squares (and y) equals the unfused rmsNorm's bit for bit
    vf a0 = vset1(0), a1 = vset1(0);
    for (; j + 2 * kVecF <= n; j += 2 * kVecF) {
      const vf h0 = vload(xr + j) + vload(rr + j), h1 = vload(xr + j + kVecF) + vload(rr + j + kVecF);
      vstore(hr + j, h0);
      vstore(hr + j + kVecF, h1);
      a0 += h0 * h0;
      a1 += h1 * h1;
    }
    for (; j + kVecF <= n; j += kVecF) {
      const vf h = vload(xr + j) + vload(rr + j);
      vstore(hr + j, h);
      a0 += h * h;
    }
    ss = hsum(a0 + a1);
  } else if constexpr (kVec<T>) {
    vf acc = vset1(0);
    for (; j + kVecF <= n; j += kVecF) {
      vf h = vload(xr + j) + vload(rr + j);
      vstore(hr + j, h);
      if constexpr (!std::is_same_v<T, float>) h = vload(hr + j);  // the rounded value, as stored
      acc += h * h;
    }
    ss = hsum(acc);
  }
  for (; j < n; ++j) {
    const A h = rnd<T>(ld(xr[j]) + ld(rr[j]));
    hr[j] = Num<T>::store(h);
    ss += h * h;
  }
  if (!(ss >= tiny_mean_square<A>() * static_cast<A>(n)) || !std::isfinite(ss)) {
    const A r = add_rms_row_wide<T>(yr, hr, pw, n, eps);
    if (rstd_out) *rstd_out = static_cast<Stat<T>>(r);
    return;
  }
  const A rstd = A(1) / std::sqrt(ss / static_cast<A>(n) + static_cast<A>(eps));
  if (rstd_out) *rstd_out = static_cast<Stat<T>>(rstd);
  j = 0;
  if constexpr (kVec<T>) {
    const vf vr = vset1(rstd);
    for (; j + kVecF <= n; j += kVecF) {
      vf y = vload(hr + j) * vr;
      if (pw) y *= vload(pw + j);
      vstore(yr + j, y);
    }
  }
  for (; j < n; ++j) {
    A y = ld(hr[j]) * rstd;
    if (pw) y *= ld(pw[j]);
    yr[j] = Num<T>::store(y);
  }
}

template <typename T>
void add_rms_typed(const View& h, const View& out, const View& x, const View& res, const View& w, float eps,
                   const View& rstd) {
  const int64_t cols = x.ndim ? x.shape[x.ndim - 1] : 1;
  const int64_t rows = cols ? view_numel(x) / cols : 0;
  T* ph = static_cast<T*>(h.data);
  T* po = static_cast<T*>(out.data);
  const T* px = static_cast<const T*>(x.data);
  const T* pr = static_cast<const T*>(res.data);
  const T* pw = static_cast<const T*>(w.data);
  Stat<T>* ps = static_cast<Stat<T>*>(rstd.data);
  parallel_for(rows, row_grain(cols), [&](int64_t lo, int64_t hi) {
    for (int64_t r = lo; r < hi; ++r) {
      const int64_t o = r * cols;
      add_rms_row<T>(ph + o, po + o, px + o, pr + o, pw, cols, eps, ps ? ps + r : nullptr);
    }
  });
}

// One row of the backward: dx = dh + r (g - xhat c2); pdw += dy xhat when given.
template <typename T, bool stream>
void add_rms_bw_row(T* dx, const T* h, const T* w, const T* dy, const T* dh, Acc<T> r, int64_t n, Acc<T>* pdw) {
  using A = Acc<T>;
  A sgx = 0;  // sum(g * h), g = dy w
  int64_t j = 0;
  if constexpr (kVec<T>) {
    vf agx = vset1(0);
    for (; j + kVecF <= n; j += kVecF) {
      vf g = vload(dy + j);
      if (w) g *= vload(w + j);
      agx += g * vload(h + j);
    }
    sgx = hsum(agx);
  }
  for (; j < n; ++j) {
    A g = ld(dy[j]);
    if (w) g *= ld(w[j]);
    sgx += g * ld(h[j]);
  }
  const A c2 = sgx * r / static_cast<A>(n);  // mean(g * xhat)
  j = 0;
  if constexpr (kVec<T>) {
    const vf vr = vset1(r), v2 = vset1(c2);
    for (; j + kVecF <= n; j += kVecF) {
      const vf d = vload(dy + j);
      const vf xh = vload(h + j) * vr;
      const vf g = w ? d * vload(w + j) : d;
      vf v = vr * (g - xh * v2);
      if (dh) v += vload(dh + j);
      vput(dx + j, v, stream);
      if (pdw) vstore(pdw + j, vload(pdw + j) + d * xh);
    }
  }
  for (; j < n; ++j) {
    const A d = ld(dy[j]);
    const A xh = ld(h[j]) * r;
    const A g = w ? d * ld(w[j]) : d;
    A v = r * (g - xh * c2);
    if (dh) v += ld(dh[j]);
    dx[j] = Num<T>::store(v);
    if (pdw) pdw[j] += d * xh;
  }
}

template <typename T>
void add_rms_bw_typed(const View& dx, const View& dw, const View& h, const View& w, const View& rstd, const View& dy,
                      const View& dh) {
  const int64_t cols = h.ndim ? h.shape[h.ndim - 1] : 1;
  const int64_t rows = cols ? view_numel(h) / cols : 0;
  T* pdx = static_cast<T*>(dx.data);
  const T* ph = static_cast<const T*>(h.data);
  const T* pw = static_cast<const T*>(w.data);
  const T* pdy = static_cast<const T*>(dy.data);
  const T* pdh = static_cast<const T*>(dh.data);
  const Stat<T>* pr = static_cast<const Stat<T>*>(rstd.data);
  // a large dx goes around the caches (simd.h's vstream; rows_with_colsum fences each task)
  const bool stream = stream_stores(pdx, rows * cols, cols);
  rows_with_colsum<T>(rows, cols, static_cast<T*>(dw.data), [&](int64_t r, Acc<T>* part) {
    const int64_t o = r * cols;
    with_store_form(stream, [&](auto st) {
      add_rms_bw_row<T, decltype(st)::value>(pdx + o, ph + o, pw, pdy + o, pdh ? pdh + o : nullptr,
                                             static_cast<Acc<T>>(pr[r]), cols, part);
    });
  });
}

}  // namespace


void add_rms_norm(const View& h, const View& out, const View& x, const View& residual, const View& w, float eps,
                  const View& rstd) {
  dispatch_float(dt(x), "add_rms_norm",
                 [&](auto tag) { add_rms_typed<decltype(tag)>(h, out, x, residual, w, eps, rstd); });
}

void add_rms_norm_backward(const View& dx, const View& dw, const View& h, const View& w, const View& rstd,
                           const View& dy, const View& dh) {
  dispatch_float(dt(h), "add_rms_norm_backward",
                 [&](auto tag) { add_rms_bw_typed<decltype(tag)>(dx, dw, h, w, rstd, dy, dh); });
}

}  // namespace DR_ISA
}  // namespace cpu
}  // namespace dualroute
