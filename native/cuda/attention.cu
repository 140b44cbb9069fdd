// Fused attention on the GPU: forward, backward, dual (local + global) forward, and RoPE.
// The contract (shapes, masks, positions, lse) is native/core/attention.h; in short:
//   q [B,Hq,Sq,D]  k,v [B,Hkv,Sk,D]  out [B,Hq,n,D]  lse [B,Hq,n] float32
//   row r reads query i = query_index[b,r] (or r), at position p = i + Sk - Sq; kv head h/(Hq/Hkv).
// Every mask (Global, Sliding, Block; causal or not) leaves a query an interval [lo, hi] of
// keys, so a row is described by two ints, the padding bytes are the only per-key test, and
// a query tile reads only the key tiles between its smallest lo and largest hi.
//
// Kernels:
//  1. attn_fwd_mma<D, DUAL> (bf16, D in {32, 64, 128}, sm_80+): FlashAttention-2 forward. One
//     block of 4 warps per (b, h, 64-query tile); each warp owns 16 query rows. Key tiles of 64
//     are staged in shared memory by cp.async (V's copy overlaps S = Q K^T). S and O live in
//     mma.m16n8k16 accumulator fragments; the online softmax works in the log2 domain (scores
//     premultiplied by scale*log2(e), exp2f) and P is re-packed from the S fragments into bf16
//     A-fragments for O += P V without a trip through shared memory. DUAL keeps two (m, l, O)
//     accumulators fed from the same S and V fragments: one pass over K/V for both paths.
//     Non-finite inputs follow the materialised softmax(q k^T) v: row maxima propagate NaN, and
//     a masked key tile (one that some row seeing keys does not see whole) whose values hold a
//     NaN or an infinity sends the block to the exact per-row path (fwd_row), since P = 0 times
//     such a value in the product would reach rows that cannot see it.
//  2. attn_fwd_warp<T, DPL, DUAL> (float32, other head dims up to 512): one warp per output
//     row, D spread over lanes (DPL values each), keys streamed from L2 one at a time. Simple
//     and exact; the float32 path is not the one that has to be fast.
//  2b. attn_fwd_split<T, DPL> + attn_split_merge<T> (forward only, any dtype / head dim):
//     flash-decoding for few query rows (n <= 16) over a long visible span (>= 1024 keys) when
//     the kernels above would launch fewer than 2 blocks per SM: each row's key interval is cut
//     into chunks, one block each, writing float partials (m, l, acc[D]) to scratch memory that
//     a second kernel merges into out and lse.
//  3. attn_bwd_warp<T, DPL>: the generic backward (float32; bf16 at head dims other than 32, 64,
//     128, which take the tensor-core backward of attention_bwd.cu). One block per (b, kv head,
//     tile of KT keys) runs bwd_key_run (attention_generic.cuh): K, V, dK, dV of its keys in
//     float shared memory; its warps walk the query rows (of every query head of the group)
//     that can see the tile, recompute P = exp(s - lse), add dV, dK in shared memory and dQ in
//     registers, flushed to global memory with atomicAdd once per row and tile.
//  4. rope_kernel<T>: rotate-half RoPE in double, like the CPU kernel.
#include <algorithm>
#include <climits>
#include <cmath>
#include <mutex>
#include <string>

#include "../core/attention.h"
#include "attention.cuh"
#include "device.cuh"
#include "attention_generic.cuh"
#include "mma.cuh"

