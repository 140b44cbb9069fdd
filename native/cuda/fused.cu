// Fused kernels on the GPU (contracts as native/cpu/fused.cpp): float32 and bfloat16, computed
// in float; rstd float32.
//
//   add_rms_norm:          h = x + residual (rounded to T), rstd = 1 / sqrt(mean(h^2) + eps),
//                          out = h rstd w. Rows whose float sum of squares leaves float's range
//                          are redone in double, as norm.cu does.
//   add_rms_norm_backward: dx = dh + rstd (g - xhat mean(g xhat)), g = dy w, xhat = h rstd;
//                          dw = sum_rows dy xhat.
//   bias_act:              out = act(z), z = x + bias[col] rounded to T; act gelu (erf),
//                          geluTanh, silu, relu: activations.cuh's, as the unary ops use them.
//   bias_act_backward:     dx = dy act'(z), dbias = sum_rows dx.
//
// Launch layouts:
//  - add_rms_norm and its dx: one warp per row for rows of <= 1024 values (8 rows per 256-thread
//    block), one 512-thread block per row above. The first pass writes h and sums its squares;
//    the second reads back what the same thread wrote (L1/L2) and writes out.
//  - bias_act: a grid-stride loop over the elements.
//  - column sums (dw, dbias): the two-stage reduction of backward.cu, no atomics, so results do
//    not depend on scheduling. Stage 1: a 256-thread block per (32-column tile, chunk of rows) writes
//    one float partial per column and chunk into scratch memory (bias_act_backward computes and
//    stores dx in the same kernel, one pass over x and dy); stage 2 adds the partials of each
//    column in chunk order and stores the result.
#include <algorithm>
#include <cmath>
#include <string>

#include "device.cuh"

