// Portable SIMD through GCC/Clang vector extensions. The width follows the instruction set
// the file is compiled for (64 bytes with AVX-512, 32 with AVX2, 16 otherwise), so one
// source gives each variant its natural width; the compiler emits the FMA, blend and
// conversion instructions of that level.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>

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
// |r| <= ln2/2 (Cody-Waite split of ln2), e^r by a degree-6 polynomial, then scaled by 2^n
// through the exponent bits. Below -87.3 gives 0 (also for -inf), above 88.7 gives +inf,
// NaN stays NaN.
inline vf vexp(vf x) {
  const vf hi = vset1(88.72283935546875f), lo = vset1(-87.33654022216797f);
  vi nanmask = x != x;
  vi over = x > hi, under = x < lo;
  vf xc = vmin(vmax(x, lo), hi);
  vf n = xc * 1.44269504088896341f;
  // round to nearest
  n = __builtin_convertvector(__builtin_convertvector(n + (n >= 0 ? vset1(0.5f) : vset1(-0.5f)), vi), vf);
  const vf p = exp_reduced(xc, n);
  vi ni = __builtin_convertvector(n, vi);
  // 2^n split in two factors so that n = -127 or 128 does not overflow the exponent field
  vi n1 = ni >> 1, n2 = ni - n1;
  vi e1 = (n1 + 127) << 23, e2 = (n2 + 127) << 23;
  vf s1, s2;
  std::memcpy(&s1, &e1, sizeof(s1));
  std::memcpy(&s2, &e2, sizeof(s2));
  vf res = p * s1 * s2;
  const vf inf = vset1(INFINITY);
  res = over ? inf : res;
  res = under ? vset1(0.0f) : res;
  res = nanmask ? x : res;
  return res;
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

// erf(x) by Abramowitz & Stegun 7.1.26 for |x| >= 0.5: 1 - t (a1 + t (a2 + ...)) e^{-x^2} with
// t = 1 / (1 + p|x|); absolute error below 1.5e-7, about float32's rounding of erf there.
inline vf verf(vf x) {
  vf ax = vmax(x, -x);
  vf t = 1.0f / (1.0f + 0.3275911f * ax);
  vf y = vset1(1.061405429f);
  y = y * t - 1.453152027f;
  y = y * t + 1.421413741f;
  y = y * t - 0.284496736f;
  y = y * t + 0.254829592f;
  y = 1.0f - y * t * vexp(-ax * ax);
  y = x < 0 ? -y : y;
  // near 0 the formula's absolute error is large relative to erf itself: the Maclaurin series
  // 2/sqrt(pi) (x - x^3/3 + x^5/10 - x^7/42 + x^9/216 - x^11/1320) instead
  vf x2 = x * x;
  vf p = vset1(-1.0f / 1320.0f);
  p = p * x2 + 1.0f / 216.0f;
  p = p * x2 - 1.0f / 42.0f;
  p = p * x2 + 1.0f / 10.0f;
  p = p * x2 - 1.0f / 3.0f;
  p = p * x2 + 1.0f;
  return ax < 0.5f ? 1.1283791670955126f * x * p : y;
}

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
