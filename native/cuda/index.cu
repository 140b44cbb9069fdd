// Index kernels on the GPU: embedding lookup, gather and scatter_add along an axis.
//
//   embedding:   out[i, :] = table[ids[i], :]          ids int32 [n], table [V, D], out [n, D]
//   gather:      out[p] = x[p with coordinate `axis` replaced by index[p]]   (torch.gather)
//   scatter_add: out[p with coordinate `axis` replaced by index[p]] += src[p] (in place)
// All operands contiguous, int32 indices. gather and embedding only move bytes, so they are
// dispatched by element size and work for every dtype the GPU stores; scatter_add adds, with
// atomicAdd (float32, int32, and bfloat16: native on sm_90, a compare-and-swap loop on sm_80),
// because several positions may hit the same output element. Its order of additions is not
// fixed, so float results agree with the CPU to rounding only.
//
// Launch layout: a grid-stride loop over output elements (embedding: over 16-byte units of a
// row when D allows it, so a row copy is a run of vector loads) or over index positions,
// decoding the flat position into coordinates with the index's shape.
//
// Bad indices: an index outside [0, n) is never dereferenced. The kernel writes zeros (or
// skips the add) and keeps the smallest offending position in a device slot with atomicMin;
// the entry then waits for the stream, reads the slot and the index stored there, and returns
// a "RangeError: ..." message that the addon turns into a JavaScript RangeError.
#include <algorithm>
#include <mutex>
#include <string>

#include "device.cuh"

