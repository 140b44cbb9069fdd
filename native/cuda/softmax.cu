// Softmax, log-softmax and cross-entropy on the GPU.
//
// softmax: x, out contiguous [outer, dim, inner], normalised over dim:
//   m = max_j x[j];  softmax = exp(x - m) / sum_j exp(x[j] - m);  log-softmax = x - m - log(sum)
// Subtracting the max keeps exp from overflowing; it cancels in the ratio.
// Launch layouts:
//  - inner == 1, dim <= 1024: one warp per row (8 rows per 256-thread block); the row lives in
//    registers, K = dim/32 rounded up to a power of two values per lane (template), so x is
//    read once and out written once.
//  - inner == 1, dim > 1024: one 512-thread block per row, three passes over the row (max,
//    sum, write); the row is re-read from L1/L2.
//  - inner > 1: one thread per (outer, inner) pair walking dim with stride inner; neighbouring
//    threads read neighbouring addresses, so loads still coalesce.
//
// cross_entropy: logits contiguous [rows, C] (float32/bfloat16), targets int32 [rows], loss
// float32 [rows], lse float32 [rows] or null. Per row, with s the label smoothing:
//   lse = m + log(sum_j exp(x[j] - m));  loss = lse - (1 - s) x[t] - (s / C) sum_j x[j]
// and loss = 0 where t == ignore_index (lse is still written, the backward pass wants it).
// One warp per row for C <= 1024, one block per row above (vocabularies). A target outside
// [0, C) is never read: the kernel keeps the smallest such row in a device slot, and the
// entry waits for the stream and reports it as a RangeError.
#include <algorithm>
#include <cmath>
#include <mutex>
#include <string>

#include "device.cuh"

