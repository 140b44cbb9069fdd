// Portable SIMD through GCC/Clang vector extensions. The width follows the instruction set
// the file is compiled for (64 bytes with AVX-512, 32 with AVX2, 16 otherwise), so one
// source gives each variant its natural width; the compiler emits the FMA, blend and
// conversion instructions of that level.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

#include "../core/dtype.h"

// Forms on several vectors (VN below) pass them by value; they must be inlined to stay in
// registers (GCC would otherwise call the larger ones out of line and pass VN<4> in memory).
#define DR_VINLINE inline __attribute__((always_inline))

namespace dualroute {
namespace cpu {
namespace DR_ISA {

#if defined(__AVX512F__)
constexpr int kVecBytes = 64;
#elif defined(__AVX2__)
constexpr int kVecBytes = 32;
#else
constexpr int kVecBytes = 16;
#endif
constexpr int kVecF = kVecBytes / 4;  // floats per vector

typedef float vf __attribute__((vector_size(kVecBytes)));
typedef int32_t vi __attribute__((vector_size(kVecBytes)));
typedef uint32_t vu __attribute__((vector_size(kVecBytes)));
typedef uint16_t vh __attribute__((vector_size(kVecBytes / 2)));

DR_VINLINE vf vload(const float* p) {
  vf v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}
DR_VINLINE void vstore(float* p, vf v) { std::memcpy(p, &v, sizeof(v)); }
DR_VINLINE vf vset1(float x) { return vf{} + x; }

// bfloat16 <-> float, kVecF lanes at a time (round to nearest even, like float_to_bf16).
DR_VINLINE vf vload(const bf16* p) {
  vh h;
  std::memcpy(&h, p, sizeof(h));
  vu u = __builtin_convertvector(h, vu) << 16;
  vf f;
  std::memcpy(&f, &u, sizeof(f));
  return f;
}
DR_VINLINE void vstore(bf16* p, vf v) {
  vu u;
  std::memcpy(&u, &v, sizeof(u));
  vu nan = (u & 0x7fffffffu) > 0x7f800000u;  // all ones where NaN
  vu r = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
  r = (nan & ((u >> 16) | 0x40u)) | (~nan & r);
  vh h = __builtin_convertvector(r, vh);
  std::memcpy(p, &h, sizeof(h));
}

// Lane-wise square root: one sqrtps at the file's instruction set level.
inline vf vsqrt(vf x) {
#if defined(__AVX512F__)
  return reinterpret_cast<vf>(_mm512_maskz_sqrt_ps(0xFFFF, reinterpret_cast<__m512>(x)));  // maskz: no undefined operand to warn about
#elif defined(__AVX__)
  return reinterpret_cast<vf>(_mm256_sqrt_ps(reinterpret_cast<__m256>(x)));
#elif defined(__SSE2__)
  return reinterpret_cast<vf>(_mm_sqrt_ps(reinterpret_cast<__m128>(x)));
#else
  vf r;
  for (int i = 0; i < kVecF; ++i) r[i] = __builtin_sqrtf(x[i]);
  return r;
#endif
}

DR_VINLINE vf vmax(vf a, vf b) { return a > b ? a : b; }
inline vf vmin(vf a, vf b) { return a < b ? a : b; }

inline float hsum(vf v) {
  float s = 0;
  for (int i = 0; i < kVecF; ++i) s += v[i];
  return s;
}
inline float hmax(vf v) {
  float m = v[0];
  for (int i = 1; i < kVecF; ++i) m = v[i] > m ? v[i] : m;
  return m;
}

// a * b + c, fused (one rounding) where the instruction set has FMA: the same bits whatever
// the including file's -ffp-contract (elementwise.cpp compiles with contraction off), and
// one instruction instead of two.
DR_VINLINE vf vfma(vf a, vf b, vf c) {
#if defined(__AVX512F__)
  return reinterpret_cast<vf>(_mm512_fmadd_ps(reinterpret_cast<__m512>(a), reinterpret_cast<__m512>(b),
                                              reinterpret_cast<__m512>(c)));
#elif defined(__FMA__) && defined(__AVX__)
  return reinterpret_cast<vf>(_mm256_fmadd_ps(reinterpret_cast<__m256>(a), reinterpret_cast<__m256>(b),
                                              reinterpret_cast<__m256>(c)));
#else
  return a * b + c;
#endif
}
inline vf vfma(vf a, float b, float c) { return vfma(a, vset1(b), vset1(c)); }

// |x| by clearing the sign bits (NaN stays NaN).
DR_VINLINE vf vabs(vf x) {
  vu u;
  std::memcpy(&u, &x, sizeof(u));
  u &= 0x7fffffffu;
  vf r;
  std::memcpy(&r, &u, sizeof(r));
  return r;
}

// Whether every lane of a comparison result (all ones or zero per lane) is set: one movemask
// (or mask test) and a compare, for the fast paths below.
DR_VINLINE bool vall(vi m) {
#if defined(__AVX512F__)
  return _mm512_test_epi32_mask(reinterpret_cast<__m512i>(m), reinterpret_cast<__m512i>(m)) == 0xFFFF;
#elif defined(__AVX__)
  return _mm256_movemask_ps(reinterpret_cast<__m256>(m)) == 0xFF;
#elif defined(__SSE2__)
  return _mm_movemask_ps(reinterpret_cast<__m128>(m)) == 0xF;
#else
  for (int i = 0; i < kVecF; ++i)
    if (!m[i]) return false;
  return true;
#endif
}

// The reciprocal estimate of each lane (12 bits; 14 with AVX-512; exact division without SSE).
DR_VINLINE vf vrcp_est(vf d) {
#if defined(__AVX512F__)
  return reinterpret_cast<vf>(_mm512_maskz_rcp14_ps(0xFFFF, reinterpret_cast<__m512>(d)));  // maskz: as vsqrt
#elif defined(__AVX__)
  return reinterpret_cast<vf>(_mm256_rcp_ps(reinterpret_cast<__m256>(d)));
#elif defined(__SSE2__)
  return reinterpret_cast<vf>(_mm_rcp_ps(reinterpret_cast<__m128>(d)));
#else
  return 1.0f / d;
#endif
}

// ---- several vectors in step -----------------------------------------------------------
// VN<U> holds U vectors that every operation below processes together, one instruction per
// vector, so that U independent dependency chains stand side by side in the instruction
// stream. The element-wise forms are chains of 20-40 dependent operations per vector: one
// vector at a time, the out-of-order window holds about one and a half of them and the FMA
// pipes wait on latency (GCC does not schedule across them on x86); four in step keep the pipes
// busy. The forms below are written once, as templates over V = vf or VN<U>: a lane's result is
// the same bits whichever V computes it.
template <int U>
struct VN {
  vf v[U];
};
template <int U>
struct MN {  // lane masks of a comparison of VN<U>
  vi v[U];
};
#define DR_VN_FOR _Pragma("GCC unroll 8") for (int k = 0; k < U; ++k)
#define DR_VN_BINARY(OP)                                                                   \
  template <int U>                                                                         \
  DR_VINLINE VN<U> operator OP(VN<U> a, VN<U> b) {                                             \
    VN<U> r;                                                                               \
    DR_VN_FOR r.v[k] = a.v[k] OP b.v[k];                                                   \
    return r;                                                                              \
  }                                                                                        \
  template <int U>                                                                         \
  DR_VINLINE VN<U> operator OP(VN<U> a, float b) {                                             \
    VN<U> r;                                                                               \
    DR_VN_FOR r.v[k] = a.v[k] OP b;                                                        \
    return r;                                                                              \
  }                                                                                        \
  template <int U>                                                                         \
  DR_VINLINE VN<U> operator OP(float a, VN<U> b) {                                             \
    VN<U> r;                                                                               \
    DR_VN_FOR r.v[k] = a OP b.v[k];                                                        \
    return r;                                                                              \
  }
DR_VN_BINARY(+)
DR_VN_BINARY(-)
DR_VN_BINARY(*)
DR_VN_BINARY(/)
#undef DR_VN_BINARY
#define DR_VN_COMPARE(OP)                                                                  \
  template <int U>                                                                         \
  DR_VINLINE MN<U> operator OP(VN<U> a, float b) {                                             \
    MN<U> r;                                                                               \
    DR_VN_FOR r.v[k] = a.v[k] OP b;                                                        \
    return r;                                                                              \
  }
DR_VN_COMPARE(<)
DR_VN_COMPARE(>)
DR_VN_COMPARE(<=)
DR_VN_COMPARE(>=)
#undef DR_VN_COMPARE
template <int U>
DR_VINLINE VN<U> operator-(VN<U> a) {
  VN<U> r;
  DR_VN_FOR r.v[k] = -a.v[k];
  return r;
}
template <int U>
DR_VINLINE MN<U> operator&(MN<U> a, MN<U> b) {
  MN<U> r;
  DR_VN_FOR r.v[k] = a.v[k] & b.v[k];
  return r;
}
template <int U>
DR_VINLINE bool vall(MN<U> m) {
  vi a = m.v[0];
  for (int k = 1; k < U; ++k) a &= m.v[k];
  return vall(a);
}
// m ? a : b lane by lane.
DR_VINLINE vf vsel(vi m, vf a, vf b) { return m ? a : b; }
template <int U>
DR_VINLINE VN<U> vsel(MN<U> m, VN<U> a, VN<U> b) {
  VN<U> r;
  DR_VN_FOR r.v[k] = m.v[k] ? a.v[k] : b.v[k];
  return r;
}
template <int U>
DR_VINLINE VN<U> vfma(VN<U> a, VN<U> b, VN<U> c) {
  VN<U> r;
  DR_VN_FOR r.v[k] = vfma(a.v[k], b.v[k], c.v[k]);
  return r;
}
template <int U>
DR_VINLINE VN<U> vabs(VN<U> a) {
  VN<U> r;
  DR_VN_FOR r.v[k] = vabs(a.v[k]);
  return r;
}
template <int U>
DR_VINLINE VN<U> vrcp_est(VN<U> a) {
  VN<U> r;
  DR_VN_FOR r.v[k] = vrcp_est(a.v[k]);
  return r;
}
// p * 2^n for float lanes p in [1/2, 2) and n in [-125, 127], where t = n + 1.5 * 2^23 (the
// shifter's rounding leaves n in t's low mantissa bits; shifting t's bits by 23 leaves n << 23):
// n is added to p's exponent bits.
DR_VINLINE vf vscale_shifted(vf p, vf t) {
  vi ti, pi;
  std::memcpy(&ti, &t, sizeof(ti));
  std::memcpy(&pi, &p, sizeof(pi));
  pi += ti << 23;
  vf r;
  std::memcpy(&r, &pi, sizeof(r));
  return r;
}
template <int U>
DR_VINLINE VN<U> vscale_shifted(VN<U> p, VN<U> t) {
  VN<U> r;
  DR_VN_FOR r.v[k] = vscale_shifted(p.v[k], t.v[k]);
  return r;
}
// U vectors from / to memory (float32 or bfloat16), kVecF apart.
template <int U, typename T>
DR_VINLINE VN<U> vloadn(const T* p) {
  VN<U> r;
  DR_VN_FOR r.v[k] = vload(p + k * kVecF);
  return r;
}
template <int U, typename T>
DR_VINLINE void vstoren(T* p, VN<U> x) {
  DR_VN_FOR vstore(p + k * kVecF, x.v[k]);
}
// A float32 store that goes around the caches to memory (p aligned to kVecBytes): for an output
// too large to be read again from cache, it saves the read of each line a store would first
// fetch. Weakly ordered: the writer ends with vstream_fence() before its work is handed on.
DR_VINLINE void vstream(float* p, vf v) {
#if defined(__AVX512F__)
  _mm512_stream_ps(p, reinterpret_cast<__m512>(v));
#elif defined(__AVX2__)
  _mm256_stream_ps(p, reinterpret_cast<__m256>(v));
#else
  _mm_stream_ps(p, reinterpret_cast<__m128>(v));
#endif
}
template <int U>
DR_VINLINE void vstreamn(float* p, VN<U> x) {
  DR_VN_FOR vstream(p + k * kVecF, x.v[k]);
}
DR_VINLINE void vstream_fence() { _mm_sfence(); }
// vstore / vstoren, or vstream / vstreamn where `stream` is set and T is float32.
template <typename T>
DR_VINLINE void vput(T* p, vf x, bool stream) {
  if constexpr (std::is_same_v<T, float>) {
    if (stream) return vstream(p, x);
  }
  vstore(p, x);
}
template <int U, typename T>
DR_VINLINE void vputn(T* p, VN<U> x, bool stream) {
  if constexpr (std::is_same_v<T, float>) {
    if (stream) return vstreamn<U>(p, x);
  }
  vstoren<U>(p, x);
}
#undef DR_VN_FOR

// c in every lane of a V (vf or VN<U>).
template <class V>
struct Splat;
template <>
struct Splat<vf> {
  static vf of(float c) { return vset1(c); }
};
template <int U>
struct Splat<VN<U>> {
  static VN<U> of(float c) {
    VN<U> r;
    for (int k = 0; k < U; ++k) r.v[k] = vset1(c);
    return r;
  }
};
template <class V>
DR_VINLINE V vsplat(float c) {
  return Splat<V>::of(c);
}

// 1 / d for d in [1, 2^126): the reciprocal estimate and one Newton step r + r (1 - d r),
// relative error below 2.5e-7 (about 2 ulp). Not for other d (the estimate flushes to 0 from
// 2^126 up; d = 0 or inf gives NaN).
template <class V>
DR_VINLINE V vrcp_nr(V d) {
#if defined(__SSE2__)
  const V r = vrcp_est(d);
  return vfma(r, vfma(-d, r, vsplat<V>(1.0f)), r);
#else
  return 1.0f / d;
#endif
}

// e^(x - n ln2) for integral n with |x - n ln2| <= ln2/2: the Cody-Waite split of ln2 and a
// degree-6 polynomial (shared by vexp and vexp_softmax).
template <class V>
DR_VINLINE V exp_reduced(V x, V n) {
  V r = vfma(n, vsplat<V>(-0.693359375f), x);
  r = vfma(n, vsplat<V>(2.12194440e-4f), r);
  V p = vfma(vsplat<V>(1.9875691500e-4f), r, vsplat<V>(1.3981999507e-3f));
  p = vfma(p, r, vsplat<V>(8.3334519073e-3f));
  p = vfma(p, r, vsplat<V>(4.1665795894e-2f));
  p = vfma(p, r, vsplat<V>(1.6666665459e-1f));
  p = vfma(p, r, vsplat<V>(5.0000001201e-1f));
  return vfma(p, r * r, r) + 1.0f;
}

// The bounds of vexp's fast path: there x needs no clamp, 2^n (n = round(x / ln2), from -126
// to 127) is a normal float, and so is e^x.
constexpr float kExpLo = -87.33654022216797f;  // ln(FLT_MIN): x * log2(e) = -126 (r >= 0)
constexpr float kExpFastHi = 88.37f;          // x * log2(e) < 127.5: n <= 127

// e^x for x in [kExpLo, kExpFastHi] (in-range lanes only: no clamps, no NaN or overflow
// handling). n is rounded by adding the 1.5 * 2^23 shifter (its low mantissa bits then hold
// n) and 2^n is added to the result's exponent bits: t's bits are 0x4B400000 + n, and
// shifting them by 23 leaves n << 23 (the shifter's bits shift out).
template <class V>
DR_VINLINE V vexp_inrange(V x) {
  const V shifter = vsplat<V>(12582912.0f);
  const V t = vfma(x, vsplat<V>(1.44269504088896341f), shifter);
  const V n = t - shifter;
  return vscale_shifted(exp_reduced(x, n), t);
}

// 2^e for e in [-125, 0.5]: n = round(e) by the shifter, f = e - n (exact) in [-1/2, 1/2], 2^f by
// a degree-6 fit (relative error under 1e-7 in float arithmetic; attention.cpp's vexp_sm uses
// the same fit), n added to the exponent bits. No range handling.
template <class V>
DR_VINLINE V vexp2_inrange(V e) {
  const V shifter = vsplat<V>(12582912.0f);
  const V t = e + shifter;
  const V f = e - (t - shifter);
  V p = vfma(vsplat<V>(1.534578768769279e-4f), f, vsplat<V>(1.3399930903688073e-3f));
  p = vfma(p, f, vsplat<V>(9.618489071726799e-3f));
  p = vfma(p, f, vsplat<V>(5.550328642129898e-2f));
  p = vfma(p, f, vsplat<V>(2.4022646248340607e-1f));
  p = vfma(p, f, vsplat<V>(6.931471824645996e-1f));
  p = vfma(p, f, vsplat<V>(1.0f));
  return vscale_shifted(p, t);
}

// vexp for vectors with a lane outside the fast range (or NaN): the clamps and fix-ups. On
// in-range lanes it computes what vexp_inrange does, bit for bit.
__attribute__((noinline)) inline vf vexp_full(vf x) {
  const vf hi = vset1(88.72283935546875f), lo = vset1(kExpLo), shifter = vset1(12582912.0f);
  vf xc = x < lo ? lo : x;  // a NaN compares false and stays
  xc = xc > hi ? hi : xc;
  const vf t = vfma(xc, vset1(1.44269504088896341f), shifter);
  const vf n = t - shifter;
  const vf p = exp_reduced(xc, n);
  vi ti, pi;
  std::memcpy(&ti, &t, sizeof(ti));
  std::memcpy(&pi, &p, sizeof(pi));
  const vi ni = ti - 0x4B400000;
  // n = 128 (x within ln2/2 of the top) is applied as 2^127 * 2, so that p * 2^128 rounds to
  // FLT_MAX or overflows to inf instead of spilling into the NaN encodings
  const vi top = ni > 127;
  pi += (top ? vi{} + 127 : ni) << 23;
  vf res;
  std::memcpy(&res, &pi, sizeof(res));
  res = top ? res * 2.0f : res;
  res = x > hi ? vset1(INFINITY) : res;
  res = x < lo ? vset1(0.0f) : res;
  return x != x ? x : res;
}

// Whether every lane of x is in vexp's fast range (false for a NaN lane).
DR_VINLINE bool vexp_fast_ok(vf x) { return vall((x >= kExpLo) & (x <= kExpFastHi)); }

// exp(x) for float lanes, relative error about 2 ulp over the whole range: x = n ln2 + r with
// |r| <= ln2/2 (Cody-Waite split of ln2), e^r by a degree-6 polynomial, 2^n added to the
// result's exponent bits. Below -87.3 gives 0 (also for -inf), above 88.7 gives +inf, NaN
// stays NaN. A vector whose lanes are all in [-87.3, 88.37] (one test) skips the clamps and
// fix-ups of vexp_full; each lane's result is the same on either path.
DR_VINLINE vf vexp(vf x) {
  if (__builtin_expect(vexp_fast_ok(x), 1)) return vexp_inrange(x);
  return vexp_full(x);
}

// e^x for the arguments of an online softmax (x - max <= 0, -inf, or NaN). NaN stays NaN;
// below -87.3 (and -inf) gives 0. Not for x above ~88 (no overflow to +inf). A vector with
// every lane at or above -87.3 takes vexp_inrange (the same bits: p * 2^n is exact there).
inline vf vexp_softmax(vf x) {
  if (__builtin_expect(vall(x >= kExpLo), 1)) return vexp_inrange(x);
  const vf lo = vset1(kExpLo), shifter = vset1(12582912.0f);
  const vf xc = x < lo ? lo : x;  // a NaN compares false and stays
  const vf t = vfma(xc, vset1(1.44269504088896341f), shifter);
  const vf n = t - shifter;
  const vf p = exp_reduced(xc, n);
  vi e;
  std::memcpy(&e, &t, sizeof(e));
  // the shifter's bits plus n in the low mantissa bits: n + 127 into the exponent field
  e = (e - 0x4B400000 + 127) << 23;
  vf sc;
  std::memcpy(&sc, &e, sizeof(sc));
  const vf res = p * sc;
  return x < lo ? vset1(0.0f) : res;
}

// The degree-9 polynomial of Numerical Recipes' erfcc in t (see verfc), by Horner's rule
// (fewer multiplies than Estrin's scheme: these loops are bound by the FMA pipes). c0 is its
// constant term, -1.26551223 (vnormcdf folds a factor 1/2 into it).
inline vf erfc_poly(vf t, float c0 = -1.26551223f) {
  vf p = vfma(vset1(0.17087277f), t, vset1(-0.82215223f));
  p = vfma(p, t, vset1(1.48851587f));
  p = vfma(p, t, vset1(-1.13520398f));
  p = vfma(p, t, vset1(0.27886807f));
  p = vfma(p, t, vset1(-0.18628806f));
  p = vfma(p, t, vset1(0.09678418f));
  p = vfma(p, t, vset1(0.37409196f));
  p = vfma(p, t, vset1(1.00002368f));
  return vfma(p, t, vset1(c0));
}

// erfc(z) by the Chebyshev fit of Numerical Recipes' erfcc: for z >= 0,
// t exp(-z^2 + P(t)) with t = 1 / (1 + z/2) and P of degree 9, fractional error below 1.2e-7
// over the whole range (so 1 - erf keeps its relative accuracy in the tail, where
// 1 - erf(z) computed as a difference would not); erfc(-z) = 2 - erfc(z). Where |z| <= 9 the
// exp's argument is in its fast range: a vector with a lane beyond (or NaN) takes the exp's
// fix-ups.
inline vf verfc(vf z) {
  const vf a = vabs(z);
  const vf d = vfma(a, 0.5f, 1.0f);
  const vi ok = a <= 9.0f;  // NaN compares false
  vf r;
  const vf t = 1.0f / d;
  const vf arg = vfma(-a, a, erfc_poly(t));
  if (__builtin_expect(vall(ok), 1)) r = t * vexp_inrange(arg);
  else r = t * vexp_full(arg);
  return z < 0 ? 2.0f - r : r;
}

// erf(x) = 1 - erfc(|x|), signed, for |x| >= 0.5; near 0, where that difference loses the
// relative accuracy of erf itself, the Maclaurin series
// 2/sqrt(pi) (x - x^3/3 + x^5/10 - x^7/42 + x^9/216 - x^11/1320).
inline vf verf(vf x) {
  const vf ax = vabs(x);
  const vf e = 1.0f - verfc(ax);
  const vf y = x < 0 ? -e : e;
  const vf x2 = x * x;
  vf p = vfma(vset1(-1.0f / 1320.0f), x2, vset1(1.0f / 216.0f));
  p = vfma(p, x2, vset1(-1.0f / 42.0f));
  p = vfma(p, x2, vset1(1.0f / 10.0f));
  p = vfma(p, x2, vset1(-1.0f / 3.0f));
  p = vfma(p, x2, vset1(1.0f));
  return ax < 0.5f ? 1.1283791670955126f * x * p : y;
}

// GELU's Gaussian CDF, Phi(x) = erfc(-x / sqrt 2) / 2: relatively accurate in the lower tail
// too, so x Phi(x) keeps float32's relative precision for x down to about -13. verfc's form
// with the 1/2 folded into the exp (its argument's constant term less ln 2): for x <= 0,
// Phi = t exp(-a^2 + P(t) - ln 2) with a = |x| / sqrt 2, and 1 - that for x > 0.
inline vf vnormcdf(vf x) {
  const vf a = vabs(x) * 0.70710678118654752f;
  const vf t = 1.0f / vfma(a, 0.5f, 1.0f);
  const vf arg = vfma(-a, a, erfc_poly(t, -1.26551223f - 0.69314718055994531f));
  // |x| <= 12.7 (a <= 9): the exp's argument is above -83, in its fast range
  const vf r = t * (__builtin_expect(vall(a <= 9.0f), 1) ? vexp_inrange(arg) : vexp_full(arg));
  return x > 0 ? 1.0f - r : r;
}

// tanh(x) = x P(x^2) / Q(x^2) on |x| <= 9 (P of degree 6, Q of degree 3 in x^2: a
// relative-error minimax fit by scripts/fit-tanh.py, 7e-9 before rounding to float32), the
// result clamped to [-1, 1], and +-1 beyond |x| = 9 (where tanh rounds to +-1 or 1 ulp
// below). Relative error below 3.1e-7 (about 3 ulp up to |x| = 2, 5 ulp next to 1), as the
// exp-based form it replaces; exactly odd, tiny x gives x, NaN stays NaN. No exp and no
// branch: one division.
DR_VINLINE vf vtanh(vf x) {
  const vf s = x * x;
  vf p = vfma(vset1(-8.488376018e-14f), s, vset1(5.277837195e-11f));
  p = vfma(p, s, vset1(-2.022503232e-08f));
  p = vfma(p, s, vset1(1.115426858e-05f));
  p = vfma(p, s, vset1(3.103952855e-03f));
  p = vfma(p, s, vset1(1.308400780e-01f));
  p = vfma(p, s, vset1(1.0f));
  vf q = vfma(vset1(2.546140167e-04f), s, vset1(2.449516580e-02f));
  q = vfma(q, s, vset1(4.641733468e-01f));
  q = vfma(q, s, vset1(1.0f));
  vf r = x * p / q;  // NaN for huge |x| (inf / inf): replaced below
  r = r > 1.0f ? vset1(1.0f) : r;  // a NaN compares false and stays
  r = r < -1.0f ? vset1(-1.0f) : r;
  vu sx, one;
  std::memcpy(&sx, &x, sizeof(sx));
  const vf v1 = vset1(1.0f);
  std::memcpy(&one, &v1, sizeof(one));
  one |= sx & 0x80000000u;  // +-1 with x's sign
  vf sat;
  std::memcpy(&sat, &one, sizeof(sat));
  return vabs(x) > 9.0f ? sat : r;
}

}  // namespace DR_ISA
}  // namespace cpu
}  // namespace dualroute
