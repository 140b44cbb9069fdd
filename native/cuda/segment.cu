// Segment attention and segment means on the GPU (float32 / bfloat16; softmax state, lse and
// gradients in float32). Semantics as core/attention.h and native/cpu/attention.cpp: row i of
// head h sees the keys of the segments its row of indices [B, Hq, Sq, K] lists (-1 and repeats
// ignored; others outside [0, nseg) recorded and reported as a RangeError), cut at its position
// when causal.
//
// seg_fwd_warp / seg_bwd_warp: one warp per query row, the head dim strided over the lanes (DPL
// values per lane). The forward walks the row's listed segments key by key with the online
// softmax: a score is one warp sum, and only visible keys are ever touched, so a NaN or an
// infinity in q, k or v reaches exactly the rows that attend to it. The backward rebuilds P from
// the saved lse, keeps dq in registers and adds dk, dv with float atomics. These are the
// correctness-first kernels: K/V are read once per (row, key) from L2, not shared between the
// rows that chose a segment; a segment-major tensor-core kernel (a block per (kv head, segment)
// over the rows that chose it, as the CPU walk is) is the next step. Not yet run on a GPU.
// segment_mean(_backward): one thread per output element, rows summed in order (the CPU's order).
#include <algorithm>
#include <climits>
#include <mutex>
#include <string>

#include "../core/attention.h"
#include "attention.cuh"
#include "device.cuh"

