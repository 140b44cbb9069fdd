// The host side of elementwise.cu's map launches, mirrored for the emulator suites that run its
// map kernels (unary_test, binmap_test): device.cuh's grid_cap / grid_for with the
// multiprocessor count of an H100 / H200 (132), or, with cap > 0, a grid of at most cap blocks
// so that the grid-stride loops go round; and run_map1 (collapse, then map1_flat<V> /
// map1_flat<1> / map1_strided). extract.js checks the statements these mirror. Included after
// the generated kernel files (ewconv / ewmap) and harness.h. Also the storage of each dtype in
// the suites' buffers (Io<T>) and an independent float -> bfloat16 rounding (bf16_of).
#pragma once
#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>

namespace emu_host {

using namespace dualroute::cuda;
using dualroute::View;

constexpr long long kSms = 132;
constexpr int kThreadsHost = 256;  // device.cuh's kThreads (extract.js checks its value)
inline long long grid_cap_(long long blocks, int cap) {
  const long long c = cap > 0 ? cap : kSms * 32;
  return std::max<long long>(1, std::min(blocks, c));
}
inline long long grid_for_(long long n, int cap) { return grid_cap_((n + kThreadsHost - 1) / kThreadsHost, cap); }
inline bool aligned_(const void* p, size_t a) { return reinterpret_cast<uintptr_t>(p) % a == 0; }

// elementwise.cu's run_map1; *path says which kernel ran ("vec", "flat", "stridedN" or "none").
template <typename TO, typename TA, typename F>
void run_map1_emu(const View& out, const View& x, F f, int cap, const harness::Mode& m, uint32_t seed,
                  std::string* path) {
  const int64_t n = view_numel(out);
  *path = "none";
  if (n == 0) return;
  const int64_t* strs[2] = {out.strides, x.strides};
  const Layout<2> L = collapse<2>(out, strs);
  TO* o = static_cast<TO*>(out.data);
  const TA* a = static_cast<const TA*>(x.data);
  if (is_flat(L)) {
    const int sa = static_cast<int>(L.str[1][0]);
    constexpr int V = 16 / (sizeof(TO) > sizeof(TA) ? sizeof(TO) : sizeof(TA));
    const bool vec = n >= V && aligned_(o, sizeof(TO) * V) && (sa == 0 || aligned_(a, sizeof(TA) * V));
    if (vec) {
      emu::launch(harness::cfg_of("map1_flat<V>", grid_for_(n / V, cap), kThreadsHost, m, seed),
                  [&] { map1_flat<V>(o, a, sa, n, f); });
      *path = "vec";
    } else {
      emu::launch(harness::cfg_of("map1_flat<1>", grid_for_(n, cap), kThreadsHost, m, seed),
                  [&] { map1_flat<1>(o, a, sa, n, f); });
      *path = "flat";
    }
  } else {
    emu::launch(harness::cfg_of("map1_strided", grid_for_(n, cap), kThreadsHost, m, seed),
                [&] { map1_strided(L, o, a, n, f); });
    *path = harness::fmt("strided%d", L.ndim);
  }
}

// ---- independent bf16 rounding (nearest even, by nearbyint at the bf16 quantum) -----------------
inline uint16_t bf16_of(float f) {
  if (std::isnan(f)) return 0x7fc0;
  uint32_t u;
  if (std::isinf(f) || f == 0) {
    memcpy(&u, &f, 4);
    return static_cast<uint16_t>(u >> 16);
  }
  const double v = f;
  int e = std::ilogb(v);
  if (e < -126) e = -126;
  const double q = std::ldexp(1.0, e - 7);  // 8 significant bits
  double r = std::nearbyint(v / q) * q;
  if (std::fabs(r) >= 0x1p128) r = v > 0 ? INFINITY : -INFINITY;
  const float rf = static_cast<float>(r);  // exact
  memcpy(&u, &rf, 4);
  return static_cast<uint16_t>(u >> 16);
}

// ---- storage of each dtype in the test's buffers ------------------------------------------------
template <typename T>
struct Io;
template <>
struct Io<float> {
  using S = float;
  static constexpr const char* name = "f32";
  static double get(S v) { return v; }
  static S put(double v) { return static_cast<float>(v); }
  static S unwritten() { return harness::unwritten_float(); }
  static uint64_t bits(S v) { return __float_as_uint(v); }
  static bool isnan(S v) { return std::isnan(v); }
  static constexpr bool bf = false, fl = true;
  static constexpr double kMax = FLT_MAX;
};
template <>
struct Io<bf16_t> {
  using S = uint16_t;
  static constexpr const char* name = "bf16";
  static double get(S v) { return bf2f(v); }
  static S put(double v) { return bf16_of(static_cast<float>(v)); }
  static S unwritten() { return harness::kUnwrittenBf16; }
  static uint64_t bits(S v) { return v; }
  static bool isnan(S v) { return (v & 0x7fff) > 0x7f80; }
  static constexpr bool bf = true, fl = true;
  static constexpr double kMax = 3.3895313892515355e38;  // 0x7f7f
};
template <>
struct Io<int32_t> {
  using S = int32_t;
  static constexpr const char* name = "int32";
  static double get(S v) { return v; }
  static S unwritten() { return static_cast<int32_t>(0xdeadbeefu); }
  static uint64_t bits(S v) { return static_cast<uint32_t>(v); }
  static bool isnan(S) { return false; }
  static constexpr bool bf = false, fl = false;
};
template <>
struct Io<uint8_t> {
  using S = uint8_t;
  static constexpr const char* name = "bool";
  static double get(S v) { return v; }
  static S unwritten() { return 0xee; }
  static uint64_t bits(S v) { return v; }
  static bool isnan(S) { return false; }
  static constexpr bool bf = false, fl = false;
};
// where_bits<U>'s element types
template <>
struct Io<uint32_t> {
  using S = uint32_t;
  static S unwritten() { return 0x7fa1beefu; }
  static uint64_t bits(S v) { return v; }
};
template <>
struct Io<uint16_t> {
  using S = uint16_t;
  static S unwritten() { return 0x7fa1; }
  static uint64_t bits(S v) { return v; }
};

}  // namespace emu_host
