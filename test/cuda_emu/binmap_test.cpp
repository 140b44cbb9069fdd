// The binary element-wise kernels of native/cuda/elementwise.cu run as kernels in the emulator
// (regions ewmap2, ewcompare, ewwhere, ewconvert; the element functions binary_f / BinaryInt are
// region ewbinary, whose floorDiv / remainder edge cases binary_test.cpp checks one by one):
//  - map2_flat<V> (16-byte packs and the scalar tail; an operand broadcast as a stride-0 view,
//    also at an unaligned address, or as a host value: Arg{nullptr, v}, how binary_scalar passes
//    its scalar, first or second), map2_flat<1> (unaligned a / b / out, short runs) and
//    map2_strided (row, column and outer-product broadcasts, size-1 dims, a transposed operand,
//    stepped and transposed outputs, dims collapse() merges, eight dims, a host scalar), picked
//    as run_map2 picks them (collapse / is_flat are the source's own; every layout asserts which
//    kernel it reaches), with every functor binary_typed launches: BinaryFloat<T, op> for add sub
//    mul div pow maximum minimum floorDiv remainder (float32, bf16), BinaryInt<op> for the same
//    nine (int32: wrap-around, INT_MIN / -1, division by 0 = 0, pow saturating), and
//    Compare<T, op> for eq ne lt le gt ge logicalAnd logicalOr (float32, bf16, int32, bool in,
//    bool out; NaN compares unequal and counts as true).
//  - where_flat / where_strided (where_bits<U> for U = uint32 (float32 / int32 bits, NaN payloads
//    included), uint16 (bf16), uint8 (bool)), the condition broadcast and strided too.
//  - Convert<O, I> (copy between dtypes) through map1_flat / map1_strided as copy() -> run_map1
//    launches it, all 16 pairs of float32, bf16, int32, bool.
// Sizes 1, 3, 16, 37, 63 ... 9001; grids as the host's (grid_for with 132 multiprocessors) and
// capped at 1..3 blocks so every grid-stride loop (pack loop and tail) goes round. Outputs start as
// an "unwritten" pattern: every element of the output view must be written, nothing else in its
// buffer, and the guard zones around every buffer stay intact.
//
// References are written here with plain loops in float64 / int64, from the formulas (not from
// the device functions): add sub mul div, floorDiv = floor of the float quotient (the CPU's rule),
// remainder = fmod with the divisor's sign, maximum / minimum propagate NaN and otherwise return
// a > b ? a : b (a < b ? a : b: of two equal zeros the second, as the CPU kernel), pow = std::pow.
// Single correctly rounded operations (all but pow) are compared bit for bit after rounding the
// float64 result to float and then to bf16 (double rounding is innocuous for + - * / with
// 53 >= 2 * 24 + 2; the kernel also goes float -> bf16); NaN compares as any NaN. pow: NaN exactly
// where the reference is NaN, infinities where it overflows, else 4 units of 2^-24 |ref| (CUDA's
// powf: 4 ulp at most; ulp <= 2^-23 |ref|) plus 2^-126 (1 + |a|)(1 + |b|) for results below
// float's normal range; bf16 adds 2^-8 |ref|. int32 references in int64, wrapped to 32 bits; pow
// exact in __int128 then saturated (the CPU's from_double(pow) of an exact power). Conversions:
// float -> bf16 rounds to nearest even with a reference that rounds with nearbyint at the bf16
// quantum (independent of the emulator's f2bf), NaN stays NaN, overflow gives inf; int32 -> bf16
// goes through float (twice rounded, as the CPU's from_double); float / bf16 -> int32 truncate
// toward zero, saturate and give 0 for NaN; x -> bool is x != 0 (NaN: 1, -0: 0).
// Inputs: random values with special ones at fixed positions: +-0, subnormals, FLT_MIN, 1, 0.5,
// halves, exact multiples, 3e38 / FLT_MAX (overflow of + and *), 1e-30 (underflow), +-inf, NaN;
// comparisons draw from a small set so that ties are common; int32 from INT_MIN, INT_MAX, -1, 0,
// 46341 (square overflow) and random bits.
// Not covered here (host code): binary_typed's dtype checks, host_from_d's rounding of a double
// scalar (the test passes the stored value), copy's cudaMemcpy path for same-dtype contiguous views.
#include <cfloat>
#include <climits>
#include <cmath>
#include <cstring>
#include <random>
#include <type_traits>

#include "ewconv_kernel.inc"
#include "ewmap_kernel.inc"
#include "ewbinary_kernel.inc"
#include "ewmap2_kernel.inc"
#include "ewcompare_kernel.inc"
#include "ewconvert_kernel.inc"
#include "ewwhere_kernel.inc"
#include "harness.h"
#include "map_host.h"

using namespace dualroute::cuda;
using dualroute::BinaryOp;
using dualroute::View;
using harness::Buf;
using harness::cfg_of;
using harness::fmt;
using namespace emu_host;

