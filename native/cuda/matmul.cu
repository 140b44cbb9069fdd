// Matrix multiply on the GPU: C = alpha * op(A) @ op(B) + beta * C, batched (core/ops.h MatmulArgs).
//
// Shapes, per batch index z (strides in elements, 0 = the operand is broadcast over the batch):
//   op(A) m x k   !trans_a: A[i,p] = a[z*sa + i*lda + p]     trans_a: A[i,p] = a[z*sa + p*lda + i]
//   op(B) k x n   !trans_b: B[p,j] = b[z*sb + p*ldb + j]     trans_b: B[p,j] = b[z*sb + j*ldb + p]
//   C     m x n   C[i,j] = c[z*sc + i*ldc + j]; never read when beta == 0 (it may hold NaN)
// Inputs and output share one dtype (float32 or bfloat16); products are accumulated in float32.
//
// Three ways to compute it:
//
// 1. matmul_bf16_mma: our tensor-core kernel for bfloat16. A 128x128 output tile per block of
//    8 warps (2 x 4), each warp owning 64x32 = 4 x 4 mma.m16n8k16 fragments (64 float accumulators
//    per thread). K advances 32 at a time through a 4-stage cp.async ring in shared memory:
//    while the tensor cores chew on stage s, the copies for s+1..s+3 are in flight. Tiles keep
//    the global layout (k-contiguous rows for A / B^T, m- or n-contiguous rows otherwise), so a
//    16-byte cp.async moves 8 neighbours straight from global memory without touching registers,
//    and the transpose, where one is needed, is done by ldmatrix.trans on the way into registers:
//        A row-major (m x k):  ldmatrix        B row-major (k x n):  ldmatrix.trans
//        A stored k x m:       ldmatrix.trans  B stored n x k:       ldmatrix
//    Rows are padded by 16 bytes (80 B or 272 B pitch) so the 8 row addresses of one ldmatrix
//    phase land in 8 different 4-bank groups: no bank conflicts, no swizzle arithmetic.
//    Edge tiles predicate each 16-byte chunk (src-size 0 makes cp.async write zeros), so any
//    m, n, k works as long as every chunk is either fully inside or fully outside the matrix and
//    16-byte aligned: contiguous extents, leading dims and batch strides multiples of 8 elements,
//    base pointers 16-byte aligned. Shapes that miss this take the SIMT kernel below.
//    Blocks are rasterised in groups of 8 tile-rows so that consecutive blocks share A and B
//    panels in L2.
//
// 2. matmul_simt: a register-blocked FP32-FMA kernel (128x128 tile, 8x8 outputs per thread,
//    K in steps of 8, double-buffered shared memory with the next tile's loads in flight during
//    the current tile's FMAs). Used for float32, where PyTorch's default is true fp32 (no TF32),
//    and as the any-shape, any-alignment fallback for bfloat16 (reads bf16, accumulates float).
//
// 3. cuBLASLt, opened at run time with dlopen (no link-time dependency, no headers: the few
//    entry points and enum values we need are declared below with their sources). It is
//    column-major, so the row-major C = op(A) op(B) is handed over as the column-major
//    C^T = op(B)^T op(A)^T: operands swapped, m and n swapped, same leading dimensions.
//
// algo 1 = own kernel, 2 = cuBLASLt, 0 = whichever was faster the first time this (dtype, m, n,
// k, batch, transposes) was seen: both are timed once (warm-up + 3 runs each, into a scratch
// output so that C only ever receives the final result) and the winner is cached.
#include <dlfcn.h>

#include <array>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <string>
#include <type_traits>

#include "common.cuh"
#include "mma.cuh"

namespace dualroute {
namespace cuda {
namespace {

using bf16_t = __nv_bfloat16;

// What every kernel needs, after the host has resolved dtype and transposes.
struct GemmParams {
  const void* a;
  const void* b;
  void* c;
  int64_t lda, ldb, ldc;
  int64_t sa, sb, sc;  // batch strides
  int m, n, k, batch;
  float alpha, beta;
  int c_pairs;  // bf16 output: pairs of columns may be stored as one 4-byte bf16x2
};

__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(bf16_t v) { return __bfloat162float(v); }
template <typename T>
__device__ __forceinline__ T from_float(float v);
template <>
__device__ __forceinline__ float from_float<float>(float v) { return v; }
template <>
__device__ __forceinline__ bf16_t from_float<bf16_t>(float v) { return __float2bfloat16_rn(v); }

__host__ __device__ __forceinline__ int ceil_div(int a, int b) { return a > 0 ? (a - 1) / b + 1 : 0; }

// Grouped rasterisation: walk 8 tile-rows down before moving right, so the blocks resident at
// the same time reuse the same few A row-panels and B column-panels from L2.
__device__ __forceinline__ void tile_coords(int tiles_m, int tiles_n, int& tm, int& tn) {
  constexpr int kGroup = 8;
  const int pid = blockIdx.x;
  const int per_group = kGroup * tiles_n;
  const int group = pid / per_group;
  const int first_m = group * kGroup;
  const int group_rows = min(tiles_m - first_m, kGroup);
  const int r = pid - group * per_group;
  tm = first_m + r % group_rows;
  tn = r / group_rows;
}

// ---------------------------------------------------------------------------------------------
// 1. bf16 tensor-core kernel
// ---------------------------------------------------------------------------------------------
namespace mma {

constexpr int BM = 128, BN = 128, BK = 32;
constexpr int STAGES = 4;
constexpr int THREADS = 256;  // 8 warps: 2 along m (64 rows each) x 4 along n (32 cols each)
constexpr int KPITCH = BK + 8;   // rows of 32 k-values: 80-byte pitch
constexpr int MNPITCH = BM + 8;  // rows of 128 m- or n-values: 272-byte pitch
static_assert(BM == BN, "the m- and n-contiguous tiles share MNPITCH");

// A tile: 128 rows of k (row-major A) or 32 rows of m (A stored k x m).
template <bool TA>
struct ATile {
  static constexpr int pitch = TA ? MNPITCH : KPITCH;
  static constexpr int elems = (TA ? BK : BM) * pitch;
};
// B tile: 32 rows of n (row-major B) or 128 rows of k (B stored n x k).
template <bool TB>
struct BTile {
  static constexpr int pitch = TB ? KPITCH : MNPITCH;
  static constexpr int elems = (TB ? BN : BK) * pitch;
};
template <bool TA, bool TB>
constexpr int smem_bytes() {
  return STAGES * (ATile<TA>::elems + BTile<TB>::elems) * (int)sizeof(bf16_t);
}


template <bool TA, bool TB>
__global__ void __launch_bounds__(THREADS, 2) matmul_bf16_mma(GemmParams p) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  extern __shared__ __align__(16) unsigned char smem_raw[];
  bf16_t* sA = reinterpret_cast<bf16_t*>(smem_raw);
  bf16_t* sB = sA + STAGES * ATile<TA>::elems;
  const uint32_t sA0 = smem_addr(sA), sB0 = smem_addr(sB);
  constexpr uint32_t kStageBytesA = ATile<TA>::elems * sizeof(bf16_t);
  constexpr uint32_t kStageBytesB = BTile<TB>::elems * sizeof(bf16_t);

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int wm = warp >> 2, wn = warp & 3;  // warp tile origin: (wm * 64, wn * 32)
  int tm, tn;
  tile_coords(ceil_div(p.m, BM), ceil_div(p.n, BN), tm, tn);
  const int m0 = tm * BM, n0 = tn * BN;
  const int ktiles = ceil_div(p.k, BK);

