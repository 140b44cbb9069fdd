// The activation functions of the CPU kernels, written once: the element-wise ops
// (elementwise.cpp), their gradients (backward.cpp), SwiGLU, and the fused bias + activation
// (fused_act.cpp) all call these, so the fused and unfused float32 forward results are the same
// bits by construction (both files compile without fused multiply-add contraction).
//
// Each activation A gives, for V = vf or VN<U> (simd.h: U vectors in step):
//   A::ok(x)        the lanes its fast form covers (a comparison mask),
//   A::fast(x)      the fast form, right on those lanes (whatever it gives on the others),
//   A::slow(x)      a form right on every lane (vf only: it runs for the rare vectors with a lane
//                   outside ok),
//   A::ref(x)       the float64 formula,
// and likewise gfast / gslow / gref for dy act'(x) (on the same range: ok). act_fwd / act_grad pick the fast form
// when every lane of x is in range (one test for all U vectors) and otherwise blend the forms
// lane by lane, so a lane's result never depends on its neighbours or on U.
#pragma once
#include <cmath>
#include <cstdint>
#include <type_traits>

#include "simd.h"

// simd.h's DR_VINLINE for a lambda that takes or returns VN: [](auto v) DR_VLAMBDA { ... }.
#define DR_VLAMBDA __attribute__((always_inline))