namespace dualroute {
namespace cuda {
namespace {

// ---- softmax -----------------------------------------------------------------------------
template <typename T, int K>
__global__ void softmax_warp(T* __restrict__ out, const T* __restrict__ x, int64_t rows, int dim, int log) {
  const int lane = threadIdx.x & 31;
  const int64_t warps = (static_cast<int64_t>(gridDim.x) * blockDim.x) >> 5;
  for (int64_t r = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) >> 5; r < rows; r += warps) {
    const T* px = x + r * dim;
    T* po = out + r * dim;
    float v[K];
    float m = -INFINITY;
#pragma unroll
    for (int k = 0; k < K; ++k) {
      const int j = lane + 32 * k;
      v[k] = j < dim ? ld(px[j]) : -INFINITY;
      m = fmaxf(m, v[k]);
    }
    m = warp_max(m);
    float s = 0.0f;
#pragma unroll
    for (int k = 0; k < K; ++k) {
      const int j = lane + 32 * k;
      if (j < dim) s += expf(v[k] - m);
    }
    s = warp_sum(s);
    const float ls = logf(s);
#pragma unroll
    for (int k = 0; k < K; ++k) {
      const int j = lane + 32 * k;
      if (j < dim) po[j] = st<T>(log ? v[k] - m - ls : expf(v[k] - m) / s);
    }
  }
}

template <typename T>
__global__ void softmax_block(T* __restrict__ out, const T* __restrict__ x, int64_t rows, int64_t dim, int log) {
  __shared__ float smem[32];
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const T* px = x + r * dim;
    T* po = out + r * dim;
    float m = -INFINITY;
    for (int64_t j = threadIdx.x; j < dim; j += blockDim.x) m = fmaxf(m, ld(px[j]));
    m = block_max(m, smem);
    float s = 0.0f;
    for (int64_t j = threadIdx.x; j < dim; j += blockDim.x) s += expf(ld(px[j]) - m);
    s = block_sum(s, smem);
    const float ls = logf(s);
    for (int64_t j = threadIdx.x; j < dim; j += blockDim.x) {
      const float v = ld(px[j]);
      po[j] = st<T>(log ? v - m - ls : expf(v - m) / s);
    }
  }
}

template <typename T>
__global__ void softmax_inner(T* __restrict__ out, const T* __restrict__ x, int64_t outer, int64_t dim, int64_t inner,
                              int log) {
  const int64_t total = outer * inner;
  for (int64_t p = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; p < total;
       p += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t o = p / inner, i = p - o * inner;
    const T* px = x + o * dim * inner + i;
    T* po = out + o * dim * inner + i;
    float m = -INFINITY;
    for (int64_t j = 0; j < dim; ++j) m = fmaxf(m, ld(px[j * inner]));
    float s = 0.0f;
    for (int64_t j = 0; j < dim; ++j) s += expf(ld(px[j * inner]) - m);
    const float ls = logf(s);
    for (int64_t j = 0; j < dim; ++j) {
      const float v = ld(px[j * inner]);
      po[j * inner] = st<T>(log ? v - m - ls : expf(v - m) / s);
    }
  }
}

template <typename T>
int launch_softmax(T* out, const T* x, int64_t outer, int64_t dim, int64_t inner, int log) {
  if (inner == 1 && dim <= 1024) {
    const int blocks = grid_cap((outer + 7) / 8);
    const int d = static_cast<int>(dim);
    if (dim <= 32) softmax_warp<T, 1><<<blocks, 256, 0, stream()>>>(out, x, outer, d, log);
    else if (dim <= 64) softmax_warp<T, 2><<<blocks, 256, 0, stream()>>>(out, x, outer, d, log);
    else if (dim <= 128) softmax_warp<T, 4><<<blocks, 256, 0, stream()>>>(out, x, outer, d, log);
    else if (dim <= 256) softmax_warp<T, 8><<<blocks, 256, 0, stream()>>>(out, x, outer, d, log);
    else if (dim <= 512) softmax_warp<T, 16><<<blocks, 256, 0, stream()>>>(out, x, outer, d, log);
    else softmax_warp<T, 32><<<blocks, 256, 0, stream()>>>(out, x, outer, d, log);
  } else if (inner == 1) {
    softmax_block<T><<<grid_cap(outer), 512, 0, stream()>>>(out, x, outer, dim, log);
  } else {
    softmax_inner<T><<<grid_cap((outer * inner + 255) / 256), 256, 0, stream()>>>(out, x, outer, dim, inner, log);
  }
  return check_launch(log ? "log_softmax" : "softmax");
}

// ---- cross entropy -----------------------------------------------------------------------
__device__ unsigned long long g_ce_bad_row;  // smallest row with a bad target, ~0 if none

template <typename T, int G>
__global__ void cross_entropy_kernel(float* __restrict__ loss, float* __restrict__ lse_out, const T* __restrict__ x,
                                     const int32_t* __restrict__ targets, int64_t tstride, int64_t rows, int64_t C,
                                     int32_t ignore_index, float smoothing) {
  __shared__ float smem[32];
  const int lane = threadIdx.x % G;
  const int64_t per_block = blockDim.x / G;
  for (int64_t r = blockIdx.x * per_block + threadIdx.x / G; r < rows; r += gridDim.x * per_block) {
    const T* px = x + r * C;
    float m = -INFINITY;
    for (int64_t j = lane; j < C; j += G) m = fmaxf(m, ld(px[j]));
    m = G == 32 ? warp_max(m) : block_max(m, smem);
    float s = 0.0f, sx = 0.0f;
    for (int64_t j = lane; j < C; j += G) {
      const float v = ld(px[j]);
      s += expf(v - m);
      sx += v;
    }
    s = G == 32 ? warp_sum(s) : block_sum(s, smem);
    if (smoothing != 0.0f) sx = G == 32 ? warp_sum(sx) : block_sum(sx, smem);
    if (lane == 0) {
      const float lse = m + logf(s);
      if (lse_out) lse_out[r] = lse;
      const int32_t t = targets[r * tstride];
      float l = 0.0f;
      if (t == ignore_index) {
        l = 0.0f;
      } else if (t < 0 || static_cast<int64_t>(t) >= C) {
        record_bad(&g_ce_bad_row, r);
        l = NAN;
      } else {
        l = lse - (1.0f - smoothing) * ld(px[t]);
        // skipped when s == 0 so that -inf logits (masking) do not turn 0 * -inf into NaN
        if (smoothing != 0.0f) l -= smoothing / static_cast<float>(C) * sx;
      }
      loss[r] = l;
    }
  }
}

std::mutex g_ce_mutex;  // one slot: keep reset, launch and read-back of a call together

template <typename T>
int launch_ce(const View& loss, const View& logits, const View& targets, int32_t ignore_index, float smoothing,
              const View& lse, int64_t rows, int64_t C) {
  std::lock_guard<std::mutex> lock(g_ce_mutex);
  void* slot = nullptr;
  DR_CUDA_TRY(bad_slot_reset(g_ce_bad_row, &slot, "cross_entropy: cudaGetSymbolAddress", "cross_entropy: reset"));
  float* pl = static_cast<float*>(loss.data);
  float* plse = static_cast<float*>(lse.data);
  const T* px = static_cast<const T*>(logits.data);
  const int32_t* pt = static_cast<const int32_t*>(targets.data);
  // [rows] or any contiguous shape with rows elements (checked by the entry)
  const int64_t ts = view_contiguous(targets) ? 1 : targets.strides[0];
  if (C <= 1024) {
    cross_entropy_kernel<T, 32><<<grid_cap((rows + 7) / 8), 256, 0, stream()>>>(pl, plse, px, pt, ts, rows, C,
                                                                                ignore_index, smoothing);
  } else {
    cross_entropy_kernel<T, 512><<<grid_cap(rows), 512, 0, stream()>>>(pl, plse, px, pt, ts, rows, C, ignore_index,
                                                                       smoothing);
  }
  DR_CUDA_TRY(check_launch("cross_entropy"));
  unsigned long long bad = 0;
  DR_CUDA_TRY(bad_slot_read(slot, &bad, "cross_entropy"));
  if (bad == ~0ull) return 0;
  int32_t t = 0;
  DR_CUDA_TRY(read_index(pt + static_cast<int64_t>(bad) * ts, &t, "cross_entropy"));
  return set_error("RangeError: cross_entropy: target " + std::to_string(t) + " at row " + std::to_string(bad) +
                   " is outside [0, " + std::to_string(C) + ")");
}

}  // namespace