  // Per-lane ldmatrix offsets (elements, within one stage), fixed for the whole kernel. Lane l
  // supplies the row address of 8x8 matrix l/8, row l%8; the x4 matrices are ordered so that
  // the four result registers are exactly the mma operand registers (a0..a3, or b0 b1 of two
  // adjacent n-fragments).
  int a_off, b_off;
  {
    const int mat = lane >> 3, r8 = lane & 7;
    if (!TA) {  // [m][k]: matrices (m0-7,k0-7) (m8-15,k0-7) (m0-7,k8-15) (m8-15,k8-15)
      a_off = (wm * 64 + (lane & 15)) * ATile<TA>::pitch + (lane >> 4) * 8;
    } else {  // [k][m]: same matrices, read transposed
      a_off = (r8 + (mat >> 1) * 8) * ATile<TA>::pitch + wm * 64 + (mat & 1) * 8;
    }
    if (!TB) {  // [k][n]: (k0-7,n0-7) (k8-15,n0-7) (k0-7,n8-15) (k8-15,n8-15), transposed
      b_off = (r8 + (mat & 1) * 8) * BTile<TB>::pitch + wn * 32 + (mat >> 1) * 8;
    } else {  // [n][k]: (n0-7,k0-7) (n0-7,k8-15) (n8-15,k0-7) (n8-15,k8-15)
      b_off = (wn * 32 + r8 + (mat >> 1) * 8) * BTile<TB>::pitch + (mat & 1) * 8;
    }
  }

