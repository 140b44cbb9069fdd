// Small helpers shared by the CUDA kernel sources (backward, norm, softmax, optim, reduce,
// index, elementwise): dtype checks, grid sizing, element conversions, 16-byte packs, warp /
// block reductions and the host side of a "smallest bad index" device slot; the activation
// functions (act_gelu, act_silu, ... and their gradients) come with it from activations.cuh.
//
// Everything here is header-only: host functions are `inline`, device functions
// `__device__ __forceinline__`, so every translation unit gets its own copy and the backend
// builds without separable compilation (-rdc). Device *variables* (such as a bad-index slot)
// must stay in the .cu file that uses them: a __device__ variable defined in a header would be
// a separate object in each translation unit.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>

#include <mutex>

#include "activations.cuh"
#include "common.cuh"

namespace dualroute {
namespace cuda {

using bf16_t = __nv_bfloat16;

// ---- host: dtype checks and grid sizing --------------------------------------------------
inline DType dt(const View& v) { return static_cast<DType>(v.dtype); }

inline int f64_error(const char* k) {
  return set_error(std::string(k) + ": float64 is CPU-only; move the tensor to the cpu");
}
// The error for a dtype kernel `k` does not handle on the GPU.
inline int dtype_error(const char* k, const View& v) {
  if (dt(v) == DType::F64) return f64_error(k);
  return set_error(std::string(k) + ": dtype " + dtype_name(dt(v)) + " is not supported on cuda");
}

// A grid of `blocks` blocks, at least 1 and at most 32 per SM (grid-stride kernels loop).
inline int grid_cap(int64_t blocks) {
  const int64_t cap = static_cast<int64_t>(multiprocessor_count()) * 32;
  return static_cast<int>(std::max<int64_t>(1, std::min(blocks, cap)));
}

// Threads per block of the element-wise grid-stride loops, and the (capped) grid for n items.
constexpr int kThreads = 256;
inline int grid_for(int64_t n) { return grid_cap((n + kThreads - 1) / kThreads); }

inline bool aligned(const void* p, size_t a) { return reinterpret_cast<uintptr_t>(p) % a == 0; }

// ---- device: indexing, packs, conversions ------------------------------------------------
__device__ __forceinline__ int64_t gtid() { return static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; }
__device__ __forceinline__ int64_t gstride() { return static_cast<int64_t>(gridDim.x) * blockDim.x; }

// V elements of T moved as one aligned load / store (16 bytes for V = 16 / sizeof(T)).
template <typename T, int V>
struct alignas(sizeof(T) * V) Pack {
  T v[V];
};

// ld: a stored element as the type it is computed in (float for float32 / bfloat16).
__device__ __forceinline__ float ld(float v) { return v; }
__device__ __forceinline__ float ld(bf16_t v) { return __bfloat162float(v); }
__device__ __forceinline__ int32_t ld(int32_t v) { return v; }
// st<T>: a float result as a stored T (bfloat16 rounds to nearest even).
template <typename T>
__device__ __forceinline__ T st(float v);
template <>
__device__ __forceinline__ float st<float>(float v) { return v; }
template <>
__device__ __forceinline__ bf16_t st<bf16_t>(float v) { return __float2bfloat16_rn(v); }

// ---- device: float warp / block reductions -----------------------------------------------
// Plain float sum / fmaxf (fmaxf drops a NaN operand); reduce.cu has its own NaN-propagating
// reducers.
__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int m = 16; m > 0; m >>= 1) v += __shfl_xor_sync(0xffffffffu, v, m);
  return v;
}
__device__ __forceinline__ double warp_sum(double v) {
#pragma unroll
  for (int m = 16; m > 0; m >>= 1) v += __shfl_xor_sync(0xffffffffu, v, m);
  return v;
}
__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int m = 16; m > 0; m >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, m));
  return v;
}

namespace detail {
template <bool MAX>
__device__ __forceinline__ float block_reduce_f(float v, float* smem) {
  v = MAX ? warp_max(v) : warp_sum(v);
  const int w = threadIdx.x >> 5, l = threadIdx.x & 31;
  __syncthreads();
  if (l == 0) smem[w] = v;
  __syncthreads();
  v = l < static_cast<int>(blockDim.x >> 5) ? smem[l] : (MAX ? -INFINITY : 0.0f);
  return MAX ? warp_max(v) : warp_sum(v);
}
}  // namespace detail

// Over the whole block (blockDim.x a multiple of 32, at most 1024); smem holds 32 floats.
// All threads get the result; the leading barrier protects smem from its previous use.
__device__ __forceinline__ float block_sum(float v, float* smem) { return detail::block_reduce_f<false>(v, smem); }
__device__ __forceinline__ float block_max(float v, float* smem) { return detail::block_reduce_f<true>(v, smem); }

