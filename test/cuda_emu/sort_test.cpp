// The scan and sort kernels (native/cuda/sort.cu) in the emulator against float64 references
// written from the definitions:
//   cumsum: running sums over dim of [outer, dim, inner] (reverse, exclusive); int32 sums that
//           leave int32 recorded at their smallest flat position (record_bad);
//   sort:   each row of [rows, n] in value order, NaN as the largest value, equal values in index
//           order (ascending and descending); topk: the first k of that order (largest: of the
//           descending one).
// Launches as sort.cu's host code makes them (extract.js checks those lines), with grids smaller
// than the rows or columns so that every grid-stride loop takes several turns.
#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>

#include "sort_kernel.inc"
#include "harness.h"

using namespace dualroute::cuda;
using harness::Buf;
using harness::fmt;

namespace {

constexpr int kThreads = 256;  // device.cuh's (host part, not extracted)

template <class T> struct Store { using type = T; };
template <> struct Store<bf16_t> { using type = uint16_t; };
double value_of(float v) { return v; }
double value_of(uint16_t v) { return bf2f(v); }
double value_of(int32_t v) { return v; }
template <class S> S store_of(double v);
template <> float store_of<float>(double v) { return static_cast<float>(v); }
template <> uint16_t store_of<uint16_t>(double v) { return f2bf(static_cast<float>(v)); }
template <> int32_t store_of<int32_t>(double v) { return static_cast<int32_t>(v); }
template <class T> const char* type_name();
template <> const char* type_name<float>() { return "f32"; }
template <> const char* type_name<bf16_t>() { return "bf16"; }
template <> const char* type_name<int32_t>() { return "i32"; }

emu::LaunchCfg cfg_of(const char* name, long long grid, int block, size_t smem, const harness::Mode& m, uint32_t seed) {
  emu::LaunchCfg c;
  c.kernel = name;
  c.grid = static_cast<unsigned>(std::max(1LL, grid));
  c.block = static_cast<unsigned>(block);
  c.dyn_smem = smem;
  c.sched = m.sched;
  c.cp = m.cp;
  c.seed = seed * 31 + static_cast<uint32_t>(m.sched) * 7 + static_cast<uint32_t>(m.cp);
  return c;
}

// ---- cumsum ----------------------------------------------------------------------------------
struct ScanShape {
  const char* tag;
  long long outer, dim, inner;
  int reverse, exclusive;
  int overflow = 0;  // int32 only: values that push the sum past int32
};

template <class T>
std::string run_cumsum(const ScanShape& s, const harness::Mode& mode, uint32_t seed) {
  using S = typename Store<T>::type;
  emu::clear_globals();
  std::mt19937 r(seed);
  const size_t n = size_t(s.outer * s.dim * s.inner);
  Buf<S> x("x", n, S{}), out("out", n, store_of<S>(0));
  std::uniform_real_distribution<float> u(-2.f, 2.f);
  for (size_t i = 0; i < n; ++i) {
    if constexpr (std::is_same<T, int32_t>::value)
      x[i] = s.overflow ? (i % 3 == 1 ? 1 : 0x3fffffff) : static_cast<int32_t>(r() % 61) - 30;
    else
      x[i] = store_of<S>(u(r));
  }
  if (!std::is_same<T, int32_t>::value && n > 3) x[n / 2] = store_of<S>(NAN);  // NaN carries forward only
  // reference
  std::vector<double> ref(n, 0);
  long long first_bad = -1;
  for (long long o = 0; o < s.outer; ++o)
    for (long long i = 0; i < s.inner; ++i) {
      double acc = 0;
      for (long long st = 0; st < s.dim; ++st) {
        const long long d = s.reverse ? s.dim - 1 - st : st;
        const size_t p = size_t((o * s.dim + d) * s.inner + i);
        const double v = value_of(x[p]);
        double w;
        if (s.exclusive) {
          w = acc;
          acc += v;
        } else {
          acc += v;
          w = acc;
        }
        ref[p] = w;
        if (std::is_same<T, int32_t>::value && (w < INT32_MIN || w > INT32_MAX) && (first_bad < 0 || (long long)p < first_bad))
          first_bad = static_cast<long long>(p);
      }
    }
  g_cumsum_bad = ~0ull;
  emu::g_bad.clear();
  T* po = reinterpret_cast<T*>(out.data());
  const T* px = reinterpret_cast<const T*>(x.data());
  if (s.inner == 1) {
    const auto c = cfg_of("cumsum_rows", std::min<long long>(s.outer, 3), kScanThreads, 0, mode, seed);
    emu::launch(c, [&] { cumsum_rows<T>(po, px, s.outer, s.dim, s.reverse, s.exclusive); });
  } else {
    const auto c = cfg_of("cumsum_cols", std::min<long long>((s.outer * s.inner + kThreads - 1) / kThreads, 2), kThreads, 0, mode, seed);
    emu::launch(c, [&] { cumsum_cols<T>(po, px, s.outer, s.dim, s.inner, s.reverse, s.exclusive); });
  }
  for (const std::string& g : {x.guards(), out.guards()})
    if (!g.empty()) return g;
  if constexpr (std::is_same<T, int32_t>::value) {
    const unsigned long long want = first_bad < 0 ? ~0ull : static_cast<unsigned long long>(first_bad);
    if (g_cumsum_bad != want) return fmt("overflow slot holds %llu, want %llu", g_cumsum_bad, want);
    if (first_bad >= 0) return "";  // the values past an overflow are not defined
    for (size_t i = 0; i < n; ++i)
      if (out[i] != static_cast<int32_t>(ref[i])) return fmt("out[%zu] = %d, want %.0f", i, out[i], ref[i]);
    return "";
  } else {
    if (g_cumsum_bad != ~0ull) return "overflow recorded for a float scan";
    std::vector<char> empty(n, 0);
    return harness::compare("out", n, 1, [&](size_t i) { return float(value_of(out[i])); }, ref, empty,
                            std::is_same<T, float>::value ? 1e-5 * std::sqrt(double(s.dim)) : 1e-2);
  }
}

// ---- sort / topk -----------------------------------------------------------------------------
struct SortShape {
  const char* tag;
  long long rows, n;
  int count;  // 0: sort the whole row; > 0: topk k = count
  int desc;   // descending / largest
};

template <class T>
std::string run_sort(const SortShape& s, const harness::Mode& mode, uint32_t seed) {
  using S = typename Store<T>::type;
  emu::clear_globals();
  std::mt19937 r(seed);
  const long long count = s.count ? s.count : s.n;
  Buf<S> x("x", size_t(s.rows * s.n), S{});
  Buf<S> values("values", size_t(s.rows * count), S{});
  Buf<int32_t> indices("indices", size_t(s.rows * count), -7);
  for (size_t i = 0; i < x.size(); ++i) {
    const int q = static_cast<int>(r() % 41) - 20;  // a grid: ties everywhere, exact in every dtype
    x[i] = store_of<S>(q * 0.25 * (std::is_same<T, int32_t>::value ? 4 : 1));
    if (!std::is_same<T, int32_t>::value && r() % 23 == 0) x[i] = store_of<S>(NAN);
    if (!std::is_same<T, int32_t>::value && r() % 29 == 0) x[i] = store_of<S>(r() % 2 ? INFINITY : -INFINITY);
    if (!std::is_same<T, int32_t>::value && r() % 31 == 0) x[i] = store_of<S>(r() % 2 ? 0.0 : -0.0);
  }
  if constexpr (std::is_same<T, int32_t>::value) {
    if (x.size() > 2) {
      x[0] = INT32_MIN;
      x[1] = INT32_MAX;
    }
  }
  long long P = 1;
  while (P < s.n) P <<= 1;
  T* pv = reinterpret_cast<T*>(values.data());
  const T* px = reinterpret_cast<const T*>(x.data());
  if (P <= kSmemSort) {
    const auto c = cfg_of("sort_rows_smem", std::min<long long>(s.rows, 2), kSortThreads, size_t(P) * 8, mode, seed);
    emu::launch(c, [&] {
      sort_rows_smem<T>(pv, indices.data(), px, s.rows, int(s.n), int(P), int(count), s.desc);
    });
  } else {
    Buf<unsigned long long> keys("keys", size_t(s.rows * P), 0);
    const long long grid = std::min<long long>((s.rows * P + kThreads - 1) / kThreads, 6);
    emu::launch(cfg_of("sort_keys_init", grid, kThreads, 0, mode, seed),
                [&] { sort_keys_init<T>(keys.data(), px, s.rows, s.n, P, s.desc); });
    for (long long k = 2; k <= P; k <<= 1)
      for (long long j = k >> 1; j > 0; j >>= 1)
        emu::launch(cfg_of("sort_keys_stage", grid, kThreads, 0, mode, seed),
                    [&] { sort_keys_stage(keys.data(), s.rows, P, k, j); });
    emu::launch(cfg_of("sort_keys_emit", std::min<long long>((s.rows * count + kThreads - 1) / kThreads, 3), kThreads, 0, mode, seed),
                [&] { sort_keys_emit<T>(pv, indices.data(), keys.data(), px, s.rows, s.n, P, count); });
    if (!keys.guards().empty()) return keys.guards();
  }
  for (const std::string& g : {x.guards(), values.guards(), indices.guards()})
    if (!g.empty()) return g;
  // reference: value order, NaN largest, -0 == +0, ties by index
  auto before = [](double a, double b) { return std::isnan(a) ? false : std::isnan(b) ? true : a < b; };
  for (long long row = 0; row < s.rows; ++row) {
    std::vector<int> idx(size_t(s.n));
    std::iota(idx.begin(), idx.end(), 0);
    auto v = [&](int i) { return value_of(x[size_t(row * s.n + i)]); };
    std::stable_sort(idx.begin(), idx.end(), [&](int a, int b) { return s.desc ? before(v(b), v(a)) : before(v(a), v(b)); });
    for (long long t = 0; t < count; ++t) {
      const size_t o = size_t(row * count + t);
      if (indices[o] != idx[size_t(t)])
        return fmt("row %lld position %lld: index %d, want %d (value %g)", row, t, indices[o], idx[size_t(t)], v(idx[size_t(t)]));
      if (memcmp(&values[o], &x[size_t(row * s.n + idx[size_t(t)])], sizeof(S)) != 0)
        return fmt("row %lld position %lld: the value is not x[row][%d]", row, t, idx[size_t(t)]);
    }
  }
  return "";
}

// clang-format off
const ScanShape kScans[] = {
  // tag                  outer  dim inner rev excl
  {"one",                    1,    1,   1, 0, 0},
  {"rows-odd",               5,    7,   1, 0, 0},
  {"rows-rev-excl",          4,   37,   1, 1, 1},
  {"rows-two-chunks",        2, 2049,   1, 0, 1},  // one item past the first block chunk
  {"row-long-rev",           1, 5000,   1, 1, 0},
  {"cols",                   3,    9,   5, 0, 0},
  {"cols-rev-excl",          2,   33,  40, 1, 1},
  {"cols-wide",              1,   20, 300, 0, 1},  // two grid-stride turns of 256 columns
};
const ScanShape kOverflows[] = {
  {"overflow-rows",          3,    5,   1, 0, 0, 1},
  {"overflow-rows-excl-rev", 2,    7,   1, 1, 1, 1},
  {"overflow-cols",          2,    4,   3, 0, 0, 1},
};
const SortShape kSorts[] = {
  // tag                 rows     n count desc
  {"sort-one",              3,    1,   0, 0},
  {"sort-odd",              5,    7,   0, 0},
  {"sort-desc",             3,  100,   0, 1},
  {"sort-smem-full",        1, 4096,   0, 0},
  {"sort-global",           2, 4097,   0, 1},
  {"topk-1",                4,   33,   1, 1},
  {"topk-smallest",         3,  100,   5, 0},
  {"topk-all",              2,    9,   9, 1},
  {"topk-global",           1, 5000,  50, 1},
};
// clang-format on

}  // namespace