  {
    const int z = blockIdx.z;
    const bf16_t* A = static_cast<const bf16_t*>(p.a) + (int64_t)z * p.sa;
    const bf16_t* B = static_cast<const bf16_t*>(p.b) + (int64_t)z * p.sb;

    // Each thread moves 2 of the 512 16-byte chunks of each operand tile per stage.
    auto load_stage = [&](int stage, int kt) {
      const int k0 = kt * BK;
      const uint32_t dA = sA0 + stage * kStageBytesA, dB = sB0 + stage * kStageBytesB;
#pragma unroll
      for (int i = 0; i < 2; ++i) {
        const int c = tid + i * THREADS;
        int row, col, gr, gc;
        bool ok;
        const bf16_t* src;
        if (!TA) {  // 128 rows (m) x 4 chunks (k)
          row = c >> 2, col = (c & 3) * 8, gr = m0 + row, gc = k0 + col;
          ok = gr < p.m && gc < p.k;
        } else {  // 32 rows (k) x 16 chunks (m)
          row = c >> 4, col = (c & 15) * 8, gr = k0 + row, gc = m0 + col;
          ok = gr < p.k && gc < p.m;
        }
        src = ok ? A + (int64_t)gr * p.lda + gc : A;
        cp_async16(dA + (row * ATile<TA>::pitch + col) * 2, src, ok);
        if (!TB) {  // 32 rows (k) x 16 chunks (n)
          row = c >> 4, col = (c & 15) * 8, gr = k0 + row, gc = n0 + col;
          ok = gr < p.k && gc < p.n;
        } else {  // 128 rows (n) x 4 chunks (k)
          row = c >> 2, col = (c & 3) * 8, gr = n0 + row, gc = k0 + col;
          ok = gr < p.n && gc < p.k;
        }
        src = ok ? B + (int64_t)gr * p.ldb + gc : B;
        cp_async16(dB + (row * BTile<TB>::pitch + col) * 2, src, ok);
      }
    };

    float acc[4][4][4];
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
      for (int j = 0; j < 4; ++j)
#pragma unroll
        for (int r = 0; r < 4; ++r) acc[i][j][r] = 0.f;

    // Prologue: STAGES-1 tiles in flight. Empty groups are committed too, so that the group
    // count (and thus wait_group's meaning) does not depend on ktiles.
#pragma unroll
    for (int s = 0; s < STAGES - 1; ++s) {
      if (s < ktiles) load_stage(s, s);
      cp_async_commit();
    }

    for (int kt = 0; kt < ktiles; ++kt) {
      // Tile kt has landed once at most STAGES-2 younger groups are pending; the barrier makes
      // everyone's copies visible and guarantees the stage refilled below (read at kt-1) is free.
      cp_async_wait<STAGES - 2>();
      __syncthreads();
      {
        const int nk = kt + STAGES - 1;
        if (nk < ktiles) load_stage(nk % STAGES, nk);
        cp_async_commit();
      }

      const int stage = kt % STAGES;
      const uint32_t tA = sA0 + stage * kStageBytesA, tB = sB0 + stage * kStageBytesB;
#pragma unroll
      for (int ks = 0; ks < BK / 16; ++ks) {
        uint32_t af[4][4], bfr[2][4];
#pragma unroll
        for (int mi = 0; mi < 4; ++mi) {
          if (!TA)
            ldmatrix_x4(af[mi], tA + (a_off + mi * 16 * ATile<TA>::pitch + ks * 16) * 2);
          else
            ldmatrix_x4_trans(af[mi], tA + (a_off + ks * 16 * ATile<TA>::pitch + mi * 16) * 2);
        }
#pragma unroll
        for (int nj = 0; nj < 2; ++nj) {
          if (!TB)
            ldmatrix_x4_trans(bfr[nj], tB + (b_off + ks * 16 * BTile<TB>::pitch + nj * 16) * 2);
          else
            ldmatrix_x4(bfr[nj], tB + (b_off + nj * 16 * BTile<TB>::pitch + ks * 16) * 2);
        }
#pragma unroll
        for (int mi = 0; mi < 4; ++mi)
#pragma unroll
          for (int ni = 0; ni < 4; ++ni)
            mma_bf16(acc[mi][ni], af[mi], bfr[ni >> 1][(ni & 1) * 2], bfr[ni >> 1][(ni & 1) * 2 + 1]);
      }
    }
    cp_async_wait<0>();  // only empty groups can be pending here; leave nothing in flight

    // Epilogue. Fragment layout of m16n8 accumulators: d0 d1 at (row g, cols 2t, 2t+1), d2 d3
    // at row g+8, with g = lane/4, t = lane%4.
    bf16_t* C = static_cast<bf16_t*>(p.c) + (int64_t)z * p.sc;
    const bool read_c = p.beta != 0.f;
#pragma unroll
    for (int mi = 0; mi < 4; ++mi) {
#pragma unroll
      for (int half = 0; half < 2; ++half) {
        const int row = m0 + wm * 64 + mi * 16 + (lane >> 2) + half * 8;
        if (row >= p.m) continue;
        bf16_t* crow = C + (int64_t)row * p.ldc;
#pragma unroll
        for (int ni = 0; ni < 4; ++ni) {
          const int col = n0 + wn * 32 + ni * 8 + (lane & 3) * 2;
          float v0 = p.alpha * acc[mi][ni][half * 2], v1 = p.alpha * acc[mi][ni][half * 2 + 1];
          if (p.c_pairs && col + 1 < p.n) {
            __nv_bfloat162* dst = reinterpret_cast<__nv_bfloat162*>(crow + col);
            if (read_c) {
              const float2 old = __bfloat1622float2(*dst);
              v0 += p.beta * old.x, v1 += p.beta * old.y;
            }
            *dst = __floats2bfloat162_rn(v0, v1);
          } else {
            if (col < p.n) {
              if (read_c) v0 += p.beta * __bfloat162float(crow[col]);
              crow[col] = __float2bfloat16_rn(v0);
            }
            if (col + 1 < p.n) {
              if (read_c) v1 += p.beta * __bfloat162float(crow[col + 1]);
              crow[col + 1] = __float2bfloat16_rn(v1);
            }
          }
        }
      }
    }
  }
#endif
}

}  // namespace mma

// ---------------------------------------------------------------------------------------------
// 2. SIMT kernel (float32, and the bf16 fallback)
// ---------------------------------------------------------------------------------------------
namespace simt {

constexpr int BM = 128, BN = 128, BK = 8;
constexpr int THREADS = 256;  // 16 x 16 threads, 8 x 8 outputs each
constexpr int PITCH = BM + 4;  // k-major tiles; +4 keeps the transposing stores conflict-free
                               // and rows 16-byte aligned for the float4 reads

// Two blocks per SM (<= 128 registers) for float32; the bf16 fallback's conversions need a few
// more registers than that in some transpose variants, and a spill costs more than occupancy.
template <typename T>
constexpr int simt_min_blocks() { return std::is_same<T, float>::value ? 2 : 1; }

template <typename T, bool TA, bool TB>
__global__ void __launch_bounds__(THREADS, simt_min_blocks<T>()) matmul_simt(GemmParams p) {
  __shared__ __align__(16) float As[2][BK][PITCH];
  __shared__ __align__(16) float Bs[2][BK][PITCH];

  const int tid = threadIdx.x;
  const int tx = tid & 15, ty = tid >> 4;
  int tm, tn;
  tile_coords(ceil_div(p.m, BM), ceil_div(p.n, BN), tm, tn);
  const int m0 = tm * BM, n0 = tn * BN;
  const int ktiles = ceil_div(p.k, BK);

  {
    const int z = blockIdx.z;
    const T* A = static_cast<const T*>(p.a) + (int64_t)z * p.sa;
    const T* B = static_cast<const T*>(p.b) + (int64_t)z * p.sb;

    // Global element e of a 128x8 (or 8x128) tile: the contiguous dimension varies fastest
    // across lanes so that the loads coalesce whatever the transposes.
    float ra[4], rb[4];
    auto load = [&](int kt) {
      const int k0 = kt * BK;
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const int e = tid + i * THREADS;
        int mm, kk;
        if (!TA) kk = e & 7, mm = e >> 3;
        else mm = e & 127, kk = e >> 7;
        int gm = m0 + mm, gk = k0 + kk;
        ra[i] = (gm < p.m && gk < p.k) ? to_float(TA ? A[(int64_t)gk * p.lda + gm] : A[(int64_t)gm * p.lda + gk]) : 0.f;
        int nn;
        if (!TB) nn = e & 127, kk = e >> 7;
        else kk = e & 7, nn = e >> 3;
        const int gn = n0 + nn;
        gk = k0 + kk;
        rb[i] = (gn < p.n && gk < p.k) ? to_float(TB ? B[(int64_t)gn * p.ldb + gk] : B[(int64_t)gk * p.ldb + gn]) : 0.f;
      }
    };
    auto store = [&](int buf) {
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const int e = tid + i * THREADS;
        if (!TA) As[buf][e & 7][e >> 3] = ra[i];
        else As[buf][e >> 7][e & 127] = ra[i];
        if (!TB) Bs[buf][e >> 7][e & 127] = rb[i];
        else Bs[buf][e & 7][e >> 3] = rb[i];
      }
    };

    float acc[8][8];
#pragma unroll
    for (int i = 0; i < 8; ++i)
#pragma unroll
      for (int j = 0; j < 8; ++j) acc[i][j] = 0.f;

