// Fused bias + activation (the contract in fused.cpp's header): out = act(x + bias) and its
// backward dx = dy act'(x + bias), dbias = sum_rows dx, for gelu, geluTanh, silu, relu.
// Compiled like elementwise.cpp, without fused multiply-add contraction (CMakeLists.txt), and
// with the same vector forms (activations.h), so that the forward results equal the unfused
// add + activation bit for bit, in float32 and bfloat16.
#include <cmath>
#include <cstring>

#include "activations.h"
#include "fused_rows.h"

namespace dualroute {
namespace cpu {
namespace DR_ISA {
namespace {

using namespace fused_detail;

// ---- bias + activation ---------------------------------------------------------------------

// The activations of activations.h, by op.
template <typename F>
void dispatch_act(UnaryOp op, F&& f) {
  switch (op) {
    case UnaryOp::Gelu: return f(act::Gelu{});
    case UnaryOp::GeluTanh: return f(act::GeluTanh{});
    case UnaryOp::Silu: return f(act::Silu{});
    case UnaryOp::Relu: return f(act::Relu{});
    default: fail(ErrorCode::Value, "bias_act: act must be gelu, geluTanh, silu or relu, got ", enum_name(op));
  }
}

// Calls f(n) with the tail of a row (n < kVecF elements from j) copied into zero-padded lane
// buffers, so the tail goes through the same vector forms as the rest of the row (float32 gives
// the values the unfused element-wise kernels give, which pad their tails the same way).
template <typename T, class F>
void bias_act_row(T* o, const T* x, const T* b, int64_t n) {
  if constexpr (kVec<T>) {
    const int64_t j = act::vblocks(n, [&](int64_t j, auto u) DR_VLAMBDA {
      constexpr int U = decltype(u)::value;
      vstoren<U>(o + j, act::act_fwd<F>(vrnd<T>(vloadn<U>(x + j) + vloadn<U>(b + j))));
    });
    if (j < n) {
      T tx[kVecF] = {}, tb[kVecF] = {}, to[kVecF];
      std::memcpy(tx, x + j, (n - j) * sizeof(T));
      std::memcpy(tb, b + j, (n - j) * sizeof(T));
      vstore(to, act::act_fwd<F>(vrnd<T>(vload(tx) + vload(tb))));
      std::memcpy(o + j, to, (n - j) * sizeof(T));
    }
  } else {
    for (int64_t j = 0; j < n; ++j) o[j] = F::ref(x[j] + b[j]);
  }
}

template <typename T, class F>
void bias_act_bw_row(T* dx, const T* x, const T* b, const T* dy, int64_t n, Acc<T>* pdb) {
  if constexpr (kVec<T>) {
    const int64_t j = act::vblocks(n, [&](int64_t j, auto u) DR_VLAMBDA {
      constexpr int U = decltype(u)::value;
      const auto d = act::act_grad<F>(vrnd<T>(vloadn<U>(x + j) + vloadn<U>(b + j)), vloadn<U>(dy + j));
      vstoren<U>(dx + j, d);
      if (pdb) vstoren<U>(pdb + j, vloadn<U>(pdb + j) + d);
    });
    if (j < n) {
      const int64_t m = n - j;
      T tx[kVecF] = {}, tb[kVecF] = {}, tg[kVecF] = {}, to[kVecF];
      std::memcpy(tx, x + j, m * sizeof(T));
      std::memcpy(tb, b + j, m * sizeof(T));
      std::memcpy(tg, dy + j, m * sizeof(T));
      const vf d = act::act_grad<F>(vrnd<T>(vload(tx) + vload(tb)), vload(tg));
      vstore(to, d);
      std::memcpy(dx + j, to, m * sizeof(T));
      if (pdb)
        for (int64_t k = 0; k < m; ++k) pdb[j + k] += d[k];
    }
  } else {
    for (int64_t j = 0; j < n; ++j) {
      const double d = F::gref(x[j] + b[j], dy[j]);
      dx[j] = d;
      if (pdb) pdb[j] += d;
    }
  }
}

template <typename T, class F>
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

template <typename T, class F>
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

}  // namespace

void bias_act(UnaryOp act, const View& out, const View& x, const View& bias) {
  dispatch_float(dt(x), "bias_act", [&](auto tag) {
    dispatch_act(act, [&](auto f) { bias_act_typed<decltype(tag), decltype(f)>(out, x, bias); });
  });
}

void bias_act_backward(UnaryOp act, const View& dx, const View& dbias, const View& x, const View& bias,
                       const View& dy) {
  dispatch_float(dt(x), "bias_act_backward", [&](auto tag) {
    dispatch_act(act, [&](auto f) { bias_act_bw_typed<decltype(tag), decltype(f)>(dx, dbias, x, bias, dy); });
  });
}

}  // namespace DR_ISA
}  // namespace cpu
}  // namespace dualroute
