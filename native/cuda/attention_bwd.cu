// bf16 tensor-core backward of fused attention (FlashAttention-2 style), head dims 32, 64, 128,
// sm_80+. Same contract as attn_bwd_warp in attention.cu (native/core/attention.h): row r of
// (b, h) reads query qi = query_index[b, r] (or r) at position p = qi + Sk - Sq and sees the keys
// of key_range(p) that are not padded; P = exp(scale q.k - lse), Dr = dout . out,
// dS = P (dout.v - Dr); dv += P^T dout, dk += scale dS^T q, dq += scale dS k. dq, dk, dv are
// float32 accumulators the caller has zeroed; this file adds into them.
//
// Kernels (DUAL = false; the dual form is described below):
//  1. attn_bwd_dot<D, DUAL>: Dr[bh * n + r] = sum_d dout[d] out[d] in float into scratch memory,
//     D/8 lanes (16 bytes each) per row.
//  2. attn_bwd_mma<D, DUAL>: one block of 4 warps per (b, kv head, tile of kBN = 64 keys); warp w owns
//     keys 16w..16w+15 of the tile. K and V are staged once in shared memory (cp.async, pitch
//     D + 8 bf16: the 8 rows of an ldmatrix hit distinct banks); dK, dV of the warp's keys live
//     in mma.m16n8k16 f32 accumulator fragments for the whole kernel. The block walks the query
//     tiles (kBM = 64 rows) of every query head of its group that can see its keys. Per tile:
//     Q rows (gathered by qi) and dout rows go to shared memory, with each row's lse * log2(e),
//     Dr and visibility mask (64 bits, one per key of the tile: its interval clipped to the
//     tile, less padded keys and keys >= Sk). Invalid rows, -inf-lse rows and rows that see no
//     key of the tile get mask 0, zero-filled Q / dout and no dq update. Each warp, per pass of
//     QC queries:
//        S^T = K_w Q^T, then dP^T = V_w dO^T      (16 keys x QC queries, f32 fragments)
//        P^T = exp2(S^T scale log2e - lse2) where the mask bit is set, else 0 (a select: no
//        NaN from -inf); dS^T = P^T (dP^T - Dr) in float
//        dV_w += P^T dO, dK_w += dS^T Q          (P^T, dS^T re-packed to bf16 A fragments)
//     and writes dS^T as bf16 to sdS[key][query]. After a barrier warp w computes dQ for the
//     tile's query rows 16w..16w+15, dQ = dS K (A = dS read transposed from sdS), and adds
//     scale * dQ into dq with atomics. The next active tile's Q / dout copies are issued before
//     that dQ step (the dQ step reads only sdS and K), so they overlap it.
//     Ownership: the (b, kv head, key tile) of a block is written by no other block (all query
//     heads of the group and all query rows are walked inside it), so dk, dv are updated with
//     plain read-add-write at the end. dq rows are shared by every key tile (and by repeated
//     query_index rows), so dq takes float atomics.
//     Fragment layouts (PTX m16n8k16, g = lane / 4, t = lane % 4): A (16 x 16, row) holds
//     a0 (g, 2t..2t+1), a1 (g+8, 2t..), a2 (g, 8+2t..), a3 (g+8, 8+2t..); B (16 x 8) holds
//     b0 (k 2t..2t+1, n g), b1 (k 8+2t.., n g); C (16 x 8) holds c0 c1 (g, 2t..2t+1), c2 c3
//     (g+8, 2t..). Two C fragments of adjacent 8-column blocks are, packed to bf16, one A
//     fragment of the next product (as the forward's P V). Operands:
//        K_w, V_w [key][d]   : A, row-major, plain ldmatrix
//        Q, dO [query][d]    : B of S^T, dP^T ("n x k" storage), plain ldmatrix;
//                              B of dK, dV ("k x n" storage), ldmatrix.trans
//        sdS [key][query]    : A of dQ = dS K (the transpose of the stored tile), ldmatrix.trans
//        K [key][d]          : B of dQ ("k x n" storage), ldmatrix.trans
//     Tile range: without query_index a row's interval [lo, hi] has lo and hi nondecreasing in
//     the row and the empty rows form a prefix (p <= Sk - 1 always), so the rows that meet
//     the key tile are one run, found by two binary searches; with query_index every tile is
//     examined. A tile with no active row is skipped after one barrier.
// Tile sizes: kBN = 64 keys (16 per warp) for every D. For D = 128 the dK, dV fragments take
// 128 registers per thread, so a warp handles its 64 query rows in two passes of QC = 32
// (S^T, dP^T 32 registers) and computes dQ in two halves of 64 columns; D <= 64 does one pass
// of 64 and keeps K_w, V_w A fragments in registers. Shared memory: 4 tiles of 64 x (D + 8)
// bf16 (K, V, Q, dout), dS 64 x 72 bf16, two sets of per-row data (mask, lse2, Dr, qi):
// 32 256 / 48 640 / 81 408 dynamic bytes for D = 32 / 64 / 128, plus 8 static. With 128
// threads of <= 255 registers that is 2 blocks per SM on A100 and H100 for every D; 32-key
// tiles for D = 128 would leave 2 warps per block (or split dK, dV across warps) and read
// every query tile twice as often for the same registers. The row data sets alternate by
// tile, so the next tile's data can be written while this tile's dQ step reads its qi.
// Non-finite inputs. P and dS are selects (0 outside the mask, whatever dP or lse hold), but the
// products would still add 0 * NaN (or 0 * inf) from q, dout or k rows into gradients of pairs
// outside the mask. So each block first checks its keys and the q and dout rows of the rows of
// its walk that see part of its keys (rows that see all or none meet no mask); if any holds a
// NaN or an infinity it adds nothing and appends its index to P.redo, and attn_bwd_redo (one
// launch per path after the main kernel; its blocks exit at once when the list is empty) runs
// the listed key tiles through bwd_key_run (attention_generic.cuh), the exact per-pair path.
// bwd_mma_supported also asks for 16-byte aligned q, k, v, out, dout, out_g when set (cp.async,
// 16-byte loads) and 8-byte aligned dq, dk, dv (float2 updates); DUALROUTE_CUDA_ATTN_BWD=generic
// turns it off.
//
// Dual backward (launch_bwd_mma_dual, DUAL = true; no query_index, n = Sq): the gradient of
// out = g_l out_l + g_g out_g in one pass. out / lse are the local path's (P.mask, P.window),
// out_g / lse_g the global path's (Global, same causal; only rows with global_rows null or
// nonzero). attn_bwd_dot writes Dr_l = g_l dout.out_l and Dr_g = g_g dout.out_g (two arrays in
// the scratch). attn_bwd_mma computes S^T and dP^T once per tile as above; each row carries a
// local and a global visibility mask (each 0 where its lse is -inf; the global one 0 off the
// global path), and the element step forms
//   P_l = exp2(S scale log2e - lse2_l) [local bit], P_g likewise [global bit],
//   P^T <- g_l P_l + g_g P_g (for dV), dS^T <- P_l (g_l dP - Dr_l) + P_g (g_g dP - Dr_g),
// the rest (dV, dK, sdS, dQ) unchanged. A row is active when either mask is nonzero; the
// query tiles walked are the hull of the two masks' row spans. Row data: one set of the two
// paths' masks, lse2, Dr and the gates, written after prepare()'s barrier (which ends every
// warp's reads of the set; the loop's closing barrier publishes it), qi still double-buffered:
// 32 768 / 49 152 / 81 920 dynamic bytes for D = 32 / 64 / 128 (2 blocks per SM on A100 too).
// For registers the passes are smaller: QC = 64 / 32 / 16 for D = 32 / 64 / 128 (K_w, V_w in
// registers for D <= 64); no spills.
#include <algorithm>
#include <climits>
#include <cstdlib>
#include <cstring>
#include <string>

