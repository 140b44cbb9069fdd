// Element-wise kernels: fill, arange, random, copy/cast, unary math, binary arithmetic and
// comparisons with broadcasting (stride-0 operands), where, and SwiGLU.
//
// Each op is a small functor; the strided iterator (common.h) hands it runs of elements with
// one stride per operand, and the run loop has a contiguous branch the compiler vectorises.
// The exp-, erf- and tanh-based ops on contiguous float32 and bfloat16 data use the vector forms
// of simd.h and activations.h, four vectors in step.
#include <cmath>

#include "../core/philox.h"
#include "activations.h"
#include "common.h"
#include "prefetch.h"
#include "simd.h"

namespace dualroute {
namespace cpu {
namespace DR_ISA {
namespace {

template <typename A>
inline A unary_apply(UnaryOp op, A x) {
  switch (op) {
    case UnaryOp::Neg: return -x;
    case UnaryOp::Abs: return std::abs(x);
    case UnaryOp::Exp: return std::exp(x);
    case UnaryOp::Log: return std::log(x);
    case UnaryOp::Sqrt: return std::sqrt(x);
    case UnaryOp::Rsqrt: return A(1) / std::sqrt(x);
    case UnaryOp::Sin: return std::sin(x);
    case UnaryOp::Cos: return std::cos(x);
    case UnaryOp::Tanh: return std::tanh(x);
    // the activations' float64 formulas (activations.h), rounded to A
    case UnaryOp::Sigmoid: return A(act::Sigmoid::ref(x));
    case UnaryOp::Relu: return A(act::Relu::ref(x));
    case UnaryOp::Gelu: return A(act::Gelu::ref(x));
    case UnaryOp::GeluTanh: return A(act::GeluTanh::ref(x));
    case UnaryOp::Silu: return A(act::Silu::ref(x));
    case UnaryOp::Square: return x * x;
    case UnaryOp::Reciprocal: return A(1) / x;
    case UnaryOp::Floor: return std::floor(x);
    case UnaryOp::Ceil: return std::ceil(x);
    case UnaryOp::Round: return std::nearbyint(x);  // half to even in the default rounding mode
    case UnaryOp::Sign: return x > A(0) ? A(1) : x < A(0) ? A(-1) : x;  // keeps 0, -0 and NaN
    case UnaryOp::Erf: return std::erf(x);
    case UnaryOp::Log1p: return std::log1p(x);
    case UnaryOp::Expm1: return std::expm1(x);
    default: return x;
  }
}

inline int32_t unary_int(UnaryOp op, int32_t x) {
  switch (op) {
    case UnaryOp::Neg: return static_cast<int32_t>(0u - static_cast<uint32_t>(x));
    case UnaryOp::Abs: return x < 0 ? static_cast<int32_t>(0u - static_cast<uint32_t>(x)) : x;
    case UnaryOp::Square: return static_cast<int32_t>(static_cast<uint32_t>(x) * static_cast<uint32_t>(x));
    case UnaryOp::Sign: return (x > 0) - (x < 0);
    default: return 0;
  }
}

// Vector paths for float32 and bfloat16 (through float lanes) on contiguous runs, four vectors
// in step; false when the op has none. The tail past the last whole vector goes through the
// same forms in a zero-padded vector.
template <typename T>
bool unary_vec(UnaryOp op, T* o, const T* x, int64_t n) {
  auto run = [&](auto f) {
    const int64_t i = act::vblocks(n, [&](int64_t i, auto u) DR_VLAMBDA {
      constexpr int U = decltype(u)::value;
      vstoren<U>(o + i, f(vloadn<U>(x + i)));
    });
    if (i < n) {
      T tin[kVecF] = {}, tout[kVecF];
      std::memcpy(tin, x + i, (n - i) * sizeof(T));
      vstore(tout, f(vload(tin)));
      std::memcpy(o + i, tout, (n - i) * sizeof(T));
    }
  };
  switch (op) {
    case UnaryOp::Exp: run([](auto v) DR_VLAMBDA { return act::act_fwd<act::Exp>(v); }); return true;
    case UnaryOp::Sigmoid: run([](auto v) DR_VLAMBDA { return act::act_fwd<act::Sigmoid>(v); }); return true;
    case UnaryOp::Silu: run([](auto v) DR_VLAMBDA { return act::act_fwd<act::Silu>(v); }); return true;
    case UnaryOp::Tanh: run([](auto v) DR_VLAMBDA { return act::per_vec(v, [](vf t) { return vtanh(t); }); }); return true;
    case UnaryOp::Erf: run([](auto v) DR_VLAMBDA { return act::per_vec(v, [](vf t) { return verf(t); }); }); return true;
    case UnaryOp::Gelu: run([](auto v) DR_VLAMBDA { return act::act_fwd<act::Gelu>(v); }); return true;
    case UnaryOp::GeluTanh: run([](auto v) DR_VLAMBDA { return act::act_fwd<act::GeluTanh>(v); }); return true;
    default: return false;
  }
}

template <typename T>
void unary_typed(UnaryOp op, const View& out, const View& x) {
  const View* ops[2] = {&out, &x};
  auto it = make_iter<2>(out, ops);
  T* o = static_cast<T*>(out.data);
  const T* in = static_cast<const T*>(x.data);
  it.run([&](const int64_t* off, int64_t n, const int64_t* s) {
    T* po = o + off[0];
    const T* px = in + off[1];
    if constexpr (std::is_same_v<T, float> || std::is_same_v<T, bf16>) {
      if (s[0] == 1 && s[1] == 1 && unary_vec(op, po, px, n)) return;
    }
    if constexpr (std::is_same_v<T, int32_t>) {
      for (int64_t i = 0; i < n; ++i) po[i * s[0]] = unary_int(op, px[i * s[1]]);
    } else {
      using A = typename Num<T>::acc;
      if (s[0] == 1 && s[1] == 1) {
        for (int64_t i = 0; i < n; ++i) po[i] = Num<T>::store(unary_apply<A>(op, Num<T>::load(px[i])));
      } else {
        for (int64_t i = 0; i < n; ++i)
          po[i * s[0]] = Num<T>::store(unary_apply<A>(op, Num<T>::load(px[i * s[1]])));
      }
    }
  }, 8);
}

template <typename A>
inline A binary_apply(BinaryOp op, A a, A b) {
  switch (op) {
    case BinaryOp::Add: return a + b;
    case BinaryOp::Sub: return a - b;
    case BinaryOp::Mul: return a * b;
    case BinaryOp::Div: return a / b;
    case BinaryOp::Pow: return std::pow(a, b);
    case BinaryOp::Maximum: return (a != a || b != b) ? a + b : (a > b ? a : b);
    case BinaryOp::Minimum: return (a != a || b != b) ? a + b : (a < b ? a : b);
    case BinaryOp::FloorDiv: return std::floor(a / b);
    case BinaryOp::Remainder: {
      // Python's (and torch.remainder's) sign: that of the divisor
      A r = std::fmod(a, b);
      if (r != A(0) && ((r < A(0)) != (b < A(0)))) r += b;
      return r;
    }
    default: return A(0);
  }
}

inline int32_t binary_int(BinaryOp op, int32_t a, int32_t b) {
  uint32_t ua = static_cast<uint32_t>(a), ub = static_cast<uint32_t>(b);
  switch (op) {
    case BinaryOp::Add: return static_cast<int32_t>(ua + ub);
    case BinaryOp::Sub: return static_cast<int32_t>(ua - ub);
    case BinaryOp::Mul: return static_cast<int32_t>(ua * ub);
    case BinaryOp::Div:
      if (b == 0) return 0;
      if (a == std::numeric_limits<int32_t>::min() && b == -1) return a;
      return a / b;
    case BinaryOp::Pow: return from_double<int32_t>(std::pow(static_cast<double>(a), static_cast<double>(b)));
    case BinaryOp::Maximum: return a > b ? a : b;
    case BinaryOp::Minimum: return a < b ? a : b;
    case BinaryOp::FloorDiv: {
      // division by 0 gives 0, as Div does; the quotient rounds toward -inf
      if (b == 0) return 0;
      if (a == std::numeric_limits<int32_t>::min() && b == -1) return a;
      const int32_t q = a / b;
      return (a % b != 0 && ((a < 0) != (b < 0))) ? q - 1 : q;
    }
    case BinaryOp::Remainder: {
      if (b == 0 || b == -1) return 0;
      const int32_t r = a % b;
      return (r != 0 && ((r < 0) != (b < 0))) ? r + b : r;
    }
    default: return 0;
  }
}

template <typename A>
inline uint8_t compare_apply(BinaryOp op, A a, A b) {
  switch (op) {
    case BinaryOp::Eq: return a == b;
    case BinaryOp::Ne: return a != b;
    case BinaryOp::Lt: return a < b;
    case BinaryOp::Le: return a <= b;
    case BinaryOp::Gt: return a > b;
    case BinaryOp::Ge: return a >= b;
    case BinaryOp::LogicalAnd: return (a != A(0)) && (b != A(0));
    case BinaryOp::LogicalOr: return (a != A(0)) || (b != A(0));
    default: return 0;
  }
}

// The arithmetic result of a op b for stored type T.
template <typename T>
inline T arith(BinaryOp op, T a, T b) {
  if constexpr (std::is_same_v<T, int32_t>) {
    return binary_int(op, a, b);
  } else {
    return Num<T>::store(binary_apply(op, Num<T>::load(a), Num<T>::load(b)));
  }
}

// Runs with a contiguous output and operands that are contiguous or stride 0: the cases the
// compiler vectorises, kept as separate loops with the op fixed at compile time.
template <typename T, BinaryOp OP>
void binary_run(T* o, const T* a, int64_t sa, const T* b, int64_t sb, int64_t n) {
  if (sa == 1 && sb == 1) {
    for (int64_t i = 0; i < n; ++i) o[i] = arith<T>(OP, a[i], b[i]);
  } else if (sa == 1 && sb == 0) {
    const T bv = b[0];
    for (int64_t i = 0; i < n; ++i) o[i] = arith<T>(OP, a[i], bv);
  } else if (sa == 0 && sb == 1) {
    const T av = a[0];
    for (int64_t i = 0; i < n; ++i) o[i] = arith<T>(OP, av, b[i]);
  } else {
    for (int64_t i = 0; i < n; ++i) o[i] = arith<T>(OP, a[i * sa], b[i * sb]);
  }
}

template <typename T, BinaryOp OP>
void binary_arith_op(const View& out, const View& a, const View& b) {
  const View* ops[3] = {&out, &a, &b};
  auto it = make_iter<3>(out, ops);
  T* o = static_cast<T*>(out.data);
  const T* pa = static_cast<const T*>(a.data);
  const T* pb = static_cast<const T*>(b.data);
  it.run([&](const int64_t* off, int64_t n, const int64_t* s) {
    if (s[0] == 1) {
      binary_run<T, OP>(o + off[0], pa + off[1], s[1], pb + off[2], s[2], n);
    } else {
      for (int64_t i = 0; i < n; ++i) o[off[0] + i * s[0]] = arith<T>(OP, pa[off[1] + i * s[1]], pb[off[2] + i * s[2]]);
    }
  });
}

template <typename T>
void binary_typed(BinaryOp op, const View& out, const View& a, const View& b) {
  if (binary_is_compare(op)) {
    const View* ops[3] = {&out, &a, &b};
    auto it = make_iter<3>(out, ops);
    uint8_t* o = static_cast<uint8_t*>(out.data);
    const T* pa = static_cast<const T*>(a.data);
    const T* pb = static_cast<const T*>(b.data);
    it.run([&](const int64_t* off, int64_t n, const int64_t* s) {
      for (int64_t i = 0; i < n; ++i)
        o[off[0] + i * s[0]] = compare_apply(op, Num<T>::load(pa[off[1] + i * s[1]]), Num<T>::load(pb[off[2] + i * s[2]]));
    });
    return;
  }
  if constexpr (std::is_same_v<T, uint8_t>) {
    fail(ErrorCode::DType, "binary: arithmetic on bool tensors is not supported (cast first)");
  } else {
    switch (op) {
      case BinaryOp::Add: return binary_arith_op<T, BinaryOp::Add>(out, a, b);
      case BinaryOp::Sub: return binary_arith_op<T, BinaryOp::Sub>(out, a, b);
      case BinaryOp::Mul: return binary_arith_op<T, BinaryOp::Mul>(out, a, b);
      case BinaryOp::Div: return binary_arith_op<T, BinaryOp::Div>(out, a, b);
      case BinaryOp::Pow: return binary_arith_op<T, BinaryOp::Pow>(out, a, b);
      case BinaryOp::Maximum: return binary_arith_op<T, BinaryOp::Maximum>(out, a, b);
      case BinaryOp::Minimum: return binary_arith_op<T, BinaryOp::Minimum>(out, a, b);
      case BinaryOp::FloorDiv: return binary_arith_op<T, BinaryOp::FloorDiv>(out, a, b);
      case BinaryOp::Remainder: return binary_arith_op<T, BinaryOp::Remainder>(out, a, b);
      default: fail(ErrorCode::Value, "binary: unknown op ", static_cast<int>(op));
    }
  }
}

template <typename T>
T scalar_as(double s) {
  return from_double<T>(s);
}

}  // namespace

void fill(const View& out, double value) {
  dispatch_dtype(dt(out), "fill", [&](auto tag) {
    using T = decltype(tag);
    const T v = from_double<T>(value);
    const View* ops[1] = {&out};
    auto it = make_iter<1>(out, ops);
    T* o = static_cast<T*>(out.data);
    it.run([&](const int64_t* off, int64_t n, const int64_t* s) {
      for (int64_t i = 0; i < n; ++i) o[off[0] + i * s[0]] = v;
    });
  });
}

void arange(const View& out, double start, double step) {
  dispatch_dtype(dt(out), "arange", [&](auto tag) {
    using T = decltype(tag);
    T* o = static_cast<T*>(out.data);
    parallel_for(view_numel(out), 65536, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) o[i] = from_double<T>(start + static_cast<double>(i) * step);
    });
  });
}

void random(const View& out, RandomKind kind, uint64_t seed, uint64_t offset, double a, double b) {
  dispatch_dtype(dt(out), "random", [&](auto tag) {
    using T = decltype(tag);
    T* o = static_cast<T*>(out.data);
    const int64_t n = view_numel(out);
    parallel_for(n, 16384, [&](int64_t lo, int64_t hi) {
      for (int64_t i = lo; i < hi; ++i) {
        double v;
        if (kind == RandomKind::Normal) {
          uint32_t x1 = philox_u32(seed, offset + 2 * static_cast<uint64_t>(i));
          uint32_t x2 = philox_u32(seed, offset + 2 * static_cast<uint64_t>(i) + 1);
          double u1 = (static_cast<double>(x1) + 1.0) / 4294967296.0;
          double u2 = static_cast<double>(x2) / 4294967296.0;
          double z = std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586476925 * u2);
          v = a + b * z;
        } else {
          uint32_t x = philox_u32(seed, offset + static_cast<uint64_t>(i));
          if constexpr (std::is_same_v<T, int32_t>) {
            v = a + std::floor((b - a) * (static_cast<double>(x) / 4294967296.0));
          } else {
            v = a + (b - a) * static_cast<double>(uniform_from_u32(x));
          }
        }
        if constexpr (std::is_same_v<T, bf16>) {
          o[i] = float_to_bf16(static_cast<float>(v));
        } else {
          o[i] = from_double<T>(v);
        }
      }
    });
  });
}