    if (ktiles > 0) {
      load(0);
      store(0);
    }
    __syncthreads();
    for (int kt = 0; kt < ktiles; ++kt) {
      const int buf = kt & 1;
      const bool more = kt + 1 < ktiles;
      if (more) load(kt + 1);  // in flight while we compute
#pragma unroll
      for (int kk = 0; kk < BK; ++kk) {
        // Rows ty*4..+3 and 64+ty*4..+3, columns likewise: two float4 per operand, and the
        // 16 threads of a half-warp read 256 contiguous bytes of B.
        const float4 a0 = *reinterpret_cast<const float4*>(&As[buf][kk][ty * 4]);
        const float4 a1 = *reinterpret_cast<const float4*>(&As[buf][kk][64 + ty * 4]);
        const float4 b0 = *reinterpret_cast<const float4*>(&Bs[buf][kk][tx * 4]);
        const float4 b1 = *reinterpret_cast<const float4*>(&Bs[buf][kk][64 + tx * 4]);
        const float av[8] = {a0.x, a0.y, a0.z, a0.w, a1.x, a1.y, a1.z, a1.w};
        const float bv[8] = {b0.x, b0.y, b0.z, b0.w, b1.x, b1.y, b1.z, b1.w};
#pragma unroll
        for (int i = 0; i < 8; ++i)
#pragma unroll
          for (int j = 0; j < 8; ++j) acc[i][j] = fmaf(av[i], bv[j], acc[i][j]);
      }
      if (more) store(buf ^ 1);  // that buffer was last read at kt-1, before the last barrier
      __syncthreads();
    }

    T* C = static_cast<T*>(p.c) + (int64_t)z * p.sc;
    const bool read_c = p.beta != 0.f;
#pragma unroll
    for (int i = 0; i < 8; ++i) {
      const int row = m0 + (i < 4 ? ty * 4 + i : 64 + ty * 4 + i - 4);
      if (row >= p.m) continue;
      T* crow = C + (int64_t)row * p.ldc;
#pragma unroll
      for (int j = 0; j < 8; ++j) {
        const int col = n0 + (j < 4 ? tx * 4 + j : 64 + tx * 4 + j - 4);
        if (col >= p.n) continue;
        float v = p.alpha * acc[i][j];
        if (read_c) v += p.beta * to_float(crow[col]);
        crow[col] = from_float<T>(v);
      }
    }
  }
}

}  // namespace simt

// ---------------------------------------------------------------------------------------------
// Host side: own kernels
// ---------------------------------------------------------------------------------------------

int device_cc_major() {
  static std::atomic<int> cc{-1};
  int v = cc.load();
  if (v >= 0) return v;
  int dev = 0;
  if (cudaGetDevice(&dev) != cudaSuccess || cudaDeviceGetAttribute(&v, cudaDevAttrComputeCapabilityMajor, dev) != cudaSuccess) {
    cudaGetLastError();
    return 0;  // unknown: callers take the portable path
  }
  cc.store(v);
  return v;
}

bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15) == 0; }

// Whether every 16-byte chunk the mma kernel copies is aligned and either wholly inside or
// wholly outside its matrix.
bool mma_eligible(const MatmulArgs& a) {
  if (static_cast<DType>(a.dtype) != DType::BF16) return false;
  const int64_t a_contig = a.trans_a ? a.m : a.k, b_contig = a.trans_b ? a.k : a.n;
  return aligned16(a.a) && aligned16(a.b) && a.lda % 8 == 0 && a.ldb % 8 == 0 && a.batch_stride_a % 8 == 0 &&
         a.batch_stride_b % 8 == 0 && a_contig % 8 == 0 && b_contig % 8 == 0;
}

GemmParams make_params(const MatmulArgs& a) {
  GemmParams p;
  p.a = a.a, p.b = a.b, p.c = a.c;
  p.lda = a.lda, p.ldb = a.ldb, p.ldc = a.ldc;
  p.sa = a.batch_stride_a, p.sb = a.batch_stride_b, p.sc = a.batch_stride_c;
  p.m = (int)a.m, p.n = (int)a.n, p.k = (int)a.k, p.batch = (int)a.batch;
  p.alpha = a.alpha, p.beta = a.beta;
  p.c_pairs = (reinterpret_cast<uintptr_t>(a.c) & 3) == 0 && a.ldc % 2 == 0 && a.batch_stride_c % 2 == 0;
  return p;
}

int grid_for(const GemmParams& p, int bm, int bn, dim3* grid) {
  const int64_t tiles = (int64_t)ceil_div(p.m, bm) * ceil_div(p.n, bn);
  if (tiles > 0x7fffffff) return set_error("matmul: output too large for one launch");
  *grid = dim3((unsigned)tiles, 1, 1);
  return 0;
}

// gridDim.z carries the batch index, at most 65535 per launch: larger batches are split into
// launches on offset pointers (cheaper than a batch loop's registers in every kernel).
constexpr int kMaxGridZ = 65535;
template <typename T>
GemmParams batch_chunk(const GemmParams& p, int z0) {
  GemmParams q = p;
  q.a = static_cast<const T*>(p.a) + (int64_t)z0 * p.sa;
  q.b = static_cast<const T*>(p.b) + (int64_t)z0 * p.sb;
  q.c = static_cast<T*>(p.c) + (int64_t)z0 * p.sc;
  q.batch = p.batch - z0 < kMaxGridZ ? p.batch - z0 : kMaxGridZ;
  return q;
}

template <bool TA, bool TB>
int launch_mma(const GemmParams& p) {
  constexpr int smem = mma::smem_bytes<TA, TB>();
  static std::atomic<bool> attr_set{false};
  if (!attr_set.load()) {
    DR_CUDA_TRY(check(cudaFuncSetAttribute(mma::matmul_bf16_mma<TA, TB>, cudaFuncAttributeMaxDynamicSharedMemorySize, smem),
                      "matmul: cudaFuncSetAttribute(matmul_bf16_mma)"));
    attr_set.store(true);
  }
  dim3 grid;
  DR_CUDA_TRY(grid_for(p, mma::BM, mma::BN, &grid));
  for (int z0 = 0; z0 < p.batch; z0 += kMaxGridZ) {
    const GemmParams q = batch_chunk<bf16_t>(p, z0);
    grid.z = q.batch;
    mma::matmul_bf16_mma<TA, TB><<<grid, mma::THREADS, smem, stream()>>>(q);
    DR_CUDA_TRY(check_launch("matmul_bf16_mma"));
  }
  return 0;
}