#include "../core/attention.h"
#include "attention.cuh"
#include "device.cuh"
#include "attention_generic.cuh"
#include "mma.cuh"

namespace dualroute {
namespace cuda {

// backend.cu: temporary device memory from the caching allocator (here: Dr). Release may follow
// the launches that use the block at once (all work is on one stream).
int scratch_alloc(void** ptr, size_t bytes);
int scratch_release(void* ptr);

namespace {

// emu:begin bwd (test/cuda_emu runs the code up to emu:end in a warp emulator)
constexpr int kBM = 64;  // query rows per tile
constexpr int kBN = 64;  // keys per block (16 per warp)
constexpr int kBwdThreads = 128;
constexpr int kDotThreads = 256;
constexpr int kSP = kBM + 8;  // sdS pitch (bf16)

template <int D, bool DUAL>
constexpr int bwd_smem_bytes() {
  // K, V, Q, dout tiles; sdS; per-row data. Plain: two sets of (2 mask words, lse2, Dr, qi).
  // Dual: one set of (2 + 2 mask words, lse2 and Dr of both paths, 2 gates) and two of qi.
  return (2 * kBN + 2 * kBM) * (D + 8) * 2 + kBN * kSP * 2 +
         (DUAL ? kBM * (4 + 4 + 2) * 4 + 2 * kBM * 4 : 2 * kBM * (2 + 2 + 1) * 4);
}

// Whether 8 bf16 values (16 bytes) hold a NaN or an infinity (exponent bits all ones).
__device__ __forceinline__ bool nonfinite8(const uint4 v) {
  const uint32_t w[4] = {v.x, v.y, v.z, v.w};
  bool any = false;
#pragma unroll
  for (int i = 0; i < 4; ++i) any = any || (w[i] & 0x7f80u) == 0x7f80u || (w[i] & 0x7f800000u) == 0x7f800000u;
  return any;
}

// ---------------------------------------------------------------------------------------------
// 1. Dr = rowsum(dout * out); dual: Dr = g_l rowsum(dout * out), Dr_g = g_g rowsum(dout * out_g)
// ---------------------------------------------------------------------------------------------
template <int D, bool DUAL>
__global__ void __launch_bounds__(kDotThreads) attn_bwd_dot(const bf16_t* __restrict__ out,
                                                          const bf16_t* __restrict__ dout, float* __restrict__ Dr,
                                                          long long rows, const bf16_t* __restrict__ out_g,
                                                          const bf16_t* __restrict__ gates, float* __restrict__ Dr_g,
                                                          int gates_per_head, int Hq, int Sq) {
  constexpr int CH = D / 8, RPW = 32 / CH;  // 16-byte chunks per row, rows per warp
  const int lane = threadIdx.x & 31;
  const long long row =
      (static_cast<long long>(blockIdx.x) * (kDotThreads / 32) + (threadIdx.x >> 5)) * RPW + lane / CH;
  const int c = lane % CH;
  float v = 0.f, vg = 0.f;
  if (row < rows) {
    const uint4 a = *reinterpret_cast<const uint4*>(out + row * D + c * 8);
    const uint4 d = *reinterpret_cast<const uint4*>(dout + row * D + c * 8);
    const __nv_bfloat162* pa = reinterpret_cast<const __nv_bfloat162*>(&a);
    const __nv_bfloat162* pd = reinterpret_cast<const __nv_bfloat162*>(&d);
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      const float2 fa = __bfloat1622float2(pa[k]), fd = __bfloat1622float2(pd[k]);
      v = fmaf(fa.x, fd.x, v);
      v = fmaf(fa.y, fd.y, v);
    }
    if (DUAL) {
      const uint4 ag = *reinterpret_cast<const uint4*>(out_g + row * D + c * 8);
      const __nv_bfloat162* pg = reinterpret_cast<const __nv_bfloat162*>(&ag);
#pragma unroll
      for (int k = 0; k < 4; ++k) {
        const float2 fa = __bfloat1622float2(pg[k]), fd = __bfloat1622float2(pd[k]);
        vg = fmaf(fa.x, fd.x, vg);
        vg = fmaf(fa.y, fd.y, vg);
      }
    }
  }
#pragma unroll
  for (int m = CH / 2; m > 0; m >>= 1) {  // within the row's lanes
    v += __shfl_xor_sync(0xffffffffu, v, m);
    if (DUAL) vg += __shfl_xor_sync(0xffffffffu, vg, m);
  }
  if (row < rows && c == 0) {
    if (DUAL) {  // row = (b Hq + h) Sq + r; gates [B, Sq, 2] or [B, Hq, Sq, 2]
      const long long HS = static_cast<long long>(Hq) * Sq;
      const long long gi = gates_per_head ? row : row / HS * Sq + row % Sq;
      Dr[row] = __bfloat162float(gates[2 * gi]) * v;
      Dr_g[row] = __bfloat162float(gates[2 * gi + 1]) * vg;
    } else {
      Dr[row] = v;
    }
  }
}

// ---------------------------------------------------------------------------------------------
// 2. Main kernel
// ---------------------------------------------------------------------------------------------
#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 800
__device__ __forceinline__ uint32_t pack2(float lo, float hi) {
  __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);  // .x = lo (lower address / lower k)
  return *reinterpret_cast<uint32_t*>(&v);
}

// Rows [rb, re) whose key interval under (mask, window) meets [j0, j1], without query_index
// (qi = r < Sq, so p <= Sk - 1). Over the rows, every mask's lo and hi are nondecreasing where the interval is
// nonempty, and the empty rows come first (p < 0 or p <= -window: the interval only empties at
// the low end because p <= Sk - 1), so "nonempty and hi >= j0" holds on a suffix of the rows and
// "nonempty and lo > j1" on a later suffix; the rows between meet the tile, no other row does.
__device__ __forceinline__ void row_span(const BwdParams& P, int mask, long long window, int j0, int j1, int& rb,
                                         int& re) {
  const int rows = min(P.n, P.Sq);
  int a = 0, z = rows;
  while (a < z) {
    const int m = (a + z) >> 1;
    int lo, hi;
    key_range(mask, P.causal, window, static_cast<long long>(m) + P.Sk - P.Sq, P.Sk, lo, hi);
    if (lo <= hi && hi >= j0)
      z = m;
    else
      a = m + 1;
  }
  rb = a;
  z = rows;
  while (a < z) {
    const int m = (a + z) >> 1;
    int lo, hi;
    key_range(mask, P.causal, window, static_cast<long long>(m) + P.Sk - P.Sq, P.Sk, lo, hi);
    if (lo <= hi && lo > j1)
      z = m;
    else
      a = m + 1;
  }
  re = a;
}
#endif

template <int D, bool DUAL>
__global__ void __launch_bounds__(kBwdThreads) attn_bwd_mma(BwdParams P, const float* __restrict__ Dr,
                                                          const float* __restrict__ Dr_g) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  constexpr int PITCH = D + 8;
  constexpr int CH = D / 8;                // 16-byte chunks per row
  constexpr int KS = D / 16;               // k-steps over d
  constexpr int DF = D / 8;                // dK / dV fragments per warp (16 x D)
  // Query rows per warp pass (dual: smaller passes, so that both paths' values fit in registers).
  constexpr int QC = DUAL ? (D <= 32 ? 64 : D <= 64 ? 32 : 16) : D <= 64 ? 64 : 32;
  constexpr int NQ = QC / 8;               // S^T / dP^T fragments per pass (16 x QC)
  constexpr int DQC = D <= 64 ? D : 64;    // dQ columns per step
  constexpr bool KVREG = D <= 64;          // K_w, V_w A fragments kept in registers
  extern __shared__ __align__(16) unsigned char smem_raw[];
  bf16_t* sK = reinterpret_cast<bf16_t*>(smem_raw);
  bf16_t* sV = sK + kBN * PITCH;
  bf16_t* sQ = sV + kBN * PITCH;
  bf16_t* sdO = sQ + kBM * PITCH;
  bf16_t* sdS = sdO + kBM * PITCH;                                  // [key][query], pitch kSP
  // Plain: sMask [2][2][kBM] (set, key word, row), sLD [2][kBM][lse2, Dr]. Dual: one set,
  // sMask [2][2][kBM] (path: local, global; key word; row), sLD [kBM][lse2_l, Dr_l, lse2_g, Dr_g],
  // sGt [kBM][g_l, g_g]. sQi [2][kBM] in both.
  uint32_t* sMask = reinterpret_cast<uint32_t*>(sdS + kBN * kSP);
  float* sLD = reinterpret_cast<float*>(sMask + 2 * 2 * kBM);
  float* sGt = sLD + (DUAL ? kBM * 4 : 0);
  int* sQi = reinterpret_cast<int*>(sLD + (DUAL ? kBM * 6 : 2 * kBM * 2));
  __shared__ uint32_t sKok[2];  // bit jl: key j0 + jl exists (< Sk) and is not padded

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int g = lane >> 2, t = lane & 3, mat = lane >> 3, r8 = lane & 7;
  const int kt = blockIdx.x % P.tiles;
  const int bk = blockIdx.x / P.tiles;  // b * Hkv + kv head
  const int b = bk / P.Hkv, hk = bk % P.Hkv;
  const int Sk = P.Sk, Sq = P.Sq, n = P.n;
  const int j0 = kt * kBN;
  const int j1 = min(j0 + kBN, Sk) - 1;