void copy(const View& out, const View& in) {
  dispatch_dtype(dt(out), "copy", [&](auto otag) {
    using O = decltype(otag);
    dispatch_dtype(dt(in), "copy", [&](auto itag) {
      using I = decltype(itag);
      const View* ops[2] = {&out, &in};
      auto it = make_iter<2>(out, ops);
      O* o = static_cast<O*>(out.data);
      const I* src = static_cast<const I*>(in.data);
      it.run([&](const int64_t* off, int64_t n, const int64_t* s) {
        O* po = o + off[0];
        const I* pi = src + off[1];
        if constexpr (std::is_same_v<O, I>) {
          if (s[0] == 1 && s[1] == 1) {
            std::memcpy(po, pi, n * sizeof(O));
          } else {
            for (int64_t i = 0; i < n; ++i) po[i * s[0]] = pi[i * s[1]];
          }
        } else if constexpr (std::is_same_v<O, float> && std::is_same_v<I, bf16>) {
          for (int64_t i = 0; i < n; ++i) po[i * s[0]] = bf16_to_float(pi[i * s[1]]);
        } else if constexpr (std::is_same_v<O, bf16> && std::is_same_v<I, float>) {
          for (int64_t i = 0; i < n; ++i) po[i * s[0]] = float_to_bf16(pi[i * s[1]]);
        } else if constexpr (std::is_same_v<O, bf16>) {
          // through float, as the CUDA backend does (double -> float -> bf16)
          for (int64_t i = 0; i < n; ++i) po[i * s[0]] = float_to_bf16(static_cast<float>(to_double(pi[i * s[1]])));
        } else {
          for (int64_t i = 0; i < n; ++i) po[i * s[0]] = from_double<O>(to_double(pi[i * s[1]]));
        }
      });
    });
  });
}