template <typename T, bool TA, bool TB>
int launch_simt(const GemmParams& p) {
  dim3 grid;
  DR_CUDA_TRY(grid_for(p, simt::BM, simt::BN, &grid));
  for (int z0 = 0; z0 < p.batch; z0 += kMaxGridZ) {
    const GemmParams q = batch_chunk<T>(p, z0);
    grid.z = q.batch;
    simt::matmul_simt<T, TA, TB><<<grid, simt::THREADS, 0, stream()>>>(q);
    DR_CUDA_TRY(check_launch(std::is_same<T, float>::value ? "matmul_f32_simt" : "matmul_bf16_simt"));
  }
  return 0;
}

template <typename T>
int launch_simt_any(const GemmParams& p, bool ta, bool tb) {
  if (!ta && !tb) return launch_simt<T, false, false>(p);
  if (!ta && tb) return launch_simt<T, false, true>(p);
  if (ta && !tb) return launch_simt<T, true, false>(p);
  return launch_simt<T, true, true>(p);
}

int run_own(const MatmulArgs& a) {
  const GemmParams p = make_params(a);
  const bool ta = a.trans_a != 0, tb = a.trans_b != 0;
  if (static_cast<DType>(a.dtype) == DType::F32) return launch_simt_any<float>(p, ta, tb);
  if (mma_eligible(a) && device_cc_major() >= 8) {
    if (!ta && !tb) return launch_mma<false, false>(p);
    if (!ta && tb) return launch_mma<false, true>(p);
    if (ta && !tb) return launch_mma<true, false>(p);
    return launch_mma<true, true>(p);
  }
  return launch_simt_any<bf16_t>(p, ta, tb);
}

