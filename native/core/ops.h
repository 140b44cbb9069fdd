// Op codes and argument structs shared by the addon, the CPU kernels and the CUDA backend.
#pragma once
#include <cstdint>

#include "../generated/enums.h"
#include "view.h"

namespace dualroute {

// UnaryOp, BinaryOp, ReduceOp, ArgReduceOp, RandomKind and AttnMask come from the op table
// (native/optable.js), which lib/ reads too.
inline bool binary_is_compare(BinaryOp op) {
  return op >= BinaryOp::Eq && op <= BinaryOp::LogicalOr;
}

// C = alpha * op(A) @ op(B) + beta * C for `batch` matrices. op(A) is m x k: row-major with
// leading dimension lda when !trans_a (A[i,p] = a[i*lda + p]), else stored k x m
// (A[i,p] = a[p*lda + i]). Likewise op(B) is k x n. Batch strides may be 0 (broadcast).
// a, b and c share one dtype; accumulation is float32 (float64 for float64).
struct MatmulArgs {
  int64_t batch, m, n, k;
  const void* a;
  int64_t lda, batch_stride_a;
  int32_t trans_a;
  const void* b;
  int64_t ldb, batch_stride_b;
  int32_t trans_b;
  void* c;
  int64_t ldc, batch_stride_c;
  int32_t dtype;
  float alpha, beta;
};

}  // namespace dualroute