namespace dualroute {
namespace cuda {
namespace {

// emu:begin segment (test/cuda_emu runs the code up to emu:end in a warp emulator)
constexpr int kSegWarps = 4;  // query rows per block

struct SegParams {
  const void* q;
  const void* k;
  const void* v;
  const int32_t* idx;   // [B, Hq, Sq, K]
  const void* out;      // backward: the forward's output
  const void* dout;     // backward
  void* o;              // forward output
  float* lse;           // forward: written (may be null); backward: read
  float *dq, *dk, *dv;  // backward accumulators
  unsigned long long* bad;  // smallest flat position of an index outside [-1, nseg)
  long long rows;           // B * Hq * Sq
  long long kv_stride;      // elements between kv heads of k and v (dk, dv: Sk * D)
  int Hq, Hkv, Sq, Sk, D, K, segment, nseg, causal;
  float scale;
};

// Where a query row sits: row = (b * Hq + h) * Sq + i at position p = i + Sk - Sq; its kv head's
// offset in k and v (kv_stride apart) and in the dense dk, dv ([B, Hkv, Sk, D])
struct SegRow {
  long long i, b, h, p, kvbase, gbase;
};
__device__ inline SegRow seg_row(const SegParams& P, long long row) {
  SegRow r;
  const long long bh = row / P.Sq;
  r.i = row % P.Sq;
  r.b = bh / P.Hq;
  r.h = bh % P.Hq;
  r.p = r.i + P.Sk - P.Sq;
  const long long kvh = r.b * P.Hkv + r.h / (P.Hq / P.Hkv);
  r.kvbase = kvh * P.kv_stride;
  r.gbase = kvh * P.Sk * static_cast<long long>(P.D);
  return r;
}

// Whether entry x of a row is a segment to visit (not -1, not a repeat, in range); records a bad one.
__device__ __forceinline__ bool seg_entry(const SegParams& P, const int32_t* r, long long rowpos, int x, int& s) {
  s = r[x];
  if (s == -1) return false;
  if (s < -1 || s >= P.nseg) {
    record_bad(P.bad, rowpos * P.K + x);
    return false;
  }
  for (int y = 0; y < x; ++y)
    if (r[y] == s) return false;
  return true;
}

// Keys [lo, hi) of segment s for a query at position p.
__device__ __forceinline__ void seg_keys(const SegParams& P, int s, long long p, int& lo, int& hi) {
  lo = s * P.segment;
  hi = min(P.Sk, lo + P.segment);
  if (P.causal && p + 1 < hi) hi = static_cast<int>(max(p + 1, static_cast<long long>(lo)));
}

// one key of a row's online softmax: online_key (device.cuh)

template <typename T, int DPL>
__global__ void __launch_bounds__(kSegWarps * 32) seg_fwd_warp(SegParams P) {
  const int lane = threadIdx.x & 31;
  const long long row = static_cast<long long>(blockIdx.x) * kSegWarps + (threadIdx.x >> 5);
  if (row >= P.rows) return;
  const int D = P.D;
  const SegRow R = seg_row(P, row);
  const long long i = R.i, b = R.b, p = R.p, kvbase = R.kvbase;
  const T* qp = static_cast<const T*>(P.q) + row * D;
  const T* kh = static_cast<const T*>(P.k) + kvbase;
  const T* vh = static_cast<const T*>(P.v) + kvbase;
  const int32_t* r = P.idx + row * P.K;
  float q[DPL], acc[DPL];
#pragma unroll
  for (int c = 0; c < DPL; ++c) {
    const int d = lane + 32 * c;
    q[c] = d < D ? ld(qp[d]) * P.scale : 0.f;
    acc[c] = 0.f;
  }
  float m = -INFINITY, l = 0.f;
  bool seen = false;
  for (int x = 0; x < P.K; ++x) {
    int s, lo, hi;
    if (!seg_entry(P, r, row, x, s)) continue;
    seg_keys(P, s, p, lo, hi);
    for (int j = lo; j < hi; ++j) {
      seen = true;
      online_key<T, DPL>(q, kh + static_cast<long long>(j) * D, vh + static_cast<long long>(j) * D, D, lane, m, l, acc);
    }
  }
  // no visible key: 0 and -inf; every visible score -inf (l = 0) or NaN: NaN, as attention does
  const float inv = !seen ? 0.f : l > 0.f ? 1.f / l : NAN;
  T* op = static_cast<T*>(P.o) + row * D;
#pragma unroll
  for (int c = 0; c < DPL; ++c) {
    const int d = lane + 32 * c;
    if (d < D) op[d] = st<T>(seen ? acc[c] * inv : 0.f);
  }
  if (P.lse && lane == 0) P.lse[row] = !seen ? -INFINITY : l > 0.f ? m + logf(l) : NAN;
}

template <typename T, int DPL>
__global__ void __launch_bounds__(kSegWarps * 32) seg_bwd_warp(SegParams P) {
  const int lane = threadIdx.x & 31;
  const long long row = static_cast<long long>(blockIdx.x) * kSegWarps + (threadIdx.x >> 5);
  if (row >= P.rows) return;
  const float lse = P.lse[row];
  if (lse == -INFINITY) return;  // the row saw no key
  const int D = P.D;
  const SegRow R = seg_row(P, row);
  const long long i = R.i, b = R.b, p = R.p, kvbase = R.kvbase;
  const long long gbase = R.gbase;  // dk, dv
  const T* qp = static_cast<const T*>(P.q) + row * D;
  const T* op = static_cast<const T*>(P.out) + row * D;
  const T* dop = static_cast<const T*>(P.dout) + row * D;
  const T* kh = static_cast<const T*>(P.k) + kvbase;
  const T* vh = static_cast<const T*>(P.v) + kvbase;
  const int32_t* r = P.idx + row * P.K;
  float q[DPL], dO[DPL], dq[DPL], dr = 0.f;
#pragma unroll
  for (int c = 0; c < DPL; ++c) {
    const int d = lane + 32 * c;
    q[c] = d < D ? ld(qp[d]) : 0.f;
    dO[c] = d < D ? ld(dop[d]) : 0.f;
    dr += d < D ? dO[c] * ld(op[d]) : 0.f;
    dq[c] = 0.f;
  }
  dr = warp_sum(dr);
  for (int x = 0; x < P.K; ++x) {
    int s, lo, hi;
    if (!seg_entry(P, r, row, x, s)) continue;
    seg_keys(P, s, p, lo, hi);
    for (int j = lo; j < hi; ++j) {
      const T* kr = kh + static_cast<long long>(j) * D;
      const T* vr = vh + static_cast<long long>(j) * D;
      float sdot = 0.f, pdot = 0.f;
#pragma unroll
      for (int c = 0; c < DPL; ++c) {
        const int d = lane + 32 * c;
        if (d < D) {
          sdot += q[c] * ld(kr[d]);
          pdot += dO[c] * ld(vr[d]);
        }
      }
      const float pj = expf(warp_sum(sdot) * P.scale - lse);
      const float ds = pj * (warp_sum(pdot) - dr) * P.scale;
      float* dkr = P.dk + gbase + static_cast<long long>(j) * D;
      float* dvr = P.dv + gbase + static_cast<long long>(j) * D;
#pragma unroll
      for (int c = 0; c < DPL; ++c) {
        const int d = lane + 32 * c;
        if (d < D) {
          atomicAdd(&dvr[d], pj * dO[c]);
          atomicAdd(&dkr[d], ds * q[c]);
          dq[c] += ds * ld(kr[d]);
        }
      }
    }
  }
  float* dqp = P.dq + row * D;
#pragma unroll
  for (int c = 0; c < DPL; ++c) {
    const int d = lane + 32 * c;
    if (d < D) dqp[d] += dq[c];  // this warp owns the row
  }
}

// x [outer, S, D] -> out [outer, nseg, D]: element (o, s, d) sums rows s*seg .. in order.
template <typename T>
__global__ void seg_mean_kernel(T* __restrict__ out, const T* __restrict__ x, long long outer, int S, int D,
                                int segment, int nseg) {
  const long long total = outer * nseg * static_cast<long long>(D);
  for (long long e = gtid(); e < total; e += gstride()) {
    const int d = static_cast<int>(e % D);
    const long long os = e / D;
    const int s = static_cast<int>(os % nseg);
    const long long o = os / nseg;
    const int j0 = s * segment, j1 = min(S, j0 + segment);
    float acc = 0.f;
    for (int j = j0; j < j1; ++j) acc += ld(x[(o * S + j) * D + d]);
    out[e] = st<T>(acc * (1.f / static_cast<float>(j1 - j0)));
  }
}

// dout [outer, nseg, D] -> dx [outer, S, D]: dx[j] = dout[seg(j)] / count(seg(j)).
template <typename T>
__global__ void seg_mean_bwd_kernel(T* __restrict__ dx, const T* __restrict__ dout, long long outer, int S, int D,
                                    int segment, int nseg) {
  const long long total = outer * S * static_cast<long long>(D);
  for (long long e = gtid(); e < total; e += gstride()) {
    const int d = static_cast<int>(e % D);
    const long long oj = e / D;
    const int j = static_cast<int>(oj % S);
    const long long o = oj / S;
    const int s = j / segment, j0 = s * segment, j1 = min(S, j0 + segment);
    dx[e] = st<T>(ld(dout[(o * nseg + s) * D + d]) * (1.f / static_cast<float>(j1 - j0)));
  }
}
// ---- dual attention with a segment-routed global path ----------------------------------
// dual_seg_fwd_warp / dual_seg_bwd_warp: one warp per query row, as seg_fwd_warp / seg_bwd_warp,
// running both paths of the row: the local window (key_range of attention.cuh, mask and window
// as the dual kernels take them) and the listed segments, mixed by the row's gates,
//   out = g_l * out_l + g_g * out_g   (out_l, out_g, lse_l, lse_g written for the backward)
// The backward folds each path's gate into dout (dP' = g dP, Dr' = g rowdot(dout, out_path)),
// so one key step serves both paths; dk, dv by float atomics, dq in registers.
// dual_gate_grad_warp: a warp per gate row, dgates = (sum dout * out_l, sum dout * out_g) summed
// over the heads in order for shared gates (no atomics: deterministic).
struct DualSegParams {
  SegParams P;            // q, k, v, idx, dout, dq/dk/dv, bad, shape; P.o: the mixed output
  void* out_l;            // forward: written; backward: read (out_local)
  void* out_g;
  float* lse_l;           // forward: written; backward: read
  float* lse_g;
  const void* gates;      // [B, Sq, 2] or [B, Hq, Sq, 2], dtype of q
  float* dgates;          // gate_grad: the gates' shape, float32
  long long window;
  int mask, gates_per_head;
};


template <typename T, int DPL>
__global__ void __launch_bounds__(kSegWarps * 32) dual_seg_fwd_warp(DualSegParams DP) {
  const SegParams& P = DP.P;
  const int lane = threadIdx.x & 31;
  const long long row = static_cast<long long>(blockIdx.x) * kSegWarps + (threadIdx.x >> 5);
  if (row >= P.rows) return;
  const int D = P.D;
  const SegRow R = seg_row(P, row);
  const long long i = R.i, b = R.b, p = R.p, kvbase = R.kvbase;
  const T* qp = static_cast<const T*>(P.q) + row * D;
  const T* kh = static_cast<const T*>(P.k) + kvbase;
  const T* vh = static_cast<const T*>(P.v) + kvbase;
  const int32_t* r = P.idx + row * P.K;
  float q[DPL], al[DPL], ag[DPL];
#pragma unroll
  for (int c = 0; c < DPL; ++c) {
    const int d = lane + 32 * c;
    q[c] = d < D ? ld(qp[d]) * P.scale : 0.f;
    al[c] = ag[c] = 0.f;
  }
  float ml = -INFINITY, ll = 0.f, mg = -INFINITY, lg = 0.f;
  int lo, hi;
  key_range(DP.mask, P.causal, DP.window, p, P.Sk, lo, hi);
  const bool seen_l = lo <= hi;
  for (int j = lo; j <= hi; ++j)
    online_key<T, DPL>(q, kh + static_cast<long long>(j) * D, vh + static_cast<long long>(j) * D, D, lane, ml, ll, al);
  bool seen_g = false;
  for (int x = 0; x < P.K; ++x) {
    int s, slo, shi;
    if (!seg_entry(P, r, row, x, s)) continue;
    seg_keys(P, s, p, slo, shi);
    for (int j = slo; j < shi; ++j) {
      seen_g = true;
      online_key<T, DPL>(q, kh + static_cast<long long>(j) * D, vh + static_cast<long long>(j) * D, D, lane, mg, lg,
                           ag);
    }
  }
  const T* gp = static_cast<const T*>(DP.gates) + (DP.gates_per_head ? row : b * P.Sq + i) * 2;
  const float g0 = ld(gp[0]), g1 = ld(gp[1]);
  const float il = !seen_l ? 0.f : ll > 0.f ? 1.f / ll : NAN, ig = !seen_g ? 0.f : lg > 0.f ? 1.f / lg : NAN;
  T* op = static_cast<T*>(P.o) + row * D;
  T* olp = static_cast<T*>(DP.out_l) + row * D;
  T* ogp = static_cast<T*>(DP.out_g) + row * D;
#pragma unroll
  for (int c = 0; c < DPL; ++c) {
    const int d = lane + 32 * c;
    if (d < D) {
      const float xl = seen_l ? al[c] * il : 0.f, xg = seen_g ? ag[c] * ig : 0.f;
      olp[d] = st<T>(xl);
      ogp[d] = st<T>(xg);
      op[d] = st<T>(g0 * xl + g1 * xg);
    }
  }
  if (lane == 0) {
    DP.lse_l[row] = !seen_l ? -INFINITY : ll > 0.f ? ml + logf(ll) : NAN;
    DP.lse_g[row] = !seen_g ? -INFINITY : lg > 0.f ? mg + logf(lg) : NAN;
  }
}

// One key of a row's backward for one path, gate folded into dO and dr: P from the saved lse,
// dS = scale P (dP - dr); dv, dk by atomics, dq in registers.
template <typename T, int DPL>
__device__ __forceinline__ void dseg_bwd_key(const SegParams& P, const float (&q)[DPL], const float (&dO)[DPL],
                                             float (&dq)[DPL], const T* kr, const T* vr, float* dkr, float* dvr,
                                             float lse, float dr, int lane) {
  const int D = P.D;
  float sdot = 0.f, pdot = 0.f;
#pragma unroll
  for (int c = 0; c < DPL; ++c) {
    const int d = lane + 32 * c;
    if (d < D) {
      sdot += q[c] * ld(kr[d]);
      pdot += dO[c] * ld(vr[d]);
    }
  }
  const float pj = expf(warp_sum(sdot) * P.scale - lse);
  const float ds = pj * (warp_sum(pdot) - dr) * P.scale;
#pragma unroll
  for (int c = 0; c < DPL; ++c) {
    const int d = lane + 32 * c;
    if (d < D) {
      atomicAdd(&dvr[d], pj * dO[c]);
      atomicAdd(&dkr[d], ds * q[c]);
      dq[c] += ds * ld(kr[d]);
    }
  }
}

template <typename T, int DPL>
__global__ void __launch_bounds__(kSegWarps * 32) dual_seg_bwd_warp(DualSegParams DP) {
  const SegParams& P = DP.P;
  const int lane = threadIdx.x & 31;
  const long long row = static_cast<long long>(blockIdx.x) * kSegWarps + (threadIdx.x >> 5);
  if (row >= P.rows) return;
  const int D = P.D;
  const SegRow R = seg_row(P, row);
  const long long i = R.i, b = R.b, p = R.p, kvbase = R.kvbase;
  const long long gbase = R.gbase;  // dk, dv
  const T* qp = static_cast<const T*>(P.q) + row * D;
  const T* olp = static_cast<const T*>(DP.out_l) + row * D;
  const T* ogp = static_cast<const T*>(DP.out_g) + row * D;
  const T* dop = static_cast<const T*>(P.dout) + row * D;
  const T* kh = static_cast<const T*>(P.k) + kvbase;
  const T* vh = static_cast<const T*>(P.v) + kvbase;
  const int32_t* r = P.idx + row * P.K;
  const T* gp = static_cast<const T*>(DP.gates) + (DP.gates_per_head ? row : b * P.Sq + i) * 2;
  const float g0 = ld(gp[0]), g1 = ld(gp[1]);
  const float lse_l = DP.lse_l[row], lse_g = DP.lse_g[row];
  float q[DPL], dl[DPL], dg[DPL], dq[DPL], drl = 0.f, drg = 0.f;
#pragma unroll
  for (int c = 0; c < DPL; ++c) {
    const int d = lane + 32 * c;
    const float x = d < D ? ld(dop[d]) : 0.f;
    q[c] = d < D ? ld(qp[d]) : 0.f;
    dl[c] = g0 * x;
    dg[c] = g1 * x;
    drl += d < D ? dl[c] * ld(olp[d]) : 0.f;
    drg += d < D ? dg[c] * ld(ogp[d]) : 0.f;
    dq[c] = 0.f;
  }
  drl = warp_sum(drl);
  drg = warp_sum(drg);
  if (lse_l != -INFINITY) {  // a path that saw no key adds nothing
    int lo, hi;
    key_range(DP.mask, P.causal, DP.window, p, P.Sk, lo, hi);
    for (int j = lo; j <= hi; ++j) {
      const long long jo = static_cast<long long>(j) * D;
      dseg_bwd_key<T, DPL>(P, q, dl, dq, kh + jo, vh + jo, P.dk + gbase + jo, P.dv + gbase + jo, lse_l, drl, lane);
    }
  }
  if (lse_g != -INFINITY) {
    for (int x = 0; x < P.K; ++x) {
      int s, lo, hi;
      if (!seg_entry(P, r, row, x, s)) continue;
      seg_keys(P, s, p, lo, hi);
      for (int j = lo; j < hi; ++j) {
        const long long jo = static_cast<long long>(j) * D;
        dseg_bwd_key<T, DPL>(P, q, dg, dq, kh + jo, vh + jo, P.dk + gbase + jo, P.dv + gbase + jo, lse_g, drg, lane);
      }
    }
  }
  float* dqp = P.dq + row * D;
#pragma unroll
  for (int c = 0; c < DPL; ++c) {
    const int d = lane + 32 * c;
    if (d < D) dqp[d] += dq[c];  // this warp owns the row
  }
}

template <typename T, int DPL>
__global__ void __launch_bounds__(kSegWarps * 32) dual_gate_grad_warp(DualSegParams DP) {
  const SegParams& P = DP.P;
  const int lane = threadIdx.x & 31;
  const long long grow = static_cast<long long>(blockIdx.x) * kSegWarps + (threadIdx.x >> 5);
  const long long ngrow = DP.gates_per_head ? P.rows : P.rows / P.Hq;
  if (grow >= ngrow) return;
  const int D = P.D, heads = DP.gates_per_head ? 1 : P.Hq;
  // per head, gate row = (bh, i); shared, (b, i) over the rows (b * Hq + h, i)
  const long long i = grow % P.Sq, bh0 = DP.gates_per_head ? grow / P.Sq : (grow / P.Sq) * P.Hq;
  float sl = 0.f, sg = 0.f;
  for (int h = 0; h < heads; ++h) {
    const long long e = ((bh0 + h) * P.Sq + i) * D;
    const T* dop = static_cast<const T*>(P.dout) + e;
    const T* olp = static_cast<const T*>(DP.out_l) + e;
    const T* ogp = static_cast<const T*>(DP.out_g) + e;
#pragma unroll
    for (int c = 0; c < DPL; ++c) {
      const int d = lane + 32 * c;
      if (d < D) {
        const float x = ld(dop[d]);
        sl += x * ld(olp[d]);
        sg += x * ld(ogp[d]);
      }
    }
  }
  sl = warp_sum(sl);
  sg = warp_sum(sg);
  if (lane == 0) {
    DP.dgates[grow * 2] = sl;
    DP.dgates[grow * 2 + 1] = sg;
  }
}
// emu:end segment

__device__ unsigned long long g_seg_bad;  // smallest flat position of a bad index, ~0 if none
std::mutex g_seg_mutex;

int seg_params(const char* name, const AttnArgs& a, const void* indices, int32_t topk, int64_t segment, SegParams& P) {
  if (a.D > 256) return set_error(std::string(name) + ": head dims above 256 are not supported on CUDA");
  if (a.Sk > INT_MAX || a.Sq > INT_MAX || segment > INT_MAX) return set_error(std::string(name) + ": too many keys");
  P.q = a.q;
  P.k = a.k;
  P.v = a.v;
  P.idx = static_cast<const int32_t*>(indices);
  P.rows = a.B * a.Hq * a.Sq;
  P.kv_stride = a.kv_head_stride ? a.kv_head_stride : a.Sk * a.D;
  P.Hq = static_cast<int>(a.Hq);
  P.Hkv = static_cast<int>(a.Hkv);
  P.Sq = static_cast<int>(a.Sq);
  P.Sk = static_cast<int>(a.Sk);
  P.D = static_cast<int>(a.D);
  P.K = topk;
  P.segment = static_cast<int>(segment);
  P.nseg = static_cast<int>((a.Sk + segment - 1) / segment);
  P.causal = a.causal ? 1 : 0;
  P.scale = static_cast<float>(a.scale);
  return 0;
}

// Runs launch(params with the bad-index slot) and reports a recorded index as a RangeError.
template <typename Launch>
int with_seg_check(const char* name, const SegParams& P, Launch&& launch) {
  return with_bad_slot(
      g_seg_mutex, g_seg_bad, name, P.idx,
      [&](unsigned long long* slot) {
        SegParams Q = P;
        Q.bad = slot;
        return launch(Q);
      },
      [&](long long pos, int32_t v) {
        const long long K = P.K, S = P.Sq, H = P.Hq;
        return "RangeError: segmentAttention: indices[" + std::to_string(pos / K / S / H) + ", " +
               std::to_string(pos / K / S % H) + ", " + std::to_string(pos / K % S) + ", " + std::to_string(pos % K) +
               "] = " + std::to_string(v) + " is outside [-1, " + std::to_string(P.nseg) + ")";
      });
}

// Runs launch(std::integral_constant<int, N>) for the smallest N in {1, 2, 4, 8} >= dpl (values per
// lane of a head row), then checks the launch; a wider head is an error.
template <typename F>
int by_dpl(int dpl, const char* name, F&& launch) {
  if (dpl <= 1) launch(std::integral_constant<int, 1>{});
  else if (dpl <= 2) launch(std::integral_constant<int, 2>{});
  else if (dpl <= 4) launch(std::integral_constant<int, 4>{});
  else if (dpl <= 8) launch(std::integral_constant<int, 8>{});
  else return set_error(std::string(name) + ": head dim too large");
  return check_launch(name);
}

template <typename T, bool BWD>
int launch_seg_t(const SegParams& P, const char* name) {
  const long long blocks = (P.rows + kSegWarps - 1) / kSegWarps;
  if (blocks > INT_MAX) return set_error(std::string(name) + ": too many rows");
  const unsigned g = static_cast<unsigned>(blocks);
  return by_dpl((P.D + 31) / 32, name, [&](auto dpl) {
    constexpr int N = decltype(dpl)::value;
    if (BWD)
      seg_bwd_warp<T, N><<<g, kSegWarps * 32, 0, stream()>>>(P);
    else
      seg_fwd_warp<T, N><<<g, kSegWarps * 32, 0, stream()>>>(P);
  });
}

template <bool BWD>
int launch_seg(const SegParams& P, int32_t dtype, const char* name) {
  switch (static_cast<DType>(dtype)) {
    case DType::F32: return launch_seg_t<float, BWD>(P, name);
    case DType::BF16: return launch_seg_t<bf16_t, BWD>(P, name);
    default: return set_error(std::string(name) + ": expected float32 or bfloat16");
  }
}

// The dual kernels over one DPL: 0 forward, 1 backward, 2 gate gradient.
template <typename T, int KIND>
int launch_dual_seg_t(const DualSegParams& DP, const char* name) {
  const long long n = KIND == 2 && !DP.gates_per_head ? DP.P.rows / DP.P.Hq : DP.P.rows;
  const long long blocks = (n + kSegWarps - 1) / kSegWarps;
  if (blocks > INT_MAX) return set_error(std::string(name) + ": too many rows");
  const unsigned g = static_cast<unsigned>(blocks);
  return by_dpl((DP.P.D + 31) / 32, name, [&](auto dpl) {
    constexpr int N = decltype(dpl)::value;
    if (KIND == 0)
      dual_seg_fwd_warp<T, N><<<g, kSegWarps * 32, 0, stream()>>>(DP);
    else if (KIND == 1)
      dual_seg_bwd_warp<T, N><<<g, kSegWarps * 32, 0, stream()>>>(DP);
    else
      dual_gate_grad_warp<T, N><<<g, kSegWarps * 32, 0, stream()>>>(DP);
  });
}

template <int KIND>
int launch_dual_seg(const DualSegParams& DP, int32_t dtype, const char* name) {
  switch (static_cast<DType>(dtype)) {
    case DType::F32: return launch_dual_seg_t<float, KIND>(DP, name);
    case DType::BF16: return launch_dual_seg_t<bf16_t, KIND>(DP, name);
    default: return set_error(std::string(name) + ": expected float32 or bfloat16");
  }
}

// The dual kernels' parameters: the segment ones plus the local path and the gates.
int dual_seg_params(const char* name, const DualArgs& d, const void* indices, int32_t topk, int64_t segment,
                    DualSegParams& DP) {
  const AttnArgs& a = d.a;
  if (a.query_index || a.key_padding || d.global_rows)
    return set_error(std::string(name) + ": query_index, key_padding and global_rows are not supported here");
  DR_CUDA_TRY(seg_params(name, a, indices, topk, segment, DP.P));
  DP.gates = d.gates;
  DP.gates_per_head = d.gates_per_head ? 1 : 0;
  DP.mask = a.mask;
  DP.window = std::min<long long>(a.window, 1LL << 40);
  return 0;
}

}  // namespace

int segment_attention_forward(const AttnArgs* a, const void* indices, int32_t topk, int64_t segment, void* out,
                              void* lse) {
  DR_CUDA_ENTRY_BEGIN
  const char* name = "segment_attention_forward";
  SegParams P{};
  DR_CUDA_TRY(seg_params(name, *a, indices, topk, segment, P));
  if (P.rows == 0 || a->D == 0) return 0;
  P.o = out;
  P.lse = static_cast<float*>(lse);
  return with_seg_check(name, P, [&](const SegParams& Q) { return launch_seg<false>(Q, a->dtype, name); });
  DR_CUDA_ENTRY_END("segment_attention_forward")
}

int segment_attention_backward(const AttnArgs* a, const void* indices, int32_t topk, int64_t segment, const void* out,
                               const void* dout, const void* lse, void* dq, void* dk, void* dv) {
  DR_CUDA_ENTRY_BEGIN
  const char* name = "segment_attention_backward";
  SegParams P{};
  DR_CUDA_TRY(seg_params(name, *a, indices, topk, segment, P));
  if (P.rows == 0 || a->D == 0 || a->Sk == 0) return 0;
  P.out = out;
  P.dout = dout;
  P.lse = const_cast<float*>(static_cast<const float*>(lse));
  P.dq = static_cast<float*>(dq);
  P.dk = static_cast<float*>(dk);
  P.dv = static_cast<float*>(dv);
  return with_seg_check(name, P, [&](const SegParams& Q) { return launch_seg<true>(Q, a->dtype, name); });
  DR_CUDA_ENTRY_END("segment_attention_backward")
}

int dual_segment_attention_forward(const DualArgs* d, const void* indices, int32_t topk, int64_t segment, void* out,
                                   void* out_local, void* out_global, void* lse_local, void* lse_global) {
  DR_CUDA_ENTRY_BEGIN
  const char* name = "dual_segment_attention_forward";
  DualSegParams DP{};
  DR_CUDA_TRY(dual_seg_params(name, *d, indices, topk, segment, DP));
  if (DP.P.rows == 0 || d->a.D == 0) return 0;
  DP.P.o = out;
  DP.out_l = out_local;
  DP.out_g = out_global;
  DP.lse_l = static_cast<float*>(lse_local);
  DP.lse_g = static_cast<float*>(lse_global);
  return with_seg_check(name, DP.P, [&](const SegParams& Q) {
    DualSegParams X = DP;
    X.P = Q;
    return launch_dual_seg<0>(X, d->a.dtype, name);
  });
  DR_CUDA_ENTRY_END("dual_segment_attention_forward")
}

int dual_segment_attention_backward(const DualArgs* d, const void* indices, int32_t topk, int64_t segment,
                                    const void* out_local, const void* out_global, const void* dout,
                                    const void* lse_local, const void* lse_global, void* dq, void* dk, void* dv,
                                    void* dgates) {
  DR_CUDA_ENTRY_BEGIN
  const char* name = "dual_segment_attention_backward";
  DualSegParams DP{};
  DR_CUDA_TRY(dual_seg_params(name, *d, indices, topk, segment, DP));
  if (DP.P.rows == 0) return 0;
  DP.P.dout = dout;
  DP.P.dq = static_cast<float*>(dq);
  DP.P.dk = static_cast<float*>(dk);
  DP.P.dv = static_cast<float*>(dv);
  DP.out_l = const_cast<void*>(out_local);
  DP.out_g = const_cast<void*>(out_global);
  DP.lse_l = const_cast<float*>(static_cast<const float*>(lse_local));
  DP.lse_g = const_cast<float*>(static_cast<const float*>(lse_global));
  DP.dgates = static_cast<float*>(dgates);
  DR_CUDA_TRY(launch_dual_seg<2>(DP, d->a.dtype, name));  // dgates (D = 0: zeros)
  if (d->a.D == 0 || d->a.Sk == 0) return 0;
  return with_seg_check(name, DP.P, [&](const SegParams& Q) {
    DualSegParams X = DP;
    X.P = Q;
    return launch_dual_seg<1>(X, d->a.dtype, name);
  });
  DR_CUDA_ENTRY_END("dual_segment_attention_backward")
}

namespace {
template <bool BWD>
int seg_mean_launch(const View* out, const View* in, int64_t segment, const char* name) {
  // forward: in = x [outer, S, D], out [outer, nseg, D]; backward: in = dout, out = dx [outer, S, D]
  const View& big = BWD ? *out : *in;
  const int64_t outer = big.shape[0], S = big.shape[1], D = big.shape[2];
  if (S > INT_MAX || D > INT_MAX || segment > INT_MAX) return set_error(std::string(name) + ": too large");
  const int nseg = static_cast<int>((S + segment - 1) / segment);
  const int64_t total = outer * (BWD ? S : nseg) * D;
  if (total == 0) return 0;
  switch (dt(*in)) {
    case DType::F32:
      if (BWD)
        seg_mean_bwd_kernel<float><<<grid_for(total), kThreads, 0, stream()>>>(
            static_cast<float*>(out->data), static_cast<const float*>(in->data), outer, static_cast<int>(S),
            static_cast<int>(D), static_cast<int>(segment), nseg);
      else
        seg_mean_kernel<float><<<grid_for(total), kThreads, 0, stream()>>>(
            static_cast<float*>(out->data), static_cast<const float*>(in->data), outer, static_cast<int>(S),
            static_cast<int>(D), static_cast<int>(segment), nseg);
      break;
    case DType::BF16:
      if (BWD)
        seg_mean_bwd_kernel<bf16_t><<<grid_for(total), kThreads, 0, stream()>>>(
            static_cast<bf16_t*>(out->data), static_cast<const bf16_t*>(in->data), outer, static_cast<int>(S),
            static_cast<int>(D), static_cast<int>(segment), nseg);
      else
        seg_mean_kernel<bf16_t><<<grid_for(total), kThreads, 0, stream()>>>(
            static_cast<bf16_t*>(out->data), static_cast<const bf16_t*>(in->data), outer, static_cast<int>(S),
            static_cast<int>(D), static_cast<int>(segment), nseg);
      break;
    default: return dtype_error(name, *in);
  }
  return check_launch(name);
}
}  // namespace

int segment_mean(const View* out, const View* x, int64_t segment) {
  DR_CUDA_ENTRY_BEGIN
  return seg_mean_launch<false>(out, x, segment, "segmentMean");
  DR_CUDA_ENTRY_END("segmentMean")
}

int segment_mean_backward(const View* dx, const View* dout, int64_t segment) {
  DR_CUDA_ENTRY_BEGIN
  return seg_mean_launch<true>(dx, dout, segment, "segmentMeanBackward");
  DR_CUDA_ENTRY_END("segmentMeanBackward")
}

}  // namespace cuda
}  // namespace dualroute
