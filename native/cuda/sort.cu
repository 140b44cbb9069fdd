// Running sums, top-k selection and stable sorting on the GPU (float32, bfloat16, int32).
//
// cumsum: x, out contiguous [outer, dim, inner], running sums over dim (reverse: from the end;
// exclusive: out[d] is the sum of the elements before d). inner > 1: one thread per (outer,
// inner) column walking dim (neighbouring threads read neighbouring addresses). inner == 1: one
// block per row; each chunk of kScanThreads x kScanItems elements is scanned by the block
// (per-thread sums, a Hillis-Steele scan of them in shared memory, then each thread writes its
// items from its prefix) and the chunk total carries into the next. float32 and bfloat16 add in
// float, int32 in 64 bits: a sum outside int32 is recorded (smallest flat position) in a device
// slot, and the entry waits for the stream and reports a RangeError.
//
// topk / sort: x contiguous [rows, n], along the last axis. Each element becomes one 64-bit key,
// (order bits of the value) << 32 | index, where the order bits map float32/bfloat16 (NaN as
// the largest value, -0 as +0) and int32 to unsigned integers in value order, complemented for a
// descending order. Keys are distinct, so any sorting network sorts them into exactly the stable
// order (ties by index) in either direction; topk is the first k of that order. Rows of up to
// kSmemSort keys are sorted by a bitonic network in shared memory, one block per row; longer
// rows by the same network over a key buffer in global memory, one launch per stage.
#include <algorithm>
#include <climits>
#include <mutex>
#include <string>
#include <type_traits>

#include "device.cuh"