namespace dualroute {
namespace cpu {
namespace DR_ISA {
namespace act {

constexpr float kSqrt2OverPi = 0.79788456080286535588f;
constexpr float kGeluTanhC = 0.044715f;
constexpr float kInvSqrt2Pi = 0.39894228040143267794f;

// f applied to each vector of x (for forms written for vf only).
template <class F>
DR_VINLINE vf per_vec(vf x, F f) {
  return f(x);
}
template <int U, class F>
DR_VINLINE VN<U> per_vec(VN<U> x, F f) {
  VN<U> r;
  for (int k = 0; k < U; ++k) r.v[k] = f(x.v[k]);
  return r;
}
template <class F>
DR_VINLINE vf per_vec(vf x, vf g, F f) {
  return f(x, g);
}
template <int U, class F>
DR_VINLINE VN<U> per_vec(VN<U> x, VN<U> g, F f) {
  VN<U> r;
  for (int k = 0; k < U; ++k) r.v[k] = f(x.v[k], g.v[k]);
  return r;
}

// Picks A's fast form when every lane is in range; per vector, a lane-by-lane blend otherwise.
// (A form without a range split, kSplit false, is its fast form everywhere.)
template <class A>
DR_VINLINE vf act_fwd(vf x) {
  if constexpr (!A::kSplit) {
    return A::fast(x);
  } else {
    const vi m = A::ok(x);
    if (__builtin_expect(vall(m), 1)) return A::fast(x);
    return vsel(m, A::fast(x), A::slow(x));
  }
}
template <class A, int U>
DR_VINLINE VN<U> act_fwd(VN<U> x) {
  if constexpr (!A::kSplit) {
    return A::fast(x);
  } else {
    if (__builtin_expect(vall(A::ok(x)), 1)) return A::fast(x);
    VN<U> r;
    for (int k = 0; k < U; ++k) r.v[k] = act_fwd<A>(x.v[k]);
    return r;
  }
}
// g act'(x), likewise.
template <class A>
DR_VINLINE vf act_grad(vf x, vf g) {
  if constexpr (!A::kGradSplit) {
    return A::gfast(x, g);
  } else {
    const vi m = A::ok(x);
    if (__builtin_expect(vall(m), 1)) return A::gfast(x, g);
    return vsel(m, A::gfast(x, g), A::gslow(x, g));
  }
}
template <class A, int U>
DR_VINLINE VN<U> act_grad(VN<U> x, VN<U> g) {
  if constexpr (!A::kGradSplit) {
    return A::gfast(x, g);
  } else {
    if (__builtin_expect(vall(A::ok(x)), 1)) return A::gfast(x, g);
    VN<U> r;
    for (int k = 0; k < U; ++k) r.v[k] = act_grad<A>(x.v[k], g.v[k]);
    return r;
  }
}

// e^d for d <= 0 (x - max in a log-softmax or cross-entropy sum, x - lse in cross-entropy's
// gradient), U vectors in step: 2^(d log2e) with the product rounded once to float
// (vexp2_inrange: no Cody-Waite split, 8 operations on the FMA pipes a vector against
// vexp_inrange's 10). The product's rounding costs |d| 2^-24 ln2 of relative error, large only
// where the term is tiny (e^d < 1e-30 for |d| > 70); lanes within half a unit of d log2e = -126
// may come out as a subnormal near 2^-126. A block with a lane below kExpLo (-inf, NaN, masked
// classes) takes vexp_softmax vector by vector (0 below kExpLo, NaN stays NaN).
template <int U>
DR_VINLINE VN<U> exp_nonpos_terms(VN<U> d) {
  if (__builtin_expect(vall(d >= kExpLo), 1)) return vexp2_inrange(d * 1.44269504088896341f);
  for (int k = 0; k < U; ++k) d.v[k] = vexp_softmax(d.v[k]);
  return d;
}

// Calls body(i, U) for i over [0, n) in blocks of U = 4 vectors, then single vectors (U = 1, as
// std::integral_constant); returns where the tail (fewer than kVecF elements) starts.
template <class F>
DR_VINLINE int64_t vblocks(int64_t n, F&& body) {
  int64_t i = 0;
  for (; i + 4 * kVecF <= n; i += 4 * kVecF) body(i, std::integral_constant<int, 4>{});
  for (; i + kVecF <= n; i += kVecF) body(i, std::integral_constant<int, 1>{});
  return i;
}

// e^x (simd.h's vexp): the fast form on [kExpLo, kExpFastHi], the clamps and fix-ups elsewhere.
struct Exp {
  static constexpr bool kSplit = true, kGradSplit = true;
  template <class V>
  DR_VINLINE static auto ok(V x) {
    return (x >= kExpLo) & (x <= kExpFastHi);
  }
  template <class V>
  DR_VINLINE static V fast(V x) {
    return vexp_inrange(x);
  }
  DR_VINLINE static vf slow(vf x) { return vexp_full(x); }
  DR_VINLINE static double ref(double x) { return std::exp(x); }
  template <class V>
  DR_VINLINE static V gfast(V x, V g) {
    return g * fast(x);
  }
  DR_VINLINE static vf gslow(vf x, vf g) { return g * slow(x); }
  DR_VINLINE static double gref(double x, double g) { return g * std::exp(x); }
};

// sigmoid(x) = 1 / (1 + e^-x). Where |x| <= 87 (1 + e^-x below 2^126) the reciprocal estimate
// with a Newton step (about 2 ulp) instead of a division; other lanes divide (0 below about
// -88, 1 above 17, NaN stays NaN).
struct Sigmoid {
  static constexpr bool kSplit = true, kGradSplit = true;
  template <class V>
  DR_VINLINE static auto ok(V x) {
    return vabs(x) <= 87.0f;
  }
  template <class V>
  DR_VINLINE static V fast(V x) {
    return vrcp_nr(1.0f + vexp_inrange(-x));
  }
  DR_VINLINE static vf slow(vf x) { return 1.0f / (1.0f + vexp_full(-x)); }
  DR_VINLINE static double ref(double x) { return 1.0 / (1.0 + std::exp(-x)); }
  template <class V>
  DR_VINLINE static V gfast(V x, V g) {
    const V s = fast(x);
    return g * s * (1.0f - s);
  }
  DR_VINLINE static vf gslow(vf x, vf g) {
    const vf s = slow(x);
    return g * s * (1.0f - s);
  }
  DR_VINLINE static double gref(double x, double g) {
    const double s = ref(x);
    return g * s * (1.0 - s);
  }
};

// silu(x) = x sigmoid(x); lanes past |x| = 87 as x / (1 + e^-x) (x = -inf gives NaN and x below
// about -88 gives -0, as in PyTorch).
struct Silu {
  static constexpr bool kSplit = true, kGradSplit = true;
  template <class V>
  DR_VINLINE static auto ok(V x) {
    return Sigmoid::ok(x);
  }
  template <class V>
  DR_VINLINE static V fast(V x) {
    return x * Sigmoid::fast(x);
  }
  DR_VINLINE static vf slow(vf x) { return x / (1.0f + vexp_full(-x)); }
  DR_VINLINE static double ref(double x) { return x * (1.0 / (1.0 + std::exp(-x))); }
  template <class V>
  DR_VINLINE static V gfast(V x, V g) {
    const V s = Sigmoid::fast(x);
    return g * s * (1.0f + x * (1.0f - s));
  }
  DR_VINLINE static vf gslow(vf x, vf g) {
    const vf s = Sigmoid::slow(x);
    return g * s * (1.0f + x * (1.0f - s));
  }
  DR_VINLINE static double gref(double x, double g) {
    const double s = Sigmoid::ref(x);
    return g * s * (1.0 + x * (1.0 - s));
  }
};

// GELU, x Phi(x) with Phi the Gaussian CDF, relatively accurate in the lower tail too.
//
// Fast form, |x| <= 5: Phi(-u) = 2^E(u) for u = |x|, E a degree-11 polynomial fitted to
// log2 Phi(-u) on [0, 5] (scripts/fit-gelu.py: 2.8e-8 before rounding to float32; evaluated in
// float32 the error is about one rounding of E, under half the tests' tolerance), and
// Phi(x) = 1 - Phi(-x) for x > 0: one polynomial and one exp2, no division, 26 vector
// operations a vector against the erfc form's 38. gelu(x) = x - x Phi(-x) for x > 0, x Phi(-u)
// otherwise (-0 stays -0). Its gradient Phi(x) + x phi(x) adds phi(x) = e^(-x^2/2) / sqrt(2 pi).
// The AVX-512 build takes Phi(-u) from 32 polynomial pieces instead (lower_tab: no exp2; 7
// multiplies and multiply-adds and 6 permutes a vector; scripts/fit-gelu-pieces.py).
//
// Elsewhere (|x| > 5, +-inf, NaN): the erfc form of simd.h's vnormcdf.
struct Gelu {
  static constexpr bool kSplit = true, kGradSplit = true;
  static constexpr float kE[12] = {3.637572688e-09f,  -1.246697110e-07f, 1.919327133e-06f, -1.736740342e-05f,
                                   9.934727132e-05f,  -3.290225868e-04f, 6.239098730e-05f, 6.904474925e-03f,
                                   -5.242908373e-02f, -4.592207372e-01f, -1.151104569e+00f, -1.000000000e+00f};
  // Phi(-|x|) for |x| <= 5
  template <class V>
  DR_VINLINE static V lower(V x) {
#if defined(__AVX512F__)
    return lower_tab(x);
#else
    const V u = vabs(x);
    V p = vfma(vsplat<V>(kE[0]), u, vsplat<V>(kE[1]));
#pragma GCC unroll 12
    for (int j = 2; j < 12; ++j) p = vfma(p, u, vsplat<V>(kE[j]));
    return vexp2_inrange(p);
#endif
  }
#if defined(__AVX512F__)
  // Phi(-u), u = |x| <= 5, in 32 pieces of width 5/32: s = 6.4 u, piece i = min(floor(s), 31),
  // f = s - i (one rounding: an FMA), and a degree-5 polynomial in f whose coefficients a
  // two-table permute picks per lane (vpermt2ps: 32 entries). Fitted for relative error (Lawson
  // weights); as evaluated in float32 with FMAs, the worst relative error of Phi(-u) is 3.6e-7
  // (scripts/fit-gelu-pieces.py prints it), against 1.95e-6 for the exp2 form (scripts/fit-gelu.py:
  // the rounding of its log2 argument near u = 5). 7 operations a vector on the multiply-add
  // pipes (plus 6 permutes) where the exp2 form takes 17. Measured once, 2026-12-03, against the
  // exp2 form it replaced, the two alternated A B B A in one process over 16384 x 1024: gelu 2.33
  // against 2.84 ms, biasAct gelu 2.44 against 2.95 (no committed command builds the old form;
  // bench/results/elementwise-cpu-2026-12-03g.json and -03i are the runs before and after).
  struct alignas(64) PhiPieces {
    float c[6][32];
  };
  static constexpr PhiPieces kPhi = {{
      {
       5.000000000e-01f, 4.379179776e-01f, 3.773302734e-01f, 3.196241856e-01f,
       2.659855187e-01f, 2.173277438e-01f, 1.742507219e-01f, 1.370323300e-01f,
       1.056497768e-01f, 7.982495427e-02f, 5.908512697e-02f, 4.282995313e-02f,
       3.039636463e-02f, 2.111482248e-02f, 1.435302291e-02f, 9.545482695e-03f,
       6.209665909e-03f, 3.950750921e-03f, 2.457901603e-03f, 1.495069009e-03f,
       8.890254539e-04f, 5.167405470e-04f, 2.935554076e-04f, 1.629763283e-04f,
       8.841730596e-05f, 4.686977627e-05f, 2.427497930e-05f, 1.228302699e-05f,
       6.071625648e-06f, 2.931785730e-06f, 1.382813934e-06f, 6.370563028e-07f,
      },
      {
       -6.233473122e-02f, -6.157843396e-02f, -5.936415493e-02f, -5.584921315e-02f,
       -5.127514899e-02f, -4.594030976e-02f, -4.016779736e-02f, -3.427356109e-02f,
       -2.853891999e-02f, -2.319065109e-02f, -1.839015819e-02f, -1.423164550e-02f,
       -1.074785646e-02f, -7.921104319e-03f, -5.697005894e-03f, -3.998570144e-03f,
       -2.738797339e-03f, -1.830678899e-03f, -1.194157288e-03f, -7.601651596e-04f,
       -4.722277517e-04f, -2.862807596e-04f, -1.693674130e-04f, -9.778328968e-05f,
       -5.509301263e-05f, -3.029182517e-05f, -1.625367076e-05f, -8.510880434e-06f,
       -4.349052233e-06f, -2.168761284e-06f, -1.055421535e-06f, -5.012301472e-07f,
      },
      {
       -3.592659281e-09f, 7.516788901e-04f, 1.449303585e-03f, 2.045239788e-03f,
       2.503649797e-03f, 2.803956857e-03f, 2.941964893e-03f, 2.928642090e-03f,
       2.787002595e-03f, 2.547804499e-03f, 2.244899282e-03f, 1.910996158e-03f,
       1.574401860e-03f, 1.257019117e-03f, 9.736157372e-04f, 7.321644807e-04f,
       5.349238636e-04f, 3.799025726e-04f, 2.623879118e-04f, 1.763069740e-04f,
       1.152887562e-04f, 7.338610158e-05f, 4.548321522e-05f, 2.745279562e-05f,
       1.613973836e-05f, 9.243744898e-06f, 5.158222848e-06f, 2.804822316e-06f,
       1.486313295e-06f, 7.676388236e-07f, 3.864404619e-07f, 1.896361397e-07f,
      },
      {
       2.536547254e-04f, 2.444912679e-04f, 2.180332958e-04f, 1.774000266e-04f,
       1.272221707e-04f, 7.290957728e-05f, 1.984473784e-05f, -2.734511691e-05f,
       -6.531475083e-05f, -9.225798567e-05f, -1.078887435e-04f, -1.131956451e-04f,
       -1.100534646e-04f, -1.007870451e-04f, -8.777106268e-05f, -7.312340313e-05f,
       -5.851783135e-05f, -4.511321822e-05f, -3.357617243e-05f, -2.416445204e-05f,
       -1.683808478e-05f, -1.137150775e-05f, -7.449201803e-06f, -4.736543360e-06f,
       -2.924951104e-06f, -1.755043399e-06f, -1.023636401e-06f, -5.805557066e-07f,
       -3.202682990e-07f, -1.718979803e-07f, -8.978739174e-08f, -4.564959255e-08f,
      },
      {
       -2.369920082e-08f, -4.634341167e-06f, -8.688085472e-06f, -1.172474094e-05f,
       -1.344939847e-05f, -1.377055014e-05f, -1.279809931e-05f, -1.080494258e-05f,
       -8.163692655e-06f, -5.274241175e-06f, -2.498080903e-06f, -1.106453098e-07f,
       1.722039201e-06f, 2.943213303e-06f, 3.586977982e-06f, 3.749514235e-06f,
       3.557952141e-06f, 3.143215508e-06f, 2.620557325e-06f, 2.078841590e-06f,
       1.577577791e-06f, 1.149534796e-06f, 8.064778285e-07f, 5.458677492e-07f,
       3.570201841e-07f, 2.259185976e-07f, 1.384535864e-07f, 8.224515824e-08f,
       4.738831194e-08f, 2.649968245e-08f, 1.438914765e-08f, 7.589981976e-09f,
      },
      {
       -9.132623404e-07f, -8.037272892e-07f, -6.031428939e-07f, -3.439958505e-07f,
       -6.635897876e-08f, 1.899950206e-07f, 3.927788441e-07f, 5.221231163e-07f,
       5.724195944e-07f, 5.510604524e-07f, 4.749038283e-07f, 3.655048317e-07f,
       2.444775191e-07f, 1.298675869e-07f, 3.407237870e-08f, -3.665695658e-08f,
       -8.145668318e-08f, -1.033468706e-07f, -1.075073470e-07f, -9.973879145e-08f,
       -8.535207030e-08f, -6.853559853e-08f, -5.215608923e-08f, -3.785764946e-08f,
       -2.632435425e-08f, -1.759052637e-08f, -1.132226934e-08f, -7.032411542e-09f,
       -4.220939154e-09f, -2.451014947e-09f, -1.378235193e-09f, -7.510716493e-10f,
      },
  }};
  DR_VINLINE static vf lower_tab(vf x) {
    const __m512 u = _mm512_abs_ps(reinterpret_cast<__m512>(x));
    const __m512 k = _mm512_set1_ps(6.4f);
    const __m512i i = _mm512_min_epi32(_mm512_cvttps_epi32(_mm512_mul_ps(u, k)), _mm512_set1_epi32(31));
    const __m512 f = _mm512_fmsub_ps(u, k, _mm512_cvtepi32_ps(i));
    auto c = [&](int j) DR_VLAMBDA {
      return _mm512_permutex2var_ps(_mm512_load_ps(kPhi.c[j]), i, _mm512_load_ps(kPhi.c[j] + 16));
    };
    __m512 p = _mm512_fmadd_ps(c(5), f, c(4));
    p = _mm512_fmadd_ps(p, f, c(3));
    p = _mm512_fmadd_ps(p, f, c(2));
    p = _mm512_fmadd_ps(p, f, c(1));
    p = _mm512_fmadd_ps(p, f, c(0));
    return reinterpret_cast<vf>(p);
  }
  template <int U>
  DR_VINLINE static VN<U> lower_tab(VN<U> x) {
    for (int k = 0; k < U; ++k) x.v[k] = lower_tab(x.v[k]);
    return x;
  }
#endif
  template <class V>
  DR_VINLINE static auto ok(V x) {
    return vabs(x) <= 5.0f;  // NaN compares false
  }
  template <class V>
  DR_VINLINE static V fast(V x) {
    const V xr = x * lower(x);
    return vsel(x > 0.0f, x - xr, xr);
  }
  DR_VINLINE static vf slow(vf x) { return x * vnormcdf(x); }
  DR_VINLINE static double ref(double x) { return 0.5 * x * (1.0 + std::erf(x * 0.70710678118654752440)); }
  // Mills' ratio Phi(-u) / phi(u) for u = |x| <= 5 as t P(t), t = 1 / (1 + 0.3 u), P of degree 7
  // (a relative fit: 2.5e-8 in float64, 3.4e-7 evaluated in float32 with these coefficients)
  static constexpr float kM[8] = {8.599264175e-02f, -3.741641045e-01f, 4.701849520e-01f, -7.520786673e-02f,
                                  2.790107131e-01f, 2.686938941e-01f,  2.985484600e-01f, 3.002555072e-01f};
  // dy (Phi(x) + x phi(x)) with one exp2 for both terms: phi(x) = 2^(-x^2 log2(e) / 2 -
  // log2 sqrt(2 pi)) (the exponent's rounding, under 7e-7 relative at |x| = 5, is within the
  // tolerance of the lower tail), and Phi(-|x|) = phi(x) times Mills' ratio. The forward's
  // lower() (11 multiply-adds and its own exp2) is not needed: geluBackward over 16384 x 1024,
  // the two forms alternated call by call in one process, 3.35-3.89 ms against 4.06-4.53 (in
  // cache 0.30 against 0.37-0.39); worst error over [-5, 5] 2.2e-7 against 1.3e-7 before.
  template <class V>
  DR_VINLINE static V gfast(V x, V g) {
    const V pdf = vexp2_inrange(vfma(x * x, vsplat<V>(-0.72134752044448170f), vsplat<V>(-1.32574806473615917f)));
    const V t = vrcp_nr(vfma(vabs(x), vsplat<V>(0.3f), vsplat<V>(1.0f)));
    V p = vfma(vsplat<V>(kM[0]), t, vsplat<V>(kM[1]));
#pragma GCC unroll 8
    for (int j = 2; j < 8; ++j) p = vfma(p, t, vsplat<V>(kM[j]));
    const V r = pdf * (p * t);  // Phi(-|x|)
    const V cdf = vsel(x > 0.0f, 1.0f - r, r);
    return g * vfma(x, pdf, cdf);
  }
  DR_VINLINE static vf gslow(vf x, vf g) { return g * (vnormcdf(x) + x * (kInvSqrt2Pi * vexp(-0.5f * x * x))); }
  DR_VINLINE static double gref(double x, double g) {
    const double cdf = 0.5 * (1.0 + std::erf(x * 0.70710678118654752440));
    return g * (cdf + x * (0.39894228040143267794 * std::exp(-0.5 * x * x)));
  }
};

// GELU's tanh approximation 0.5 x (1 + tanh(u)), u = sqrt(2/pi) (x + 0.044715 x^3), computed as
// x sigmoid(2u): the same function without the cancellation of 1 + tanh(u) for negative x. Its
// range test is the sigmoid's, on 2u.
struct GeluTanh {
  static constexpr bool kSplit = true, kGradSplit = false;
  template <class V>
  DR_VINLINE static V arg2(V x) {  // 2u
    const float k2 = 2.0f * kSqrt2OverPi;
    return x * vfma(x * x, vsplat<V>(k2 * kGeluTanhC), vsplat<V>(k2));
  }
  template <class V>
  DR_VINLINE static auto ok(V x) {
    return Sigmoid::ok(arg2(x));
  }
  // x / (1 + 2^(-2u log2e)) with log2e folded into the cubic's coefficients: one exp2 and no
  // Cody-Waite split (2u is itself rounded to float, so e^-2u carries |2u| 2^-23 of relative
  // error either way; folding log2e adds a rounding of the same size). 13 operations on the FMA
  // pipes a vector against the sigmoid form's 20.
  template <class V>
  DR_VINLINE static V fast(V x) {
    constexpr float k2l = 2.0f * kSqrt2OverPi * 1.44269504088896341f;
    const V e = x * vfma(x * x, vsplat<V>(-k2l * kGeluTanhC), vsplat<V>(-k2l));
    return x * vrcp_nr(1.0f + vexp2_inrange(e));
  }
  DR_VINLINE static vf slow(vf x) { return x * Sigmoid::slow(arg2(x)); }
  DR_VINLINE static double ref(double x) {
    return 0.5 * x * (1.0 + std::tanh(0.79788456080286535588 * (x + 0.044715 * x * x * x)));
  }
  // the gradient through tanh (no range split: vtanh has no branch)
  template <class V>
  DR_VINLINE static V gfast(V x, V g) {
    return per_vec(x, g, [](vf x, vf g) {
      const vf t = vtanh(kSqrt2OverPi * (x + kGeluTanhC * x * x * x));
      return g * (0.5f * (1.0f + t) + 0.5f * x * (1.0f - t * t) * kSqrt2OverPi * (1.0f + 3.0f * kGeluTanhC * x * x));
    });
  }
  DR_VINLINE static double gref(double x, double g) {
    const double k = 0.79788456080286535588, c = 0.044715;
    const double t = std::tanh(k * (x + c * x * x * x));
    return g * (0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * k * (1.0 + 3.0 * c * x * x));
  }
};
// relu; NaN stays NaN. Its gradient is g where x > 0, else 0.
struct Relu {
  static constexpr bool kSplit = false, kGradSplit = false;
  template <class V>
  DR_VINLINE static V fast(V x) {
    return per_vec(x, [](vf x) {
      const vf r = x > 0.0f ? x : vset1(0.0f);
      return x != x ? x : r;
    });
  }
  template <class V>
  DR_VINLINE static V gfast(V x, V g) {
    return per_vec(x, g, [](vf x, vf g) { return x > 0.0f ? g : vset1(0.0f); });
  }
  DR_VINLINE static double ref(double x) { return x > 0.0 ? x : (x == x ? 0.0 : x); }
  DR_VINLINE static double gref(double x, double g) { return x > 0.0 ? g : 0.0; }
};

}  // namespace act
}  // namespace DR_ISA
}  // namespace cpu
}  // namespace dualroute