namespace dualroute {
namespace cuda {

// backend.cu: temporary device memory from the caching allocator (flash-decoding partials).
// Release may follow the launches that use the block at once (all work is on one stream).
int scratch_alloc(void** ptr, size_t bytes);
int scratch_release(void* ptr);

namespace {

// emu:begin fwd (test/cuda_emu runs the code up to emu:end in a warp emulator)
// First bad query_index position (b * n + r), ~0 if none. One slot, guarded by the mutex from
// reset to read-back, as in index.cu.
__device__ unsigned long long g_attn_bad;
std::mutex g_attn_mutex;

struct FwdParams {
  const void* q;
  const void* k;
  const void* v;
  void* out;   // forward: out; dual: out_local
  float* lse;  // forward: lse (may be null); dual: lse_local
  // dual only
  void* out_mix;
  void* out_g;
  float* lse_g;
  const void* gates;
  int gates_per_head;
  const uint8_t* global_rows;
  // shapes and mask
  int Hq, Hkv, G, Sq, Sk, n, D;
  int causal, mask;
  long long window;
  float scale2;  // scale * log2(e)
  const uint8_t* pad;
  const int32_t* qidx;
  const int32_t* qcount;  // [B] or null: rows r >= qcount[b] are ragged padding (no query)
  int tiles;  // query tiles per (b, h) (mma kernel) or rows per block groups (warp kernel)
};

// Row r of (b, h): the query it reads, or -1 (past n, ragged padding, or a bad index, which is
// recorded; padding is never read).
__device__ __forceinline__ int query_of(const FwdParams& P, int b, int r, bool record) {
  if (r >= P.n || (P.qcount && r >= P.qcount[b])) return -1;
  if (!P.qidx) return r;
  const long long pos = static_cast<long long>(b) * P.n + r;
  const int qi = P.qidx[pos];
  if (qi < 0 || qi >= P.Sq) {
    if (record) record_bad(&g_attn_bad, pos);
    return -1;
  }
  return qi;
}

// Online softmax step for one key of score s (log2 domain) and value row vals. The running max
// propagates NaN; while it is -inf, 0 is the reference point, so that exp2 gives 0, not NaN.
// A +inf score gives NaN (2^(inf - inf)), as the materialised softmax does.
template <int DPL>
__device__ __forceinline__ void online_step(float& m, float& l, float (&o)[DPL], float s, const float (&vals)[DPL]) {
  const float mn = nan_max(m, s);
  const float mu = mn == -INFINITY ? 0.f : mn;
  const float alpha = exp2f(m - mu), p = exp2f(s - mu);
  l = l * alpha + p;
#pragma unroll
  for (int k = 0; k < DPL; ++k) o[k] = o[k] * alpha + p * vals[k];
  m = mn;
}

// Query row qi of (b, h) = bh, pre-scaled by scale * log2(e), D spread over the lanes.
template <typename T, int DPL>
__device__ __forceinline__ void load_query(const FwdParams& P, int bh, int qi, int lane, float (&q)[DPL]) {
  const T* qp = static_cast<const T*>(P.q) + (static_cast<long long>(bh) * P.Sq + qi) * P.D;
#pragma unroll
  for (int k = 0; k < DPL; ++k) {
    const int d = lane + 32 * k;
    q[k] = d < P.D ? ld(qp[d]) * P.scale2 : 0.f;
  }
}

// One output row r of (b, h) = bh by one warp (D spread over lanes, DPL values each; keys
// streamed one at a time): the generic forward (attn_fwd_warp), and the exact path of the
// tensor-core kernel for tiles it cannot take (values that are not finite). Every (row, key)
// pair outside the mask is skipped, so nothing a row cannot see reaches it. record: report a
// bad query_index (one lane, once per row).
template <typename T, int DPL, bool DUAL>
__device__ __forceinline__ void fwd_row(const FwdParams& P, int bh, int r, int lane, bool record) {
  const int b = bh / P.Hq, h = bh % P.Hq, hk = h / P.G;
  const int D = P.D;
  const int qi = query_of(P, b, r, record);

  float q[DPL], o[DPL], og[DPL];
  int lo = 0, hi = -1, glo = 0, ghi = -1;
  if (qi >= 0) {
    load_query<T, DPL>(P, bh, qi, lane, q);
    const long long p = static_cast<long long>(qi) + P.Sk - P.Sq;
    key_range(P.mask, P.causal, P.window, p, P.Sk, lo, hi);
    if (DUAL && (!P.global_rows || P.global_rows[static_cast<long long>(b) * P.Sq + qi]))
      key_range(static_cast<int>(AttnMask::Global), P.causal, 1, p, P.Sk, glo, ghi);
  }
#pragma unroll
  for (int k = 0; k < DPL; ++k) {
    o[k] = 0.f;
    if (DUAL) og[k] = 0.f;
  }
  float m = -INFINITY, l = 0.f, mg = -INFINITY, lg = 0.f;
  int a = lo, z = hi;
  if (DUAL && glo <= ghi) {
    a = lo <= hi ? min(lo, glo) : glo;
    z = lo <= hi ? max(hi, ghi) : ghi;
  }
  const T* Kp = static_cast<const T*>(P.k) + (static_cast<long long>(b) * P.Hkv + hk) * P.Sk * D;
  const T* Vp = static_cast<const T*>(P.v) + (static_cast<long long>(b) * P.Hkv + hk) * P.Sk * D;
  const uint8_t* pad = P.pad ? P.pad + static_cast<long long>(b) * P.Sk : nullptr;
  for (int j = a; j <= z; ++j) {
    if (pad && pad[j]) continue;
    const T* kr = Kp + static_cast<long long>(j) * D;
    const T* vr = Vp + static_cast<long long>(j) * D;
    float dot = 0.f, vals[DPL];
#pragma unroll
    for (int k = 0; k < DPL; ++k) {
      const int d = lane + 32 * k;
      dot += d < D ? q[k] * ld(kr[d]) : 0.f;
      vals[k] = d < D ? ld(vr[d]) : 0.f;
    }
    const float s = warp_sum(dot);
    if (j >= lo && j <= hi) online_step<DPL>(m, l, o, s, vals);
    if (DUAL && j >= glo && j <= ghi) online_step<DPL>(mg, lg, og, s, vals);
  }

  // l and lg are the same in every lane, so the has-key tests are uniform across the warp
  const bool has = l > 0.f || warp_has_key(pad, lo, hi, lane);
  const bool has_g = DUAL && (lg > 0.f || warp_has_key(pad, glo, ghi, lane));
  const long long orow = static_cast<long long>(bh) * P.n + r;
  const float inv = row_inv(has, l);
  const float invg = row_inv(has_g, lg);
  float g0 = 0.f, g1 = 0.f;
  if (DUAL) {
    const T* gp = static_cast<const T*>(P.gates) + 2 * (P.gates_per_head ? orow : static_cast<long long>(b) * P.Sq + r);
    g0 = ld(gp[0]);
    g1 = ld(gp[1]);
  }
  T* out = static_cast<T*>(P.out) + orow * D;
#pragma unroll
  for (int k = 0; k < DPL; ++k) {
    const int d = lane + 32 * k;
    if (d >= D) continue;
    const float a0 = has ? o[k] * inv : 0.f;
    out[d] = st<T>(a0);
    if (DUAL) {
      const float b0 = has_g ? og[k] * invg : 0.f;
      static_cast<T*>(P.out_g)[orow * D + d] = st<T>(b0);
      static_cast<T*>(P.out_mix)[orow * D + d] = st<T>(g0 * a0 + g1 * b0);
    }
  }
  if (lane == 0) {
    if (P.lse) P.lse[orow] = row_lse(has, m, l);
    if (DUAL && P.lse_g) P.lse_g[orow] = row_lse(has_g, mg, lg);
  }
}

// ---------------------------------------------------------------------------------------------
// 1. bf16 tensor-core forward
// ---------------------------------------------------------------------------------------------
constexpr int kBM = 64, kBN = 64, kMmaThreads = 128;

template <int D>
constexpr int mma_smem_bytes() {
  return 3 * kBM * (D + 8) * 2 + 5 * kBM * 4 + kBN;
}

#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 800
__device__ __forceinline__ uint32_t pack_bf16(float lo, float hi) {
  __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);  // .x = lo (lower address / lower k)
  return *reinterpret_cast<uint32_t*>(&v);
}
#endif

// Fragment layout (m16n8): thread (g = lane/4, t = lane%4) holds c0 c1 at (row g, cols 2t, 2t+1)
// and c2 c3 at row g+8; "half" hf = 0/1 below is row g / g+8.
template <int D, bool DUAL>
__global__ void __launch_bounds__(kMmaThreads) attn_fwd_mma(FwdParams P) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  constexpr int PITCH = D + 8;  // 16-byte row padding: the 8 rows of an ldmatrix hit distinct banks
  constexpr int CH = D / 8;     // 16-byte chunks per row
  constexpr int NF = kBN / 8;   // S fragments per warp (16 x 64)
  constexpr int OF = D / 8;     // O fragments per warp (16 x D)
  // Q fragments stay in registers except for the dual D = 128 variant, whose two O
  // accumulators already take 128 registers; there they are re-read from shared memory.
  constexpr bool QREG = !DUAL || D <= 64;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  bf16_t* sQ = reinterpret_cast<bf16_t*>(smem_raw);
  bf16_t* sK = sQ + kBM * PITCH;
  bf16_t* sV = sK + kBN * PITCH;
  int* sLo = reinterpret_cast<int*>(sV + kBN * PITCH);
  int* sHi = sLo + kBM;
  int* sGlo = sHi + kBM;
  int* sGhi = sGlo + kBM;
  int* sQi = sGhi + kBM;
  unsigned char* sOk = reinterpret_cast<unsigned char*>(sQi + kBM);
  // block-wide min lo, max hi: local (or only) path, global path; then the core (max lo, min
  // hi over the rows that see some key) of each path: a key tile inside both cores and free of
  // padding is seen by every such row
  __shared__ int tl[8];

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int g = lane >> 2, t = lane & 3;
  const int tile = blockIdx.x % P.tiles;
  const int bh = blockIdx.x / P.tiles;
  const int b = bh / P.Hq, h = bh % P.Hq, hk = h / P.G;
  const int r0 = tile * kBM;

  if (tid < 8) tl[tid] = (tid & 1) ? -1 : INT_MAX;
  if (tid >= 4 && tid < 8) tl[tid] = (tid & 1) ? INT_MAX : -1;
  __syncthreads();
  if (tid < kBM) {
    const int qi = query_of(P, b, r0 + tid, true);
    int lo = 0, hi = -1, glo = 0, ghi = -1;
    if (qi >= 0) {
      const long long p = static_cast<long long>(qi) + P.Sk - P.Sq;
      key_range(P.mask, P.causal, P.window, p, P.Sk, lo, hi);
      if (DUAL && (!P.global_rows || P.global_rows[static_cast<long long>(b) * P.Sq + qi]))
        key_range(static_cast<int>(AttnMask::Global), P.causal, 1, p, P.Sk, glo, ghi);
    }
    sQi[tid] = qi;
    sLo[tid] = lo;
    sHi[tid] = hi;
    sGlo[tid] = glo;
    sGhi[tid] = ghi;
    if (lo <= hi) {
      atomicMin(&tl[0], lo);
      atomicMax(&tl[1], hi);
      atomicMax(&tl[4], lo);
      atomicMin(&tl[5], hi);
    }
    if (DUAL && glo <= ghi) {
      atomicMin(&tl[2], glo);
      atomicMax(&tl[3], ghi);
      atomicMax(&tl[6], glo);
      atomicMin(&tl[7], ghi);
    }
  }
  __syncthreads();

