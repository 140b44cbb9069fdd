// Index families: embedding, gather, scatter-add.
#include "common.h"

namespace dualroute {
namespace ops {

void embedding(const T& out, const T& ids, const T& table) {
  same_device("embedding", {&out, &ids, &table});
  DR_CHECK(ids.dtype == DType::I32, DType, "embedding: ids must be int32, got ", dtype_name(ids.dtype));
  DR_CHECK(table.ndim == 2, Shape, "embedding: table must be [vocab, dim], got ", table.shape_string());
  DR_CHECK(out.contiguous() && out.dtype == table.dtype && out.numel() == ids.numel() * table.shape[1], Internal,
           "embedding: bad output");
  auto ic = contiguous(ids);
  auto tc = contiguous(table);
  View o = out.view(), vi = ic->view(), vt = tc->view();
  // the kernels see flat [n] ids and [n, D] out
  vi.ndim = 1;
  vi.shape[0] = ids.numel();
  vi.strides[0] = 1;
  o.ndim = 2;
  o.shape[0] = ids.numel();
  o.shape[1] = table.shape[1];
  o.strides[0] = table.shape[1];
  o.strides[1] = 1;
  DR_RUN(out, cpu::embedding(o, vi, vt), embedding, &o, &vi, &vt);
}

static void check_index(const char* op, const T& index, const T& x, int axis) {
  DR_CHECK(index.dtype == DType::I32, DType, op, ": index must be int32, got ", dtype_name(index.dtype));
  DR_CHECK(index.ndim == x.ndim, Shape, op, ": index must have ", x.ndim, " dimensions, got ", index.ndim);
  DR_CHECK(axis >= 0 && axis < x.ndim, Range, op, ": axis ", axis, " is outside [0, ", x.ndim, ")");
  for (int d = 0; d < x.ndim; ++d)
    DR_CHECK(d == axis || index.shape[d] <= x.shape[d], Shape, op, ": index shape ", index.shape_string(),
             " exceeds ", x.shape_string(), " in dimension ", d);
}

void gather(const T& out, const T& x, const T& index, int axis) {
  same_device("gather", {&out, &x, &index});
  check_index("gather", index, x, axis);
  DR_CHECK(out.contiguous() && out.dtype == x.dtype && out.numel() == index.numel(), Internal, "gather: bad output");
  auto xc = contiguous(x);
  auto ic = contiguous(index);
  View o = out.view(), vx = xc->view(), vi = ic->view();
  DR_RUN(out, cpu::gather(o, vx, vi, axis), gather, &o, &vx, &vi, axis);
}

void scatter_add(const T& out, const T& index, const T& src, int axis) {
  same_device("scatterAdd", {&out, &index, &src});
  check_index("scatterAdd", index, out, axis);
  DR_CHECK(out.contiguous(), Internal, "scatterAdd: the target must be contiguous");
  DR_CHECK(src.dtype == out.dtype, DType, "scatterAdd: src must be ", dtype_name(out.dtype), ", got ",
           dtype_name(src.dtype));
  bool same = src.ndim == index.ndim;
  for (int d = 0; same && d < src.ndim; ++d) same = src.shape[d] == index.shape[d];
  DR_CHECK(same, Shape, "scatterAdd: src shape ", src.shape_string(), " must equal index shape ",
           index.shape_string());
  auto ic = contiguous(index);
  auto sc = contiguous(src);
  View o = out.view(), vi = ic->view(), vs = sc->view();
  DR_RUN(out, cpu::scatter_add(o, vi, vs, axis), scatter_add, &o, &vi, &vs, axis);
}

}  // namespace ops
}  // namespace dualroute
