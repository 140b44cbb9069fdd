// Backward kernels on the GPU: softmax / log-softmax, RMSNorm, LayerNorm, cross-entropy,
// unary math and SwiGLU. Contracts as the CPU kernels of the same name (native/cpu/kernels.h);
// float32 and bfloat16 compute in float, statistics (rstd, mean, lse) and dloss are float32.
//
// Launch layouts:
//  - softmax (inner == 1) and the norms' dx: one warp per row for rows of <= 1024 values (8 rows
//    per 256-thread block), one 512-thread block per row above; each pass re-reads the row
//    (the second read is served from L1/L2). softmax with inner > 1: one thread per
//    (outer, inner) pair walking dim with stride inner (neighbouring threads read
//    neighbouring addresses).
//  - norm dweight / dbias: a two-stage column reduction without atomics, so results do not
//    depend on scheduling. Stage 1: block (32, 8) per (32-column tile, chunk of rows) writes
//    one float partial per column and chunk into scratch memory; stage 2 adds the partials of
//    each column in chunk order and stores dw / db (float32 or bfloat16).
//  - cross-entropy, unary and SwiGLU backward are element-wise given the saved statistics:
//    grid-stride loops over all elements.
#include <algorithm>
#include <cmath>
#include <string>

#include "device.cuh"

