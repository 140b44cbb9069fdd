// Decode caches shared by many sequences on the GPU (continuous batching; float32 / bfloat16
// caches, segment means, scores and the softmax in float32). Semantics: core/kvcache.h. Every
// sequence n owns slot slots[n] of the caches [S, Hkv, C, D]; position p of a slot lives at row
// p % C (a ring when C is shorter than the text).
//
// kv_check: a thread per sequence checks its slot (in [0, S); an append's also not taken by an
// earlier sequence) and length (append: >= 0 and, with means, lengths[n] + Sq <= C; attention:
// >= Sq and, with means, <= C), recording n * 4 + kind of the first problem in a device slot
// (atomicMin: the smallest sequence, then its first kind). The kernels after it read that slot
// first and do nothing when it is set, so a rejected call writes nothing (the caches stay as they
// were) and never reads through a bad slot; the entry waits for the stream and reports the
// recorded problem as a RangeError (as segment.cu and index.cu do): every call waits for the
// stream once.
//
// kv_append_rows: a thread per element of k and v copies it to row (lengths[n] + i) % C of the
// slot; an append longer than C writes only its last C positions (the earlier ones would be
// overwritten in the same call). kv_append_means (with means; launched after the rows, so it reads
// the new keys): a thread per (sequence, kv head, touched segment, d) sums the segment's keys in
// position order in float and multiplies by 1 / count, the CPU's segment_mean order.
//
// kv_attn_warp: one warp per (sequence, query head, query row), the head dim strided over the lanes
// (DPL values per lane), as seg_fwd_warp: the online softmax over the row's visible keys, each read
// at its ring row. Without means: the keys [max(lo, window start), p], lo = max(0, lengths[n] - C).
// With means (Global only): the own segment's keys first, then topk - 1 selection passes over the
// segments before it (segmentTopk's order: the next best after the previous pick, NaN largest, ties
// to the lower segment, -inf no candidate), each pick attended as soon as it is found. The scores
// are segmentTopk's: the group's query heads summed, times scale, into the warp's shared memory,
// then a lane per segment sums over d in order; the first kKvScoreCache scores are kept in shared
// memory, later segments are scored again on each pass. These are correctness-first kernels: K/V
// rows are read once per (query row, key) from L2, not shared between the query heads of a kv head.
// Not yet run on a GPU (checked in test/cuda_emu's warp emulator: kvcache_test.cpp).
#include <algorithm>
#include <climits>
#include <mutex>
#include <string>

#include "../core/attention.h"
#include "device.cuh"