  bool okj = false;
  if (tid < kBN) {
    const int j = j0 + tid;
    okj = j < Sk && !(P.pad && P.pad[static_cast<long long>(b) * Sk + j]);
    const uint32_t w = __ballot_sync(0xffffffffu, okj);
    if (lane == 0) sKok[warp] = w;
  }
  if (!__syncthreads_or(okj)) return;  // every key padded: nothing to add

  // Shared-memory addresses as one base plus constants.
  const uint32_t aK = smem_addr(smem_raw);
  const uint32_t aV = aK + kBN * PITCH * 2, aQ = aV + kBN * PITCH * 2, adO = aQ + kBM * PITCH * 2;
  const uint32_t aS = adO + kBM * PITCH * 2;
  {
    const long long kvrow0 = static_cast<long long>(bk) * Sk + j0;
    const bf16_t* K = static_cast<const bf16_t*>(P.k) + kvrow0 * D;
    const bf16_t* V = static_cast<const bf16_t*>(P.v) + kvrow0 * D;
    for (int c = tid; c < kBN * CH; c += kBwdThreads) {
      const int row = c / CH, col = (c % CH) * 8;
      const bool ok = j0 + row < Sk;  // keys past Sk: zero rows
      const long long o = ok ? static_cast<long long>(row) * D + col : 0;
      cp_async16(aK + (row * PITCH + col) * 2, K + o, ok);
      cp_async16(aV + (row * PITCH + col) * 2, V + o, ok);
    }
    cp_async_commit();
  }

