// Row-wise families: softmax / log-softmax, RMSNorm, LayerNorm, cross-entropy.
#include "common.h"

namespace dualroute {
namespace ops {

static void check_out(const char* op, const T& out, const T& like) {
  bool ok = out.contiguous() && out.ndim == like.ndim && out.dtype == like.dtype;
  for (int d = 0; ok && d < out.ndim; ++d) ok = out.shape[d] == like.shape[d];
  DR_CHECK(ok, Internal, op, ": output must be contiguous with the input's shape and dtype");
}

static void check_vec(const char* op, const char* arg, const T* v, const T& x, int64_t n, DType dtype) {
  if (!v) return;
  same_device(op, {v, &x});
  DR_CHECK(v->numel() == n && v->contiguous(), Shape, op, ": ", arg, " must be contiguous with ", n,
           " elements, got shape ", v->shape_string());
  DR_CHECK(v->dtype == dtype, DType, op, ": ", arg, " must be ", dtype_name(dtype), ", got ", dtype_name(v->dtype));
}

void softmax(const T& out, const T& x, int axis, bool log) {
  same_device("softmax", {&out, &x});
  DR_CHECK(axis >= 0 && axis < std::max(x.ndim, 1), Range, "softmax: axis ", axis, " out of range");
  check_out("softmax", out, x);
  auto xc = contiguous(x);
  int64_t outer = 1, dim = x.ndim ? x.shape[axis] : 1, inner = 1;
  for (int d = 0; d < x.ndim; ++d) {
    if (d < axis) outer *= x.shape[d];
    if (d > axis) inner *= x.shape[d];
  }
  View o = out.view(), i = xc->view();
  DR_RUN(out, cpu::softmax(o, i, outer, dim, inner, log), softmax, &o, &i, outer, dim, inner, log ? 1 : 0);
}

// rstd / mean / lse: float32, float64 for float64 inputs (exact gradient checks).
static DType stats_dtype(const T& x) { return x.dtype == DType::F64 ? DType::F64 : DType::F32; }

static int64_t rows_of(const T& x) {
  int64_t cols = x.ndim ? x.shape[x.ndim - 1] : 1;
  return cols ? x.numel() / cols : 0;
}

void rms_norm(const T& out, const T& x, const T* w, float eps, const T* rstd) {
  same_device("rmsNorm", {&out, &x});
  check_out("rmsNorm", out, x);
  const int64_t cols = x.ndim ? x.shape[x.ndim - 1] : 1;
  check_vec("rmsNorm", "weight", w, x, cols, x.dtype);
  check_vec("rmsNorm", "rstd", rstd, x, rows_of(x), stats_dtype(x));
  auto xc = contiguous(x);
  View o = out.view(), i = xc->view(), vw = opt_view(w), vr = opt_view(rstd);
  DR_RUN(out, cpu::rms_norm(o, i, vw, eps, vr), rms_norm, &o, &i, &vw, eps, &vr);
}

void layer_norm(const T& out, const T& x, const T* w, const T* b, float eps, const T* mean, const T* rstd) {
  same_device("layerNorm", {&out, &x});
  check_out("layerNorm", out, x);
  const int64_t cols = x.ndim ? x.shape[x.ndim - 1] : 1;
  check_vec("layerNorm", "weight", w, x, cols, x.dtype);
  check_vec("layerNorm", "bias", b, x, cols, x.dtype);
  check_vec("layerNorm", "mean", mean, x, rows_of(x), stats_dtype(x));
  check_vec("layerNorm", "rstd", rstd, x, rows_of(x), stats_dtype(x));
  auto xc = contiguous(x);
  View o = out.view(), i = xc->view(), vw = opt_view(w), vb = opt_view(b), vm = opt_view(mean), vr = opt_view(rstd);
  DR_RUN(out, cpu::layer_norm(o, i, vw, vb, eps, vm, vr), layer_norm, &o, &i, &vw, &vb, eps, &vm, &vr);
}

void cross_entropy(const T& loss, const T& logits, const T& targets, int32_t ignore_index, float smoothing,
                   const T* lse) {
  same_device("crossEntropy", {&loss, &logits, &targets, lse});
  DR_CHECK(logits.ndim == 2, Shape, "crossEntropy: logits must be [rows, classes], got ", logits.shape_string());
  const int64_t rows = logits.shape[0];
  DR_CHECK(targets.dtype == DType::I32 && targets.numel() == rows, Shape,
           "crossEntropy: targets must be int32 with ", rows, " elements");
  const DType ldt = logits.dtype == DType::F64 ? DType::F64 : DType::F32;
  check_vec("crossEntropy", "loss", &loss, logits, rows, ldt);
  check_vec("crossEntropy", "lse", lse, logits, rows, ldt);
  auto xc = contiguous(logits);
  auto tc = contiguous(targets);
  View vl = loss.view(), vx = xc->view(), vt = tc->view(), vs = opt_view(lse);
  DR_RUN(loss, cpu::cross_entropy(vl, vx, vt, ignore_index, smoothing, vs), cross_entropy, &vl, &vx, &vt,
         ignore_index, smoothing, &vs);
}

}  // namespace ops
}  // namespace dualroute
