// Mixture-of-experts kernels on the GPU (float32 / bfloat16 tokens, float32 weights and sums).
// Layouts and semantics as native/cpu/moe.cpp:
//   grouped buffer: N rows; dropless: expert e owns rows [offsets[e], offsets[e+1]) (offsets
//   [E+1], the exclusive cumsum of the counts, read on the device: no host sync for shapes);
//   capacity: rows [e C, (e+1) C). Entry (t, k) of expert e at slot p goes to row
//   offsets[e] + p or e C + p; p = -1 (dropped) goes nowhere.
//
// moe_plan (rows [T, K], sources [N], checked): three grid-stride kernels,
//   moe_plan_rows     one thread per entry: checks expert and slot (and, per expert, the
//                     offsets), writes the row (-1 when dropped or bad) and records the first bad
//                     entry / offset in device slots;
//   moe_plan_sources  one thread per entry: sources[row] = entry (sources filled with -1 first);
//   moe_plan_verify   one thread per entry: sources[row] must be the entry itself, else two
//                     entries share a row (whichever store won, the other sees it): recorded.
// The host waits for the slots (as embedding does) and reports a RangeError.
// Token movement, all gathers (each output written once, deterministic, no atomics), a warp per
// output row with the lanes along D:
//   moe_gather_rows   out[r] = w[s] x[s / K], s = sources[r] (0 when -1): the dispatch, and the
//                     combine's gradient to y
//   moe_combine_rows  out[t] = sum_k w[t, k] y[rows[t, k]] (k in order, float32 sums): the
//                     combine, and the dispatch's gradient (w = 1)
//   moe_weight_grad   dw[t, k] = dot(y[rows[t, k]], dout[t]), a warp reduction per entry
// Grouped GEMM (SIMT, float32 accumulation, 64 x 64 output tiles, 16 x 16 threads of 4 x 4):
//   grouped_gemm<T, TB>  out[rows of e] = a[rows of e] @ op(b[e]). The rows [0, N) split into
//                     segments: rows before expert 0, each expert's (clamped: start_0 =
//                     min(max(offsets[0], 0), N), start_e = end_{e-1}, end_e =
//                     min(max(offsets[e+1], start_e), N)), rows after the last; a tile never
//                     straddles two segments. The grid is
//                     sized on the host for the worst case, ceil(N / 64) + E + 2 row tiles (no
//                     read of the offsets) times ceil(n / 64) column tiles (a 1-D grid, row tile
//                     major); each block walks the
//                     offsets on the device to find its segment and row tile (thread 0, O(E)),
//                     blocks past the last tile exit, tiles of a segment without an expert
//                     write zeros.
//   grouped_gemm_wgrad<T>  out[e] = a_e^T g_e: a block per (expert, 64 x 64 tile of out), looping
//                     over the expert's rows 16 at a time (an expert without rows writes zeros).
#include <algorithm>
#include <climits>
#include <mutex>
#include <string>

#include "device.cuh"

