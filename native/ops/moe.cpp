// The moe family: the dispatch plan (moePlan), token movement between the token layout and the
// grouped layout (moeGather, moeCombine, moeCombineWeightGrad) and the grouped GEMM
// (groupedMatmul, groupedMatmulWeightGrad). Kernels: native/cpu/moe.cpp, native/cuda/moe.cu,
// where the layouts are described. Every check here reads metadata only; the data (experts,
// positions, offsets) is checked by moe_plan when it runs.
#include <climits>

#include "common.h"

namespace dualroute {
namespace ops {
namespace {

void check_shape(const char* op, const char* arg, const T& t, std::initializer_list<int64_t> shape, DType dtype,
                 bool written) {
  DR_CHECK(has_shape(t, shape), Shape, op, ": ", arg, " has shape ", t.shape_string(), ", which does not fit");
  require_dtype(op, arg, t, dtype);
  if (written) require_contiguous(op, arg, t);
}

// rows [T, K] int32 (the plan)
void check_rows(const char* op, const T& rows) {
  DR_CHECK(rows.ndim == 2, Shape, op, ": rows must be [tokens, k], received ", rows.shape_string());
  require_dtype(op, "rows", rows, DType::I32);
}

}  // namespace

void check(const MoePlan& a) {
  const char* op = "moePlan";
  DR_CHECK(a.indices.ndim == 2, Shape, op, ": indices must be [tokens, k], received ", a.indices.shape_string());
  const int64_t T_ = a.indices.shape[0], K = a.indices.shape[1];
  DR_CHECK(a.experts >= 1, Range, op, ": Expected experts >= 1 but received ", a.experts);
  check_shape(op, "indices", a.indices, {T_, K}, DType::I32, false);
  check_shape(op, "positions", a.positions, {T_, K}, DType::I32, false);
  check_shape(op, "rows", a.rows, {T_, K}, DType::I32, true);
  DR_CHECK(a.sources.ndim == 1, Shape, op, ": sources must be [rows], received ", a.sources.shape_string());
  require_dtype(op, "sources", a.sources, DType::I32);
  require_contiguous(op, "sources", a.sources);
  const int64_t N = a.sources.shape[0];
  DR_CHECK(N <= INT32_MAX && T_ * K <= INT32_MAX, Shape, op, ": ", N, " rows / ", T_ * K,
           " entries do not fit int32 row numbers");
  if (a.offsets) {
    check_shape(op, "offsets", *a.offsets, {static_cast<int64_t>(a.experts) + 1}, DType::I32, false);
  } else {
    DR_CHECK(a.capacity >= 0, Range, op, ": Expected capacity >= 0 but received ", a.capacity);
    DR_CHECK(N == static_cast<int64_t>(a.experts) * a.capacity, Shape, op, ": the capacity layout has experts x capacity = ",
             static_cast<int64_t>(a.experts) * a.capacity, " rows, sources has ", N);
  }
}
void run(const MoePlan& a) {
  auto ic = contiguous(a.indices), pc = contiguous(a.positions);
  std::shared_ptr<const T> oc = a.offsets ? contiguous(*a.offsets) : nullptr;
  View vr = a.rows.view(), vs = a.sources.view(), vi = ic->view(), vp = pc->view(), vo = oc ? oc->view() : null_view();
  DR_RUN(a.rows, cpu::moe_plan(vr, vs, vi, vp, vo, a.experts, a.capacity), moe_plan, &vr, &vs, &vi, &vp, &vo, a.experts,
         a.capacity);
}

void check(const MoeGather& a) {
  const char* op = "moeGather";
  require_float(op, "x", a.x);
  DR_CHECK(a.x.ndim == 2 && a.out.ndim == 2 && a.x.shape[1] == a.out.shape[1], Shape, op,
           ": x [T, D] and out [N, D] do not fit: ", a.x.shape_string(), ", ", a.out.shape_string());
  DR_CHECK(a.k >= 1, Range, op, ": Expected k >= 1 but received ", a.k);
  const int64_t T_ = a.x.shape[0], N = a.out.shape[0], D = a.x.shape[1];
  check_shape(op, "out", a.out, {N, D}, a.x.dtype, true);
  check_shape(op, "sources", a.sources, {N}, DType::I32, false);
  if (a.weights) check_shape(op, "weights", *a.weights, {T_ * a.k}, stats_dtype(a.x.dtype), false);
}
void run(const MoeGather& a) {
  auto xc = contiguous(a.x), sc = contiguous(a.sources);
  std::shared_ptr<const T> wc = a.weights ? contiguous(*a.weights) : nullptr;
  View vo = a.out.view(), vx = xc->view(), vs = sc->view(), vw = wc ? wc->view() : null_view();
  DR_RUN(a.out, cpu::moe_gather(vo, vx, vs, vw, a.k), moe_gather, &vo, &vx, &vs, &vw, a.k);
}

void check(const MoeCombine& a) {
  const char* op = "moeCombine";
  require_float(op, "y", a.y);
  check_rows(op, a.rows);
  DR_CHECK(a.y.ndim == 2, Shape, op, ": y must be [rows, D], received ", a.y.shape_string());
  const int64_t T_ = a.rows.shape[0], K = a.rows.shape[1], D = a.y.shape[1];
  check_shape(op, "out", a.out, {T_, D}, a.y.dtype, true);
  if (a.weights) check_shape(op, "weights", *a.weights, {T_, K}, stats_dtype(a.y.dtype), false);
}
void run(const MoeCombine& a) {
  auto yc = contiguous(a.y), rc = contiguous(a.rows);
  std::shared_ptr<const T> wc = a.weights ? contiguous(*a.weights) : nullptr;
  View vo = a.out.view(), vy = yc->view(), vr = rc->view(), vw = wc ? wc->view() : null_view();
  DR_RUN(a.out, cpu::moe_combine(vo, vy, vr, vw), moe_combine, &vo, &vy, &vr, &vw);
}

void check(const MoeCombineWeightGrad& a) {
  const char* op = "moeCombineWeightGrad";
  require_float(op, "y", a.y);
  check_rows(op, a.rows);
  DR_CHECK(a.y.ndim == 2, Shape, op, ": y must be [rows, D], received ", a.y.shape_string());
  const int64_t T_ = a.rows.shape[0], K = a.rows.shape[1], D = a.y.shape[1];
  check_shape(op, "dout", a.dout, {T_, D}, a.y.dtype, false);
  check_shape(op, "dweights", a.dweights, {T_, K}, stats_dtype(a.y.dtype), true);
}
void run(const MoeCombineWeightGrad& a) {
  auto yc = contiguous(a.y), rc = contiguous(a.rows), dc = contiguous(a.dout);
  View vw = a.dweights.view(), vy = yc->view(), vr = rc->view(), vd = dc->view();
  DR_RUN(a.dweights, cpu::moe_combine_weight_grad(vw, vy, vr, vd), moe_combine_weight_grad, &vw, &vy, &vr, &vd);
}

void check(const GroupedMatmul& a) {
  const char* op = "groupedMatmul";
  require_float(op, "a", a.a);
  DR_CHECK(a.a.ndim == 2 && a.b.ndim == 3, Shape, op, ": Expected a [rows, k] and b [experts, k, n] but received ",
           a.a.shape_string(), " and ", a.b.shape_string());
  const int64_t N = a.a.shape[0], K = a.a.shape[1], E = a.b.shape[0];
  const int64_t bk = a.transB ? a.b.shape[2] : a.b.shape[1], n = a.transB ? a.b.shape[1] : a.b.shape[2];
  DR_CHECK(bk == K, Shape, op, ": a ", a.a.shape_string(), " and b ", a.b.shape_string(), a.transB ? " (transB)" : "",
           " disagree on k");
  DR_CHECK(N <= INT32_MAX, Shape, op, ": ", N, " rows do not fit int32 offsets");
  require_dtype(op, "b", a.b, a.a.dtype);
  check_shape(op, "out", a.out, {N, n}, a.a.dtype, true);
  check_shape(op, "offsets", a.offsets, {E + 1}, DType::I32, false);
}
void run(const GroupedMatmul& a) {
  auto ac = contiguous(a.a), bc = contiguous(a.b), oc = contiguous(a.offsets);
  View vo = a.out.view(), va = ac->view(), vb = bc->view(), vf = oc->view();
  DR_RUN(a.out, cpu::grouped_matmul(vo, va, vb, vf, a.transB), grouped_matmul, &vo, &va, &vb, &vf, a.transB ? 1 : 0);
}

void check(const GroupedMatmulWeightGrad& a) {
  const char* op = "groupedMatmulWeightGrad";
  require_float(op, "a", a.a);
  DR_CHECK(a.a.ndim == 2 && a.g.ndim == 2 && a.a.shape[0] == a.g.shape[0] && a.out.ndim == 3, Shape, op,
           ": Expected a [rows, k], g [rows, n] and out [experts, k, n] but received ", a.a.shape_string(), ", ",
           a.g.shape_string(), " and ", a.out.shape_string());
  const int64_t N = a.a.shape[0], K = a.a.shape[1], n = a.g.shape[1], E = a.out.shape[0];
  DR_CHECK(N <= INT32_MAX, Shape, op, ": ", N, " rows do not fit int32 offsets");
  require_dtype(op, "g", a.g, a.a.dtype);
  check_shape(op, "out", a.out, {E, K, n}, a.a.dtype, true);
  check_shape(op, "offsets", a.offsets, {E + 1}, DType::I32, false);
}
void run(const GroupedMatmulWeightGrad& a) {
  auto ac = contiguous(a.a), gc = contiguous(a.g), oc = contiguous(a.offsets);
  View vo = a.out.view(), va = ac->view(), vg = gc->view(), vf = oc->view();
  DR_RUN(a.out, cpu::grouped_matmul_weight_grad(vo, va, vg, vf), grouped_matmul_weight_grad, &vo, &va, &vg, &vf);
}

}  // namespace ops
}  // namespace dualroute
