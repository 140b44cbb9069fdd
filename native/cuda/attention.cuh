// Internal to the attention kernels (attention.cu, attention_bwd.cu): the key interval of a
// query, the backward's parameters and the tensor-core backward's entry points.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

#include "../core/attention.h"

namespace dualroute {
namespace cuda {

constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

// Keys visible to a query at position p, as an inclusive interval clipped to [0, Sk); empty
// when lo > hi. window is clamped by the host to <= 2^40, which changes nothing (|p|, j < 2^31)
// but keeps p +- window from overflowing. Block uses C++ truncating division, exactly the
// contract's `j / window == p / window`.
__device__ __forceinline__ void key_range(int mask, int causal, long long window, long long p, int Sk, int& lo,
                                          int& hi) {
  long long a, z;
  if (mask == static_cast<int>(AttnMask::Sliding)) {
    a = p - window + 1;
    z = causal ? p : p + window - 1;
  } else if (mask == static_cast<int>(AttnMask::Block)) {
    const long long qb = p / window;
    if (qb < 0) {
      a = 1;
      z = 0;
    } else {
      a = qb * window;
      z = a + window - 1;
      if (causal) z = min(z, p);
    }
  } else {
    a = 0;
    z = causal ? p : static_cast<long long>(Sk) - 1;
  }
  a = max(a, 0LL);
  z = min(z, static_cast<long long>(Sk) - 1);
  if (a > z) {
    lo = 0;
    hi = -1;
  } else {
    lo = static_cast<int>(a);
    hi = static_cast<int>(z);
  }
}

// Maximum that propagates NaN (fmaxf drops it): a NaN score makes its row NaN, as the
// materialised softmax(q k^T) v does.
__device__ __forceinline__ float nan_max(float a, float b) { return (b > a || b != b) ? b : a; }
__device__ __forceinline__ float warp_nan_max(float v) {
#pragma unroll
  for (int m = 16; m > 0; m >>= 1) v = nan_max(v, __shfl_xor_sync(0xffffffffu, v, m));
  return v;
}

// Whether keys [lo, hi] hold one that is not padded (pad: the batch's flags, or null). Every
// lane of the warp calls it with the same arguments. Used only where a row's softmax sum is 0,
// to tell a row that sees no key (out 0, lse -inf) from one whose visible scores are all -inf
// (out and lse NaN).
__device__ __forceinline__ bool warp_has_key(const uint8_t* pad, int lo, int hi, int lane) {
  if (lo > hi) return false;
  if (!pad) return true;
  bool any = false;
  for (int j = lo + lane; j <= hi && !any; j += 32) any = pad[j] == 0;
  return __ballot_sync(0xffffffffu, any) != 0u;
}
// The same for one thread alone.
__device__ __forceinline__ bool has_key(const uint8_t* pad, int lo, int hi) {
  if (lo > hi) return false;
  if (!pad) return true;
  for (int j = lo; j <= hi; ++j)
    if (!pad[j]) return true;
  return false;
}

// A row's output factor and lse (natural log) from its softmax state in the log2 domain (max
// m, sum l): no visible key gives factor 0 and lse -inf; otherwise 1 / l and (m + log2 l) ln 2,
// where l = 0 (every visible score -inf) or NaN gives NaN.
__device__ __forceinline__ float row_inv(bool has, float l) { return !has ? 0.f : l > 0.f ? 1.f / l : NAN; }
__device__ __forceinline__ float row_lse(bool has, float m, float l) {
  return !has ? -INFINITY : l > 0.f ? (m + log2f(l)) * kLn2 : NAN;
}

struct BwdParams {
  const void* q;
  const void* k;
  const void* v;
  const void* out;
  const void* dout;
  const float* lse;
  float* dq;
  float* dk;
  float* dv;
  int Hq, Hkv, G, Sq, Sk, n, D;
  int causal, mask;
  long long window;
  float scale;
  const uint8_t* pad;
  const int32_t* qidx;
  const int32_t* qcount;  // [B] or null: rows r >= qcount[b] are ragged padding (no gradient)
  int KT;     // keys per block
  int tiles;  // key tiles per (b, kv head)
  // Dual backward only (qidx null, n == Sq): out/lse above are the local path's, these the
  // global path's; gates [B, Sq, 2] or [B, Hq, Sq, 2] (dtype of q); global_rows [B, Sq] or null.
  const void* out_g;
  const float* lse_g;
  const void* gates;
  int gates_per_head;
  const uint8_t* global_rows;
  // Tensor-core backward only: the key tiles it leaves to the exact path (attn_bwd_redo),
  // redo[0] their count, then their block indices.
  int* redo;
};

// attention_bwd.cu: the bf16 tensor-core backward (FlashAttention-2 style) for head dims 32,
// 64 and 128. bwd_mma_supported says whether it takes these parameters; launch_bwd_mma runs
// it for BKV = B * Hkv (kv heads) and returns 0 or an error code set with set_error.
bool bwd_mma_supported(const BwdParams& P, int32_t dtype);
int launch_bwd_mma(const BwdParams& P, int64_t BKV, const char* name);
// The dual backward in one pass (both paths' P and dS from one S and one dP per tile): adds
// into dq, dk, dv what the two attention backwards with gate-scaled douts would. Same support
// rule as bwd_mma_supported (out_g must be 16-byte aligned too).
int launch_bwd_mma_dual(const BwdParams& P, int64_t BKV, const char* name);

}  // namespace cuda
}  // namespace dualroute