  const bf16_t* Q = static_cast<const bf16_t*>(P.q) + static_cast<long long>(bh) * P.Sq * D;
  const bf16_t* K = static_cast<const bf16_t*>(P.k) + (static_cast<long long>(b) * P.Hkv + hk) * P.Sk * D;
  const bf16_t* V = static_cast<const bf16_t*>(P.v) + (static_cast<long long>(b) * P.Hkv + hk) * P.Sk * D;
  const uint32_t aQ = smem_addr(sQ), aK = smem_addr(sK), aV = smem_addr(sV);

  for (int c = tid; c < kBM * CH; c += kMmaThreads) {
    const int row = c / CH, col = (c % CH) * 8;
    const int qi = sQi[row];
    const bf16_t* src = qi >= 0 ? Q + static_cast<long long>(qi) * D + col : Q;
    cp_async16(aQ + (row * PITCH + col) * 2, src, qi >= 0);
  }
  cp_async_commit();

  // Per-lane ldmatrix offsets (bytes). Q [row][d] is the row-major A operand; K [key][d] is
  // B stored n x k (plain ldmatrix); V [key][d] is B stored k x n (ldmatrix.trans).
  const int mat = lane >> 3, r8 = lane & 7;
  const uint32_t q_off = ((warp * 16 + (lane & 15)) * PITCH + (lane >> 4) * 8) * 2;
  const uint32_t k_off = ((r8 + (mat >> 1) * 8) * PITCH + (mat & 1) * 8) * 2;
  const uint32_t v_off = ((r8 + (mat & 1) * 8) * PITCH + (mat >> 1) * 8) * 2;

  // Row key intervals: in registers, or (dual D = 128, short of registers) read from shared
  // memory at each use.
  constexpr bool RREG = QREG;
  int lo_r[2], hi_r[2], glo_r[2], ghi_r[2];
#pragma unroll
  for (int hf = 0; hf < 2; ++hf) {
    const int row = warp * 16 + g + hf * 8;
    lo_r[hf] = sLo[row];
    hi_r[hf] = sHi[row];
    glo_r[hf] = sGlo[row];
    ghi_r[hf] = sGhi[row];
  }
  const int my_row = warp * 16 + g;
  auto vis_l = [&](int hf, int j) {
    return RREG ? (j >= lo_r[hf] && j <= hi_r[hf]) : (j >= sLo[my_row + 8 * hf] && j <= sHi[my_row + 8 * hf]);
  };
  auto vis_g = [&](int hf, int j) {
    return RREG ? (j >= glo_r[hf] && j <= ghi_r[hf]) : (j >= sGlo[my_row + 8 * hf] && j <= sGhi[my_row + 8 * hf]);
  };
  const int llo = tl[0], lhi = tl[1], bglo = tl[2], bghi = tl[3];
  const int clo = tl[4], chi = tl[5], cglo = tl[6], cghi = tl[7];
  bool bail = false;  // a masked tile holds values that are not finite: the exact path below
  int klo = llo, khi = lhi;
  if (DUAL) {
    klo = min(klo, bglo);
    khi = max(khi, bghi);
  }
  const int t0 = klo <= khi ? klo / kBN : 0;
  const int t1 = klo <= khi ? khi / kBN : -1;

  float o[OF][4], og[DUAL ? OF : 1][4];
  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.f, 0.f};
  float mg[2] = {-INFINITY, -INFINITY}, lg[2] = {0.f, 0.f};
#pragma unroll
  for (int i = 0; i < OF; ++i)
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      o[i][e] = 0.f;
      if (DUAL) og[i][e] = 0.f;
    }

  cp_async_wait<0>();
  __syncthreads();
  uint32_t qf[QREG ? D / 16 : 1][4];
  if (QREG) {
#pragma unroll
    for (int ks = 0; ks < D / 16; ++ks) ldmatrix_x4(qf[ks], aQ + q_off + ks * 32);
  }

  for (int kt = t0; kt <= t1; ++kt) {
    const int j0 = kt * kBN;
#pragma unroll 1
    for (int pass = 0; pass < 2; ++pass) {
      const bf16_t* src0 = pass ? V : K;
      const uint32_t dst0 = pass ? aV : aK;
      for (int c = tid; c < kBN * CH; c += kMmaThreads) {
        const int row = c / CH, col = (c % CH) * 8;
        const int j = j0 + row;
        const bool ok = j < P.Sk;
        cp_async16(dst0 + (row * PITCH + col) * 2, ok ? src0 + static_cast<long long>(j) * D + col : src0, ok);
      }
      cp_async_commit();
    }
    bool key_ok = true;
    if (tid < kBN) {
      const int j = j0 + tid;
      key_ok = j < P.Sk && !(P.pad && P.pad[static_cast<long long>(b) * P.Sk + j]);
      sOk[tid] = key_ok;
    }
    const bool do_l = !DUAL || (llo <= lhi && j0 <= lhi && j0 + kBN - 1 >= llo);
    const bool do_g = DUAL && bglo <= bghi && j0 <= bghi && j0 + kBN - 1 >= bglo;
    cp_async_wait<1>();  // K landed (V may still be in flight)
    // masked: some row that sees keys does not see every key of this tile on a path it takes
    const bool masked = __syncthreads_or(!key_ok) || (do_l && !(clo <= j0 && j0 + kBN - 1 <= chi)) ||
                        (do_g && !(cglo <= j0 && j0 + kBN - 1 <= cghi));

    float s[NF][4];
#pragma unroll
    for (int i = 0; i < NF; ++i)
#pragma unroll
      for (int e = 0; e < 4; ++e) s[i][e] = 0.f;
#pragma unroll
    for (int ks = 0; ks < D / 16; ++ks) {
      uint32_t a[4];
      if (QREG) {
#pragma unroll
        for (int e = 0; e < 4; ++e) a[e] = qf[QREG ? ks : 0][e];
      } else {
        ldmatrix_x4(a, aQ + q_off + ks * 32);
      }
#pragma unroll
      for (int nj = 0; nj < kBN / 16; ++nj) {
        uint32_t kb[4];
        ldmatrix_x4(kb, aK + k_off + (nj * 16 * PITCH + ks * 16) * 2);
        mma_bf16(s[2 * nj], a, kb[0], kb[1]);
        mma_bf16(s[2 * nj + 1], a, kb[2], kb[3]);
      }
    }

    // Scores to the log2 domain; row maxima over the visible keys of each path.
    float mx[2] = {-INFINITY, -INFINITY}, mxg[2] = {-INFINITY, -INFINITY};
#pragma unroll
    for (int i = 0; i < NF; ++i)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int hf = e >> 1, jj = i * 8 + 2 * t + (e & 1), j = j0 + jj;
        s[i][e] *= P.scale2;
        const bool ok = sOk[jj];
        if (ok && vis_l(hf, j)) mx[hf] = nan_max(mx[hf], s[i][e]);
        if (DUAL && ok && vis_g(hf, j)) mxg[hf] = nan_max(mxg[hf], s[i][e]);
      }
    float mu[2], mug[2];
