// The generic attention backward over one run of keys, shared by attn_bwd_warp (attention.cu:
// float32, and bf16 at head dims the tensor-core kernel does not take) and attn_bwd_redo
// (attention_bwd.cu: the exact path of the tensor-core backward, for key tiles whose inputs
// are not all finite). Include after device.cuh (ld, st, warp_sum); test/cuda_emu includes it
// after device.cuh's helpers.
//
// Every (query row, key) pair outside the row's mask is skipped, never multiplied by zero, so a
// NaN or an infinity in q, k, v or dout reaches exactly the gradients the materialised
// softmax(q k^T) v backward gives it: P = exp(s - lse) (NaN when lse is NaN),
// dS = P (dout.v - dout.out), dv += P dout, dk += scale dS q, dq += scale dS k.
#pragma once

#include "attention.cuh"

namespace dualroute {
namespace cuda {

// Keys [j0, j0 + nk) of (b, kv head) bk, nk <= P.KT, by the whole block (its warps walk the query
// rows of every query head of the group that can see the keys): K, V, dK, dV of the keys in
// float shared memory (smem: 4 P.KT P.D floats and P.KT bytes), dq flushed with atomicAdd once
// per row, dk and dv added with plain read-modify-write at the end (the caller's block owns
// these keys). path: 0 attention (P.mask, P.out, P.lse, P.dout); 1 and 2 the local and the
// global path of the dual backward, whose dout is the row's gate (P.gates column 0 or 1) times
// P.dout, with P.out / P.lse (local, P.mask) or P.out_g / P.lse_g (Global, rows of global_rows).
template <typename T, int DPL>
__device__ void bwd_key_run(const BwdParams& P, int bk, int j0, int nk, int path, float* smem) {
  const int D = P.D, KT = P.KT;
  float* sK = smem;
  float* sV = sK + KT * D;
  float* sdK = sV + KT * D;
  float* sdV = sdK + KT * D;
  unsigned char* sOk = reinterpret_cast<unsigned char*>(sdV + KT * D);

  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
  const int b = bk / P.Hkv, hk = bk % P.Hkv;
  const long long kvbase = (static_cast<long long>(bk) * P.Sk + j0) * D;
  for (int e = threadIdx.x; e < nk * D; e += blockDim.x) {
    sK[e] = ld(static_cast<const T*>(P.k)[kvbase + e]);
    sV[e] = ld(static_cast<const T*>(P.v)[kvbase + e]);
    sdK[e] = 0.f;
    sdV[e] = 0.f;
  }
  for (int e = threadIdx.x; e < nk; e += blockDim.x)
    sOk[e] = !(P.pad && P.pad[static_cast<long long>(b) * P.Sk + j0 + e]);
  __syncthreads();

  const bool global = path == 2;
  const int mask = global ? static_cast<int>(AttnMask::Global) : P.mask;
  const long long window = global ? 1 : P.window;
  const T* outs = static_cast<const T*>(global ? P.out_g : P.out);
  const float* lses = global ? P.lse_g : P.lse;
  const int j1 = j0 + nk - 1;
  const long long rows = static_cast<long long>(P.G) * P.n;
  for (long long w = warp; w < rows; w += nwarps) {
    const int h = hk * P.G + static_cast<int>(w / P.n);
    const int r = static_cast<int>(w % P.n);
    if (P.qcount && r >= P.qcount[b]) continue;  // ragged padding: no gradient, index never read
    int qi = r;
    if (P.qidx) {
      qi = P.qidx[static_cast<long long>(b) * P.n + r];
      if (qi < 0 || qi >= P.Sq) continue;  // the forward has reported it
    }
    if (global && P.global_rows && !P.global_rows[static_cast<long long>(b) * P.Sq + qi]) continue;
    int lo, hi;
    key_range(mask, P.causal, window, static_cast<long long>(qi) + P.Sk - P.Sq, P.Sk, lo, hi);
    lo = max(lo, j0);
    hi = min(hi, j1);
    if (lo > hi) continue;
    const long long bh = static_cast<long long>(b) * P.Hq + h;
    const long long orow = bh * P.n + r;
    const float lse = lses[orow];
    if (lse == -INFINITY) continue;
    float gate = 1.f;
    if (path) {
      const T* gp = static_cast<const T*>(P.gates) + 2 * (P.gates_per_head ? orow : static_cast<long long>(b) * P.Sq + r);
      gate = ld(gp[path - 1]);
    }
    const T* qp = static_cast<const T*>(P.q) + (bh * P.Sq + qi) * D;
    const T* op = outs + orow * D;
    const T* dop = static_cast<const T*>(P.dout) + orow * D;
    float q[DPL], dO[DPL], dq[DPL], dr = 0.f;
#pragma unroll
    for (int k = 0; k < DPL; ++k) {
      const int d = lane + 32 * k;
      q[k] = d < D ? ld(qp[d]) : 0.f;
      dO[k] = d < D ? gate * ld(dop[d]) : 0.f;
      dr += d < D ? dO[k] * ld(op[d]) : 0.f;
      dq[k] = 0.f;
    }
    dr = warp_sum(dr);
    bool any = false;
    for (int j = lo; j <= hi; ++j) {
      const int jj = j - j0;
      if (!sOk[jj]) continue;
      any = true;
      const float* kr = sK + jj * D;
      const float* vr = sV + jj * D;
      float sdot = 0.f, pdot = 0.f;
#pragma unroll
      for (int k = 0; k < DPL; ++k) {
        const int d = lane + 32 * k;
        if (d < D) {
          sdot += q[k] * kr[d];
          pdot += dO[k] * vr[d];
        }
      }
      const float s = warp_sum(sdot) * P.scale;
      const float dp = warp_sum(pdot);
      const float p = expf(s - lse);
      const float ds = p * (dp - dr) * P.scale;
#pragma unroll
      for (int k = 0; k < DPL; ++k) {
        const int d = lane + 32 * k;
        if (d < D) {
          atomicAdd(&sdV[jj * D + d], p * dO[k]);
          atomicAdd(&sdK[jj * D + d], ds * q[k]);
          dq[k] += ds * kr[d];
        }
      }
    }
    if (any) {
      float* dqp = P.dq + (bh * P.Sq + qi) * D;
#pragma unroll
      for (int k = 0; k < DPL; ++k) {
        const int d = lane + 32 * k;
        if (d < D) atomicAdd(&dqp[d], dq[k]);
      }
    }
  }
  __syncthreads();
  for (int e = threadIdx.x; e < nk * D; e += blockDim.x) {
    P.dk[kvbase + e] += sdK[e];
    P.dv[kvbase + e] += sdV[e];
  }
  __syncthreads();  // the shared memory may be reused by the caller's next run
}

}  // namespace cuda
}  // namespace dualroute