// ---- device: warp selection and the online softmax ------------------------------------------
// The selection order of the routers and segment selections: a before b when a is NaN and b is
// not, or larger, or equal with the lower index.
__device__ __forceinline__ bool sel_before(float a, int ia, float b, int ib) {
  const bool na = a != a, nb = b != b;
  if (na != nb) return na;
  if (!na && a != b) return a > b;
  return ia < ib;
}

// The warp's first (value, index) in the selection order (index -1: none), on every lane.
__device__ __forceinline__ void warp_best(float& v, int& i) {
#pragma unroll
  for (int m = 16; m > 0; m >>= 1) {
    const float ov = __shfl_xor_sync(0xffffffffu, v, m);
    const int oi = __shfl_xor_sync(0xffffffffu, i, m);
    if (oi >= 0 && (i < 0 || sel_before(ov, oi, v, i))) {
      v = ov;
      i = oi;
    }
  }
}

// One key of a warp's online softmax over a query row whose head dim is strided over the lanes
// (DPL values per lane; q already scaled): the score (one warp sum), the running max (NaN
// propagating), the sum and the accumulator.
template <typename T, int DPL>
__device__ __forceinline__ void online_key(const float (&q)[DPL], const T* kr, const T* vr, int D, int lane, float& m,
                                           float& l, float (&acc)[DPL]) {
  float dot = 0.f;
#pragma unroll
  for (int c = 0; c < DPL; ++c) {
    const int d = lane + 32 * c;
    if (d < D) dot += q[c] * ld(kr[d]);
  }
  const float sc = warp_sum(dot);
  const float mn = (sc > m || sc != sc) ? sc : m;
  const float mu = mn == -INFINITY ? 0.f : mn;
  const float alpha = expf(m - mu), pj = expf(sc - mu);
  l = l * alpha + pj;
  m = mn;
#pragma unroll
  for (int c = 0; c < DPL; ++c) {
    const int d = lane + 32 * c;
    if (d < D) acc[c] = acc[c] * alpha + pj * ld(vr[d]);
  }
}

// ---- bad-index slot ----------------------------------------------------------------------
// A kernel that meets an index outside its range never dereferences it; it records the
// smallest offending position in a `__device__ unsigned long long` slot (defined in the .cu
// file, ~0 when none), and the host entry reads it back after the launch and reports a
// RangeError. Callers serialise reset, launch and read-back with their own mutex.
__device__ __forceinline__ void record_bad(unsigned long long* slot, int64_t pos) {
  atomicMin(slot, static_cast<unsigned long long>(pos));
}

// Before the launch: the slot's device address (*slot) and its reset to ~0 on the stream.
// what_addr / what_reset name the failing step in an error message.
inline int bad_slot_reset(const unsigned long long& symbol, void** slot, const char* what_addr,
                          const char* what_reset) {
  *slot = nullptr;
  DR_CUDA_TRY(check(cudaGetSymbolAddress(slot, symbol), what_addr));
  return check(cudaMemsetAsync(*slot, 0xff, sizeof(unsigned long long), stream()), what_reset);
}

// After the launch: waits for the stream and returns the recorded position in *bad (~0: none).
inline int bad_slot_read(void* slot, unsigned long long* bad, const char* name) {
  *bad = 0;
  DR_CUDA_TRY(check(cudaMemcpyAsync(bad, slot, sizeof(*bad), cudaMemcpyDeviceToHost, stream()), name));
  return check(cudaStreamSynchronize(stream()), name);
}

// Copies one int32 (the offending index) from device memory, waiting for the stream.
inline int read_index(const int32_t* p, int32_t* v, const char* name) {
  *v = 0;
  DR_CUDA_TRY(check(cudaMemcpyAsync(v, p, sizeof(*v), cudaMemcpyDeviceToHost, stream()), name));
  return check(cudaStreamSynchronize(stream()), name);
}

// The whole round trip, for every entry that checks indices on the device: under `mu`, reset the
// slot of `symbol`, launch(slot) (returns a status; kernels get the slot's device address or use
// the symbol), wait, and turn a recorded position p into set_error(describe(p, indices[p])).
template <typename Launch, typename Describe>
int with_bad_slot(std::mutex& mu, const unsigned long long& symbol, const char* name, const int32_t* indices,
                  Launch&& launch, Describe&& describe) {
  std::lock_guard<std::mutex> lock(mu);
  void* slot = nullptr;
  DR_CUDA_TRY(bad_slot_reset(symbol, &slot, name, name));
  DR_CUDA_TRY(launch(static_cast<unsigned long long*>(slot)));
  unsigned long long bad = 0;
  DR_CUDA_TRY(bad_slot_read(slot, &bad, name));
  if (bad == ~0ull) return 0;
  int32_t v = 0;
  DR_CUDA_TRY(read_index(indices + bad, &v, name));
  return set_error(describe(static_cast<long long>(bad), v));
}

}  // namespace cuda
}  // namespace dualroute