namespace dualroute {
namespace cuda {

// backend.cu: temporary device memory from the caching allocator.
int scratch_alloc(void** ptr, size_t bytes);
int scratch_release(void* ptr);

namespace {

// emu:begin sort (test/cuda_emu runs the code up to emu:end in a warp emulator)
constexpr int kScanThreads = 256, kScanItems = 8;
constexpr int kSortThreads = 256;
constexpr int kSmemSort = 4096;  // keys per row sorted in shared memory (32 KiB)

__device__ unsigned long long g_cumsum_bad;  // smallest flat position whose int32 sum overflowed

template <typename T>
struct ScanAcc {
  using type = float;
};
template <>
struct ScanAcc<int32_t> {
  using type = long long;
};

// Writes running sum s at flat position p of out; an int32 sum outside int32 is recorded.
template <typename T, typename A>
__device__ __forceinline__ void put_sum(T* out, long long p, A s) {
  if constexpr (std::is_same<T, int32_t>::value) {
    if (s < INT_MIN || s > INT_MAX) record_bad(&g_cumsum_bad, p);
    out[p] = static_cast<int32_t>(s);
  } else {
    out[p] = st<T>(s);
  }
}

template <typename T>
__global__ void cumsum_cols(T* __restrict__ out, const T* __restrict__ x, int64_t outer, int64_t dim, int64_t inner,
                            int reverse, int exclusive) {
  using A = typename ScanAcc<T>::type;
  for (int64_t c = gtid(); c < outer * inner; c += gstride()) {
    const int64_t o = c / inner, i = c - o * inner;
    A acc = 0;
    for (int64_t s = 0; s < dim; ++s) {
      const int64_t p = (o * dim + (reverse ? dim - 1 - s : s)) * inner + i;
      const A v = static_cast<A>(ld(x[p]));
      if (exclusive) {
        put_sum(out, p, acc);
        acc += v;
      } else {
        acc += v;
        put_sum(out, p, acc);
      }
    }
  }
}

template <typename T>
__global__ void __launch_bounds__(kScanThreads) cumsum_rows(T* __restrict__ out, const T* __restrict__ x, int64_t rows,
                                                            int64_t dim, int reverse, int exclusive) {
  using A = typename ScanAcc<T>::type;
  __shared__ A part[2][kScanThreads];
  const int t = threadIdx.x;
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const int64_t base = r * dim;
    A carry = 0;
    for (int64_t c0 = 0; c0 < dim; c0 += kScanThreads * kScanItems) {
      A v[kScanItems];
      A local = 0;
#pragma unroll
      for (int k = 0; k < kScanItems; ++k) {
        const int64_t s = c0 + static_cast<int64_t>(t) * kScanItems + k;
        v[k] = s < dim ? static_cast<A>(ld(x[base + (reverse ? dim - 1 - s : s)])) : A(0);
        local += v[k];
      }
      // inclusive scan of the threads' sums (double-buffered: one barrier per step)
      int buf = 0;
      part[0][t] = local;
      __syncthreads();
      for (int off = 1; off < kScanThreads; off <<= 1) {
        A y = part[buf][t];
        if (t >= off) y += part[buf][t - off];
        part[buf ^ 1][t] = y;
        buf ^= 1;
        __syncthreads();
      }
      A run = carry + (t > 0 ? part[buf][t - 1] : A(0));  // (not inclusive - local: NaN, inf)
      const A total = part[buf][kScanThreads - 1];
#pragma unroll
      for (int k = 0; k < kScanItems; ++k) {
        const int64_t s = c0 + static_cast<int64_t>(t) * kScanItems + k;
        if (s >= dim) break;
        const int64_t p = base + (reverse ? dim - 1 - s : s);
        if (exclusive) {
          put_sum(out, p, run);
          run += v[k];
        } else {
          run += v[k];
          put_sum(out, p, run);
        }
      }
      carry += total;
      __syncthreads();  // part is rewritten by the next chunk
    }
  }
}

// Order bits: unsigned integers in value order (NaN the largest, -0 equal to +0).
__device__ __forceinline__ uint32_t order_bits(float v) {
  if (v != v) return 0xffffffffu;
  if (v == 0.f) v = 0.f;
  const uint32_t u = __float_as_uint(v);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}
__device__ __forceinline__ uint32_t order_bits(int32_t v) { return static_cast<uint32_t>(v) ^ 0x80000000u; }

// The key of element i of value v: ascending keys sort into the stable order (descending: the
// order bits complemented, the index still ascending, so ties keep the lower index first).
template <typename T>
__device__ __forceinline__ unsigned long long sort_key(T v, int i, int desc) {
  uint32_t o = order_bits(ld(v));
  if (desc) o = ~o;
  return (static_cast<unsigned long long>(o) << 32) | static_cast<uint32_t>(i);
}

// One block per row: n <= P <= kSmemSort keys (P a power of two, padding keys ~0 sort last);
// writes the first `count` of the sorted order.
template <typename T>
__global__ void __launch_bounds__(kSortThreads) sort_rows_smem(T* __restrict__ values, int32_t* __restrict__ indices,
                                                               const T* __restrict__ x, int64_t rows, int n, int P,
                                                               int count, int desc) {
  extern __shared__ unsigned long long skeys[];
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const T* xr = x + r * n;
    for (int i = threadIdx.x; i < P; i += blockDim.x) skeys[i] = i < n ? sort_key(xr[i], i, desc) : ~0ull;
    __syncthreads();
    for (int k = 2; k <= P; k <<= 1)
      for (int j = k >> 1; j > 0; j >>= 1) {
        for (int i = threadIdx.x; i < P; i += blockDim.x) {
          const int l = i ^ j;
          if (l > i) {
            const unsigned long long a = skeys[i], b = skeys[l];
            if ((a > b) == ((i & k) == 0)) {
              skeys[i] = b;
              skeys[l] = a;
            }
          }
        }
        __syncthreads();
      }
    for (int i = threadIdx.x; i < count; i += blockDim.x) {
      const int idx = static_cast<int>(skeys[i] & 0xffffffffu);
      indices[r * count + i] = idx;
      values[r * count + i] = xr[idx];
    }
    __syncthreads();  // skeys is refilled for the next row
  }
}

// Rows longer than kSmemSort: keys [rows, P] in global memory.
template <typename T>
__global__ void sort_keys_init(unsigned long long* __restrict__ keys, const T* __restrict__ x, int64_t rows, int64_t n,
                               int64_t P, int desc) {
  for (int64_t e = gtid(); e < rows * P; e += gstride()) {
    const int64_t r = e / P, i = e - r * P;
    keys[e] = i < n ? sort_key(x[r * n + i], static_cast<int>(i), desc) : ~0ull;
  }
}

// One stage (k, j) of the bitonic network on every row.
__global__ void sort_keys_stage(unsigned long long* __restrict__ keys, int64_t rows, int64_t P, int64_t k, int64_t j) {
  for (int64_t e = gtid(); e < rows * P; e += gstride()) {
    const int64_t r = e / P, i = e - r * P, l = i ^ j;
    if (l <= i) continue;
    unsigned long long* row = keys + r * P;
    const unsigned long long a = row[i], b = row[l];
    if ((a > b) == ((i & k) == 0)) {
      row[i] = b;
      row[l] = a;
    }
  }
}

template <typename T>
__global__ void sort_keys_emit(T* __restrict__ values, int32_t* __restrict__ indices,
                               const unsigned long long* __restrict__ keys, const T* __restrict__ x, int64_t rows,
                               int64_t n, int64_t P, int64_t count) {
  for (int64_t e = gtid(); e < rows * count; e += gstride()) {
    const int64_t r = e / count, i = e - r * count;
    const int idx = static_cast<int>(keys[r * P + i] & 0xffffffffu);
    indices[e] = idx;
    values[e] = x[r * n + idx];
  }
}
// emu:end sort

std::mutex g_cumsum_mutex;  // one slot: keep reset, launch and read-back together

template <typename T>
void launch_cumsum(T* out, const T* x, int64_t outer, int64_t dim, int64_t inner, int reverse, int exclusive) {
  if (inner == 1) {
    cumsum_rows<T><<<grid_cap(outer), kScanThreads, 0, stream()>>>(out, x, outer, dim, reverse, exclusive);
  } else {
    cumsum_cols<T><<<grid_for(outer * inner), kThreads, 0, stream()>>>(out, x, outer, dim, inner, reverse, exclusive);
  }
}

// Sorts the rows of x and writes the first `count` keys' values and indices.
template <typename T>
int launch_sorted(T* values, int32_t* indices, const T* x, int64_t rows, int64_t n, int64_t count, int desc,
                  const char* name) {
  int64_t P = 1;
  while (P < n) P <<= 1;
  if (P <= kSmemSort) {
    const int smem = static_cast<int>(P * sizeof(unsigned long long));
    sort_rows_smem<T><<<grid_cap(rows), kSortThreads, smem, stream()>>>(values, indices, x, rows, static_cast<int>(n),
                                                                        static_cast<int>(P), static_cast<int>(count),
                                                                        desc);
    return check_launch(name);
  }
  void* scratch = nullptr;
  DR_CUDA_TRY(scratch_alloc(&scratch, static_cast<size_t>(rows) * P * sizeof(unsigned long long)));
  unsigned long long* keys = static_cast<unsigned long long*>(scratch);
  const int grid = grid_for(rows * P);
  sort_keys_init<T><<<grid, kThreads, 0, stream()>>>(keys, x, rows, n, P, desc);
  int status = check_launch(name);
  for (int64_t k = 2; status == 0 && k <= P; k <<= 1)
    for (int64_t j = k >> 1; status == 0 && j > 0; j >>= 1) {
      sort_keys_stage<<<grid, kThreads, 0, stream()>>>(keys, rows, P, k, j);
      status = check_launch(name);
    }
  if (status == 0) {
    sort_keys_emit<T><<<grid_for(rows * count), kThreads, 0, stream()>>>(values, indices, keys, x, rows, n, P, count);
    status = check_launch(name);
  }
  const int rel = scratch_release(scratch);  // stream order: later users run after these kernels
  return status ? status : rel;
}

// rows and n of a [rows, n] view (n: the last dimension).
void rows_cols(const View& x, int64_t* rows, int64_t* n) {
  *n = x.ndim ? x.shape[x.ndim - 1] : 1;
  *rows = *n ? view_numel(x) / *n : 0;
}

template <typename F>
int dispatch_sortable(const View& x, const char* name, F&& f) {
  switch (dt(x)) {
    case DType::F32: return f(float{});
    case DType::BF16: return f(bf16_t{});
    case DType::I32: return f(int32_t{});
    default: return dtype_error(name, x);
  }
}

}  // namespace

