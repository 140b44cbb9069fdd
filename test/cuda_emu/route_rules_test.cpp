// The random / hash / rule routing kernels (native/cuda/route_rules.cu) in the emulator against
// plain-loop references written from the definitions (native/cpu/route_rules.cpp's contract):
//   random: route[t] = the first p (a linear scan) with (philox_u32(seed, offset + t) >> 1) <= th[p]
//   hash:   (philox4x32(seed, id).v[0] * buckets) >> 32
//   rules:  the rule (lo, last, route) with lo <= id <= last (a linear scan), or lut[id], else fallback
// plus golden values copied from the CPU kernels (dr.randomRoute / dr.hashRoute on the cpu, see
// kGolden*), so the CUDA code is checked against the CPU's output for the same seed, not only
// against a reference that shares philox.h with it. Bad ids: the fallback is written and the
// smallest bad position is recorded (record_bad). Thresholds and rule bounds are built from the
// draws / ids of the case so that equality at a boundary happens (a `<` for `<=` is caught).
// Launches: grid_for's geometry (ceil(n / 256) blocks of kThreads) and a 2-block grid that makes
// the grid-stride loops go round.
#include <algorithm>
#include <cstdint>
#include <random>
#include <set>

#include "../../native/core/philox.h"
#include "route_rules_kernel.inc"
#include "harness.h"

using namespace dualroute::cuda;
using harness::Buf;
using harness::cfg_of;
using harness::fmt;

