// The router gate on the GPU (float32 / bfloat16 logits; scores, weights and their gradients in
// float32). Semantics as native/cpu/routing.cpp:
//   scores  s = softmax(l) or sigmoid(l) per token (row of logits [T, E])
//   select  the top k of s + bias + noise, ties to the lower expert, NaN the largest; with
//           groups > 1 only among the best topGroups groups (a group scored by the sum of its two
//           best values)
//   weights routeScale * s[i_j] / (normalize ? sum_j' s[i_j'] : 1)
//   positions the rank of entry (t, j) among its expert's entries in the order (j, t); -1 from
//           capacity on (0: no limit); counts[e] the kept entries of e.
//
// router_select: one warp per token, the experts strided over the lanes. The j-th choice is the
// best expert that comes after the (j-1)-th in the selection order (value, then index): k warp
// reductions, no per-expert state. Group scores go through shared memory (groups <= 64, a bit
// mask of the chosen ones).
// Positions, in three steps over blocks of kPosTokens tokens: router_block_counts counts each
// block's entries per (choice j, expert); router_scan turns them into each block's first rank,
// in the order (j, block), one thread per expert; router_positions walks each block's tokens in
// order with per-expert counters in shared memory (one thread per choice j: the walk is short).
// router_gate_backward: one warp per token.
#include <algorithm>
#include <climits>
#include <mutex>
#include <string>

#include "device.cuh"