namespace dualroute {
namespace cuda {
namespace {

// emu:begin moe (test/cuda_emu runs the code up to emu:end in a warp emulator)
constexpr int kRowWarps = 8;     // rows (tokens, entries) per block of the movement kernels
constexpr int kGB = 64;          // grouped GEMM tile: rows and columns
constexpr int kGK = 16;          // grouped GEMM k step
constexpr int kGThreads = 256;   // 16 x 16 threads, 4 x 4 outputs each

// bad[0]: the first bad entry, bad[1]: the first bad offset, bad[2]: the first entry on a shared row
__global__ void moe_plan_rows(int32_t* __restrict__ rows, const int32_t* __restrict__ idx,
                              const int32_t* __restrict__ pos, const int32_t* __restrict__ off, int64_t n, int E,
                              int capacity, int64_t N, unsigned long long* bad) {
  for (int64_t i = gtid(); i < n; i += gstride()) {
    const int32_t e = idx[i], p = pos[i];
    bool ok = e >= 0 && e < E && p >= -1;
    int64_t r = -1;
    if (ok && p >= 0) {
      if (off) {
        ok = p < static_cast<int64_t>(off[e + 1]) - off[e];
        r = static_cast<int64_t>(off[e]) + p;
      } else {
        ok = p < capacity;
        r = static_cast<int64_t>(e) * capacity + p;
      }
      ok = ok && r >= 0 && r < N;  // bad offsets (reported below) must not give a row outside
    }
    if (!ok) record_bad(&bad[0], i);
    rows[i] = ok ? static_cast<int32_t>(r) : -1;
  }
  if (off)
    for (int64_t e = gtid(); e < E; e += gstride())
      if (off[e] < 0 || off[e + 1] < off[e] || off[e + 1] > N) record_bad(&bad[1], e);
}

__global__ void moe_plan_sources(int32_t* __restrict__ sources, const int32_t* __restrict__ rows, int64_t n) {
  for (int64_t i = gtid(); i < n; i += gstride()) {
    const int32_t r = rows[i];
    if (r >= 0) sources[r] = static_cast<int32_t>(i);
  }
}

__global__ void moe_plan_verify(const int32_t* __restrict__ sources, const int32_t* __restrict__ rows, int64_t n,
                                unsigned long long* bad) {
  for (int64_t i = gtid(); i < n; i += gstride()) {
    const int32_t r = rows[i];
    if (r >= 0 && sources[r] != i) record_bad(&bad[2], i);
  }
}

// out [N, D]: row r = w[s] * x[s / k] (s = sources[r]; no w: 1), 0 for s = -1 (or outside [0, limit))
template <typename T>
__global__ void __launch_bounds__(kRowWarps * 32) moe_gather_rows(T* __restrict__ out, const T* __restrict__ x,
                                                                 const int32_t* __restrict__ sources,
                                                                 const float* __restrict__ w, int64_t N, int64_t D,
                                                                 int k, int64_t limit) {
  const int lane = threadIdx.x & 31;
  for (int64_t r = static_cast<int64_t>(blockIdx.x) * kRowWarps + (threadIdx.x >> 5); r < N;
       r += static_cast<int64_t>(gridDim.x) * kRowWarps) {
    const int32_t s = sources[r];
    const bool ok = s >= 0 && s < limit;
    const float f = ok && w ? w[s] : 1.f;
    const T* xr = x + (ok ? static_cast<int64_t>(s / k) : 0) * D;
    T* o = out + r * D;
    for (int64_t j = lane; j < D; j += 32) o[j] = st<T>(ok ? f * ld(xr[j]) : 0.f);
  }
}

// out [T, D]: out[t] = sum_k w[t, k] y[rows[t, k]] over rows[t, k] in [0, N)
template <typename T>
__global__ void __launch_bounds__(kRowWarps * 32) moe_combine_rows(T* __restrict__ out, const T* __restrict__ y,
                                                                  const int32_t* __restrict__ rows,
                                                                  const float* __restrict__ w, int64_t ntok, int K,
                                                                  int64_t D, int64_t N) {
  const int lane = threadIdx.x & 31;
  for (int64_t t = static_cast<int64_t>(blockIdx.x) * kRowWarps + (threadIdx.x >> 5); t < ntok;
       t += static_cast<int64_t>(gridDim.x) * kRowWarps) {
    const int32_t* rt = rows + t * K;
    for (int64_t j = lane; j < D; j += 32) {
      float acc = 0.f;
      for (int kk = 0; kk < K; ++kk) {
        const int32_t r = rt[kk];
        if (r < 0 || r >= N) continue;
        acc += (w ? w[t * K + kk] : 1.f) * ld(y[static_cast<int64_t>(r) * D + j]);
      }
      out[t * D + j] = st<T>(acc);
    }
  }
}

// dw [T*K] = dot(y[rows[i]], dout[i / K]), 0 for a dropped entry
template <typename T>
__global__ void __launch_bounds__(kRowWarps * 32) moe_weight_grad(float* __restrict__ dw, const T* __restrict__ y,
                                                                 const int32_t* __restrict__ rows,
                                                                 const T* __restrict__ dout, int64_t n, int K,
                                                                 int64_t D, int64_t N) {
  const int lane = threadIdx.x & 31;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * kRowWarps + (threadIdx.x >> 5); i < n;
       i += static_cast<int64_t>(gridDim.x) * kRowWarps) {
    const int32_t r = rows[i];
    float s = 0.f;
    if (r >= 0 && r < N) {
      const T* yr = y + static_cast<int64_t>(r) * D;
      const T* dr = dout + (i / K) * D;
      for (int64_t j = lane; j < D; j += 32) s += ld(yr[j]) * ld(dr[j]);
    }
    s = warp_sum(s);
    if (lane == 0) dw[i] = s;
  }
}

// The segment holding row tile `tile` (segments in row order: rows before expert 0, experts
// 0..E-1 clamped, rows after): seg[0] = its expert (-1: no expert, -2: past the last tile),
// seg[1] = the tile's first row, seg[2] = the segment's end.
__device__ __forceinline__ void find_tile(const int32_t* off, int E, int64_t N, int64_t tile, long long* seg) {
  int64_t prev = 0;
  for (int s = 0; s <= E + 1; ++s) {
    int64_t a, b;
    if (s == 0) {
      a = 0;
      b = min(max(static_cast<long long>(off[0]), 0LL), static_cast<long long>(N));
    } else if (s <= E) {
      a = prev;
      b = min(max(static_cast<long long>(off[s]), static_cast<long long>(a)), static_cast<long long>(N));
    } else {
      a = prev;
      b = N;
    }
    prev = b;
    const int64_t nt = (b - a + kGB - 1) / kGB;
    if (tile < nt) {
      seg[0] = s >= 1 && s <= E ? s - 1 : -1;
      seg[1] = a + tile * kGB;
      seg[2] = b;
      return;
    }
    tile -= nt;
  }
  seg[0] = -2;
  seg[1] = seg[2] = 0;
}

// out [N, n] = per segment a [N, K] @ op(b[e]) (b [E, K, n], TB: [E, n, K]); zero rows without an expert
template <typename T, bool TB>
__global__ void __launch_bounds__(kGThreads) grouped_gemm(T* __restrict__ out, const T* __restrict__ a,
                                                         const T* __restrict__ b, const int32_t* __restrict__ off,
                                                         int E, int64_t N, int K, int n) {
  __shared__ float As[kGK][kGB + 4], Bs[kGK][kGB + 4];
  __shared__ long long seg[3];
  const int ctiles = (n + kGB - 1) / kGB;  // 1-D grid: row tile major, column tile minor
  if (threadIdx.x == 0) find_tile(off, E, N, blockIdx.x / ctiles, seg);
  __syncthreads();
  const int e = static_cast<int>(seg[0]);
  if (e == -2) return;  // the whole block: past the last tile
  const int64_t r0 = seg[1], r1 = seg[2];
  const int tid = threadIdx.x, tx = tid & 15, ty = tid >> 4;
  const int n0 = static_cast<int>(blockIdx.x % ctiles) * kGB;
  float acc[4][4];
#pragma unroll
  for (int i = 0; i < 4; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j) acc[i][j] = 0.f;
  if (e >= 0) {
    const T* B = b + static_cast<int64_t>(e) * K * n;
    for (int k0 = 0; k0 < K; k0 += kGK) {
#pragma unroll
      for (int q = 0; q < 4; ++q) {
        const int i = tid + q * kGThreads;
        // A: 64 rows x 16 k, k fastest across lanes
        const int row = i >> 4, kk = i & 15;
        const int64_t gr = r0 + row;
        const int gk = k0 + kk;
        As[kk][row] = gr < r1 && gk < K ? ld(a[gr * K + gk]) : 0.f;
        // B: 16 k x 64 n, the stored layout's contiguous dimension fastest
        int bk, bj;
        if (!TB) bk = i >> 6, bj = i & 63;
        else bj = i >> 4, bk = i & 15;
        const int gbk = k0 + bk, gbj = n0 + bj;
        Bs[bk][bj] = gbk < K && gbj < n ? ld(TB ? B[static_cast<int64_t>(gbj) * K + gbk] : B[static_cast<int64_t>(gbk) * n + gbj]) : 0.f;
      }
      __syncthreads();
#pragma unroll
      for (int kk = 0; kk < kGK; ++kk) {
        float av[4], bv[4];
#pragma unroll
        for (int i = 0; i < 4; ++i) av[i] = As[kk][ty * 4 + i];
#pragma unroll
        for (int j = 0; j < 4; ++j) bv[j] = Bs[kk][tx * 4 + j];
#pragma unroll
        for (int i = 0; i < 4; ++i)
#pragma unroll
          for (int j = 0; j < 4; ++j) acc[i][j] = fmaf(av[i], bv[j], acc[i][j]);
      }
      __syncthreads();
    }
  }
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int64_t row = r0 + ty * 4 + i;
    if (row >= r1) continue;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int col = n0 + tx * 4 + j;
      if (col < n) out[row * n + col] = st<T>(acc[i][j]);
    }
  }
}

