// Reductions on the GPU: sum, mean, max, min over trailing dims, and argmax/argmin over one.
//
// x has the kept dims followed by `nreduce` reduced dims, any strides (the dispatcher permutes
// the reduced dims to the end); out is contiguous with one element per kept position.
//   sum/mean accumulate in float for float32/bfloat16 and wrap in int32 for int32 (mean on
//   int32 is refused); max/min propagate NaN; an empty reduction gives 0, NaN, -inf, +inf.
//   argmax/argmin return the first index of the extreme; a NaN counts as the extreme, so the
//   first NaN's index wins.
//
// Both index spaces are collapsed on the host (size-1 dims dropped, contiguous neighbours
// merged) so that the usual cases are one dim each. Launch layouts:
//  - rows: one warp per output (8 per 256-thread block) when the reduction has at most 1024
//    elements, one 512-thread block per output above. Lanes stride over the reduced elements,
//    then warp shuffles (and shared memory across warps) combine. When the reduced elements
//    are one contiguous run and every row starts 16-byte aligned, lanes read 16-byte packs.
//  - columns: the kept dims are contiguous in memory and the reduction is strided (reducing a
//    leading axis, as for bias gradients). Reading rows with a warp would stride through
//    memory, so a 32x8 block instead gives each of 32 consecutive outputs 8 threads that
//    walk the reduced elements: every load instruction of a warp reads 32 neighbours.
// Combining order differs from the CPU's, so float sums agree to rounding, not bit for bit.
#include <algorithm>
#include <climits>
#include <cmath>
#include <string>

#include "device.cuh"