// ---------------------------------------------------------------------------------------------
// 3. cuBLASLt through dlopen
// ---------------------------------------------------------------------------------------------
// Values checked against the public headers: cublasLt.h and cublas_api.h as vendored in
// ggerganov/llama.cpp include/cuda/ (commit f555db44), and library_types.h of the CUDA 13.0
// toolkit on the build machine. These enums have kept their values from CUDA 11 to 13.
namespace lt {

using Status = int;  // cublasStatus_t; CUBLAS_STATUS_SUCCESS = 0
using Handle = void*;  // cublasLtHandle_t        (struct cublasLtContext*)
using Desc = void*;    // cublasLtMatmulDesc_t    (struct cublasLtMatmulDescStruct*)
using Layout = void*;  // cublasLtMatrixLayout_t  (struct cublasLtMatrixLayoutStruct*)
using Pref = void*;    // cublasLtMatmulPreference_t

// cublasLt.h: typedef struct { uint64_t data[8]; } cublasLtMatmulAlgo_t;
struct Algo {
  uint64_t data[8];
};
// cublasLt.h: { cublasLtMatmulAlgo_t algo; size_t workspaceSize; cublasStatus_t state;
//               float wavesCount; int reserved[4]; } cublasLtMatmulHeuristicResult_t;
struct HeuristicResult {
  Algo algo;
  size_t workspaceSize;
  Status state;
  float wavesCount;
  int reserved[4];
};
static_assert(sizeof(Algo) == 64, "cublasLtMatmulAlgo_t is 8 x uint64");
static_assert(sizeof(HeuristicResult) == 96, "cublasLtMatmulHeuristicResult_t layout");

// library_types.h (cudaDataType_t)
constexpr int CUDA_R_32F = 0;
constexpr int CUDA_R_16BF = 14;
// cublas_api.h (cublasComputeType_t, cublasOperation_t)
constexpr int CUBLAS_COMPUTE_32F = 68;  // plain fp32: no TF32 down-conversion
constexpr int CUBLAS_OP_N = 0;
constexpr int CUBLAS_OP_T = 1;
// cublasLt.h cublasLtMatmulDescAttributes_t (int32_t values)
constexpr int CUBLASLT_MATMUL_DESC_TRANSA = 3;
constexpr int CUBLASLT_MATMUL_DESC_TRANSB = 4;
// cublasLt.h cublasLtMatrixLayoutAttribute_t
constexpr int CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT = 5;           // int32_t
constexpr int CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET = 6;  // int64_t
// cublasLt.h cublasLtMatmulPreferenceAttributes_t
constexpr int CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES = 1;    // uint64_t
constexpr int CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES = 5;  // uint32_t, default 256
constexpr int CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES = 6;
constexpr int CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES = 7;
constexpr int CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES = 8;

constexpr size_t kWorkspaceBytes = 32u << 20;  // what cuBLAS recommends for Hopper

// The exact C signatures (enum parameters are passed as int, as the C ABI does).
struct Api {
  Status (*Create)(Handle*);
  Status (*Destroy)(Handle);
  size_t (*GetVersion)();
  Status (*MatmulDescCreate)(Desc*, int computeType, int scaleType);
  Status (*MatmulDescDestroy)(Desc);
  Status (*MatmulDescSetAttribute)(Desc, int attr, const void* buf, size_t size);
  Status (*MatrixLayoutCreate)(Layout*, int type, uint64_t rows, uint64_t cols, int64_t ld);
  Status (*MatrixLayoutDestroy)(Layout);
  Status (*MatrixLayoutSetAttribute)(Layout, int attr, const void* buf, size_t size);
  Status (*MatmulPreferenceCreate)(Pref*);
  Status (*MatmulPreferenceDestroy)(Pref);
  Status (*MatmulPreferenceSetAttribute)(Pref, int attr, const void* buf, size_t size);
  Status (*MatmulAlgoGetHeuristic)(Handle, Desc, Layout Adesc, Layout Bdesc, Layout Cdesc, Layout Ddesc, Pref,
                                   int requestedAlgoCount, HeuristicResult* results, int* returnAlgoCount);
  Status (*Matmul)(Handle, Desc, const void* alpha, const void* A, Layout Adesc, const void* B, Layout Bdesc,
                   const void* beta, const void* C, Layout Cdesc, void* D, Layout Ddesc, const Algo* algo,
                   void* workspace, size_t workspaceSizeInBytes, cudaStream_t stream);
};

// A ready-to-run problem: descriptors and the heuristic's first choice.
struct Plan {
  bool ok = false;
  Desc desc = nullptr;
  Layout la = nullptr, lb = nullptr, lc = nullptr;
  Algo algo{};
  size_t workspace = 0;
};

struct State {
  std::mutex mu;
  bool tried = false;
  bool loaded = false;
  std::string status = "cuBLASLt not loaded yet";
  void* lib = nullptr;
  Api api{};
  Handle handle = nullptr;
  void* workspace = nullptr;
  std::map<std::array<int64_t, 16>, Plan> plans;  // guarded by mu
};

State& state() {
  static State* s = new State();  // never destroyed: no teardown-order games at exit
  return *s;
}

template <typename F>
bool sym(void* lib, const char* name, F* fn, std::string* missing) {
  *fn = reinterpret_cast<F>(dlsym(lib, name));
  if (!*fn && missing->empty()) *missing = name;
  return *fn != nullptr;
}

// Called with s.mu held.
void load_locked(State& s) {
  if (s.tried) return;
  s.tried = true;
  if (const char* env = std::getenv("DUALROUTE_CUBLASLT")) {
    if (!std::strcmp(env, "0")) {
      s.status = "disabled by DUALROUTE_CUBLASLT=0";
      return;
    }
  }
  const char* names[] = {"libcublasLt.so.13", "libcublasLt.so.12", "libcublasLt.so"};
  std::string first_error;
  for (const char* name : names) {
    s.lib = dlopen(name, RTLD_NOW | RTLD_LOCAL);
    if (s.lib) break;
    if (first_error.empty()) {
      const char* e = dlerror();
      first_error = e ? e : "";
    }
  }
  if (!s.lib) {
    s.status = "libcublasLt.so.13 not found (nor .so.12, .so)";
    if (!first_error.empty()) s.status += ": " + first_error;
    return;
  }
  Api& a = s.api;
  std::string missing;
  sym(s.lib, "cublasLtCreate", &a.Create, &missing);
  sym(s.lib, "cublasLtDestroy", &a.Destroy, &missing);
  sym(s.lib, "cublasLtGetVersion", &a.GetVersion, &missing);
  sym(s.lib, "cublasLtMatmulDescCreate", &a.MatmulDescCreate, &missing);
  sym(s.lib, "cublasLtMatmulDescDestroy", &a.MatmulDescDestroy, &missing);
  sym(s.lib, "cublasLtMatmulDescSetAttribute", &a.MatmulDescSetAttribute, &missing);
  sym(s.lib, "cublasLtMatrixLayoutCreate", &a.MatrixLayoutCreate, &missing);
  sym(s.lib, "cublasLtMatrixLayoutDestroy", &a.MatrixLayoutDestroy, &missing);
  sym(s.lib, "cublasLtMatrixLayoutSetAttribute", &a.MatrixLayoutSetAttribute, &missing);
  sym(s.lib, "cublasLtMatmulPreferenceCreate", &a.MatmulPreferenceCreate, &missing);
  sym(s.lib, "cublasLtMatmulPreferenceDestroy", &a.MatmulPreferenceDestroy, &missing);
  sym(s.lib, "cublasLtMatmulPreferenceSetAttribute", &a.MatmulPreferenceSetAttribute, &missing);
  sym(s.lib, "cublasLtMatmulAlgoGetHeuristic", &a.MatmulAlgoGetHeuristic, &missing);
  sym(s.lib, "cublasLtMatmul", &a.Matmul, &missing);

  std::string path = names[0];
  Dl_info info;
  if (a.Create && dladdr(reinterpret_cast<void*>(a.Create), &info) && info.dli_fname) path = info.dli_fname;
  if (!missing.empty()) {
    s.status = path + " lacks " + missing;
    return;
  }
  const Status st = a.Create(&s.handle);
  if (st != 0) {
    s.status = "cublasLtCreate failed (status " + std::to_string(st) + ")";
    s.handle = nullptr;
    return;
  }
  if (cudaMalloc(&s.workspace, kWorkspaceBytes) != cudaSuccess) {
    cudaGetLastError();  // not ours to report later from an unrelated launch check
    s.workspace = nullptr;
    a.Destroy(s.handle);
    s.handle = nullptr;
    s.status = "cuBLASLt workspace allocation (32 MiB) failed";
    return;
  }
  const size_t v = a.GetVersion();  // major*10000 + minor*100 + patch
  s.status = "cuBLASLt " + std::to_string(v / 10000) + "." + std::to_string(v / 100 % 100) + "." +
             std::to_string(v % 100) + " loaded from " + path;
  s.loaded = true;
}

bool available() {
  State& s = state();
  std::lock_guard<std::mutex> lock(s.mu);
  load_locked(s);
  return s.loaded;
}

// Largest power of two (<= 256) dividing the address and, where they matter, the leading
// dimension and batch stride in bytes. cuBLASLt assumes 256-byte alignment unless told.
uint32_t alignment(const void* p, int64_t ld_bytes, int64_t stride_bytes) {
  const uint64_t v = reinterpret_cast<uintptr_t>(p) | (uint64_t)ld_bytes | (uint64_t)stride_bytes;
  uint32_t al = 256;
  while (al > 1 && (v & (al - 1))) al >>= 1;
  return al;
}

void destroy_plan(const Api& api, Plan& p) {
  if (p.la) api.MatrixLayoutDestroy(p.la);
  if (p.lb) api.MatrixLayoutDestroy(p.lb);
  if (p.lc) api.MatrixLayoutDestroy(p.lc);
  if (p.desc) api.MatmulDescDestroy(p.desc);
  p = Plan();
}

// Called with s.mu held. Builds descriptors for the column-major C^T = op(B)^T op(A)^T.
std::string build_plan(State& s, const MatmulArgs& a, uint32_t al_a, uint32_t al_b, uint32_t al_c, Plan* out) {
  const Api& api = s.api;
  Plan p;
  const int dt = static_cast<DType>(a.dtype) == DType::BF16 ? CUDA_R_16BF : CUDA_R_32F;
  auto fail = [&](const char* what, Status st) {
    destroy_plan(api, p);
    return std::string(what) + " failed (status " + std::to_string(st) + ")";
  };
  Status st;
  if ((st = api.MatmulDescCreate(&p.desc, CUBLAS_COMPUTE_32F, CUDA_R_32F)) != 0) return fail("cublasLtMatmulDescCreate", st);
  // Lt's A is our B: row-major k x n (ld ldb) reads column-major as n x k = B^T -> N;
  // stored n x k (trans_b) reads as k x n = B -> T. Symmetrically for Lt's B = our A.
  const int32_t op_lt_a = a.trans_b ? CUBLAS_OP_T : CUBLAS_OP_N;
  const int32_t op_lt_b = a.trans_a ? CUBLAS_OP_T : CUBLAS_OP_N;
  if ((st = api.MatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_TRANSA, &op_lt_a, sizeof(op_lt_a))) != 0)
    return fail("cublasLtMatmulDescSetAttribute(TRANSA)", st);
  if ((st = api.MatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_TRANSB, &op_lt_b, sizeof(op_lt_b))) != 0)
    return fail("cublasLtMatmulDescSetAttribute(TRANSB)", st);

  const uint64_t m = a.m, n = a.n, k = a.k;
  if ((st = api.MatrixLayoutCreate(&p.la, dt, a.trans_b ? k : n, a.trans_b ? n : k, a.ldb)) != 0)
    return fail("cublasLtMatrixLayoutCreate(B)", st);
  if ((st = api.MatrixLayoutCreate(&p.lb, dt, a.trans_a ? m : k, a.trans_a ? k : m, a.lda)) != 0)
    return fail("cublasLtMatrixLayoutCreate(A)", st);
  if ((st = api.MatrixLayoutCreate(&p.lc, dt, n, m, a.ldc)) != 0) return fail("cublasLtMatrixLayoutCreate(C)", st);
  if (a.batch > 1) {
    const int32_t count = (int32_t)a.batch;
    const int64_t strides[3] = {a.batch_stride_b, a.batch_stride_a, a.batch_stride_c};
    const Layout layouts[3] = {p.la, p.lb, p.lc};
    for (int i = 0; i < 3; ++i) {
      if ((st = api.MatrixLayoutSetAttribute(layouts[i], CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &count, sizeof(count))) != 0)
        return fail("cublasLtMatrixLayoutSetAttribute(BATCH_COUNT)", st);
      if ((st = api.MatrixLayoutSetAttribute(layouts[i], CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET, &strides[i],
                                             sizeof(strides[i]))) != 0)
        return fail("cublasLtMatrixLayoutSetAttribute(STRIDED_BATCH_OFFSET)", st);
    }
  }

  Pref pref = nullptr;
  if ((st = api.MatmulPreferenceCreate(&pref)) != 0) return fail("cublasLtMatmulPreferenceCreate", st);
  const uint64_t ws = kWorkspaceBytes;
  const uint32_t al[4] = {al_b, al_a, al_c, al_c};  // Lt's A, B, C, D
  const int al_attr[4] = {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
                          CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES};
  st = api.MatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof(ws));
  for (int i = 0; i < 4 && st == 0; ++i) st = api.MatmulPreferenceSetAttribute(pref, al_attr[i], &al[i], sizeof(al[i]));
  if (st != 0) {
    api.MatmulPreferenceDestroy(pref);
    return fail("cublasLtMatmulPreferenceSetAttribute", st);
  }
  HeuristicResult res[4];
  std::memset(res, 0, sizeof(res));
  int found = 0;
  st = api.MatmulAlgoGetHeuristic(s.handle, p.desc, p.la, p.lb, p.lc, p.lc, pref, 4, res, &found);
  api.MatmulPreferenceDestroy(pref);
  if (st != 0) return fail("cublasLtMatmulAlgoGetHeuristic", st);
  for (int i = 0; i < found; ++i) {
    if (res[i].state == 0 && res[i].workspaceSize <= kWorkspaceBytes) {
      p.algo = res[i].algo;
      p.workspace = res[i].workspaceSize;
      p.ok = true;
      break;
    }
  }
  if (!p.ok) {
    destroy_plan(api, p);
    return "no cuBLASLt algorithm for this problem";
  }
  *out = p;
  return "";
}

