// The row-wise family: softmax / log-softmax, RMSNorm, LayerNorm, cross-entropy.
#include "common.h"

namespace dualroute {
namespace ops {
namespace {

void check_out(const char* op, const T& out, const T& like) {
  require_same_shape(op, "out", out, like, "x");
  require_dtype(op, "out", out, like.dtype);
  require_contiguous(op, "out", out);
}

// A vector argument of n contiguous elements and the given dtype (weights, biases, statistics).
void check_vec(const char* op, const char* arg, const T* v, int64_t n, DType dtype) {
  if (!v) return;
  DR_CHECK(v->numel() == n && v->contiguous(), Shape, op, ": Expected ", arg, " to be contiguous with ", n,
           " elements but received shape ", v->shape_string());
  require_dtype(op, arg, *v, dtype);
}

void softmax_extent(const T& x, int axis, int64_t* outer, int64_t* dim, int64_t* inner) {
  *outer = 1;
  *dim = x.ndim ? x.shape[axis] : 1;
  *inner = 1;
  for (int d = 0; d < x.ndim; ++d) {
    if (d < axis) *outer *= x.shape[d];
    if (d > axis) *inner *= x.shape[d];
  }
}

}  // namespace

void check(const Softmax& a) {
  const char* op = a.log ? "logSoftmax" : "softmax";
  DR_CHECK(a.axis >= 0 && a.axis < std::max(a.x.ndim, 1), Range, op, ": axis ", a.axis, " is outside [0, ",
           std::max(a.x.ndim, 1), ")");
  check_out(op, a.out, a.x);
}
void run(const Softmax& a) {
  auto xc = contiguous(a.x);
  int64_t outer, dim, inner;
  softmax_extent(a.x, a.axis, &outer, &dim, &inner);
  View o = a.out.view(), i = xc->view();
  DR_RUN(a.out, cpu::softmax(o, i, outer, dim, inner, a.log), softmax, &o, &i, outer, dim, inner, a.log ? 1 : 0);
}

void check(const RmsNorm& a) {
  check_out("rmsNorm", a.out, a.x);
  check_vec("rmsNorm", "weight", a.weight.get(), cols_of(a.x), a.x.dtype);
  check_vec("rmsNorm", "rstd", a.rstd.get(), rows_of(a.x), stats_dtype(a.x.dtype));
}
void run(const RmsNorm& a) {
  auto xc = contiguous(a.x);
  View o = a.out.view(), i = xc->view(), vw = opt_view(a.weight), vr = opt_view(a.rstd);
  DR_RUN(a.out, cpu::rms_norm(o, i, vw, a.eps, vr), rms_norm, &o, &i, &vw, a.eps, &vr);
}

void check(const LayerNorm& a) {
  check_out("layerNorm", a.out, a.x);
  const int64_t cols = cols_of(a.x), rows = rows_of(a.x);
  check_vec("layerNorm", "weight", a.weight.get(), cols, a.x.dtype);
  check_vec("layerNorm", "bias", a.bias.get(), cols, a.x.dtype);
  check_vec("layerNorm", "mean", a.mean.get(), rows, stats_dtype(a.x.dtype));
  check_vec("layerNorm", "rstd", a.rstd.get(), rows, stats_dtype(a.x.dtype));
}
void run(const LayerNorm& a) {
  auto xc = contiguous(a.x);
  View o = a.out.view(), i = xc->view(), vw = opt_view(a.weight), vb = opt_view(a.bias), vm = opt_view(a.mean),
       vr = opt_view(a.rstd);
  DR_RUN(a.out, cpu::layer_norm(o, i, vw, vb, a.eps, vm, vr), layer_norm, &o, &i, &vw, &vb, a.eps, &vm, &vr);
}

void check(const CrossEntropy& a) {
  const char* op = "crossEntropy";
  DR_CHECK(a.logits.ndim == 2, Shape, op, ": Expected logits of shape [rows, classes] but received ",
           a.logits.shape_string());
  const int64_t rows = a.logits.shape[0];
  require_dtype(op, "targets", a.targets, DType::I32);
  DR_CHECK(a.targets.numel() == rows, Shape, op, ": Expected ", rows, " targets but received shape ",
           a.targets.shape_string());
  DR_CHECK(a.smoothing >= 0 && a.smoothing < 1, Value, op, ": Expected smoothing in [0, 1) but received ",
           a.smoothing);
  check_vec(op, "loss", &a.loss, rows, stats_dtype(a.logits.dtype));
  check_vec(op, "lse", a.lse.get(), rows, stats_dtype(a.logits.dtype));
}
void run(const CrossEntropy& a) {
  auto xc = contiguous(a.logits);
  auto tc = contiguous(a.targets);
  View vl = a.loss.view(), vx = xc->view(), vt = tc->view(), vs = opt_view(a.lse);
  DR_RUN(a.loss, cpu::cross_entropy(vl, vx, vt, a.ignoreIndex, a.smoothing, vs), cross_entropy, &vl, &vx, &vt,
         a.ignoreIndex, a.smoothing, &vs);
}

}  // namespace ops
}  // namespace dualroute