namespace dualroute {
namespace cuda {
namespace {

// emu:begin kvcache (test/cuda_emu runs the code up to emu:end in a warp emulator)
constexpr int kKvWarps = 4;           // query rows per block of kv_attn_warp
constexpr int kKvMaxD = 256;          // head dims up to 8 values per lane
constexpr int kKvScoreCache = 1024;   // segment scores a warp keeps in shared memory

// What kv_check records, as n * 4 + kind.
constexpr int kKvBadSlot = 0;      // slots[n] outside [0, S)
constexpr int kKvBadLength = 1;    // append: lengths[n] < 0; attention: lengths[n] < Sq
constexpr int kKvBadCapacity = 2;  // with means: append past C, or attention over more than C positions
constexpr int kKvBadRepeat = 3;    // append: slots[n] taken by an earlier sequence

__global__ void kv_check(const int32_t* __restrict__ len, const int32_t* __restrict__ slot, unsigned long long* bad,
                         int N, int S, int C, int Sq, int append, int has_means) {
  for (long long n = gtid(); n < N; n += gstride()) {
    const int s = slot[n];
    const long long L = len[n];
    int kind = -1;
    if (s < 0 || s >= S) {
      kind = kKvBadSlot;
    } else if (append ? L < 0 : L < Sq) {
      kind = kKvBadLength;
    } else if (has_means && (append ? L + Sq : L) > C) {
      kind = kKvBadCapacity;
    } else if (append) {
      for (long long m = 0; m < n; ++m)
        if (slot[m] == s) {
          kind = kKvBadRepeat;
          break;
        }
    }
    if (kind >= 0) record_bad(bad, n * 4 + kind);
  }
}

struct KvAppendParams {
  void* kc;                  // [S, Hkv, C, D]
  void* vc;
  float* means;              // [S, Hkv, M, D] or null
  const void* k;             // [N, Hkv, Sq, D]
  const void* v;
  const int32_t* len;        // [N], before the append
  const int32_t* slot;       // [N]
  unsigned long long* bad;   // kv_check's slot: the kernels do nothing when it is set
  int N, Hkv, Sq, D, C, M, segment;
};

// k, v [n, h, i] -> caches [slots[n], h, (lengths[n] + i) % C], for the last min(Sq, C) rows i.
template <typename T>
__global__ void kv_append_rows(KvAppendParams P) {
  if (*P.bad != ~0ull) return;
  const long long i0 = P.Sq > P.C ? P.Sq - P.C : 0;  // earlier rows of a long append are overwritten
  const long long W = P.Sq - i0, D = P.D;
  const long long total = static_cast<long long>(P.N) * P.Hkv * W * D;
  const T* k = static_cast<const T*>(P.k);
  const T* v = static_cast<const T*>(P.v);
  T* kc = static_cast<T*>(P.kc);
  T* vc = static_cast<T*>(P.vc);
  for (long long e = gtid(); e < total; e += gstride()) {
    const long long d = e % D, r = e / D, i = i0 + r % W, nh = r / W, h = nh % P.Hkv, n = nh / P.Hkv;
    const long long pos = static_cast<long long>(P.len[n]) + i;
    const long long dst = ((static_cast<long long>(P.slot[n]) * P.Hkv + h) * P.C + pos % P.C) * D + d;
    const long long src = ((n * P.Hkv + h) * P.Sq + i) * D + d;
    kc[dst] = k[src];
    vc[dst] = v[src];
  }
}

// means[slots[n], h, s] for the segments s the append touched (the t-th from lengths[n] / segment,
// t < nt, an upper bound over the sequences): the keys of positions [s * segment, min(L, next)),
// L = lengths[n] + Sq, summed in order in float, times 1 / count.
template <typename T>
__global__ void kv_append_means(KvAppendParams P, int nt) {
  if (*P.bad != ~0ull) return;
  const long long D = P.D, seg = P.segment;
  const long long total = static_cast<long long>(P.N) * P.Hkv * nt * D;
  const T* kc = static_cast<const T*>(P.kc);
  for (long long e = gtid(); e < total; e += gstride()) {
    const long long d = e % D, r = e / D, t = r % nt, nh = r / nt, h = nh % P.Hkv, n = nh / P.Hkv;
    const long long L0 = P.len[n], L = L0 + P.Sq;
    const long long s = L0 / seg + t;
    if (s > (L - 1) / seg) continue;
    const long long j0 = s * seg, j1 = min(L, j0 + seg);
    const long long kvh = static_cast<long long>(P.slot[n]) * P.Hkv + h;
    const T* kr = kc + kvh * P.C * D + d;  // L <= C (kv_check): position j is row j
    float acc = 0.f;
    for (long long j = j0; j < j1; ++j) acc += ld(kr[j * D]);
    P.means[(kvh * P.M + s) * D + d] = acc * (1.f / static_cast<float>(j1 - j0));
  }
}

struct KvAttnParams {
  const void* q;             // [N, Hq, Sq, D]
  void* o;                   // [N, Hq, Sq, D]
  const void* kc;            // [S, Hkv, C, D]
  const void* vc;
  const int32_t* len;        // [N], after the append: the queries are the newest Sq positions
  const int32_t* slot;       // [N]
  const float* means;        // [S, Hkv, M, D] or null (then no segment routing)
  unsigned long long* bad;   // kv_check's slot: the kernel does nothing when it is set
  long long rows;            // N * Hq * Sq
  long long window;          // clamped to 2^40 by the host
  int Hq, Hkv, Sq, D, C, M, segment, topk, group, mask;
  float scale;
};

// one key of the online softmax: online_key; the selection order: sel_before, warp_best (device.cuh)

template <typename T, int DPL>
__global__ void __launch_bounds__(kKvWarps * 32) kv_attn_warp(KvAttnParams P) {
  __shared__ float kv_qs[kKvWarps * kKvMaxD], kv_ss[kKvWarps * kKvScoreCache];
  if (*P.bad != ~0ull) return;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const long long row = static_cast<long long>(blockIdx.x) * kKvWarps + warp;
  if (row >= P.rows) return;
  const int D = P.D;
  const long long i = row % P.Sq, nh = row / P.Sq, h = nh % P.Hq, n = nh / P.Hq;
  const long long L = P.len[n];
  const long long p = L - P.Sq + i;             // the row's position (kv_check: L >= Sq)
  const long long lo = max(0LL, L - P.C);       // the oldest position the ring still holds
  const long long kvh = static_cast<long long>(P.slot[n]) * P.Hkv + h / (P.Hq / P.Hkv);
  const T* kh = static_cast<const T*>(P.kc) + kvh * P.C * D;
  const T* vh = static_cast<const T*>(P.vc) + kvh * P.C * D;
  const T* qp = static_cast<const T*>(P.q) + row * D;
  float q[DPL], acc[DPL];
#pragma unroll
  for (int c = 0; c < DPL; ++c) {
    const int d = lane + 32 * c;
    q[c] = d < D ? ld(qp[d]) * P.scale : 0.f;
    acc[c] = 0.f;
  }
  float m = -INFINITY, l = 0.f;
  bool seen = false;
  // positions [a, b] in order, each at its ring row
  auto keys = [&](long long a, long long b) {
    if (a > b) return;
    seen = true;
    long long r = a % P.C;
    for (long long j = a; j <= b; ++j) {
      online_key<T, DPL>(q, kh + r * D, vh + r * D, D, lane, m, l, acc);
      if (++r == P.C) r = 0;
    }
  };
  if (!P.means) {
    long long a = lo;
    if (P.mask == static_cast<int>(AttnMask::Sliding)) a = max(a, p - P.window + 1);
    else if (P.mask == static_cast<int>(AttnMask::Block)) a = max(a, p / P.window * P.window);
    keys(a, p);
  } else {
    const long long seg = P.segment, own = p / seg;
    keys(max(lo, own * seg), p);
    if (P.topk > 1 && own > 0) {
      // the group's query heads summed and scaled (segmentTopk's qs), then the scores of the
      // segments before the own one, a lane a segment, d in order
      float* qs = kv_qs + warp * kKvMaxD;
      float* ss = kv_ss + warp * kKvScoreCache;
      const long long h0 = h / P.group * P.group;
      const T* q0 = static_cast<const T*>(P.q) + ((n * P.Hq + h0) * P.Sq + i) * D;
      for (int d = lane; d < D; d += 32) {
        float a = 0.f;
        for (int g = 0; g < P.group; ++g) a += ld(q0[static_cast<long long>(g) * P.Sq * D + d]);
        qs[d] = a * P.scale;
      }
      __syncwarp();
      const float* mb = P.means + kvh * P.M * D;
      auto score = [&](int s) {
        const float* mr = mb + static_cast<long long>(s) * D;
        float a = 0.f;
        for (int d = 0; d < D; ++d) a += qs[d] * mr[d];
        return a;
      };
      const int last = static_cast<int>(own) - 1;
      for (int s = lane; s <= last && s < kKvScoreCache; s += 32) ss[s] = score(s);
      __syncwarp();
      // pass x: the best segment after pick x - 1 in the selection order, attended at once
      float pv = 0.f;
      int pi = -1;
      for (int x = 1; x < P.topk; ++x) {
        float bv = 0.f;
        int bi = -1;
        for (int s = lane; s <= last; s += 32) {
          const float v = s < kKvScoreCache ? ss[s] : score(s);
          if (v == -INFINITY) continue;
          if (pi >= 0 && !sel_before(pv, pi, v, s)) continue;  // picked already
          if (bi < 0 || sel_before(v, s, bv, bi)) {
            bv = v;
            bi = s;
          }
        }
        warp_best(bv, bi);
        if (bi < 0) break;
        keys(max(lo, bi * seg), bi * seg + seg - 1);
        pv = bv;
        pi = bi;
      }
    }
  }
  // no visible key: 0; every visible score -inf (l = 0) or NaN: NaN, as attention does
  const float inv = !seen ? 0.f : l > 0.f ? 1.f / l : NAN;
  T* op = static_cast<T*>(P.o) + row * D;
#pragma unroll
  for (int c = 0; c < DPL; ++c) {
    const int d = lane + 32 * c;
    if (d < D) op[d] = st<T>(seen ? acc[c] * inv : 0.f);
  }
}
// emu:end kvcache

__device__ unsigned long long g_kv_bad;  // kv_check's n * 4 + kind, ~0 if none
std::mutex g_kv_mutex;

bool kv_float(DType t) { return t == DType::F32 || t == DType::BF16; }

// Under the mutex: reset the slot, launch(slot) (kv_check and the kernels after it), wait, and
// turn a recorded problem into a RangeError naming the sequence, its slot and length.
template <typename Launch>
int with_kv_check(const char* name, bool append, const int32_t* len, const int32_t* slot, int64_t S, int64_t C,
                  int64_t Sq, Launch&& launch) {
  std::lock_guard<std::mutex> lock(g_kv_mutex);
  void* bad_slot = nullptr;
  DR_CUDA_TRY(bad_slot_reset(g_kv_bad, &bad_slot, name, name));
  DR_CUDA_TRY(launch(static_cast<unsigned long long*>(bad_slot)));
  unsigned long long bad = 0;
  DR_CUDA_TRY(bad_slot_read(bad_slot, &bad, name));
  if (bad == ~0ull) return 0;
  const long long n = static_cast<long long>(bad / 4);
  const int kind = static_cast<int>(bad % 4);
  int32_t s = 0, L = 0;
  DR_CUDA_TRY(read_index(slot + n, &s, name));
  DR_CUDA_TRY(read_index(len + n, &L, name));
  const std::string at = "[" + std::to_string(n) + "]";
  std::string msg = std::string("RangeError: ") + name + ": ";
  if (kind == kKvBadSlot)
    msg += "slots" + at + " = " + std::to_string(s) + " is outside [0, " + std::to_string(S) + ")";
  else if (kind == kKvBadLength && append)
    msg += "lengths" + at + " = " + std::to_string(L) + " is negative";
  else if (kind == kKvBadLength)
    msg += "lengths" + at + " = " + std::to_string(L) + " is less than the " + std::to_string(Sq) + " query rows";
  else if (kind == kKvBadCapacity && append)
    msg += "lengths" + at + " + " + std::to_string(Sq) + " = " + std::to_string(static_cast<long long>(L) + Sq) +
           " positions exceed the capacity " + std::to_string(C) + " of a cache with segment means";
  else if (kind == kKvBadCapacity)
    msg += "lengths" + at + " = " + std::to_string(L) + " positions exceed the capacity " + std::to_string(C) +
           " of a cache with segment means";
  else
    msg += "slots" + at + " = " + std::to_string(s) + " is the slot of an earlier sequence of the append";
  return set_error(msg);
}

template <typename T>
int launch_append_t(const KvAppendParams& P, int nt, const char* name) {
  const long long rows = static_cast<long long>(P.N) * P.Hkv * std::min(P.Sq, P.C) * P.D;
  kv_append_rows<T><<<grid_for(rows), kThreads, 0, stream()>>>(P);
  DR_CUDA_TRY(check_launch(name));
  if (!P.means || nt == 0) return 0;
  const long long mtotal = static_cast<long long>(P.N) * P.Hkv * nt * P.D;
  kv_append_means<T><<<grid_for(mtotal), kThreads, 0, stream()>>>(P, nt);
  return check_launch(name);
}

template <typename T>
int launch_attn_t(const KvAttnParams& P, const char* name) {
  const long long blocks = (P.rows + kKvWarps - 1) / kKvWarps;
  if (blocks > INT_MAX) return set_error(std::string(name) + ": too many query rows");
  const unsigned g = static_cast<unsigned>(blocks);
  const int dpl = (P.D + 31) / 32;
  if (dpl <= 1) kv_attn_warp<T, 1><<<g, kKvWarps * 32, 0, stream()>>>(P);
  else if (dpl <= 2) kv_attn_warp<T, 2><<<g, kKvWarps * 32, 0, stream()>>>(P);
  else if (dpl <= 4) kv_attn_warp<T, 4><<<g, kKvWarps * 32, 0, stream()>>>(P);
  else kv_attn_warp<T, 8><<<g, kKvWarps * 32, 0, stream()>>>(P);
  return check_launch(name);
}

}  // namespace

int kv_cache_append(const View* k_cache, const View* v_cache, const View* means, const View* k, const View* v,
                    const View* lengths, const View* slots, int64_t segment) {
  DR_CUDA_ENTRY_BEGIN
  const char* name = "kvCacheAppend";
  const bool has_means = means && means->data;
  const DType t = dt(*k_cache);
  if (!kv_float(t)) return dtype_error(name, *k_cache);
  if (dt(*v_cache) != t || dt(*k) != t || dt(*v) != t)
    return set_error(std::string(name) + ": the caches, k and v must have one dtype");
  if (has_means && dt(*means) != DType::F32) return dtype_error(name, *means);
  if (has_means && segment < 1) return set_error(std::string(name) + ": segment must be positive");
  const int64_t S = k_cache->shape[0], Hkv = k_cache->shape[1], C = k_cache->shape[2], D = k_cache->shape[3];
  const int64_t N = k->shape[0], Sq = k->shape[2];
  const int64_t M = has_means ? means->shape[2] : 0;
  if (std::max({S, Hkv, C, D, N, Sq, M, segment}) > INT_MAX) return set_error(std::string(name) + ": too large");
  if (N == 0) return 0;
  KvAppendParams P{};
  P.kc = k_cache->data;
  P.vc = v_cache->data;
  P.means = has_means ? static_cast<float*>(means->data) : nullptr;
  P.k = k->data;
  P.v = v->data;
  P.len = static_cast<const int32_t*>(lengths->data);
  P.slot = static_cast<const int32_t*>(slots->data);
  P.N = static_cast<int>(N);
  P.Hkv = static_cast<int>(Hkv);
  P.Sq = static_cast<int>(Sq);
  P.D = static_cast<int>(D);
  P.C = static_cast<int>(C);
  P.M = static_cast<int>(M);
  P.segment = has_means ? static_cast<int>(segment) : 1;
  // segments an append of Sq positions can touch: at most (Sq - 1) / segment + 2 (and M)
  const int nt = has_means && Sq > 0 ? static_cast<int>(std::min<int64_t>((Sq - 1) / segment + 2, M)) : 0;
  return with_kv_check(name, true, P.len, P.slot, S, C, Sq, [&](unsigned long long* bad) {
    P.bad = bad;
    kv_check<<<grid_for(N), kThreads, 0, stream()>>>(P.len, P.slot, P.bad, P.N, static_cast<int>(S), P.C, P.Sq, 1,
                                                    has_means ? 1 : 0);
    DR_CUDA_TRY(check_launch(name));
    if (Sq == 0 || D == 0 || Hkv == 0 || C == 0) return 0;
    return t == DType::BF16 ? launch_append_t<bf16_t>(P, nt, name) : launch_append_t<float>(P, nt, name);
  });
  DR_CUDA_ENTRY_END("kvCacheAppend")
}

int kv_cache_attention(const View* out, const View* q, const View* k_cache, const View* v_cache, const View* lengths,
                       const View* slots, const View* means, int32_t mask, int64_t window, int64_t segment,
                       int32_t topk, int32_t group, double scale) {
  DR_CUDA_ENTRY_BEGIN
  const char* name = "kvCacheAttention";
  const bool has_means = means && means->data;
  const DType t = dt(*q);
  if (!kv_float(t)) return dtype_error(name, *q);
  if (dt(*out) != t || dt(*k_cache) != t || dt(*v_cache) != t)
    return set_error(std::string(name) + ": q, out and the caches must have one dtype");
  if (has_means && dt(*means) != DType::F32) return dtype_error(name, *means);
  const int64_t N = q->shape[0], Hq = q->shape[1], Sq = q->shape[2], D = q->shape[3];
  const int64_t S = k_cache->shape[0], Hkv = k_cache->shape[1], C = k_cache->shape[2];
  const int64_t M = has_means ? means->shape[2] : 0;
  if (D > kKvMaxD) return set_error(std::string(name) + ": head dims above 256 are not supported on CUDA");
  if (Hkv < 1 || Hq % Hkv != 0) return set_error(std::string(name) + ": the query heads must be a multiple of the kv heads");
  if (mask != static_cast<int32_t>(AttnMask::Global) && window < 1)
    return set_error(std::string(name) + ": window must be positive");
  if (has_means) {
    if (mask != static_cast<int32_t>(AttnMask::Global))
      return set_error(std::string(name) + ": segment routing (means) takes the global mask");
    if (segment < 1) return set_error(std::string(name) + ": segment must be positive");
    if (group < 1 || (Hq / Hkv) % group != 0)
      return set_error(std::string(name) + ": group must divide the query heads of a kv head");
  }
  if (std::max({N, Hq, Sq, S, Hkv, C, M, segment}) > INT_MAX) return set_error(std::string(name) + ": too large");
  if (N == 0) return 0;
  KvAttnParams P{};
  P.q = q->data;
  P.o = out->data;
  P.kc = k_cache->data;
  P.vc = v_cache->data;
  P.len = static_cast<const int32_t*>(lengths->data);
  P.slot = static_cast<const int32_t*>(slots->data);
  P.means = has_means ? static_cast<const float*>(means->data) : nullptr;
  P.rows = N * Hq * Sq;
  P.window = std::min<long long>(window, 1LL << 40);
  P.Hq = static_cast<int>(Hq);
  P.Hkv = static_cast<int>(Hkv);
  P.Sq = static_cast<int>(Sq);
  P.D = static_cast<int>(D);
  P.C = static_cast<int>(C);
  P.M = static_cast<int>(M);
  P.segment = has_means ? static_cast<int>(segment) : 1;
  P.topk = topk;
  P.group = has_means ? group : 1;
  P.mask = mask;
  P.scale = static_cast<float>(scale);
  return with_kv_check(name, false, P.len, P.slot, S, C, Sq, [&](unsigned long long* bad) {
    P.bad = bad;
    kv_check<<<grid_for(N), kThreads, 0, stream()>>>(P.len, P.slot, P.bad, static_cast<int>(N), static_cast<int>(S),
                                                    P.C, P.Sq, 0, has_means ? 1 : 0);
    DR_CUDA_TRY(check_launch(name));
    if (P.rows == 0 || D == 0) return 0;
    return t == DType::BF16 ? launch_attn_t<bf16_t>(P, name) : launch_attn_t<float>(P, name);
  });
  DR_CUDA_ENTRY_END("kvCacheAttention")
}

}  // namespace cuda
}  // namespace dualroute
