// Dispatchers for the backward kernels and the fused optimizer steps. Gradient inputs (dy,
// dloss) often arrive as broadcast or strided views from the autograd engine: they, like x and
// the saved statistics, are made contiguous here. Outputs and in-place tensors must already be
// contiguous.
#include <cmath>

#include "common.h"

namespace dualroute {
namespace ops {
namespace {

using CT = std::shared_ptr<const T>;

bool same_shape(const T& a, const T& b) {
  if (a.ndim != b.ndim) return false;
  for (int d = 0; d < a.ndim; ++d)
    if (a.shape[d] != b.shape[d]) return false;
  return true;
}

// rstd / mean / lse / dloss dtype for an input dtype.
DType stats_dtype(DType x) { return x == DType::F64 ? DType::F64 : DType::F32; }

void check_float(const char* op, const char* arg, const T& x) {
  DR_CHECK(dtype_is_float(x.dtype), DType, op, ": ", arg, " must be a float tensor, got ", dtype_name(x.dtype));
}

// An input with `like`'s shape and dtype (dy next to y or x); returns it contiguous.
CT same_as(const char* op, const char* arg, const T& v, const T& like, const char* like_name) {
  DR_CHECK(same_shape(v, like), Shape, op, ": ", arg, " must have the shape of ", like_name, " ", like.shape_string(),
           ", got ", v.shape_string());
  DR_CHECK(v.dtype == like.dtype, DType, op, ": ", arg, " must be ", dtype_name(like.dtype), " like ", like_name,
           ", got ", dtype_name(v.dtype));
  return contiguous(v);
}

// An output (written whole): contiguous with the given shape-giver's shape and dtype.
void check_out(const char* op, const char* arg, const T& out, const T& like) {
  DR_CHECK(same_shape(out, like), Shape, op, ": ", arg, " must have shape ", like.shape_string(), ", got ",
           out.shape_string());
  DR_CHECK(out.dtype == like.dtype, DType, op, ": ", arg, " must be ", dtype_name(like.dtype), ", got ",
           dtype_name(out.dtype));
  DR_CHECK(out.contiguous(), Value, op, ": ", arg, " must be contiguous");
}

// A vector input of n elements and the given dtype (any layout); returns it contiguous.
CT vec_in(const char* op, const char* arg, const T& v, int64_t n, DType dtype) {
  DR_CHECK(v.numel() == n, Shape, op, ": ", arg, " must have ", n, " elements, got shape ", v.shape_string());
  DR_CHECK(v.dtype == dtype, DType, op, ": ", arg, " must be ", dtype_name(dtype), ", got ", dtype_name(v.dtype));
  return contiguous(v);
}

// A vector output / in-place vector of n elements: contiguous, given dtype.
void vec_out(const char* op, const char* arg, const T* v, int64_t n, DType dtype) {
  if (!v) return;
  DR_CHECK(v->numel() == n, Shape, op, ": ", arg, " must have ", n, " elements, got shape ", v->shape_string());
  DR_CHECK(v->dtype == dtype, DType, op, ": ", arg, " must be ", dtype_name(dtype), ", got ", dtype_name(v->dtype));
  DR_CHECK(v->contiguous(), Value, op, ": ", arg, " must be contiguous");
}

int64_t cols_of(const T& x) { return x.ndim ? x.shape[x.ndim - 1] : 1; }
int64_t rows_of(const T& x) {
  const int64_t c = cols_of(x);
  return c ? x.numel() / c : 0;
}

}  // namespace

void softmax_backward(const T& dx, const T& y, const T& dy, int axis, bool log) {
  const char* op = log ? "logSoftmaxBackward" : "softmaxBackward";
  same_device(op, {&dx, &y, &dy});
  check_float(op, "y", y);
  DR_CHECK(axis >= 0 && axis < std::max(y.ndim, 1), Range, op, ": axis ", axis, " out of range for ", y.ndim,
           " dimensions");
  auto dyc = same_as(op, "dy", dy, y, "y");
  check_out(op, "dx", dx, y);
  auto yc = contiguous(y);
  int64_t outer = 1, dim = y.ndim ? y.shape[axis] : 1, inner = 1;
  for (int d = 0; d < y.ndim; ++d) {
    if (d < axis) outer *= y.shape[d];
    if (d > axis) inner *= y.shape[d];
  }
  if (outer * dim * inner == 0) return;
  View vdx = dx.view(), vy = yc->view(), vdy = dyc->view();
  DR_RUN(dx, cpu::softmax_backward(vdx, vy, vdy, outer, dim, inner, log), softmax_backward, &vdx, &vy, &vdy, outer,
         dim, inner, log ? 1 : 0);
}

static void norm_backward(bool layer, const T& dx, const T* dw, const T* db, const T& x, const T* w, const T* mean,
                          const T& rstd, const T& dy) {
  const char* op = layer ? "layerNormBackward" : "rmsNormBackward";
  same_device(op, {&dx, dw, db, &x, w, mean, &rstd, &dy});
  check_float(op, "x", x);
  DR_CHECK(x.ndim >= 1, Shape, op, ": x must have at least one dimension");
  const int64_t cols = cols_of(x), rows = rows_of(x);
  auto dyc = same_as(op, "dy", dy, x, "x");
  check_out(op, "dx", dx, x);
  CT wc, mc;
  if (w) wc = vec_in(op, "weight", *w, cols, x.dtype);
  if (mean) mc = vec_in(op, "mean", *mean, rows, stats_dtype(x.dtype));
  auto rc = vec_in(op, "rstd", rstd, rows, stats_dtype(x.dtype));
  vec_out(op, "dweight", dw, cols, x.dtype);
  vec_out(op, "dbias", db, cols, x.dtype);
  auto xc = contiguous(x);
  View vdx = dx.view(), vdw = opt_view(dw), vdb = opt_view(db), vx = xc->view(), vw = opt_view(wc.get()),
       vm = opt_view(mc.get()), vr = rc->view(), vdy = dyc->view();
  if (layer) {
    DR_RUN(dx, cpu::layer_norm_backward(vdx, vdw, vdb, vx, vw, vm, vr, vdy), layer_norm_backward, &vdx, &vdw, &vdb,
           &vx, &vw, &vm, &vr, &vdy);
  } else {
    DR_RUN(dx, cpu::rms_norm_backward(vdx, vdw, vx, vw, vr, vdy), rms_norm_backward, &vdx, &vdw, &vx, &vw, &vr, &vdy);
  }
}

void rms_norm_backward(const T& dx, const T* dw, const T& x, const T* w, const T& rstd, const T& dy) {
  norm_backward(false, dx, dw, nullptr, x, w, nullptr, rstd, dy);
}

void layer_norm_backward(const T& dx, const T* dw, const T* db, const T& x, const T* w, const T& mean, const T& rstd,
                         const T& dy) {
  norm_backward(true, dx, dw, db, x, w, &mean, rstd, dy);
}

void cross_entropy_backward(const T& dlogits, const T& logits, const T& targets, const T& lse, const T& dloss,
                            int32_t ignore_index, float smoothing) {
  const char* op = "crossEntropyBackward";
  same_device(op, {&dlogits, &logits, &targets, &lse, &dloss});
  check_float(op, "logits", logits);
  DR_CHECK(logits.ndim == 2, Shape, op, ": logits must be [rows, classes], got ", logits.shape_string());
  DR_CHECK(std::isfinite(smoothing) && smoothing >= 0 && smoothing < 1, Value, op,
           ": smoothing must be in [0, 1), got ", smoothing);
  const int64_t rows = logits.shape[0];
  auto tc = vec_in(op, "targets", targets, rows, DType::I32);
  auto lc = vec_in(op, "lse", lse, rows, stats_dtype(logits.dtype));
  auto gc = vec_in(op, "dloss", dloss, rows, stats_dtype(logits.dtype));
  check_out(op, "dlogits", dlogits, logits);
  if (dlogits.numel() == 0) return;
  auto xc = contiguous(logits);
  View vdx = dlogits.view(), vx = xc->view(), vt = tc->view(), vl = lc->view(), vg = gc->view();
  DR_RUN(dlogits, cpu::cross_entropy_backward(vdx, vx, vt, vl, vg, ignore_index, smoothing), cross_entropy_backward,
         &vdx, &vx, &vt, &vl, &vg, ignore_index, smoothing);
}

void unary_backward(UnaryOp op_code, const T& dx, const T& x, const T& dy) {
  const char* op = "unaryBackward";
  same_device(op, {&dx, &x, &dy});
  DR_CHECK(static_cast<int32_t>(op_code) >= 0 && op_code < UnaryOp::Count, Value, op, ": unknown op ",
           static_cast<int32_t>(op_code));
  DR_CHECK(op_code != UnaryOp::LogicalNot, Value, op, ": logicalNot has no gradient");
  check_float(op, "x", x);
  auto dyc = same_as(op, "dy", dy, x, "x");
  check_out(op, "dx", dx, x);
  if (x.numel() == 0) return;
  auto xc = contiguous(x);
  View vdx = dx.view(), vx = xc->view(), vdy = dyc->view();
  DR_RUN(dx, cpu::unary_backward(op_code, vdx, vx, vdy), unary_backward, static_cast<int32_t>(op_code), &vdx, &vx,
         &vdy);
}

void swiglu_backward(const T& dx, const T& x, const T& dy) {
  const char* op = "swigluBackward";
  same_device(op, {&dx, &x, &dy});
  check_float(op, "x", x);
  DR_CHECK(x.ndim >= 1 && x.shape[x.ndim - 1] % 2 == 0, Shape, op, ": x must have an even last axis, got ",
           x.shape_string());
  bool ok = dy.ndim == x.ndim && dy.shape[dy.ndim - 1] * 2 == x.shape[x.ndim - 1];
  for (int d = 0; ok && d + 1 < x.ndim; ++d) ok = dy.shape[d] == x.shape[d];
  DR_CHECK(ok, Shape, op, ": dy must have x's shape with the last axis halved, got ", dy.shape_string(), " for x ",
           x.shape_string());
  DR_CHECK(dy.dtype == x.dtype, DType, op, ": dy must be ", dtype_name(x.dtype), ", got ", dtype_name(dy.dtype));
  check_out(op, "dx", dx, x);
  if (x.numel() == 0) return;
  auto xc = contiguous(x);
  auto dyc = contiguous(dy);
  View vdx = dx.view(), vx = xc->view(), vdy = dyc->view();
  DR_RUN(dx, cpu::swiglu_backward(vdx, vx, vdy), swiglu_backward, &vdx, &vx, &vdy);
}

// The in-place state of an optimizer: contiguous, param's numel and dtype.
static void check_state(const char* op, const char* arg, const T* s, const T& param) {
  if (!s) return;
  DR_CHECK(s->numel() == param.numel(), Shape, op, ": ", arg, " must have ", param.numel(), " elements like param, got ",
           s->shape_string());
  DR_CHECK(s->dtype == param.dtype, DType, op, ": ", arg, " must be ", dtype_name(param.dtype), " like param, got ",
           dtype_name(s->dtype));
  DR_CHECK(s->contiguous(), Value, op, ": ", arg, " must be contiguous (it is updated in place)");
}

static CT check_grad(const char* op, const T& grad, const T& param) {
  DR_CHECK(param.dtype == DType::F32 || param.dtype == DType::F64, DType, op,
           ": param must be float32 (master weights) or float64, got ", dtype_name(param.dtype));
  DR_CHECK(param.contiguous(), Value, op, ": param must be contiguous (it is updated in place)");
  DR_CHECK(grad.numel() == param.numel(), Shape, op, ": grad must have ", param.numel(), " elements like param, got ",
           grad.shape_string());
  DR_CHECK(grad.dtype == param.dtype || grad.dtype == DType::BF16, DType, op, ": grad must be ",
           dtype_name(param.dtype), " or bfloat16, got ", dtype_name(grad.dtype));
  return contiguous(grad);
}

static void check_finite(const char* op, const char* arg, double v) {
  DR_CHECK(std::isfinite(v), Value, op, ": ", arg, " must be finite, got ", v);
}

void adamw_step(const T& param, const T& grad, const T& exp_avg, const T& exp_avg_sq, double lr, double beta1,
                double beta2, double eps, double weight_decay, int64_t step, double grad_scale) {
  const char* op = "adamwStep";
  same_device(op, {&param, &grad, &exp_avg, &exp_avg_sq});
  auto gc = check_grad(op, grad, param);
  check_state(op, "expAvg", &exp_avg, param);
  check_state(op, "expAvgSq", &exp_avg_sq, param);
  check_finite(op, "lr", lr);
  check_finite(op, "eps", eps);
  check_finite(op, "weightDecay", weight_decay);
  check_finite(op, "gradScale", grad_scale);
  DR_CHECK(beta1 >= 0 && beta1 < 1 && beta2 >= 0 && beta2 < 1, Value, op, ": betas must be in [0, 1), got ", beta1,
           ", ", beta2);
  DR_CHECK(step >= 1, Value, op, ": step must be >= 1, got ", step);
  if (param.numel() == 0) return;
  View vp = param.view(), vg = gc->view(), vm = exp_avg.view(), vv = exp_avg_sq.view();
  DR_RUN(param, cpu::adamw_step(vp, vg, vm, vv, lr, beta1, beta2, eps, weight_decay, step, grad_scale), adamw_step,
         &vp, &vg, &vm, &vv, lr, beta1, beta2, eps, weight_decay, step, grad_scale);
}

void sgd_step(const T& param, const T& grad, const T* buf, double lr, double momentum, double dampening,
              double weight_decay, bool nesterov, bool first_step, double grad_scale) {
  const char* op = "sgdStep";
  same_device(op, {&param, &grad, buf});
  auto gc = check_grad(op, grad, param);
  check_state(op, "momentumBuf", buf, param);
  check_finite(op, "lr", lr);
  check_finite(op, "momentum", momentum);
  check_finite(op, "dampening", dampening);
  check_finite(op, "weightDecay", weight_decay);
  check_finite(op, "gradScale", grad_scale);
  DR_CHECK(momentum == 0 || buf, Value, op, ": momentum ", momentum, " needs a momentum buffer");
  if (param.numel() == 0) return;
  View vp = param.view(), vg = gc->view(), vb = opt_view(buf);
  DR_RUN(param, cpu::sgd_step(vp, vg, vb, lr, momentum, dampening, weight_decay, nesterov, first_step, grad_scale),
         sgd_step, &vp, &vg, &vb, lr, momentum, dampening, weight_decay, nesterov ? 1 : 0, first_step ? 1 : 0,
         grad_scale);
}

}  // namespace ops
}  // namespace dualroute