namespace dualroute {
namespace cuda {

// backend.cu: temporary device memory from the caching allocator. Release may follow the
// launches that use the block at once (all work is on one stream).
int scratch_alloc(void** ptr, size_t bytes);
int scratch_release(void* ptr);

namespace {

bool has(const View* v) { return v && v->data; }

// An optional per-column tensor (weight in, dweight / dbias out) of either float dtype.
struct Param {
  void* p;  // nullptr: absent
  int bf16;
};
__device__ __forceinline__ float param_at(const Param& q, int64_t j, float absent) {
  if (!q.p) return absent;
  return q.bf16 ? __bfloat162float(static_cast<const bf16_t*>(q.p)[j]) : static_cast<const float*>(q.p)[j];
}
__device__ __forceinline__ void param_store(const Param& q, int64_t j, float v) {
  if (q.bf16) static_cast<bf16_t*>(q.p)[j] = __float2bfloat16_rn(v);
  else static_cast<float*>(q.p)[j] = v;
}

// G == 32: the warp owns the row; else the whole block does.
template <int G>
__device__ __forceinline__ float row_sum(float v, float* smem) {
  return G == 32 ? warp_sum(v) : block_sum(v, smem);
}

// ---- softmax -----------------------------------------------------------------------------
template <typename T, int G>
__global__ void softmax_bw_rows(T* __restrict__ dx, const T* __restrict__ y, const T* __restrict__ dy, int64_t rows,
                                int64_t dim, int log) {
  __shared__ float smem[32];
  const int lane = threadIdx.x % G;
  const int64_t per_block = blockDim.x / G;
  for (int64_t r = blockIdx.x * per_block + threadIdx.x / G; r < rows; r += gridDim.x * per_block) {
    const T* py = y + r * dim;
    const T* pg = dy + r * dim;
    T* po = dx + r * dim;
    float s = 0.0f;
    for (int64_t j = lane; j < dim; j += G) s += log ? ld(pg[j]) : ld(pg[j]) * ld(py[j]);
    s = row_sum<G>(s, smem);
    for (int64_t j = lane; j < dim; j += G) {
      const float yv = ld(py[j]), g = ld(pg[j]);
      po[j] = st<T>(log ? g - expf(yv) * s : yv * (g - s));
    }
  }
}

template <typename T>
__global__ void softmax_bw_inner(T* __restrict__ dx, const T* __restrict__ y, const T* __restrict__ dy, int64_t outer,
                                 int64_t dim, int64_t inner, int log) {
  const int64_t total = outer * inner;
  for (int64_t p = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; p < total;
       p += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t o = p / inner, i = p - o * inner;
    const int64_t base = o * dim * inner + i;
    float s = 0.0f;
    for (int64_t j = 0; j < dim; ++j) {
      const int64_t k = base + j * inner;
      s += log ? ld(dy[k]) : ld(dy[k]) * ld(y[k]);
    }
    for (int64_t j = 0; j < dim; ++j) {
      const int64_t k = base + j * inner;
      const float yv = ld(y[k]), g = ld(dy[k]);
      dx[k] = st<T>(log ? g - expf(yv) * s : yv * (g - s));
    }
  }
}

template <typename T>
int launch_softmax_bw(const View& dx, const View& y, const View& dy, int64_t outer, int64_t dim, int64_t inner,
                      int log) {
  T* o = static_cast<T*>(dx.data);
  const T* py = static_cast<const T*>(y.data);
  const T* pg = static_cast<const T*>(dy.data);
  if (inner == 1 && dim <= 1024) {
    softmax_bw_rows<T, 32><<<grid_cap((outer + 7) / 8), 256, 0, stream()>>>(o, py, pg, outer, dim, log);
  } else if (inner == 1) {
    softmax_bw_rows<T, 512><<<grid_cap(outer), 512, 0, stream()>>>(o, py, pg, outer, dim, log);
  } else {
    softmax_bw_inner<T><<<grid_cap((outer * inner + 255) / 256), 256, 0, stream()>>>(o, py, pg, outer, dim, inner, log);
  }
  return check_launch("softmax_backward");
}

// ---- RMSNorm / LayerNorm -------------------------------------------------------------------
template <typename T, int G, bool LAYER>
__global__ void norm_bw_dx(T* __restrict__ dx, const T* __restrict__ x, const T* __restrict__ dy, Param w,
                           const float* __restrict__ mean, const float* __restrict__ rstd, int64_t rows, int64_t cols) {
  __shared__ float smem[32];
  const int lane = threadIdx.x % G;
  const int64_t per_block = blockDim.x / G;
  for (int64_t r = blockIdx.x * per_block + threadIdx.x / G; r < rows; r += gridDim.x * per_block) {
    const T* px = x + r * cols;
    const T* pg = dy + r * cols;
    T* po = dx + r * cols;
    const float m = LAYER ? mean[r] : 0.0f, rs = rstd[r];
    float sg = 0.0f, sgx = 0.0f;
    for (int64_t j = lane; j < cols; j += G) {
      const float g = ld(pg[j]) * param_at(w, j, 1.0f);
      sg += g;
      sgx += g * (ld(px[j]) - m);
    }
    if (LAYER) sg = row_sum<G>(sg, smem);
    sgx = row_sum<G>(sgx, smem);
    const float c1 = LAYER ? sg / static_cast<float>(cols) : 0.0f;
    const float c2 = sgx * rs / static_cast<float>(cols);
    for (int64_t j = lane; j < cols; j += G) {
      const float xh = (ld(px[j]) - m) * rs;
      const float g = ld(pg[j]) * param_at(w, j, 1.0f);
      po[j] = st<T>(rs * (g - c1 - xh * c2));
    }
  }
}

// Stage 1: block (32, 8); blockIdx.x a tile of 32 columns, blockIdx.y a chunk of rows.
template <typename T, bool LAYER>
__global__ void norm_bw_partial(float* __restrict__ pw, float* __restrict__ pb, const T* __restrict__ x,
                                const T* __restrict__ dy, const float* __restrict__ mean,
                                const float* __restrict__ rstd, int64_t rows, int64_t cols, int64_t chunk_rows) {
  __shared__ float sw[8][33];
  __shared__ float sb[8][33];
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int64_t j = static_cast<int64_t>(blockIdx.x) * 32 + tx;
  const int64_t r0 = static_cast<int64_t>(blockIdx.y) * chunk_rows;
  const int64_t r1 = r0 + chunk_rows < rows ? r0 + chunk_rows : rows;
  float aw = 0.0f, ab = 0.0f;
  if (j < cols) {
    for (int64_t r = r0 + ty; r < r1; r += 8) {
      const float d = ld(dy[r * cols + j]);
      const float m = LAYER ? mean[r] : 0.0f;
      aw += d * (ld(x[r * cols + j]) - m) * rstd[r];
      ab += d;
    }
  }
  sw[ty][tx] = aw;
  sb[ty][tx] = ab;
  __syncthreads();
  if (ty == 0 && j < cols) {
    float s1 = 0.0f, s2 = 0.0f;
#pragma unroll
    for (int k = 0; k < 8; ++k) {
      s1 += sw[k][tx];
      s2 += sb[k][tx];
    }
    const int64_t at = static_cast<int64_t>(blockIdx.y) * cols + j;
    if (pw) pw[at] = s1;
    if (pb) pb[at] = s2;
  }
}

// Stage 2: dw[j] = sum_c pw[c, j] (likewise db); nchunks may be 0 (no rows: zeros).
__global__ void norm_bw_final(Param dw, Param db, const float* __restrict__ pw, const float* __restrict__ pb,
                              int64_t nchunks, int64_t cols) {
  for (int64_t j = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; j < cols;
       j += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    float s1 = 0.0f, s2 = 0.0f;
    for (int64_t c = 0; c < nchunks; ++c) {
      if (dw.p) s1 += pw[c * cols + j];
      if (db.p) s2 += pb[c * cols + j];
    }
    if (dw.p) param_store(dw, j, s1);
    if (db.p) param_store(db, j, s2);
  }
}

template <typename T, bool LAYER>
int launch_norm_bw(const char* name, const View& dx, Param dw, Param db, const View& x, Param w, const float* mean,
                   const float* rstd, const View& dy) {
  const int64_t cols = x.ndim ? x.shape[x.ndim - 1] : 1;
  const int64_t rows = cols ? view_numel(x) / cols : 0;
  T* o = static_cast<T*>(dx.data);
  const T* px = static_cast<const T*>(x.data);
  const T* pg = static_cast<const T*>(dy.data);
  if (rows > 0) {
    if (cols <= 1024) {
      norm_bw_dx<T, 32, LAYER><<<grid_cap((rows + 7) / 8), 256, 0, stream()>>>(o, px, pg, w, mean, rstd, rows, cols);
    } else {
      norm_bw_dx<T, 512, LAYER><<<grid_cap(rows), 512, 0, stream()>>>(o, px, pg, w, mean, rstd, rows, cols);
    }
    DR_CUDA_TRY(check_launch(name));
  }
  if ((!dw.p && !db.p) || cols == 0) return 0;
  // Chunks of rows so that the first stage has a few blocks per multiprocessor.
  const int64_t tiles = (cols + 31) / 32;
  int64_t nchunks = 0, chunk_rows = 1;
  if (rows > 0) {
    const int64_t want = std::max<int64_t>(1, 4 * static_cast<int64_t>(multiprocessor_count()) / tiles);
    nchunks = std::min<int64_t>({want, (rows + 7) / 8, 65535});
    chunk_rows = (rows + nchunks - 1) / nchunks;
    nchunks = (rows + chunk_rows - 1) / chunk_rows;
  }
  const int64_t per = nchunks * cols;
  void* scratch = nullptr;
  if (per > 0) DR_CUDA_TRY(scratch_alloc(&scratch, static_cast<size_t>(per) * sizeof(float) * 2));
  float* pw = static_cast<float*>(scratch);
  float* pb = pw ? pw + per : nullptr;
  if (nchunks > 0) {
    dim3 grid(static_cast<unsigned>(tiles), static_cast<unsigned>(nchunks));
    norm_bw_partial<T, LAYER><<<grid, dim3(32, 8), 0, stream()>>>(dw.p ? pw : nullptr, db.p ? pb : nullptr, px, pg,
                                                                 mean, rstd, rows, cols, chunk_rows);
  }
  int status = check_launch(name);
  if (status == 0) {
    norm_bw_final<<<grid_cap((cols + 255) / 256), 256, 0, stream()>>>(dw, db, pw, pb, nchunks, cols);
    status = check_launch(name);
  }
  if (scratch) {
    const int rel = scratch_release(scratch);
    if (status == 0) status = rel;
  }
  return status;
}

// Validates an optional [cols] float32/bfloat16 tensor and describes it for the kernels.
int make_param(const char* name, const char* what, const View* v, int64_t cols, Param* q) {
  q->p = nullptr;
  q->bf16 = 0;
  if (!has(v)) return 0;
  if (dt(*v) != DType::F32 && dt(*v) != DType::BF16) return dtype_error(name, *v);
  if (view_numel(*v) != cols || !view_contiguous(*v))
    return set_error(std::string(name) + ": " + what + " must be contiguous with one value per column");
  q->p = v->data;
  q->bf16 = dt(*v) == DType::BF16;
  return 0;
}

// A float32 [n] statistics view (required when `need`).
int stat_in(const char* name, const char* what, const View* v, int64_t n, bool need, const float** p) {
  *p = nullptr;
  if (!has(v)) return need ? set_error(std::string(name) + ": " + what + " is required") : 0;
  if (dt(*v) != DType::F32) {
    if (dt(*v) == DType::F64) return dtype_error(name, *v);
    return set_error(std::string(name) + ": " + what + " must be float32");
  }
  if (view_numel(*v) != n || !view_contiguous(*v))
    return set_error(std::string(name) + ": " + what + " must be contiguous with " + std::to_string(n) + " elements");
  *p = static_cast<const float*>(v->data);
  return 0;
}

int same_layout(const char* name, const View& a, const View& b, const char* what) {
  if (a.dtype != b.dtype) return set_error(std::string(name) + ": " + what + " dtype must match x's");
  if (view_numel(a) != view_numel(b) || !view_contiguous(a) || !view_contiguous(b))
    return set_error(std::string(name) + ": " + what + " must be contiguous with x's size");
  return 0;
}

int norm_bw_entry(const char* name, bool layer, const View* dx, const View* dw, const View* db, const View* x,
                  const View* w, const View* mean, const View* rstd, const View* dy) {
  DR_CUDA_TRY(same_layout(name, *dx, *x, "dx"));
  DR_CUDA_TRY(same_layout(name, *dy, *x, "dy"));
  const int64_t cols = x->ndim ? x->shape[x->ndim - 1] : 1;
  const int64_t rows = cols ? view_numel(*x) / cols : 0;
  Param pw, pdw, pdb;
  const float *pm = nullptr, *pr = nullptr;
  DR_CUDA_TRY(make_param(name, "weight", w, cols, &pw));
  DR_CUDA_TRY(make_param(name, "dweight", dw, cols, &pdw));
  DR_CUDA_TRY(make_param(name, "dbias", db, cols, &pdb));
  DR_CUDA_TRY(stat_in(name, "mean", mean, rows, layer, &pm));
  DR_CUDA_TRY(stat_in(name, "rstd", rstd, rows, true, &pr));
  switch (dt(*x)) {
    case DType::F32:
      return layer ? launch_norm_bw<float, true>(name, *dx, pdw, pdb, *x, pw, pm, pr, *dy)
                   : launch_norm_bw<float, false>(name, *dx, pdw, pdb, *x, pw, pm, pr, *dy);
    case DType::BF16:
      return layer ? launch_norm_bw<bf16_t, true>(name, *dx, pdw, pdb, *x, pw, pm, pr, *dy)
                   : launch_norm_bw<bf16_t, false>(name, *dx, pdw, pdb, *x, pw, pm, pr, *dy);
    default: return dtype_error(name, *x);
  }
}

// ---- cross-entropy -----------------------------------------------------------------------
template <typename T>
__global__ void cross_entropy_bw(T* __restrict__ dx, const T* __restrict__ x, const int32_t* __restrict__ targets,
                                 const float* __restrict__ lse, const float* __restrict__ dloss, int64_t rows, int64_t C,
                                 int32_t ignore_index, float smoothing) {
  const int64_t n = rows * C;
  const float sc = smoothing / static_cast<float>(C);
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t r = i / C, j = i - r * C;
    const int32_t t = targets[r];
    float v;
    if (t == ignore_index) {
      v = 0.0f;
    } else if (t < 0 || static_cast<int64_t>(t) >= C) {
      v = NAN;  // never read through a bad target; the forward has reported it
    } else {
      v = dloss[r] * (expf(ld(x[i]) - lse[r]) - sc - (j == t ? 1.0f - smoothing : 0.0f));
    }
    dx[i] = st<T>(v);
  }
}

// emu:begin bwunary (the unary ops' gradients; test/cuda_emu/unary_test.cpp)
// ---- unary ---------------------------------------------------------------------------------
template <int OP>
__device__ __forceinline__ float unary_grad(float v, float g) {
  constexpr UnaryOp op = static_cast<UnaryOp>(OP);
  if constexpr (op == UnaryOp::Neg) return -g;
  else if constexpr (op == UnaryOp::Abs) return v > 0.0f ? g : v < 0.0f ? -g : (v == v ? 0.0f : v);
  else if constexpr (op == UnaryOp::Exp || op == UnaryOp::Expm1) return g * expf(v);
  else if constexpr (op == UnaryOp::Log) return g / v;
  else if constexpr (op == UnaryOp::Sqrt) return g * 0.5f / sqrtf(v);
  else if constexpr (op == UnaryOp::Rsqrt) return g * -0.5f / (v * sqrtf(v));
  else if constexpr (op == UnaryOp::Sin) return g * cosf(v);
  else if constexpr (op == UnaryOp::Cos) return -g * sinf(v);
  else if constexpr (op == UnaryOp::Tanh) return act_tanh_grad(v, g);
  else if constexpr (op == UnaryOp::Sigmoid) return act_sigmoid_grad(v, g);
  else if constexpr (op == UnaryOp::Relu) return act_relu_grad(v, g);
  else if constexpr (op == UnaryOp::Gelu) return act_gelu_grad(v, g);
  else if constexpr (op == UnaryOp::GeluTanh) return act_gelu_tanh_grad(v, g);
  else if constexpr (op == UnaryOp::Silu) return act_silu_grad(v, g);
  else if constexpr (op == UnaryOp::Square) return g * 2.0f * v;
  else if constexpr (op == UnaryOp::Reciprocal) return -g / (v * v);
  else if constexpr (op == UnaryOp::Erf) return g * 1.1283791670955126f * expf(-v * v);
  else if constexpr (op == UnaryOp::Log1p) return g / (1.0f + v);
  else return 0.0f;  // Floor, Ceil, Round, Sign (LogicalNot is rejected by the entry)
}

template <typename T, int OP>
__global__ void unary_bw_kernel(T* __restrict__ dx, const T* __restrict__ x, const T* __restrict__ dy, int64_t n) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    dx[i] = st<T>(unary_grad<OP>(ld(x[i]), ld(dy[i])));
}

// emu:end bwunary

template <typename T>
int launch_unary_bw(int32_t op, const View& dx, const View& x, const View& dy) {
  const int64_t n = view_numel(x);
  T* o = static_cast<T*>(dx.data);
  const T* px = static_cast<const T*>(x.data);
  const T* pg = static_cast<const T*>(dy.data);
  const int blocks = grid_cap((n + 255) / 256);
  switch (op) {
#define DR_UNARY_BW_CASE(name, str)                                                                          \
  case static_cast<int32_t>(UnaryOp::name):                                                                  \
    unary_bw_kernel<T, static_cast<int>(UnaryOp::name)><<<blocks, 256, 0, stream()>>>(o, px, pg, n);         \
    break;
    DR_UNARY_OP_VALUES(DR_UNARY_BW_CASE)
#undef DR_UNARY_BW_CASE
    default: return set_error("unary_backward: unknown op " + std::to_string(op));
  }
  return check_launch("unary_backward");
}

// emu:begin bwswiglu (test/cuda_emu/unary_test.cpp)
// ---- SwiGLU --------------------------------------------------------------------------------
template <typename T>
__global__ void swiglu_bw(T* __restrict__ dx, const T* __restrict__ x, const T* __restrict__ dy, int64_t rows,
                          int64_t h) {
  const int64_t n = rows * h;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t r = i / h, j = i - r * h;
    const int64_t ia = r * 2 * h + j, ib = ia + h;
    const float a = ld(x[ia]), b = ld(x[ib]), g = ld(dy[i]);
    dx[ia] = st<T>(act_silu_grad(a, g * b));
    dx[ib] = st<T>(g * a * act_sigmoid(a));
  }
}