int run(const MatmulArgs& a) {
  State& s = state();
  if (a.m > 0x7fffffff || a.n > 0x7fffffff || a.k > 0x7fffffff || a.batch > 0x7fffffff)
    return set_error("matmul: cuBLASLt: dimensions beyond int32");
  const int64_t es = static_cast<DType>(a.dtype) == DType::BF16 ? 2 : 4;
  const bool batched = a.batch > 1;
  const uint32_t al_a = alignment(a.a, a.lda * es, batched ? a.batch_stride_a * es : 0);
  const uint32_t al_b = alignment(a.b, a.ldb * es, batched ? a.batch_stride_b * es : 0);
  const uint32_t al_c = alignment(a.c, a.ldc * es, batched ? a.batch_stride_c * es : 0);
  const std::array<int64_t, 16> key = {a.dtype,          a.m,   a.n,   a.k,   a.batch,          a.trans_a,
                                       a.trans_b,        a.lda, a.ldb, a.ldc, a.batch_stride_a, a.batch_stride_b,
                                       a.batch_stride_c, al_a,  al_b,  al_c};
  Plan plan;
  {
    std::lock_guard<std::mutex> lock(s.mu);
    load_locked(s);
    if (!s.loaded) return set_error("matmul: cuBLASLt is not available: " + s.status);
    auto it = s.plans.find(key);
    if (it == s.plans.end()) {
      if (s.plans.size() >= 4096) {  // shapes that keep changing: start over rather than grow
        for (auto& kv : s.plans) destroy_plan(s.api, kv.second);
        s.plans.clear();
      }
      Plan fresh;
      const std::string err = build_plan(s, a, al_a, al_b, al_c, &fresh);
      it = s.plans.emplace(key, fresh).first;  // failures are cached too (ok == false)
      if (!err.empty()) return set_error("matmul: " + err);
    }
    if (!it->second.ok) return set_error("matmul: no cuBLASLt algorithm for this problem");
    plan = it->second;  // descriptors live in the cache until it is cleared under this lock
    // cublasLtMatmul only enqueues, so it is called under the lock: a concurrent cache reset
    // cannot destroy the descriptors mid-call.
    const float alpha = a.alpha, beta = a.beta;
    const Status st = s.api.Matmul(s.handle, plan.desc, &alpha, a.b, plan.la, a.a, plan.lb, &beta, a.c, plan.lc, a.c,
                                   plan.lc, &plan.algo, s.workspace, plan.workspace, stream());
    if (st != 0) return set_error("matmul: cublasLtMatmul failed (status " + std::to_string(st) + ")");
  }
  return check(cudaGetLastError(), "matmul: cublasLtMatmul");
}

}  // namespace lt

// ---------------------------------------------------------------------------------------------
// Choosing (algo 0)
// ---------------------------------------------------------------------------------------------
enum Choice : int { kOwn = 1, kLt = 2 };

