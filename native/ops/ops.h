// Dispatchers: the check() and run() of every op in the op table (generated/optable.h declares
// them, one pair per op, overloaded on the op's argument struct).
//
//   check(args)  runs on the JavaScript thread at the call, after the addon has checked that
//                the tensors share a device and that the backend supports the dtype. It looks
//                at shapes, dtypes and values only (never at data) and throws a typed error
//                naming the op and the argument. lib/ops has usually given a friendlier error
//                already; these checks keep native code safe whatever the caller passes.
//   run(args)    runs on the device's stream thread, later. It prepares views (broadcasting,
//                permuting, contiguous copies) and calls the CPU kernel or the CUDA backend.
//                It may assume check() passed; errors it throws (an out-of-range token id, a
//                CUDA fault) become the op's failure, raised at the next read that needs it.
//
// One file per family, named as in the table: elementwise, reduce, matmul, rows, index,
// backward, optim, attention. The helpers below are for run() (they copy data).
#pragma once
#include <cstdint>
#include <memory>
#include <vector>

#include "../core/attention.h"
#include "../core/ops.h"
#include "../core/tensor.h"
#include "../generated/optable.h"

namespace dualroute {
namespace ops {

using T = TensorImpl;

// A contiguous tensor with t's contents (t itself, shared, when already contiguous).
std::shared_ptr<const T> contiguous(const T& t);
std::unique_ptr<T> contiguous_copy(const T& t);
// out = in cast to out's dtype: same shape, same device, any layouts.
void copy_into(const T& out, const T& in);
// Contiguous bytes of t in element order, to or from the host.
void read_bytes(const T& t, void* dst);
void write_bytes(const T& t, const void* src);  // t contiguous

// Metadata checks shared by the families' check() functions.
bool same_shape(const T& a, const T& b);
bool has_shape(const T& t, std::initializer_list<int64_t> shape);
// x's view broadcast to `shape_of`'s shape (right-aligned, stride 0 where x has size 1 or lacks
// the dim); a ShapeError naming op and arg when it does not broadcast.
View broadcast_to(const T& x, const T& shape_of, const char* op, const char* arg);
// broadcast_to's check alone, from the layouts (no data pointer: check() runs at the call, and
// touching data() there would allocate a queued op's output early).
void check_broadcast(const T& x, const T& shape_of, const char* op, const char* arg);
void require_same_shape(const char* op, const char* arg, const T& t, const T& like, const char* like_name);
void require_dtype(const char* op, const char* arg, const T& t, DType want);
void require_contiguous(const char* op, const char* arg, const T& t);
void require_float(const char* op, const char* arg, const T& t);
// Statistics (rstd, mean, lse) and per-row losses: float32, float64 for float64 inputs.
inline DType stats_dtype(DType d) { return d == DType::F64 ? DType::F64 : DType::F32; }
inline int64_t cols_of(const T& x) { return x.ndim ? x.shape[x.ndim - 1] : 1; }
inline int64_t rows_of(const T& x) {
  const int64_t c = cols_of(x);
  return c ? x.numel() / c : 0;
}

}  // namespace ops
}  // namespace dualroute