int softmax(const View* out, const View* x, int64_t outer, int64_t dim, int64_t inner, int32_t log) {
  DR_CUDA_ENTRY_BEGIN
  if (out->dtype != x->dtype) return set_error("softmax: output dtype must match the input's");
  if (outer < 0 || dim < 0 || inner < 0) return set_error("softmax: negative extent");
  if (outer * dim * inner == 0) return 0;
  switch (dt(*x)) {
    case DType::F32:
      return launch_softmax<float>(static_cast<float*>(out->data), static_cast<const float*>(x->data), outer, dim,
                                   inner, log);
    case DType::BF16:
      return launch_softmax<bf16_t>(static_cast<bf16_t*>(out->data), static_cast<const bf16_t*>(x->data), outer, dim,
                                    inner, log);
    default: return dtype_error("softmax", *x);
  }
  DR_CUDA_ENTRY_END("softmax")
}

int cross_entropy(const View* loss, const View* logits, const View* targets, int32_t ignore_index, float smoothing,
                  const View* lse) {
  DR_CUDA_ENTRY_BEGIN
  if (dt(*loss) != DType::F32) return set_error("cross_entropy: loss must be float32");
  if (lse && lse->data && dt(*lse) != DType::F32) return set_error("cross_entropy: lse must be float32");
  if (dt(*targets) != DType::I32) return set_error("cross_entropy: targets must be int32");
  if (logits->ndim < 1) return set_error("cross_entropy: logits must be [rows, C]");
  const int64_t C = logits->shape[logits->ndim - 1];
  const int64_t rows = C ? view_numel(*logits) / C : view_numel(*targets);
  if (rows == 0) return 0;
  if (view_numel(*targets) != rows) return set_error("cross_entropy: targets must have one entry per row");
  if (!view_contiguous(*targets) && targets->ndim != 1)
    return set_error("cross_entropy: targets must be contiguous or one-dimensional");
  if (!view_contiguous(*logits)) return set_error("cross_entropy: logits must be contiguous");
  const View no_lse = [] {
    View v{};
    v.data = nullptr;
    return v;
  }();
  const View& l = lse ? *lse : no_lse;
  switch (dt(*logits)) {
    case DType::F32: return launch_ce<float>(*loss, *logits, *targets, ignore_index, smoothing, l, rows, C);
    case DType::BF16: return launch_ce<bf16_t>(*loss, *logits, *targets, ignore_index, smoothing, l, rows, C);
    default: return dtype_error("cross_entropy", *logits);
  }
  DR_CUDA_ENTRY_END("cross_entropy")
}

}  // namespace cuda
}  // namespace dualroute
