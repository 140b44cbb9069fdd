// The index family: embedding, gather, scatter-add. Index values are checked by the kernels
// while they run (they are data): a bad one fails the op, raised at the next read that needs it.
#include "common.h"

namespace dualroute {
namespace ops {
namespace {

void check_index(const char* op, const T& index, const T& x, int axis) {
  require_dtype(op, "index", index, DType::I32);
  DR_CHECK(index.ndim == x.ndim, Shape, op, ": Expected index with ", x.ndim, " dimensions but received ",
           index.shape_string());
  DR_CHECK(axis >= 0 && axis < x.ndim, Range, op, ": axis ", axis, " is outside [0, ", x.ndim, ")");
  for (int d = 0; d < x.ndim; ++d)
    DR_CHECK(d == axis || index.shape[d] <= x.shape[d], Shape, op, ": index shape ", index.shape_string(),
             " exceeds ", x.shape_string(), " in dimension ", d);
}

}  // namespace

void check(const Embedding& a) {
  require_dtype("embedding", "ids", a.ids, DType::I32);
  DR_CHECK(a.table.ndim == 2, Shape, "embedding: Expected a table of shape [vocab, dim] but received ",
           a.table.shape_string());
  require_dtype("embedding", "out", a.out, a.table.dtype);
  require_contiguous("embedding", "out", a.out);
  DR_CHECK(a.out.numel() == a.ids.numel() * a.table.shape[1], Shape, "embedding: out has ", a.out.numel(),
           " elements, expected ", a.ids.numel(), " x ", a.table.shape[1]);
}
void run(const Embedding& a) {
  auto ic = contiguous(a.ids);
  auto tc = contiguous(a.table);
  View o = a.out.view(), vi = ic->view(), vt = tc->view();
  // the kernels see flat [n] ids and [n, D] out
  const int64_t n = a.ids.numel(), D = a.table.shape[1];
  vi.ndim = 1;
  vi.shape[0] = n;
  vi.strides[0] = 1;
  o.ndim = 2;
  o.shape[0] = n;
  o.shape[1] = D;
  o.strides[0] = D;
  o.strides[1] = 1;
  DR_RUN(a.out, cpu::embedding(o, vi, vt), embedding, &o, &vi, &vt);
}

void check(const Gather& a) {
  check_index("gather", a.index, a.x, a.axis);
  require_same_shape("gather", "out", a.out, a.index, "index");
  require_dtype("gather", "out", a.out, a.x.dtype);
  require_contiguous("gather", "out", a.out);
}
void run(const Gather& a) {
  auto xc = contiguous(a.x);
  auto ic = contiguous(a.index);
  View o = a.out.view(), vx = xc->view(), vi = ic->view();
  DR_RUN(a.out, cpu::gather(o, vx, vi, a.axis), gather, &o, &vx, &vi, a.axis);
}

void check(const ScatterAdd& a) {
  check_index("scatterAdd", a.index, a.out, a.axis);
  require_contiguous("scatterAdd", "out", a.out);
  require_dtype("scatterAdd", "src", a.src, a.out.dtype);
  require_same_shape("scatterAdd", "src", a.src, a.index, "index");
}
void run(const ScatterAdd& a) {
  auto ic = contiguous(a.index);
  auto sc = contiguous(a.src);
  View o = a.out.view(), vi = ic->view(), vs = sc->view();
  DR_RUN(a.out, cpu::scatter_add(o, vi, vs, a.axis), scatter_add, &o, &vi, &vs, a.axis);
}

}  // namespace ops
}  // namespace dualroute