// out [E, K, n]: out[e] = a[rows of e]^T g[rows of e]; a 1-D grid of (expert, K tile, n tile)
template <typename T>
__global__ void __launch_bounds__(kGThreads) grouped_gemm_wgrad(T* __restrict__ out, const T* __restrict__ a,
                                                               const T* __restrict__ g,
                                                               const int32_t* __restrict__ off, int E, int64_t N,
                                                               int K, int n) {
  __shared__ float As[kGK][kGB + 4], Bs[kGK][kGB + 4];
  __shared__ long long range[2];
  const int ntiles = (n + kGB - 1) / kGB, ktiles = (K + kGB - 1) / kGB;
  const int e = static_cast<int>(blockIdx.x / (ktiles * ntiles));
  const int rem = static_cast<int>(blockIdx.x % (ktiles * ntiles));
  if (threadIdx.x == 0) {
    // expert e's clamped rows (the walk of find_tile)
    int64_t prev = min(max(static_cast<long long>(off[0]), 0LL), static_cast<long long>(N)), s = 0, f = 0;
    for (int x = 0; x <= e; ++x) {
      s = prev;
      f = min(max(static_cast<long long>(off[x + 1]), static_cast<long long>(s)), static_cast<long long>(N));
      prev = f;
    }
    range[0] = s;
    range[1] = f;
  }
  __syncthreads();
  const int64_t r0 = range[0], r1 = range[1];
  const int tid = threadIdx.x, tx = tid & 15, ty = tid >> 4;
  const int i0 = (rem / ntiles) * kGB, j0 = (rem % ntiles) * kGB;
  float acc[4][4];
#pragma unroll
  for (int i = 0; i < 4; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j) acc[i][j] = 0.f;
  for (int64_t rb = r0; rb < r1; rb += kGK) {
#pragma unroll
    for (int q = 0; q < 4; ++q) {
      const int idx = tid + q * kGThreads;
      const int rr = idx >> 6, cc = idx & 63;  // 16 rows x 64 columns, columns fastest
      const int64_t gr = rb + rr;
      As[rr][cc] = gr < r1 && i0 + cc < K ? ld(a[gr * K + i0 + cc]) : 0.f;
      Bs[rr][cc] = gr < r1 && j0 + cc < n ? ld(g[gr * n + j0 + cc]) : 0.f;
    }
    __syncthreads();
#pragma unroll
    for (int rr = 0; rr < kGK; ++rr) {
      float av[4], bv[4];
#pragma unroll
      for (int i = 0; i < 4; ++i) av[i] = As[rr][ty * 4 + i];
#pragma unroll
      for (int j = 0; j < 4; ++j) bv[j] = Bs[rr][tx * 4 + j];
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] = fmaf(av[i], bv[j], acc[i][j]);
    }
    __syncthreads();
  }
  T* o = out + static_cast<int64_t>(e) * K * n;
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int row = i0 + ty * 4 + i;
    if (row >= K) continue;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int col = j0 + tx * 4 + j;
      if (col < n) o[static_cast<int64_t>(row) * n + col] = st<T>(acc[i][j]);
    }
  }
}
// emu:end moe

