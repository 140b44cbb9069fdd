// The backward family: the fused gradient kernels of softmax, the norms, cross-entropy, the
// unary activations and SwiGLU. Gradient inputs (dy, dloss) often arrive as broadcast or
// strided views from the autograd engine: they, like x and the saved statistics, are made
// contiguous in run(). Outputs must already be contiguous.
#include <cmath>

#include "common.h"

namespace dualroute {
namespace ops {
namespace {


}  // namespace

void check(const SoftmaxBackward& a) {
  const char* op = a.log ? "logSoftmaxBackward" : "softmaxBackward";
  DR_CHECK(a.axis >= 0 && a.axis < std::max(a.y.ndim, 1), Range, op, ": axis ", a.axis, " is outside [0, ",
           std::max(a.y.ndim, 1), ")");
  check_like(op, "dy", a.dy, a.y, "y");
  check_out(op, "dx", a.dx, a.y, "y");
}
void run(const SoftmaxBackward& a) {
  int64_t outer = 1, dim = a.y.ndim ? a.y.shape[a.axis] : 1, inner = 1;
  for (int d = 0; d < a.y.ndim; ++d) {
    if (d < a.axis) outer *= a.y.shape[d];
    if (d > a.axis) inner *= a.y.shape[d];
  }
  if (outer * dim * inner == 0) return;
  auto yc = contiguous(a.y);
  auto dyc = contiguous(a.dy);
  View vdx = a.dx.view(), vy = yc->view(), vdy = dyc->view();
  DR_RUN(a.dx, cpu::softmax_backward(vdx, vy, vdy, outer, dim, inner, a.log), softmax_backward, &vdx, &vy, &vdy, outer,
         dim, inner, a.log ? 1 : 0);
}

static void check_norm(const char* op, const T& dx, const T* dw, const T* db, const T& x, const T* w, const T* mean,
                       const T& rstd, const T& dy) {
  DR_CHECK(x.ndim >= 1, Shape, op, ": x must have at least one dimension");
  const int64_t cols = cols_of(x), rows = rows_of(x);
  check_like(op, "dy", dy, x, "x");
  check_out(op, "dx", dx, x, "x");
  check_vec(op, "weight", w, cols, x.dtype, false);
  check_vec(op, "mean", mean, rows, stats_dtype(x.dtype), false);
  check_vec(op, "rstd", &rstd, rows, stats_dtype(x.dtype), false);
  check_vec(op, "dweight", dw, cols, x.dtype, true);
  check_vec(op, "dbias", db, cols, x.dtype, true);
}

void check(const RmsNormBackward& a) {
  check_norm("rmsNormBackward", a.dx, a.dweight.get(), nullptr, a.x, a.weight.get(), nullptr, a.rstd, a.dy);
}
void run(const RmsNormBackward& a) {
  std::shared_ptr<const T> xc, wc, rc, dyc;
  View vdx = a.dx.view(), vdw = opt_view(a.dweight), vx = cview(xc, &a.x), vw = cview(wc, a.weight.get()),
       vr = cview(rc, &a.rstd), vdy = cview(dyc, &a.dy);
  DR_RUN(a.dx, cpu::rms_norm_backward(vdx, vdw, vx, vw, vr, vdy), rms_norm_backward, &vdx, &vdw, &vx, &vw, &vr, &vdy);
}

void check(const LayerNormBackward& a) {
  check_norm("layerNormBackward", a.dx, a.dweight.get(), a.dbias.get(), a.x, a.weight.get(), &a.mean, a.rstd, a.dy);
}
void run(const LayerNormBackward& a) {
  std::shared_ptr<const T> xc, wc, mc, rc, dyc;
  View vdx = a.dx.view(), vdw = opt_view(a.dweight), vdb = opt_view(a.dbias), vx = cview(xc, &a.x),
       vw = cview(wc, a.weight.get()), vm = cview(mc, &a.mean), vr = cview(rc, &a.rstd), vdy = cview(dyc, &a.dy);
  DR_RUN(a.dx, cpu::layer_norm_backward(vdx, vdw, vdb, vx, vw, vm, vr, vdy), layer_norm_backward, &vdx, &vdw, &vdb, &vx,
         &vw, &vm, &vr, &vdy);
}

void check(const CrossEntropyBackward& a) {
  const char* op = "crossEntropyBackward";
  DR_CHECK(a.logits.ndim == 2, Shape, op, ": Expected logits of shape [rows, classes] but received ",
           a.logits.shape_string());
  DR_CHECK(std::isfinite(a.smoothing) && a.smoothing >= 0 && a.smoothing < 1, Value, op,
           ": Expected smoothing in [0, 1) but received ", a.smoothing);
  const int64_t rows = a.logits.shape[0];
  check_vec(op, "targets", &a.targets, rows, DType::I32, false);
  check_vec(op, "lse", &a.lse, rows, stats_dtype(a.logits.dtype), false);
  check_vec(op, "dloss", &a.dloss, rows, stats_dtype(a.logits.dtype), false);
  check_out(op, "dlogits", a.dlogits, a.logits, "logits");
}
void run(const CrossEntropyBackward& a) {
  if (a.dlogits.numel() == 0) return;
  std::shared_ptr<const T> xc, tc, lc, gc;
  View vdx = a.dlogits.view(), vx = cview(xc, &a.logits), vt = cview(tc, &a.targets), vl = cview(lc, &a.lse),
       vg = cview(gc, &a.dloss);
  DR_RUN(a.dlogits, cpu::cross_entropy_backward(vdx, vx, vt, vl, vg, a.ignoreIndex, a.smoothing),
         cross_entropy_backward, &vdx, &vx, &vt, &vl, &vg, a.ignoreIndex, a.smoothing);
}

void check(const UnaryBackward& a) {
  const char* op = "unaryBackward";
  DR_CHECK(a.op != UnaryOp::LogicalNot, Value, op, ": logicalNot has no gradient");
  check_like(op, "dy", a.dy, a.x, "x");
  check_out(op, "dx", a.dx, a.x, "x");
}
void run(const UnaryBackward& a) {
  if (a.x.numel() == 0) return;
  std::shared_ptr<const T> xc, dyc;
  View vdx = a.dx.view(), vx = cview(xc, &a.x), vdy = cview(dyc, &a.dy);
  DR_RUN(a.dx, cpu::unary_backward(a.op, vdx, vx, vdy), unary_backward, static_cast<int32_t>(a.op), &vdx, &vx, &vdy);
}

void check(const SwigluBackward& a) {
  const char* op = "swigluBackward";
  const T &x = a.x, &dy = a.dy;
  DR_CHECK(x.ndim >= 1 && x.shape[x.ndim - 1] % 2 == 0, Shape, op, ": Expected x with an even last axis but received ",
           x.shape_string());
  bool ok = dy.ndim == x.ndim && dy.shape[dy.ndim - 1] * 2 == x.shape[x.ndim - 1];
  for (int d = 0; ok && d + 1 < x.ndim; ++d) ok = dy.shape[d] == x.shape[d];
  DR_CHECK(ok, Shape, op, ": Expected dy of x's shape with the last axis halved, received ", dy.shape_string(),
           " for x ", x.shape_string());
  require_dtype(op, "dy", dy, x.dtype);
  check_out(op, "dx", a.dx, x, "x");
}
void run(const SwigluBackward& a) {
  if (a.x.numel() == 0) return;
  std::shared_ptr<const T> xc, dyc;
  View vdx = a.dx.view(), vx = cview(xc, &a.x), vdy = cview(dyc, &a.dy);
  DR_RUN(a.dx, cpu::swiglu_backward(vdx, vx, vdy), swiglu_backward, &vdx, &vx, &vdy);
}

}  // namespace ops
}  // namespace dualroute
