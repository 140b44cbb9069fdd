#include <algorithm>

#include "common.h"

namespace dualroute {
namespace ops {

// x with the kept axes first (in order) and the reduced axes after them: a view, no copy.
static View permuted(const T& x, const std::vector<int>& axes, int* nreduce) {
  View v = x.view();
  View r = v;
  std::vector<bool> red(x.ndim, false);
  for (int a : axes) {
    DR_CHECK(a >= 0 && a < x.ndim, Range, "reduce: axis ", a, " is outside [0, ", x.ndim, ")");
    DR_CHECK(!red[a], Value, "reduce: axis ", a, " is repeated");
    red[a] = true;
  }
  int k = 0;
  for (int pass = 0; pass < 2; ++pass)
    for (int d = 0; d < x.ndim; ++d)
      if (red[d] == (pass == 1)) {
        r.shape[k] = v.shape[d];
        r.strides[k] = v.strides[d];
        ++k;
      }
  *nreduce = static_cast<int>(axes.size());
  return r;
}

void reduce(ReduceOp op, const T& out, const T& x, const std::vector<int>& axes) {
  same_device("reduce", {&out, &x});
  DR_CHECK(op < ReduceOp::Count, Value, "reduce: unknown op");
  DR_CHECK(out.contiguous() && out.dtype == x.dtype, Internal, "reduce: output must be contiguous of x's dtype");
  int nreduce = 0;
  View vx = permuted(x, axes, &nreduce);
  int64_t kept = 1;
  for (int d = 0; d < x.ndim - nreduce; ++d) kept *= vx.shape[d];
  DR_CHECK(kept == out.numel(), Shape, "reduce: output has ", out.numel(), " elements, expected ", kept);
  View vo = out.view();
  DR_RUN(out, cpu::reduce(op, vo, vx, nreduce), reduce, static_cast<int32_t>(op), &vo, &vx, nreduce);
}

void arg_reduce(ArgReduceOp op, const T& out, const T& x, int axis) {
  same_device("argmax", {&out, &x});
  DR_CHECK(out.contiguous() && out.dtype == DType::I32, Internal, "argmax: output must be contiguous int32");
  int nreduce = 0;
  View vx = permuted(x, {axis}, &nreduce);
  DR_CHECK(x.shape[axis] > 0, Shape, "argmax/argmin: axis ", axis, " has size 0");
  DR_CHECK(out.numel() * x.shape[axis] == x.numel(), Shape, "argmax: output size mismatch");
  View vo = out.view();
  DR_RUN(out, cpu::arg_reduce(op, vo, vx), arg_reduce, static_cast<int32_t>(op), &vo, &vx);
}

}  // namespace ops
}  // namespace dualroute