  // Query tiles [tb, te) of each query head of the group.
  int tb = 0, te = (n + kBM - 1) / kBM;
  if (!P.qidx) {
    int rb, re;
    row_span(P, P.mask, P.window, j0, j1, rb, re);
    if (DUAL) {  // the hull with the global path's span
      int gb, ge;
      row_span(P, static_cast<int>(AttnMask::Global), 1, j0, j1, gb, ge);
      if (gb < ge) {
        rb = rb < re ? min(rb, gb) : gb;
        re = max(re, ge);
      }
    }
    tb = rb / kBM;
    te = rb < re ? (re - 1) / kBM + 1 : tb;
  }
  const int ntl = te - tb;
  const int total = P.G * ntl;  // (query head, tile) pairs, head-major

  const float scale2 = P.scale * kLog2e;

  // Row data of candidate `it` (query head it / ntl, tile tb + it % ntl) into set `buf`; true
  // (for all threads) if some row is active: a valid query that sees an unpadded key of the
  // tile and whose lse is not -inf.
  auto prepare = [&](int it, int buf) -> bool {
    bool active = false;
    if constexpr (DUAL) {
      // Row r is query r (no query_index). The mask words, lse2, Dr and gates are written after
      // the barrier: that barrier also ends every warp's reads of the single set (the S^T, dP^T
      // phase), and the next reads follow the loop's closing barrier. qi is double-buffered:
      // issue() reads it right after the barrier, the dQ step of the current tile still later.
      unsigned long long ml = 0, mg = 0;
      float4 ld = make_float4(0.f, 0.f, 0.f, 0.f);
      float2 gt = make_float2(0.f, 0.f);
      if (tid < kBM) {
        const int h = hk * P.G + it / ntl;
        const long long bh = static_cast<long long>(b) * P.Hq + h;
        const int r = (tb + it % ntl) * kBM + tid;
        if (r < n) {
          const unsigned long long kok = sKok[0] | static_cast<unsigned long long>(sKok[1]) << 32;
          const long long p = static_cast<long long>(r) + Sk - Sq;
          int lo, hi;
          key_range(P.mask, P.causal, P.window, p, Sk, lo, hi);
          lo = max(lo, j0);
          hi = min(hi, j1);
          const float lse = P.lse[bh * n + r];
          if (lo <= hi && lse != -INFINITY) ml = (((~0ull) >> (63 - (hi - lo))) << (lo - j0)) & kok;
          float lse_g = -INFINITY;
          if (!P.global_rows || P.global_rows[static_cast<long long>(b) * Sq + r] != 0) {
            key_range(static_cast<int>(AttnMask::Global), P.causal, 1, p, Sk, lo, hi);
            lo = max(lo, j0);
            hi = min(hi, j1);
            lse_g = P.lse_g[bh * n + r];
            if (lo <= hi && lse_g != -INFINITY) mg = (((~0ull) >> (63 - (hi - lo))) << (lo - j0)) & kok;
          }
          active = (ml | mg) != 0;
          if (active) {
            if (ml) {
              ld.x = lse * kLog2e;
              ld.y = Dr[bh * n + r];
            }
            if (mg) {
              ld.z = lse_g * kLog2e;
              ld.w = Dr_g[bh * n + r];
            }
            const bf16_t* gp = static_cast<const bf16_t*>(P.gates) +
                               (P.gates_per_head ? bh * Sq + r : static_cast<long long>(b) * Sq + r) * 2;
            gt = make_float2(__bfloat162float(gp[0]), __bfloat162float(gp[1]));
          }
        }
        sQi[buf * kBM + tid] = active ? r : -1;
      }
      const bool any = __syncthreads_or(active) != 0;
      if (tid < kBM) {
        sMask[tid] = static_cast<uint32_t>(ml);
        sMask[kBM + tid] = static_cast<uint32_t>(ml >> 32);
        sMask[2 * kBM + tid] = static_cast<uint32_t>(mg);
        sMask[3 * kBM + tid] = static_cast<uint32_t>(mg >> 32);
        *reinterpret_cast<float4*>(sLD + tid * 4) = ld;
        *reinterpret_cast<float2*>(sGt + tid * 2) = gt;
      }
      return any;
    }
    if (tid < kBM) {
      const int h = hk * P.G + it / ntl;
      const long long bh = static_cast<long long>(b) * P.Hq + h;
      const int r = (tb + it % ntl) * kBM + tid;
      int qi = -1;
      unsigned long long m = 0;
      float lse2 = 0.f, dr = 0.f;
      if (r < n && !(P.qcount && r >= P.qcount[b])) {  // ragged padding rows stay inactive
        qi = P.qidx ? P.qidx[static_cast<long long>(b) * n + r] : r;
        if (qi < 0 || qi >= Sq) qi = -1;  // the forward has reported it
      }
      if (qi >= 0) {
        int lo, hi;
        key_range(P.mask, P.causal, P.window, static_cast<long long>(qi) + Sk - Sq, Sk, lo, hi);
        lo = max(lo, j0);
        hi = min(hi, j1);
        if (lo <= hi) {  // bits lo-j0 .. hi-j0, less the padded keys
          const unsigned long long kok = sKok[0] | static_cast<unsigned long long>(sKok[1]) << 32;
          m = (((~0ull) >> (63 - (hi - lo))) << (lo - j0)) & kok;
        }
        const float lse = P.lse[bh * n + r];
        active = m != 0 && lse != -INFINITY;
        if (active) {
          lse2 = lse * kLog2e;
          dr = Dr[bh * n + r];
        }
      }
      if (!active) {
        qi = -1;
        m = 0;
      }
      sQi[buf * kBM + tid] = qi;
      sMask[(buf * 2) * kBM + tid] = static_cast<uint32_t>(m);
      sMask[(buf * 2 + 1) * kBM + tid] = static_cast<uint32_t>(m >> 32);
      *reinterpret_cast<float2*>(sLD + (buf * kBM + tid) * 2) = make_float2(lse2, dr);
    }
    return __syncthreads_or(active) != 0;
  };
  // Q rows (gathered by qi) and dout rows of candidate `it`; inactive rows are zero-filled.
  auto issue = [&](int it, int buf) {
    const long long bh = static_cast<long long>(b) * P.Hq + hk * P.G + it / ntl;
    const int r0 = (tb + it % ntl) * kBM;
    const bf16_t* Qh = static_cast<const bf16_t*>(P.q) + bh * Sq * D;
    const bf16_t* dOh = static_cast<const bf16_t*>(P.dout) + (bh * n + r0) * D;
    const int* qib = sQi + buf * kBM;
    for (int c = tid; c < kBM * CH; c += kBwdThreads) {
      const int row = c / CH, col = (c % CH) * 8;
      const int qi = qib[row];
      const bool ok = qi >= 0;
      cp_async16(aQ + (row * PITCH + col) * 2, Qh + (ok ? static_cast<long long>(qi) * D + col : 0), ok);
      cp_async16(adO + (row * PITCH + col) * 2, dOh + (ok ? static_cast<long long>(row) * D + col : 0), ok);
    }
    cp_async_commit();
  };

