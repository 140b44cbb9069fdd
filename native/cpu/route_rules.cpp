// Random, hash and rule routing on the CPU: a path or expert number (int32) per token.
//
//   route_random  route[t] = the first p with  u_t <= thresholds[p],  u_t = philox_u32(seed, offset + t) >> 1
//                 (31 random bits; thresholds[p] = round(2^31 (p_0 + ... + p_p)) - 1, non-decreasing, the
//                 last 2^31 - 1, so a path of probability q is drawn with probability q to within 2^-31).
//                 Token t uses Philox stream index offset + t: the layout of `random` (uniform), so a
//                 Generator's offset advances the same way and CUDA draws the same routes.
//   route_hash    route = (h * buckets) >> 32,  h = philox4x32(seed, id).v[0]: word 0 of the
//                 Philox4x32-10 block at counter id under key seed. Philox is a keyed bijection of the
//                 counter whose output passes BigCrush, so h is a well-mixed 32-bit hash of (id, seed);
//                 multiply-shift maps it to [0, buckets) (bias below buckets / 2^32, no division).
//   route_rules   route = rules[r].route for the rule r = (lo, last, route) with lo <= id <= last (sorted by lo, disjoint:
//                 a binary search), or lut[id] when a dense lookup table is given and id < its length,
//                 else `fallback`.
// Ids (int32) must be >= 0 and, when limit > 0, < limit: the first bad one fails the kernel with a
// RangeError before anything is written.
// Tokens are independent: parallel_for over them, no state (the result does not depend on threads).
#include <algorithm>
#include <cstdint>

#include "../core/philox.h"
#include "common.h"

namespace dualroute {
namespace cpu {
namespace DR_ISA {
namespace {

void check_ids(const char* op, const int32_t* ids, int64_t n, int64_t limit) {
  for (int64_t i = 0; i < n; ++i) {
    if (ids[i] < 0) fail(ErrorCode::Range, op, ": token id ", ids[i], " at position ", i, " is negative");
    if (limit > 0 && ids[i] >= limit)
      fail(ErrorCode::Range, op, ": token id ", ids[i], " at position ", i, " is outside [0, ", limit, ")");
  }
}

}  // namespace

void route_random(const View& route, const View& thresholds, uint64_t seed, uint64_t offset) {
  int32_t* out = static_cast<int32_t*>(route.data);
  const int32_t* th = static_cast<const int32_t*>(thresholds.data);
  const int64_t n = view_numel(route), P = view_numel(thresholds);
  if (P < 1) fail(ErrorCode::Value, "randomRoute: no paths");
  parallel_for(n, 16384, [&](int64_t b, int64_t e) {
    for (int64_t t = b; t < e; ++t) {
      const int32_t u = static_cast<int32_t>(philox_u32(seed, offset + static_cast<uint64_t>(t)) >> 1);
      // first p with u <= th[p]; the last threshold is 2^31 - 1 (the clamp keeps a bad table in range)
      const int64_t p = std::lower_bound(th, th + P, u) - th;
      out[t] = static_cast<int32_t>(std::min<int64_t>(p, P - 1));
    }
  });
}

void route_hash(const View& route, const View& ids, int buckets, uint64_t seed, int64_t limit) {
  const int32_t* pi = static_cast<const int32_t*>(ids.data);
  int32_t* out = static_cast<int32_t*>(route.data);
  const int64_t n = view_numel(ids);
  if (buckets < 1) fail(ErrorCode::Value, "hashRoute: buckets must be >= 1, got ", buckets);
  check_ids("hashRoute", pi, n, limit);
  parallel_for(n, 16384, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      const uint32_t h = philox4x32(seed, static_cast<uint64_t>(pi[i])).v[0];
      out[i] = static_cast<int32_t>((static_cast<uint64_t>(h) * static_cast<uint64_t>(buckets)) >> 32);
    }
  });
}

void route_rules(const View& route, const View& ids, const View& rules, const View& lut, int fallback, int64_t limit) {
  const int32_t* pi = static_cast<const int32_t*>(ids.data);
  int32_t* out = static_cast<int32_t*>(route.data);
  const int32_t* pr = static_cast<const int32_t*>(rules.data);
  const int32_t* pl = static_cast<const int32_t*>(lut.data);
  const int64_t n = view_numel(ids), nr = rules.data ? rules.shape[0] : 0, L = pl ? view_numel(lut) : 0;
  check_ids("ruleRoute", pi, n, limit);
  parallel_for(n, 16384, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      const int32_t id = pi[i];
      if (pl) {
        out[i] = id < L ? pl[id] : fallback;
        continue;
      }
      // the last rule with lo <= id, if any: does it reach past id?
      int64_t lo = 0, hi = nr;  // invariant: rules [0, lo) have lo_r <= id, [hi, nr) have lo_r > id
      while (lo < hi) {
        const int64_t mid = (lo + hi) / 2;
        if (pr[mid * 3] <= id) lo = mid + 1;
        else hi = mid;
      }
      out[i] = lo > 0 && id <= pr[(lo - 1) * 3 + 1] ? pr[(lo - 1) * 3 + 2] : fallback;
    }
  });
}

}  // namespace DR_ISA
}  // namespace cpu
}  // namespace dualroute
