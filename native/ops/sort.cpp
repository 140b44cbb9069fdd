// The sort family: running sums (cumsum), top-k selection and stable sorting along an axis.
// The kernels take contiguous inputs: cumsum x as [outer, dim, inner], topk and sort x as
// [rows, n] over the last axis (lib/ops/sort.ts moves another axis last first).
#include "common.h"

namespace dualroute {
namespace ops {
namespace {

// A row-wise output: contiguous, `cols` elements per row of x, the given dtype.
void check_rows_out(const char* op, const char* arg, const T& t, const T& x, int64_t cols, DType dtype) {
  require_contiguous(op, arg, t);
  require_dtype(op, arg, t, dtype);
  DR_CHECK(t.numel() == rows_of(x) * cols, Shape, op, ": Expected ", arg, " with ", rows_of(x) * cols,
           " elements (", rows_of(x), " rows of ", cols, ") but received shape ", t.shape_string());
}

}  // namespace

void check(const Cumsum& a) {
  DR_CHECK(a.axis >= 0 && a.axis < std::max(a.x.ndim, 1), Range, "cumsum: axis ", a.axis, " is outside [0, ",
           std::max(a.x.ndim, 1), ")");
  require_same_shape("cumsum", "out", a.out, a.x, "x");
  require_dtype("cumsum", "out", a.out, a.x.dtype);
  require_contiguous("cumsum", "out", a.out);
  DR_CHECK(a.x.dtype != DType::Bool, DType, "cumsum: bool tensors need a cast to int32 first");
}
void run(const Cumsum& a) {
  auto xc = contiguous(a.x);
  int64_t outer = 1, dim = a.x.ndim ? a.x.shape[a.axis] : 1, inner = 1;
  for (int d = 0; d < a.x.ndim; ++d) {
    if (d < a.axis) outer *= a.x.shape[d];
    if (d > a.axis) inner *= a.x.shape[d];
  }
  View o = a.out.view(), i = xc->view();
  DR_RUN(a.out, cpu::cumsum(o, i, outer, dim, inner, a.reverse, a.exclusive), cumsum, &o, &i, outer, dim, inner,
         a.reverse ? 1 : 0, a.exclusive ? 1 : 0);
}

void check(const Topk& a) {
  DR_CHECK(a.x.dtype != DType::Bool, DType, "topk: bool tensors need a cast to int32 first");
  const int64_t n = cols_of(a.x);
  DR_CHECK(a.k >= 0 && a.k <= n, Range, "topk: Expected k in [0, ", n, "] but received ", a.k);
  check_rows_out("topk", "values", a.values, a.x, a.k, a.x.dtype);
  check_rows_out("topk", "indices", a.indices, a.x, a.k, DType::I32);
  DR_CHECK(n <= INT32_MAX, Shape, "topk: rows of ", n, " elements are too long for int32 indices");
}
void run(const Topk& a) {
  auto xc = contiguous(a.x);
  View v = a.values.view(), ix = a.indices.view(), i = xc->view();
  DR_RUN(a.values, cpu::topk(v, ix, i, a.k, a.largest), topk, &v, &ix, &i, a.k, a.largest ? 1 : 0);
}

void check(const Sort& a) {
  DR_CHECK(a.x.dtype != DType::Bool, DType, "sort: bool tensors need a cast to int32 first");
  const int64_t n = cols_of(a.x);
  check_rows_out("sort", "values", a.values, a.x, n, a.x.dtype);
  check_rows_out("sort", "indices", a.indices, a.x, n, DType::I32);
  DR_CHECK(n <= INT32_MAX, Shape, "sort: rows of ", n, " elements are too long for int32 indices");
}
void run(const Sort& a) {
  auto xc = contiguous(a.x);
  View v = a.values.view(), ix = a.indices.view(), i = xc->view();
  DR_RUN(a.values, cpu::sort(v, ix, i, a.descending), sort, &v, &ix, &i, a.descending ? 1 : 0);
}

}  // namespace ops
}  // namespace dualroute