  int it = 0, buf = 0;
  bool have = false;
  for (; it < total; ++it)
    if (prepare(it, buf)) {
      have = true;
      break;
    }
  if (have) issue(it, buf);
  cp_async_wait<0>();
  __syncthreads();
  if (!have) return;  // no query sees these keys

  // ---- Non-finite inputs ----
  // The tile products multiply P = 0 and dS = 0 (pairs outside a row's mask) by q, dout and k
  // rows: 0 * NaN or 0 * inf would reach the gradients of keys or queries outside the pair's
  // mask. So before adding anything the block checks its keys, and the q and dout rows of every
  // row of its walk that meets only part of its keys (rows that see all of them, or none, meet
  // no mask here); if one holds a NaN or an infinity, the block adds nothing and lists itself
  // for attn_bwd_redo, the exact per-pair path.
  if (P.redo) {
    bool bad = false;
    for (int c = tid; c < kBN * CH; c += kBwdThreads) {
      const int row = c / CH, col = (c % CH) * 8;
      if (j0 + row <= j1) bad = bad || nonfinite8(*reinterpret_cast<const uint4*>(sK + row * PITCH + col));
    }
    const bool all_keys = sKok[0] == ~0u && sKok[1] == ~0u;  // 64 keys below Sk, none padded
    for (int x = tid; x < total * kBM && !bad; x += kBwdThreads) {
      const int itx = x / kBM, rr = (tb + itx % ntl) * kBM + x % kBM;
      if (rr >= n || (P.qcount && rr >= P.qcount[b])) continue;
      int qi = rr;
      if (P.qidx) {
        qi = P.qidx[static_cast<long long>(b) * n + rr];
        if (qi < 0 || qi >= Sq) continue;
      }
      const long long p = static_cast<long long>(qi) + Sk - Sq;
      int lo, hi;
      key_range(P.mask, P.causal, P.window, p, Sk, lo, hi);
      bool meets = lo <= j1 && hi >= j0, whole = all_keys && lo <= j0 && hi >= j1;
      if (DUAL && (!P.global_rows || P.global_rows[static_cast<long long>(b) * Sq + qi] != 0)) {
        key_range(static_cast<int>(AttnMask::Global), P.causal, 1, p, Sk, lo, hi);
        meets = meets || (lo <= j1 && hi >= j0);
        whole = whole || (all_keys && lo <= j0 && hi >= j1);
      }
      if (!meets || whole) continue;
      const long long bh = static_cast<long long>(b) * P.Hq + hk * P.G + itx / ntl;
      const uint4* qr = reinterpret_cast<const uint4*>(static_cast<const bf16_t*>(P.q) + (bh * Sq + qi) * D);
      const uint4* dr = reinterpret_cast<const uint4*>(static_cast<const bf16_t*>(P.dout) + (bh * n + rr) * D);
      for (int c = 0; c < CH; ++c) bad = bad || nonfinite8(qr[c]) || nonfinite8(dr[c]);
    }
    if (__syncthreads_or(bad)) {
      if (tid == 0) P.redo[1 + atomicAdd(P.redo, 1)] = blockIdx.x;
      return;
    }
  }

  // Per-lane ldmatrix offsets (bytes); mat = lane / 8 picks the 8x8 matrix a lane addresses.
  //  a_off : A [row][k] rows warp*16.., matrices (rows 0-7, k 0-7) (8-15, 0-7) (0-7, 8-15) (8-15, 8-15)
  //  bn_off: B stored [n][k], matrices (n 0-7, k 0-7) (n 0-7, k 8-15) (n 8-15, k 0-7) (n 8-15, k 8-15):
  //          registers 0, 1 = b0, b1 of n-block 0; 2, 3 = b0, b1 of n-block 1 (plain)
  //  bk_off: B stored [k][n], matrices (k 0-7, n 0-7) (k 8-15, n 0-7) (k 0-7, n 8-15) (k 8-15, n 8-15),
  //          same register order (.trans)
  //  ds_off: A = dS [query][key] from sdS [key][query] (.trans): stored blocks (keys 0-7, queries
  //          0-7) -> a0, (keys 0-7, queries 8-15) -> a1, (keys 8-15, queries 0-7) -> a2, (8-15, 8-15) -> a3
  const uint32_t a_off = ((warp * 16 + (lane & 15)) * PITCH + (lane >> 4) * 8) * 2;
  const uint32_t bn_off = ((r8 + (mat >> 1) * 8) * PITCH + (mat & 1) * 8) * 2;
  const uint32_t bk_off = ((r8 + (mat & 1) * 8) * PITCH + (mat >> 1) * 8) * 2;
  const uint32_t ds_off = ((r8 + (mat >> 1) * 8) * kSP + warp * 16 + (mat & 1) * 8) * 2;
  const int kb = (warp & 1) * 16 + g;  // bit of key row warp*16 + g in its 32-bit mask word

  uint32_t kf[KVREG ? KS : 1][4], vf[KVREG ? KS : 1][4];
  if (KVREG) {
#pragma unroll
    for (int ks = 0; ks < KS; ++ks) {
      ldmatrix_x4(kf[KVREG ? ks : 0], aK + a_off + ks * 32);
      ldmatrix_x4(vf[KVREG ? ks : 0], aV + a_off + ks * 32);
    }
  }