void unary(UnaryOp op, const View& out, const View& x) {
  DType t = dt(x);
  if (op == UnaryOp::LogicalNot) {
    dispatch_dtype(t, "logicalNot", [&](auto tag) {
      using T = decltype(tag);
      const View* ops[2] = {&out, &x};
      auto it = make_iter<2>(out, ops);
      uint8_t* o = static_cast<uint8_t*>(out.data);
      const T* in = static_cast<const T*>(x.data);
      it.run([&](const int64_t* off, int64_t n, const int64_t* s) {
        for (int64_t i = 0; i < n; ++i) o[off[0] + i * s[0]] = Num<T>::load(in[off[1] + i * s[1]]) == 0;
      });
    });
    return;
  }
  if (t == DType::I32) {
    DR_CHECK(op == UnaryOp::Neg || op == UnaryOp::Abs || op == UnaryOp::Square || op == UnaryOp::Sign, DType,
             "unary: this op needs a float tensor, got int32");
    return unary_typed<int32_t>(op, out, x);
  }
  dispatch_float(t, "unary", [&](auto tag) { unary_typed<decltype(tag)>(op, out, x); });
}

void binary(BinaryOp op, const View& out, const View& a, const View& b) {
  dispatch_dtype(dt(a), "binary", [&](auto tag) { binary_typed<decltype(tag)>(op, out, a, b); });
}

