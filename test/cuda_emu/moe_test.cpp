// The mixture-of-experts kernels (native/cuda/moe.cu) in the emulator against float64 references
// written from the definitions: the plan (rows of every (token, choice): offsets[e] + p dropless,
// e C + p capacity, -1 dropped; sources its inverse; the first bad entry / offset / shared row in
// the slots), the gathers (dispatch rows, weighted combine, the weight gradient) and the grouped
// GEMM and its weight gradient (per expert over its clamped row range, zero rows elsewhere).
// Launches as moe.cu's host code makes them (extract.js checks the statements), with the
// grid-stride grids capped small so that the loops wrap.
#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>

#include "moe_kernel.inc"
#include "harness.h"

using namespace dualroute::cuda;
using harness::Buf;
using harness::cfg_of;
using harness::fmt;

namespace {

constexpr int kThreads = 256;  // device.cuh's (host part, not extracted)

struct Shape {
  const char* tag;
  int T, E, K, D, F;
  int capacity;  // 0: dropless layout (offsets from the counts); > 0: capacity layout and router capacity
  int skip;      // an expert no token chooses (-1: none)
  int bf;        // bf16 tokens and weights
  int bad;       // 0 none, 1 expert out of range, 2 position past its expert, 3 two entries on a row, 4 bad offsets
  int gemm_off;  // the grouped GEMM's offsets: 0 the plan's; 1 a gap, a decrease, an overrun; 2 the same ending early
  int dl = 0;    // dropless layout for a capacity routing (dropped entries: rows past offsets[E] stay empty)
};

// grid_for / grid_cap with a tiny device: at most 3 blocks, so grid-stride loops wrap
long long small_grid(long long items, int per_block) { return std::min(3LL, std::max(1LL, (items + per_block - 1) / per_block)); }

// the clamped row range of every expert (moe.cu's rule)
void ranges(const std::vector<int>& off, long long N, std::vector<long long>& s, std::vector<long long>& f) {
  const int E = int(off.size()) - 1;
  s.assign(E, 0);
  f.assign(E, 0);
  long long prev = std::min(std::max<long long>(off[0], 0), N);
  for (int e = 0; e < E; ++e) {
    s[e] = prev;
    f[e] = std::min(std::max<long long>(off[e + 1], s[e]), N);
    prev = f[e];
  }
}

template <typename T>
struct Tok {  // a float or bf16 buffer and the values it holds, as double
  Buf<T> buf;
  std::vector<double> v;
  Tok(const char* name, size_t n, T fill) : buf(name, n, fill), v(n, 0.0) {}
};

template <typename T>
void fill_random(Tok<T>& t, std::mt19937& r, float lo, float hi) {
  std::uniform_real_distribution<float> u(lo, hi);
  for (size_t i = 0; i < t.v.size(); ++i) {
    const float x = u(r);
    if constexpr (std::is_same_v<T, float>) {
      t.buf[i] = x;
      t.v[i] = x;
    } else {
      t.buf[i] = f2bf(x);
      t.v[i] = bf2f(t.buf[i]);
    }
  }
}
template <typename T>
double val(T x) {
  if constexpr (std::is_same_v<T, float>) return x;
  else return bf2f(x);
}
template <typename T>
using Dev = typename std::conditional<std::is_same_v<T, float>, float, bf16_t>::type;
template <typename T>
Dev<T>* dev(Buf<T>& b) { return reinterpret_cast<Dev<T>*>(b.data()); }

template <typename T>
std::string compare(const char* what, const Buf<T>& got, const std::vector<double>& want, double tol) {
  if (!got.guards().empty()) return got.guards();
  double scale = 1e-30;
  for (double w : want) scale = std::max(scale, std::fabs(w));
  for (size_t i = 0; i < want.size(); ++i) {
    const double g = val(got[i]);
    if (!(std::fabs(g - want[i]) <= tol * (1 + scale))) return fmt("%s[%zu] = %.8g, want %.8g", what, i, g, want[i]);
  }
  return "";
}

template <typename T>
std::string run_typed(const Shape& s, const harness::Mode& mode, uint32_t seed) {
  emu::clear_globals();
  std::mt19937 r(seed);
  const int T_ = s.T, E = s.E, K = s.K, D = s.D, F = s.F;
  const long long n = (long long)T_ * K;
  // routing: distinct experts per token (never s.skip); slots first choices first, tokens in order
  std::vector<int> idx(n), pos(n), run(E, 0);
  std::vector<int> pool;
  for (int e = 0; e < E; ++e)
    if (e != s.skip) pool.push_back(e);
  for (int t = 0; t < T_; ++t) {
    std::shuffle(pool.begin(), pool.end(), r);
    for (int k = 0; k < K; ++k) idx[t * K + k] = pool[k];
  }
  for (int k = 0; k < K; ++k)
    for (int t = 0; t < T_; ++t) {
      const int e = idx[t * K + k], q = run[e]++;
      pos[t * K + k] = s.capacity > 0 && q >= s.capacity ? -1 : q;
    }
  const bool dropless = s.capacity == 0 || s.dl;
  std::vector<int> off(E + 1, 0);
  for (int e = 0; e < E; ++e)
    off[e + 1] = dropless ? off[e] + (s.capacity > 0 ? std::min(run[e], s.capacity) : run[e]) : (e + 1) * s.capacity;
  const long long N = dropless ? n : (long long)E * s.capacity;
  // corruptions
  long long want_bad[3] = {-1, -1, -1};
  if (s.bad == 1) {
    idx[n / 2] = E + 2;  // and keep its position
    want_bad[0] = n / 2;
  } else if (s.bad == 2) {
    const int e = idx[n - 1];
    pos[n - 1] = dropless ? off[e + 1] - off[e] : s.capacity;
    want_bad[0] = n - 1;
  } else if (s.bad == 3) {
    // entry n-1 takes the slot of an earlier entry of its expert
    const int e = idx[n - 1];
    long long first = -1;
    for (long long i = 0; i + 1 < n && first < 0; ++i)
      if (idx[i] == e && pos[i] >= 0 && pos[i] != pos[n - 1]) first = i;
    pos[n - 1] = pos[first];
    want_bad[2] = std::max(first, n - 1);  // whichever store lost is flagged: the test accepts both
  } else if (s.bad == 4) {
    off[1] = off[2] + 1;  // offsets[1] > offsets[2]
    want_bad[1] = 1;
  }
  Buf<int32_t> bi("indices", n, 0), bp("positions", n, 0), bo("offsets", E + 1, 0), rows("rows", n, -9),
      sources("sources", N, -9);
  Buf<unsigned long long> bad("bad", 3, ~0ull);
  for (long long i = 0; i < n; ++i) bi[i] = idx[i], bp[i] = pos[i];
  for (int e = 0; e <= E; ++e) bo[e] = off[e];
  const int32_t* po = dropless ? bo.data() : nullptr;
  // moe_plan as the host runs it
  const int kcap = dropless ? 0 : s.capacity;
  emu::launch(cfg_of("moe_plan_rows", small_grid(std::max<long long>(n, E), kThreads), kThreads, mode, seed), [&] {
    moe_plan_rows(rows.data(), bi.data(), bp.data(), po, n, E, kcap, N, bad.data());
  });
  for (long long i = 0; i < N; ++i) sources[i] = -1;  // cudaMemsetAsync(ps, 0xff, ...)
  emu::launch(cfg_of("moe_plan_sources", small_grid(n, kThreads), kThreads, mode, seed),
              [&] { moe_plan_sources(sources.data(), rows.data(), n); });
  emu::launch(cfg_of("moe_plan_verify", small_grid(n, kThreads), kThreads, mode, seed),
              [&] { moe_plan_verify(sources.data(), rows.data(), n, bad.data()); });
  for (const std::string& g : {rows.guards(), sources.guards(), bad.guards()})
    if (!g.empty()) return g;
  if (s.bad) {
    for (int q = 0; q < 3; ++q) {
      const unsigned long long want = want_bad[q] < 0 ? ~0ull : (unsigned long long)want_bad[q];
      if (s.bad == 3 && q == 2) {
        if (bad[2] == ~0ull) return "a shared row was not recorded";
        if (bad[2] != (unsigned long long)(n - 1) && idx[bad[2]] != idx[n - 1]) return fmt("bad[2] = %llu", bad[2]);
        continue;
      }
      if (s.bad == 4 && q == 0) continue;  // entries past the bad offsets may be flagged too
      if (bad[q] != want) return fmt("bad[%d] = %llu, want %lld", q, bad[q], want_bad[q]);
    }
    for (long long i = 0; i < n; ++i)
      if (rows[i] < -1 || rows[i] >= N) return fmt("rows[%lld] = %d outside [-1, %lld) after a bad input", i, rows[i], N);
    return "";
  }
  for (int q = 0; q < 3; ++q)
    if (bad[q] != ~0ull) return fmt("bad[%d] = %llu on good input", q, bad[q]);
  std::vector<long long> rrow(n), rsrc(N, -1);
  for (long long i = 0; i < n; ++i) {
    const int e = idx[i];
    rrow[i] = pos[i] < 0 ? -1 : dropless ? off[e] + pos[i] : (long long)e * s.capacity + pos[i];
    if (rrow[i] >= 0) rsrc[rrow[i]] = i;
  }
  for (long long i = 0; i < n; ++i)
    if (rows[i] != rrow[i]) return fmt("rows[%lld] = %d, want %lld", i, rows[i], rrow[i]);
  for (long long i = 0; i < N; ++i)
    if (sources[i] != rsrc[i]) return fmt("sources[%lld] = %d, want %lld", i, sources[i], rsrc[i]);

  // dispatch (unweighted) and the combine's dy (weighted)
  Tok<T> x("x", size_t(T_) * D, T{}), y("y", size_t(N) * D, T{}), dout("dout", size_t(T_) * D, T{});
  fill_random(x, r, -2, 2);
  fill_random(y, r, -2, 2);
  fill_random(dout, r, -1, 1);
  Buf<float> w("w", n, 0.f);
  for (long long i = 0; i < n; ++i) w[i] = float(int(r() % 200) - 100) * 0.01f;
  const double tol = std::is_same_v<T, float> ? 2e-6 : 8e-3;
  for (int weighted = 0; weighted < 2; ++weighted) {
    Buf<T> out("gathered", size_t(N) * D, T{});
    for (size_t i = 0; i < out.size(); ++i) {
      if constexpr (std::is_same_v<T, float>) out[i] = harness::unwritten_float();
      else out[i] = harness::kUnwrittenBf16;
    }
    emu::launch(cfg_of("moe_gather_rows", small_grid(N, kRowWarps), kRowWarps * 32, mode, seed), [&] {
      moe_gather_rows<Dev<T>>(dev(out), dev(x.buf), sources.data(), weighted ? w.data() : nullptr, N, D, K, n);
    });
    std::vector<double> want(size_t(N) * D, 0.0);
    for (long long rr = 0; rr < N; ++rr)
      if (rsrc[rr] >= 0)
        for (int j = 0; j < D; ++j) want[rr * D + j] = (weighted ? w[rsrc[rr]] : 1.0) * x.v[(rsrc[rr] / K) * D + j];
    const std::string c = compare(weighted ? "dy" : "buffer", out, want, weighted ? tol : 0.0);
    if (!c.empty()) return c;
  }
  {
    Buf<T> out("combined", size_t(T_) * D, T{});
    emu::launch(cfg_of("moe_combine_rows", small_grid(T_, kRowWarps), kRowWarps * 32, mode, seed), [&] {
      moe_combine_rows<Dev<T>>(dev(out), dev(y.buf), rows.data(), w.data(), T_, K, D, N);
    });
    std::vector<double> want(size_t(T_) * D, 0.0);
    for (long long i = 0; i < n; ++i)
      if (rrow[i] >= 0)
        for (int j = 0; j < D; ++j) want[(i / K) * D + j] += w[i] * y.v[rrow[i] * D + j];
    const std::string c = compare("combine", out, want, tol * K);
    if (!c.empty()) return c;
    Buf<float> dw("dw", n, NAN);
    emu::launch(cfg_of("moe_weight_grad", small_grid(n, kRowWarps), kRowWarps * 32, mode, seed), [&] {
      moe_weight_grad<Dev<T>>(dw.data(), dev(y.buf), rows.data(), dev(dout.buf), n, K, D, N);
    });
    std::vector<double> wdw(n, 0.0);
    for (long long i = 0; i < n; ++i)
      if (rrow[i] >= 0)
        for (int j = 0; j < D; ++j) wdw[i] += y.v[rrow[i] * D + j] * dout.v[(i / K) * D + j];
    const std::string c2 = compare("dweights", dw, wdw, 2e-6 * D);
    if (!c2.empty()) return c2;
  }

  // grouped GEMM over y's rows (a = y [N, D], b [E, D, F]), both layouts of b; then the weight gradient
  std::vector<int> goff = off;
  if (s.gemm_off) {  // decreasing and overrunning: ranges clamp
    // a head before expert 0, a gap (offsets[2] > offsets[1]: taken by expert 1), a decrease, an overrun
    const int q = int(N);
    const int pick[5] = {2, q / 4, q / 2, q / 3, s.gemm_off == 1 ? q + 7 : q - 3};
    for (int e = 0; e <= E; ++e) goff[e] = pick[std::min(e, 4)];
  }
  Buf<int32_t> bgo("gemm_offsets", E + 1, 0);
  for (int e = 0; e <= E; ++e) bgo[e] = goff[e];
  std::vector<long long> st, en;
  ranges(goff, N, st, en);
  Tok<T> b("b", size_t(E) * D * F, T{}), bt("bt", size_t(E) * F * D, T{}), g("g", size_t(N) * F, T{});
  fill_random(b, r, -1, 1);
  for (int e = 0; e < E; ++e)
    for (int d = 0; d < D; ++d)
      for (int f = 0; f < F; ++f) {
        bt.buf[(size_t(e) * F + f) * D + d] = b.buf[(size_t(e) * D + d) * F + f];
        bt.v[(size_t(e) * F + f) * D + d] = b.v[(size_t(e) * D + d) * F + f];
      }
  fill_random(g, r, -1, 1);
  std::vector<double> want(size_t(N) * F, 0.0);
  for (int e = 0; e < E; ++e)
    for (long long rr = st[e]; rr < en[e]; ++rr)
      for (int f = 0; f < F; ++f) {
        double acc = 0;
        for (int d = 0; d < D; ++d) acc += y.v[rr * D + d] * b.v[(size_t(e) * D + d) * F + f];
        want[rr * F + f] = acc;
      }
  const long long row_tiles = (N + kGB - 1) / kGB + E + 2;
  const long long blocks = row_tiles * ((F + kGB - 1) / kGB);
  for (int tb = 0; tb < 2; ++tb) {
    Buf<T> out("gemm_out", size_t(N) * F, T{});
    for (size_t i = 0; i < out.size(); ++i) {
      if constexpr (std::is_same_v<T, float>) out[i] = harness::unwritten_float();
      else out[i] = harness::kUnwrittenBf16;
    }
    emu::launch(cfg_of(tb ? "grouped_gemm<TB>" : "grouped_gemm", blocks, kGThreads, mode, seed), [&] {
      if (tb) grouped_gemm<Dev<T>, true>(dev(out), dev(y.buf), dev(bt.buf), bgo.data(), E, N, D, F);
      else grouped_gemm<Dev<T>, false>(dev(out), dev(y.buf), dev(b.buf), bgo.data(), E, N, D, F);
    });
    const std::string c = compare(tb ? "gemm(transB)" : "gemm", out, want, (std::is_same_v<T, float> ? 1e-6 : 8e-3) * std::sqrt(double(D)));
    if (!c.empty()) return c;
  }
  {
    Buf<T> out("wgrad", size_t(E) * D * F, T{});
    const long long wblocks = (long long)E * ((D + kGB - 1) / kGB) * ((F + kGB - 1) / kGB);
    emu::launch(cfg_of("grouped_gemm_wgrad", wblocks, kGThreads, mode, seed), [&] {
      grouped_gemm_wgrad<Dev<T>>(dev(out), dev(y.buf), dev(g.buf), bgo.data(), E, N, D, F);
    });
    std::vector<double> ww(size_t(E) * D * F, 0.0);
    for (int e = 0; e < E; ++e)
      for (long long rr = st[e]; rr < en[e]; ++rr)
        for (int d = 0; d < D; ++d)
          for (int f = 0; f < F; ++f) ww[(size_t(e) * D + d) * F + f] += y.v[rr * D + d] * g.v[rr * F + f];
    const std::string c = compare("wgrad", out, ww, (std::is_same_v<T, float> ? 1e-6 : 8e-3) * std::sqrt(double(N)));
    if (!c.empty()) return c;
  }
  return "";
}

std::string run_case(const Shape& s, const harness::Mode& m, uint32_t seed) {
  return s.bf ? run_typed<uint16_t>(s, m, seed) : run_typed<float>(s, m, seed);
}

// clang-format off
const Shape kShapes[] = {
  // tag                    T    E  K   D   F  cap skip bf bad goff
  {"one",                   1,   1, 1,  1,  1,  0, -1, 0, 0, 0},
  {"dropless-skip",        37,   8, 2, 33, 17,  0,  3, 0, 0, 0},   // T odd, expert 3 empty
  {"capacity-overflow",    37,   8, 2, 20, 70,  6, -1, 0, 0, 0},   // drops; F past a tile
  {"k-all",                13,   5, 5,  7, 65,  0, -1, 0, 0, 0},   // topK = E
  {"one-expert-long",      70,   1, 1, 40, 66,  0, -1, 0, 0, 0},   // E = 1, rows past a 64-row tile
  {"bf16-dropless",        45,   6, 2, 64, 40,  0,  0, 1, 0, 0},
  {"bf16-capacity",        45,   6, 3, 24, 24,  9,  2, 1, 0, 0},
  {"clamped-offsets",      30,   4, 2, 16, 20,  0, -1, 0, 0, 1},
  {"clamped-tail",         30,   4, 2, 16, 20,  0, -1, 0, 0, 2},   // rows after the last expert
  {"dropless-drops",       37,   8, 2, 20, 30,  5, -1, 0, 0, 0, 1}, // capacity routing, dropless layout
  {"bad-expert",           20,   4, 2,  8,  8,  0, -1, 0, 1, 0},
  {"bad-position",         20,   4, 2,  8,  8,  0, -1, 0, 2, 0},
  {"bad-position-cap",     20,   4, 2,  8,  8,  5, -1, 0, 2, 0},
  {"shared-row",           20,   4, 2,  8,  8,  0, -1, 0, 3, 0},
  {"bad-offsets",          20,   4, 2,  8,  8,  0, -1, 0, 4, 0},
};
// clang-format on

}  // namespace

int main(int argc, char** argv) {
  std::vector<harness::Case> cases;
  int si = 0;
  for (const Shape& s : kShapes) {
    for (int mi = 0; mi < 3; ++mi) {
      const harness::Mode m = harness::kModes[mi];
      const uint32_t seed = 1300u + 17u * static_cast<uint32_t>(si);
      cases.push_back({fmt("moe/%s/%s", s.tag, harness::mode_name(m).c_str()), mi == si % 3,
                       double(s.T) * s.K * (s.D + s.F) * 0.01, [s, m, seed] { return run_case(s, m, seed); }});
    }
    ++si;
  }
  return harness::main(argc, argv, cases);
}