__device__ unsigned long long g_moe_bad[3];  // moe_plan's slots (see moe_plan_rows), ~0 when none
std::mutex g_moe_mutex;                       // keeps reset, launches and read-back together

int check_views(const char* name, std::initializer_list<const View*> vs) {
  for (const View* v : vs)
    if (v->data && !view_contiguous(*v)) return set_error(std::string(name) + ": tensors must be contiguous");
  return 0;
}

}  // namespace

int moe_plan(const View* rows, const View* sources, const View* indices, const View* positions, const View* offsets,
             int32_t experts, int32_t capacity) {
  DR_CUDA_ENTRY_BEGIN
  const char* name = "moePlan";
  DR_CUDA_TRY(check_views(name, {rows, sources, indices, positions, offsets}));
  const int64_t T = indices->shape[0], K = indices->shape[1], N = sources->shape[0], n = T * K;
  const int32_t* pi = static_cast<const int32_t*>(indices->data);
  const int32_t* pp = static_cast<const int32_t*>(positions->data);
  const int32_t* po = static_cast<const int32_t*>(offsets->data);
  int32_t* pr = static_cast<int32_t*>(rows->data);
  int32_t* ps = static_cast<int32_t*>(sources->data);
  std::lock_guard<std::mutex> lock(g_moe_mutex);
  void* slot = nullptr;
  DR_CUDA_TRY(check(cudaGetSymbolAddress(&slot, g_moe_bad), name));
  unsigned long long* bad = static_cast<unsigned long long*>(slot);
  DR_CUDA_TRY(check(cudaMemsetAsync(bad, 0xff, 3 * sizeof(unsigned long long), stream()), name));
  moe_plan_rows<<<grid_for(std::max<int64_t>(n, experts)), kThreads, 0, stream()>>>(pr, pi, pp, po, n, experts, capacity, N, bad);
  DR_CUDA_TRY(check_launch(name));
  if (N > 0) DR_CUDA_TRY(check(cudaMemsetAsync(ps, 0xff, static_cast<size_t>(N) * sizeof(int32_t), stream()), name));
  moe_plan_sources<<<grid_for(n), kThreads, 0, stream()>>>(ps, pr, n);
  DR_CUDA_TRY(check_launch(name));
  moe_plan_verify<<<grid_for(n), kThreads, 0, stream()>>>(ps, pr, n, bad);
  DR_CUDA_TRY(check_launch(name));
  unsigned long long got[3] = {0, 0, 0};
  DR_CUDA_TRY(check(cudaMemcpyAsync(got, bad, sizeof(got), cudaMemcpyDeviceToHost, stream()), name));
  DR_CUDA_TRY(check(cudaStreamSynchronize(stream()), name));
  auto s = [](int64_t v) { return std::to_string(v); };
  if (got[1] != ~0ull) {
    const int64_t e = static_cast<int64_t>(got[1]);
    int32_t a = 0, b = 0;
    DR_CUDA_TRY(read_index(po + e, &a, name));
    DR_CUDA_TRY(read_index(po + e + 1, &b, name));
    return set_error("RangeError: moePlan: offsets must increase inside [0, " + s(N) + "]: offsets[" + s(e) + "] = " +
                     s(a) + ", offsets[" + s(e + 1) + "] = " + s(b));
  }
  if (got[0] != ~0ull) {
    const int64_t i = static_cast<int64_t>(got[0]), t = i / K, k = i % K;
    int32_t e = 0, p = 0;
    DR_CUDA_TRY(read_index(pi + i, &e, name));
    DR_CUDA_TRY(read_index(pp + i, &p, name));
    if (e < 0 || e >= experts)
      return set_error("RangeError: moePlan: indices[" + s(t) + ", " + s(k) + "] = " + s(e) + " is outside [0, " +
                       s(experts) + ")");
    if (po) {
      int32_t a = 0, b = 0;
      DR_CUDA_TRY(read_index(po + e, &a, name));
      DR_CUDA_TRY(read_index(po + e + 1, &b, name));
      return set_error("RangeError: moePlan: positions[" + s(t) + ", " + s(k) + "] = " + s(p) + " is outside [-1, " +
                       s(int64_t(b) - a) + ") (expert " + s(e) + " holds " + s(int64_t(b) - a) + " rows)");
    }
    return set_error("RangeError: moePlan: positions[" + s(t) + ", " + s(k) + "] = " + s(p) + " is outside [-1, " +
                     s(capacity) + ") (the capacity)");
  }
  if (got[2] != ~0ull) {
    const int64_t i = static_cast<int64_t>(got[2]);
    int32_t r = 0;
    DR_CUDA_TRY(read_index(pr + i, &r, name));
    return set_error("RangeError: moePlan: entry (" + s(i / K) + ", " + s(i % K) + ") shares row " + s(r) +
                     " with another entry: positions must be distinct per expert");
  }
  return 0;
  DR_CUDA_ENTRY_END("moePlan")
}