void binary_scalar(BinaryOp op, const View& out, const View& a, double s, bool scalar_first) {
  dispatch_dtype(dt(a), "binary_scalar", [&](auto tag) {
    using T = decltype(tag);
    // The scalar becomes a stride-0 operand of a's dtype.
    T sv = scalar_as<T>(s);
    View sview = a;
    sview.data = &sv;
    for (int d = 0; d < kMaxDims; ++d) sview.strides[d] = 0;
    if (scalar_first) binary_typed<T>(op, out, sview, a);
    else binary_typed<T>(op, out, a, sview);
  });
}

void where(const View& out, const View& cond, const View& a, const View& b) {
  dispatch_dtype(dt(out), "where", [&](auto tag) {
    using T = decltype(tag);
    const View* ops[4] = {&out, &cond, &a, &b};
    auto it = make_iter<4>(out, ops);
    T* o = static_cast<T*>(out.data);
    const uint8_t* c = static_cast<const uint8_t*>(cond.data);
    const T* pa = static_cast<const T*>(a.data);
    const T* pb = static_cast<const T*>(b.data);
    it.run([&](const int64_t* off, int64_t n, const int64_t* s) {
      for (int64_t i = 0; i < n; ++i)
        o[off[0] + i * s[0]] = c[off[1] + i * s[1]] ? pa[off[2] + i * s[2]] : pb[off[3] + i * s[3]];
    });
  });
}