#pragma unroll
    for (int hf = 0; hf < 2; ++hf) {
      mx[hf] = nan_max(mx[hf], __shfl_xor_sync(0xffffffffu, mx[hf], 1));
      mx[hf] = nan_max(mx[hf], __shfl_xor_sync(0xffffffffu, mx[hf], 2));
      const float mn = nan_max(m[hf], mx[hf]);
      mu[hf] = mn == -INFINITY ? 0.f : mn;  // no visible key yet: any finite reference works
      const float alpha = exp2f(m[hf] - mu[hf]);
      m[hf] = mn;
      l[hf] *= alpha;
#pragma unroll
      for (int i = 0; i < OF; ++i) {
        o[i][2 * hf] *= alpha;
        o[i][2 * hf + 1] *= alpha;
      }
      if (DUAL) {
        mxg[hf] = nan_max(mxg[hf], __shfl_xor_sync(0xffffffffu, mxg[hf], 1));
        mxg[hf] = nan_max(mxg[hf], __shfl_xor_sync(0xffffffffu, mxg[hf], 2));
        const float mgn = nan_max(mg[hf], mxg[hf]);
        mug[hf] = mgn == -INFINITY ? 0.f : mgn;
        const float ag = exp2f(mg[hf] - mug[hf]);
        mg[hf] = mgn;
        lg[hf] *= ag;
#pragma unroll
        for (int i = 0; i < OF; ++i) {
          og[i][2 * hf] *= ag;
          og[i][2 * hf + 1] *= ag;
        }
      }
    }

    cp_async_wait<0>();
    __syncthreads();
    if (masked) {
      // P is 0 where a row cannot see a key, but 0 * NaN (or inf) in the product would still
      // reach it: a masked tile whose values are not all finite sends the block to the exact path.
      bool nonfinite = false;
      for (int c = tid; c < kBN * CH; c += kMmaThreads) {
        const int row = c / CH, col = (c % CH) * 8;
        if (j0 + row >= P.Sk) continue;
        const uint16_t* x = reinterpret_cast<const uint16_t*>(sV + row * PITCH + col);
#pragma unroll
        for (int e = 0; e < 8; ++e) nonfinite = nonfinite || (x[e] & 0x7f80u) == 0x7f80u;
      }
      if (__syncthreads_or(nonfinite)) {
        bail = true;
        break;
      }
    }

    // O += P V, 16 keys per step. The S fragments of keys 16kk..16kk+15 (n-fragments 2kk and
    // 2kk+1) are exactly the A fragment of P for that k-step once packed to bf16.
#pragma unroll
    for (int kk = 0; kk < kBN / 16; ++kk) {
      uint32_t pa[4], pg[4];
#pragma unroll
      for (int x = 0; x < 4; ++x) {  // a0: (g, k 2t) a1: (g+8, 2t) a2: (g, 8+2t) a3: (g+8, 8+2t)
        const int i = 2 * kk + (x >> 1), hf = x & 1;
        float pv[2], pgv[2];
#pragma unroll
        for (int c = 0; c < 2; ++c) {
          const int jj = i * 8 + 2 * t + c, j = j0 + jj;
          const float sv = s[i][2 * hf + c];
          const bool ok = sOk[jj];
          pv[c] = (ok && vis_l(hf, j)) ? exp2f(sv - mu[hf]) : 0.f;
          l[hf] += pv[c];
          if (DUAL) {
            pgv[c] = (ok && vis_g(hf, j)) ? exp2f(sv - mug[hf]) : 0.f;
            lg[hf] += pgv[c];
          }
        }
        pa[x] = pack_bf16(pv[0], pv[1]);
        if (DUAL) pg[x] = pack_bf16(pgv[0], pgv[1]);
      }
#pragma unroll
      for (int nd = 0; nd < D / 16; ++nd) {
        uint32_t vb[4];
        ldmatrix_x4_trans(vb, aV + v_off + (kk * 16 * PITCH + nd * 16) * 2);
        if (do_l) {
          mma_bf16(o[2 * nd], pa, vb[0], vb[1]);
          mma_bf16(o[2 * nd + 1], pa, vb[2], vb[3]);
        }
        if (DUAL && do_g) {
          mma_bf16(og[DUAL ? 2 * nd : 0], pg, vb[0], vb[1]);
          mma_bf16(og[DUAL ? 2 * nd + 1 : 0], pg, vb[2], vb[3]);
        }
      }
    }
    __syncthreads();  // sK, sV, sOk are refilled next iteration
  }

  if (bail) {
    // the exact path: each warp recomputes its 16 rows one at a time, skipping every (row, key)
    // pair outside the mask
    for (int x = 0; x < 16; ++x) {
      const int r = r0 + warp * 16 + x;
      if (r < P.n) fwd_row<bf16_t, D / 32, DUAL>(P, bh, r, lane, false);
    }
    return;
  }

  // Epilogue: finish the row sums across the 4 lanes of a row, normalise, store. A row whose
  // sum is 0 either sees no key (out 0, lse -inf) or sees only -inf scores (NaN): has_key tells.
  const uint8_t* padb = P.pad ? P.pad + static_cast<long long>(b) * P.Sk : nullptr;
#pragma unroll
  for (int hf = 0; hf < 2; ++hf) {
    l[hf] += __shfl_xor_sync(0xffffffffu, l[hf], 1);
    l[hf] += __shfl_xor_sync(0xffffffffu, l[hf], 2);
    if (DUAL) {
      lg[hf] += __shfl_xor_sync(0xffffffffu, lg[hf], 1);
      lg[hf] += __shfl_xor_sync(0xffffffffu, lg[hf], 2);
    }
    const int r = r0 + warp * 16 + g + hf * 8;
    if (r >= P.n) continue;
    const long long orow = (static_cast<long long>(bh) * P.n + r);
    const int row = my_row + 8 * hf;
    const bool has = l[hf] > 0.f || has_key(padb, RREG ? lo_r[hf] : sLo[row], RREG ? hi_r[hf] : sHi[row]);
    const bool has_g =
        DUAL && (lg[hf] > 0.f || has_key(padb, RREG ? glo_r[hf] : sGlo[row], RREG ? ghi_r[hf] : sGhi[row]));
    const float inv = row_inv(has, l[hf]);
    const float invg = row_inv(has_g, lg[hf]);
    float g0 = 0.f, g1 = 0.f;
    if (DUAL) {
      const bf16_t* gp = static_cast<const bf16_t*>(P.gates) +
                         2 * (P.gates_per_head ? orow : static_cast<long long>(b) * P.Sq + r);
      g0 = __bfloat162float(gp[0]);
      g1 = __bfloat162float(gp[1]);
    }
    bf16_t* out = static_cast<bf16_t*>(P.out) + orow * D;
#pragma unroll
    for (int i = 0; i < OF; ++i) {
      const int d = i * 8 + 2 * t;
      const float a0 = has ? o[i][2 * hf] * inv : 0.f, a1 = has ? o[i][2 * hf + 1] * inv : 0.f;
      *reinterpret_cast<__nv_bfloat162*>(out + d) = __floats2bfloat162_rn(a0, a1);
      if (DUAL) {
        const float b0 = has_g ? og[i][2 * hf] * invg : 0.f, b1 = has_g ? og[i][2 * hf + 1] * invg : 0.f;
        *reinterpret_cast<__nv_bfloat162*>(static_cast<bf16_t*>(P.out_g) + orow * D + d) =
            __floats2bfloat162_rn(b0, b1);
        *reinterpret_cast<__nv_bfloat162*>(static_cast<bf16_t*>(P.out_mix) + orow * D + d) =
            __floats2bfloat162_rn(g0 * a0 + g1 * b0, g0 * a1 + g1 * b1);
      }
    }
    if (t == 0) {
      if (P.lse) P.lse[orow] = row_lse(has, m[hf], l[hf]);
      if (DUAL && P.lse_g) P.lse_g[orow] = row_lse(has_g, mg[hf], lg[hf]);
    }
  }
#endif
}
// emu:end fwd
// emu:begin simt (attn_fwd_warp, attn_fwd_split, attn_split_merge, attn_bwd_warp, rope_kernel)

// ---------------------------------------------------------------------------------------------
// 2. Generic forward: one warp per output row
// ---------------------------------------------------------------------------------------------
constexpr int kWarpRows = 4;  // rows (warps) per block

