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
#include <vector>

#include "common.h"
#include "simd.h"

namespace dualroute {
namespace cpu {
namespace DR_ISA {
namespace {

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
    });
    return;
  }
  const int64_t nchunks = std::min<int64_t>(rows, std::max<int64_t>(1, 4 * static_cast<int64_t>(num_threads())));
  std::vector<A> part(static_cast<size_t>(std::max<int64_t>(nchunks, 0) * cols), A(0));
  if (nchunks > 0) {
    parallel_for(nchunks, 1, [&](int64_t lo, int64_t hi) {
      for (int64_t c = lo; c < hi; ++c) {
        const int64_t r0 = rows * c / nchunks, r1 = rows * (c + 1) / nchunks;
        for (int64_t r = r0; r < r1; ++r) row(r, part.data() + c * cols);
      }
    });
  }
  parallel_for(cols, 4096, [&](int64_t lo, int64_t hi) {
    for (int64_t j = lo; j < hi; ++j) {
      A s = 0;
      for (int64_t c = 0; c < nchunks; ++c) s += part[c * cols + j];
      out[j] = Num<T>::store(s);
    }
  });
}

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
  if constexpr (kVec<T>) {
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
template <typename T>
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
      vstore(dx + j, v);
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
  rows_with_colsum<T>(rows, cols, static_cast<T*>(dw.data), [&](int64_t r, Acc<T>* part) {
    const int64_t o = r * cols;
    add_rms_bw_row<T>(pdx + o, ph + o, pw, pdy + o, pdh ? pdh + o : nullptr, static_cast<Acc<T>>(pr[r]), cols, part);
  });
}

// ---- bias + activation ---------------------------------------------------------------------

enum class Act { Gelu, GeluTanh, Silu, Relu };

Act act_of(UnaryOp op) {
  switch (op) {
    case UnaryOp::Gelu: return Act::Gelu;
    case UnaryOp::GeluTanh: return Act::GeluTanh;
    case UnaryOp::Silu: return Act::Silu;
    case UnaryOp::Relu: return Act::Relu;
    default: fail(ErrorCode::Value, "bias_act: act must be gelu, geluTanh, silu or relu, got ", enum_name(op));
  }
}

constexpr float kSqrt2OverPi = 0.79788456080286535588f;
constexpr float kGeluTanhC = 0.044715f;
constexpr float kInvSqrt2Pi = 0.39894228040143267794f;

// act(z) and act'(z) in lanes, the forms of elementwise.cpp / backward.cpp.
template <Act F>
inline vf act_v(vf z) {
  if constexpr (F == Act::Gelu) return z * vnormcdf(z);
  if constexpr (F == Act::GeluTanh) return 0.5f * z * (1.0f + vtanh(kSqrt2OverPi * (z + kGeluTanhC * z * z * z)));
  if constexpr (F == Act::Silu) return z / (1.0f + vexp(-z));
  if constexpr (F == Act::Relu) {
    const vf r = z > 0.0f ? z : vset1(0.0f);
    return z != z ? z : r;  // NaN stays NaN
  }
}
template <Act F>
inline vf dact_v(vf z, vf g) {
  if constexpr (F == Act::Gelu) return g * (vnormcdf(z) + z * (kInvSqrt2Pi * vexp(-0.5f * z * z)));
  if constexpr (F == Act::GeluTanh) {
    const vf t = vtanh(kSqrt2OverPi * (z + kGeluTanhC * z * z * z));
    return g * (0.5f * (1.0f + t) + 0.5f * z * (1.0f - t * t) * kSqrt2OverPi * (1.0f + 3.0f * kGeluTanhC * z * z));
  }
  if constexpr (F == Act::Silu) {
    const vf s = 1.0f / (1.0f + vexp(-z));
    return g * s * (1.0f + z * (1.0f - s));
  }
  if constexpr (F == Act::Relu) return z > 0.0f ? g : vset1(0.0f);
}
// The same in double (float64), the forms of elementwise.cpp's unary_apply / backward.cpp.
template <Act F>
inline double act_d(double z) {
  if constexpr (F == Act::Gelu) return 0.5 * z * (1.0 + std::erf(z * 0.70710678118654752440));
  if constexpr (F == Act::GeluTanh) return 0.5 * z * (1.0 + std::tanh(0.79788456080286535588 * (z + 0.044715 * z * z * z)));
  if constexpr (F == Act::Silu) return z * (1.0 / (1.0 + std::exp(-z)));
  if constexpr (F == Act::Relu) return z > 0.0 ? z : (z == z ? 0.0 : z);
}
template <Act F>
inline double dact_d(double z, double g) {
  if constexpr (F == Act::Gelu) {
    const double cdf = 0.5 * (1.0 + std::erf(z * 0.70710678118654752440));
    return g * (cdf + z * (0.39894228040143267794 * std::exp(-0.5 * z * z)));
  }
  if constexpr (F == Act::GeluTanh) {
    const double k = 0.79788456080286535588, c = 0.044715;
    const double t = std::tanh(k * (z + c * z * z * z));
    return g * (0.5 * (1.0 + t) + 0.5 * z * (1.0 - t * t) * k * (1.0 + 3.0 * c * z * z));
  }
  if constexpr (F == Act::Silu) {
    const double s = 1.0 / (1.0 + std::exp(-z));
    return g * s * (1.0 + z * (1.0 - s));
  }
  if constexpr (F == Act::Relu) return z > 0.0 ? g : 0.0;
}