namespace dualroute {
namespace cuda {

int fill(const View* out, double value);  // elementwise.cu

namespace {

// A collapsed index space: offset of the i-th element (row-major over shape) in elements.
struct Dims {
  int ndim;
  int64_t shape[kMaxDims];
  int64_t str[kMaxDims];
};

Dims collapse(int nd, const int64_t* shape, const int64_t* strides) {
  Dims D;
  D.ndim = 0;
  for (int d = 0; d < nd; ++d) {
    if (shape[d] == 1) continue;
    if (D.ndim > 0 && D.str[D.ndim - 1] == strides[d] * shape[d]) {
      D.shape[D.ndim - 1] *= shape[d];
      D.str[D.ndim - 1] = strides[d];
      continue;
    }
    D.shape[D.ndim] = shape[d];
    D.str[D.ndim] = strides[d];
    ++D.ndim;
  }
  if (D.ndim == 0) {
    D.ndim = 1;
    D.shape[0] = 1;
    D.str[0] = 1;
  }
  for (int d = D.ndim; d < kMaxDims; ++d) {
    D.shape[d] = 1;
    D.str[d] = 0;
  }
  return D;
}

__device__ __forceinline__ int64_t offset_of(const Dims& D, int64_t i) {
  if (D.ndim == 1) return i * D.str[0];
  int64_t off = 0;
#pragma unroll
  for (int d = kMaxDims - 1; d >= 0; --d) {
    if (d < D.ndim) {
      const int64_t c = i % D.shape[d];
      i /= D.shape[d];
      off += c * D.str[d];
    }
  }
  return off;
}

// ---- value reducers ----------------------------------------------------------------------
__device__ __forceinline__ void st(float* p, float v) { *p = v; }
__device__ __forceinline__ void st(bf16_t* p, float v) { *p = __float2bfloat16_rn(v); }
__device__ __forceinline__ void st(int32_t* p, int32_t v) { *p = v; }

template <typename T>
struct AccOf {
  using type = float;
};
template <>
struct AccOf<int32_t> {
  using type = int32_t;
};

constexpr int kSum = 0, kMax = 1, kMin = 2;

template <int OP, typename A>
__device__ __forceinline__ A red_init() {
  if constexpr (std::is_same<A, float>::value) {
    return OP == kMax ? -INFINITY : OP == kMin ? INFINITY : 0.0f;
  } else {
    return OP == kMax ? INT_MIN : OP == kMin ? INT_MAX : 0;
  }
}

// Once the accumulator is NaN it stays NaN; a NaN operand wins otherwise. Symmetric in NaN,
// so partial results from different lanes combine the same way as elements.
template <int OP, typename A>
__device__ __forceinline__ A red_combine(A acc, A v) {
  if constexpr (OP == kSum) {
    if constexpr (std::is_same<A, int32_t>::value)
      return static_cast<int32_t>(static_cast<uint32_t>(acc) + static_cast<uint32_t>(v));  // wraps
    else
      return acc + v;
  } else if constexpr (OP == kMax) {
    return acc != acc ? acc : ((v != v || v > acc) ? v : acc);
  } else {
    return acc != acc ? acc : ((v != v || v < acc) ? v : acc);
  }
}

template <int OP, typename A>
__device__ __forceinline__ A warp_reduce(A v) {
#pragma unroll
  for (int m = 16; m > 0; m >>= 1) v = red_combine<OP>(v, __shfl_xor_sync(0xffffffffu, v, m));
  return v;
}

// All threads of the block get the result. smem holds 32 values; the leading barrier lets
// the same buffer be reused by the next row.
template <int OP, typename A>
__device__ __forceinline__ A block_reduce(A v, A* smem) {
  v = warp_reduce<OP>(v);
  const int w = threadIdx.x >> 5, l = threadIdx.x & 31;
  __syncthreads();
  if (l == 0) smem[w] = v;
  __syncthreads();
  v = l < static_cast<int>(blockDim.x >> 5) ? smem[l] : red_init<OP, A>();
  return warp_reduce<OP>(v);
}

template <typename T, typename A>
__device__ __forceinline__ void store_result(T* out, int64_t k, A acc, int mean, int64_t count) {
  if constexpr (std::is_same<A, float>::value) {
    if (mean) acc = count ? acc / static_cast<float>(count) : NAN;
  }
  st(out + k, acc);
}

// Rows: G threads per output (G = 32: a warp; G = blockDim.x: the block). VEC: the reduced
// elements are one contiguous run, every row 16-byte aligned, count a multiple of the pack.
template <typename T, int OP, int G, bool VEC>
__global__ void reduce_rows(T* __restrict__ out, const T* __restrict__ x, Dims keep, Dims red, int64_t kcount,
                            int64_t rcount, int mean) {
  using A = typename AccOf<T>::type;
  constexpr int V = 16 / sizeof(T);
  __shared__ A smem[32];
  const int lane = threadIdx.x % G;
  const int64_t per_block = blockDim.x / G;
  for (int64_t k = blockIdx.x * per_block + threadIdx.x / G; k < kcount; k += gridDim.x * per_block) {
    const int64_t base = offset_of(keep, k);
    A acc = red_init<OP, A>();
    if (VEC) {
      const Pack<T, V>* p = reinterpret_cast<const Pack<T, V>*>(x + base);
      for (int64_t i = lane; i < rcount / V; i += G) {
        const Pack<T, V> pk = p[i];
#pragma unroll
        for (int e = 0; e < V; ++e) acc = red_combine<OP>(acc, static_cast<A>(ld(pk.v[e])));
      }
    } else if (red.ndim == 1) {
      const int64_t s = red.str[0];
      for (int64_t i = lane; i < rcount; i += G) acc = red_combine<OP>(acc, static_cast<A>(ld(x[base + i * s])));
    } else {
      for (int64_t i = lane; i < rcount; i += G)
        acc = red_combine<OP>(acc, static_cast<A>(ld(x[base + offset_of(red, i)])));
    }
    if (G == 32) acc = warp_reduce<OP>(acc);
    else acc = block_reduce<OP>(acc, smem);
    if (lane == 0) store_result(out, k, acc, mean, rcount);
  }
}

// Columns: block (32, 8); threadIdx.x picks one of 32 consecutive outputs, threadIdx.y one
// of 8 interleaved slices of the reduced elements.
template <typename T, int OP>
__global__ void reduce_cols(T* __restrict__ out, const T* __restrict__ x, Dims keep, Dims red, int64_t kcount,
                            int64_t rcount, int mean) {
  using A = typename AccOf<T>::type;
  __shared__ A part[8][33];
  for (int64_t c0 = static_cast<int64_t>(blockIdx.x) * 32; c0 < kcount; c0 += static_cast<int64_t>(gridDim.x) * 32) {
    const int64_t c = c0 + threadIdx.x;
    A acc = red_init<OP, A>();
    if (c < kcount) {
      const int64_t base = offset_of(keep, c);
      for (int64_t r = threadIdx.y; r < rcount; r += 8)
        acc = red_combine<OP>(acc, static_cast<A>(ld(x[base + offset_of(red, r)])));
    }
    part[threadIdx.y][threadIdx.x] = acc;
    __syncthreads();
    if (threadIdx.y == 0 && c < kcount) {
      A a = part[0][threadIdx.x];
#pragma unroll
      for (int j = 1; j < 8; ++j) a = red_combine<OP>(a, part[j][threadIdx.x]);
      store_result(out, c, a, mean, rcount);
    }
    __syncthreads();
  }
}

template <typename T, int OP>
int launch_reduce(const View& out, const View& x, int kept, int mean) {
  const Dims keep = collapse(kept, x.shape, x.strides);
  const Dims red = collapse(x.ndim - kept, x.shape + kept, x.strides + kept);
  int64_t kcount = 1, rcount = 1;
  for (int d = 0; d < kept; ++d) kcount *= x.shape[d];
  for (int d = kept; d < x.ndim; ++d) rcount *= x.shape[d];
  T* o = static_cast<T*>(out.data);
  const T* px = static_cast<const T*>(x.data);
  const bool red_contig = red.ndim == 1 && (red.str[0] == 1 || rcount == 1);
  if (!red_contig && keep.str[keep.ndim - 1] == 1 && kcount > 1) {
    dim3 block(32, 8);
    reduce_cols<T, OP><<<grid_cap((kcount + 31) / 32), block, 0, stream()>>>(o, px, keep, red, kcount, rcount, mean);
    return check_launch("reduce");
  }
  constexpr int V = 16 / sizeof(T);
  bool vec = red.ndim == 1 && red.str[0] == 1 && rcount % V == 0 && reinterpret_cast<uintptr_t>(px) % 16 == 0;
  for (int d = 0; d < keep.ndim && vec; ++d)
    if (keep.shape[d] > 1 && keep.str[d] % V != 0) vec = false;  // every row start stays aligned
  if (rcount <= 1024) {
    const int blocks = grid_cap((kcount + 7) / 8);
    if (vec) reduce_rows<T, OP, 32, true><<<blocks, 256, 0, stream()>>>(o, px, keep, red, kcount, rcount, mean);
    else reduce_rows<T, OP, 32, false><<<blocks, 256, 0, stream()>>>(o, px, keep, red, kcount, rcount, mean);
  } else {
    const int blocks = grid_cap(kcount);
    if (vec) reduce_rows<T, OP, 512, true><<<blocks, 512, 0, stream()>>>(o, px, keep, red, kcount, rcount, mean);
    else reduce_rows<T, OP, 512, false><<<blocks, 512, 0, stream()>>>(o, px, keep, red, kcount, rcount, mean);
  }
  return check_launch("reduce");
}

template <typename T>
int reduce_typed(ReduceOp op, const View& out, const View& x, int kept) {
  switch (op) {
    case ReduceOp::Sum: return launch_reduce<T, kSum>(out, x, kept, 0);
    case ReduceOp::Mean: return launch_reduce<T, kSum>(out, x, kept, 1);
    case ReduceOp::Max: return launch_reduce<T, kMax>(out, x, kept, 0);
    case ReduceOp::Min: return launch_reduce<T, kMin>(out, x, kept, 0);
    default: return set_error("reduce: unknown op");
  }
}

// ---- argmax / argmin ---------------------------------------------------------------------
// Is (v, i) a better pick than (bv, bi)? bi < 0: nothing picked yet. NaN beats numbers; among
// equals (and among NaNs) the smaller index wins.
template <bool MAX, typename A>
__device__ __forceinline__ bool better(A v, int64_t i, A bv, int64_t bi) {
  if (i < 0) return false;
  if (bi < 0) return true;
  const bool vn = v != v, bn = bv != bv;
  if (vn || bn) return vn && bn ? i < bi : vn;
  if (MAX ? v > bv : v < bv) return true;
  return v == bv && i < bi;
}

template <typename T, bool MAX, int G>
__global__ void arg_rows(int32_t* __restrict__ out, const T* __restrict__ x, Dims keep, int64_t kcount, int64_t n,
                         int64_t s) {
  using A = typename AccOf<T>::type;
  __shared__ A sv[32];
  __shared__ int64_t si[32];
  const int lane = threadIdx.x % G;
  const int64_t per_block = blockDim.x / G;
  for (int64_t k = blockIdx.x * per_block + threadIdx.x / G; k < kcount; k += gridDim.x * per_block) {
    const int64_t base = offset_of(keep, k);
    A bv = A(0);
    int64_t bi = -1;
    for (int64_t i = lane; i < n; i += G) {
      const A v = static_cast<A>(ld(x[base + i * s]));
      if (better<MAX>(v, i, bv, bi)) {
        bv = v;
        bi = i;
      }
    }
#pragma unroll
    for (int m = 16; m > 0; m >>= 1) {
      const A ov = __shfl_xor_sync(0xffffffffu, bv, m);
      const int64_t oi = __shfl_xor_sync(0xffffffffu, bi, m);
      if (better<MAX>(ov, oi, bv, bi)) {
        bv = ov;
        bi = oi;
      }
    }
    if (G > 32) {
      const int w = threadIdx.x >> 5, l = threadIdx.x & 31;
      __syncthreads();
      if (l == 0) {
        sv[w] = bv;
        si[w] = bi;
      }
      __syncthreads();
      if (w == 0) {
        bv = l < static_cast<int>(blockDim.x >> 5) ? sv[l] : A(0);
        bi = l < static_cast<int>(blockDim.x >> 5) ? si[l] : -1;
#pragma unroll
        for (int m = 16; m > 0; m >>= 1) {
          const A ov = __shfl_xor_sync(0xffffffffu, bv, m);
          const int64_t oi = __shfl_xor_sync(0xffffffffu, bi, m);
          if (better<MAX>(ov, oi, bv, bi)) {
            bv = ov;
            bi = oi;
          }
        }
      }
    }
    if (lane == 0) out[k] = static_cast<int32_t>(bi < 0 ? 0 : bi);
  }
}

template <typename T, bool MAX>
int launch_arg(const View& out, const View& x) {
  const int kept = x.ndim - 1;
  const Dims keep = collapse(kept, x.shape, x.strides);
  int64_t kcount = 1;
  for (int d = 0; d < kept; ++d) kcount *= x.shape[d];
  const int64_t n = x.shape[kept], s = x.strides[kept];
  int32_t* o = static_cast<int32_t*>(out.data);
  const T* px = static_cast<const T*>(x.data);
  if (n <= 1024) arg_rows<T, MAX, 32><<<grid_cap((kcount + 7) / 8), 256, 0, stream()>>>(o, px, keep, kcount, n, s);
  else arg_rows<T, MAX, 512><<<grid_cap(kcount), 512, 0, stream()>>>(o, px, keep, kcount, n, s);
  return check_launch("arg_reduce");
}

}  // namespace

int reduce(int32_t op_i, const View* out, const View* x, int32_t nreduce) {
  DR_CUDA_ENTRY_BEGIN
  const ReduceOp op = static_cast<ReduceOp>(op_i);
  if (op_i < 0 || op >= ReduceOp::Count) return set_error("reduce: unknown op " + std::to_string(op_i));
  if (nreduce < 0 || nreduce > x->ndim) return set_error("reduce: bad number of reduced dims");
  if (out->dtype != x->dtype) return set_error("reduce: output dtype must match the input's");
  const DType t = dt(*x);
  if (t == DType::Bool) return set_error("reduce: bool tensors cannot be reduced (cast to int32 first)");
  if (t == DType::I32 && op == ReduceOp::Mean) return set_error("mean: int32 tensors need a cast to a float dtype first");
  if (t != DType::F32 && t != DType::BF16 && t != DType::I32) return dtype_error("reduce", *x);
  const int kept = x->ndim - nreduce;
  int64_t kcount = 1, rcount = 1;
  for (int d = 0; d < kept; ++d) kcount *= x->shape[d];
  for (int d = kept; d < x->ndim; ++d) rcount *= x->shape[d];
  if (kcount == 0) return 0;
  if (view_numel(*out) != kcount) return set_error("reduce: output size does not match the kept dims");
  if (rcount == 0) {
    // Nothing to read: the identity of the op (int32 max/min saturate through fill's cast).
    View flat = *out;
    flat.ndim = 1;
    flat.shape[0] = kcount;
    flat.strides[0] = 1;
    const double v = op == ReduceOp::Mean ? NAN : op == ReduceOp::Max ? -INFINITY : op == ReduceOp::Min ? INFINITY : 0.0;
    return fill(&flat, v);
  }
  switch (t) {
    case DType::F32: return reduce_typed<float>(op, *out, *x, kept);
    case DType::BF16: return reduce_typed<bf16_t>(op, *out, *x, kept);
    default: return reduce_typed<int32_t>(op, *out, *x, kept);
  }
  DR_CUDA_ENTRY_END("reduce")
}

int arg_reduce(int32_t op_i, const View* out, const View* x) {
  DR_CUDA_ENTRY_BEGIN
  const bool is_max = op_i == static_cast<int32_t>(ArgReduceOp::Argmax);
  if (!is_max && op_i != static_cast<int32_t>(ArgReduceOp::Argmin))
    return set_error("arg_reduce: unknown op " + std::to_string(op_i));
  if (dt(*out) != DType::I32) return set_error("argmax/argmin: output must be int32");
  if (x->ndim < 1) return set_error("argmax/argmin: input needs at least one dim");
  const DType t = dt(*x);
  if (t == DType::Bool) return set_error("argmax/argmin: bool tensors are not supported");
  if (t != DType::F32 && t != DType::BF16 && t != DType::I32) return dtype_error("arg_reduce", *x);
  int64_t kcount = 1;
  for (int d = 0; d + 1 < x->ndim; ++d) kcount *= x->shape[d];
  if (kcount == 0) return 0;
  if (x->shape[x->ndim - 1] == 0) return set_error("argmax/argmin: cannot reduce over an empty dim");
  if (view_numel(*out) != kcount) return set_error("argmax/argmin: output size does not match the kept dims");
  switch (t) {
    case DType::F32: return is_max ? launch_arg<float, true>(*out, *x) : launch_arg<float, false>(*out, *x);
    case DType::BF16: return is_max ? launch_arg<bf16_t, true>(*out, *x) : launch_arg<bf16_t, false>(*out, *x);
    default: return is_max ? launch_arg<int32_t, true>(*out, *x) : launch_arg<int32_t, false>(*out, *x);
  }
  DR_CUDA_ENTRY_END("arg_reduce")
}

}  // namespace cuda
}  // namespace dualroute
