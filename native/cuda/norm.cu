// RMSNorm and LayerNorm on the GPU, one row of a contiguous [rows, cols] tensor at a time.
//
//   rms_norm:   rstd = 1 / sqrt(mean(x^2) + eps);            out = x * rstd * w
//   layer_norm: mean = mean(x); var = mean((x - mean)^2);    (biased, two-pass in float)
//               rstd = 1 / sqrt(var + eps);                   out = (x - mean) * rstd * w + b
// w [cols] and b [cols] are optional (data == nullptr), float32 or bfloat16; mean and rstd
// [rows] are optional float32 outputs kept for the backward pass. x and out are float32 or
// bfloat16 and accumulate in float.
//
// A row whose float statistics left float's range (squares of |x| past ~1e19 overflow, below
// ~1e-19 underflow) is redone in double, as on the CPU: layer_norm([1e20, -1e20]) is [1, -1].
// The test is on the reduced sum, the same in every lane of the row, so the branch is uniform.
//
// Launch layouts:
//  - cols <= 1024: one warp per row, 8 rows per 256-thread block. The row is held in
//    registers (K values per lane, K = cols/32 rounded up to a power of two, a template), so
//    the two-pass variance costs no second read. When cols is a multiple of the 16-byte pack
//    (4 floats, 8 bf16), K is at least one pack and the pointers are aligned, lanes load and
//    store whole packs: pack p = lane + 32 t holds columns p*V .. p*V+V-1.
//  - cols > 1024: one 512-thread block per row, re-reading the row from L1/L2 on each pass.
#include <algorithm>
#include <cmath>
#include <string>

#include "device.cuh"