namespace dualroute {
namespace cuda {

int scratch_alloc(void** ptr, size_t bytes);
int scratch_release(void* ptr);

namespace {

// emu:begin routing (test/cuda_emu runs the code up to emu:end in a warp emulator)
constexpr int kGateWarps = 4;       // tokens per router_select block
constexpr int kMaxGroups = 64;
constexpr int kPosTokens = 256;     // tokens per positions block

// sel_before / warp_best (the selection order): device.cuh

template <typename T>
__global__ void __launch_bounds__(kGateWarps * 32) router_select(int32_t* __restrict__ indices, float* __restrict__ weights,
                                                                float* __restrict__ scores, const T* __restrict__ logits,
                                                                const float* __restrict__ bias,
                                                                const float* __restrict__ noise, int64_t ntok, int E,
                                                                int score, int k, int normalize, float route_scale,
                                                                int groups, int top_groups) {
  __shared__ float gs[kGateWarps][kMaxGroups];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int64_t t = static_cast<int64_t>(blockIdx.x) * kGateWarps + warp;
  if (t >= ntok) return;  // whole warps: the warp reductions below see 32 lanes
  const T* lr = logits + t * E;
  float* sr = scores + t * E;
  // scores
  if (score == 0) {
    float m = -INFINITY;
    for (int x = lane; x < E; x += 32) {
      const float v = ld(lr[x]);
      m = (v > m || v != v) ? v : m;
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
      const float v = __shfl_xor_sync(0xffffffffu, m, o);
      m = (v > m || v != v) ? v : m;
    }
    float sum = 0.f;
    for (int x = lane; x < E; x += 32) sum += expf(ld(lr[x]) - m);
    sum = warp_sum(sum);
    const float inv = 1.f / sum;
    for (int x = lane; x < E; x += 32) sr[x] = expf(ld(lr[x]) - m) * inv;
  } else {
    for (int x = lane; x < E; x += 32) sr[x] = act_sigmoid(ld(lr[x]));
  }
  __syncwarp();
  auto sel = [&](int x) { return sr[x] + (bias ? bias[x] : 0.f) + (noise ? noise[t * E + x] : 0.f); };
  // groups: the sum of each group's two best values; the best top_groups groups, as a bit mask
  unsigned long long allowed = ~0ull;
  const int gsize = E / groups;
  if (groups > 1) {
    for (int g = 0; g < groups; ++g) {
      float v1 = 0.f, v2 = 0.f;
      int i1 = -1, i2 = -1;
      for (int x = g * gsize + lane; x < (g + 1) * gsize; x += 32) {
        const float v = sel(x);
        if (i1 < 0 || sel_before(v, x, v1, i1)) {
          v2 = v1;
          i2 = i1;
          v1 = v;
          i1 = x;
        } else if (i2 < 0 || sel_before(v, x, v2, i2)) {
          v2 = v;
          i2 = x;
        }
      }
      // the warp's best two: the best, then the best of the rest
      float b1 = v1;
      int j1 = i1;
      warp_best(b1, j1);
      float c = (i1 == j1) ? v2 : v1;
      int ci = (i1 == j1) ? i2 : i1;
      warp_best(c, ci);
      if (lane == 0) gs[warp][g] = b1 + (ci >= 0 ? c : 0.f);
    }
    __syncwarp();
    allowed = 0ull;
    float pv = 0.f;
    int pi = -1;
    for (int j = 0; j < top_groups; ++j) {
      float v = 0.f;
      int i = -1;
      for (int g = lane; g < groups; g += 32) {
        const float gv = gs[warp][g];
        if ((pi < 0 || sel_before(pv, pi, gv, g)) && (i < 0 || sel_before(gv, g, v, i))) {
          v = gv;
          i = g;
        }
      }
      warp_best(v, i);
      allowed |= 1ull << i;
      pv = v;
      pi = i;
    }
  }
  // the k choices in selection order, each the best after the previous one
  float pv = 0.f, total = 0.f;
  int pi = -1;
  int32_t* ir = indices + t * k;
  float* wr = weights + t * k;
  for (int j = 0; j < k; ++j) {
    float v = 0.f;
    int i = -1;
    for (int x = lane; x < E; x += 32) {
      if (groups > 1 && !((allowed >> (x / gsize)) & 1ull)) continue;
      const float sv = sel(x);
      if ((pi < 0 || sel_before(pv, pi, sv, x)) && (i < 0 || sel_before(sv, x, v, i))) {
        v = sv;
        i = x;
      }
    }
    warp_best(v, i);
    pv = v;
    pi = i;
    const float s = sr[i];
    total += s;
    if (lane == 0) {
      ir[j] = i;
      wr[j] = s;
    }
  }
  __syncwarp();
  const float f = route_scale / (normalize ? total : 1.f);
  for (int j = lane; j < k; j += 32) wr[j] *= f;
}

// cnt[(j * nblocks + blk) * E + e]: entries (t in block blk, choice j) that chose e.
__global__ void router_block_counts(int32_t* __restrict__ cnt, const int32_t* __restrict__ indices, int64_t ntok, int E,
                                    int k, int nblocks) {
  const int blk = blockIdx.x;
  const int64_t t0 = static_cast<int64_t>(blk) * kPosTokens;
  for (int j = 0; j < k; ++j) {
    int32_t* c = cnt + (static_cast<int64_t>(j) * nblocks + blk) * E;
    for (int e = threadIdx.x; e < E; e += blockDim.x) c[e] = 0;
    __syncthreads();
    const int64_t t1 = t0 + kPosTokens < ntok ? t0 + kPosTokens : ntok;
    for (int64_t t = t0 + threadIdx.x; t < t1; t += blockDim.x) atomicAdd(&c[indices[t * k + j]], 1);
    __syncthreads();
  }
}

// In place: cnt becomes each (j, block)'s first rank per expert; counts[e] the kept total.
__global__ void router_scan(int32_t* __restrict__ cnt, int32_t* __restrict__ counts, int E, int k, int nblocks,
                            int capacity) {
  for (int e = blockIdx.x * blockDim.x + threadIdx.x; e < E; e += gridDim.x * blockDim.x) {
    long long run = 0;
    for (int r = 0; r < k * nblocks; ++r) {
      int32_t* c = cnt + static_cast<int64_t>(r) * E + e;
      const int32_t here = *c;
      *c = static_cast<int32_t>(min(run, static_cast<long long>(INT_MAX)));
      run += here;
    }
    counts[e] = static_cast<int32_t>(capacity > 0 ? min(run, static_cast<long long>(capacity)) : run);
  }
}

// One block per token block; thread j walks choice j of the block's tokens in order.
__global__ void router_positions(int32_t* __restrict__ positions, int32_t* __restrict__ cnt,
                                 const int32_t* __restrict__ indices, int64_t ntok, int E, int k, int nblocks,
                                 int capacity) {
  const int blk = blockIdx.x;
  const int64_t t0 = static_cast<int64_t>(blk) * kPosTokens, t1 = t0 + kPosTokens < ntok ? t0 + kPosTokens : ntok;
  for (int j = threadIdx.x; j < k; j += blockDim.x) {
    // this (j, block)'s first ranks, advanced in place (each (j, block) row is this thread's alone)
    int32_t* base = cnt + (static_cast<int64_t>(j) * nblocks + blk) * E;
    for (int64_t t = t0; t < t1; ++t) {
      const int e = indices[t * k + j];
      const int32_t p = base[e]++;
      positions[t * k + j] = capacity > 0 && p >= capacity ? -1 : p;
    }
  }
}

__global__ void __launch_bounds__(kGateWarps * 32) router_gate_bwd(float* __restrict__ dlogits, const float* __restrict__ scores,
                                                                  const int32_t* __restrict__ indices,
                                                                  const float* __restrict__ dweights, int64_t ntok, int E,
                                                                  int k, int score, int normalize, float route_scale) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int64_t t = static_cast<int64_t>(blockIdx.x) * kGateWarps + warp;
  if (t >= ntok) return;
  const float* s = scores + t * E;
  const int32_t* idx = indices + t * k;
  const float* dw = dweights + t * k;
  float total = 0.f, dot = 0.f;
  if (normalize)
    for (int j = 0; j < k; ++j) {
      total += s[idx[j]];
      dot += dw[j] * s[idx[j]];
    }
  // ds[x]: the chosen experts' terms (k is small: each lane looks its experts up in the list)
  auto ds = [&](int x) {
    float v = 0.f;
    for (int j = 0; j < k; ++j)
      if (idx[j] == x) v += normalize ? route_scale * (dw[j] - dot / total) / total : route_scale * dw[j];
    return v;
  };
  float* dl = dlogits + t * E;
  if (score == 0) {
    float d = 0.f;
    for (int j = 0; j < k; ++j) d += ds(idx[j]) * s[idx[j]];  // ds is 0 off the chosen experts
    for (int x = lane; x < E; x += 32) dl[x] = s[x] * (ds(x) - d);
  } else {
    for (int x = lane; x < E; x += 32) dl[x] = act_sigmoid_grad_y(s[x], ds(x));
  }
}
// Router losses (routerGate's auxLoss and zLoss; semantics as native/cpu/routing.cpp), in three
// steps with partial sums added in a fixed order (deterministic): router_loss_tokens, a thread per
// token: lse_t and the sigmoid sum; router_loss_part, a thread per (block of kLossTokens tokens,
// expert e): the block's sum of p_te (e == E: of lse_t^2); router_loss_final, one block: the first
// choices counted, P and f per expert, aux and z. router_loss_bwd: a thread per token.
constexpr int kLossTokens = 256;

__device__ __forceinline__ float loss_prob(const float* l, int e, int score, float lse, float ssum) {
  return score == 0 ? expf(l[e] - lse) : act_sigmoid(l[e]) / ssum;
}

__global__ void router_loss_tokens(float* __restrict__ lse, float* __restrict__ ssum, const float* __restrict__ l,
                                   long long T, int E, int score) {
  for (long long t = gtid(); t < T; t += gstride()) {
    const float* r = l + t * E;
    float m = -INFINITY;
    for (int e = 0; e < E; ++e) m = (r[e] > m || r[e] != r[e]) ? r[e] : m;
    float sum = 0.f, ss = 0.f;
    for (int e = 0; e < E; ++e) sum += expf(r[e] - m);
    if (score != 0)
      for (int e = 0; e < E; ++e) ss += act_sigmoid(r[e]);
    lse[t] = m + logf(sum);
    ssum[t] = ss;
  }
}

__global__ void router_loss_part(float* __restrict__ part, const float* __restrict__ l, const float* __restrict__ lse,
                                 const float* __restrict__ ssum, long long T, int E, int score, long long nb) {
  for (long long x = gtid(); x < nb * (E + 1); x += gstride()) {
    const long long b = x / (E + 1);
    const int e = static_cast<int>(x % (E + 1));
    const long long t1 = min(T, (b + 1) * kLossTokens);
    float acc = 0.f;
    for (long long t = b * kLossTokens; t < t1; ++t)
      acc += e == E ? lse[t] * lse[t] : loss_prob(l + t * E, e, score, lse[t], ssum[t]);
    part[x] = acc;
  }
}

__global__ void __launch_bounds__(kThreads) router_loss_final(float* __restrict__ aux, float* __restrict__ z,
                                                              float* __restrict__ f, int* __restrict__ cnt,
                                                              const float* __restrict__ part,
                                                              const int32_t* __restrict__ first, long long T, int E,
                                                              long long nb, unsigned long long* bad) {
  __shared__ float red[32];
  for (long long t = threadIdx.x; t < T; t += blockDim.x) {
    const int32_t e = first[t];
    if (e < 0 || e >= E) record_bad(bad, t);
    else atomicAdd(&cnt[e], 1);
  }
  __syncthreads();
  float acc = 0.f;
  for (int e = threadIdx.x; e < E; e += blockDim.x) {
    float P = 0.f;
    for (long long b = 0; b < nb; ++b) P += part[b * (E + 1) + e];
    P /= static_cast<float>(T);
    const float fe = static_cast<float>(cnt[e]) / static_cast<float>(T > 1 ? T : 1);
    f[e] = fe;
    acc += fe * P;
  }
  acc = block_sum(acc, red);
  if (threadIdx.x == 0) {
    float zs = 0.f;
    for (long long b = 0; b < nb; ++b) zs += part[b * (E + 1) + E];
    *aux = static_cast<float>(E) * acc;
    *z = zs / static_cast<float>(T);
  }
}

__global__ void router_loss_bwd(float* __restrict__ dl, const float* __restrict__ l, const float* __restrict__ lse,
                                const float* __restrict__ f, const float* __restrict__ daux,
                                const float* __restrict__ dz, long long T, int E, int score) {
  const float ca = *daux * static_cast<float>(E) / static_cast<float>(T), cz = *dz * 2.f / static_cast<float>(T);
  for (long long t = gtid(); t < T; t += gstride()) {
    const float* r = l + t * E;
    float ss = 0.f;
    if (score != 0)
      for (int e = 0; e < E; ++e) ss += act_sigmoid(r[e]);
    float g = 0.f;
    for (int e = 0; e < E; ++e) g += f[e] * loss_prob(r, e, score, lse[t], ss);
    for (int e = 0; e < E; ++e) {
      const float p = loss_prob(r, e, score, lse[t], ss), sm = expf(r[e] - lse[t]);
      const float ja = score == 0 ? p * (f[e] - g) : p * ss * (1.f - p * ss) / ss * (f[e] - g);
      dl[t * E + e] = ca * ja + cz * lse[t] * sm;
    }
  }
}

// Segment selection, one row per warp (segmentSelect and segmentTopk; semantics as
// native/cpu/routing.cpp's select_row): the top K of val(s), s in [0, last], the segments
// strided over the lanes; the j-th pick is the best candidate that comes after the (j-1)-th in
// the selection order (k warp reductions, as router_select), the own segment first when
// `force`; -inf is no candidate. pick(x, v, s) runs on every lane for the x-th pick; returns
// the number of picks (<= K).
template <typename F, typename P>
__device__ __forceinline__ int warp_select(const F& val, int last, int own, bool force, int K, const P& pick) {
  const int lane = threadIdx.x & 31;
  int n = 0;
  if (force) {
    pick(0, val(own), own);
    n = 1;
  }
  float pv = 0.f;
  int pi = -1;
  for (; n < K; ++n) {
    float bv = 0.f;
    int bi = -1;
    for (int s = lane; s <= last; s += 32) {
      if (force && s == own) continue;
      const float v = val(s);
      if (v == -INFINITY) continue;
      if (pi >= 0 && !sel_before(pv, pi, v, s)) continue;  // picked already, or before the last pick
      if (bi < 0 || sel_before(v, s, bv, bi)) {
        bv = v;
        bi = s;
      }
    }
    warp_best(bv, bi);
    if (bi < 0) break;
    pick(n, bv, bi);
    pv = bv;
    pi = bi;
  }
  return n;
}

// segmentSelect: one warp per query row of scores (the group's rows summed); lane 0 writes the
// picks, then their softmax weights, for each head of the group.
__global__ void __launch_bounds__(kGateWarps * 32) segment_select_kernel(int32_t* __restrict__ idx, float* __restrict__ w,
                                                                        const float* __restrict__ sc, long long rows,
                                                                        int H, int Sq, int nseg, int K, int group,
                                                                        int causal, int keep_own, long long segment,
                                                                        long long Sk) {
  const int lane = threadIdx.x & 31;
  const long long row = static_cast<long long>(blockIdx.x) * kGateWarps + (threadIdx.x >> 5);
  if (row >= rows) return;
  const int hg = H / group;
  const long long i = row % Sq, bg = row / Sq, b = bg / hg, h0 = (bg % hg) * group;
  const long long p = i + Sk - Sq, own = p / segment;
  const int last = causal ? static_cast<int>(min(static_cast<long long>(nseg - 1), own)) : nseg - 1;
  const long long plane = static_cast<long long>(Sq) * nseg;
  const float* r0 = sc + ((b * H + h0) * Sq + i) * nseg;
  auto val = [&](int s) {
    float v = r0[s];
    for (int g = 1; g < group; ++g) v += r0[g * plane + s];
    return v;
  };
  const long long o0 = ((b * H + h0) * Sq + i) * K;
  const int n = warp_select(val, last, static_cast<int>(own), keep_own && own <= last, K, [&](int x, float v, int s) {
    if (lane == 0) {
      idx[o0 + x] = s;
      w[o0 + x] = v;
    }
  });
  if (lane != 0) return;
  float mx = -INFINITY;
  for (int x = 0; x < n; ++x) mx = (w[o0 + x] > mx || w[o0 + x] != w[o0 + x]) ? w[o0 + x] : mx;
  float z = 0.f;
  for (int x = 0; x < n; ++x) z += expf(w[o0 + x] - mx);
  for (int x = 0; x < K; ++x) {
    const float wx = x < n ? expf(w[o0 + x] - mx) / z : 0.f;
    const int32_t ix = x < n ? idx[o0 + x] : -1;
    for (int g = 0; g < group; ++g) {
      idx[o0 + g * static_cast<long long>(Sq) * K + x] = ix;
      w[o0 + g * static_cast<long long>(Sq) * K + x] = wx;
    }
  }
}

// segmentTopk, fused: one warp per (b, selection head, query row). The group's query heads are
// summed and scaled into the warp's shared q (sum_g scale q_g . k = scale (sum_g q_g) . k), the
// lanes score the visible segments (causal: up to the row's own; a lane a segment, reading its
// summary row, which the block's other rows of the same head share through the caches) into the
// warp's shared scores, and warp_select picks from them. Shared memory per warp: D + nseg floats
// when `cache`; D floats otherwise (very many segments), and then every selection pass scores
// the segments again. Lane 0 writes the picks to each head of the group, -1 after them.
template <typename T>
__global__ void __launch_bounds__(kGateWarps * 32) segment_topk_kernel(int32_t* __restrict__ idx, const T* __restrict__ q,
                                                                      const float* __restrict__ kbar, long long rows, int H,
                                                                      int Hkv, int Sq, int D, int nseg, int K, int group,
                                                                      int causal, long long segment, long long Sk,
                                                                      float scale, int cache) {
  extern __shared__ float topk_smem[];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const long long row = static_cast<long long>(blockIdx.x) * (blockDim.x >> 5) + warp;
  if (row >= rows) return;
  const int hg = H / group;
  const long long i = row % Sq, bg = row / Sq, b = bg / hg, h0 = (bg % hg) * group;
  const long long p = i + Sk - Sq, own = p / segment;
  const int last = causal ? static_cast<int>(min(static_cast<long long>(nseg - 1), own)) : nseg - 1;
  float* qs = topk_smem + static_cast<long long>(warp) * (D + (cache ? nseg : 0));
  float* ss = qs + D;
  const T* q0 = q + ((b * H + h0) * Sq + i) * D;
  for (int d = lane; d < D; d += 32) {
    float a = 0.f;
    for (int g = 0; g < group; ++g) a += ld(q0[static_cast<long long>(g) * Sq * D + d]);
    qs[d] = a * scale;
  }
  __syncwarp();
  const float* kb = kbar + (b * Hkv + h0 / (H / Hkv)) * static_cast<long long>(nseg) * D;
  auto dot = [&](int s) {
    const float* kr = kb + static_cast<long long>(s) * D;
    float a = 0.f;
    for (int d = 0; d < D; ++d) a += qs[d] * kr[d];
    return a;
  };
  if (cache) {
    for (int s = lane; s <= last; s += 32) ss[s] = dot(s);
    __syncwarp();
  }
  const long long o0 = ((b * H + h0) * Sq + i) * K;
  const long long hstride = static_cast<long long>(Sq) * K;
  const int n = warp_select([&](int s) { return cache ? ss[s] : dot(s); }, last, static_cast<int>(own),
                            causal && own <= last, K, [&](int x, float, int s) {
                              if (lane == 0)
                                for (int g = 0; g < group; ++g) idx[o0 + g * hstride + x] = s;
                            });
  if (lane == 0)
    for (int x = n; x < K; ++x)
      for (int g = 0; g < group; ++g) idx[o0 + g * hstride + x] = -1;
}
// emu:end routing

}  // namespace

int router_gate(const View* indices, const View* weights, const View* positions, const View* counts,
                const View* scores, const View* logits, const View* bias, const View* noise, int32_t score, int32_t k,
                int32_t normalize, double route_scale, int32_t groups, int32_t top_groups, int32_t capacity) {
  DR_CUDA_ENTRY_BEGIN
  const char* name = "routerGate";
  const int64_t T = logits->shape[0], E = logits->shape[1];
  if (groups > kMaxGroups) return set_error("routerGate: at most 64 groups on cuda");
  if (E > INT_MAX / 2) return set_error("routerGate: too many experts");
  int32_t* pc = static_cast<int32_t*>(counts->data);
  if (T == 0) return check(cudaMemsetAsync(pc, 0, static_cast<size_t>(E) * sizeof(int32_t), stream()), name);
  int32_t* pi = static_cast<int32_t*>(indices->data);
  float* pw = static_cast<float*>(weights->data);
  float* ps = static_cast<float*>(scores->data);
  const float* pb = static_cast<const float*>(bias->data);
  const float* pn = static_cast<const float*>(noise->data);
  const unsigned gblocks = static_cast<unsigned>((T + kGateWarps - 1) / kGateWarps);
  const int e = static_cast<int>(E);
  const float rs = static_cast<float>(route_scale);
  switch (dt(*logits)) {
    case DType::F32:
      router_select<float><<<gblocks, kGateWarps * 32, 0, stream()>>>(pi, pw, ps, static_cast<const float*>(logits->data),
                                                                     pb, pn, T, e, score, k, normalize, rs, groups,
                                                                     top_groups);
      break;
    case DType::BF16:
      router_select<bf16_t><<<gblocks, kGateWarps * 32, 0, stream()>>>(pi, pw, ps, static_cast<const bf16_t*>(logits->data),
                                                                      pb, pn, T, e, score, k, normalize, rs, groups,
                                                                      top_groups);
      break;
    default: return dtype_error(name, *logits);
  }
  DR_CUDA_TRY(check_launch(name));
  const int nblocks = static_cast<int>((T + kPosTokens - 1) / kPosTokens);
  void* scratch = nullptr;
  DR_CUDA_TRY(scratch_alloc(&scratch, static_cast<size_t>(k) * nblocks * E * sizeof(int32_t)));
  int32_t* cnt = static_cast<int32_t*>(scratch);
  router_block_counts<<<nblocks, kThreads, 0, stream()>>>(cnt, pi, T, e, k, nblocks);
  int status = check_launch(name);
  if (status == 0) {
    router_scan<<<static_cast<unsigned>((E + kThreads - 1) / kThreads), kThreads, 0, stream()>>>(cnt, pc, e, k, nblocks,
                                                                                                capacity);
    status = check_launch(name);
  }
  if (status == 0) {
    router_positions<<<nblocks, 32, 0, stream()>>>(static_cast<int32_t*>(positions->data), cnt, pi, T, e, k, nblocks,
                                                   capacity);
    status = check_launch(name);
  }
  const int rel = scratch_release(scratch);  // stream order: later users run after these kernels
  return status ? status : rel;
  DR_CUDA_ENTRY_END("routerGate")
}

int router_gate_backward(const View* dlogits, const View* scores, const View* indices, const View* dweights,
                         int32_t score, int32_t normalize, double route_scale) {
  DR_CUDA_ENTRY_BEGIN
  const int64_t T = scores->shape[0], E = scores->shape[1], K = indices->shape[1];
  if (T == 0) return 0;
  if (dt(*scores) != DType::F32) return dtype_error("routerGateBackward", *scores);
  router_gate_bwd<<<static_cast<unsigned>((T + kGateWarps - 1) / kGateWarps), kGateWarps * 32, 0, stream()>>>(
      static_cast<float*>(dlogits->data), static_cast<const float*>(scores->data),
      static_cast<const int32_t*>(indices->data), static_cast<const float*>(dweights->data), T, static_cast<int>(E),
      static_cast<int>(K), score, normalize, static_cast<float>(route_scale));
  return check_launch("routerGateBackward");
  DR_CUDA_ENTRY_END("routerGateBackward")
}

int segment_select(const View* indices, const View* weights, const View* scores, int32_t group, int32_t causal,
                   int32_t keep_own, int64_t segment, int64_t key_length) {
  DR_CUDA_ENTRY_BEGIN
  const int64_t B = scores->shape[0], H = scores->shape[1], Sq = scores->shape[2], nseg = scores->shape[3];
  const int64_t K = indices->shape[3];
  if (dt(*scores) != DType::F32) return dtype_error("segmentSelect", *scores);
  if (Sq > INT_MAX || nseg > INT_MAX || K > INT_MAX) return set_error("segmentSelect: too many rows or segments");
  const long long rows = B * (H / group) * Sq;
  if (rows == 0) return 0;
  segment_select_kernel<<<static_cast<unsigned>((rows + kGateWarps - 1) / kGateWarps), kGateWarps * 32, 0, stream()>>>(
      static_cast<int32_t*>(indices->data), static_cast<float*>(weights->data), static_cast<const float*>(scores->data),
      rows, static_cast<int>(H), static_cast<int>(Sq), static_cast<int>(nseg), static_cast<int>(K), group, causal,
      keep_own, segment, key_length);
  return check_launch("segmentSelect");
  DR_CUDA_ENTRY_END("segmentSelect")
}

int segment_topk(const View* indices, const View* q, const View* summaries, double scale, int32_t group, int32_t causal,
                 int64_t segment, int64_t key_length) {
  DR_CUDA_ENTRY_BEGIN
  const char* name = "segmentTopk";
  const int64_t B = q->shape[0], H = q->shape[1], Sq = q->shape[2], D = q->shape[3];
  const int64_t Hkv = summaries->shape[1], nseg = summaries->shape[2], K = indices->shape[3];
  if (dt(*summaries) != DType::F32) return dtype_error(name, *summaries);
  if (Sq > INT_MAX || nseg > INT_MAX || K > INT_MAX || D > INT_MAX) return set_error("segmentTopk: too many rows or segments");
  const long long rows = B * (H / group) * Sq;
  if (rows == 0) return 0;
  // per warp: the summed query (D floats) and, when they fit, the row's scores (nseg floats);
  // at most 48 KiB of shared memory (no opt-in), fewer warps per block for long rows
  const long long kSmem = 48 * 1024 / sizeof(float);
  const int cache = D + nseg <= kSmem ? 1 : 0;
  const long long per_warp = std::max<long long>(1, D + (cache ? nseg : 0));  // D 0: no division by 0
  if (per_warp > kSmem) return set_error("segmentTopk: head dim too large for shared memory on cuda");
  const int warps = static_cast<int>(std::min<long long>(kGateWarps, kSmem / per_warp));
  const size_t smem = static_cast<size_t>(warps * per_warp) * sizeof(float);
  const unsigned blocks = static_cast<unsigned>((rows + warps - 1) / warps);
  int32_t* pi = static_cast<int32_t*>(indices->data);
  const float* ps = static_cast<const float*>(summaries->data);
  const float sc = static_cast<float>(scale);
  switch (dt(*q)) {
    case DType::F32:
      segment_topk_kernel<float><<<blocks, warps * 32, smem, stream()>>>(pi, static_cast<const float*>(q->data), ps, rows,
          static_cast<int>(H), static_cast<int>(Hkv), static_cast<int>(Sq), static_cast<int>(D), static_cast<int>(nseg),
          static_cast<int>(K), group, causal, segment, key_length, sc, cache);
      break;
    case DType::BF16:
      segment_topk_kernel<bf16_t><<<blocks, warps * 32, smem, stream()>>>(pi, static_cast<const bf16_t*>(q->data), ps, rows,
          static_cast<int>(H), static_cast<int>(Hkv), static_cast<int>(Sq), static_cast<int>(D), static_cast<int>(nseg),
          static_cast<int>(K), group, causal, segment, key_length, sc, cache);
      break;
    default: return dtype_error(name, *q);
  }
  return check_launch(name);
  DR_CUDA_ENTRY_END("segmentTopk")
}

namespace {
__device__ unsigned long long g_loss_bad;  // smallest token with a first choice outside [0, E), ~0 if none
std::mutex g_loss_mutex;
}  // namespace

int router_losses(const View* aux, const View* z, const View* lse, const View* f, const View* logits,
                  const View* first, int32_t score) {
  DR_CUDA_ENTRY_BEGIN
  const char* name = "routerLosses";
  const int64_t T = logits->shape[0], E = logits->shape[1];
  if (dt(*logits) != DType::F32) return dtype_error(name, *logits);
  if (E > INT_MAX - 1) return set_error(std::string(name) + ": too many experts");
  const long long nb = (T + kLossTokens - 1) / kLossTokens;
  const int32_t* pfirst = static_cast<const int32_t*>(first->data);
  return with_bad_slot(
      g_loss_mutex, g_loss_bad, name, pfirst,
      [&](unsigned long long* slot) {
        void* scratch = nullptr;
        const size_t bytes = (static_cast<size_t>(T) + static_cast<size_t>(nb) * (E + 1)) * sizeof(float) +
                             static_cast<size_t>(E) * sizeof(int);
        DR_CUDA_TRY(scratch_alloc(&scratch, bytes));
        float* ssum = static_cast<float*>(scratch);
        float* part = ssum + T;
        int* cnt = reinterpret_cast<int*>(part + nb * (E + 1));
        int status = check(cudaMemsetAsync(cnt, 0, static_cast<size_t>(E) * sizeof(int), stream()), name);
        const float* pl = static_cast<const float*>(logits->data);
        float* plse = static_cast<float*>(lse->data);
        const int e = static_cast<int>(E);
        if (status == 0 && T > 0) {
          router_loss_tokens<<<grid_for(T), kThreads, 0, stream()>>>(plse, ssum, pl, T, e, score);
          status = check_launch(name);
        }
        if (status == 0 && T > 0) {
          router_loss_part<<<grid_for(nb * (E + 1)), kThreads, 0, stream()>>>(part, pl, plse, ssum, T, e, score, nb);
          status = check_launch(name);
        }
        if (status == 0) {
          router_loss_final<<<1, kThreads, 0, stream()>>>(static_cast<float*>(aux->data), static_cast<float*>(z->data),
                                                          static_cast<float*>(f->data), cnt, part, pfirst, T, e, nb,
                                                          slot);
          status = check_launch(name);
        }
        const int rel = scratch_release(scratch);  // stream order: later users run after these kernels
        return status ? status : rel;
      },
      [&](long long t, int32_t v) {
        return "RangeError: routerGate: first choice " + std::to_string(v) + " of token " + std::to_string(t) +
               " is outside [0, " + std::to_string(E) + ")";
      });
  DR_CUDA_ENTRY_END("routerLosses")
}

int router_losses_backward(const View* dlogits, const View* logits, const View* lse, const View* f, const View* daux,
                           const View* dz, int32_t score) {
  DR_CUDA_ENTRY_BEGIN
  const int64_t T = logits->shape[0], E = logits->shape[1];
  if (T == 0) return 0;
  if (dt(*logits) != DType::F32) return dtype_error("routerLossesBackward", *logits);
  router_loss_bwd<<<grid_for(T), kThreads, 0, stream()>>>(
      static_cast<float*>(dlogits->data), static_cast<const float*>(logits->data), static_cast<const float*>(lse->data),
      static_cast<const float*>(f->data), static_cast<const float*>(daux->data), static_cast<const float*>(dz->data), T,
      static_cast<int>(E), score);
  return check_launch("routerLossesBackward");
  DR_CUDA_ENTRY_END("routerLossesBackward")
}

}  // namespace cuda
}  // namespace dualroute