template <typename T, int DPL, bool DUAL>
__global__ void __launch_bounds__(kWarpRows * 32) attn_fwd_warp(FwdParams P) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int bh = blockIdx.x / P.tiles;
  const int r = (blockIdx.x % P.tiles) * kWarpRows + warp;
  if (r >= P.n) return;
  fwd_row<T, DPL, DUAL>(P, bh, r, lane, lane == 0);
}

// ---------------------------------------------------------------------------------------------
// 2b. Flash-decoding forward (few query rows, long key span)
// ---------------------------------------------------------------------------------------------
// With n <= 16 rows per (b, h) the kernels above launch too few blocks to fill the GPU when
// the visible span is long. attn_fwd_split cuts each row's visible interval [lo, hi] into S
// equal chunks, one block of kSplitWarps warps per (b, h, row, chunk); warp w takes the chunk's
// keys w, w + kSplitWarps, ... with its own online softmax, the warps are combined in shared
// memory and the block writes one float partial: m (log2 domain), l = sum 2^(s - m), and
// acc[D] = sum 2^(s - m) v (unnormalised). An empty chunk writes m = -inf, l = 0, acc = 0.
// attn_split_merge (one warp per row) combines a row's S partials:
//   M = max m_s, L = sum l_s 2^(m_s - M), out = sum acc_s 2^(m_s - M) / L, lse = (M + log2 L) ln 2
// and a row with L = 0 gets out = 0 and lse = -inf when it sees no unpadded key, NaN when its
// visible scores are all -inf (maxima propagate NaN throughout, as in the other kernels).
// Scratch layout for R = B * Hq * n rows: [R * S][2] (m, l) followed by [R * S][D] (acc).
constexpr int kSplitWarps = 8;

template <typename T, int DPL>
__global__ void __launch_bounds__(kSplitWarps * 32) attn_fwd_split(FwdParams P, float* part, int S) {
  __shared__ float sm_m[kSplitWarps], sm_l[kSplitWarps];
  __shared__ float sm_o[kSplitWarps][DPL * 32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int s = static_cast<int>(blockIdx.x % static_cast<unsigned>(S));
  const long long row = blockIdx.x / static_cast<unsigned>(S);  // bh * n + r
  const int r = static_cast<int>(row % P.n);
  const int bh = static_cast<int>(row / P.n);
  const int b = bh / P.Hq, h = bh % P.Hq, hk = h / P.G;
  const int D = P.D;
  const int qi = query_of(P, b, r, s == 0 && threadIdx.x == 0);

  float q[DPL], o[DPL];
  int lo = 0, hi = -1;
  if (qi >= 0) {
    load_query<T, DPL>(P, bh, qi, lane, q);
    key_range(P.mask, P.causal, P.window, static_cast<long long>(qi) + P.Sk - P.Sq, P.Sk, lo, hi);
  }
#pragma unroll
  for (int k = 0; k < DPL; ++k) o[k] = 0.f;
  // This block's chunk [a, z] of [lo, hi].
  int a = 0, z = -1;
  if (lo <= hi) {
    const long long len = static_cast<long long>(hi) - lo + 1;
    const long long chunk = (len + S - 1) / S;
    const long long a0 = lo + s * chunk;
    if (a0 <= hi) {
      a = static_cast<int>(a0);
      z = static_cast<int>(min(static_cast<long long>(hi), a0 + chunk - 1));
    }
  }

  float m = -INFINITY, l = 0.f;
  const T* Kp = static_cast<const T*>(P.k) + (static_cast<long long>(b) * P.Hkv + hk) * P.Sk * D;
  const T* Vp = static_cast<const T*>(P.v) + (static_cast<long long>(b) * P.Hkv + hk) * P.Sk * D;
  const uint8_t* pad = P.pad ? P.pad + static_cast<long long>(b) * P.Sk : nullptr;
  // Two keys per iteration: both keys' loads are in flight before the first reduction.
  for (int j = a + warp; j <= z; j += 2 * kSplitWarps) {
    const int j2 = j + kSplitWarps;
    const bool ok1 = !(pad && pad[j]);
    const bool ok2 = j2 <= z && !(pad && pad[j2]);
    const T* k1 = Kp + static_cast<long long>(j) * D;
    const T* v1 = Vp + static_cast<long long>(j) * D;
    const T* k2 = Kp + static_cast<long long>(ok2 ? j2 : j) * D;
    const T* v2 = Vp + static_cast<long long>(ok2 ? j2 : j) * D;
    float d1 = 0.f, d2 = 0.f, x1[DPL], x2[DPL];
#pragma unroll
    for (int k = 0; k < DPL; ++k) {
      const int d = lane + 32 * k;
      d1 += d < D ? q[k] * ld(k1[d]) : 0.f;
      d2 += d < D ? q[k] * ld(k2[d]) : 0.f;
      x1[k] = d < D ? ld(v1[d]) : 0.f;
      x2[k] = d < D ? ld(v2[d]) : 0.f;
    }
    const float s1 = warp_sum(d1), s2 = warp_sum(d2);
    if (ok1) online_step<DPL>(m, l, o, s1, x1);
    if (ok2) online_step<DPL>(m, l, o, s2, x2);
  }

  if (lane == 0) {
    sm_m[warp] = m;
    sm_l[warp] = l;
  }
#pragma unroll
  for (int k = 0; k < DPL; ++k) sm_o[warp][lane + 32 * k] = o[k];
  __syncthreads();
  float M = -INFINITY;
#pragma unroll
  for (int w = 0; w < kSplitWarps; ++w) M = nan_max(M, sm_m[w]);
  const long long idx = static_cast<long long>(blockIdx.x);  // row * S + s
  float* acc = part + 2LL * gridDim.x + idx * D;
  for (int d = threadIdx.x; d < D; d += blockDim.x) {
    float x = 0.f;
#pragma unroll
    for (int w = 0; w < kSplitWarps; ++w)
      if (sm_m[w] != -INFINITY) x += sm_o[w][d] * exp2f(sm_m[w] - M);
    acc[d] = x;
  }
  if (threadIdx.x == 0) {
    float L = 0.f;
#pragma unroll
    for (int w = 0; w < kSplitWarps; ++w)
      if (sm_m[w] != -INFINITY) L += sm_l[w] * exp2f(sm_m[w] - M);
    part[2 * idx] = M;
    part[2 * idx + 1] = L;
  }
}

template <typename T>
__global__ void __launch_bounds__(kWarpRows * 32) attn_split_merge(FwdParams P, const float* part, int S,
                                                                   long long rows) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const long long row = static_cast<long long>(blockIdx.x) * kWarpRows + warp;
  if (row >= rows) return;
  const int D = P.D;
  const float* ml = part + 2 * row * S;
  const float* acc = part + 2 * rows * S + row * S * D;
  float M = -INFINITY;
  for (int s = lane; s < S; s += 32) M = nan_max(M, ml[2 * s]);
  M = warp_nan_max(M);
  float L = 0.f;
  for (int s = lane; s < S; s += 32) {
    const float ms = ml[2 * s];
    if (ms != -INFINITY) L += ml[2 * s + 1] * exp2f(ms - M);
  }
  L = warp_sum(L);
  // L = 0: the row sees no unpadded key (out 0, lse -inf), or only -inf scores (NaN)
  bool has = L > 0.f;
  if (!has) {
    const int bh = static_cast<int>(row / P.n), r = static_cast<int>(row % P.n), b = bh / P.Hq;
    const int qi = query_of(P, b, r, false);
    int lo = 0, hi = -1;
    if (qi >= 0) key_range(P.mask, P.causal, P.window, static_cast<long long>(qi) + P.Sk - P.Sq, P.Sk, lo, hi);
    has = warp_has_key(P.pad ? P.pad + static_cast<long long>(b) * P.Sk : nullptr, lo, hi, lane);
  }
  const float inv = row_inv(has, L);
  T* out = static_cast<T*>(P.out) + row * D;
  for (int d = lane; d < D; d += 32) {
    float x = 0.f;
    for (int s = 0; s < S; ++s) {
      const float ms = ml[2 * s];
      if (ms != -INFINITY) x += acc[static_cast<long long>(s) * D + d] * exp2f(ms - M);
    }
    out[d] = st<T>(has ? x * inv : 0.f);
  }
  if (lane == 0 && P.lse) P.lse[row] = row_lse(has, M, L);
}

