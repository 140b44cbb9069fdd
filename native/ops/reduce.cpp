// The reduce family: sum/mean/max/min over axes, argmax/argmin along one axis.
#include <algorithm>

#include "common.h"

namespace dualroute {
namespace ops {
namespace {

// x with the kept axes first (in order) and the reduced axes after them: a view, no copy.
View permuted(const T& x, const std::vector<int>& axes) {
  View v = x.view();
  View r = v;
  std::vector<bool> red(x.ndim, false);
  for (int a : axes) red[a] = true;
  int k = 0;
  for (int pass = 0; pass < 2; ++pass)
    for (int d = 0; d < x.ndim; ++d)
      if (red[d] == (pass == 1)) {
        r.shape[k] = v.shape[d];
        r.strides[k] = v.strides[d];
        ++k;
      }
  return r;
}

void check_axes(const char* op, const T& x, const std::vector<int>& axes) {
  std::vector<bool> seen(x.ndim, false);
  for (int a : axes) {
    DR_CHECK(a >= 0 && a < x.ndim, Range, op, ": axis ", a, " is outside [0, ", x.ndim, ")");
    DR_CHECK(!seen[a], Value, op, ": axis ", a, " is repeated");
    seen[a] = true;
  }
}

}  // namespace

void check(const Reduce& a) {
  const char* op = enum_name(a.op);
  check_axes(op, a.x, a.axes);
  DR_CHECK(!(a.x.dtype == DType::I32 && a.op == ReduceOp::Mean), DType, op,
           ": int32 tensors need a cast to a float dtype first");
  require_dtype(op, "out", a.out, a.x.dtype);
  require_contiguous(op, "out", a.out);
  int64_t kept = 1;
  std::vector<bool> red(a.x.ndim, false);
  for (int ax : a.axes) red[ax] = true;
  for (int d = 0; d < a.x.ndim; ++d)
    if (!red[d]) kept *= a.x.shape[d];
  DR_CHECK(kept == a.out.numel(), Shape, op, ": out has ", a.out.numel(), " elements, the kept dims of ",
           a.x.shape_string(), " have ", kept);
}
void run(const Reduce& a) {
  View vx = permuted(a.x, a.axes), vo = a.out.view();
  const int nreduce = static_cast<int>(a.axes.size());
  DR_RUN(a.out, cpu::reduce(a.op, vo, vx, nreduce), reduce, static_cast<int32_t>(a.op), &vo, &vx, nreduce);
}

void check(const ArgReduce& a) {
  const char* op = enum_name(a.op);
  check_axes(op, a.x, {a.axis});
  require_dtype(op, "out", a.out, DType::I32);
  require_contiguous(op, "out", a.out);
  DR_CHECK(a.x.shape[a.axis] > 0, Shape, op, ": axis ", a.axis, " of ", a.x.shape_string(), " has size 0");
  DR_CHECK(a.out.numel() * a.x.shape[a.axis] == a.x.numel(), Shape, op, ": out has ", a.out.numel(),
           " elements, expected ", a.x.numel() / a.x.shape[a.axis]);
}
void run(const ArgReduce& a) {
  View vx = permuted(a.x, {a.axis}), vo = a.out.view();
  DR_RUN(a.out, cpu::arg_reduce(a.op, vo, vx), arg_reduce, static_cast<int32_t>(a.op), &vo, &vx);
}

}  // namespace ops
}  // namespace dualroute