  float dk[DF][4], dv[DF][4];
#pragma unroll
  for (int f = 0; f < DF; ++f)
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      dk[f][e] = 0.f;
      dv[f][e] = 0.f;
    }

  while (have) {
    // The word of this warp's keys (dual: of the local path; the global path's is 2 kBM on).
    const uint32_t* msk = sMask + ((DUAL ? 0 : buf * 2) + (warp >> 1)) * kBM;
    const float* lds = sLD + (DUAL ? 0 : buf * kBM * 2);

    // ---- S^T, dP^T, P^T, dS^T; dV, dK; dS^T to sdS ----
#pragma unroll 1
    for (int qb = 0; qb < kBM; qb += QC) {
      float s[NQ][4], dp[NQ][4];
#pragma unroll
      for (int i = 0; i < NQ; ++i)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          s[i][e] = 0.f;
          dp[i][e] = 0.f;
        }
      // S^T first, then dP^T: one A operand live at a time.
#pragma unroll
      for (int ks = 0; ks < KS; ++ks) {
        uint32_t ka[4];
        if (KVREG) {
#pragma unroll
          for (int e = 0; e < 4; ++e) ka[e] = kf[KVREG ? ks : 0][e];
        } else {
          ldmatrix_x4(ka, aK + a_off + ks * 32);
        }
#pragma unroll
        for (int nq = 0; nq < QC / 16; ++nq) {
          uint32_t qm[4];
          ldmatrix_x4(qm, aQ + bn_off + ((qb + nq * 16) * PITCH + ks * 16) * 2);
          mma_bf16(s[2 * nq], ka, qm[0], qm[1]);
          mma_bf16(s[2 * nq + 1], ka, qm[2], qm[3]);
        }
      }
#pragma unroll
      for (int ks = 0; ks < KS; ++ks) {
        uint32_t va[4];
        if (KVREG) {
#pragma unroll
          for (int e = 0; e < 4; ++e) va[e] = vf[KVREG ? ks : 0][e];
        } else {
          ldmatrix_x4(va, aV + a_off + ks * 32);
        }
#pragma unroll
        for (int nq = 0; nq < QC / 16; ++nq) {
          uint32_t om[4];
          ldmatrix_x4(om, adO + bn_off + ((qb + nq * 16) * PITCH + ks * 16) * 2);
          mma_bf16(dp[2 * nq], va, om[0], om[1]);
          mma_bf16(dp[2 * nq + 1], va, om[2], om[3]);
        }
      }
      // Element (i, e): key row warp*16 + g + 8 (e >> 1) of the tile, i.e. bit kb + 8 (e >> 1) of
      // the mask word, and tile query qb + 8 i + 2 t + (e & 1).
#pragma unroll
      for (int i = 0; i < NQ && DUAL; ++i) {
        // Dual: P_l, P_g from the one S^T; P^T <- g_l P_l + g_g P_g (for dV),
        // dS^T <- P_l (g_l dP - Dr_l) + P_g (g_g dP - Dr_g).
        const int c0 = qb + i * 8 + 2 * t;
        const uint2 wl = *reinterpret_cast<const uint2*>(msk + c0);           // local masks of c0, c0 + 1
        const uint2 wg = *reinterpret_cast<const uint2*>(msk + 2 * kBM + c0);  // global masks
        const float4 la = *reinterpret_cast<const float4*>(lds + 4 * c0);      // lse2_l, Dr_l, lse2_g, Dr_g of c0
        const float4 lb = *reinterpret_cast<const float4*>(lds + 4 * c0 + 4);  // of c0 + 1
        const float4 gv = *reinterpret_cast<const float4*>(sGt + 2 * c0);      // g_l, g_g of c0, c0 + 1
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int sh = kb + 8 * (e >> 1), c = e & 1;
          const bool vl = (((c ? wl.y : wl.x) >> sh) & 1u) != 0;
          const bool vg = (((c ? wg.y : wg.x) >> sh) & 1u) != 0;
          const float4 lv = c ? lb : la;
          const float gl = c ? gv.z : gv.x, gg = c ? gv.w : gv.y;
          const float d = dp[i][e];
          const float pl = vl ? exp2f(fmaf(s[i][e], scale2, -lv.x)) : 0.f;
          const float pg = vg ? exp2f(fmaf(s[i][e], scale2, -lv.z)) : 0.f;
          s[i][e] = fmaf(gl, pl, gg * pg);
          // dS = P_l (g_l dP - Dr_l) + P_g (g_g dP - Dr_g) = dP P^T - (P_l Dr_l + P_g Dr_g), with the
          // Dr of a path that cannot see the key selected away and dS 0 where neither path sees it:
          // dP, or the other path's Dr, may be NaN there (a NaN value, a NaN row)
          const float dl = vl ? lv.y : 0.f, dg = vg ? lv.w : 0.f;
          dp[i][e] = (vl || vg) ? fmaf(d, s[i][e], -fmaf(pl, dl, pg * dg)) : 0.f;
        }
      }
#pragma unroll
      for (int i = 0; i < NQ && !DUAL; ++i) {
        const int c0 = qb + i * 8 + 2 * t;
        const uint2 mw = *reinterpret_cast<const uint2*>(msk + c0);         // masks of c0, c0 + 1
        const float4 lv = *reinterpret_cast<const float4*>(lds + 2 * c0);   // lse2, Dr of c0, c0 + 1
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int hf = e >> 1, c = e & 1;
          const bool vis = (((c ? mw.y : mw.x) >> (kb + 8 * hf)) & 1u) != 0;
          const float l2 = c ? lv.z : lv.x, dr = c ? lv.w : lv.y;
          const float p = vis ? exp2f(fmaf(s[i][e], scale2, -l2)) : 0.f;
          s[i][e] = p;
          dp[i][e] = vis ? p * (dp[i][e] - dr) : 0.f;  // a select: dP is NaN where v is, seen or not
        }
      }
      // dV_w += P^T dO, dK_w += dS^T Q over the pass's queries, 16 per k-step. A fragment x of
      // k-step kk is C fragment 2kk + (x >> 1), row half x & 1 (a0 a1 a2 a3 = (g, 2t) (g+8, 2t)
      // (g, 8+2t) (g+8, 8+2t)).