// emu:end bwswiglu

}  // namespace

int softmax_backward(const View* dx, const View* y, const View* dy, int64_t outer, int64_t dim, int64_t inner,
                     int32_t log) {
  DR_CUDA_ENTRY_BEGIN
  const char* name = "softmax_backward";
  if (outer < 0 || dim < 0 || inner < 0) return set_error("softmax_backward: negative extent");
  DR_CUDA_TRY(same_layout(name, *dx, *y, "dx"));
  DR_CUDA_TRY(same_layout(name, *dy, *y, "dy"));
  if (view_numel(*y) != outer * dim * inner) return set_error("softmax_backward: extents do not match y's size");
  if (outer * dim * inner == 0) return 0;
  switch (dt(*y)) {
    case DType::F32: return launch_softmax_bw<float>(*dx, *y, *dy, outer, dim, inner, log);
    case DType::BF16: return launch_softmax_bw<bf16_t>(*dx, *y, *dy, outer, dim, inner, log);
    default: return dtype_error(name, *y);
  }
  DR_CUDA_ENTRY_END("softmax_backward")
}

int rms_norm_backward(const View* dx, const View* dw, const View* x, const View* w, const View* rstd, const View* dy) {
  DR_CUDA_ENTRY_BEGIN
  return norm_bw_entry("rms_norm_backward", false, dx, dw, nullptr, x, w, nullptr, rstd, dy);
  DR_CUDA_ENTRY_END("rms_norm_backward")
}