namespace {

constexpr int kThreads = 256;  // device.cuh's (host part, not extracted)

long long grid_of(long long n, bool small) { return small ? 2 : std::max(1LL, (n + kThreads - 1) / kThreads); }

// ---- golden values from the CPU kernels --------------------------------------------------------
// dr.randomRoute(64, [0.1, 0.25, 0, 0.4, 0.25], { generator }) with new dr.Generator(2**40 + 3)
// after take(13) (seed 1099511627779, offset 16), on the cpu:
const int kGoldenRandom[64] = {
    4, 1, 0, 0, 4, 4, 3, 3, 4, 1, 3, 3, 4, 3, 3, 4, 4, 4, 4, 3, 1, 1, 3, 1, 4, 3, 1, 1, 1, 3, 4, 3,
    0, 1, 3, 4, 3, 3, 4, 1, 3, 4, 0, 3, 4, 1, 3, 3, 4, 3, 3, 4, 1, 0, 0, 1, 0, 4, 1, 3, 3, 1, 0, 4};
// dr.hashRoute(ids = [0, 1, 2, 3, 1000, 65535, 2147483647, 123456789], 13, { seed: 3 }) on the cpu:
const int kGoldenHash[8] = {10, 3, 9, 1, 6, 3, 10, 9};

std::string golden() {
  emu::clear_globals();
  const double probs[5] = {0.1, 0.25, 0, 0.4, 0.25};
  Buf<int32_t> th("thresholds", 5, 0), route("route", 64, -9);
  double cum = 0;
  for (int p = 0; p < 5; ++p) {
    cum += probs[p];
    th[p] = p == 4 ? INT32_MAX : static_cast<int32_t>(std::llround(cum * 2147483648.0) - 1);
  }
  emu::launch(cfg_of("route_random_kernel", 1, kThreads, harness::kModes[0], 1),
              [&] { route_random_kernel(route.data(), th.data(), 5, 64, 1099511627779ull, 16); });
  for (int t = 0; t < 64; ++t)
    if (route[t] != kGoldenRandom[t]) return fmt("random: route[%d] = %d, the cpu drew %d", t, route[t], kGoldenRandom[t]);
  const int32_t idv[8] = {0, 1, 2, 3, 1000, 65535, 2147483647, 123456789};
  Buf<int32_t> ids("ids", 8, 0), out("out", 8, -9);
  std::copy(idv, idv + 8, ids.data());
  g_route_bad = ~0ull;
  emu::launch(cfg_of("route_hash_kernel", 1, kThreads, harness::kModes[0], 1),
              [&] { route_hash_kernel(out.data(), ids.data(), 8, 13, 3, 0); });
  for (int i = 0; i < 8; ++i)
    if (out[i] != kGoldenHash[i]) return fmt("hash: route[%d] = %d, the cpu gave %d", i, out[i], kGoldenHash[i]);
  return "";
}

// ---- random ------------------------------------------------------------------------------------
struct RandomShape {
  const char* tag;
  int T, P;
  int zeros;     // make every third path (from 1) probability 0
  int boundary;  // thresholds taken from the case's own draws
  uint64_t seed, offset;
  int small_grid;
};

std::string run_random(const RandomShape& s, const harness::Mode& mode, uint32_t cseed) {
  emu::clear_globals();
  std::mt19937 r(cseed);
  const int T = s.T, P = s.P;
  auto draw = [&](int t) { return static_cast<int32_t>(dualroute::philox_u32(s.seed, s.offset + static_cast<uint64_t>(t)) >> 1); };
  Buf<int32_t> th("thresholds", P, 0), route("route", T, -9);
  if (s.boundary) {
    // interior thresholds equal to draws of this case (sorted), the last 2^31 - 1
    std::vector<int32_t> v;
    for (int p = 0; p + 1 < P; ++p) v.push_back(draw(static_cast<int>(r() % std::max(T, 1))));
    std::sort(v.begin(), v.end());
    for (int p = 0; p + 1 < P; ++p) th[p] = v[p];
  } else {
    std::vector<double> w(P);
    double tot = 0;
    for (int p = 0; p < P; ++p) tot += (w[p] = (s.zeros && p % 3 == 1) ? 0.0 : 1.0 + r() % 7);
    double cum = 0;
    for (int p = 0; p + 1 < P; ++p) {
      cum += w[p];
      th[p] = static_cast<int32_t>(std::llround(cum / tot * 2147483648.0) - 1);
    }
  }
  th[P - 1] = INT32_MAX;
  emu::launch(cfg_of("route_random_kernel", grid_of(T, s.small_grid), kThreads, mode, cseed),
              [&] { route_random_kernel(route.data(), th.data(), P, T, s.seed, s.offset); });
  for (const std::string& g : {th.guards(), route.guards()})
    if (!g.empty()) return g;
  int hits = 0;
  for (int t = 0; t < T; ++t) {
    const int32_t u = draw(t);
    int want = 0;
    while (want < P - 1 && u > th[want]) ++want;
    if (want < P - 1 && u == th[want]) ++hits;
    if (route[t] != want) return fmt("route[%d] = %d, want %d (u = %d)", t, route[t], want, u);
  }
  if (s.boundary && hits == 0) return "boundary case without a draw on a threshold (test set-up)";
  return "";
}

// ---- hash and rules ----------------------------------------------------------------------------
struct IdShape {
  const char* tag;
  int n;
  int kind;       // 0 hash, 1 rules (search), 2 rules (dense lut)
  int buckets;    // hash
  int nrules;     // rules
  int64_t limit;  // 0: none
  int bad;        // put negative (and, with a limit, too large) ids in
  int small_grid;
};

std::string run_ids(const IdShape& s, const harness::Mode& mode, uint32_t cseed) {
  emu::clear_globals();
  std::mt19937 r(cseed);
  const int n = s.n;
  // rules: disjoint [lo, last] with gaps, ids probing every bound (lo - 1, lo, last, last + 1)
  std::vector<int32_t> rules;
  int32_t next = static_cast<int32_t>(r() % 5);
  for (int k = 0; k < s.nrules; ++k) {
    const int32_t lo = next + static_cast<int32_t>(r() % 3);  // touching the previous rule at times
    const int32_t last = lo + static_cast<int32_t>(r() % 4);
    rules.insert(rules.end(), {lo, last, static_cast<int32_t>(r() % 9)});
    next = last + 1;
  }
  const int32_t span = s.nrules ? rules[rules.size() - 2] + 1 : 1;
  const int fallback = 11;
  Buf<int32_t> ids("ids", n, 0), route("route", n, -9), rb("rules", rules.size(), 0);
  std::copy(rules.begin(), rules.end(), rb.data());
  for (int i = 0; i < n; ++i) {
    int32_t id;
    if (s.kind == 0) {
      id = (i % 4 == 3) ? static_cast<int32_t>(r() & 0x7fffffff) : i;
    } else if (s.nrules && i % 2 == 0) {
      const int k = static_cast<int>(r() % s.nrules);
      const int32_t b[4] = {rules[k * 3] - 1, rules[k * 3], rules[k * 3 + 1], rules[k * 3 + 1] + 1};
      id = std::max<int32_t>(0, b[r() % 4]);
    } else {
      id = static_cast<int32_t>(r() % (span + 40));  // past the last rule too
    }
    if (s.limit > 0) id = static_cast<int32_t>(id % s.limit);
    ids[i] = id;
  }
  long long want_bad = -1;
  if (s.bad) {
    for (int i = n / 3; i < n; i += std::max(1, n / 4)) {
      ids[i] = (s.limit > 0 && i % 2) ? static_cast<int32_t>(s.limit + i) : -1 - i;
      if (want_bad < 0) want_bad = i;
    }
  }
  Buf<int32_t> lut("lut", s.kind == 2 ? span : 0, 0);
  if (s.kind == 2) {
    std::fill_n(lut.data(), span, fallback);
    for (int k = 0; k < s.nrules; ++k) std::fill(lut.data() + rules[k * 3], lut.data() + rules[k * 3 + 1] + 1, rules[k * 3 + 2]);
  }
  g_route_bad = ~0ull;
  const uint64_t seed = 0x123456789abcull + cseed;
  if (s.kind == 0)
    emu::launch(cfg_of("route_hash_kernel", grid_of(n, s.small_grid), kThreads, mode, cseed),
                [&] { route_hash_kernel(route.data(), ids.data(), n, s.buckets, seed, s.limit); });
  else
    emu::launch(cfg_of("route_rules_kernel", grid_of(n, s.small_grid), kThreads, mode, cseed), [&] {
      route_rules_kernel(route.data(), ids.data(), n, rb.data(), s.nrules, s.kind == 2 ? lut.data() : nullptr, span,
                         fallback, s.limit);
    });
  for (const std::string& g : {ids.guards(), route.guards(), rb.guards(), lut.guards()})
    if (!g.empty()) return g;
  const unsigned long long slot_want = want_bad < 0 ? ~0ull : static_cast<unsigned long long>(want_bad);
  if (g_route_bad != slot_want) return fmt("bad-id slot holds %llu, want %llu", g_route_bad, slot_want);
  for (int i = 0; i < n; ++i) {
    const int32_t id = ids[i];
    int want;
    if (id < 0 || (s.limit > 0 && id >= s.limit)) {
      want = s.kind == 0 ? 0 : fallback;
    } else if (s.kind == 0) {
      const uint32_t h = dualroute::philox4x32(seed, static_cast<uint64_t>(id)).v[0];
      want = static_cast<int>((static_cast<uint64_t>(h) * static_cast<uint64_t>(s.buckets)) >> 32);
    } else {
      want = fallback;
      for (int k = 0; k < s.nrules; ++k)
        if (rules[k * 3] <= id && id <= rules[k * 3 + 1]) want = rules[k * 3 + 2];
    }
    if (route[i] != want) return fmt("route[%d] = %d, want %d (id %d)", i, route[i], want, id);
  }
  return "";
}

// clang-format off
const RandomShape kRandom[] = {
  // tag                 T     P  zeros boundary seed                 offset small
  {"one",                1,    1, 0, 0, 0,                    0,      0},
  {"two-paths",        1031,   2, 0, 0, 7,                    0,      0},
  {"zeros",            777,    7, 1, 0, 1099511627779ull,     16,     1},
  {"experts-100",      600,  100, 0, 0, 42,                   1ull << 33, 0},
  {"boundary",         513,    5, 0, 1, 3,                    4,      0},
  {"boundary-many",    300,   40, 0, 1, 9,                    0,      1},
  {"offset-unaligned",  70,    3, 0, 0, 5,                    13,     0},  // offset not a multiple of 4
};
const IdShape kIds[] = {
  // tag                 n  kind buckets nrules limit  bad small
  {"hash-one",           1,  0,   1,     0,    0,     0,  0},
  {"hash-13",         1031,  0,  13,     0,    0,     0,  0},
  {"hash-big-E",       300,  0, 2147483647, 0, 0,     0,  1},
  {"hash-bad",         257,  0,   8,     0,    0,     1,  0},
  {"hash-limit",       200,  0,   8,     0, 1000,     1,  1},
  {"rules-search",     999,  1,   0,    37,    0,     0,  0},
  {"rules-one",         50,  1,   0,     1,    0,     0,  0},
  {"rules-none",        33,  1,   0,     0,    0,     0,  0},
  {"rules-dense",      700,  2,   0,    23,    0,     0,  1},
  {"rules-search-bad", 260,  1,   0,    12,   60,     1,  0},
  {"rules-dense-bad",  129,  2,   0,    12,    0,     1,  1},
};
// clang-format on

}  // namespace

int main(int argc, char** argv) {
  std::vector<harness::Case> cases;
  cases.push_back({"route_rules/golden-cpu", true, 1.0, [] { return golden(); }});
  int si = 0;
  for (const RandomShape& s : kRandom) {
    for (int mi = 0; mi < 3; ++mi) {
      const harness::Mode m = harness::kModes[mi];
      const uint32_t seed = 1300u + 17u * static_cast<uint32_t>(si);
      cases.push_back({fmt("route_rules/random/%s/%s", s.tag, harness::mode_name(m).c_str()), mi == si % 3,
                       double(s.T) * 0.01, [s, m, seed] { return run_random(s, m, seed); }});
    }
    ++si;
  }
  for (const IdShape& s : kIds) {
    for (int mi = 0; mi < 3; ++mi) {
      const harness::Mode m = harness::kModes[mi];
      const uint32_t seed = 1300u + 17u * static_cast<uint32_t>(si);
      cases.push_back({fmt("route_rules/%s/%s", s.tag, harness::mode_name(m).c_str()), mi == si % 3, double(s.n) * 0.01,
                       [s, m, seed] { return run_ids(s, m, seed); }});
    }
    ++si;
  }
  return harness::main(argc, argv, cases);
}