int cumsum(const View* out, const View* x, int64_t outer, int64_t dim, int64_t inner, int32_t reverse,
           int32_t exclusive) {
  DR_CUDA_ENTRY_BEGIN
  const char* name = "cumsum";
  if (outer < 0 || dim < 0 || inner < 0) return set_error("cumsum: negative extent");
  if (outer * dim * inner == 0) return 0;
  return dispatch_sortable(*x, name, [&](auto tag) -> int {
    using T = decltype(tag);
    T* o = static_cast<T*>(out->data);
    const T* i = static_cast<const T*>(x->data);
    if constexpr (!std::is_same<T, int32_t>::value) {
      launch_cumsum<T>(o, i, outer, dim, inner, reverse, exclusive);
      return check_launch(name);
    } else {
      std::lock_guard<std::mutex> lock(g_cumsum_mutex);
      void* slot = nullptr;
      DR_CUDA_TRY(bad_slot_reset(g_cumsum_bad, &slot, name, name));
      launch_cumsum<T>(o, i, outer, dim, inner, reverse, exclusive);
      DR_CUDA_TRY(check_launch(name));
      unsigned long long bad = 0;
      DR_CUDA_TRY(bad_slot_read(slot, &bad, name));
      if (bad == ~0ull) return 0;
      return set_error("RangeError: cumsum: the running sum at flat position " + std::to_string(bad) +
                       " leaves int32's range [-2147483648, 2147483647]; cast to float32 first");
    }
  });
  DR_CUDA_ENTRY_END("cumsum")
}

int topk(const View* values, const View* indices, const View* x, int32_t k, int32_t largest) {
  DR_CUDA_ENTRY_BEGIN
  int64_t rows, n;
  rows_cols(*x, &rows, &n);
  if (k < 0 || k > n) return set_error("topk: k is outside [0, n]");
  if (rows == 0 || k == 0) return 0;
  return dispatch_sortable(*x, "topk", [&](auto tag) -> int {
    using T = decltype(tag);
    return launch_sorted<T>(static_cast<T*>(values->data), static_cast<int32_t*>(indices->data),
                            static_cast<const T*>(x->data), rows, n, k, largest, "topk");
  });
  DR_CUDA_ENTRY_END("topk")
}

int sort(const View* values, const View* indices, const View* x, int32_t descending) {
  DR_CUDA_ENTRY_BEGIN
  int64_t rows, n;
  rows_cols(*x, &rows, &n);
  if (rows == 0 || n == 0) return 0;
  return dispatch_sortable(*x, "sort", [&](auto tag) -> int {
    using T = decltype(tag);
    return launch_sorted<T>(static_cast<T*>(values->data), static_cast<int32_t*>(indices->data),
                            static_cast<const T*>(x->data), rows, n, n, descending, "sort");
  });
  DR_CUDA_ENTRY_END("sort")
}

}  // namespace cuda
}  // namespace dualroute