struct Choices {
  std::mutex mu;
  std::map<std::array<int64_t, 8>, int> map;
};
Choices& choices() {
  static Choices* c = new Choices();
  return *c;
}

struct Events {
  cudaEvent_t start = nullptr, stop = nullptr;
  ~Events() {
    if (start) cudaEventDestroy(start);
    if (stop) cudaEventDestroy(stop);
  }
};
struct DeviceBuffer {
  void* ptr = nullptr;
  ~DeviceBuffer() {
    if (ptr) cudaFree(ptr);
  }
};

// Milliseconds for 3 runs after one warm-up. Returns nonzero with the error recorded.
template <typename F>
int time_runs(F run, Events& ev, float* ms) {
  DR_CUDA_TRY(run());
  DR_CUDA_TRY(check(cudaEventRecord(ev.start, stream()), "matmul: cudaEventRecord"));
  for (int r = 0; r < 3; ++r) DR_CUDA_TRY(run());
  DR_CUDA_TRY(check(cudaEventRecord(ev.stop, stream()), "matmul: cudaEventRecord"));
  DR_CUDA_TRY(check(cudaEventSynchronize(ev.stop), "matmul: cudaEventSynchronize"));
  return check(cudaEventElapsedTime(ms, ev.start, ev.stop), "matmul: cudaEventElapsedTime");
}

// Times both implementations into a scratch output (contiguous, beta = 0: equal work for
// both, and the caller's C is neither read nor written). Returns nonzero only for an error of
// our own kernel; any cuBLASLt trouble simply makes it lose.
int tune(const MatmulArgs& args, int* choice) {
  const int64_t es = static_cast<DType>(args.dtype) == DType::BF16 ? 2 : 4;
  const double bytes = (double)args.batch * (double)args.m * (double)args.n * (double)es;
  if (bytes > double(4ull << 30)) {  // too big to mirror; large problems are cuBLASLt's home
    *choice = kLt;
    return 0;
  }
  DeviceBuffer scratch;
  if (cudaMalloc(&scratch.ptr, (size_t)bytes) != cudaSuccess) {
    cudaGetLastError();
    scratch.ptr = nullptr;
    *choice = kLt;
    return 0;
  }
  MatmulArgs t = args;
  t.c = scratch.ptr;
  t.ldc = args.n;
  t.batch_stride_c = args.m * args.n;
  t.beta = 0.f;

  Events ev;
  DR_CUDA_TRY(check(cudaEventCreate(&ev.start), "matmul: cudaEventCreate"));
  DR_CUDA_TRY(check(cudaEventCreate(&ev.stop), "matmul: cudaEventCreate"));
  float own_ms = 0.f, lt_ms = 0.f;
  DR_CUDA_TRY(time_runs([&] { return run_own(t); }, ev, &own_ms));
  if (time_runs([&] { return lt::run(t); }, ev, &lt_ms) != 0) {
    // A cuBLASLt failure is a reason to use our kernel, not an error of this call; but a
    // sticky CUDA error (the context is gone) must still surface.
    if (cudaDeviceSynchronize() != cudaSuccess) return check(cudaGetLastError(), "matmul: cuBLASLt timing");
    *choice = kOwn;
    return 0;
  }
  *choice = lt_ms < own_ms ? kLt : kOwn;
  return 0;
}

int matmul_impl(const MatmulArgs* args, int32_t algo) {
  if (!args) return set_error("matmul: null arguments");
  const MatmulArgs& a = *args;
  const DType dt = static_cast<DType>(a.dtype);
  if (dt == DType::F64) return set_error("matmul: float64 is CPU-only");
  if (dt != DType::F32 && dt != DType::BF16)
    return set_error(std::string("matmul: unsupported dtype ") + dtype_name(dt));
  if (a.batch < 0 || a.m < 0 || a.n < 0 || a.k < 0) return set_error("matmul: negative dimension");
  if (a.lda < 0 || a.ldb < 0 || a.ldc < 0 || a.batch_stride_a < 0 || a.batch_stride_b < 0 || a.batch_stride_c < 0)
    return set_error("matmul: negative stride");
  if (algo < 0 || algo > 2) return set_error("matmul: unknown algo " + std::to_string(algo));
  if (a.batch == 0 || a.m == 0 || a.n == 0) return 0;
  // int32 in the kernels, with headroom for a tile's worth of index past the end.
  constexpr int64_t kMaxDim = 0x7fffffff - 256;
  if (a.m > kMaxDim || a.n > kMaxDim || a.k > kMaxDim || a.batch > kMaxDim)
    return set_error("matmul: dimensions beyond int32");

  if (algo == 1) return run_own(a);
  if (algo == 2) return lt::run(a);

  // k == 0 is just C = beta * C: our epilogue does that; no library call, no tuning.
  if (a.k == 0 || !lt::available()) return run_own(a);
  const std::array<int64_t, 8> key = {a.dtype, a.m, a.n, a.k, a.batch, a.trans_a, a.trans_b, mma_eligible(a) ? 1 : 0};
  Choices& ch = choices();
  int choice = 0;
  {
    std::lock_guard<std::mutex> lock(ch.mu);
    auto it = ch.map.find(key);
    if (it != ch.map.end()) choice = it->second;
  }
  if (!choice) {
    DR_CUDA_TRY(tune(a, &choice));
    std::lock_guard<std::mutex> lock(ch.mu);
    ch.map[key] = choice;
  }
  if (choice == kLt && lt::run(a) == 0) return 0;
  return run_own(a);  // cuBLASLt chose, then failed on these exact pointers: ours always works
}

}  // namespace

int matmul(const MatmulArgs* args, int32_t algo) {
  DR_CUDA_ENTRY_BEGIN
  return matmul_impl(args, algo);
  DR_CUDA_ENTRY_END("matmul")
}

void cublaslt_info(int32_t* in_use, char* status, size_t status_len) {
  try {
    lt::State& s = lt::state();
    std::lock_guard<std::mutex> lock(s.mu);
    lt::load_locked(s);
    if (in_use) *in_use = s.loaded ? 1 : 0;
    if (status && status_len) std::snprintf(status, status_len, "%s", s.status.c_str());
  } catch (...) {
    if (in_use) *in_use = 0;
    if (status && status_len) std::snprintf(status, status_len, "%s", "cuBLASLt state unavailable");
  }
}

}  // namespace cuda
}  // namespace dualroute