namespace dualroute {
namespace cuda {
namespace {

// emu:begin norm (test/cuda_emu runs the code up to emu:end in a warp emulator)

// An optional per-column parameter (weight or bias) of either float dtype.
struct Param {
  const void* p;  // nullptr: absent
  int bf16;
};
__device__ __forceinline__ float param_at(const Param& q, int64_t j, float absent) {
  if (!q.p) return absent;
  return q.bf16 ? __bfloat162float(static_cast<const bf16_t*>(q.p)[j]) : static_cast<const float*>(q.p)[j];
}

// Column of register slot k of `lane` (see the file comment for the pack layout).
template <int V, bool VEC>
__device__ __forceinline__ int col_of(int k, int lane) {
  return VEC ? (lane + 32 * (k / V)) * V + (k % V) : lane + 32 * k;
}

template <typename T, int K, bool VEC>
__device__ __forceinline__ void load_row(float (&v)[K], const T* __restrict__ p, int n, int lane) {
  constexpr int V = 16 / sizeof(T);
  if constexpr (VEC) {
#pragma unroll
    for (int t = 0; t < K / V; ++t) {
      const int pi = lane + 32 * t;
      if (pi * V < n) {
        const Pack<T, V> pk = reinterpret_cast<const Pack<T, V>*>(p)[pi];
#pragma unroll
        for (int e = 0; e < V; ++e) v[t * V + e] = ld(pk.v[e]);
      } else {
#pragma unroll
        for (int e = 0; e < V; ++e) v[t * V + e] = 0.0f;
      }
    }
  } else {
#pragma unroll
    for (int k = 0; k < K; ++k) {
      const int j = lane + 32 * k;
      v[k] = j < n ? ld(p[j]) : 0.0f;
    }
  }
}

template <typename T, int K, bool VEC>
__device__ __forceinline__ void store_row(T* __restrict__ p, const float (&v)[K], int n, int lane) {
  constexpr int V = 16 / sizeof(T);
  if constexpr (VEC) {
#pragma unroll
    for (int t = 0; t < K / V; ++t) {
      const int pi = lane + 32 * t;
      if (pi * V < n) {
        Pack<T, V> pk;
#pragma unroll
        for (int e = 0; e < V; ++e) pk.v[e] = st<T>(v[t * V + e]);
        reinterpret_cast<Pack<T, V>*>(p)[pi] = pk;
      }
    }
  } else {
#pragma unroll
    for (int k = 0; k < K; ++k) {
      const int j = lane + 32 * k;
      if (j < n) p[j] = st<T>(v[k]);
    }
  }
}

constexpr float kTinyMeanSquare = 1e-30f;  // below it the float squares may have lost bits

__device__ __forceinline__ bool stats_out_of_range(float ss, float mean, int64_t cols) {
  return !(ss >= kTinyMeanSquare * static_cast<float>(cols)) || !isfinite(ss) || !isfinite(mean);
}

// Sum over the block (blockDim.x a multiple of 32, at most 1024) in double; part: 32 doubles of
// shared memory (the leading barrier protects them from their previous use).
__device__ double block_sum_d(double v, double* part) {
  v = warp_sum(v);
  const int w = threadIdx.x >> 5, l = threadIdx.x & 31;
  __syncthreads();
  if (l == 0) part[w] = v;
  __syncthreads();
  v = l < static_cast<int>(blockDim.x >> 5) ? part[l] : 0.0;
  return warp_sum(v);
}

// LAYER: layer norm (mean subtracted, bias) else RMS norm.
template <typename T, int K, bool VEC, bool LAYER>
__global__ void norm_warp(T* __restrict__ out, const T* __restrict__ x, Param w, Param b, float eps,
                          float* __restrict__ mean_out, float* __restrict__ rstd_out, int64_t rows, int cols) {
  constexpr int V = 16 / sizeof(T);
  const int lane = threadIdx.x & 31;
  const int64_t warps = (static_cast<int64_t>(gridDim.x) * blockDim.x) >> 5;
  for (int64_t r = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) >> 5; r < rows; r += warps) {
    float v[K];
    load_row<T, K, VEC>(v, x + r * cols, cols, lane);
    float mean = 0.0f, ss = 0.0f;
    if (LAYER) {
      float s = 0.0f;
#pragma unroll
      for (int k = 0; k < K; ++k) s += v[k];  // padding slots hold 0
      mean = warp_sum(s) / static_cast<float>(cols);
#pragma unroll
      for (int k = 0; k < K; ++k) {
        const float d = v[k] - mean;
        if (col_of<V, VEC>(k, lane) < cols) ss += d * d;
      }
    } else {
#pragma unroll
      for (int k = 0; k < K; ++k) ss += v[k] * v[k];
    }
    const float tot = warp_sum(ss);
    if (stats_out_of_range(tot, mean, cols)) {
      // the wide path: double statistics of the row held in registers
      double dm = 0.0, dss = 0.0;
      if (LAYER) {
        double s = 0.0;
#pragma unroll
        for (int k = 0; k < K; ++k) s += static_cast<double>(v[k]);
        dm = warp_sum(s) / static_cast<double>(cols);
      }
#pragma unroll
      for (int k = 0; k < K; ++k) {
        const double d = static_cast<double>(v[k]) - dm;
        if (col_of<V, VEC>(k, lane) < cols) dss += d * d;
      }
      const double dr = 1.0 / sqrt(warp_sum(dss) / static_cast<double>(cols) + static_cast<double>(eps));
#pragma unroll
      for (int k = 0; k < K; ++k) {
        const int j = col_of<V, VEC>(k, lane);
        if (j < cols) {
          double y = (static_cast<double>(v[k]) - dm) * dr * param_at(w, j, 1.0f);
          if (LAYER) y += param_at(b, j, 0.0f);
          v[k] = static_cast<float>(y);
        }
      }
      store_row<T, K, VEC>(out + r * cols, v, cols, lane);
      if (lane == 0) {
        if (rstd_out) rstd_out[r] = static_cast<float>(dr);
        if (LAYER && mean_out) mean_out[r] = static_cast<float>(dm);
      }
      continue;
    }
    const float rstd = 1.0f / sqrtf(tot / static_cast<float>(cols) + eps);
#pragma unroll
    for (int k = 0; k < K; ++k) {
      const int j = col_of<V, VEC>(k, lane);
      if (j < cols) {
        float y = (v[k] - mean) * rstd * param_at(w, j, 1.0f);
        if (LAYER) y += param_at(b, j, 0.0f);
        v[k] = y;
      }
    }
    store_row<T, K, VEC>(out + r * cols, v, cols, lane);
    if (lane == 0) {
      if (rstd_out) rstd_out[r] = rstd;
      if (LAYER && mean_out) mean_out[r] = mean;
    }
  }
}

template <typename T, bool LAYER>
__global__ void norm_block(T* __restrict__ out, const T* __restrict__ x, Param w, Param b, float eps,
                           float* __restrict__ mean_out, float* __restrict__ rstd_out, int64_t rows, int64_t cols) {
  __shared__ float smem[32];
  __shared__ double dsmem[32];
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const T* px = x + r * cols;
    T* po = out + r * cols;
    float mean = 0.0f;
    if (LAYER) {
      float s = 0.0f;
      for (int64_t j = threadIdx.x; j < cols; j += blockDim.x) s += ld(px[j]);
      mean = block_sum(s, smem) / static_cast<float>(cols);
    }
    float ss = 0.0f;
    for (int64_t j = threadIdx.x; j < cols; j += blockDim.x) {
      const float d = ld(px[j]) - mean;
      ss += d * d;
    }
    const float tot = block_sum(ss, smem);
    if (stats_out_of_range(tot, mean, cols)) {
      // the wide path: the row again, in double
      double dm = 0.0;
      if (LAYER) {
        double s = 0.0;
        for (int64_t j = threadIdx.x; j < cols; j += blockDim.x) s += static_cast<double>(ld(px[j]));
        dm = block_sum_d(s, dsmem) / static_cast<double>(cols);
      }
      double dss = 0.0;
      for (int64_t j = threadIdx.x; j < cols; j += blockDim.x) {
        const double d = static_cast<double>(ld(px[j])) - dm;
        dss += d * d;
      }
      const double dr = 1.0 / sqrt(block_sum_d(dss, dsmem) / static_cast<double>(cols) + static_cast<double>(eps));
      for (int64_t j = threadIdx.x; j < cols; j += blockDim.x) {
        double y = (static_cast<double>(ld(px[j])) - dm) * dr * param_at(w, j, 1.0f);
        if (LAYER) y += param_at(b, j, 0.0f);
        po[j] = st<T>(static_cast<float>(y));
      }
      if (threadIdx.x == 0) {
        if (rstd_out) rstd_out[r] = static_cast<float>(dr);
        if (LAYER && mean_out) mean_out[r] = static_cast<float>(dm);
      }
      continue;
    }
    const float rstd = 1.0f / sqrtf(tot / static_cast<float>(cols) + eps);
    for (int64_t j = threadIdx.x; j < cols; j += blockDim.x) {
      float y = (ld(px[j]) - mean) * rstd * param_at(w, j, 1.0f);
      if (LAYER) y += param_at(b, j, 0.0f);
      po[j] = st<T>(y);
    }
    if (threadIdx.x == 0) {
      if (rstd_out) rstd_out[r] = rstd;
      if (LAYER && mean_out) mean_out[r] = mean;
    }
  }
}

// emu:end norm

template <typename T, int K, bool LAYER>
void launch_warp(bool vec, int blocks, T* o, const T* x, Param w, Param b, float eps, float* mean, float* rstd,
                 int64_t rows, int cols) {
  constexpr int V = 16 / sizeof(T);
  if constexpr (K % V == 0) {
    if (vec) {
      norm_warp<T, K, true, LAYER><<<blocks, 256, 0, stream()>>>(o, x, w, b, eps, mean, rstd, rows, cols);
      return;
    }
  }
  norm_warp<T, K, false, LAYER><<<blocks, 256, 0, stream()>>>(o, x, w, b, eps, mean, rstd, rows, cols);
}

template <typename T, bool LAYER>
int launch_norm(const char* name, const View& out, const View& x, Param w, Param b, float eps, float* mean,
                float* rstd) {
  const int64_t cols = x.ndim ? x.shape[x.ndim - 1] : 1;
  const int64_t rows = cols ? view_numel(x) / cols : 0;
  if (rows == 0) return 0;
  if (cols == 0) return set_error(std::string(name) + ": cannot normalise rows of zero columns");
  T* o = static_cast<T*>(out.data);
  const T* px = static_cast<const T*>(x.data);
  if (cols <= 1024) {
    constexpr int V = 16 / sizeof(T);
    const bool vec = cols % V == 0 && reinterpret_cast<uintptr_t>(o) % 16 == 0 &&
                     reinterpret_cast<uintptr_t>(px) % 16 == 0;
    const int blocks = grid_cap((rows + 7) / 8);
    const int c = static_cast<int>(cols);
    // K >= V for the pack layout; smaller rows use the scalar layout (launch_warp decides).
    if (cols <= 32) launch_warp<T, 1, LAYER>(vec, blocks, o, px, w, b, eps, mean, rstd, rows, c);
    else if (cols <= 64) launch_warp<T, 2, LAYER>(vec, blocks, o, px, w, b, eps, mean, rstd, rows, c);
    else if (cols <= 128) launch_warp<T, 4, LAYER>(vec, blocks, o, px, w, b, eps, mean, rstd, rows, c);
    else if (cols <= 256) launch_warp<T, 8, LAYER>(vec, blocks, o, px, w, b, eps, mean, rstd, rows, c);
    else if (cols <= 512) launch_warp<T, 16, LAYER>(vec, blocks, o, px, w, b, eps, mean, rstd, rows, c);
    else launch_warp<T, 32, LAYER>(vec, blocks, o, px, w, b, eps, mean, rstd, rows, c);
  } else {
    norm_block<T, LAYER><<<grid_cap(rows), 512, 0, stream()>>>(o, px, w, b, eps, mean, rstd, rows, cols);
  }
  return check_launch(name);
}

// Validates an optional [cols] parameter and describes it for the kernels.
int make_param(const char* name, const char* what, const View* v, int64_t cols, Param* q) {
  q->p = nullptr;
  q->bf16 = 0;
  if (!v || !v->data) return 0;
  if (dt(*v) != DType::F32 && dt(*v) != DType::BF16)
    return set_error(std::string(name) + ": " + what + " must be float32 or bfloat16");
  if (view_numel(*v) != cols || !view_contiguous(*v))
    return set_error(std::string(name) + ": " + what + " must be contiguous with one value per column");
  q->p = v->data;
  q->bf16 = dt(*v) == DType::BF16;
  return 0;
}

int float_out(const char* name, const char* what, const View* v, float** p) {
  *p = nullptr;
  if (!v || !v->data) return 0;
  if (dt(*v) != DType::F32) return set_error(std::string(name) + ": " + what + " must be float32");
  *p = static_cast<float*>(v->data);
  return 0;
}

int norm_entry(const char* name, bool layer, const View* out, const View* x, const View* w, const View* b, float eps,
               const View* mean, const View* rstd) {
  if (out->dtype != x->dtype) return set_error(std::string(name) + ": output dtype must match the input's");
  if (!view_contiguous(*x) || !view_contiguous(*out)) return set_error(std::string(name) + ": x and out must be contiguous");
  const int64_t cols = x->ndim ? x->shape[x->ndim - 1] : 1;
  Param pw, pb;
  float *pm = nullptr, *pr = nullptr;
  DR_CUDA_TRY(make_param(name, "weight", w, cols, &pw));
  DR_CUDA_TRY(make_param(name, "bias", b, cols, &pb));
  DR_CUDA_TRY(float_out(name, "mean", mean, &pm));
  DR_CUDA_TRY(float_out(name, "rstd", rstd, &pr));
  switch (dt(*x)) {
    case DType::F32:
      return layer ? launch_norm<float, true>(name, *out, *x, pw, pb, eps, pm, pr)
                   : launch_norm<float, false>(name, *out, *x, pw, pb, eps, pm, pr);
    case DType::BF16:
      return layer ? launch_norm<bf16_t, true>(name, *out, *x, pw, pb, eps, pm, pr)
                   : launch_norm<bf16_t, false>(name, *out, *x, pw, pb, eps, pm, pr);
    default: return dtype_error(name, *x);
  }
}

}  // namespace

int rms_norm(const View* out, const View* x, const View* w, float eps, const View* rstd) {
  DR_CUDA_ENTRY_BEGIN
  return norm_entry("rms_norm", false, out, x, w, nullptr, eps, nullptr, rstd);
  DR_CUDA_ENTRY_END("rms_norm")
}

int layer_norm(const View* out, const View* x, const View* w, const View* b, float eps, const View* mean,
               const View* rstd) {
  DR_CUDA_ENTRY_BEGIN
  return norm_entry("layer_norm", true, out, x, w, b, eps, mean, rstd);
  DR_CUDA_ENTRY_END("layer_norm")
}

}  // namespace cuda
}  // namespace dualroute
