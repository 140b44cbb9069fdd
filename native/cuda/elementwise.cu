// Element-wise kernels on the GPU: fill, arange, random, copy/cast, unary math, binary
// arithmetic and comparisons with broadcasting, where, and SwiGLU. The semantics are those of
// the CPU kernels of the same name (native/cpu/kernels.h), including the edge cases: float to
// int32 truncates toward zero, saturates and maps NaN to 0; maximum/minimum propagate NaN;
// int32 arithmetic wraps and division by zero gives 0.
//
// dtypes: float32 and bfloat16 compute in float (bf16 is only a storage format); int32 and
// bool where the op makes sense; float64 is CPU-only and every entry says so.
//
// Launch layout: the operands' shapes and strides are collapsed on the host first (size-1
// dims dropped, neighbours that are contiguous in every operand merged, as the CPU iterator
// does), which leaves two kernels per op:
//  - flat: the output is one contiguous run and each input is either the same run (stride 1)
//    or a single broadcast value (stride 0). Grid-stride loop over 16-byte packs of V
//    elements (V = 16 / largest element size) when every pointer is 16-byte aligned, the
//    scalar loop for the tail or unaligned data.
//  - strided: anything else. Each thread decodes the output's flat index into coordinates
//    (innermost first, at most 8 dims, shapes and strides passed by value) and gathers.
// The op is a template parameter (a small functor), so each (op, dtype) pair gets its own
// branch-free kernel.
//
// random: element i of the flat (contiguous) output uses Philox stream index offset + i
// (uniform) or offset + 2i, offset + 2i + 1 (normal, Box-Muller), in double precision like the
// CPU. The double arithmetic uses __dmul_rn/__dadd_rn so nvcc cannot fuse it into FMAs.
#include <algorithm>
#include <climits>
#include <cstring>
#include <string>

#include "../core/philox.h"
#include "device.cuh"