int moe_gather(const View* out, const View* x, const View* sources, const View* weights, int32_t k) {
  DR_CUDA_ENTRY_BEGIN
  const char* name = "moeGather";
  DR_CUDA_TRY(check_views(name, {out, x, sources, weights}));
  const int64_t N = out->shape[0], D = out->shape[1], T = x->shape[0];
  if (N == 0 || D == 0) return 0;
  const unsigned blocks = static_cast<unsigned>(grid_cap((N + kRowWarps - 1) / kRowWarps));
  const int32_t* ps = static_cast<const int32_t*>(sources->data);
  const float* pw = static_cast<const float*>(weights->data);
  switch (dt(*x)) {
    case DType::F32:
      moe_gather_rows<float><<<blocks, kRowWarps * 32, 0, stream()>>>(static_cast<float*>(out->data), static_cast<const float*>(x->data), ps, pw, N, D, k, T * k);
      break;
    case DType::BF16:
      moe_gather_rows<bf16_t><<<blocks, kRowWarps * 32, 0, stream()>>>(static_cast<bf16_t*>(out->data), static_cast<const bf16_t*>(x->data), ps, pw, N, D, k, T * k);
      break;
    default: return dtype_error(name, *x);
  }
  return check_launch(name);
  DR_CUDA_ENTRY_END("moeGather")
}

