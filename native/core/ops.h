// Op codes shared by the addon, the CPU kernels, the CUDA backend and lib/ops (the numeric
// values cross into TypeScript: keep lib/native.ts in step, a test checks the names).
#pragma once
#include <cstdint>

#include "view.h"

namespace dualroute {

#define DR_UNARY_OPS(X) \
  X(Neg, "neg")         \
  X(Abs, "abs")         \
  X(Exp, "exp")         \
  X(Log, "log")         \
  X(Sqrt, "sqrt")       \
  X(Rsqrt, "rsqrt")     \
  X(Sin, "sin")         \
  X(Cos, "cos")         \
  X(Tanh, "tanh")       \
  X(Sigmoid, "sigmoid") \
  X(Relu, "relu")       \
  X(Gelu, "gelu")       \
  X(GeluTanh, "geluTanh") \
  X(Silu, "silu")       \
  X(Square, "square")   \
  X(Reciprocal, "reciprocal") \
  X(Floor, "floor")     \
  X(Ceil, "ceil")       \
  X(Round, "round")     \
  X(Sign, "sign")       \
  X(Erf, "erf")         \
  X(Log1p, "log1p")     \
  X(Expm1, "expm1")     \
  X(LogicalNot, "logicalNot")

#define DR_BINARY_OPS(X)  \
  X(Add, "add")           \
  X(Sub, "sub")           \
  X(Mul, "mul")           \
  X(Div, "div")           \
  X(Pow, "pow")           \
  X(Maximum, "maximum")   \
  X(Minimum, "minimum")   \
  X(Eq, "eq")             \
  X(Ne, "ne")             \
  X(Lt, "lt")             \
  X(Le, "le")             \
  X(Gt, "gt")             \
  X(Ge, "ge")             \
  X(LogicalAnd, "logicalAnd") \
  X(LogicalOr, "logicalOr")

#define DR_ENUM_ENTRY(name, str) name,
enum class UnaryOp : int32_t { DR_UNARY_OPS(DR_ENUM_ENTRY) Count };
enum class BinaryOp : int32_t { DR_BINARY_OPS(DR_ENUM_ENTRY) Count };
#undef DR_ENUM_ENTRY

inline bool binary_is_compare(BinaryOp op) {
  return op >= BinaryOp::Eq && op <= BinaryOp::LogicalOr;
}

enum class ReduceOp : int32_t { Sum = 0, Mean = 1, Max = 2, Min = 3, Count };
enum class ArgReduceOp : int32_t { Argmax = 0, Argmin = 1 };
enum class RandomKind : int32_t { Uniform = 0, Normal = 1 };

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
