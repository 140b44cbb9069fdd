// The unary element-wise kernels and SwiGLU, forward and backward, run as kernels in the emulator
// (their element functions in native/cuda/activations.cuh are activations_test.cpp's):
//  - native/cuda/elementwise.cu: map1_flat<V> (16-byte packs, scalar tail, broadcast input),
//    map1_flat<1> (unaligned pointers, short runs) and map1_strided (transposed, stepped output,
//    a broadcast dim, dims collapse() merges, eight dims), chosen as run_map1 chooses them
//    (collapse / is_flat are the source's own; the test asserts which kernel each layout takes),
//    with every functor of the unary op: UnaryFloat<T, op> for the 23 float ops (neg abs exp
//    log sqrt rsqrt sin cos tanh sigmoid relu gelu geluTanh silu square reciprocal floor ceil
//    round sign erf log1p expm1), UnaryInt<op> (int32 neg abs square sign, wrapping) and
//    LogicalNot<T> (float, bf16, int32, bool in, bool out); swiglu_kernel.
//  - native/cuda/backward.cu: unary_bw_kernel<T, op> for the same 23 ops, and swiglu_bw.
// float32 and bf16 (the GPU has no float64 kernels: the entries reject it). Sizes 1, 3, 16, 255,
// 257, 1031, 5003, 9001; grids as the host's (grid_for / grid_cap of an H100/H200's 132
// multiprocessors) and capped at 1..3 blocks so every grid-stride loop goes round (the host's
// grid only wraps past ~1M elements). Output buffers start as an "unwritten" NaN: every element of
// the output view must be written, every element around it (stepped outputs, offsets) left alone,
// and the guard zones intact.
//
// References: float64, written here from the formulas with plain loops (not the device functions):
// gelu = x/2 erfc(-x/sqrt 2), geluTanh = x / (1 + e^-2u) (the same function as x/2 (1 + tanh u)),
// sigmoid = 1 / (1 + e^-x), silu = x / (1 + e^-x), swiglu(a, b) = silu(a) b, and the derivatives
// with 1 - sigmoid(x) computed as 1 / (1 + e^x) and tanh' as 1 / cosh^2.
// Inputs: random values (uniform in [-8, 8], log-uniform magnitudes 1e-6..1e6, small values) with
// special ones every fifth element: +-0, subnormals, 1e-30, 0.5 / 1.5 / 2.5 (round half to even),
// +-5 and +-5.00001 (bf16: 5.03125), the region where expf overflows (+-87, 88.7, 89, 100), 1e5,
// 1e19, 1e20, 3e38, +-inf, NaN. Upstream gradients: uniform in [-3, 3], with 0, -0 and NaN
// (relu', abs', floor' ... give 0 at x <= 0 / x = 0 / everywhere even for a NaN gradient).
// (activations.cuh has no range switch today; the CPU's gelu switches forms at |x| = 5, hence
// +-5.00001.)
//
// Comparisons: ops the kernel computes with one correctly rounded float operation (neg, abs,
// sqrt, square, reciprocal, floor, ceil, round, sign, relu; the gradients of neg, abs, relu,
// log, square and of the piecewise constant ops) must equal the reference rounded to float and
// then to the dtype, bit for bit (signed zeros included; for bf16 the double rounding is innocuous
// as 24 >= 2 * 8 + 2). The rest: NaN exactly where the reference is NaN, the dtype's infinity
// where the reference overflows it, else
//   float: |got - ref| <= U 2^-24 (|ref| + S) + 2^-126 (1 + |x|)(1 + |g|)
//   bf16:  |got - ref| <= 2^-8 |ref| + (1 + 2^-8) (the float bound)   (2^-8: rounding to bf16)
// with U = 2 (device libm ulps + further roundings) (kOps: an ulp of |ref| is at most two units
// of 2^-24 |ref|; CUDA's documented maximum errors: expf sinf cosf tanhf erff 2 ulp, logf log1pf
// expm1f 1, sqrtf and division 0) and S the magnitude at which the formula cancels (gelu,
// geluTanh: 1 + erf / 1 + tanh for x < 0, |x|; sigmoid', tanh': 1 - s, 1 - t^2, |g|; silu',
// gelu', geluTanh': |g| (1 + |x|); erf': the rounding of x^2 in e^-x^2, |ref| x^2). The 2^-126
// term: results below float's normal range are not expected to be accurate (sigmoid(x) and
// silu(x) are 0 once expf(-x) overflows, x < -88.7, as on the CPU and in PyTorch). x and g
// count as 0 in S and the 2^-126 term where they are infinite (sigmoid(inf) must be 1).
// Where a gradient's factor leaves float's range (e^x for x > 88.7, x^1.5 and x^2 below ~1e-30),
// the reference takes it as float holds it, inf or 0 (ref_grad): g = 0 then gives NaN there.
// Not compared: geluTanh' at finite |x| > 1.8e19, where x * x overflows float and the kernel
// (like the CPU's float form) gives NaN for a gradient of 0 or 1; SwiGLU's db = (g a) s where g a
// overflows and s = 0 (a < -88.7: NaN for a limit of 0, as on the CPU) (those elements must still
// be written). Upstream gradients are kept moderate (|g| <= 3): with g ~ 1e30 the kernels'
// intermediate products overflow before the reference does (rsqrt', reciprocal').
#include <cfloat>
#include <climits>
#include <cmath>
#include <random>
#include <type_traits>

#include "ewconv_kernel.inc"
#include "ewmap_kernel.inc"
#include "ewunary_kernel.inc"
#include "ewswiglu_kernel.inc"
#include "bwunary_kernel.inc"
#include "bwswiglu_kernel.inc"
#include "harness.h"
#include "map_host.h"