namespace dualroute {
namespace cuda {

// backend.cu: temporary device memory from the caching allocator (all work is on one stream).
int scratch_alloc(void** ptr, size_t bytes);
int scratch_release(void* ptr);

namespace {

// emu:begin fused (test/cuda_emu runs the code up to emu:end in a warp emulator)

// The activations (the UnaryOp values they stand for are mapped by the entries).
enum class FAct : int { Gelu = 0, GeluTanh = 1, Silu = 2, Relu = 3 };

template <FAct F>
__device__ __forceinline__ float fact(float z) {
  if constexpr (F == FAct::Gelu) return act_gelu(z);
  else if constexpr (F == FAct::GeluTanh) return act_gelu_tanh(z);
  else if constexpr (F == FAct::Silu) return act_silu(z);
  else return act_relu(z);
}

template <FAct F>
__device__ __forceinline__ float fact_grad(float z, float g) {
  if constexpr (F == FAct::Gelu) return act_gelu_grad(z, g);
  else if constexpr (F == FAct::GeluTanh) return act_gelu_tanh_grad(z, g);
  else if constexpr (F == FAct::Silu) return act_silu_grad(z, g);
  else return act_relu_grad(z, g);
}

// x + b as a separate add would store it (rounded to T).
template <typename T>
__device__ __forceinline__ float add_rounded(T a, T b) {
  return ld(st<T>(ld(a) + ld(b)));
}

// Sum over the row's G threads: the warp (G == 32) or the whole block (smem: 32 values).
template <int G>
__device__ __forceinline__ float fused_row_sum(float v, float* smem) {
  return G == 32 ? warp_sum(v) : block_sum(v, smem);
}
template <int G>
__device__ __forceinline__ double fused_row_sum_d(double v, double* smem) {
  v = warp_sum(v);
  if (G == 32) return v;
  const int w = threadIdx.x >> 5, l = threadIdx.x & 31;
  __syncthreads();
  if (l == 0) smem[w] = v;
  __syncthreads();
  v = l < static_cast<int>(blockDim.x >> 5) ? smem[l] : 0.0;
  return warp_sum(v);
}

// G threads per row (32: a warp, 8 rows per 256-thread block; else the block).
template <typename T, int G>
__global__ void add_rms_fwd(T* __restrict__ h, T* __restrict__ out, const T* __restrict__ x, const T* __restrict__ res,
                            const T* __restrict__ w, float eps, float* __restrict__ rstd, int64_t rows, int64_t cols) {
  __shared__ float smem[32];
  __shared__ double dsmem[32];
  const int lane = threadIdx.x % G;
  const int64_t per_block = blockDim.x / G;
  for (int64_t r = blockIdx.x * per_block + threadIdx.x / G; r < rows; r += gridDim.x * per_block) {
    const T* px = x + r * cols;
    const T* pr = res + r * cols;
    T* ph = h + r * cols;
    T* po = out + r * cols;
    float ss = 0.0f;
    for (int64_t j = lane; j < cols; j += G) {
      const T hv = st<T>(ld(px[j]) + ld(pr[j]));
      ph[j] = hv;
      const float f = ld(hv);
      ss += f * f;
    }
    const float tot = fused_row_sum<G>(ss, smem);
    // ph[j] is read back below only by the thread that wrote it
    if (!(tot >= 1e-30f * static_cast<float>(cols)) || !isfinite(tot)) {
      double dss = 0.0;
      for (int64_t j = lane; j < cols; j += G) {
        const double f = static_cast<double>(ld(ph[j]));
        dss += f * f;
      }
      const double dr = 1.0 / sqrt(fused_row_sum_d<G>(dss, dsmem) / static_cast<double>(cols) + static_cast<double>(eps));
      for (int64_t j = lane; j < cols; j += G) {
        double y = static_cast<double>(ld(ph[j])) * dr;
        if (w) y *= static_cast<double>(ld(w[j]));
        po[j] = st<T>(static_cast<float>(y));
      }
      if (lane == 0 && rstd) rstd[r] = static_cast<float>(dr);
      continue;
    }
    const float rs = 1.0f / sqrtf(tot / static_cast<float>(cols) + eps);
    for (int64_t j = lane; j < cols; j += G) {
      float y = ld(ph[j]) * rs;
      if (w) y *= ld(w[j]);
      po[j] = st<T>(y);
    }
    if (lane == 0 && rstd) rstd[r] = rs;
  }
}

template <typename T, int G>
__global__ void add_rms_bw_dx(T* __restrict__ dx, const T* __restrict__ h, const T* __restrict__ dy,
                              const T* __restrict__ dh, const T* __restrict__ w, const float* __restrict__ rstd,
                              int64_t rows, int64_t cols) {
  __shared__ float smem[32];
  const int lane = threadIdx.x % G;
  const int64_t per_block = blockDim.x / G;
  for (int64_t r = blockIdx.x * per_block + threadIdx.x / G; r < rows; r += gridDim.x * per_block) {
    const T* ph = h + r * cols;
    const T* pg = dy + r * cols;
    const T* pd = dh ? dh + r * cols : nullptr;
    T* po = dx + r * cols;
    const float rs = rstd[r];
    float sgx = 0.0f;
    for (int64_t j = lane; j < cols; j += G) {
      const float g = w ? ld(pg[j]) * ld(w[j]) : ld(pg[j]);
      sgx += g * ld(ph[j]);
    }
    sgx = fused_row_sum<G>(sgx, smem);
    const float c2 = sgx * rs / static_cast<float>(cols);
    for (int64_t j = lane; j < cols; j += G) {
      const float xh = ld(ph[j]) * rs;
      const float g = w ? ld(pg[j]) * ld(w[j]) : ld(pg[j]);
      float v = rs * (g - xh * c2);
      if (pd) v += ld(pd[j]);
      po[j] = st<T>(v);
    }
  }
}

// Stage 1 of dw: 256-thread blocks, one per (32-column tile, chunk of rows): block b takes tile
// b % tiles of chunk b / tiles; thread t column t % 32 of the tile and rows t / 32 + 8 k of the chunk.
template <typename T>
__global__ void add_rms_bw_partial(float* __restrict__ pw, const T* __restrict__ h, const T* __restrict__ dy,
                                   const float* __restrict__ rstd, int64_t rows, int64_t cols, int64_t chunk_rows) {
  __shared__ float sw[8][33];
  const int tx = threadIdx.x & 31, ty = threadIdx.x >> 5;
  const int64_t tiles = (cols + 31) / 32, chunk = blockIdx.x / tiles;
  const int64_t j = (blockIdx.x % tiles) * 32 + tx;
  const int64_t r0 = chunk * chunk_rows;
  const int64_t r1 = r0 + chunk_rows < rows ? r0 + chunk_rows : rows;
  float aw = 0.0f;
  if (j < cols)
    for (int64_t r = r0 + ty; r < r1; r += 8) aw += ld(dy[r * cols + j]) * ld(h[r * cols + j]) * rstd[r];
  sw[ty][tx] = aw;
  __syncthreads();
  if (ty == 0 && j < cols) {
    float s = 0.0f;
#pragma unroll
    for (int k = 0; k < 8; ++k) s += sw[k][tx];
    pw[chunk * cols + j] = s;
  }
}

// bias_act forward: one thread per element, grid-stride.
template <typename T, FAct F>
__global__ void bias_act_fwd(T* __restrict__ out, const T* __restrict__ x, const T* __restrict__ b, int64_t n,
                             int64_t cols) {
  for (int64_t i = gtid(); i < n; i += gstride()) out[i] = st<T>(fact<F>(add_rounded(x[i], b[i % cols])));
}

// bias_act backward, stage 1 (the layout of add_rms_bw_partial): writes dx and, when pb is given,
// the chunk's column sums of dx.
template <typename T, FAct F>
__global__ void bias_act_bw_partial(T* __restrict__ dx, float* __restrict__ pb, const T* __restrict__ x,
                                    const T* __restrict__ b, const T* __restrict__ dy, int64_t rows, int64_t cols,
                                    int64_t chunk_rows) {
  __shared__ float sb[8][33];
  const int tx = threadIdx.x & 31, ty = threadIdx.x >> 5;
  const int64_t tiles = (cols + 31) / 32, chunk = blockIdx.x / tiles;
  const int64_t j = (blockIdx.x % tiles) * 32 + tx;
  const int64_t r0 = chunk * chunk_rows;
  const int64_t r1 = r0 + chunk_rows < rows ? r0 + chunk_rows : rows;
  float ab = 0.0f;
  if (j < cols) {
    const T bj = b[j];
    for (int64_t r = r0 + ty; r < r1; r += 8) {
      const int64_t i = r * cols + j;
      const float d = fact_grad<F>(add_rounded(x[i], bj), ld(dy[i]));
      dx[i] = st<T>(d);
      ab += d;
    }
  }
  if (!pb) return;  // uniform over the block
  sb[ty][tx] = ab;
  __syncthreads();
  if (ty == 0 && j < cols) {
    float s = 0.0f;
#pragma unroll
    for (int k = 0; k < 8; ++k) s += sb[k][tx];
    pb[chunk * cols + j] = s;
  }
}

// Stage 2: out[j] = sum_c part[c, j] in chunk order; nchunks may be 0 (no rows: zeros).
template <typename T>
__global__ void fused_colsum_final(T* __restrict__ out, const float* __restrict__ part, int64_t nchunks, int64_t cols) {
  for (int64_t j = gtid(); j < cols; j += gstride()) {
    float s = 0.0f;
    for (int64_t c = 0; c < nchunks; ++c) s += part[c * cols + j];
    out[j] = st<T>(s);
  }
}

// emu:end fused

// Row chunks of the column reductions: a few blocks per multiprocessor over the column tiles.
void plan_chunks(int64_t rows, int64_t cols, int64_t* nchunks, int64_t* chunk_rows) {
  const int64_t tiles = (cols + 31) / 32;
  *nchunks = 0;
  *chunk_rows = 1;
  if (rows <= 0) return;
  const int64_t want = std::max<int64_t>(1, 4 * static_cast<int64_t>(multiprocessor_count()) / std::max<int64_t>(tiles, 1));
  int64_t n = std::min<int64_t>({want, (rows + 7) / 8, std::max<int64_t>(1, (int64_t{1} << 30) / std::max<int64_t>(tiles, 1))});
  const int64_t cr = (rows + n - 1) / n;
  *chunk_rows = cr;
  *nchunks = (rows + cr - 1) / cr;
}

// Stage 2 and the scratch's release (status: the launches' so far).
template <typename T>
int colsum_finish(const char* name, int status, T* out, float* part, void* scratch, int64_t nchunks, int64_t cols) {
  if (status == 0 && out && cols > 0) {
    fused_colsum_final<T><<<grid_cap((cols + 255) / 256), 256, 0, stream()>>>(out, part, nchunks, cols);
    status = check_launch(name);
  }
  if (scratch) {
    const int rel = scratch_release(scratch);
    if (status == 0) status = rel;
  }
  return status;
}

bool has(const View* v) { return v && v->data; }

int rows_like(const char* name, const View& v, const View& x, const char* what) {
  if (v.dtype != x.dtype) return set_error(std::string(name) + ": " + what + " dtype must match x's");
  if (view_numel(v) != view_numel(x) || !view_contiguous(v))
    return set_error(std::string(name) + ": " + what + " must be contiguous with x's size");
  return 0;
}

int vec_like(const char* name, const View* v, const View& x, int64_t cols, const char* what) {
  if (!has(v)) return 0;
  if (v->dtype != x.dtype) return set_error(std::string(name) + ": " + what + " dtype must match x's");
  if (view_numel(*v) != cols || !view_contiguous(*v))
    return set_error(std::string(name) + ": " + what + " must be contiguous with one value per column");
  return 0;
}

int stats(const char* name, const View* v, int64_t rows, bool need, float** p) {
  *p = nullptr;
  if (!has(v)) return need ? set_error(std::string(name) + ": rstd is required") : 0;
  if (dt(*v) != DType::F32) return set_error(std::string(name) + ": rstd must be float32");
  if (view_numel(*v) != rows || !view_contiguous(*v))
    return set_error(std::string(name) + ": rstd must be contiguous with " + std::to_string(rows) + " elements");
  *p = static_cast<float*>(v->data);
  return 0;
}

template <typename T>
int launch_add_rms(const View& h, const View& out, const View& x, const View& res, const View* w, float eps, float* rstd) {
  const int64_t cols = x.ndim ? x.shape[x.ndim - 1] : 1;
  const int64_t rows = cols ? view_numel(x) / cols : 0;
  if (rows == 0) return 0;
  T* ph = static_cast<T*>(h.data);
  T* po = static_cast<T*>(out.data);
  const T* px = static_cast<const T*>(x.data);
  const T* pr = static_cast<const T*>(res.data);
  const T* pw = has(w) ? static_cast<const T*>(w->data) : nullptr;
  if (cols <= 1024) {
    add_rms_fwd<T, 32><<<grid_cap((rows + 7) / 8), 256, 0, stream()>>>(ph, po, px, pr, pw, eps, rstd, rows, cols);
  } else {
    add_rms_fwd<T, 512><<<grid_cap(rows), 512, 0, stream()>>>(ph, po, px, pr, pw, eps, rstd, rows, cols);
  }
  return check_launch("add_rms_norm");
}

template <typename T>
int launch_add_rms_bw(const View& dx, const View* dw, const View& h, const View* w, const float* rstd, const View& dy,
                      const View* dh) {
  const char* name = "add_rms_norm_backward";
  const int64_t cols = h.ndim ? h.shape[h.ndim - 1] : 1;
  const int64_t rows = cols ? view_numel(h) / cols : 0;
  T* pdx = static_cast<T*>(dx.data);
  const T* ph = static_cast<const T*>(h.data);
  const T* pg = static_cast<const T*>(dy.data);
  const T* pd = has(dh) ? static_cast<const T*>(dh->data) : nullptr;
  const T* pw = has(w) ? static_cast<const T*>(w->data) : nullptr;
  if (rows > 0) {
    if (cols <= 1024) {
      add_rms_bw_dx<T, 32><<<grid_cap((rows + 7) / 8), 256, 0, stream()>>>(pdx, ph, pg, pd, pw, rstd, rows, cols);
    } else {
      add_rms_bw_dx<T, 512><<<grid_cap(rows), 512, 0, stream()>>>(pdx, ph, pg, pd, pw, rstd, rows, cols);
    }
    DR_CUDA_TRY(check_launch(name));
  }
  if (!has(dw) || cols == 0) return 0;
  int64_t nchunks, chunk_rows;
  plan_chunks(rows, cols, &nchunks, &chunk_rows);
  void* scratch = nullptr;
  if (nchunks > 0) DR_CUDA_TRY(scratch_alloc(&scratch, static_cast<size_t>(nchunks * cols) * sizeof(float)));
  float* part = static_cast<float*>(scratch);
  if (nchunks > 0) {
    const int64_t blocks = (cols + 31) / 32 * nchunks;
    add_rms_bw_partial<T><<<blocks, 256, 0, stream()>>>(part, ph, pg, rstd, rows, cols, chunk_rows);
  }
  return colsum_finish<T>(name, check_launch(name), static_cast<T*>(dw->data), part, scratch, nchunks, cols);
}

int fact_of(const char* name, int32_t act, FAct* f) {
  switch (static_cast<UnaryOp>(act)) {
    case UnaryOp::Gelu: *f = FAct::Gelu; return 0;
    case UnaryOp::GeluTanh: *f = FAct::GeluTanh; return 0;
    case UnaryOp::Silu: *f = FAct::Silu; return 0;
    case UnaryOp::Relu: *f = FAct::Relu; return 0;
    default: return set_error(std::string(name) + ": act must be gelu, geluTanh, silu or relu");
  }
}

template <typename T, FAct F>
int launch_bias_act(const View& out, const View& x, const View& b) {
  const int64_t cols = x.ndim ? x.shape[x.ndim - 1] : 1;
  const int64_t n = view_numel(x);
  if (n == 0 || cols == 0) return 0;
  bias_act_fwd<T, F><<<grid_for(n), kThreads, 0, stream()>>>(static_cast<T*>(out.data), static_cast<const T*>(x.data),
                                                           static_cast<const T*>(b.data), n, cols);
  return check_launch("bias_act");
}

template <typename T, FAct F>
int launch_bias_act_bw(const View& dx, const View* db, const View& x, const View& b, const View& dy) {
  const char* name = "bias_act_backward";
  const int64_t cols = x.ndim ? x.shape[x.ndim - 1] : 1;
  const int64_t rows = cols ? view_numel(x) / cols : 0;
  int64_t nchunks, chunk_rows;
  plan_chunks(rows, cols, &nchunks, &chunk_rows);
  const bool sums = has(db);
  void* scratch = nullptr;
  if (sums && nchunks > 0) DR_CUDA_TRY(scratch_alloc(&scratch, static_cast<size_t>(nchunks * cols) * sizeof(float)));
  float* part = static_cast<float*>(scratch);
  if (nchunks > 0) {
    const int64_t blocks = (cols + 31) / 32 * nchunks;
    bias_act_bw_partial<T, F><<<blocks, 256, 0, stream()>>>(static_cast<T*>(dx.data), part, static_cast<const T*>(x.data),
                                                            static_cast<const T*>(b.data), static_cast<const T*>(dy.data),
                                                            rows, cols, chunk_rows);
  }
  return colsum_finish<T>(name, check_launch(name), sums ? static_cast<T*>(db->data) : nullptr, part, scratch, nchunks,
                          cols);
}

template <typename F>
int dispatch_fact(FAct f, F&& fn) {
  switch (f) {
    case FAct::Gelu: return fn(std::integral_constant<FAct, FAct::Gelu>{});
    case FAct::GeluTanh: return fn(std::integral_constant<FAct, FAct::GeluTanh>{});
    case FAct::Silu: return fn(std::integral_constant<FAct, FAct::Silu>{});
    default: return fn(std::integral_constant<FAct, FAct::Relu>{});
  }
}

}  // namespace

int add_rms_norm(const View* h, const View* out, const View* x, const View* residual, const View* w, float eps,
                 const View* rstd) {
  DR_CUDA_ENTRY_BEGIN
  const char* name = "add_rms_norm";
  if (!view_contiguous(*x)) return set_error(std::string(name) + ": x must be contiguous");
  DR_CUDA_TRY(rows_like(name, *residual, *x, "residual"));
  DR_CUDA_TRY(rows_like(name, *h, *x, "h"));
  DR_CUDA_TRY(rows_like(name, *out, *x, "out"));
  const int64_t cols = x->ndim ? x->shape[x->ndim - 1] : 1;
  const int64_t rows = cols ? view_numel(*x) / cols : 0;
  DR_CUDA_TRY(vec_like(name, w, *x, cols, "weight"));
  float* pr = nullptr;
  DR_CUDA_TRY(stats(name, rstd, rows, false, &pr));
  switch (dt(*x)) {
    case DType::F32: return launch_add_rms<float>(*h, *out, *x, *residual, w, eps, pr);
    case DType::BF16: return launch_add_rms<bf16_t>(*h, *out, *x, *residual, w, eps, pr);
    default: return dtype_error(name, *x);
  }
  DR_CUDA_ENTRY_END("add_rms_norm")
}

int add_rms_norm_backward(const View* dx, const View* dw, const View* h, const View* w, const View* rstd, const View* dy,
                          const View* dh) {
  DR_CUDA_ENTRY_BEGIN
  const char* name = "add_rms_norm_backward";
  if (!view_contiguous(*h)) return set_error(std::string(name) + ": h must be contiguous");
  DR_CUDA_TRY(rows_like(name, *dx, *h, "dx"));
  DR_CUDA_TRY(rows_like(name, *dy, *h, "dy"));
  if (has(dh)) DR_CUDA_TRY(rows_like(name, *dh, *h, "dh"));
  const int64_t cols = h->ndim ? h->shape[h->ndim - 1] : 1;
  const int64_t rows = cols ? view_numel(*h) / cols : 0;
  DR_CUDA_TRY(vec_like(name, w, *h, cols, "weight"));
  DR_CUDA_TRY(vec_like(name, dw, *h, cols, "dweight"));
  float* pr = nullptr;
  DR_CUDA_TRY(stats(name, rstd, rows, true, &pr));
  switch (dt(*h)) {
    case DType::F32: return launch_add_rms_bw<float>(*dx, dw, *h, w, pr, *dy, dh);
    case DType::BF16: return launch_add_rms_bw<bf16_t>(*dx, dw, *h, w, pr, *dy, dh);
    default: return dtype_error(name, *h);
  }
  DR_CUDA_ENTRY_END("add_rms_norm_backward")
}

int bias_act(int32_t act, const View* out, const View* x, const View* bias) {
  DR_CUDA_ENTRY_BEGIN
  const char* name = "bias_act";
  FAct f;
  DR_CUDA_TRY(fact_of(name, act, &f));
  if (!view_contiguous(*x)) return set_error(std::string(name) + ": x must be contiguous");
  DR_CUDA_TRY(rows_like(name, *out, *x, "out"));
  const int64_t cols = x->ndim ? x->shape[x->ndim - 1] : 1;
  if (!has(bias)) return set_error(std::string(name) + ": bias is required");
  DR_CUDA_TRY(vec_like(name, bias, *x, cols, "bias"));
  switch (dt(*x)) {
    case DType::F32: return dispatch_fact(f, [&](auto k) { return launch_bias_act<float, decltype(k)::value>(*out, *x, *bias); });
    case DType::BF16: return dispatch_fact(f, [&](auto k) { return launch_bias_act<bf16_t, decltype(k)::value>(*out, *x, *bias); });
    default: return dtype_error(name, *x);
  }
  DR_CUDA_ENTRY_END("bias_act")
}

int bias_act_backward(int32_t act, const View* dx, const View* dbias, const View* x, const View* bias, const View* dy) {
  DR_CUDA_ENTRY_BEGIN
  const char* name = "bias_act_backward";
  FAct f;
  DR_CUDA_TRY(fact_of(name, act, &f));
  if (!view_contiguous(*x)) return set_error(std::string(name) + ": x must be contiguous");
  DR_CUDA_TRY(rows_like(name, *dx, *x, "dx"));
  DR_CUDA_TRY(rows_like(name, *dy, *x, "dy"));
  const int64_t cols = x->ndim ? x->shape[x->ndim - 1] : 1;
  if (!has(bias)) return set_error(std::string(name) + ": bias is required");
  DR_CUDA_TRY(vec_like(name, bias, *x, cols, "bias"));
  DR_CUDA_TRY(vec_like(name, dbias, *x, cols, "dbias"));
  switch (dt(*x)) {
    case DType::F32:
      return dispatch_fact(f, [&](auto k) { return launch_bias_act_bw<float, decltype(k)::value>(*dx, dbias, *x, *bias, *dy); });
    case DType::BF16:
      return dispatch_fact(f, [&](auto k) { return launch_bias_act_bw<bf16_t, decltype(k)::value>(*dx, dbias, *x, *bias, *dy); });
    default: return dtype_error(name, *x);
  }
  DR_CUDA_ENTRY_END("bias_act_backward")
}

}  // namespace cuda
}  // namespace dualroute