void swiglu(const View& out, const View& x) {
  const int64_t rows = out.ndim ? view_numel(out) / out.shape[out.ndim - 1] : 1;
  const int64_t h = out.ndim ? out.shape[out.ndim - 1] : 1;
  dispatch_float(dt(x), "swiglu", [&](auto tag) {
    using T = decltype(tag);
    using A = typename Num<T>::acc;
    T* o = static_cast<T*>(out.data);
    const T* in = static_cast<const T*>(x.data);
    // A row's three short streams restart at every row, which the hardware prefetcher follows
    // late: the halves of the row rows_ahead() on are prefetched as this one is computed, and a
    // large output goes around the caches (bench/stores.ts: 1.20x while memory was contended,
    // 1.08x while not).
    const int64_t ahead = rows_ahead(2 * h * static_cast<int64_t>(sizeof(T)));
    const bool stream = stream_stores(o, rows * h, h);
    parallel_for(rows, std::max<int64_t>(1, 16384 / std::max<int64_t>(h, 1)), [&](int64_t b, int64_t e) {
      for (int64_t r = b; r < e; ++r) {
        const T* g = in + r * 2 * h;
        const T* u = g + h;
        T* po = o + r * h;
        int64_t j = 0;
        if constexpr (std::is_same_v<T, float>) {
          const int64_t step = r + ahead < e ? ahead * 2 * h : 0;
          j = act::vblocks(h, [&](int64_t j, auto k) DR_VLAMBDA {
            constexpr int U = decltype(k)::value;
            if constexpr (U == 4) {
              prefetch_r4(g + step, j);
              prefetch_r4(u + step, j);
            }
            const auto y = act::act_fwd<act::Silu>(vloadn<U>(g + j)) * vloadn<U>(u + j);
            vputn<U>(po + j, y, stream);
          });
        }
        for (; j < h; ++j) {
          A gv = Num<T>::load(g[j]);
          po[j] = Num<T>::store(gv / (A(1) + std::exp(-gv)) * Num<T>::load(u[j]));
        }
      }
      if (stream) vstream_fence();
    });
  });
}

}  // namespace DR_ISA
}  // namespace cpu
}  // namespace dualroute
