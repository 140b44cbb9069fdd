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

inline vf vload(const float* p) {
  vf v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}
inline void vstore(float* p, vf v) { std::memcpy(p, &v, sizeof(v)); }
inline vf vset1(float x) { return vf{} + x; }

// bfloat16 <-> float, kVecF lanes at a time (round to nearest even, like float_to_bf16).
inline vf vload(const bf16* p) {
  vh h;
  std::memcpy(&h, p, sizeof(h));
  vu u = __builtin_convertvector(h, vu) << 16;
  vf f;
  std::memcpy(&f, &u, sizeof(f));
  return f;
}
inline void vstore(bf16* p, vf v) {
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

inline vf vmax(vf a, vf b) { return a > b ? a : b; }
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

// e^(x - n ln2) for integral n with |x - n ln2| <= ln2/2: the Cody-Waite split of ln2 and a
// degree-6 polynomial (shared by vexp and vexp_softmax).
inline vf exp_reduced(vf x, vf n) {
  vf r = x - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  vf p = vset1(1.9875691500e-4f);
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  return p * r * r + r + 1.0f;
}

// exp(x) for float lanes, relative error about 2 ulp over the whole range: x = n ln2 + r with
// |r| <= ln2/2 (Cody-Waite split of ln2), e^r by a degree-6 polynomial, n rounded by adding
// the 1.5 * 2^23 shifter (its low mantissa bits then hold n), and 2^n added to the result's
// exponent bits. Below -87.3 gives 0 (also for -inf), above 88.7 gives +inf, NaN stays NaN.
// n reaches -126 only where r >= 0 (x is clamped at -87.3 ~ -126 ln2), so p >= 1 there and
// the sum of exponents stays normal.
inline vf vexp(vf x) {
  const vf hi = vset1(88.72283935546875f), lo = vset1(-87.33654022216797f), shifter = vset1(12582912.0f);
  vf xc = x < lo ? lo : x;  // a NaN compares false and stays
  xc = xc > hi ? hi : xc;
  const vf t = xc * 1.44269504088896341f + shifter;
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

// e^x for the arguments of an online softmax (x - max <= 0, -inf, or NaN): vexp's polynomial
// without its overflow handling, rounding n by the 1.5 * 2^23 shifter instead of two
// conversions and scaling by one power of two: about half vexp's instructions. NaN stays NaN;
// below -87.3 (and -inf) gives 0. Not for x above ~88 (no overflow to +inf).
inline vf vexp_softmax(vf x) {
  const vf lo = vset1(-87.33654022216797f), shifter = vset1(12582912.0f);
  const vf xc = x < lo ? lo : x;  // a NaN compares false and stays
  const vf t = xc * 1.44269504088896341f + shifter;
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

// erfc(z) by the Chebyshev fit of Numerical Recipes' erfcc: for z >= 0,
// t exp(-z^2 + P(t)) with t = 1 / (1 + z/2) and P of degree 9, fractional error below 1.2e-7
// over the whole range (so 1 - erf keeps its relative accuracy in the tail, where
// 1 - erf(z) computed as a difference would not); erfc(-z) = 2 - erfc(z).
inline vf verfc(vf z) {
  const vf a = vmax(z, -z);
  const vf t = 1.0f / (1.0f + 0.5f * a);
  vf p = vset1(0.17087277f);
  p = p * t - 0.82215223f;
  p = p * t + 1.48851587f;
  p = p * t - 1.13520398f;
  p = p * t + 0.27886807f;
  p = p * t - 0.18628806f;
  p = p * t + 0.09678418f;
  p = p * t + 0.37409196f;
  p = p * t + 1.00002368f;
  p = p * t - 1.26551223f;
  const vf r = t * vexp(p - a * a);
  return z < 0 ? 2.0f - r : r;
}

// erf(x) = 1 - erfc(|x|), signed, for |x| >= 0.5; near 0, where that difference loses the
// relative accuracy of erf itself, the Maclaurin series
// 2/sqrt(pi) (x - x^3/3 + x^5/10 - x^7/42 + x^9/216 - x^11/1320).
inline vf verf(vf x) {
  const vf ax = vmax(x, -x);
  const vf e = 1.0f - verfc(ax);
  const vf y = x < 0 ? -e : e;
  const vf x2 = x * x;
  vf p = vset1(-1.0f / 1320.0f);
  p = p * x2 + 1.0f / 216.0f;
  p = p * x2 - 1.0f / 42.0f;
  p = p * x2 + 1.0f / 10.0f;
  p = p * x2 - 1.0f / 3.0f;
  p = p * x2 + 1.0f;
  return ax < 0.5f ? 1.1283791670955126f * x * p : y;
}

// GELU's Gaussian CDF, Phi(x) = erfc(-x / sqrt 2) / 2: relatively accurate in the lower tail
// too, so x Phi(x) keeps float32's relative precision for x down to about -13.
inline vf vnormcdf(vf x) { return 0.5f * verfc(-0.70710678118654752f * x); }

// tanh(x): 1 - 2 / (e^{2x} + 1) for |x| >= 0.4, where it has no cancellation; below that the
// odd Taylor series through x^13 (truncation error under 1e-9 relative).
inline vf vtanh(vf x) {
  vf r = 1.0f - 2.0f / (vexp(2.0f * x) + 1.0f);
  vf x2 = x * x;
  vf p = vset1(21844.0f / 6081075.0f);
  p = p * x2 - 1382.0f / 155925.0f;
  p = p * x2 + 62.0f / 2835.0f;
  p = p * x2 - 17.0f / 315.0f;
  p = p * x2 + 2.0f / 15.0f;
  p = p * x2 - 1.0f / 3.0f;
  p = p * x2 + 1.0f;
  vf ax = vmax(x, -x);
  return ax < 0.4f ? x * p : r;
}

}  // namespace DR_ISA
}  // namespace cpu
}  // namespace dualroute
