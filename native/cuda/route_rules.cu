// Random, hash and rule routing on the GPU. Semantics (and the Philox layout) as
// native/cpu/route_rules.cpp, bit for bit:
//   route_random_kernel  route[t] = first p with (philox_u32(seed, offset + t) >> 1) <= th[p]
//   route_hash_kernel    route = (philox4x32(seed, id).v[0] * buckets) >> 32
//   route_rules_kernel   lut[id] (dense table, id < L) or the route of the rule (lo, last) with lo <= id <= last
//                        (binary search over rules sorted by lo), else fallback
// All integer arithmetic: the CPU and CUDA results are identical by construction.
// Grid-stride loops, one token per thread and iteration (every token is independent). The
// thresholds / rules are small and read through the cache by every thread.
// Bad ids (negative, or >= limit when limit > 0): the kernel writes the fallback (0 for hashing)
// and records the smallest bad position in g_route_bad (record_bad); the entry waits for the
// stream, reads the slot and the id stored there, and returns "RangeError: ..." (as index.cu).
#include <algorithm>
#include <climits>
#include <cstdint>
#include <mutex>
#include <string>

#include "../core/philox.h"
#include "device.cuh"

namespace dualroute {
namespace cuda {
namespace {

// emu:begin route_rules (test/cuda_emu runs the code up to emu:end in a warp emulator)
__device__ unsigned long long g_route_bad;  // smallest position with a bad id, ~0 if none

__device__ __forceinline__ bool bad_id(int32_t id, int64_t limit) { return id < 0 || (limit > 0 && id >= limit); }

__global__ void route_random_kernel(int32_t* __restrict__ route, const int32_t* __restrict__ th, int P, int64_t n,
                                    uint64_t seed, uint64_t offset) {
  for (int64_t t = gtid(); t < n; t += gstride()) {
    const int32_t u = static_cast<int32_t>(philox_u32(seed, offset + static_cast<uint64_t>(t)) >> 1);
    int lo = 0, hi = P - 1;  // the first p with u <= th[p]; th[P - 1] = 2^31 - 1 (the clamp to P - 1 for a bad table)
    while (lo < hi) {
      const int mid = (lo + hi) >> 1;
      if (u <= th[mid]) hi = mid;
      else lo = mid + 1;
    }
    route[t] = lo;
  }
}

__global__ void route_hash_kernel(int32_t* __restrict__ route, const int32_t* __restrict__ ids, int64_t n, int buckets,
                                  uint64_t seed, int64_t limit) {
  for (int64_t i = gtid(); i < n; i += gstride()) {
    const int32_t id = ids[i];
    if (bad_id(id, limit)) {
      route[i] = 0;
      record_bad(&g_route_bad, i);
      continue;
    }
    const uint32_t h = philox4x32(seed, static_cast<uint64_t>(id)).v[0];
    route[i] = static_cast<int32_t>((static_cast<uint64_t>(h) * static_cast<uint64_t>(buckets)) >> 32);
  }
}

__global__ void route_rules_kernel(int32_t* __restrict__ route, const int32_t* __restrict__ ids, int64_t n,
                                   const int32_t* __restrict__ rules, int nrules, const int32_t* __restrict__ lut,
                                   int64_t L, int fallback, int64_t limit) {
  for (int64_t i = gtid(); i < n; i += gstride()) {
    const int32_t id = ids[i];
    if (bad_id(id, limit)) {
      route[i] = fallback;
      record_bad(&g_route_bad, i);
      continue;
    }
    if (lut) {
      route[i] = id < L ? lut[id] : fallback;
      continue;
    }
    int lo = 0, hi = nrules;  // rules [0, lo) start at or before id, [hi, nrules) after it
    while (lo < hi) {
      const int mid = (lo + hi) >> 1;
      if (rules[mid * 3] <= id) lo = mid + 1;
      else hi = mid;
    }
    route[i] = lo > 0 && id <= rules[(lo - 1) * 3 + 1] ? rules[(lo - 1) * 3 + 2] : fallback;
  }
}
// emu:end route_rules

std::mutex g_route_mutex;  // one slot: keep reset, launch and read-back together

// Runs launch() under the ids' bad-slot round trip (device.cuh's with_bad_slot).
template <typename Launch>
int with_route_slot(const char* name, const int32_t* ids, int64_t limit, Launch&& launch) {
  return with_bad_slot(
      g_route_mutex, g_route_bad, name, ids,
      [&](unsigned long long*) {
        launch();
        return check_launch(name);
      },
      [&](long long bad, int32_t v) {
        std::string msg = std::string("RangeError: ") + name + ": token id " + std::to_string(v) + " at position " +
                          std::to_string(bad);
        msg += v < 0 ? " is negative" : " is outside [0, " + std::to_string(limit) + ")";
        return msg;
      });
}

int check_i32(const char* name, const View& v, const char* what) {
  if (dt(v) != DType::I32) return set_error(std::string(name) + ": " + what + " must be int32");
  if (!view_contiguous(v)) return set_error(std::string(name) + ": " + what + " must be contiguous");
  return 0;
}

}  // namespace

int route_random(const View* route, const View* thresholds, uint64_t seed, uint64_t offset) {
  DR_CUDA_ENTRY_BEGIN
  const char* name = "randomRoute";
  DR_CUDA_TRY(check_i32(name, *route, "route"));
  DR_CUDA_TRY(check_i32(name, *thresholds, "thresholds"));
  const int64_t n = view_numel(*route), P = view_numel(*thresholds);
  if (P < 1 || P > INT_MAX) return set_error("randomRoute: thresholds must hold 1 to 2^31 - 1 paths");
  if (n == 0) return 0;
  route_random_kernel<<<grid_for(n), kThreads, 0, stream()>>>(static_cast<int32_t*>(route->data),
                                                             static_cast<const int32_t*>(thresholds->data),
                                                             static_cast<int>(P), n, seed, offset);
  return check_launch(name);
  DR_CUDA_ENTRY_END("randomRoute")
}

int route_hash(const View* route, const View* ids, int32_t buckets, uint64_t seed, int64_t limit) {
  DR_CUDA_ENTRY_BEGIN
  const char* name = "hashRoute";
  DR_CUDA_TRY(check_i32(name, *route, "route"));
  DR_CUDA_TRY(check_i32(name, *ids, "ids"));
  if (buckets < 1) return set_error("hashRoute: buckets must be >= 1");
  const int64_t n = view_numel(*ids);
  if (n == 0) return 0;
  const int32_t* pid = static_cast<const int32_t*>(ids->data);
  return with_route_slot(name, pid, limit, [&] {
    route_hash_kernel<<<grid_for(n), kThreads, 0, stream()>>>(static_cast<int32_t*>(route->data), pid, n, buckets, seed,
                                                             limit);
  });
  DR_CUDA_ENTRY_END("hashRoute")
}

int route_rules(const View* route, const View* ids, const View* rules, const View* lut, int32_t fallback,
                int64_t limit) {
  DR_CUDA_ENTRY_BEGIN
  const char* name = "ruleRoute";
  DR_CUDA_TRY(check_i32(name, *route, "route"));
  DR_CUDA_TRY(check_i32(name, *ids, "ids"));
  DR_CUDA_TRY(check_i32(name, *rules, "rules"));
  if (lut->data) DR_CUDA_TRY(check_i32(name, *lut, "lut"));
  const int64_t n = view_numel(*ids), nrules = rules->shape[0], L = lut->data ? view_numel(*lut) : 0;
  if (nrules > INT_MAX / 3) return set_error("ruleRoute: too many rules");
  if (n == 0) return 0;
  const int32_t* pid = static_cast<const int32_t*>(ids->data);
  const int32_t* pl = static_cast<const int32_t*>(lut->data);
  return with_route_slot(name, pid, limit, [&] {
    route_rules_kernel<<<grid_for(n), kThreads, 0, stream()>>>(static_cast<int32_t*>(route->data), pid, n,
                                                              static_cast<const int32_t*>(rules->data),
                                                              static_cast<int>(nrules), pl, L, fallback, limit);
  });
  DR_CUDA_ENTRY_END("ruleRoute")
}

}  // namespace cuda
}  // namespace dualroute