int layer_norm_backward(const View* dx, const View* dw, const View* db, const View* x, const View* w, const View* mean,
                        const View* rstd, const View* dy) {
  DR_CUDA_ENTRY_BEGIN
  return norm_bw_entry("layer_norm_backward", true, dx, dw, db, x, w, mean, rstd, dy);
  DR_CUDA_ENTRY_END("layer_norm_backward")
}

int cross_entropy_backward(const View* dlogits, const View* logits, const View* targets, const View* lse,
                           const View* dloss, int32_t ignore_index, float smoothing) {
  DR_CUDA_ENTRY_BEGIN
  const char* name = "cross_entropy_backward";
  if (logits->ndim != 2) return set_error("cross_entropy_backward: logits must be [rows, C]");
  DR_CUDA_TRY(same_layout(name, *dlogits, *logits, "dlogits"));
  const int64_t rows = logits->shape[0], C = logits->shape[1];
  if (dt(*targets) != DType::I32 || view_numel(*targets) != rows || !view_contiguous(*targets))
    return set_error("cross_entropy_backward: targets must be contiguous int32 with one entry per row");
  const float *pl = nullptr, *pg = nullptr;
  DR_CUDA_TRY(stat_in(name, "lse", lse, rows, true, &pl));
  DR_CUDA_TRY(stat_in(name, "dloss", dloss, rows, true, &pg));
  if (rows * C == 0) return 0;
  const int blocks = grid_cap((rows * C + 255) / 256);
  const int32_t* pt = static_cast<const int32_t*>(targets->data);
  switch (dt(*logits)) {
    case DType::F32:
      cross_entropy_bw<float><<<blocks, 256, 0, stream()>>>(static_cast<float*>(dlogits->data),
                                                            static_cast<const float*>(logits->data), pt, pl, pg, rows,
                                                            C, ignore_index, smoothing);
      break;
    case DType::BF16:
      cross_entropy_bw<bf16_t><<<blocks, 256, 0, stream()>>>(static_cast<bf16_t*>(dlogits->data),
                                                             static_cast<const bf16_t*>(logits->data), pt, pl, pg,
                                                             rows, C, ignore_index, smoothing);
      break;
    default: return dtype_error(name, *logits);
  }
  return check_launch(name);
  DR_CUDA_ENTRY_END("cross_entropy_backward")
}