// ---------------------------------------------------------------------------------------------
// 3. Backward
// ---------------------------------------------------------------------------------------------
constexpr int kBwdThreads = 256;

template <typename T, int DPL>
__global__ void __launch_bounds__(kBwdThreads) attn_bwd_warp(BwdParams P) {
  extern __shared__ __align__(16) float bsm[];
  const int bk = blockIdx.x / P.tiles;  // b * Hkv + kv head
  const int j0 = (blockIdx.x % P.tiles) * P.KT;
  bwd_key_run<T, DPL>(P, bk, j0, min(P.KT, P.Sk - j0), 0, bsm);
}

// ---------------------------------------------------------------------------------------------
// 4. RoPE
// ---------------------------------------------------------------------------------------------
template <typename T>
__global__ void rope_kernel(T* __restrict__ out, const T* x, const int32_t* __restrict__ pos, int64_t rows,
                            int64_t H, int64_t S, int64_t D, int pos_2d, double base, int inverse) {
  const int64_t half = D / 2;
  const int64_t total = rows * half;
  for (int64_t e = gtid(); e < total; e += gstride()) {
    const int64_t row = e / half, i = e % half;
    const int64_t s = row % S;
    const int64_t b = row / S / H;
    const double p = static_cast<double>(pos[pos_2d ? b * S + s : s]);
    double theta = p * pow(base, -2.0 * static_cast<double>(i) / static_cast<double>(D));
    if (inverse) theta = -theta;
    double sn, cs;
    sincos(theta, &sn, &cs);
    const int64_t o0 = row * D + i, o1 = o0 + half;
    const double x0 = ld(x[o0]), x1 = ld(x[o1]);
    out[o0] = st<T>(static_cast<float>(x0 * cs - x1 * sn));
    out[o1] = st<T>(static_cast<float>(x1 * cs + x0 * sn));
  }
}
// emu:end simt

// The composed dual backward's douts: dl = g_local * dout and dg = g_global * dout per row
// (gates [B, Sq, 2], or [B, Hq, Sq, 2] when per_head), rounded to T as the forward's outputs are.
template <typename T>
__global__ void dual_gate_dout(T* __restrict__ dl, T* __restrict__ dg, const T* __restrict__ dout,
                               const T* __restrict__ gates, int per_head, int Hq, int Sq, int D, long long total) {
  for (long long e = gtid(); e < total; e += gstride()) {
    const long long row = e / D;  // (b * Hq + h) * Sq + r
    const long long gi = per_head ? row : (row / (static_cast<long long>(Hq) * Sq)) * Sq + row % Sq;
    const float d = ld(dout[e]);
    dl[e] = st<T>(d * ld(gates[2 * gi]));
    dg[e] = st<T>(d * ld(gates[2 * gi + 1]));
  }
}

// ---------------------------------------------------------------------------------------------
// Host side
// ---------------------------------------------------------------------------------------------
int cc_major() {
  static int major = -1;
  if (major < 0) {
    int dev = 0, v = 0;
    if (cudaGetDevice(&dev) == cudaSuccess && cudaDeviceGetAttribute(&v, cudaDevAttrComputeCapabilityMajor, dev) == cudaSuccess)
      major = v;
    else
      major = 0;
  }
  return major;
}

int dtype_check(const char* name, int32_t dtype) {
  const DType t = static_cast<DType>(dtype);
  if (t == DType::F64) return set_error(std::string(name) + ": float64 is CPU-only; move the tensors to the cpu");
  if (t != DType::F32 && t != DType::BF16)
    return set_error(std::string(name) + ": dtype " + dtype_name(t) + " is not supported");
  return 0;
}

// Shape and mask checks shared by the three attention entries; fills the common fields.
template <typename Params>
int common_params(const char* name, const AttnArgs& a, Params& P) {
  DR_CUDA_TRY(dtype_check(name, a.dtype));
  if (a.B < 0 || a.Hq < 0 || a.Hkv <= 0 || a.Sq < 0 || a.Sk < 0 || a.D < 0 || a.n < 0 || a.Hq % a.Hkv != 0)
    return set_error(std::string(name) + ": bad shape (Hq must be a multiple of Hkv)");
  if (a.Sq > INT_MAX / 2 || a.Sk > INT_MAX / 2 || a.n > INT_MAX / 2 || a.D > 512 || a.Hq > INT_MAX / 2)
    return set_error(std::string(name) + ": shape too large for the cuda kernels (head dim <= 512)");
  if (a.mask != static_cast<int32_t>(AttnMask::Global) && a.window < 1)
    return set_error(std::string(name) + ": window must be >= 1");
  P.q = a.q;
  P.k = a.k;
  P.v = a.v;
  P.Hq = static_cast<int>(a.Hq);
  P.Hkv = static_cast<int>(a.Hkv);
  P.G = static_cast<int>(a.Hq / a.Hkv);
  P.Sq = static_cast<int>(a.Sq);
  P.Sk = static_cast<int>(a.Sk);
  P.n = static_cast<int>(a.query_index ? a.n : a.Sq);  // n == Sq without query_index
  P.D = static_cast<int>(a.D);
  P.causal = a.causal ? 1 : 0;
  P.mask = a.mask;
  P.window = a.mask == static_cast<int32_t>(AttnMask::Global) ? 1 : std::min<long long>(a.window, 1LL << 40);
  P.pad = a.key_padding;
  P.qidx = a.query_index;
  P.qcount = a.query_count;
  return 0;
}

bool aligned16(const void* p) { return aligned(p, 16); }
bool aligned4(const void* p) { return aligned(p, 4); }

template <int D, bool DUAL>
int launch_mma(const FwdParams& P0, int64_t BH, const char* name) {
  FwdParams P = P0;
  P.tiles = (P.n + kBM - 1) / kBM;
  const int64_t blocks = BH * P.tiles;
  if (blocks > INT_MAX) return set_error(std::string(name) + ": too many blocks");
  constexpr int smem = mma_smem_bytes<D>();
  DR_CUDA_TRY(check(cudaFuncSetAttribute(attn_fwd_mma<D, DUAL>, cudaFuncAttributeMaxDynamicSharedMemorySize, smem), name));
  attn_fwd_mma<D, DUAL><<<static_cast<unsigned>(blocks), kMmaThreads, smem, stream()>>>(P);
  return check_launch(name);
}

template <typename T, int DPL, bool DUAL>
int launch_warp(const FwdParams& P0, int64_t BH, const char* name) {
  FwdParams P = P0;
  P.tiles = (P.n + kWarpRows - 1) / kWarpRows;
  const int64_t blocks = BH * P.tiles;
  if (blocks > INT_MAX) return set_error(std::string(name) + ": too many blocks");
  attn_fwd_warp<T, DPL, DUAL><<<static_cast<unsigned>(blocks), kWarpRows * 32, 0, stream()>>>(P);
  return check_launch(name);
}