int moe_combine(const View* out, const View* y, const View* rows, const View* weights) {
  DR_CUDA_ENTRY_BEGIN
  const char* name = "moeCombine";
  DR_CUDA_TRY(check_views(name, {out, y, rows, weights}));
  const int64_t T = out->shape[0], D = out->shape[1], N = y->shape[0];
  const int K = static_cast<int>(rows->shape[1]);
  if (T == 0 || D == 0) return 0;
  const unsigned blocks = static_cast<unsigned>(grid_cap((T + kRowWarps - 1) / kRowWarps));
  const int32_t* pr = static_cast<const int32_t*>(rows->data);
  const float* pw = static_cast<const float*>(weights->data);
  switch (dt(*y)) {
    case DType::F32:
      moe_combine_rows<float><<<blocks, kRowWarps * 32, 0, stream()>>>(static_cast<float*>(out->data), static_cast<const float*>(y->data), pr, pw, T, K, D, N);
      break;
    case DType::BF16:
      moe_combine_rows<bf16_t><<<blocks, kRowWarps * 32, 0, stream()>>>(static_cast<bf16_t*>(out->data), static_cast<const bf16_t*>(y->data), pr, pw, T, K, D, N);
      break;
    default: return dtype_error(name, *y);
  }
  return check_launch(name);
  DR_CUDA_ENTRY_END("moeCombine")
}

int moe_combine_weight_grad(const View* dweights, const View* y, const View* rows, const View* dout) {
  DR_CUDA_ENTRY_BEGIN
  const char* name = "moeCombineWeightGrad";
  DR_CUDA_TRY(check_views(name, {dweights, y, rows, dout}));
  const int64_t T = dout->shape[0], D = dout->shape[1], N = y->shape[0];
  const int K = static_cast<int>(rows->shape[1]);
  const int64_t n = T * K;
  if (n == 0) return 0;
  const unsigned blocks = static_cast<unsigned>(grid_cap((n + kRowWarps - 1) / kRowWarps));
  const int32_t* pr = static_cast<const int32_t*>(rows->data);
  float* pw = static_cast<float*>(dweights->data);
  switch (dt(*y)) {
    case DType::F32:
      moe_weight_grad<float><<<blocks, kRowWarps * 32, 0, stream()>>>(pw, static_cast<const float*>(y->data), pr, static_cast<const float*>(dout->data), n, K, D, N);
      break;
    case DType::BF16:
      moe_weight_grad<bf16_t><<<blocks, kRowWarps * 32, 0, stream()>>>(pw, static_cast<const bf16_t*>(y->data), pr, static_cast<const bf16_t*>(dout->data), n, K, D, N);
      break;
    default: return dtype_error(name, *y);
  }
  return check_launch(name);
  DR_CUDA_ENTRY_END("moeCombineWeightGrad")
}