#pragma unroll
      for (int kk = 0; kk < QC / 16; ++kk) {
        uint32_t pa[4], da[4];
#pragma unroll
        for (int x = 0; x < 4; ++x) {
          const int i = 2 * kk + (x >> 1), hf = x & 1;
          pa[x] = pack2(s[i][2 * hf], s[i][2 * hf + 1]);
          da[x] = pack2(dp[i][2 * hf], dp[i][2 * hf + 1]);
          // dS^T (key warp*16 + g + 8hf, query qb + 16kk + 8(x >> 1) + 2t .. +1)
          *reinterpret_cast<uint32_t*>(sdS + (warp * 16 + g + 8 * hf) * kSP + qb + 16 * kk + 8 * (x >> 1) + 2 * t) =
              da[x];
        }
#pragma unroll
        for (int nd = 0; nd < KS; ++nd) {
          const uint32_t off = bk_off + ((qb + 16 * kk) * PITCH + nd * 16) * 2;
          uint32_t om[4], qm[4];
          ldmatrix_x4_trans(om, adO + off);
          mma_bf16(dv[2 * nd], pa, om[0], om[1]);
          mma_bf16(dv[2 * nd + 1], pa, om[2], om[3]);
          ldmatrix_x4_trans(qm, aQ + off);
          mma_bf16(dk[2 * nd], da, qm[0], qm[1]);
          mma_bf16(dk[2 * nd + 1], da, qm[2], qm[3]);
        }
      }
    }

    // ---- next active tile: its row data into the other set (the barrier inside prepare also
    // completes sdS), its Q / dout copies issued now (no warp reads sQ, sdO any more) ----
    int nit = it + 1;
    bool nhave = false;
    if (nit >= total) __syncthreads();  // no candidate left: the barrier for sdS
    for (; nit < total; ++nit)
      if (prepare(nit, buf ^ 1)) {
        nhave = true;
        break;
      }
    if (nhave) issue(nit, buf ^ 1);

    // ---- dQ rows 16w..16w+15 of the tile: dQ = dS K, scaled, added with atomics ----
    {
      const long long bh = static_cast<long long>(b) * P.Hq + hk * P.G + it / ntl;
      float* dqh = P.dq + bh * Sq * D;
      const int* qib = sQi + buf * kBM;
      int qr[2];
      qr[0] = qib[warp * 16 + g];
      qr[1] = qib[warp * 16 + g + 8];
#pragma unroll
      for (int dc = 0; dc < D; dc += DQC) {
        float acc[DQC / 8][4];
#pragma unroll
        for (int f = 0; f < DQC / 8; ++f)
#pragma unroll
          for (int e = 0; e < 4; ++e) acc[f][e] = 0.f;
#pragma unroll
        for (int kk = 0; kk < kBN / 16; ++kk) {
          uint32_t a[4];
          ldmatrix_x4_trans(a, aS + ds_off + kk * 16 * kSP * 2);
#pragma unroll
          for (int nd = 0; nd < DQC / 16; ++nd) {
            uint32_t km[4];
            ldmatrix_x4_trans(km, aK + bk_off + (kk * 16 * PITCH + dc + nd * 16) * 2);
            mma_bf16(acc[2 * nd], a, km[0], km[1]);
            mma_bf16(acc[2 * nd + 1], a, km[2], km[3]);
          }
        }
        // acc (f, e): query row warp*16 + g + 8 (e >> 1), column dc + 8 f + 2 t + (e & 1)
#pragma unroll
        for (int hf = 0; hf < 2; ++hf) {
          if (qr[hf] < 0) continue;
          float* row = dqh + static_cast<long long>(qr[hf]) * D + dc + 2 * t;
#pragma unroll
          for (int f = 0; f < DQC / 8; ++f) {
            const float x0 = P.scale * acc[f][2 * hf], x1 = P.scale * acc[f][2 * hf + 1];
#if __CUDA_ARCH__ >= 900
            atomicAdd(reinterpret_cast<float2*>(row + f * 8), make_float2(x0, x1));
#else
            atomicAdd(row + f * 8, x0);
            atomicAdd(row + f * 8 + 1, x1);
#endif
          }
        }
      }
    }

    cp_async_wait<0>();
    __syncthreads();  // next tile's Q, dout landed; every warp is done with sdS and this row set
    it = nit;
    buf ^= 1;
    have = nhave;
  }

  // ---- dK, dV of the warp's keys: this block is their only writer ----
  const long long kvrow0 = static_cast<long long>(bk) * Sk + j0;
  float* dkp = P.dk + kvrow0 * D;
  float* dvp = P.dv + kvrow0 * D;
#pragma unroll
  for (int hf = 0; hf < 2; ++hf) {
    const int jl = warp * 16 + g + 8 * hf;
    if (j0 + jl >= Sk) continue;
#pragma unroll
    for (int f = 0; f < DF; ++f) {
      const long long o = static_cast<long long>(jl) * D + f * 8 + 2 * t;
      float2 x = *reinterpret_cast<float2*>(dkp + o);
      x.x += P.scale * dk[f][2 * hf];
      x.y += P.scale * dk[f][2 * hf + 1];
      *reinterpret_cast<float2*>(dkp + o) = x;
      float2 y = *reinterpret_cast<float2*>(dvp + o);
      y.x += dv[f][2 * hf];
      y.y += dv[f][2 * hf + 1];
      *reinterpret_cast<float2*>(dvp + o) = y;
    }
  }
#endif
}

// ---------------------------------------------------------------------------------------------
// 3. The exact path: the key tiles attn_bwd_mma listed in P.redo (count, then block indices),
//    one block each in turn, in runs of P.KT keys through bwd_key_run (attention_generic.cuh).
//    path: 0 attention; the dual backward runs it twice, 1 (local) then 2 (global).
// ---------------------------------------------------------------------------------------------
constexpr int kRedoThreads = 256;
constexpr int kRedoKeys = 32;  // keys per run: 4 float tiles of 32 x D in shared memory

template <int DPL>
__global__ void __launch_bounds__(kRedoThreads) attn_bwd_redo(BwdParams P, int path) {
  extern __shared__ __align__(16) float rsm[];
  const int count = P.redo[0];
  for (int item = blockIdx.x; item < count; item += gridDim.x) {
    const int blk = P.redo[1 + item];
    const int bk = blk / P.tiles, jt = (blk % P.tiles) * kBN;
    for (int j0 = jt; j0 < min(jt + kBN, P.Sk); j0 += P.KT)
      bwd_key_run<bf16_t, DPL>(P, bk, j0, min(P.KT, P.Sk - j0), path, rsm);
  }
}
// emu:end bwd