template <typename T, bool DUAL>
int launch_warp_d(const FwdParams& P, int64_t BH, const char* name) {
  if (P.D <= 32) return launch_warp<T, 1, DUAL>(P, BH, name);
  if (P.D <= 64) return launch_warp<T, 2, DUAL>(P, BH, name);
  if (P.D <= 128) return launch_warp<T, 4, DUAL>(P, BH, name);
  if (P.D <= 256) return launch_warp<T, 8, DUAL>(P, BH, name);
  return launch_warp<T, 16, DUAL>(P, BH, name);
}

template <bool DUAL>
int launch_fwd(const FwdParams& P, int32_t dtype, int64_t BH, const char* name) {
  const bool bf = static_cast<DType>(dtype) == DType::BF16;
  const bool mma_ok = bf && (P.D == 32 || P.D == 64 || P.D == 128) && aligned16(P.q) && aligned16(P.k) &&
                      aligned16(P.v) && aligned4(P.out) && (!DUAL || (aligned4(P.out_g) && aligned4(P.out_mix))) &&
                      cc_major() >= 8;
  if (mma_ok) {
    if (P.D == 32) return launch_mma<32, DUAL>(P, BH, name);
    if (P.D == 64) return launch_mma<64, DUAL>(P, BH, name);
    return launch_mma<128, DUAL>(P, BH, name);
  }
  return bf ? launch_warp_d<bf16_t, DUAL>(P, BH, name) : launch_warp_d<float, DUAL>(P, BH, name);
}

// Flash-decoding: the number of key chunks per row, or 1 when the plain kernels are used. It
// applies to the forward (not dual) with n <= 16 rows per (b, h) whose visible span can reach
// kSplitMinSpan keys, when the plain grid (one block per (b, h, row) at best) would leave the
// GPU short of 2 blocks per multiprocessor. Chunks hold at least kSplitMinChunk keys.
constexpr int kSplitMaxRows = 16;
constexpr long long kSplitMinSpan = 1024, kSplitMinChunk = 256, kSplitMaxChunks = 1024;

int split_count(const FwdParams& P, int64_t BH) {
  if (P.n > kSplitMaxRows || P.Sk < kSplitMinSpan) return 1;
  long long span = P.Sk;  // the longest visible interval any row can have
  if (P.mask == static_cast<int>(AttnMask::Sliding))
    span = std::min<long long>(span, P.causal ? P.window : 2 * P.window - 1);
  else if (P.mask == static_cast<int>(AttnMask::Block))
    span = std::min<long long>(span, P.window);
  if (span < kSplitMinSpan) return 1;
  const long long rows = static_cast<long long>(BH) * P.n;
  const long long target = 2LL * multiprocessor_count();
  long long S = (target + rows - 1) / rows;
  S = std::min({S, span / kSplitMinChunk, kSplitMaxChunks});
  return S >= 2 ? static_cast<int>(S) : 1;
}

template <typename T, int DPL>
int launch_split_t(const FwdParams& P, int64_t BH, int S, const char* name) {
  const long long rows = static_cast<long long>(BH) * P.n;
  const long long blocks = rows * S;
  if (blocks > INT_MAX) return set_error(std::string(name) + ": too many blocks");
  void* scratch = nullptr;
  DR_CUDA_TRY(scratch_alloc(&scratch, static_cast<size_t>(blocks) * (2 + static_cast<size_t>(P.D)) * sizeof(float)));
  float* part = static_cast<float*>(scratch);
  attn_fwd_split<T, DPL><<<static_cast<unsigned>(blocks), kSplitWarps * 32, 0, stream()>>>(P, part, S);
  int status = check_launch(name);
  if (status == 0) {
    const long long mblocks = (rows + kWarpRows - 1) / kWarpRows;
    attn_split_merge<T><<<static_cast<unsigned>(mblocks), kWarpRows * 32, 0, stream()>>>(P, part, S, rows);
    status = check_launch(name);
  }
  // Stream order: the next user of this block runs after the merge.
  const int rel = scratch_release(scratch);
  return status ? status : rel;
}

template <typename T>
int launch_split(const FwdParams& P, int64_t BH, int S, const char* name) {
  if (P.D <= 32) return launch_split_t<T, 1>(P, BH, S, name);
  if (P.D <= 64) return launch_split_t<T, 2>(P, BH, S, name);
  if (P.D <= 128) return launch_split_t<T, 4>(P, BH, S, name);
  if (P.D <= 256) return launch_split_t<T, 8>(P, BH, S, name);
  return launch_split_t<T, 16>(P, BH, S, name);
}

int launch_forward(const FwdParams& P, int32_t dtype, int64_t BH, const char* name) {
  const int S = split_count(P, BH);
  if (S < 2) return launch_fwd<false>(P, dtype, BH, name);
  if (static_cast<DType>(dtype) == DType::BF16) return launch_split<bf16_t>(P, BH, S, name);
  return launch_split<float>(P, BH, S, name);
}

// Launch, then (with query_index) wait and turn a recorded bad index into a RangeError.
template <typename Launch>
int with_query_check(const char* name, const AttnArgs& a, Launch&& launch) {
  if (!a.query_index) return launch();
  return with_bad_slot(
      g_attn_mutex, g_attn_bad, name, a.query_index, [&](unsigned long long*) { return launch(); },
      [&](long long pos, int32_t v) {
        return "RangeError: attention: query_index " + std::to_string(v) + " at [" + std::to_string(pos / a.n) + ", " +
               std::to_string(pos % a.n) + "] is outside [0, " + std::to_string(a.Sq) + ")";
      });
}

template <typename T, int DPL>
int launch_bwd_t(const BwdParams& P0, int64_t BKV, const char* name) {
  BwdParams P = P0;
  // Four float tiles of KT x D in shared memory: 32 keys up to D = 256, fewer beyond.
  P.KT = P.D <= 256 ? 32 : 16;
  P.tiles = (P.Sk + P.KT - 1) / P.KT;
  const int64_t blocks = BKV * P.tiles;
  if (blocks > INT_MAX) return set_error(std::string(name) + ": too many blocks");
  const size_t smem = static_cast<size_t>(4) * P.KT * P.D * sizeof(float) + P.KT;
  DR_CUDA_TRY(check(cudaFuncSetAttribute(attn_bwd_warp<T, DPL>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                         static_cast<int>(smem)),
                    name));
  attn_bwd_warp<T, DPL><<<static_cast<unsigned>(blocks), kBwdThreads, smem, stream()>>>(P);
  return check_launch(name);
}

template <typename T>
int launch_bwd(const BwdParams& P, int64_t BKV, const char* name) {
  if (P.D <= 32) return launch_bwd_t<T, 1>(P, BKV, name);
  if (P.D <= 64) return launch_bwd_t<T, 2>(P, BKV, name);
  if (P.D <= 128) return launch_bwd_t<T, 4>(P, BKV, name);
  if (P.D <= 256) return launch_bwd_t<T, 8>(P, BKV, name);
  return launch_bwd_t<T, 16>(P, BKV, name);
}

}  // namespace

int attention_forward(const AttnArgs* a, void* out, void* lse) {
  DR_CUDA_ENTRY_BEGIN
  const char* name = "attention_forward";
  FwdParams P{};
  DR_CUDA_TRY(common_params(name, *a, P));
  P.out = out;
  P.lse = static_cast<float*>(lse);
  P.scale2 = static_cast<float>(a->scale * kLog2e);
  const int64_t BH = a->B * a->Hq;
  if (BH == 0 || P.n == 0) return 0;
  return with_query_check(name, *a, [&] { return launch_forward(P, a->dtype, BH, name); });
  DR_CUDA_ENTRY_END("attention_forward")
}