namespace dualroute {
namespace cuda {
namespace {

__device__ unsigned long long g_bad_pos;  // smallest position with a bad index, ~0 if none
std::mutex g_slot_mutex;                  // one slot: keep reset, launch and read-back together

// ---- embedding ---------------------------------------------------------------------------
// U: the unit moved per thread (16-byte uint4 when rows allow, else one element).
template <typename U>
__global__ void embedding_kernel(U* __restrict__ out, const int32_t* __restrict__ ids, const U* __restrict__ table,
                                 int64_t n, int64_t du, int64_t vocab) {
  const int64_t total = n * du;
  for (int64_t e = gtid(); e < total; e += gstride()) {
    const int64_t i = e / du, j = e - i * du;
    const int32_t id = ids[i];
    if (id < 0 || id >= vocab) {
      out[e] = U{};
      if (j == 0) record_bad(&g_bad_pos, i);
    } else {
      out[e] = table[static_cast<int64_t>(id) * du + j];
    }
  }
}

template <typename U>
void launch_embedding(void* out, const int32_t* ids, const void* table, int64_t n, int64_t du, int64_t vocab) {
  embedding_kernel<U><<<grid_for(n * du), 256, 0, stream()>>>(static_cast<U*>(out), ids, static_cast<const U*>(table),
                                                              n, du, vocab);
}

// ---- gather / scatter_add ----------------------------------------------------------------
struct AxisDims {
  int ndim, axis;
  int64_t shape[kMaxDims];  // the index's shape
  int64_t str[kMaxDims];    // strides of the tensor addressed through the index
  int64_t limit;            // that tensor's extent along axis
};

// Offset into the addressed tensor of flat index position p, with coordinate `axis` = v.
__device__ __forceinline__ int64_t axis_offset(const AxisDims& A, int64_t p, int64_t v) {
  int64_t off = 0;
#pragma unroll
  for (int d = kMaxDims - 1; d >= 0; --d) {
    if (d < A.ndim) {
      const int64_t c = p % A.shape[d];
      p /= A.shape[d];
      off += (d == A.axis ? v : c) * A.str[d];
    }
  }
  return off;
}

template <typename U>
__global__ void gather_kernel(U* __restrict__ out, const U* __restrict__ x, const int32_t* __restrict__ index,
                              AxisDims A, int64_t n) {
  for (int64_t p = gtid(); p < n; p += gstride()) {
    const int32_t v = index[p];
    if (v < 0 || v >= A.limit) {
      out[p] = U{};
      record_bad(&g_bad_pos, p);
    } else {
      out[p] = x[axis_offset(A, p, v)];
    }
  }
}

__device__ __forceinline__ void atomic_add(float* p, float v) { atomicAdd(p, v); }
__device__ __forceinline__ void atomic_add(int32_t* p, int32_t v) { atomicAdd(p, v); }
__device__ __forceinline__ void atomic_add(bf16_t* p, bf16_t v) { atomicAdd(p, v); }

template <typename T>
__global__ void scatter_add_kernel(T* __restrict__ out, const int32_t* __restrict__ index, const T* __restrict__ src,
                                   AxisDims A, int64_t n) {
  for (int64_t p = gtid(); p < n; p += gstride()) {
    const int32_t v = index[p];
    if (v < 0 || v >= A.limit) record_bad(&g_bad_pos, p);
    else atomic_add(out + axis_offset(A, p, v), src[p]);
  }
}

// Checks the shapes of an along-axis op and fills AxisDims for the addressed tensor t.
int axis_dims(const char* name, const View& t, const View& index, int axis, AxisDims* A) {
  if (dt(index) != DType::I32) return set_error(std::string(name) + ": index must be int32");
  if (index.ndim != t.ndim) return set_error(std::string(name) + ": index must have as many dims as the tensor");
  if (axis < 0 || axis >= t.ndim) return set_error(std::string(name) + ": axis out of range");
  if (!view_contiguous(index)) return set_error(std::string(name) + ": index must be contiguous");
  for (int d = 0; d < t.ndim; ++d)
    if (d != axis && index.shape[d] > t.shape[d])
      return set_error(std::string(name) + ": index is larger than the tensor in dim " + std::to_string(d));
  A->ndim = t.ndim;
  A->axis = axis;
  A->limit = t.shape[axis];
  for (int d = 0; d < kMaxDims; ++d) {
    A->shape[d] = d < t.ndim ? index.shape[d] : 1;
    A->str[d] = d < t.ndim ? t.strides[d] : 0;
  }
  return 0;
}

std::string bad_index_message(const char* name, int64_t p, int32_t v, int64_t limit) {
  return std::string("RangeError: ") + name + ": index " + std::to_string(v) + " at flat position " +
         std::to_string(p) + " is outside [0, " + std::to_string(limit) + ")";
}

}  // namespace

int embedding(const View* out, const View* ids, const View* table) {
  DR_CUDA_ENTRY_BEGIN
  if (dt(*ids) != DType::I32) return set_error("embedding: ids must be int32");
  if (out->dtype != table->dtype) return set_error("embedding: output dtype must match the table's");
  if (dt(*table) == DType::F64) return dtype_error("embedding", *table);
  if (table->ndim != 2) return set_error("embedding: table must be [V, D]");
  if (!view_contiguous(*out) || !view_contiguous(*ids) || !view_contiguous(*table))
    return set_error("embedding: tensors must be contiguous");
  const int64_t vocab = table->shape[0], D = table->shape[1];
  const int64_t n = view_numel(*ids);
  if (view_numel(*out) != n * D) return set_error("embedding: output must be [n, D]");
  if (n == 0 || D == 0) return 0;
  const int64_t row_bytes = D * dtype_size(dt(*table));
  const int32_t* pid = static_cast<const int32_t*>(ids->data);
  return with_bad_slot(
      g_slot_mutex, g_bad_pos, "embedding", pid,
      [&](unsigned long long*) {
        const bool vec = row_bytes % 16 == 0 && reinterpret_cast<uintptr_t>(out->data) % 16 == 0 &&
                         reinterpret_cast<uintptr_t>(table->data) % 16 == 0;
        if (vec) launch_embedding<uint4>(out->data, pid, table->data, n, row_bytes / 16, vocab);
        else if (dtype_size(dt(*table)) == 4) launch_embedding<uint32_t>(out->data, pid, table->data, n, D, vocab);
        else if (dtype_size(dt(*table)) == 2) launch_embedding<uint16_t>(out->data, pid, table->data, n, D, vocab);
        else launch_embedding<uint8_t>(out->data, pid, table->data, n, D, vocab);
        return check_launch("embedding");
      },
      [&](int64_t i, int32_t id) {
        return "RangeError: embedding: token id " + std::to_string(id) + " at position " + std::to_string(i) +
               " is outside [0, " + std::to_string(vocab) + ")";
      });
  DR_CUDA_ENTRY_END("embedding")
}

int gather(const View* out, const View* x, const View* index, int32_t axis) {
  DR_CUDA_ENTRY_BEGIN
  if (out->dtype != x->dtype) return set_error("gather: output dtype must match the input's");
  if (dt(*x) == DType::F64) return dtype_error("gather", *x);
  if (!view_contiguous(*out)) return set_error("gather: output must be contiguous");
  AxisDims A;
  DR_CUDA_TRY(axis_dims("gather", *x, *index, axis, &A));
  const int64_t n = view_numel(*index);
  if (view_numel(*out) != n) return set_error("gather: output must have the index's shape");
  if (n == 0) return 0;
  const int32_t* pi = static_cast<const int32_t*>(index->data);
  const int size = dtype_size(dt(*x));
  return with_bad_slot(
      g_slot_mutex, g_bad_pos, "gather", pi,
      [&](unsigned long long*) {
        if (size == 4)
          gather_kernel<uint32_t><<<grid_for(n), 256, 0, stream()>>>(
              static_cast<uint32_t*>(out->data), static_cast<const uint32_t*>(x->data), pi, A, n);
        else if (size == 2)
          gather_kernel<uint16_t><<<grid_for(n), 256, 0, stream()>>>(
              static_cast<uint16_t*>(out->data), static_cast<const uint16_t*>(x->data), pi, A, n);
        else
          gather_kernel<uint8_t><<<grid_for(n), 256, 0, stream()>>>(
              static_cast<uint8_t*>(out->data), static_cast<const uint8_t*>(x->data), pi, A, n);
        return check_launch("gather");
      },
      [&](int64_t p, int32_t v) { return bad_index_message("gather", p, v, A.limit); });
  DR_CUDA_ENTRY_END("gather")
}

int scatter_add(const View* out, const View* index, const View* src, int32_t axis) {
  DR_CUDA_ENTRY_BEGIN
  if (out->dtype != src->dtype) return set_error("scatter_add: src dtype must match the output's");
  const DType t = dt(*out);
  if (t != DType::F32 && t != DType::BF16 && t != DType::I32) return dtype_error("scatter_add", *out);
  if (!view_contiguous(*src)) return set_error("scatter_add: src must be contiguous");
  AxisDims A;
  DR_CUDA_TRY(axis_dims("scatter_add", *out, *index, axis, &A));
  const int64_t n = view_numel(*index);
  if (view_numel(*src) != n) return set_error("scatter_add: src must have the index's shape");
  if (n == 0) return 0;
  const int32_t* pi = static_cast<const int32_t*>(index->data);
  return with_bad_slot(
      g_slot_mutex, g_bad_pos, "scatter_add", pi,
      [&](unsigned long long*) {
        if (t == DType::F32)
          scatter_add_kernel<float><<<grid_for(n), 256, 0, stream()>>>(
              static_cast<float*>(out->data), pi, static_cast<const float*>(src->data), A, n);
        else if (t == DType::BF16)
          scatter_add_kernel<bf16_t><<<grid_for(n), 256, 0, stream()>>>(
              static_cast<bf16_t*>(out->data), pi, static_cast<const bf16_t*>(src->data), A, n);
        else
          scatter_add_kernel<int32_t><<<grid_for(n), 256, 0, stream()>>>(
              static_cast<int32_t*>(out->data), pi, static_cast<const int32_t*>(src->data), A, n);
        return check_launch("scatter_add");
      },
      [&](int64_t p, int32_t v) { return bad_index_message("scatter_add", p, v, A.limit); });
  DR_CUDA_ENTRY_END("scatter_add")
}

}  // namespace cuda
}  // namespace dualroute