int grouped_matmul(const View* out, const View* a, const View* b, const View* offsets, int32_t trans_b) {
  DR_CUDA_ENTRY_BEGIN
  const char* name = "groupedMatmul";
  DR_CUDA_TRY(check_views(name, {out, a, b, offsets}));
  const int64_t N = a->shape[0], K = a->shape[1], E = b->shape[0], n = out->shape[1];
  if (N == 0 || n == 0) return 0;
  if (K > INT_MAX || n > INT_MAX - kGB || E > INT_MAX - 2) return set_error("groupedMatmul: dimensions too large for one launch");
  const int64_t row_tiles = (N + kGB - 1) / kGB + E + 2;  // the worst case: every segment ends in a partial tile
  const int64_t blocks = row_tiles * ((n + kGB - 1) / kGB);
  if (blocks > INT_MAX) return set_error("groupedMatmul: too many tiles for one launch");
  const unsigned grid = static_cast<unsigned>(blocks);
  const int32_t* po = static_cast<const int32_t*>(offsets->data);
  const int e = static_cast<int>(E), kk = static_cast<int>(K), nn = static_cast<int>(n);
#define DR_GG(T, TB) grouped_gemm<T, TB><<<grid, kGThreads, 0, stream()>>>(static_cast<T*>(out->data), static_cast<const T*>(a->data), static_cast<const T*>(b->data), po, e, N, kk, nn)
  switch (dt(*a)) {
    case DType::F32:
      if (trans_b) DR_GG(float, true);
      else DR_GG(float, false);
      break;
    case DType::BF16:
      if (trans_b) DR_GG(bf16_t, true);
      else DR_GG(bf16_t, false);
      break;
    default: return dtype_error(name, *a);
  }
#undef DR_GG
  return check_launch(name);
  DR_CUDA_ENTRY_END("groupedMatmul")
}

int grouped_matmul_weight_grad(const View* out, const View* a, const View* g, const View* offsets) {
  DR_CUDA_ENTRY_BEGIN
  const char* name = "groupedMatmulWeightGrad";
  DR_CUDA_TRY(check_views(name, {out, a, g, offsets}));
  const int64_t N = a->shape[0], K = a->shape[1], n = g->shape[1], E = out->shape[0];
  if (E == 0 || K == 0 || n == 0) return 0;
  const int64_t blocks = E * ((K + kGB - 1) / kGB) * ((n + kGB - 1) / kGB);
  if (K > INT_MAX - kGB || n > INT_MAX - kGB || blocks > INT_MAX)
    return set_error("groupedMatmulWeightGrad: too many tiles for one launch");
  const unsigned grid = static_cast<unsigned>(blocks);
  const int32_t* po = static_cast<const int32_t*>(offsets->data);
  const int e = static_cast<int>(E), kk = static_cast<int>(K), nn = static_cast<int>(n);
  switch (dt(*a)) {
    case DType::F32:
      grouped_gemm_wgrad<float><<<grid, kGThreads, 0, stream()>>>(static_cast<float*>(out->data), static_cast<const float*>(a->data), static_cast<const float*>(g->data), po, e, N, kk, nn);
      break;
    case DType::BF16:
      grouped_gemm_wgrad<bf16_t><<<grid, kGThreads, 0, stream()>>>(static_cast<bf16_t*>(out->data), static_cast<const bf16_t*>(a->data), static_cast<const bf16_t*>(g->data), po, e, N, kk, nn);
      break;
    default: return dtype_error(name, *a);
  }
  return check_launch(name);
  DR_CUDA_ENTRY_END("groupedMatmulWeightGrad")
}

}  // namespace cuda
}  // namespace dualroute