int unary_backward(int32_t op, const View* dx, const View* x, const View* dy) {
  DR_CUDA_ENTRY_BEGIN
  const char* name = "unary_backward";
  if (op < 0 || op >= static_cast<int32_t>(UnaryOp::Count)) return set_error("unary_backward: unknown op " + std::to_string(op));
  if (op == static_cast<int32_t>(UnaryOp::LogicalNot)) return set_error("unary_backward: logicalNot has no gradient");
  DR_CUDA_TRY(same_layout(name, *dx, *x, "dx"));
  DR_CUDA_TRY(same_layout(name, *dy, *x, "dy"));
  if (view_numel(*x) == 0) return 0;
  switch (dt(*x)) {
    case DType::F32: return launch_unary_bw<float>(op, *dx, *x, *dy);
    case DType::BF16: return launch_unary_bw<bf16_t>(op, *dx, *x, *dy);
    default: return dtype_error(name, *x);
  }
  DR_CUDA_ENTRY_END("unary_backward")
}

int swiglu_backward(const View* dx, const View* x, const View* dy) {
  DR_CUDA_ENTRY_BEGIN
  const char* name = "swiglu_backward";
  DR_CUDA_TRY(same_layout(name, *dx, *x, "dx"));
  if (dy->dtype != x->dtype || !view_contiguous(*dy)) return set_error("swiglu_backward: dy must be contiguous with x's dtype");
  const int64_t h = dy->ndim ? dy->shape[dy->ndim - 1] : 1;
  const int64_t rows = h ? view_numel(*dy) / h : 0;
  if (x->ndim < 1 || x->shape[x->ndim - 1] != 2 * h || view_numel(*x) != rows * 2 * h)
    return set_error("swiglu_backward: x must be [rows, 2h] for dy [rows, h]");
  if (rows * h == 0) return 0;
  const int blocks = grid_cap((rows * h + 255) / 256);
  switch (dt(*x)) {
    case DType::F32:
      swiglu_bw<float><<<blocks, 256, 0, stream()>>>(static_cast<float*>(dx->data), static_cast<const float*>(x->data),
                                                     static_cast<const float*>(dy->data), rows, h);
      break;
    case DType::BF16:
      swiglu_bw<bf16_t><<<blocks, 256, 0, stream()>>>(static_cast<bf16_t*>(dx->data),
                                                      static_cast<const bf16_t*>(x->data),
                                                      static_cast<const bf16_t*>(dy->data), rows, h);
      break;
    default: return dtype_error(name, *x);
  }
  return check_launch(name);
  DR_CUDA_ENTRY_END("swiglu_backward")
}

}  // namespace cuda
}  // namespace dualroute