int main(int argc, char** argv) {
  std::vector<harness::Case> cases;
  int si = 0;
  auto add = [&](const std::string& name, double cost, std::function<std::string(const harness::Mode&, uint32_t)> f) {
    for (int mi = 0; mi < 3; ++mi) {
      const harness::Mode m = harness::kModes[mi];
      const uint32_t seed = 500u + 13u * static_cast<uint32_t>(si);
      cases.push_back({fmt("%s/%s", name.c_str(), harness::mode_name(m).c_str()), mi == si % 3, cost, [f, m, seed] { return f(m, seed); }});
    }
    ++si;
  };
  auto scans = [&](auto tag) {
    using T = decltype(tag);
    for (const ScanShape& s : kScans)
      add(fmt("cumsum/%s/%s", type_name<T>(), s.tag), double(s.outer * s.dim * s.inner) * 0.02,
          [s](const harness::Mode& m, uint32_t seed) { return run_cumsum<T>(s, m, seed); });
  };
  scans(float{});
  scans(bf16_t{});
  scans(int32_t{});
  for (const ScanShape& s : kOverflows)
    add(fmt("cumsum/i32/%s", s.tag), 1, [s](const harness::Mode& m, uint32_t seed) { return run_cumsum<int32_t>(s, m, seed); });
  auto sorts = [&](auto tag) {
    using T = decltype(tag);
    for (const SortShape& s : kSorts) {
      long long P = 1;
      while (P < s.n) P <<= 1;
      const double stages = std::log2(double(P)) * (std::log2(double(P)) + 1) / 2;
      add(fmt("sort/%s/%s", type_name<T>(), s.tag), double(s.rows * P) * stages * 0.01,
          [s](const harness::Mode& m, uint32_t seed) { return run_sort<T>(s, m, seed); });
    }
  };
  sorts(float{});
  sorts(bf16_t{});
  sorts(int32_t{});
  return harness::main(argc, argv, cases);
}