int attention_backward(const AttnArgs* a, const void* out, const void* dout, const void* lse, void* dq, void* dk,
                       void* dv) {
  DR_CUDA_ENTRY_BEGIN
  const char* name = "attention_backward";
  BwdParams P{};
  DR_CUDA_TRY(common_params(name, *a, P));
  P.out = out;
  P.dout = dout;
  P.lse = static_cast<const float*>(lse);
  P.dq = static_cast<float*>(dq);
  P.dk = static_cast<float*>(dk);
  P.dv = static_cast<float*>(dv);
  P.scale = static_cast<float>(a->scale);
  const int64_t BKV = a->B * a->Hkv;
  if (BKV == 0 || a->Sk == 0 || P.n == 0 || a->D == 0 || a->Hq == 0) return 0;
  // bf16 with head dim 32/64/128: the tensor-core kernel (attention_bwd.cu); else the generic one
  if (bwd_mma_supported(P, a->dtype)) return launch_bwd_mma(P, BKV, name);
  if (static_cast<DType>(a->dtype) == DType::BF16) return launch_bwd<bf16_t>(P, BKV, name);
  return launch_bwd<float>(P, BKV, name);
  DR_CUDA_ENTRY_END("attention_backward")
}

int dual_attention_forward(const DualArgs* d, void* out, void* out_local, void* out_global, void* lse_local,
                           void* lse_global) {
  DR_CUDA_ENTRY_BEGIN
  const char* name = "dual_attention_forward";
  const AttnArgs& a = d->a;
  if (a.query_index) return set_error("dual_attention_forward: query_index is not supported here");
  FwdParams P{};
  DR_CUDA_TRY(common_params(name, a, P));
  P.out = out_local;
  P.lse = static_cast<float*>(lse_local);
  P.out_mix = out;
  P.out_g = out_global;
  P.lse_g = static_cast<float*>(lse_global);
  P.gates = d->gates;
  P.gates_per_head = d->gates_per_head ? 1 : 0;
  P.global_rows = d->global_rows;
  P.scale2 = static_cast<float>(a.scale * kLog2e);
  const int64_t BH = a.B * a.Hq;
  if (BH == 0 || P.n == 0) return 0;
  return launch_fwd<true>(P, a.dtype, BH, name);
  DR_CUDA_ENTRY_END("dual_attention_forward")
}

int dual_attention_backward(const DualArgs* d, const void* out_local, const void* out_global, const void* dout,
                            const void* lse_local, const void* lse_global, void* dq, void* dk, void* dv) {
  DR_CUDA_ENTRY_BEGIN
  const char* name = "dual_attention_backward";
  const AttnArgs& a = d->a;
  if (a.query_index) return set_error("dual_attention_backward: query_index is not supported here");
  BwdParams P{};
  DR_CUDA_TRY(common_params(name, a, P));
  P.out = out_local;
  P.dout = dout;
  P.lse = static_cast<const float*>(lse_local);
  P.dq = static_cast<float*>(dq);
  P.dk = static_cast<float*>(dk);
  P.dv = static_cast<float*>(dv);
  P.scale = static_cast<float>(a.scale);
  P.out_g = out_global;
  P.lse_g = static_cast<const float*>(lse_global);
  P.gates = d->gates;
  P.gates_per_head = d->gates_per_head ? 1 : 0;
  P.global_rows = d->global_rows;
  const int64_t BKV = a.B * a.Hkv;
  if (BKV == 0 || a.Sk == 0 || P.n == 0 || a.D == 0 || a.Hq == 0) return 0;
  // bf16 with head dim 32/64/128: one pass over K/V for both paths (attention_bwd.cu)
  if (bwd_mma_supported(P, a.dtype)) return launch_bwd_mma_dual(P, BKV, name);
  // otherwise each path's backward with its gate-scaled dout (rows off the global path have
  // lse_global = -inf and are skipped)
  const bool bf = static_cast<DType>(a.dtype) == DType::BF16;
  const size_t esize = bf ? sizeof(bf16_t) : sizeof(float);
  const long long total = static_cast<long long>(a.B) * a.Hq * a.Sq * a.D;
  void* scratch = nullptr;
  DR_CUDA_TRY(scratch_alloc(&scratch, 2 * static_cast<size_t>(total) * esize));
  char* dl = static_cast<char*>(scratch);
  char* dg = dl + static_cast<size_t>(total) * esize;
  const int Hq = static_cast<int>(a.Hq), Sq = static_cast<int>(a.Sq), D = static_cast<int>(a.D);
  if (bf)
    dual_gate_dout<bf16_t><<<grid_for(total), kThreads, 0, stream()>>>(
        reinterpret_cast<bf16_t*>(dl), reinterpret_cast<bf16_t*>(dg), static_cast<const bf16_t*>(dout),
        static_cast<const bf16_t*>(d->gates), P.gates_per_head, Hq, Sq, D, total);
  else
    dual_gate_dout<float><<<grid_for(total), kThreads, 0, stream()>>>(
        reinterpret_cast<float*>(dl), reinterpret_cast<float*>(dg), static_cast<const float*>(dout),
        static_cast<const float*>(d->gates), P.gates_per_head, Hq, Sq, D, total);
  int status = check_launch(name);
  if (status == 0) {
    P.dout = dl;
    status = bf ? launch_bwd<bf16_t>(P, BKV, name) : launch_bwd<float>(P, BKV, name);
  }
  if (status == 0) {
    BwdParams Pg = P;
    Pg.mask = static_cast<int32_t>(AttnMask::Global);
    Pg.window = 1;
    Pg.out = out_global;
    Pg.dout = dg;
    Pg.lse = static_cast<const float*>(lse_global);
    status = bf ? launch_bwd<bf16_t>(Pg, BKV, name) : launch_bwd<float>(Pg, BKV, name);
  }
  const int rel = scratch_release(scratch);  // stream order: later users run after these kernels
  return status ? status : rel;
  DR_CUDA_ENTRY_END("dual_attention_backward")
}

int rope(const View* out, const View* x, const View* positions, double base, int32_t inverse) {
  DR_CUDA_ENTRY_BEGIN
  const char* name = "rope";
  DR_CUDA_TRY(dtype_check(name, x->dtype));
  if (out->dtype != x->dtype) return set_error("rope: out and x must have the same dtype");
  if (static_cast<DType>(positions->dtype) != DType::I32) return set_error("rope: positions must be int32");
  if (x->ndim != 4) return set_error("rope: x must be [B, H, S, D]");
  const int64_t B = x->shape[0], H = x->shape[1], S = x->shape[2], D = x->shape[3];
  if (D % 2 != 0) return set_error("rope: the head dim must be even");
  const int pos_2d = positions->ndim == 1 ? 0 : 1;
  if (pos_2d && (positions->ndim != 2 || positions->shape[0] != B || positions->shape[1] != S))
    return set_error("rope: positions must be [S] or [B, S]");
  if (!pos_2d && positions->shape[0] != S) return set_error("rope: positions must be [S] or [B, S]");
  const int64_t rows = B * H * S;
  const int64_t total = rows * (D / 2);
  if (total == 0) return 0;
  const int blocks = grid_for(total);
  const int32_t* pos = static_cast<const int32_t*>(positions->data);
  if (static_cast<DType>(x->dtype) == DType::BF16)
    rope_kernel<bf16_t><<<blocks, kThreads, 0, stream()>>>(static_cast<bf16_t*>(out->data),
                                                          static_cast<const bf16_t*>(x->data), pos, rows, H, S, D,
                                                          pos_2d, base, inverse);
  else
    rope_kernel<float><<<blocks, kThreads, 0, stream()>>>(static_cast<float*>(out->data),
                                                         static_cast<const float*>(x->data), pos, rows, H, S, D,
                                                         pos_2d, base, inverse);
  return check_launch(name);
  DR_CUDA_ENTRY_END("rope")
}

}  // namespace cuda
}  // namespace dualroute
