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
  int KT;     // keys per block
  int tiles;  // key tiles per (b, kv head)
  // Dual backward only (qidx null, n == Sq): out/lse above are the local path's, these the
  // global path's; gates [B, Sq, 2] or [B, Hq, Sq, 2] (dtype of q); global_rows [B, Sq] or null.
  const void* out_g;
  const float* lse_g;
  const void* gates;
  int gates_per_head;
  const uint8_t* global_rows;
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