namespace dualroute {
namespace cuda {
namespace {

// emu:begin ewconv (test/cuda_emu runs the code up to emu:end in a warp emulator)
// ---- value conversions (device; ld / st<T> are in device.cuh) ----------------------------
// The value an element compares as: float for the float types, int for the integer ones.
__device__ __forceinline__ float num(float v) { return v; }
__device__ __forceinline__ float num(bf16_t v) { return __bfloat162float(v); }
__device__ __forceinline__ int32_t num(int32_t v) { return v; }
__device__ __forceinline__ int32_t num(uint8_t v) { return v; }

__device__ __forceinline__ double to_d(float v) { return v; }
__device__ __forceinline__ double to_d(bf16_t v) { return __bfloat162float(v); }
__device__ __forceinline__ double to_d(int32_t v) { return v; }
__device__ __forceinline__ double to_d(uint8_t v) { return v; }
template <typename T>
__device__ __forceinline__ T from_d(double v);
template <>
__device__ __forceinline__ float from_d<float>(double v) { return static_cast<float>(v); }
template <>
__device__ __forceinline__ bf16_t from_d<bf16_t>(double v) { return __float2bfloat16_rn(static_cast<float>(v)); }
template <>
__device__ __forceinline__ int32_t from_d<int32_t>(double v) {
  if (!(v == v)) return 0;
  if (v >= 2147483647.0) return INT_MAX;
  if (v <= -2147483648.0) return INT_MIN;
  return static_cast<int32_t>(v);
}
template <>
__device__ __forceinline__ uint8_t from_d<uint8_t>(double v) { return v != 0.0 ? 1 : 0; }
// emu:end ewconv

// The same conversion on the host, bit for bit the CPU's from_double (bf16 through float).
template <typename T>
T host_from_d(double v);
template <>
inline float host_from_d<float>(double v) { return static_cast<float>(v); }
template <>
inline bf16_t host_from_d<bf16_t>(double v) {
  __nv_bfloat16_raw r;
  r.x = float_to_bf16(static_cast<float>(v)).bits;
  return bf16_t(r);
}
template <>
inline int32_t host_from_d<int32_t>(double v) {
  if (!(v == v)) return 0;
  if (v >= 2147483647.0) return INT_MAX;
  if (v <= -2147483648.0) return INT_MIN;
  return static_cast<int32_t>(v);
}
template <>
inline uint8_t host_from_d<uint8_t>(double v) { return v != 0.0 ? 1 : 0; }

// emu:begin ewmap (layouts and the unary map kernels; test/cuda_emu/unary_test.cpp)
// ---- iteration layout --------------------------------------------------------------------
template <int N>
struct Layout {
  int ndim;
  int64_t shape[kMaxDims];
  int64_t str[N][kMaxDims];
};

const int64_t kZeroStrides[kMaxDims] = {0, 0, 0, 0, 0, 0, 0, 0};

// Drops size-1 dims and merges neighbours contiguous in every operand (the CPU Iter rule).
template <int N>
Layout<N> collapse(const View& shape_of, const int64_t* const (&strides)[N]) {
  Layout<N> L;
  L.ndim = 0;
  for (int d = 0; d < shape_of.ndim; ++d) {
    const int64_t s = shape_of.shape[d];
    if (s == 1) continue;
    if (L.ndim > 0) {
      bool merge = true;
      for (int k = 0; k < N; ++k)
        if (L.str[k][L.ndim - 1] != strides[k][d] * s) merge = false;
      if (merge) {
        L.shape[L.ndim - 1] *= s;
        for (int k = 0; k < N; ++k) L.str[k][L.ndim - 1] = strides[k][d];
        continue;
      }
    }
    L.shape[L.ndim] = s;
    for (int k = 0; k < N; ++k) L.str[k][L.ndim] = strides[k][d];
    ++L.ndim;
  }
  if (L.ndim == 0) {
    L.ndim = 1;
    L.shape[0] = 1;
    for (int k = 0; k < N; ++k) L.str[k][0] = 1;
  }
  for (int d = L.ndim; d < kMaxDims; ++d) {
    L.shape[d] = 1;
    for (int k = 0; k < N; ++k) L.str[k][d] = 0;
  }
  return L;
}

// Flat: output one contiguous run, inputs contiguous or broadcast.
template <int N>
bool is_flat(const Layout<N>& L) {
  if (L.ndim != 1 || L.str[0][0] != 1) return false;
  for (int k = 1; k < N; ++k)
    if (L.str[k][0] != 0 && L.str[k][0] != 1) return false;
  return true;
}

template <int N>
__device__ __forceinline__ void decode(const Layout<N>& L, int64_t i, int64_t (&off)[N]) {
#pragma unroll
  for (int k = 0; k < N; ++k) off[k] = 0;
#pragma unroll
  for (int d = kMaxDims - 1; d >= 0; --d) {
    if (d < L.ndim) {
      const int64_t c = i % L.shape[d];
      i /= L.shape[d];
#pragma unroll
      for (int k = 0; k < N; ++k) off[k] += c * L.str[k][d];
    }
  }
}

// An input operand: device pointer, or (p == nullptr) a value passed from the host.
template <typename T>
struct Arg {
  const T* p;
  T val;
};
template <typename T>
__device__ __forceinline__ T arg_at(const Arg<T>& a, int64_t off) {
  return a.p ? a.p[off] : a.val;
}

// ---- generic map kernels -----------------------------------------------------------------
template <int V, typename TO, typename TA, typename F>
__global__ void map1_flat(TO* __restrict__ o, const TA* __restrict__ a, int sa, int64_t n, F f) {
  int64_t done = 0;
  if (V > 1) {
    const int64_t nv = n / V;
    for (int64_t i = gtid(); i < nv; i += gstride()) {
      Pack<TA, V> pa;
      Pack<TO, V> po;
      if (sa) {
        pa = reinterpret_cast<const Pack<TA, V>*>(a)[i];
      } else {
        const TA v = a[0];
#pragma unroll
        for (int e = 0; e < V; ++e) pa.v[e] = v;
      }
#pragma unroll
      for (int e = 0; e < V; ++e) po.v[e] = f(pa.v[e]);
      reinterpret_cast<Pack<TO, V>*>(o)[i] = po;
    }
    done = nv * V;
  }
  for (int64_t i = done + gtid(); i < n; i += gstride()) o[i] = f(a[i * sa]);
}

template <typename TO, typename TA, typename F>
__global__ void map1_strided(Layout<2> L, TO* __restrict__ o, const TA* __restrict__ a, int64_t n, F f) {
  for (int64_t i = gtid(); i < n; i += gstride()) {
    int64_t off[2];
    decode<2>(L, i, off);
    o[off[0]] = f(a[off[1]]);
  }
}

// emu:end ewmap

template <typename TO, typename TA, typename F>
int run_map1(const char* name, const View& out, const View& x, F f) {
  const int64_t n = view_numel(out);
  if (n == 0) return 0;
  const int64_t* strs[2] = {out.strides, x.strides};
  const Layout<2> L = collapse<2>(out, strs);
  TO* o = static_cast<TO*>(out.data);
  const TA* a = static_cast<const TA*>(x.data);
  if (is_flat(L)) {
    const int sa = static_cast<int>(L.str[1][0]);
    constexpr int V = 16 / (sizeof(TO) > sizeof(TA) ? sizeof(TO) : sizeof(TA));
    const bool vec = n >= V && aligned(o, sizeof(TO) * V) && (sa == 0 || aligned(a, sizeof(TA) * V));
    if (vec) map1_flat<V><<<grid_for(n / V), kThreads, 0, stream()>>>(o, a, sa, n, f);
    else map1_flat<1><<<grid_for(n), kThreads, 0, stream()>>>(o, a, sa, n, f);
  } else {
    map1_strided<<<grid_for(n), kThreads, 0, stream()>>>(L, o, a, n, f);
  }
  return check_launch(name);
}

// emu:begin ewmap2 (the binary map kernels; test/cuda_emu/binmap_test.cpp)
template <int V, typename TO, typename T, typename F>
__global__ void map2_flat(TO* __restrict__ o, Arg<T> a, int sa, Arg<T> b, int sb, int64_t n, F f) {
  int64_t done = 0;
  if (V > 1) {
    const int64_t nv = n / V;
    for (int64_t i = gtid(); i < nv; i += gstride()) {
      Pack<T, V> pa, pb;
      Pack<TO, V> po;
      if (sa) {
        pa = reinterpret_cast<const Pack<T, V>*>(a.p)[i];
      } else {
        const T v = arg_at(a, 0);
#pragma unroll
        for (int e = 0; e < V; ++e) pa.v[e] = v;
      }
      if (sb) {
        pb = reinterpret_cast<const Pack<T, V>*>(b.p)[i];
      } else {
        const T v = arg_at(b, 0);
#pragma unroll
        for (int e = 0; e < V; ++e) pb.v[e] = v;
      }
#pragma unroll
      for (int e = 0; e < V; ++e) po.v[e] = f(pa.v[e], pb.v[e]);
      reinterpret_cast<Pack<TO, V>*>(o)[i] = po;
    }
    done = nv * V;
  }
  for (int64_t i = done + gtid(); i < n; i += gstride()) o[i] = f(arg_at(a, i * sa), arg_at(b, i * sb));
}

template <typename TO, typename T, typename F>
__global__ void map2_strided(Layout<3> L, TO* __restrict__ o, Arg<T> a, Arg<T> b, int64_t n, F f) {
  for (int64_t i = gtid(); i < n; i += gstride()) {
    int64_t off[3];
    decode<3>(L, i, off);
    o[off[0]] = f(arg_at(a, off[1]), arg_at(b, off[2]));
  }
}

// emu:end ewmap2

// a and b are views, or (view == nullptr) a host value broadcast everywhere.
template <typename TO, typename T, typename F>
int run_map2(const char* name, const View& out, const View* av, T aval, const View* bv, T bval, F f) {
  const int64_t n = view_numel(out);
  if (n == 0) return 0;
  const int64_t* strs[3] = {out.strides, av ? av->strides : kZeroStrides, bv ? bv->strides : kZeroStrides};
  const Layout<3> L = collapse<3>(out, strs);
  TO* o = static_cast<TO*>(out.data);
  Arg<T> a{av ? static_cast<const T*>(av->data) : nullptr, aval};
  Arg<T> b{bv ? static_cast<const T*>(bv->data) : nullptr, bval};
  if (is_flat(L)) {
    const int sa = static_cast<int>(L.str[1][0]), sb = static_cast<int>(L.str[2][0]);
    constexpr int V = 16 / (sizeof(TO) > sizeof(T) ? sizeof(TO) : sizeof(T));
    const bool vec = n >= V && aligned(o, sizeof(TO) * V) && (sa == 0 || aligned(a.p, sizeof(T) * V)) &&
                     (sb == 0 || aligned(b.p, sizeof(T) * V));
    if (vec) map2_flat<V><<<grid_for(n / V), kThreads, 0, stream()>>>(o, a, sa, b, sb, n, f);
    else map2_flat<1><<<grid_for(n), kThreads, 0, stream()>>>(o, a, sa, b, sb, n, f);
  } else {
    map2_strided<<<grid_for(n), kThreads, 0, stream()>>>(L, o, a, b, n, f);
  }
  return check_launch(name);
}

// ---- fill, arange, random ----------------------------------------------------------------
template <typename T>
__global__ void fill_flat(T* __restrict__ o, int64_t n, T v) {
  for (int64_t i = gtid(); i < n; i += gstride()) o[i] = v;
}
template <typename T>
__global__ void fill_strided(Layout<1> L, T* __restrict__ o, int64_t n, T v) {
  for (int64_t i = gtid(); i < n; i += gstride()) {
    int64_t off[1];
    decode<1>(L, i, off);
    o[off[0]] = v;
  }
}

// By element size: fill only moves bits, computed on the host exactly as the CPU does.
template <typename U>
int fill_bits(const View& out, U bits) {
  const int64_t n = view_numel(out);
  if (n == 0) return 0;
  const int64_t* strs[1] = {out.strides};
  const Layout<1> L = collapse<1>(out, strs);
  U* o = static_cast<U*>(out.data);
  if (L.ndim == 1 && L.str[0][0] == 1) {
    if (bits == 0) return check(cudaMemsetAsync(o, 0, static_cast<size_t>(n) * sizeof(U), stream()), "fill");
    fill_flat<U><<<grid_for(n), kThreads, 0, stream()>>>(o, n, bits);
  } else {
    fill_strided<U><<<grid_for(n), kThreads, 0, stream()>>>(L, o, n, bits);
  }
  return check_launch("fill");
}

template <typename U, typename T>
U bits_of(T v) {
  static_assert(sizeof(U) == sizeof(T), "size");
  U u;
  std::memcpy(&u, &v, sizeof(U));
  return u;
}

template <typename T>
__global__ void arange_kernel(T* __restrict__ o, int64_t n, double start, double step) {
  for (int64_t i = gtid(); i < n; i += gstride())
    o[i] = from_d<T>(__dadd_rn(start, __dmul_rn(static_cast<double>(i), step)));
}

template <typename T>
__global__ void random_kernel(T* __restrict__ o, int64_t n, int normal, uint64_t seed, uint64_t offset, double a,
                              double b) {
  for (int64_t i = gtid(); i < n; i += gstride()) {
    double v;
    if (normal) {
      const uint64_t k = offset + 2 * static_cast<uint64_t>(i);
      const uint32_t x1 = philox_u32(seed, k), x2 = philox_u32(seed, k + 1);
      const double u1 = (static_cast<double>(x1) + 1.0) / 4294967296.0;  // exact: (0, 1]
      const double u2 = static_cast<double>(x2) / 4294967296.0;
      const double r = sqrt(-2.0 * log(u1));
      const double z = __dmul_rn(r, cos(__dmul_rn(6.283185307179586476925, u2)));
      v = __dadd_rn(a, __dmul_rn(b, z));
    } else {
      const uint32_t x = philox_u32(seed, offset + static_cast<uint64_t>(i));
      if constexpr (std::is_same<T, int32_t>::value) {
        v = __dadd_rn(a, floor(__dmul_rn(b - a, static_cast<double>(x) / 4294967296.0)));
      } else {
        v = __dadd_rn(a, __dmul_rn(b - a, static_cast<double>(uniform_from_u32(x))));
      }
    }
    o[i] = from_d<T>(v);
  }
}

// emu:begin ewconvert (copy's cast functor; test/cuda_emu/binmap_test.cpp)
// ---- copy --------------------------------------------------------------------------------
template <typename O, typename I>
struct Convert {
  __device__ __forceinline__ O operator()(I v) const {
    if constexpr (std::is_same<O, I>::value) return v;
    else if constexpr (std::is_same<O, float>::value && std::is_same<I, bf16_t>::value) return __bfloat162float(v);
    else if constexpr (std::is_same<O, bf16_t>::value && std::is_same<I, float>::value) return __float2bfloat16_rn(v);
    else return from_d<O>(to_d(v));
  }
};

// emu:end ewconvert

// Calls f(T{}) for the dtypes the GPU stores: float32, bfloat16, int32, bool.
template <typename F>
int dispatch_storage(const char* k, const View& v, F&& f) {
  switch (dt(v)) {
    case DType::F32: return f(float{});
    case DType::BF16: return f(bf16_t{});
    case DType::I32: return f(int32_t{});
    case DType::Bool: return f(uint8_t{});
    default: return dtype_error(k, v);
  }
}

// emu:begin ewunary (the unary ops' functors; test/cuda_emu/unary_test.cpp)
// ---- unary -------------------------------------------------------------------------------
template <UnaryOp OP>
__device__ __forceinline__ float unary_f(float x) {
  switch (OP) {
    case UnaryOp::Neg: return -x;
    case UnaryOp::Abs: return fabsf(x);
    case UnaryOp::Exp: return expf(x);
    case UnaryOp::Log: return logf(x);
    case UnaryOp::Sqrt: return sqrtf(x);
    case UnaryOp::Rsqrt: return 1.0f / sqrtf(x);  // not rsqrtf: that one is approximate
    case UnaryOp::Sin: return sinf(x);
    case UnaryOp::Cos: return cosf(x);
    case UnaryOp::Tanh: return act_tanh(x);
    case UnaryOp::Sigmoid: return act_sigmoid(x);
    case UnaryOp::Relu: return act_relu(x);
    case UnaryOp::Gelu: return act_gelu(x);
    case UnaryOp::GeluTanh: return act_gelu_tanh(x);
    case UnaryOp::Silu: return act_silu(x);
    case UnaryOp::Square: return x * x;
    case UnaryOp::Reciprocal: return 1.0f / x;
    case UnaryOp::Floor: return floorf(x);
    case UnaryOp::Ceil: return ceilf(x);
    case UnaryOp::Round: return rintf(x);  // half to even
    case UnaryOp::Sign: return x > 0.0f ? 1.0f : (x < 0.0f ? -1.0f : x);  // keeps 0, -0, NaN
    case UnaryOp::Erf: return erff(x);
    case UnaryOp::Log1p: return log1pf(x);
    case UnaryOp::Expm1: return expm1f(x);
    default: return x;
  }
}

template <typename T, UnaryOp OP>
struct UnaryFloat {
  __device__ __forceinline__ T operator()(T v) const { return st<T>(unary_f<OP>(ld(v))); }
};

template <UnaryOp OP>
struct UnaryInt {
  __device__ __forceinline__ int32_t operator()(int32_t x) const {
    const uint32_t u = static_cast<uint32_t>(x);
    switch (OP) {
      case UnaryOp::Neg: return static_cast<int32_t>(0u - u);
      case UnaryOp::Abs: return x < 0 ? static_cast<int32_t>(0u - u) : x;
      case UnaryOp::Square: return static_cast<int32_t>(u * u);
      case UnaryOp::Sign: return (x > 0) - (x < 0);
      default: return 0;
    }
  }
};

template <typename T>
struct LogicalNot {
  __device__ __forceinline__ uint8_t operator()(T v) const { return num(v) == 0 ? 1 : 0; }
};

// emu:end ewunary

template <typename T>
int unary_float(UnaryOp op, const View& out, const View& x) {
#define DR_UNARY_CASE(name, str) \
  case UnaryOp::name:            \
    return run_map1<T, T>("unary " str, out, x, UnaryFloat<T, UnaryOp::name>{});
  switch (op) {
    DR_UNARY_OP_VALUES(DR_UNARY_CASE)
    default: return set_error("unary: unknown op " + std::to_string(static_cast<int>(op)));
  }
#undef DR_UNARY_CASE
}

// ---- binary ------------------------------------------------------------------------------
// emu:begin ewbinary (the element functions of binary ops; test/cuda_emu/binary_test.cpp)
template <BinaryOp OP>
__device__ __forceinline__ float binary_f(float a, float b) {
  switch (OP) {
    case BinaryOp::Add: return a + b;
    case BinaryOp::Sub: return a - b;
    case BinaryOp::Mul: return a * b;
    case BinaryOp::Div: return a / b;
    case BinaryOp::Pow: return powf(a, b);
    case BinaryOp::Maximum: return (a != a || b != b) ? a + b : (a > b ? a : b);
    case BinaryOp::Minimum: return (a != a || b != b) ? a + b : (a < b ? a : b);
    case BinaryOp::FloorDiv: return floorf(a / b);
    case BinaryOp::Remainder: {
      float r = fmodf(a, b);  // the sign of the divisor, as Python and torch.remainder
      if (r != 0.0f && ((r < 0.0f) != (b < 0.0f))) r += b;
      return r;
    }
    default: return 0.0f;
  }
}

// int32 pow as the CPU computes it, from_double(pow(double a, double b)), but exact: CUDA's
// double pow is not correctly rounded, and 2.9999999 would truncate to 2.
__device__ __forceinline__ int32_t pow_int(int32_t a, int32_t b) {
  if (b < 0) {
    if (a == 1) return 1;
    if (a == -1) return (b & 1) ? -1 : 1;
    if (a == 0) return INT_MAX;  // pow(0, negative) = +inf, saturated
    return 0;                    // |a^b| < 1 truncates to 0
  }
  double r = 1.0, base = static_cast<double>(a);
  uint32_t e = static_cast<uint32_t>(b);
  while (e) {
    if (e & 1u) r *= base;
    e >>= 1;
    if (e) base *= base;
  }
  return from_d<int32_t>(r);
}

template <BinaryOp OP>
struct BinaryInt {
  __device__ __forceinline__ int32_t operator()(int32_t a, int32_t b) const {
    const uint32_t ua = static_cast<uint32_t>(a), ub = static_cast<uint32_t>(b);
    switch (OP) {
      case BinaryOp::Add: return static_cast<int32_t>(ua + ub);
      case BinaryOp::Sub: return static_cast<int32_t>(ua - ub);
      case BinaryOp::Mul: return static_cast<int32_t>(ua * ub);
      case BinaryOp::Div:
        if (b == 0) return 0;
        if (a == INT_MIN && b == -1) return a;
        return a / b;
      case BinaryOp::Pow: return pow_int(a, b);
      case BinaryOp::Maximum: return a > b ? a : b;
      case BinaryOp::Minimum: return a < b ? a : b;
      case BinaryOp::FloorDiv: {
        if (b == 0) return 0;
        if (a == INT_MIN && b == -1) return a;
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
};

template <typename T, BinaryOp OP>
struct BinaryFloat {
  __device__ __forceinline__ T operator()(T a, T b) const { return st<T>(binary_f<OP>(ld(a), ld(b))); }
};
// emu:end ewbinary

// emu:begin ewcompare (comparisons and logical ops; test/cuda_emu/binmap_test.cpp)
template <typename T, BinaryOp OP>
struct Compare {
  __device__ __forceinline__ uint8_t operator()(T x, T y) const {
    const auto a = num(x), b = num(y);
    switch (OP) {
      case BinaryOp::Eq: return a == b;
      case BinaryOp::Ne: return a != b;
      case BinaryOp::Lt: return a < b;
      case BinaryOp::Le: return a <= b;
      case BinaryOp::Gt: return a > b;
      case BinaryOp::Ge: return a >= b;
      case BinaryOp::LogicalAnd: return (a != 0) && (b != 0);
      case BinaryOp::LogicalOr: return (a != 0) || (b != 0);
      default: return 0;
    }
  }
};

// emu:end ewcompare

// out = a op b for stored type T; av/bv null means the host value aval/bval.
template <typename T>
int binary_typed(const char* name, BinaryOp op, const View& out, const View* av, T aval, const View* bv, T bval) {
  if (binary_is_compare(op)) {
    if (dt(out) != DType::Bool) return set_error(std::string(name) + ": comparison output must be bool");
    switch (op) {
      case BinaryOp::Eq: return run_map2<uint8_t, T>(name, out, av, aval, bv, bval, Compare<T, BinaryOp::Eq>{});
      case BinaryOp::Ne: return run_map2<uint8_t, T>(name, out, av, aval, bv, bval, Compare<T, BinaryOp::Ne>{});
      case BinaryOp::Lt: return run_map2<uint8_t, T>(name, out, av, aval, bv, bval, Compare<T, BinaryOp::Lt>{});
      case BinaryOp::Le: return run_map2<uint8_t, T>(name, out, av, aval, bv, bval, Compare<T, BinaryOp::Le>{});
      case BinaryOp::Gt: return run_map2<uint8_t, T>(name, out, av, aval, bv, bval, Compare<T, BinaryOp::Gt>{});
      case BinaryOp::Ge: return run_map2<uint8_t, T>(name, out, av, aval, bv, bval, Compare<T, BinaryOp::Ge>{});
      case BinaryOp::LogicalAnd:
        return run_map2<uint8_t, T>(name, out, av, aval, bv, bval, Compare<T, BinaryOp::LogicalAnd>{});
      case BinaryOp::LogicalOr:
        return run_map2<uint8_t, T>(name, out, av, aval, bv, bval, Compare<T, BinaryOp::LogicalOr>{});
      default: break;
    }
    return set_error(std::string(name) + ": unknown comparison");
  }
  if (out.dtype != static_cast<int32_t>(av ? av->dtype : bv->dtype))
    return set_error(std::string(name) + ": output dtype must match the inputs'");
  if constexpr (std::is_same<T, uint8_t>::value) {
    return set_error(std::string(name) + ": arithmetic on bool tensors is not supported (cast first)");
  } else if constexpr (std::is_same<T, int32_t>::value) {
#define DR_BIN_INT(OPNAME) \
  case BinaryOp::OPNAME: return run_map2<T, T>(name, out, av, aval, bv, bval, BinaryInt<BinaryOp::OPNAME>{});
    switch (op) {
      DR_BIN_INT(Add) DR_BIN_INT(Sub) DR_BIN_INT(Mul) DR_BIN_INT(Div) DR_BIN_INT(Pow) DR_BIN_INT(Maximum)
      DR_BIN_INT(Minimum) DR_BIN_INT(FloorDiv) DR_BIN_INT(Remainder)
      default: return set_error(std::string(name) + ": unknown op " + std::to_string(static_cast<int>(op)));
    }
#undef DR_BIN_INT
  } else {
#define DR_BIN_FLOAT(OPNAME) \
  case BinaryOp::OPNAME: return run_map2<T, T>(name, out, av, aval, bv, bval, BinaryFloat<T, BinaryOp::OPNAME>{});
    switch (op) {
      DR_BIN_FLOAT(Add) DR_BIN_FLOAT(Sub) DR_BIN_FLOAT(Mul) DR_BIN_FLOAT(Div) DR_BIN_FLOAT(Pow)
      DR_BIN_FLOAT(Maximum) DR_BIN_FLOAT(Minimum) DR_BIN_FLOAT(FloorDiv) DR_BIN_FLOAT(Remainder)
      default: return set_error(std::string(name) + ": unknown op " + std::to_string(static_cast<int>(op)));
    }
#undef DR_BIN_FLOAT
  }
}

// ---- where -------------------------------------------------------------------------------
// emu:begin ewwhere (test/cuda_emu/binmap_test.cpp)
template <typename U>
__global__ void where_flat(U* __restrict__ o, const uint8_t* __restrict__ c, int sc, const U* __restrict__ a, int sa,
                           const U* __restrict__ b, int sb, int64_t n) {
  for (int64_t i = gtid(); i < n; i += gstride()) o[i] = c[i * sc] ? a[i * sa] : b[i * sb];
}
template <typename U>
__global__ void where_strided(Layout<4> L, U* __restrict__ o, const uint8_t* __restrict__ c, const U* __restrict__ a,
                              const U* __restrict__ b, int64_t n) {
  for (int64_t i = gtid(); i < n; i += gstride()) {
    int64_t off[4];
    decode<4>(L, i, off);
    o[off[0]] = c[off[1]] ? a[off[2]] : b[off[3]];
  }
}
// emu:end ewwhere
template <typename U>
int where_bits(const View& out, const View& cond, const View& a, const View& b) {
  const int64_t n = view_numel(out);
  if (n == 0) return 0;
  const int64_t* strs[4] = {out.strides, cond.strides, a.strides, b.strides};
  const Layout<4> L = collapse<4>(out, strs);
  U* o = static_cast<U*>(out.data);
  const uint8_t* c = static_cast<const uint8_t*>(cond.data);
  const U* pa = static_cast<const U*>(a.data);
  const U* pb = static_cast<const U*>(b.data);
  if (is_flat(L)) {
    where_flat<U><<<grid_for(n), kThreads, 0, stream()>>>(o, c, static_cast<int>(L.str[1][0]), pa,
                                                          static_cast<int>(L.str[2][0]), pb,
                                                          static_cast<int>(L.str[3][0]), n);
  } else {
    where_strided<U><<<grid_for(n), kThreads, 0, stream()>>>(L, o, c, pa, pb, n);
  }
  return check_launch("where");
}

// emu:begin ewswiglu (test/cuda_emu/unary_test.cpp)
// ---- swiglu ------------------------------------------------------------------------------
template <typename T>
__global__ void swiglu_kernel(T* __restrict__ o, const T* __restrict__ x, int64_t n, int64_t h) {
  for (int64_t i = gtid(); i < n; i += gstride()) {
    const int64_t r = i / h, j = i - r * h;
    const T* row = x + r * 2 * h;
    const float g = ld(row[j]), u = ld(row[h + j]);
    o[i] = st<T>(act_silu(g) * u);
  }
}

// emu:end ewswiglu

}  // namespace

// ---- entries -----------------------------------------------------------------------------
int fill(const View* out, double value) {
  DR_CUDA_ENTRY_BEGIN
  switch (dt(*out)) {
    case DType::F32: return fill_bits<uint32_t>(*out, bits_of<uint32_t>(host_from_d<float>(value)));
    case DType::BF16: return fill_bits<uint16_t>(*out, float_to_bf16(static_cast<float>(value)).bits);
    case DType::I32: return fill_bits<uint32_t>(*out, bits_of<uint32_t>(host_from_d<int32_t>(value)));
    case DType::Bool: return fill_bits<uint8_t>(*out, host_from_d<uint8_t>(value));
    default: return dtype_error("fill", *out);
  }
  DR_CUDA_ENTRY_END("fill")
}

int arange(const View* out, double start, double step) {
  DR_CUDA_ENTRY_BEGIN
  const int64_t n = view_numel(*out);
  if (!view_contiguous(*out)) return set_error("arange: output must be contiguous");
  return dispatch_storage("arange", *out, [&](auto tag) {
    using T = decltype(tag);
    if (n == 0) return 0;
    arange_kernel<T><<<grid_for(n), kThreads, 0, stream()>>>(static_cast<T*>(out->data), n, start, step);
    return check_launch("arange");
  });
  DR_CUDA_ENTRY_END("arange")
}

int random(const View* out, int32_t kind, uint64_t seed, uint64_t offset, double a, double b) {
  DR_CUDA_ENTRY_BEGIN
  if (kind != static_cast<int32_t>(RandomKind::Uniform) && kind != static_cast<int32_t>(RandomKind::Normal))
    return set_error("random: unknown kind " + std::to_string(kind));
  if (!view_contiguous(*out)) return set_error("random: output must be contiguous");
  const int64_t n = view_numel(*out);
  return dispatch_storage("random", *out, [&](auto tag) {
    using T = decltype(tag);
    if (n == 0) return 0;
    random_kernel<T><<<grid_for(n), kThreads, 0, stream()>>>(static_cast<T*>(out->data), n,
                                                             kind == static_cast<int32_t>(RandomKind::Normal), seed,
                                                             offset, a, b);
    return check_launch("random");
  });
  DR_CUDA_ENTRY_END("random")
}

int copy(const View* out, const View* in) {
  DR_CUDA_ENTRY_BEGIN
  const int64_t n = view_numel(*out);
  if (view_numel(*in) != n) return set_error("copy: shapes differ");
  if (n == 0) return 0;
  if (out->dtype == in->dtype && view_contiguous(*out) && view_contiguous(*in)) {
    if (out->data == in->data) return 0;
    const int64_t bytes = n * dtype_size(dt(*out));
    if (dt(*out) == DType::F64) return f64_error("copy");
    return check(cudaMemcpyAsync(out->data, in->data, static_cast<size_t>(bytes), cudaMemcpyDeviceToDevice, stream()),
                 "copy");
  }
  return dispatch_storage("copy", *out, [&](auto otag) {
    using O = decltype(otag);
    return dispatch_storage("copy", *in, [&](auto itag) {
      using I = decltype(itag);
      return run_map1<O, I>("copy", *out, *in, Convert<O, I>{});
    });
  });
  DR_CUDA_ENTRY_END("copy")
}

int unary(int32_t op_i, const View* out, const View* x) {
  DR_CUDA_ENTRY_BEGIN
  const UnaryOp op = static_cast<UnaryOp>(op_i);
  if (op_i < 0 || op >= UnaryOp::Count) return set_error("unary: unknown op " + std::to_string(op_i));
  if (op == UnaryOp::LogicalNot) {
    if (dt(*out) != DType::Bool) return set_error("logicalNot: output must be bool");
    return dispatch_storage("logicalNot", *x, [&](auto tag) {
      using T = decltype(tag);
      return run_map1<uint8_t, T>("logicalNot", *out, *x, LogicalNot<T>{});
    });
  }
  if (out->dtype != x->dtype) return set_error("unary: output dtype must match the input's");
  switch (dt(*x)) {
    case DType::F32: return unary_float<float>(op, *out, *x);
    case DType::BF16: return unary_float<bf16_t>(op, *out, *x);
    case DType::I32:
      switch (op) {
        case UnaryOp::Neg: return run_map1<int32_t, int32_t>("unary neg", *out, *x, UnaryInt<UnaryOp::Neg>{});
        case UnaryOp::Abs: return run_map1<int32_t, int32_t>("unary abs", *out, *x, UnaryInt<UnaryOp::Abs>{});
        case UnaryOp::Square: return run_map1<int32_t, int32_t>("unary square", *out, *x, UnaryInt<UnaryOp::Square>{});
        case UnaryOp::Sign: return run_map1<int32_t, int32_t>("unary sign", *out, *x, UnaryInt<UnaryOp::Sign>{});
        default: return set_error("unary: this op needs a float tensor, got int32");
      }
    case DType::Bool: return set_error("unary: this op needs a float tensor, got bool");
    default: return dtype_error("unary", *x);
  }
  DR_CUDA_ENTRY_END("unary")
}

int binary(int32_t op_i, const View* out, const View* a, const View* b) {
  DR_CUDA_ENTRY_BEGIN
  const BinaryOp op = static_cast<BinaryOp>(op_i);
  if (op_i < 0 || op >= BinaryOp::Count) return set_error("binary: unknown op " + std::to_string(op_i));
  if (a->dtype != b->dtype) return set_error("binary: operands must share a dtype");
  return dispatch_storage("binary", *a, [&](auto tag) {
    using T = decltype(tag);
    return binary_typed<T>("binary", op, *out, a, T{}, b, T{});
  });
  DR_CUDA_ENTRY_END("binary")
}

int binary_scalar(int32_t op_i, const View* out, const View* a, double s, int32_t scalar_first) {
  DR_CUDA_ENTRY_BEGIN
  const BinaryOp op = static_cast<BinaryOp>(op_i);
  if (op_i < 0 || op >= BinaryOp::Count) return set_error("binary_scalar: unknown op " + std::to_string(op_i));
  return dispatch_storage("binary_scalar", *a, [&](auto tag) {
    using T = decltype(tag);
    // The scalar takes a's dtype first (bf16-rounded, int-truncated), as on the CPU.
    const T sv = host_from_d<T>(s);
    if (scalar_first) return binary_typed<T>("binary_scalar", op, *out, nullptr, sv, a, T{});
    return binary_typed<T>("binary_scalar", op, *out, a, T{}, nullptr, sv);
  });
  DR_CUDA_ENTRY_END("binary_scalar")
}

int where(const View* out, const View* cond, const View* a, const View* b) {
  DR_CUDA_ENTRY_BEGIN
  if (dt(*cond) != DType::Bool) return set_error("where: condition must be bool");
  if (a->dtype != out->dtype || b->dtype != out->dtype) return set_error("where: a, b and out must share a dtype");
  switch (dt(*out)) {
    case DType::F32:
    case DType::I32: return where_bits<uint32_t>(*out, *cond, *a, *b);
    case DType::BF16: return where_bits<uint16_t>(*out, *cond, *a, *b);
    case DType::Bool: return where_bits<uint8_t>(*out, *cond, *a, *b);
    default: return dtype_error("where", *out);
  }
  DR_CUDA_ENTRY_END("where")
}

int swiglu(const View* out, const View* x) {
  DR_CUDA_ENTRY_BEGIN
  if (out->dtype != x->dtype) return set_error("swiglu: output dtype must match the input's");
  if (!view_contiguous(*out) || !view_contiguous(*x)) return set_error("swiglu: tensors must be contiguous");
  const int64_t h = out->ndim ? out->shape[out->ndim - 1] : 1;
  const int64_t n = view_numel(*out);
  if (view_numel(*x) != 2 * n) return set_error("swiglu: input must be [rows, 2*h] for output [rows, h]");
  if (n == 0) return 0;
  switch (dt(*x)) {
    case DType::F32:
      swiglu_kernel<float><<<grid_for(n), kThreads, 0, stream()>>>(static_cast<float*>(out->data),
                                                                   static_cast<const float*>(x->data), n, h);
      break;
    case DType::BF16:
      swiglu_kernel<bf16_t><<<grid_for(n), kThreads, 0, stream()>>>(static_cast<bf16_t*>(out->data),
                                                                    static_cast<const bf16_t*>(x->data), n, h);
      break;
    default: return dtype_error("swiglu", *x);
  }
  return check_launch("swiglu");
  DR_CUDA_ENTRY_END("swiglu")
}

}  // namespace cuda
}  // namespace dualroute