using namespace dualroute::cuda;
using dualroute::UnaryOp;
using dualroute::View;
using harness::Buf;
using harness::cfg_of;
using harness::fmt;
using namespace emu_host;

namespace {

// (the Io storage types: map_host.h)

template <typename T>
T* dev(Buf<typename Io<T>::S>& b, int64_t off = 0) {
  return reinterpret_cast<T*>(b.data() + off);
}

bool is_nan_stored(float v) { return std::isnan(v); }
bool is_nan_stored(uint16_t v) { return (v & 0x7fff) > 0x7f80; }

// ---- the host side, mirrored (extract.js checks the launch statements of run_map1, unary,
// swiglu, launch_unary_bw and swiglu_backward) ----------------------------------------------------
// device.cuh's grid_cap / grid_for and elementwise.cu's run_map1: map_host.h (grid_for_,
// run_map1_emu).

// ---- layouts of the map kernels --------------------------------------------------------------------
struct Lay {
  const char* tag;
  int ndim;
  int64_t shape[8];
  int64_t xs[8];  // x's strides (elements)
  int64_t os[8];  // out's strides; all 0: contiguous
  int64_t xoff, ooff;  // element offsets of the views into their (256-byte aligned) buffers
  int cap;             // grid cap (0: the host's grid)
  const char* path;    // the kernel run_map1 must pick: vec, flat, stridedN (N = collapsed dims)
};

// clang-format off
const Lay kLays[] = {
  // tag              ndim shape                      x strides                        out strides  xoff ooff cap path
  {"n1",               1, {1},                        {1},                              {},          0, 0, 0, "flat"},
  {"n3",               1, {3},                        {1},                              {},          0, 0, 0, "flat"},
  {"n16",              1, {16},                       {1},                              {},          0, 0, 0, "vec"},
  {"n1031",            1, {1031},                     {1},                              {},          0, 0, 0, "vec"},
  {"n5003-grid1",      1, {5003},                     {1},                              {},          0, 0, 1, "vec"},
  {"n9001-grid3",      1, {9001},                     {1},                              {},          0, 0, 3, "vec"},
  {"unaligned-x",      1, {5003},                     {1},                              {},          1, 0, 3, "flat"},
  {"unaligned-out",    1, {2049},                     {1},                              {},          0, 3, 2, "flat"},
  {"broadcast",        1, {37},                       {0},                              {},          0, 0, 0, "vec"},
  {"broadcast-long",   2, {4099, 1},                  {0, 0},                           {},          2, 0, 1, "vec"},
  {"size1-dims",       4, {1, 7, 1, 9},               {5, 9, 77, 1},                    {3, 9, 1, 1}, 0, 0, 0, "vec"},
  {"transposed",       2, {37, 29},                   {1, 37},                          {},          0, 0, 2, "strided2"},
  {"out-step2",        1, {1000},                     {1},                              {2},         0, 0, 0, "strided1"},
  {"merge",            4, {5, 1, 6, 7},               {54, 999, 9, 1},                  {},          0, 0, 0, "strided2"},
  {"row-broadcast",    2, {13, 33},                   {0, 1},                           {},          0, 0, 1, "strided2"},
  {"eight-dims",       8, {2, 3, 2, 3, 2, 3, 2, 2},   {1, 2, 6, 12, 36, 72, 216, 432},  {},          0, 0, 1, "strided8"},
};
// clang-format on

struct Geo {
  int ndim;
  int64_t shape[8], xs[8], os[8];
  int64_t n, xspan, ospan;
};
Geo geo_of(const Lay& l) {
  Geo g{};
  g.ndim = l.ndim;
  bool contig = true;
  for (int d = 0; d < l.ndim; ++d) contig = contig && l.os[d] == 0;
  int64_t s = 1;
  for (int d = l.ndim - 1; d >= 0; --d) {
    g.shape[d] = l.shape[d];
    g.xs[d] = l.xs[d];
    g.os[d] = contig ? s : l.os[d];
    s *= l.shape[d];
  }
  g.n = s;
  g.xspan = g.ospan = 1;
  for (int d = 0; d < l.ndim; ++d) {
    g.xspan += (g.shape[d] - 1) * g.xs[d];
    g.ospan += (g.shape[d] - 1) * g.os[d];
  }
  return g;
}
View view_of(void* p, const Geo& g, bool out) {
  View v{};
  v.data = p;
  v.ndim = g.ndim;
  for (int d = 0; d < g.ndim; ++d) {
    v.shape[d] = g.shape[d];
    v.strides[d] = out ? g.os[d] : g.xs[d];
  }
  return v;
}
// fn(k, x offset, out offset) for the logical elements in row-major order.
template <class Fn>
void for_each_elem(const Geo& g, Fn&& fn) {
  for (int64_t k = 0; k < g.n; ++k) {
    int64_t r = k, xo = 0, oo = 0;
    for (int d = g.ndim - 1; d >= 0; --d) {
      const int64_t c = r % g.shape[d];
      r /= g.shape[d];
      xo += c * g.xs[d];
      oo += c * g.os[d];
    }
    fn(k, xo, oo);
  }
}

// ---- inputs -------------------------------------------------------------------------------------
const double kSpecial[] = {0.0, -0.0, 1.401298464324817e-45, -1e-40, 1.1754943508222875e-38, 1e-30, -1e-30, 1e-7, -1e-7,
                           0.5, -0.5, 1, -1, 1.5, -1.5, 2.5, -2.5, 3.5, M_PI, -M_PI, 4.99999, -4.99999, 5, -5,
                           5.00001, -5.00001, 5.03125, -5.03125, 9, -9, 10, -10, 17, -17, 20, -20, 30, -30, 87, -87,
                           88.7, -88.7, 89, -89, 100, -100, 1e5, -1e5, 1e19, -1e19, 1e20, -1e20, 3e38, -3e38,
                           INFINITY, -INFINITY, NAN};
constexpr int kNSpecial = sizeof(kSpecial) / sizeof(kSpecial[0]);

// The value of element p of an input buffer: a special value every fifth element (rotated by
// rot), else random.
struct Gen {
  std::mt19937 rng;
  int rot;
  Gen(uint32_t seed, int r) : rng(seed), rot(r) {}
  double random() {
    std::uniform_real_distribution<double> u(0, 1);
    const double k = u(rng);
    if (k < 0.5) return -8 + 16 * u(rng);
    if (k < 0.8) return (u(rng) < 0.5 ? -1 : 1) * std::pow(10.0, -6 + 12 * u(rng));
    return -0.1 + 0.2 * u(rng);
  }
  double x(int64_t p) { return p >= 0 && p % 5 == 0 ? kSpecial[(p / 5 + rot) % kNSpecial] : random(); }
  // upstream gradients: moderate, with 0, -0 and NaN
  double g(int64_t p) {
    std::uniform_real_distribution<double> u(-3, 3);
    const double v = u(rng);
    if (p % 13 == 3) return NAN;
    if (p % 13 == 7) return 0.0;
    if (p % 13 == 11) return -0.0;
    return v;
  }
};

// ---- references ---------------------------------------------------------------------------------
double sig(double x) { return 1 / (1 + std::exp(-x)); }
double sigc(double x) { return 1 / (1 + std::exp(x)); }  // 1 - sigmoid(x), without the cancellation
constexpr double kSqrt2 = 1.41421356237309504880;
constexpr double kPi = 3.14159265358979323846;
double gelu_u(double x) { return std::sqrt(2 / kPi) * (x + 0.044715 * x * x * x); }

double ref_fwd(UnaryOp op, double x) {
  switch (op) {
    case UnaryOp::Neg: return -x;
    case UnaryOp::Abs: return std::fabs(x);
    case UnaryOp::Exp: return std::exp(x);
    case UnaryOp::Log: return std::log(x);
    case UnaryOp::Sqrt: return std::sqrt(x);
    case UnaryOp::Rsqrt: return 1 / std::sqrt(x);
    case UnaryOp::Sin: return std::sin(x);
    case UnaryOp::Cos: return std::cos(x);
    case UnaryOp::Tanh: return std::tanh(x);
    case UnaryOp::Sigmoid: return sig(x);
    case UnaryOp::Relu: return std::isnan(x) ? x : (x > 0 ? x : 0.0);
    case UnaryOp::Gelu: return 0.5 * x * std::erfc(-x / kSqrt2);
    case UnaryOp::GeluTanh: return x / (1 + std::exp(-2 * gelu_u(x)));
    case UnaryOp::Silu: return x / (1 + std::exp(-x));
    case UnaryOp::Square: return x * x;
    case UnaryOp::Reciprocal: return 1 / x;
    case UnaryOp::Floor: return std::floor(x);
    case UnaryOp::Ceil: return std::ceil(x);
    case UnaryOp::Round: return std::nearbyint(x);  // the default rounding mode: half to even
    case UnaryOp::Sign: return x > 0 ? 1.0 : (x < 0 ? -1.0 : x);
    case UnaryOp::Erf: return std::erf(x);
    case UnaryOp::Log1p: return std::log1p(x);
    case UnaryOp::Expm1: return std::expm1(x);
    default: return NAN;
  }
}

// v as float holds it where it leaves float's range: +-inf past FLT_MAX, +-0 below the smallest
// subnormal; else v itself.
double frange(double v) {
  const float f = static_cast<float>(v);
  return std::isinf(f) || f == 0 ? static_cast<double>(f) : v;
}

// g * op'(x). Where the factor the formula multiplies or divides g by (e^x; x^1.5, x^2) leaves
// float's range, it is taken as float holds it (frange): g = 0 then gives NaN, as any float
// evaluation of the formula does (the CPU's, PyTorch's).
double ref_grad(UnaryOp op, double x, double g) {
  switch (op) {
    case UnaryOp::Neg: return -g;
    case UnaryOp::Abs: return std::isnan(x) ? x : (x > 0 ? g : (x < 0 ? -g : 0.0));
    case UnaryOp::Exp:
    case UnaryOp::Expm1: return g * frange(std::exp(x));
    case UnaryOp::Log: return g / x;
    case UnaryOp::Sqrt: return g / (2 * std::sqrt(x));
    case UnaryOp::Rsqrt: return -0.5 * g / frange(x * std::sqrt(x));
    case UnaryOp::Sin: return g * std::cos(x);
    case UnaryOp::Cos: return -g * std::sin(x);
    case UnaryOp::Tanh: {
      const double c = std::cosh(x);
      return g / (c * c);
    }
    case UnaryOp::Sigmoid: return g * sig(x) * sigc(x);
    case UnaryOp::Relu: return x > 0 ? g : 0.0;
    case UnaryOp::Gelu: {
      const double cdf = 0.5 * std::erfc(-x / kSqrt2), pdf = std::exp(-0.5 * x * x) / std::sqrt(2 * kPi);
      return g * (cdf + x * pdf);
    }
    case UnaryOp::GeluTanh: {
      // d/dx x s(2u) = s + x s (1 - s) 2u', s = sigmoid(2u)
      const double u = gelu_u(x), s = sig(2 * u), sc = sigc(2 * u);
      const double du = std::sqrt(2 / kPi) * (1 + 3 * 0.044715 * x * x);
      return g * (s + x * s * sc * 2 * du);
    }
    case UnaryOp::Silu: return g * sig(x) * (1 + x * sigc(x));
    case UnaryOp::Square: return 2 * g * x;
    case UnaryOp::Reciprocal: return -g / frange(x * x);
    case UnaryOp::Floor:
    case UnaryOp::Ceil:
    case UnaryOp::Round:
    case UnaryOp::Sign: return 0.0;  // everywhere, NaN and infinities included
    case UnaryOp::Erf: return g * 2 / std::sqrt(kPi) * std::exp(-x * x);
    case UnaryOp::Log1p: return g / (1 + x);
    default: return NAN;
  }
}

// How each op is compared. Exact (-1): one correctly rounded float operation, compared bit for
// bit. Else the bound's U = 2 (libm + roundings): the device libm's documented maximum error of the
// functions the formula calls, in ulps (CUDA C Programming Guide, single precision: expf, sinf,
// cosf, tanhf, erff 2; logf, log1pf, expm1f 1; sqrtf and / 0), plus one ulp per further float
// rounding (an ulp of |ref| is at most 2^-23 |ref|, two units of 2^-24 |ref|). scale: 0 none,
// 1 |x|, 2 |g|, 3 |g| (1 + |x|), 4 |ref| x^2 (see the comment at the top).
struct Tol {
  int libm, roundings, scale;
  bool exact() const { return libm < 0; }
  int ulps() const { return exact() ? 0 : 2 * (libm + roundings); }
};
constexpr Tol kExact{-1, 0, 0};
struct OpInfo {
  UnaryOp op;
  const char* name;
  Tol fwd, bw;
};
// clang-format off
const OpInfo kOps[] = {
  // op                   name          forward: libm roundings scale   backward (g op'(x))
  {UnaryOp::Neg,        "neg",        kExact,                         kExact},
  {UnaryOp::Abs,        "abs",        kExact,                         kExact},
  {UnaryOp::Exp,        "exp",        {2, 0, 0},  /* expf */          {2, 1, 0}},   // g * expf
  {UnaryOp::Log,        "log",        {1, 0, 0},  /* logf */          kExact},      // g / v
  {UnaryOp::Sqrt,       "sqrt",       kExact,                         {0, 2, 0}},   // g 0.5 / sqrtf
  {UnaryOp::Rsqrt,      "rsqrt",      {0, 2, 0},  /* 1 / sqrtf */     {0, 3, 0}},   // g -0.5 / (v sqrtf)
  {UnaryOp::Sin,        "sin",        {2, 0, 0},                      {2, 1, 0}},   // g * cosf
  {UnaryOp::Cos,        "cos",        {2, 0, 0},                      {2, 1, 0}},   // -g * sinf
  {UnaryOp::Tanh,       "tanh",       {2, 0, 0},                      {4, 3, 2}},   // g (1 - t t): t's error twice
  {UnaryOp::Sigmoid,    "sigmoid",    {2, 2, 0},  /* 1 / (1 + e) */   {2, 6, 2}},   // g s (1 - s)
  {UnaryOp::Relu,       "relu",       kExact,                         kExact},
  {UnaryOp::Gelu,       "gelu",       {2, 4, 1},                      {4, 9, 3}},   // erff, expf
  {UnaryOp::GeluTanh,   "geluTanh",   {2, 8, 1},                      {2, 14, 3}},
  {UnaryOp::Silu,       "silu",       {2, 2, 0},                      {2, 7, 3}},
  {UnaryOp::Square,     "square",     kExact,                         kExact},      // g 2 v
  {UnaryOp::Reciprocal, "reciprocal", kExact,                         {0, 2, 0}},   // -g / (v v)
  {UnaryOp::Floor,      "floor",      kExact,                         kExact},      // 0
  {UnaryOp::Ceil,       "ceil",       kExact,                         kExact},
  {UnaryOp::Round,      "round",      kExact,                         kExact},
  {UnaryOp::Sign,       "sign",       kExact,                         kExact},
  {UnaryOp::Erf,        "erf",        {2, 0, 0},                      {2, 3, 4}},   // g c expf(-v v)
  {UnaryOp::Log1p,      "log1p",      {1, 0, 0},                      {0, 2, 0}},   // g / (1 + v)
  {UnaryOp::Expm1,      "expm1",      {1, 0, 0},                      {2, 1, 0}},   // g * expf
};
// SwiGLU: silu(a) b (expf, 1 + e, /, * b); da = g b s (1 + a (1 - s)); db = g a s.
constexpr Tol kSwiglu{2, 3, 0}, kSwigluDa{2, 8, 0}, kSwigluDb{2, 4, 0};
// clang-format on

// Largest error / tolerance seen (UNARY_TEST_STATS=1 prints it: how much room the bounds leave).
double g_worst = 0;
std::string g_worst_at;

// |v| for the tolerances' scales, 0 for infinities and NaN (an infinite input whose result is
// finite, sigmoid(inf) = 1, gets the relative bound only).
double mag(double v) { return std::isfinite(v) ? std::fabs(v) : 0.0; }

// got (stored T) against the float64 reference ref (see the comment at the top): ulps 0 exact,
// else U = ulps with cancellation scale `scale`; fl multiplies the 2^-126 floor; x and g are for
// the message.
template <typename T>
std::string compare(const char* what, typename Io<T>::S got_s, double ref, int ulps, double scale, double fl, double x,
                    double g) {
  using I = Io<T>;
  const double got = I::get(got_s);
  if (I::bits(got_s) == I::bits(I::unwritten())) return fmt("%s: unwritten (x %.9g)", what, x);
  if (ulps == 0) {  // exact: the reference rounded to float, then stored as T
    const typename I::S want = I::put(static_cast<double>(static_cast<float>(ref)));
    if (std::isnan(ref) ? is_nan_stored(got_s) : I::bits(got_s) == I::bits(want)) return "";
    return fmt("%s: got %.9g want %.9g (x %.9g, g %.9g)", what, got, I::get(want), x, g);
  }
  if (std::isnan(ref) || std::isnan(got)) {
    if (std::isnan(ref) && std::isnan(got)) return "";
    return fmt("%s: got %.9g want %.9g (x %.9g, g %.9g)", what, got, ref, x, g);
  }
  const double ef = ulps * 0x1p-24 * (std::fabs(ref) + scale) + 0x1p-126 * fl;
  const double tol = I::bf ? 0x1p-8 * std::fabs(ref) + (1 + 0x1p-8) * ef : ef;
  if (std::isinf(got)) {  // the reference overflows T (or is infinite)
    if ((got > 0) == (ref > 0) && (std::isinf(ref) || std::fabs(ref) + tol >= I::kMax)) return "";
    return fmt("%s: got %.9g want %.9g (x %.9g, g %.9g)", what, got, ref, x, g);
  }
  if (std::isinf(ref)) return fmt("%s: got %.9g want %.9g (x %.9g, g %.9g)", what, got, ref, x, g);
  const double err = std::fabs(got - ref);
  if (err > tol)
    return fmt("%s: got %.9g want %.9g (x %.9g, g %.9g): error %.3g > tolerance %.3g", what, got, ref, x, g, err, tol);
  if (tol > 0 && err / tol > g_worst) {
    g_worst = err / tol;
    g_worst_at = fmt("%s x %.9g g %.9g got %.9g want %.9g", what, x, g, got, ref);
  }
  return "";
}

double scale_of(int kind, double x, double g, double ref) {
  switch (kind) {
    case 1: return mag(x);
    case 2: return mag(g);
    case 3: return mag(g) * (1 + mag(x));
    case 4: return mag(ref) * mag(x) * mag(x);
    default: return 0;
  }
}
double floor_of(double x, double g) { return (1 + mag(x)) * (1 + mag(g)); }

std::string report(std::string e) {
  if (e.empty() && getenv("UNARY_TEST_STATS")) fprintf(stderr, "worst error / tolerance %.3g at %s\n", g_worst, g_worst_at.c_str());
  return e;
}

// ---- the map kernels ----------------------------------------------------------------------------
// Runs functor f (stored TA in, TO out) over every layout; want(x, got, what) checks an element.
template <typename TO, typename TA, typename F, typename Fill, typename Want>
std::string run_layouts(const char* name, F f, Fill fill, Want want, const harness::Mode& m, uint32_t seed) {
  using SO = typename Io<TO>::S;
  using SA = typename Io<TA>::S;
  int li = 0;
  for (const Lay& l : kLays) {
    emu::clear_globals();
    const Geo g = geo_of(l);
    Buf<SA> xb("x", size_t(g.xspan + l.xoff), SA{});
    Buf<SO> ob("out", size_t(g.ospan + l.ooff), Io<TO>::unwritten());
    Gen gen(seed * 977 + li, li * 7);
    for (size_t p = 0; p < xb.size(); ++p) xb[p] = fill(gen, int64_t(p) - l.xoff);
    const View ov = view_of(ob.data() + l.ooff, g, true), xv = view_of(xb.data() + l.xoff, g, false);
    std::string path;
    run_map1_emu<TO, TA>(ov, xv, f, l.cap, m, seed + li, &path);
    if (path != l.path) return fmt("%s %s: run_map1 took %s, the layout is meant for %s", name, l.tag, path.c_str(), l.path);
    for (const std::string& e : {xb.guards(), ob.guards()})
      if (!e.empty()) return fmt("%s %s: %s", name, l.tag, e.c_str());
    std::vector<char> covered(ob.size(), 0);
    std::string err;
    for_each_elem(g, [&](int64_t k, int64_t xo, int64_t oo) {
      if (!err.empty()) return;
      covered[size_t(l.ooff + oo)] = 1;
      const std::string e = want(xb[size_t(l.xoff + xo)], ob[size_t(l.ooff + oo)]);
      if (!e.empty()) err = fmt("%s %s: element %lld: %s", name, l.tag, static_cast<long long>(k), e.c_str());
    });
    if (!err.empty()) return err;
    for (size_t p = 0; p < ob.size(); ++p)
      if (!covered[p] && Io<TO>::bits(ob[p]) != Io<TO>::bits(Io<TO>::unwritten()))
        return fmt("%s %s: out[%zu] is outside the output view but was written", name, l.tag, p);
    ++li;
  }
  return "";
}

template <typename T, UnaryOp OP>
std::string run_fwd(const OpInfo& info, const harness::Mode& m, uint32_t seed) {
  using I = Io<T>;
  auto fill = [](Gen& gen, int64_t p) { return I::put(gen.x(p)); };
  auto want = [&info](typename I::S xs, typename I::S got) {
    const double x = I::get(xs), ref = ref_fwd(OP, x);
    return compare<T>("out", got, ref, info.fwd.ulps(), scale_of(info.fwd.scale, x, 0, ref), floor_of(x, 0), x, 0);
  };
  return report(run_layouts<T, T>(info.name, UnaryFloat<T, OP>{}, fill, want, m, seed));
}

// int32 neg / abs / square / sign: wrap around like uint32 arithmetic.
template <UnaryOp OP>
std::string run_int(const char* name, const harness::Mode& m, uint32_t seed) {
  const int32_t special[] = {0, 1, -1, 2, -7, INT_MAX, INT_MIN, INT_MIN + 1, 46340, 46341, -46341, 65536, -65536, 1 << 30};
  auto fill = [&special](Gen& gen, int64_t p) -> int32_t {
    if (p >= 0 && p % 3 == 0) return special[(p / 3) % (sizeof(special) / sizeof(special[0]))];
    return static_cast<int32_t>(gen.rng());
  };
  auto want = [name](int32_t x, int32_t got) -> std::string {
    const int64_t v = x;
    int64_t w = 0;
    switch (OP) {
      case UnaryOp::Neg: w = -v; break;
      case UnaryOp::Abs: w = v < 0 ? -v : v; break;
      case UnaryOp::Square: w = v * v; break;
      default: w = (v > 0) - (v < 0); break;
    }
    const int32_t wrapped = static_cast<int32_t>(static_cast<uint32_t>(static_cast<uint64_t>(w)));
    if (got == wrapped) return "";
    return fmt("%s(%d) = %d, want %d", name, x, got, wrapped);
  };
  return run_layouts<int32_t, int32_t>(name, UnaryInt<OP>{}, fill, want, m, seed);
}

// logicalNot: 1 where the value is 0 (or -0), else 0 (NaN included).
template <typename T>
std::string run_lnot(const harness::Mode& m, uint32_t seed) {
  using I = Io<T>;
  auto fill = [](Gen& gen, int64_t p) -> typename I::S {
    if constexpr (std::is_same_v<T, uint8_t>) {
      return static_cast<uint8_t>(gen.rng() % 3 == 0 ? 0 : 1);
    } else if constexpr (std::is_same_v<T, int32_t>) {
      const uint32_t r = gen.rng();
      return r % 3 == 0 ? 0 : static_cast<int32_t>(r);
    } else {
      return I::put(p >= 0 && p % 2 == 0 ? gen.x(p / 2 * 5) : (gen.rng() % 4 == 0 ? 0.0 : gen.x(p)));
    }
  };
  auto want = [](typename I::S xs, uint8_t got) -> std::string {
    const double x = I::get(xs);
    const uint8_t w = x == 0 ? 1 : 0;
    if (got == w) return "";
    return fmt("logicalNot(%.9g) = %d, want %d", x, got, w);
  };
  return run_layouts<uint8_t, T>("logicalNot", LogicalNot<T>{}, fill, want, m, seed);
}

// ---- unary backward -------------------------------------------------------------------------------
struct Len {
  const char* tag;
  long long n;
  int cap;
};
const Len kLens[] = {{"n1", 1, 0},     {"n3", 3, 0},           {"n255", 255, 0},       {"n257", 257, 0},
                     {"n1031", 1031, 0}, {"n5003-grid1", 5003, 1}, {"n9001-grid3", 9001, 3}};

// geluTanh' is not compared where x * x overflows float (see the top).
bool skip_grad(UnaryOp op, double x) { return op == UnaryOp::GeluTanh && std::isfinite(x) && std::fabs(x) > 1.8e19; }

template <typename T, UnaryOp OP>
std::string run_bwd(const OpInfo& info, const harness::Mode& m, uint32_t seed) {
  using I = Io<T>;
  using S = typename I::S;
  int li = 0;
  for (const Len& l : kLens) {
    emu::clear_globals();
    const long long n = l.n;
    Buf<S> x("x", size_t(n), 0), dy("dy", size_t(n), 0), dx("dx", size_t(n), I::unwritten());
    Gen gen(seed * 131 + li, li * 11);
    for (long long p = 0; p < n; ++p) {
      x[p] = I::put(gen.x(p));
      dy[p] = I::put(gen.g(p));
    }
    // backward.cu's launch_unary_bw: grid_cap((n + 255) / 256) blocks of 256
    emu::launch(cfg_of("unary_bw_kernel", grid_cap_((n + 255) / 256, l.cap), 256, m, seed + li),
                [&] { unary_bw_kernel<T, static_cast<int>(OP)>(dev<T>(dx), dev<T>(x), dev<T>(dy), n); });
    for (const std::string& e : {x.guards(), dy.guards(), dx.guards()})
      if (!e.empty()) return fmt("%s %s: %s", info.name, l.tag, e.c_str());
    for (long long p = 0; p < n; ++p) {
      const double xv = I::get(x[p]), gv = I::get(dy[p]), ref = ref_grad(OP, xv, gv);
      if (skip_grad(OP, xv)) {
        if (I::bits(dx[p]) == I::bits(I::unwritten())) return fmt("%s' %s: dx[%lld] unwritten", info.name, l.tag, p);
        continue;
      }
      const std::string e =
          compare<T>("dx", dx[p], ref, info.bw.ulps(), scale_of(info.bw.scale, xv, gv, ref), floor_of(xv, gv), xv, gv);
      if (!e.empty()) return fmt("%s' %s: element %lld: %s", info.name, l.tag, p, e.c_str());
    }
    ++li;
  }
  return report("");
}

// ---- SwiGLU ---------------------------------------------------------------------------------------
struct SwShape {
  const char* tag;
  long long rows, h;
  int cap;
};
const SwShape kSw[] = {{"1x1", 1, 1, 0},    {"1x3", 1, 3, 0},        {"3x1", 3, 1, 0},         {"2x255", 2, 255, 0},
                       {"5x257", 5, 257, 0}, {"33x70-grid2", 33, 70, 2}, {"1x1031-grid1", 1, 1031, 1}, {"300x7-grid3", 300, 7, 3}};

// x = [rows, 2h]: a (the gate, first half) from the special / random mix; b moderate, with
// specials (inf, NaN, 0, 1e30) only where a = 0 or 1e-6 < |a| < 20, so that an underflow of the
// float silu(a) (a subnormal, or a < -88.7) never meets an infinite b.
template <typename T>
void fill_swiglu(Buf<typename Io<T>::S>& x, long long rows, long long h, Gen& gen) {
  using I = Io<T>;
  const double bs[] = {INFINITY, -INFINITY, NAN, 0.0, -0.0, 1e30};
  for (long long r = 0; r < rows; ++r)
    for (long long j = 0; j < h; ++j) {
      const long long p = r * h + j;
      const double a = I::get(I::put(gen.x(p)));
      std::uniform_real_distribution<double> u(-3, 3);
      double b = u(gen.rng);
      if ((a == 0 || (std::fabs(a) > 1e-6 && std::fabs(a) < 20)) && p % 7 == 3) b = bs[(p / 7) % 6];
      x[size_t(r * 2 * h + j)] = I::put(a);
      x[size_t(r * 2 * h + h + j)] = I::put(b);
    }
}

template <typename T>
std::string run_swiglu(const harness::Mode& m, uint32_t seed) {
  using I = Io<T>;
  using S = typename I::S;
  int li = 0;
  for (const SwShape& s : kSw) {
    emu::clear_globals();
    const long long n = s.rows * s.h;
    Buf<S> x("x", size_t(2 * n), 0), o("out", size_t(n), I::unwritten());
    Gen gen(seed * 31 + li, li * 5);
    fill_swiglu<T>(x, s.rows, s.h, gen);
    // elementwise.cu's swiglu: grid_for(n) blocks of kThreads, h = the output's last dim
    emu::launch(cfg_of("swiglu_kernel", grid_for_(n, s.cap), kThreadsHost, m, seed + li),
                [&] { swiglu_kernel<T>(dev<T>(o), dev<T>(x), n, s.h); });
    for (const std::string& e : {x.guards(), o.guards()})
      if (!e.empty()) return fmt("swiglu %s: %s", s.tag, e.c_str());
    for (long long r = 0; r < s.rows; ++r)
      for (long long j = 0; j < s.h; ++j) {
        const double a = I::get(x[size_t(r * 2 * s.h + j)]), b = I::get(x[size_t(r * 2 * s.h + s.h + j)]);
        const double ref = a / (1 + std::exp(-a)) * b;
        const std::string e = compare<T>("out", o[size_t(r * s.h + j)], ref, kSwiglu.ulps(), 0, floor_of(a, b), a, b);
        if (!e.empty()) return fmt("swiglu %s: row %lld col %lld (a %.9g b %.9g): %s", s.tag, r, j, a, b, e.c_str());
      }
    ++li;
  }
  return report("");
}

// db = (g a) sigmoid(a) is not compared where g a overflows float and sigmoid(a) is 0 (a <
// -88.7): the kernel (like the CPU's) gives inf * 0 = NaN there, for a limit of 0.
bool skip_db(double a, double g) { return std::isfinite(a) && a < -88 && std::isinf(static_cast<float>(g * a)); }

template <typename T>
std::string run_swiglu_bwd(const harness::Mode& m, uint32_t seed) {
  using I = Io<T>;
  using S = typename I::S;
  int li = 0;
  for (const SwShape& s : kSw) {
    emu::clear_globals();
    const long long n = s.rows * s.h;
    Buf<S> x("x", size_t(2 * n), 0), dy("dy", size_t(n), 0), dx("dx", size_t(2 * n), I::unwritten());
    Gen gen(seed * 37 + li, li * 3);
    fill_swiglu<T>(x, s.rows, s.h, gen);
    for (long long p = 0; p < n; ++p) dy[size_t(p)] = I::put(gen.g(p));
    // backward.cu's swiglu_backward: grid_cap((rows * h + 255) / 256) blocks of 256
    emu::launch(cfg_of("swiglu_bw", grid_cap_((n + 255) / 256, s.cap), 256, m, seed + li),
                [&] { swiglu_bw<T>(dev<T>(dx), dev<T>(x), dev<T>(dy), s.rows, s.h); });
    for (const std::string& e : {x.guards(), dy.guards(), dx.guards()})
      if (!e.empty()) return fmt("swiglu' %s: %s", s.tag, e.c_str());
    for (long long r = 0; r < s.rows; ++r)
      for (long long j = 0; j < s.h; ++j) {
        const size_t ia = size_t(r * 2 * s.h + j), ib = ia + size_t(s.h);
        const double a = I::get(x[ia]), b = I::get(x[ib]), g = I::get(dy[size_t(r * s.h + j)]);
        // d/da silu(a) b = g b s (1 + a (1 - s)), d/db = g silu(a)
        const double da = g * b * sig(a) * (1 + a * sigc(a)), db = g * a * sig(a);
        const double fl = floor_of(a, b) * (1 + mag(g));
        std::string e = compare<T>("da", dx[ia], da, kSwigluDa.ulps(), mag(g) * mag(b) * (1 + mag(a)), fl, a, g);
        if (e.empty() && skip_db(a, g)) e = I::bits(dx[ib]) == I::bits(I::unwritten()) ? "db: unwritten" : "";
        else if (e.empty()) e = compare<T>("db", dx[ib], db, kSwigluDb.ulps(), 0, fl, a, g);
        if (!e.empty())
          return fmt("swiglu' %s: row %lld col %lld (a %.9g b %.9g g %.9g): %s", s.tag, r, j, a, b, g, e.c_str());
      }
    ++li;
  }
  return report("");
}

// ---- cases ----------------------------------------------------------------------------------------
// f(std::integral_constant<UnaryOp, op>) for a run-time op.
template <class F>
std::string with_op(UnaryOp op, F&& f) {
  switch (op) {
#define DR_TEST_OP(name, str) \
  case UnaryOp::name: return f(std::integral_constant<UnaryOp, UnaryOp::name>{});
    DR_UNARY_OP_VALUES(DR_TEST_OP)
#undef DR_TEST_OP
    default: return "unknown op";
  }
}

// Every float unary op of the op table has a row in kOps (a new op needs its references here).
std::string check_table() {
  for (int i = 0; i < static_cast<int>(UnaryOp::Count); ++i) {
    const UnaryOp op = static_cast<UnaryOp>(i);
    if (op == UnaryOp::LogicalNot) continue;
    bool found = false;
    for (const OpInfo& o : kOps) found = found || o.op == op;
    if (!found) return fmt("unary op %s has no reference in unary_test.cpp", dualroute::enum_name(op));
  }
  return "";
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<harness::Case> cases;
  cases.push_back({"unary/table", true, 1, [] { return check_table(); }});
  int ci = 0;
  for (const OpInfo& info : kOps) {
    for (int bf = 0; bf < 2; ++bf)
      for (int mi = 0; mi < 3; ++mi) {
        const harness::Mode m = harness::kModes[mi];
        const uint32_t seed = 7100u + 19u * static_cast<uint32_t>(ci) + 3u * static_cast<uint32_t>(bf);
        const OpInfo* ip = &info;
        const char* dt = bf ? "bf16" : "f32";
        const bool quick = mi == (ci + bf) % 3;
        cases.push_back({fmt("unary/fwd/%s/%s/%s", info.name, dt, harness::mode_name(m).c_str()), quick, 3,
                         [ip, bf, m, seed] {
                           return with_op(ip->op, [&](auto tag) {
                             constexpr UnaryOp OP = decltype(tag)::value;
                             return bf ? run_fwd<bf16_t, OP>(*ip, m, seed) : run_fwd<float, OP>(*ip, m, seed);
                           });
                         }});
        cases.push_back({fmt("unary/bwd/%s/%s/%s", info.name, dt, harness::mode_name(m).c_str()), quick, 2,
                         [ip, bf, m, seed] {
                           return with_op(ip->op, [&](auto tag) {
                             constexpr UnaryOp OP = decltype(tag)::value;
                             return bf ? run_bwd<bf16_t, OP>(*ip, m, seed + 1) : run_bwd<float, OP>(*ip, m, seed + 1);
                           });
                         }});
      }
    ++ci;
  }
  for (int mi = 0; mi < 3; ++mi) {
    const harness::Mode m = harness::kModes[mi];
    const std::string mn = harness::mode_name(m);
    const uint32_t s = 9300u + 5u * static_cast<uint32_t>(mi);
    cases.push_back({fmt("unary/int32/neg/%s", mn.c_str()), mi == 0, 3, [m, s] { return run_int<UnaryOp::Neg>("neg", m, s); }});
    cases.push_back({fmt("unary/int32/abs/%s", mn.c_str()), mi == 1, 3, [m, s] { return run_int<UnaryOp::Abs>("abs", m, s + 1); }});
    cases.push_back({fmt("unary/int32/square/%s", mn.c_str()), mi == 2, 3,
                     [m, s] { return run_int<UnaryOp::Square>("square", m, s + 2); }});
    cases.push_back({fmt("unary/int32/sign/%s", mn.c_str()), mi == 0, 3, [m, s] { return run_int<UnaryOp::Sign>("sign", m, s + 3); }});
    cases.push_back({fmt("unary/logicalNot/f32/%s", mn.c_str()), mi == 1, 3, [m, s] { return run_lnot<float>(m, s + 4); }});
    cases.push_back({fmt("unary/logicalNot/bf16/%s", mn.c_str()), mi == 2, 3, [m, s] { return run_lnot<bf16_t>(m, s + 5); }});
    cases.push_back({fmt("unary/logicalNot/int32/%s", mn.c_str()), mi == 0, 3, [m, s] { return run_lnot<int32_t>(m, s + 6); }});
    cases.push_back({fmt("unary/logicalNot/bool/%s", mn.c_str()), mi == 1, 3, [m, s] { return run_lnot<uint8_t>(m, s + 7); }});
    cases.push_back({fmt("unary/swiglu/f32/%s", mn.c_str()), mi == 0, 2, [m, s] { return run_swiglu<float>(m, s + 8); }});
    cases.push_back({fmt("unary/swiglu/bf16/%s", mn.c_str()), mi == 1, 2, [m, s] { return run_swiglu<bf16_t>(m, s + 9); }});
    cases.push_back({fmt("unary/swiglu-bwd/f32/%s", mn.c_str()), mi == 2, 2, [m, s] { return run_swiglu_bwd<float>(m, s + 10); }});
    cases.push_back({fmt("unary/swiglu-bwd/bf16/%s", mn.c_str()), mi == 0, 2, [m, s] { return run_swiglu_bwd<bf16_t>(m, s + 11); }});
  }
  return harness::main(argc, argv, cases);
}
