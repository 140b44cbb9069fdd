// Fused bias + activation (the contract in fused.cpp's header): out = act(x + bias) and its
// backward dx = dy act'(x + bias), dbias = sum_rows dx, for gelu, geluTanh, silu, relu.
// Compiled like elementwise.cpp, without fused multiply-add contraction (CMakeLists.txt), and
// with the same vector forms, so that float32 results equal the unfused add + activation bit
// for bit (bfloat16 too goes through the vector forms here; the unfused bfloat16 unary op uses
// libm, whose values in gelu's lower tail differ by far less than a bfloat16 unit).
#include <cmath>
#include <cstring>

#include "fused_rows.h"

namespace dualroute {
namespace cpu {
namespace DR_ISA {
namespace {

using namespace fused_detail;

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
  if constexpr (F == Act::GeluTanh) {
    // x sigmoid(2u) = 0.5 x (1 + tanh(u)), as elementwise.cpp computes it
    const float k2 = 2.0f * kSqrt2OverPi;
    return z * vsigmoid(z * vfma(z * z, k2 * kGeluTanhC, k2));
  }
  if constexpr (F == Act::Silu) return vsilu(z);
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
    const vf s = vsigmoid(z);
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