// ---------------------------------------------------------------------------------------------
// Host side
// ---------------------------------------------------------------------------------------------
int device_major() {
  static const int major = [] {
    int dev = 0, v = 0;
    if (cudaGetDevice(&dev) == cudaSuccess && cudaDeviceGetAttribute(&v, cudaDevAttrComputeCapabilityMajor, dev) == cudaSuccess)
      return v;
    return 0;
  }();
  return major;
}

bool aligned_to(const void* p, uintptr_t a) { return reinterpret_cast<uintptr_t>(p) % a == 0; }

template <int D, bool DUAL>
int launch_t(const BwdParams& P0, int64_t BKV, const char* name) {
  BwdParams P = P0;
  P.KT = kBN;
  P.tiles = (P.Sk + kBN - 1) / kBN;
  const int64_t blocks = BKV * P.tiles;
  const long long rows = static_cast<long long>(BKV) * P.G * P.n;  // B * Hq * n
  constexpr int rows_per_block = (kDotThreads / 32) * (32 / (D / 8));
  const long long dot_blocks = (rows + rows_per_block - 1) / rows_per_block;
  if (blocks > INT_MAX || dot_blocks > INT_MAX) return set_error(std::string(name) + ": too many blocks");
  constexpr int smem = bwd_smem_bytes<D, DUAL>();
  DR_CUDA_TRY(
      check(cudaFuncSetAttribute(attn_bwd_mma<D, DUAL>, cudaFuncAttributeMaxDynamicSharedMemorySize, smem), name));

  void* scratch = nullptr;  // Dr (dual: Dr_l, then Dr_g), then the redo list (count, block indices)
  DR_CUDA_TRY(scratch_alloc(&scratch, static_cast<size_t>(rows) * (DUAL ? 2 : 1) * sizeof(float) +
                                          static_cast<size_t>(blocks + 1) * sizeof(int)));
  float* dr = static_cast<float*>(scratch);
  float* dr_g = DUAL ? dr + rows : nullptr;
  P.redo = reinterpret_cast<int*>(dr + rows * (DUAL ? 2 : 1));
  attn_bwd_dot<D, DUAL><<<static_cast<unsigned>(dot_blocks), kDotThreads, 0, stream()>>>(
      static_cast<const bf16_t*>(P.out), static_cast<const bf16_t*>(P.dout), dr, rows,
      static_cast<const bf16_t*>(P.out_g), static_cast<const bf16_t*>(P.gates), dr_g, P.gates_per_head, P.Hq, P.Sq);
  int status = check_launch(name);
  if (status == 0) status = check(cudaMemsetAsync(P.redo, 0, sizeof(int), stream()), name);
  if (status == 0) {
    attn_bwd_mma<D, DUAL><<<static_cast<unsigned>(blocks), kBwdThreads, smem, stream()>>>(P, dr, dr_g);
    status = check_launch(name);
  }
  // The exact path for the listed key tiles (none unless an input is not finite: then its blocks
  // exit at once). Its grid covers the device twice; each block takes listed tiles in turn.
  BwdParams Pr = P;
  Pr.KT = kRedoKeys;
  const unsigned redo_grid = static_cast<unsigned>(std::min<int64_t>(blocks, 2LL * multiprocessor_count()));
  const int rsmem = 4 * kRedoKeys * D * static_cast<int>(sizeof(float)) + kRedoKeys;
  if (status == 0)
    status = check(cudaFuncSetAttribute(attn_bwd_redo<D / 32>, cudaFuncAttributeMaxDynamicSharedMemorySize, rsmem), name);
  for (int path = DUAL ? 1 : 0; status == 0 && path <= (DUAL ? 2 : 0); ++path) {
    attn_bwd_redo<D / 32><<<redo_grid, kRedoThreads, rsmem, stream()>>>(Pr, path);
    status = check_launch(name);
  }
  // Stream order: the next user of this block runs after the main kernel.
  const int rel = scratch_release(scratch);
  return status ? status : rel;
}

}  // namespace

bool bwd_mma_supported(const BwdParams& P, int32_t dtype) {
  if (static_cast<DType>(dtype) != DType::BF16) return false;
  if (P.D != 32 && P.D != 64 && P.D != 128) return false;
  const char* env = std::getenv("DUALROUTE_CUDA_ATTN_BWD");
  if (env && std::strcmp(env, "generic") == 0) return false;
  // cp.async / uint4 loads of q, k, v, out, dout rows (16 bytes), float2 updates of dq, dk, dv.
  if (!aligned_to(P.q, 16) || !aligned_to(P.k, 16) || !aligned_to(P.v, 16) || !aligned_to(P.out, 16) ||
      !aligned_to(P.dout, 16) || !aligned_to(P.dq, 8) || !aligned_to(P.dk, 8) || !aligned_to(P.dv, 8))
    return false;
  if (P.out_g && !aligned_to(P.out_g, 16)) return false;  // the dual backward's global output
  return device_major() >= 8;
}

int launch_bwd_mma(const BwdParams& P, int64_t BKV, const char* name) {
  if (BKV <= 0 || P.Sk <= 0 || P.n <= 0 || P.G <= 0) return 0;
  if (P.D == 32) return launch_t<32, false>(P, BKV, name);
  if (P.D == 64) return launch_t<64, false>(P, BKV, name);
  if (P.D == 128) return launch_t<128, false>(P, BKV, name);
  return set_error(std::string(name) + ": the tensor-core backward takes head dims 32, 64, 128");
}

int launch_bwd_mma_dual(const BwdParams& P, int64_t BKV, const char* name) {
  if (BKV <= 0 || P.Sk <= 0 || P.n <= 0 || P.G <= 0) return 0;
  if (P.qidx || P.n != P.Sq || !P.out_g || !P.lse_g || !P.gates)
    return set_error(std::string(name) + ": the dual backward needs out_g, lse_g, gates, no query_index, n == Sq");
  if (P.D == 32) return launch_t<32, true>(P, BKV, name);
  if (P.D == 64) return launch_t<64, true>(P, BKV, name);
  if (P.D == 128) return launch_t<128, true>(P, BKV, name);
  return set_error(std::string(name) + ": the tensor-core backward takes head dims 32, 64, 128");
}

}  // namespace cuda
}  // namespace dualroute