namespace {

// (bf16_of and the Io storage types: map_host.h)

template <typename T>
T as_dev(typename Io<T>::S s) {
  T t;
  static_assert(sizeof(T) == sizeof(s), "size");
  memcpy(&t, &s, sizeof(T));
  return t;
}

// ---- the host side, mirrored (extract.js checks run_map2's, where_bits', copy's statements) ------
// (device.cuh's grid helpers and run_map1: map_host.h)

// elementwise.cu's run_map2 (a / b null: the host value aval / bval); *path: the kernel that ran.
template <typename TO, typename T, typename F>
void run_map2_emu(const View& out, const View* av, T aval, const View* bv, T bval, F f, int cap,
                  const harness::Mode& m, uint32_t seed, std::string* path) {
  const int64_t n = view_numel(out);
  *path = "none";
  if (n == 0) return;
  const int64_t* strs[3] = {out.strides, av ? av->strides : kZeroStrides, bv ? bv->strides : kZeroStrides};
  const Layout<3> L = collapse<3>(out, strs);
  TO* o = static_cast<TO*>(out.data);
  Arg<T> a{av ? static_cast<const T*>(av->data) : nullptr, aval};
  Arg<T> b{bv ? static_cast<const T*>(bv->data) : nullptr, bval};
  if (is_flat(L)) {
    const int sa = static_cast<int>(L.str[1][0]), sb = static_cast<int>(L.str[2][0]);
    constexpr int V = 16 / (sizeof(TO) > sizeof(T) ? sizeof(TO) : sizeof(T));
    const bool vec = n >= V && aligned_(o, sizeof(TO) * V) && (sa == 0 || aligned_(a.p, sizeof(T) * V)) &&
                     (sb == 0 || aligned_(b.p, sizeof(T) * V));
    if (vec) {
      emu::launch(cfg_of("map2_flat<V>", grid_for_(n / V, cap), kThreadsHost, m, seed),
                  [&] { map2_flat<V>(o, a, sa, b, sb, n, f); });
      *path = "vec";
    } else {
      emu::launch(cfg_of("map2_flat<1>", grid_for_(n, cap), kThreadsHost, m, seed),
                  [&] { map2_flat<1>(o, a, sa, b, sb, n, f); });
      *path = "flat";
    }
  } else {
    emu::launch(cfg_of("map2_strided", grid_for_(n, cap), kThreadsHost, m, seed), [&] { map2_strided(L, o, a, b, n, f); });
    *path = fmt("strided%d", L.ndim);
  }
}

// where_bits<U>
template <typename U>
void run_where_emu(const View& out, const View& cond, const View& a, const View& b, int cap, const harness::Mode& m,
                   uint32_t seed, std::string* path) {
  const int64_t n = view_numel(out);
  *path = "none";
  if (n == 0) return;
  const int64_t* strs[4] = {out.strides, cond.strides, a.strides, b.strides};
  const Layout<4> L = collapse<4>(out, strs);
  U* o = static_cast<U*>(out.data);
  const uint8_t* c = static_cast<const uint8_t*>(cond.data);
  const U* pa = static_cast<const U*>(a.data);
  const U* pb = static_cast<const U*>(b.data);
  if (is_flat(L)) {
    emu::launch(cfg_of("where_flat", grid_for_(n, cap), kThreadsHost, m, seed), [&] {
      where_flat<U>(o, c, static_cast<int>(L.str[1][0]), pa, static_cast<int>(L.str[2][0]), pb,
                    static_cast<int>(L.str[3][0]), n);
    });
    *path = "flat";
  } else {
    emu::launch(cfg_of("where_strided", grid_for_(n, cap), kThreadsHost, m, seed),
                [&] { where_strided<U>(L, o, c, pa, pb, n); });
    *path = fmt("strided%d", L.ndim);
  }
}

// ---- layouts ------------------------------------------------------------------------------------
struct Lay {
  const char* tag;
  int ndim;
  int64_t shape[8];
  int64_t as[8], bs[8], cs[8];  // strides of a, b, where's condition (elements)
  int64_t os[8];                // out's strides; all 0: contiguous
  int64_t aoff, boff, coff, ooff;  // element offsets of the views into their 256-byte aligned buffers
  int scal;                     // 1: a is a host value, 2: b is (binary_scalar); where / copy skip these
  int cap;                      // grid cap (0: the host's grid)
  const char* path;             // kernel run_map2 must pick: vec, flat, stridedN (N collapsed dims)
  const char* wpath;            // where_bits' kernel
  const char* cpath;            // copy (run_map1 of a -> out)'s kernel
};

// clang-format off
const Lay kLays[] = {
  // tag               nd shape                      a strides                        b strides                        cond strides           out strides  aoff boff coff ooff scal cap path wpath cpath
  {"n1",               1, {1},                       {1},                             {1},                             {1},                   {},          0, 0, 0, 0, 0, 0, "flat", "flat", "flat"},
  {"n3",               1, {3},                       {1},                             {1},                             {1},                   {},          0, 0, 0, 0, 0, 0, "flat", "flat", "flat"},
  {"n16",              1, {16},                      {1},                             {1},                             {1},                   {},          0, 0, 0, 0, 0, 0, "vec", "flat", "vec"},
  {"n1031",            1, {1031},                    {1},                             {1},                             {1},                   {},          0, 0, 0, 0, 0, 0, "vec", "flat", "vec"},
  {"n5003-grid1",      1, {5003},                    {1},                             {1},                             {1},                   {},          0, 0, 0, 0, 0, 1, "vec", "flat", "vec"},
  {"n9001-grid3",      1, {9001},                    {1},                             {1},                             {1},                   {},          0, 0, 0, 0, 0, 3, "vec", "flat", "vec"},
  {"unaligned-a",      1, {2049},                    {1},                             {1},                             {1},                   {},          1, 0, 1, 0, 0, 2, "flat", "flat", "flat"},
  {"unaligned-b",      1, {2051},                    {1},                             {1},                             {1},                   {},          0, 3, 0, 0, 0, 2, "flat", "flat", "vec"},
  {"unaligned-out",    1, {1029},                    {1},                             {1},                             {1},                   {},          0, 0, 0, 1, 0, 1, "flat", "flat", "flat"},
  {"bcast-a-unaligned",1, {1037},                    {0},                             {1},                             {0},                   {},          1, 0, 0, 0, 0, 2, "vec", "flat", "vec"},
  {"bcast-b",          1, {37},                      {1},                             {0},                             {1},                   {},          0, 0, 0, 0, 0, 0, "vec", "flat", "vec"},
  {"bcast-both",       2, {4099, 1},                 {0, 0},                          {0, 0},                          {0, 0},                {},          2, 0, 0, 0, 0, 1, "vec", "flat", "vec"},
  {"scalar-a",         1, {1031},                    {0},                             {1},                             {0},                   {},          0, 0, 0, 0, 1, 0, "vec", "-", "-"},
  {"scalar-b-grid1",   1, {5003},                    {1},                             {0},                             {0},                   {},          0, 0, 0, 0, 2, 1, "vec", "-", "-"},
  {"scalar-b-unal",    1, {2049},                    {1},                             {0},                             {0},                   {},          2, 0, 0, 0, 2, 2, "flat", "-", "-"},
  {"scalar-a-rows",    2, {13, 33},                  {0, 0},                          {1, 13},                         {0, 0},                {},          0, 0, 0, 0, 1, 1, "strided2", "-", "-"},
  {"size1-dims",       4, {1, 7, 1, 9},              {5, 9, 77, 1},                   {123, 9, 45, 1},                 {0, 9, 0, 1},          {3, 9, 1, 1}, 0, 0, 0, 0, 0, 0, "vec", "flat", "vec"},
  {"row-bcast",        2, {13, 33},                  {33, 1},                         {0, 1},                          {33, 1},               {},          0, 0, 0, 0, 0, 1, "strided2", "strided2", "vec"},
  {"col-bcast",        2, {13, 33},                  {33, 1},                         {1, 0},                          {0, 1},                {},          0, 0, 0, 0, 0, 2, "strided2", "strided2", "vec"},
  {"outer",            2, {29, 31},                  {1, 0},                          {0, 1},                          {1, 0},                {},          0, 0, 0, 0, 0, 2, "strided2", "strided2", "strided2"},
  {"size1-bcast",      3, {6, 1, 7},                 {7, 7, 1},                       {1, 1, 0},                       {0, 0, 1},             {},          0, 0, 0, 0, 0, 3, "strided2", "strided2", "vec"},
  {"transposed-a",     2, {37, 29},                  {1, 37},                         {29, 1},                         {29, 1},               {},          0, 0, 0, 0, 0, 2, "strided2", "strided2", "strided2"},
  {"out-step2",        1, {1000},                    {1},                             {1},                             {1},                   {2},         0, 0, 0, 0, 0, 0, "strided1", "strided1", "strided1"},
  {"out-transposed",   2, {19, 23},                  {23, 1},                         {0, 1},                          {23, 1},               {1, 19},     1, 0, 0, 3, 0, 2, "strided2", "strided2", "strided2"},
  {"merge",            4, {5, 1, 6, 7},              {54, 999, 9, 1},                 {42, 0, 7, 1},                   {0, 0, 0, 1},          {},          0, 0, 0, 0, 0, 0, "strided2", "strided2", "strided2"},
  {"eight-dims",       8, {2, 3, 2, 3, 2, 3, 2, 2},  {1, 2, 6, 12, 36, 72, 216, 432}, {216, 0, 72, 24, 0, 4, 2, 1},    {0, 1, 0, 3, 6, 0, 1, 0}, {},       0, 0, 0, 0, 0, 1, "strided8", "strided8", "strided8"},
};
// clang-format on

struct Geo {
  int ndim;
  int64_t shape[8], as[8], bs[8], cs[8], os[8];
  int64_t n, aspan, bspan, cspan, ospan;
};
Geo geo_of(const Lay& l) {
  Geo g{};
  g.ndim = l.ndim;
  bool contig = true;
  for (int d = 0; d < l.ndim; ++d) contig = contig && l.os[d] == 0;
  int64_t s = 1;
  for (int d = l.ndim - 1; d >= 0; --d) {
    g.shape[d] = l.shape[d];
    g.as[d] = l.as[d];
    g.bs[d] = l.bs[d];
    g.cs[d] = l.cs[d];
    g.os[d] = contig ? s : l.os[d];
    s *= l.shape[d];
  }
  g.n = s;
  g.aspan = g.bspan = g.cspan = g.ospan = 1;
  for (int d = 0; d < l.ndim; ++d) {
    g.aspan += (g.shape[d] - 1) * g.as[d];
    g.bspan += (g.shape[d] - 1) * g.bs[d];
    g.cspan += (g.shape[d] - 1) * g.cs[d];
    g.ospan += (g.shape[d] - 1) * g.os[d];
  }
  return g;
}
View view_of(void* p, const Geo& g, const int64_t* str) {
  View v{};
  v.data = p;
  v.ndim = g.ndim;
  for (int d = 0; d < g.ndim; ++d) {
    v.shape[d] = g.shape[d];
    v.strides[d] = str[d];
  }
  return v;
}
struct Offs {
  int64_t a, b, c, o;
};
// fn(k, offsets) for the logical elements in row-major order.
template <class Fn>
void for_each_elem(const Geo& g, Fn&& fn) {
  for (int64_t k = 0; k < g.n; ++k) {
    int64_t r = k;
    Offs f{0, 0, 0, 0};
    for (int d = g.ndim - 1; d >= 0; --d) {
      const int64_t c = r % g.shape[d];
      r /= g.shape[d];
      f.a += c * g.as[d];
      f.b += c * g.bs[d];
      f.c += c * g.cs[d];
      f.o += c * g.os[d];
    }
    fn(k, f);
  }
}

// ---- inputs -------------------------------------------------------------------------------------
const double kSpecial[] = {0.0, -0.0, 1.401298464324817e-45, -1e-40, 1.1754943508222875e-38, 1e-30, -1e-30, 0.5, -0.5,
                           1, -1, 1.5, -2.5, 2, -2, 3, -3, 6, -7, 7, 0.1, 1e5, -1e5, 1e19, 1e20, -1e20, 3e38, -3e38,
                           FLT_MAX, -FLT_MAX, INFINITY, -INFINITY, NAN, 2, 0.25, 1e-7};
constexpr int kNSpecial = sizeof(kSpecial) / sizeof(kSpecial[0]);
const double kSmall[] = {0.0, -0.0, 1, -1, 2, 0.5, 1e-40, INFINITY, -INFINITY, NAN};  // comparisons: ties
const int32_t kIntSpecial[] = {0, 1, -1, 2, -2, 3, -7, 7, INT_MAX, INT_MIN, INT_MIN + 1, INT_MAX - 1, 46340, 46341,
                               -46341, 65536, -65536, 1 << 30, 31, 32};
constexpr int kNIntSpecial = sizeof(kIntSpecial) / sizeof(kIntSpecial[0]);

struct Gen {
  std::mt19937 rng;
  int rot, every;
  Gen(uint32_t seed, int r, int e) : rng(seed), rot(r), every(e) {}
  double uni(double lo, double hi) { return std::uniform_real_distribution<double>(lo, hi)(rng); }
  double random() {
    const double k = uni(0, 1);
    if (k < 0.45) return uni(-8, 8);
    if (k < 0.6) return std::round(uni(-9, 9));  // exact quotients / multiples, integer exponents
    if (k < 0.85) return (uni(0, 1) < 0.5 ? -1 : 1) * std::pow(10.0, uni(-6, 6));
    return uni(-0.1, 0.1);
  }
  double x(int64_t p) { return p >= 0 && p % every == 0 ? kSpecial[(p / every + rot) % kNSpecial] : random(); }
  double small() { return kSmall[rng() % (sizeof(kSmall) / sizeof(kSmall[0]))]; }
  int32_t i(int64_t p) {
    return p >= 0 && p % every == 0 ? kIntSpecial[(p / every + rot) % kNIntSpecial] : static_cast<int32_t>(rng());
  }
};

// ---- the generic driver ---------------------------------------------------------------------------
// Runs f over every layout (out TO, operands T); fa / fb (Gen&, position) give a / b's stored
// values, want(a, b, got) checks an element ("" when right).
template <typename TO, typename T, typename F, typename FillA, typename FillB, typename Want>
std::string run_layouts(const char* name, F f, FillA fa, FillB fb, Want want, const harness::Mode& m, uint32_t seed) {
  using SO = typename Io<TO>::S;
  using S = typename Io<T>::S;
  int li = 0;
  for (const Lay& l : kLays) {
    emu::clear_globals();
    const Geo g = geo_of(l);
    Buf<S> ab("a", size_t(g.aspan + l.aoff), S{}), bb("b", size_t(g.bspan + l.boff), S{});
    Buf<SO> ob("out", size_t(g.ospan + l.ooff), Io<TO>::unwritten());
    Gen ga(seed * 977 + li, li * 7, 5), gb(seed * 613 + li, li * 3, 3);
    for (size_t p = 0; p < ab.size(); ++p) ab[p] = fa(ga, int64_t(p) - l.aoff);
    for (size_t p = 0; p < bb.size(); ++p) bb[p] = fb(gb, int64_t(p) - l.boff);
    const S aval = fa(ga, 0), bval = fb(gb, 0);  // the host values of scalar layouts (specials)
    const View ov = view_of(ob.data() + l.ooff, g, g.os), av = view_of(ab.data() + l.aoff, g, g.as),
               bv = view_of(bb.data() + l.boff, g, g.bs);
    std::string path;
    run_map2_emu<TO, T>(ov, l.scal == 1 ? nullptr : &av, as_dev<T>(aval), l.scal == 2 ? nullptr : &bv, as_dev<T>(bval),
                        f, l.cap, m, seed + li, &path);
    if (path != l.path) return fmt("%s %s: run_map2 took %s, the layout is meant for %s", name, l.tag, path.c_str(), l.path);
    for (const std::string& e : {ab.guards(), bb.guards(), ob.guards()})
      if (!e.empty()) return fmt("%s %s: %s", name, l.tag, e.c_str());
    if (l.scal == 1)
      for (size_t p = 0; p < ab.size(); ++p) ab[p] = aval;  // a's values are the host value everywhere
    if (l.scal == 2)
      for (size_t p = 0; p < bb.size(); ++p) bb[p] = bval;
    std::vector<char> covered(ob.size(), 0);
    std::string err;
    for_each_elem(g, [&](int64_t k, const Offs& f) {
      if (!err.empty()) return;
      const size_t ao = l.scal == 1 ? 0 : size_t(l.aoff + f.a), bo = l.scal == 2 ? 0 : size_t(l.boff + f.b);
      covered[size_t(l.ooff + f.o)] = 1;
      const SO got = ob[size_t(l.ooff + f.o)];
      if (Io<TO>::bits(got) == Io<TO>::bits(Io<TO>::unwritten())) {
        err = fmt("%s %s: element %lld unwritten", name, l.tag, static_cast<long long>(k));
        return;
      }
      const std::string e = want(ab[ao], bb[bo], got);
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

// ---- float ops --------------------------------------------------------------------------------------
double py_mod(double a, double b) {
  double r = std::fmod(a, b);
  if (r != 0 && ((r < 0) != (b < 0))) r += b;
  return r;
}
double ref_float(BinaryOp op, double a, double b) {
  switch (op) {
    case BinaryOp::Add: return a + b;
    case BinaryOp::Sub: return a - b;
    case BinaryOp::Mul: return a * b;
    case BinaryOp::Div: return a / b;
    case BinaryOp::Pow: return std::pow(a, b);
    case BinaryOp::Maximum: return std::isnan(a) || std::isnan(b) ? NAN : (a > b ? a : b);
    case BinaryOp::Minimum: return std::isnan(a) || std::isnan(b) ? NAN : (a < b ? a : b);
    case BinaryOp::FloorDiv: return std::floor(static_cast<double>(static_cast<float>(a / b)));
    case BinaryOp::Remainder: return py_mod(a, b);
    default: return NAN;
  }
}

template <typename T, BinaryOp OP>
std::string run_float(const char* name, const harness::Mode& m, uint32_t seed) {
  using I = Io<T>;
  using S = typename I::S;
  auto fill = [](Gen& gen, int64_t p) -> S { return I::put(gen.x(p)); };
  auto want = [name](S as, S bs, S got) -> std::string {
    const double a = I::get(as), b = I::get(bs), ref = ref_float(OP, a, b), g = I::get(got);
    if (OP != BinaryOp::Pow) {  // one correctly rounded operation: the reference rounded to float, then T
      const S w = I::put(static_cast<double>(static_cast<float>(ref)));
      if (std::isnan(ref) ? I::isnan(got) : I::bits(got) == I::bits(w)) return "";
      return fmt("%s(%.9g, %.9g) = %.9g, want %.9g", name, a, b, g, I::get(w));
    }
    if (std::isnan(ref) || I::isnan(got)) {
      if (std::isnan(ref) && I::isnan(got)) return "";
      return fmt("%s(%.9g, %.9g) = %.9g, want %.9g", name, a, b, g, ref);
    }
    auto mag = [](double v) { return std::isfinite(v) ? std::fabs(v) : 0.0; };
    const double ef = 4 * 0x1p-24 * std::fabs(ref) + 0x1p-126 * (1 + mag(a)) * (1 + mag(b));
    const double tol = I::bf ? 0x1p-8 * std::fabs(ref) + (1 + 0x1p-8) * ef : ef;
    if (std::isinf(g)) {
      if ((g > 0) == (ref > 0) && (std::isinf(ref) || std::fabs(ref) + tol >= I::kMax)) return "";
      return fmt("%s(%.9g, %.9g) = %.9g, want %.9g", name, a, b, g, ref);
    }
    if (std::isinf(ref) || std::fabs(g - ref) > tol)
      return fmt("%s(%.9g, %.9g) = %.9g, want %.9g (tolerance %.3g)", name, a, b, g, ref, tol);
    return "";
  };
  return run_layouts<T, T>(name, BinaryFloat<T, OP>{}, fill, fill, want, m, seed);
}

// ---- int32 ops --------------------------------------------------------------------------------------
int64_t ref_int(BinaryOp op, int64_t a, int64_t b) {
  auto wrap = [](int64_t v) { return static_cast<int64_t>(static_cast<int32_t>(static_cast<uint32_t>(static_cast<uint64_t>(v)))); };
  switch (op) {
    case BinaryOp::Add: return wrap(a + b);
    case BinaryOp::Sub: return wrap(a - b);
    case BinaryOp::Mul: return wrap(a * b);
    case BinaryOp::Div:
      if (b == 0) return 0;
      return wrap(a / b);  // INT_MIN / -1 wraps to INT_MIN
    case BinaryOp::Pow: {
      if (b < 0) {  // from_double(pow(a, b)): |a^b| < 1 truncates to 0; pow(0, b < 0) = inf saturates
        if (a == 1) return 1;
        if (a == -1) return (b % 2) ? -1 : 1;
        if (a == 0) return INT_MAX;
        return 0;
      }
      // |a|^b by repeated multiplication, stopped once it passes 2^31 (|a| >= 2 from there on),
      // with the sign of a^b: saturated to INT_MAX / INT_MIN.
      const bool neg = a < 0 && (b % 2);
      const __int128 m = a < 0 ? -static_cast<__int128>(a) : a;
      __int128 r = 1;
      if (m <= 1) {
        r = b == 0 ? 1 : m;  // 0^0 = 1, 0^b = 0, 1^b = 1 (no loop of up to 2^31 steps)
      } else {
        for (int64_t e = 0; e < b && r <= (__int128(1) << 31); ++e) r *= m;
      }
      if (neg) return -r < INT_MIN ? INT_MIN : static_cast<int64_t>(-r);
      return r > INT_MAX ? INT_MAX : static_cast<int64_t>(r);
    }
    case BinaryOp::Maximum: return a > b ? a : b;
    case BinaryOp::Minimum: return a < b ? a : b;
    case BinaryOp::FloorDiv: {
      if (b == 0) return 0;
      int64_t q = a / b;
      if (a % b != 0 && ((a < 0) != (b < 0))) --q;
      return wrap(q);
    }
    case BinaryOp::Remainder: {
      if (b == 0) return 0;
      int64_t r = a % b;
      if (r != 0 && ((r < 0) != (b < 0))) r += b;
      return r;
    }
    default: return 0;
  }
}

template <BinaryOp OP>
std::string run_int(const char* name, const harness::Mode& m, uint32_t seed) {
  auto fa = [](Gen& gen, int64_t p) -> int32_t {
    if (OP == BinaryOp::Pow && p % 2) return static_cast<int32_t>(gen.rng() % 41) - 20;  // small bases
    return gen.i(p);
  };
  auto fb = [](Gen& gen, int64_t p) -> int32_t {
    if (OP == BinaryOp::Pow && p % 4) return static_cast<int32_t>(gen.rng() % 40) - 4;  // exponents -4..35
    if ((OP == BinaryOp::Div || OP == BinaryOp::FloorDiv || OP == BinaryOp::Remainder) && p % 2)
      return static_cast<int32_t>(gen.rng() % 21) - 10;  // small divisors, 0 included
    return gen.i(p);
  };
  auto want = [name](int32_t a, int32_t b, int32_t got) -> std::string {
    const int64_t w = ref_int(OP, a, b);
    if (got == w) return "";
    return fmt("%s(%d, %d) = %d, want %lld", name, a, b, got, static_cast<long long>(w));
  };
  return run_layouts<int32_t, int32_t>(name, BinaryInt<OP>{}, fa, fb, want, m, seed);
}

// ---- comparisons ------------------------------------------------------------------------------------
template <typename T, BinaryOp OP>
std::string run_cmp(const char* name, const harness::Mode& m, uint32_t seed) {
  using I = Io<T>;
  using S = typename I::S;
  auto fill = [](Gen& gen, int64_t p) -> S {
    if constexpr (std::is_same_v<T, uint8_t>) {
      return static_cast<uint8_t>(gen.rng() & 1);
    } else if constexpr (std::is_same_v<T, int32_t>) {
      return gen.rng() % 2 ? static_cast<int32_t>(gen.rng() % 5) - 2 : gen.i(p);
    } else {
      return I::put(gen.rng() % 4 ? gen.small() : gen.x(p));
    }
  };
  auto want = [name](S as, S bs, uint8_t got) -> std::string {
    const double a = I::get(as), b = I::get(bs);
    bool w = false;
    switch (OP) {
      case BinaryOp::Eq: w = a == b; break;
      case BinaryOp::Ne: w = !(a == b); break;
      case BinaryOp::Lt: w = a < b; break;
      case BinaryOp::Le: w = a <= b; break;
      case BinaryOp::Gt: w = a > b; break;
      case BinaryOp::Ge: w = a >= b; break;
      case BinaryOp::LogicalAnd: w = !(a == 0) && !(b == 0); break;
      case BinaryOp::LogicalOr: w = !(a == 0) || !(b == 0); break;
      default: break;
    }
    if (got == (w ? 1 : 0)) return "";
    return fmt("%s(%.9g, %.9g) = %d, want %d", name, a, b, got, w ? 1 : 0);
  };
  return run_layouts<uint8_t, T>(name, Compare<T, OP>{}, fill, fill, want, m, seed);
}

// ---- where -----------------------------------------------------------------------------------------
template <typename U>
std::string run_where(const harness::Mode& m, uint32_t seed) {
  int li = 0;
  for (const Lay& l : kLays) {
    if (l.scal) continue;
    emu::clear_globals();
    const Geo g = geo_of(l);
    Buf<U> ab("a", size_t(g.aspan + l.aoff), 0), bb("b", size_t(g.bspan + l.boff), 0);
    Buf<uint8_t> cb("cond", size_t(g.cspan + l.coff), 0);
    Buf<U> ob("out", size_t(g.ospan + l.ooff), Io<U>::unwritten());
    std::mt19937 rng(seed * 31 + li);
    for (size_t p = 0; p < ab.size(); ++p) ab[p] = static_cast<U>(rng());
    for (size_t p = 0; p < bb.size(); ++p) bb[p] = static_cast<U>(rng());
    for (size_t p = 0; p < cb.size(); ++p) cb[p] = static_cast<uint8_t>(rng() & 1);
    if (sizeof(U) == 4) ab[0] = 0x7fa00001u, bb[0] = 0xffc01234u;  // NaN payloads move as bits
    const View ov = view_of(ob.data() + l.ooff, g, g.os), av = view_of(ab.data() + l.aoff, g, g.as),
               bv = view_of(bb.data() + l.boff, g, g.bs), cv = view_of(cb.data() + l.coff, g, g.cs);
    std::string path;
    run_where_emu<U>(ov, cv, av, bv, l.cap, m, seed + li, &path);
    if (path != l.wpath) return fmt("where %s: where_bits took %s, the layout is meant for %s", l.tag, path.c_str(), l.wpath);
    for (const std::string& e : {ab.guards(), bb.guards(), cb.guards(), ob.guards()})
      if (!e.empty()) return fmt("where %s: %s", l.tag, e.c_str());
    std::vector<char> covered(ob.size(), 0);
    std::string err;
    for_each_elem(g, [&](int64_t k, const Offs& f) {
      if (!err.empty()) return;
      covered[size_t(l.ooff + f.o)] = 1;
      const U w = cb[size_t(l.coff + f.c)] ? ab[size_t(l.aoff + f.a)] : bb[size_t(l.boff + f.b)];
      const U got = ob[size_t(l.ooff + f.o)];
      if (got != w) err = fmt("where %s: element %lld = %#llx, want %#llx", l.tag, static_cast<long long>(k),
                               static_cast<unsigned long long>(got), static_cast<unsigned long long>(w));
    });
    if (!err.empty()) return err;
    for (size_t p = 0; p < ob.size(); ++p)
      if (!covered[p] && ob[p] != Io<U>::unwritten()) return fmt("where %s: out[%zu] outside the view was written", l.tag, p);
    ++li;
  }
  return "";
}

// ---- copy / cast ------------------------------------------------------------------------------------
// The converted value of x (stored I) as stored O, from the rules at the top.
template <typename O, typename I>
typename Io<O>::S ref_convert(typename Io<I>::S xs) {
  if constexpr (std::is_same_v<O, I>) {
    return xs;  // bits unchanged (NaN payloads too)
  } else {
    const double x = Io<I>::get(xs);
    if constexpr (std::is_same_v<O, float>) {
      return static_cast<float>(x);
    } else if constexpr (std::is_same_v<O, bf16_t>) {
      return bf16_of(static_cast<float>(x));
    } else if constexpr (std::is_same_v<O, int32_t>) {
      if (std::isnan(x)) return 0;
      if (x >= 2147483647.0) return INT_MAX;
      if (x <= -2147483648.0) return INT_MIN;
      return static_cast<int32_t>(std::trunc(x));
    } else {
      return static_cast<uint8_t>(x != 0 ? 1 : 0);  // NaN != 0
    }
  }
}

template <typename T>
typename Io<T>::S cast_input(Gen& gen, int64_t p) {
  if constexpr (std::is_same_v<T, uint8_t>) {
    return static_cast<uint8_t>(gen.rng() & 1);
  } else if constexpr (std::is_same_v<T, int32_t>) {
    const int32_t near[] = {16777217, -16777217, 16777219, 33554435, 2147483520, 2147483584, -2147483584, 257, 259, -385};
    return p % 7 == 1 ? near[(p / 7) % 10] : gen.i(p);  // float / bf16 rounding ties of integers
  } else if constexpr (std::is_same_v<T, float>) {
    // bf16 ties (even and odd), values just off them, NaNs with payloads, near-overflow
    const uint32_t bits[] = {0x3f808000u, 0x3f818000u, 0x3f808001u, 0x3f817fffu, 0x7f7f8000u, 0x7f7fffffu, 0xff7f8000u,
                             0x7f800001u, 0xffc00001u, 0x7fffffffu, 0x00008000u, 0x00018000u, 0x80000001u, 0x4f000000u,
                             0xcf000000u, 0x4effffffu, 0xcf000001u, 0x3f7fffffu, 0xbf800000u, 0x4f800000u};
    if (p % 4 == 2) {
      float f;
      memcpy(&f, &bits[(p / 4) % 20], 4);
      return f;
    }
    if (p % 4 == 3) return static_cast<float>(gen.uni(-3e9, 3e9));
    return static_cast<float>(gen.x(p));
  } else {  // bf16: every 4th a random bit pattern (NaNs, subnormals included)
    if (p % 4 == 2) return static_cast<uint16_t>(gen.rng());
    return Io<bf16_t>::put(p % 4 == 3 ? gen.uni(-3e9, 3e9) : gen.x(p));
  }
}

template <typename O, typename I>
std::string run_convert(const harness::Mode& m, uint32_t seed) {
  using SO = typename Io<O>::S;
  using SI = typename Io<I>::S;
  const std::string nm = fmt("copy %s->%s", Io<I>::name, Io<O>::name);
  int li = 0;
  for (const Lay& l : kLays) {
    if (l.scal) continue;
    emu::clear_globals();
    const Geo g = geo_of(l);
    Buf<SI> xb("x", size_t(g.aspan + l.aoff), SI{});
    Buf<SO> ob("out", size_t(g.ospan + l.ooff), Io<O>::unwritten());
    Gen gen(seed * 71 + li, li * 5, 5);
    for (size_t p = 0; p < xb.size(); ++p) xb[p] = cast_input<I>(gen, int64_t(p) - l.aoff);
    const View ov = view_of(ob.data() + l.ooff, g, g.os), xv = view_of(xb.data() + l.aoff, g, g.as);
    std::string path;
    run_map1_emu<O, I>(ov, xv, Convert<O, I>{}, l.cap, m, seed + li, &path);
    if (path != l.cpath) return fmt("%s %s: run_map1 took %s, the layout is meant for %s", nm.c_str(), l.tag, path.c_str(), l.cpath);
    for (const std::string& e : {xb.guards(), ob.guards()})
      if (!e.empty()) return fmt("%s %s: %s", nm.c_str(), l.tag, e.c_str());
    std::vector<char> covered(ob.size(), 0);
    std::string err;
    for_each_elem(g, [&](int64_t k, const Offs& f) {
      if (!err.empty()) return;
      covered[size_t(l.ooff + f.o)] = 1;
      const SI x = xb[size_t(l.aoff + f.a)];
      const SO got = ob[size_t(l.ooff + f.o)], w = ref_convert<O, I>(x);
      const bool ok = Io<O>::isnan(w) && !std::is_same_v<O, I> ? Io<O>::isnan(got) : Io<O>::bits(got) == Io<O>::bits(w);
      if (!ok)
        err = fmt("%s %s: element %lld: %.9g (bits %#llx) -> bits %#llx, want %#llx", nm.c_str(), l.tag,
                  static_cast<long long>(k), Io<I>::get(x), static_cast<unsigned long long>(Io<I>::bits(x)),
                  static_cast<unsigned long long>(Io<O>::bits(got)), static_cast<unsigned long long>(Io<O>::bits(w)));
    });
    if (!err.empty()) return err;
    for (size_t p = 0; p < ob.size(); ++p)
      if (!covered[p] && Io<O>::bits(ob[p]) != Io<O>::bits(Io<O>::unwritten()))
        return fmt("%s %s: out[%zu] is outside the output view but was written", nm.c_str(), l.tag, p);
    ++li;
  }
  return "";
}

// The reference rounding itself, on values whose bf16 is known (so that a wrong bf16_of cannot
// hide a wrong kernel): ties to even, NaN, overflow, subnormals.
std::string check_bf16_ref() {
  const struct {
    uint32_t f;
    uint16_t want;
  } t[] = {{0x3f808000u, 0x3f80}, {0x3f818000u, 0x3f82}, {0x3f808001u, 0x3f81}, {0x3f817fffu, 0x3f81},
           {0x7f7f8000u, 0x7f80}, {0x7f7f7fffu, 0x7f7f}, {0xff7f8000u, 0xff80}, {0x00008000u, 0x0000},
           {0x00018000u, 0x0002}, {0x80000001u, 0x8000}, {0x3f7fffffu, 0x3f80}, {0x7f800000u, 0x7f80},
           {0x80000000u, 0x8000}, {0x00000000u, 0x0000}};
  for (const auto& c : t) {
    float f;
    memcpy(&f, &c.f, 4);
    if (bf16_of(f) != c.want) return fmt("bf16_of(%#x) = %#x, want %#x", c.f, bf16_of(f), c.want);
  }
  for (uint32_t nan : {0x7f800001u, 0xffc00001u, 0x7fffffffu}) {
    float f;
    memcpy(&f, &nan, 4);
    if (!Io<bf16_t>::isnan(bf16_of(f))) return fmt("bf16_of(%#x) is not a NaN", nan);
  }
  return "";
}

// ---- cases ----------------------------------------------------------------------------------------
template <class F>
std::string with_op(BinaryOp op, F&& f) {
  switch (op) {
#define DR_TEST_OP(name) \
  case BinaryOp::name: return f(std::integral_constant<BinaryOp, BinaryOp::name>{});
    DR_TEST_OP(Add) DR_TEST_OP(Sub) DR_TEST_OP(Mul) DR_TEST_OP(Div) DR_TEST_OP(Pow) DR_TEST_OP(Maximum)
    DR_TEST_OP(Minimum) DR_TEST_OP(FloorDiv) DR_TEST_OP(Remainder) DR_TEST_OP(Eq) DR_TEST_OP(Ne) DR_TEST_OP(Lt)
    DR_TEST_OP(Le) DR_TEST_OP(Gt) DR_TEST_OP(Ge) DR_TEST_OP(LogicalAnd) DR_TEST_OP(LogicalOr)
#undef DR_TEST_OP
    default: return "unknown op";
  }
}
bool is_cmp(BinaryOp op) { return op >= BinaryOp::Eq; }

template <class F>
std::string with_type(int t, F&& f) {
  switch (t) {
    case 0: return f(float{});
    case 1: return f(bf16_t{});
    case 2: return f(int32_t{});
    default: return f(uint8_t{});
  }
}
const char* kTypeNames[] = {"f32", "bf16", "int32", "bool"};

}  // namespace

int main(int argc, char** argv) {
  std::vector<harness::Case> cases;
  cases.push_back({"binmap/bf16-reference", true, 1, [] { return check_bf16_ref(); }});
  // Every op of the enum (a new one needs a reference here).
  cases.push_back({"binmap/table", true, 1, [] {
                     for (int i = 0; i < static_cast<int>(BinaryOp::Count); ++i)
                       if (with_op(static_cast<BinaryOp>(i), [](auto) { return std::string(); }) != "")
                         return fmt("binary op %d has no test in binmap_test.cpp", i);
                     return std::string();
                   }});
  int ci = 0;
  // Scheduling modes hardly matter to these kernels (no shared memory, no collectives): each case
  // runs under one of the three, rotating.
  for (int oi = 0; oi < static_cast<int>(BinaryOp::Count); ++oi) {
    const BinaryOp op = static_cast<BinaryOp>(oi);
    const char* on = dualroute::enum_name(op);
    for (int t = 0; t < 4; ++t) {
      if (!is_cmp(op) && t == 3) continue;  // arithmetic on bool is rejected by the host
      const harness::Mode m = harness::kModes[ci % 3];
      const uint32_t seed = 4100u + 37u * static_cast<uint32_t>(ci);
      cases.push_back({fmt("binmap/%s/%s/%s", kTypeNames[t], on, harness::mode_name(m).c_str()), true, 3,
                       [op, on, t, m, seed] {
                         return with_op(op, [&](auto otag) {
                           constexpr BinaryOp OP = decltype(otag)::value;
                           return with_type(t, [&](auto ttag) -> std::string {
                             using T = decltype(ttag);
                             if constexpr (OP >= BinaryOp::Eq) return run_cmp<T, OP>(on, m, seed);
                             else if constexpr (std::is_same_v<T, int32_t>) return run_int<OP>(on, m, seed);
                             else if constexpr (std::is_same_v<T, uint8_t>) return "bool arithmetic";
                             else return run_float<T, OP>(on, m, seed);
                           });
                         });
                       }});
      ++ci;
    }
  }
  for (int mi = 0; mi < 3; ++mi) {
    const harness::Mode m = harness::kModes[mi];
    const uint32_t s = 8800u + 7u * static_cast<uint32_t>(mi);
    const char* un[] = {"u32", "u16", "u8"};
    cases.push_back({fmt("binmap/where/%s/%s", un[mi], harness::mode_name(m).c_str()), true, 2, [mi, m, s]() -> std::string {
                       if (mi == 0) return run_where<uint32_t>(m, s);
                       if (mi == 1) return run_where<uint16_t>(m, s);
                       return run_where<uint8_t>(m, s);
                     }});
  }
  for (int o = 0; o < 4; ++o)
    for (int i = 0; i < 4; ++i) {
      const harness::Mode m = harness::kModes[(o * 4 + i) % 3];
      const uint32_t s = 9900u + 13u * static_cast<uint32_t>(o * 4 + i);
      cases.push_back({fmt("binmap/copy/%s-%s/%s", kTypeNames[i], kTypeNames[o], harness::mode_name(m).c_str()), true, 2,
                       [o, i, m, s] {
                         return with_type(o, [&](auto otag) {
                           return with_type(i, [&](auto itag) {
                             return run_convert<decltype(otag), decltype(itag)>(m, s);
                           });
                         });
                       }});
    }
  return harness::main(argc, argv, cases);
}