// Calls f(n) with the tail of a row (n < kVecF elements from j) copied into zero-padded lane
// buffers, so the tail goes through the same vector forms as the rest of the row (float32 gives
// the values the unfused element-wise kernels give, which pad their tails the same way).
template <typename T, Act F>
void bias_act_row(T* o, const T* x, const T* b, int64_t n) {
  if constexpr (kVec<T>) {
    int64_t j = 0;
    for (; j + kVecF <= n; j += kVecF) vstore(o + j, act_v<F>(vrnd<T>(vload(x + j) + vload(b + j))));
    if (j < n) {
      T tx[kVecF] = {}, tb[kVecF] = {}, to[kVecF];
      std::memcpy(tx, x + j, (n - j) * sizeof(T));
      std::memcpy(tb, b + j, (n - j) * sizeof(T));
      vstore(to, act_v<F>(vrnd<T>(vload(tx) + vload(tb))));
      std::memcpy(o + j, to, (n - j) * sizeof(T));
    }
  } else {
    for (int64_t j = 0; j < n; ++j) o[j] = act_d<F>(x[j] + b[j]);
  }
}

template <typename T, Act F>
void bias_act_bw_row(T* dx, const T* x, const T* b, const T* dy, int64_t n, Acc<T>* pdb) {
  if constexpr (kVec<T>) {
    int64_t j = 0;
    for (; j + kVecF <= n; j += kVecF) {
      const vf d = dact_v<F>(vrnd<T>(vload(x + j) + vload(b + j)), vload(dy + j));
      vstore(dx + j, d);
      if (pdb) vstore(pdb + j, vload(pdb + j) + d);
    }
    if (j < n) {
      const int64_t m = n - j;
      T tx[kVecF] = {}, tb[kVecF] = {}, tg[kVecF] = {}, to[kVecF];
      std::memcpy(tx, x + j, m * sizeof(T));
      std::memcpy(tb, b + j, m * sizeof(T));
      std::memcpy(tg, dy + j, m * sizeof(T));
      const vf d = dact_v<F>(vrnd<T>(vload(tx) + vload(tb)), vload(tg));
      vstore(to, d);
      std::memcpy(dx + j, to, m * sizeof(T));
      if (pdb)
        for (int64_t k = 0; k < m; ++k) pdb[j + k] += d[k];
    }
  } else {
    for (int64_t j = 0; j < n; ++j) {
      const double d = dact_d<F>(x[j] + b[j], dy[j]);
      dx[j] = d;
      if (pdb) pdb[j] += d;
    }
  }
}

template <typename T, Act F>
void bias_act_typed(const View& out, const View& x, const View& bias) {
  const int64_t cols = x.ndim ? x.shape[x.ndim - 1] : 1;
  const int64_t rows = cols ? view_numel(x) / cols : 0;
  T* po = static_cast<T*>(out.data);
  const T* px = static_cast<const T*>(x.data);
  const T* pb = static_cast<const T*>(bias.data);
  // activations cost ~8x a copy: about 2048 elements a task
  parallel_for(rows, std::max<int64_t>(1, 2048 / std::max<int64_t>(cols, 1)), [&](int64_t lo, int64_t hi) {
    for (int64_t r = lo; r < hi; ++r) bias_act_row<T, F>(po + r * cols, px + r * cols, pb, cols);
  });
}

template <typename T, Act F>
void bias_act_bw_typed(const View& dx, const View& dbias, const View& x, const View& bias, const View& dy) {
  const int64_t cols = x.ndim ? x.shape[x.ndim - 1] : 1;
  const int64_t rows = cols ? view_numel(x) / cols : 0;
  T* pdx = static_cast<T*>(dx.data);
  const T* px = static_cast<const T*>(x.data);
  const T* pb = static_cast<const T*>(bias.data);
  const T* pdy = static_cast<const T*>(dy.data);
  rows_with_colsum<T>(rows, cols, static_cast<T*>(dbias.data), [&](int64_t r, Acc<T>* part) {
    const int64_t o = r * cols;
    bias_act_bw_row<T, F>(pdx + o, px + o, pb, pdy + o, cols, part);
  });
}

template <typename F>
void dispatch_act(UnaryOp op, F&& f) {
  switch (act_of(op)) {
    case Act::Gelu: return f(std::integral_constant<Act, Act::Gelu>{});
    case Act::GeluTanh: return f(std::integral_constant<Act, Act::GeluTanh>{});
    case Act::Silu: return f(std::integral_constant<Act, Act::Silu>{});
    case Act::Relu: return f(std::integral_constant<Act, Act::Relu>{});
  }
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

void bias_act(UnaryOp act, const View& out, const View& x, const View& bias) {
  dispatch_float(dt(x), "bias_act", [&](auto tag) {
    dispatch_act(act, [&](auto f) { bias_act_typed<decltype(tag), decltype(f)::value>(out, x, bias); });
  });
}

void bias_act_backward(UnaryOp act, const View& dx, const View& dbias, const View& x, const View& bias,
                       const View& dy) {
  dispatch_float(dt(x), "bias_act_backward", [&](auto tag) {
    dispatch_act(act, [&](auto f) { bias_act_bw_typed<decltype(tag), decltype(f)::value>(dx, dbias, x, bias, dy); });
  });
}

}  // namespace DR_ISA
}  // namespace cpu
}  // namespace dualroute
