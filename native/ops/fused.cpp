// The fused family: ops that do in one pass over memory what a model step would otherwise do in
// two or three (vLLM's fused_add_rms_norm; a linear layer's bias with its activation).
//   addRmsNorm:          h = x + residual, out = rmsNorm(h) * weight
//   addRmsNormBackward:  dx = dh + rmsNormBackward(h, dy)  (x's and residual's gradient alike)
//   biasAct:             out = act(x + bias), act in gelu, geluTanh, silu, relu
//   biasActBackward:     dx = dy act'(x + bias), dbias = sum over rows of dx
// Inputs of any layout are made contiguous here; outputs must be contiguous already.
#include "common.h"

namespace dualroute {
namespace ops {
namespace {


void check_rows(const char* op, const char* arg, const T& x) {
  DR_CHECK(x.ndim >= 1, Shape, op, ": Expected ", arg, " with at least one dimension but received shape ",
           x.shape_string());
}

void check_act(const char* op, UnaryOp act) {
  DR_CHECK(act == UnaryOp::Gelu || act == UnaryOp::GeluTanh || act == UnaryOp::Silu || act == UnaryOp::Relu, Value,
           op, ": Expected act to be one of gelu, geluTanh, silu, relu but received ", enum_name(act));
}


}  // namespace

void check(const AddRmsNorm& a) {
  const char* op = "addRmsNorm";
  check_rows(op, "x", a.x);
  check_like(op, "residual", a.residual, a.x, "x");
  check_out(op, "h", a.h, a.x, "x");
  check_out(op, "out", a.out, a.x, "x");
  check_vec(op, "weight", a.weight.get(), cols_of(a.x), a.x.dtype, false);
  check_vec(op, "rstd", a.rstd.get(), rows_of(a.x), stats_dtype(a.x.dtype), true);
}
void run(const AddRmsNorm& a) {
  if (a.x.numel() == 0) return;
  std::shared_ptr<const T> xc, rc, wc;
  View vh = a.h.view(), vo = a.out.view(), vx = cview(xc, &a.x), vr = cview(rc, &a.residual),
       vw = cview(wc, a.weight.get()), vs = opt_view(a.rstd);
  DR_RUN(a.out, cpu::add_rms_norm(vh, vo, vx, vr, vw, a.eps, vs), add_rms_norm, &vh, &vo, &vx, &vr, &vw, a.eps, &vs);
}

void check(const AddRmsNormBackward& a) {
  const char* op = "addRmsNormBackward";
  check_rows(op, "h", a.h);
  check_like(op, "dy", a.dy, a.h, "h");
  if (a.dh) check_like(op, "dh", *a.dh, a.h, "h");
  check_out(op, "dx", a.dx, a.h, "h");
  const int64_t cols = cols_of(a.h), rows = rows_of(a.h);
  check_vec(op, "weight", a.weight.get(), cols, a.h.dtype, false);
  check_vec(op, "rstd", &a.rstd, rows, stats_dtype(a.h.dtype), false);
  check_vec(op, "dweight", a.dweight.get(), cols, a.h.dtype, true);
}
void run(const AddRmsNormBackward& a) {
  std::shared_ptr<const T> hc, wc, rc, dyc, dhc;
  View vdx = a.dx.view(), vdw = opt_view(a.dweight), vh = cview(hc, &a.h), vw = cview(wc, a.weight.get()),
       vr = cview(rc, &a.rstd), vdy = cview(dyc, &a.dy), vdh = cview(dhc, a.dh.get());
  DR_RUN(a.dx, cpu::add_rms_norm_backward(vdx, vdw, vh, vw, vr, vdy, vdh), add_rms_norm_backward, &vdx, &vdw, &vh, &vw,
         &vr, &vdy, &vdh);
}

void check(const BiasAct& a) {
  const char* op = "biasAct";
  check_act(op, a.act);
  check_rows(op, "x", a.x);
  check_vec(op, "bias", &a.bias, cols_of(a.x), a.x.dtype, false);
  check_out(op, "out", a.out, a.x, "x");
}
void run(const BiasAct& a) {
  if (a.x.numel() == 0) return;
  std::shared_ptr<const T> xc, bc;
  View vo = a.out.view(), vx = cview(xc, &a.x), vb = cview(bc, &a.bias);
  DR_RUN(a.out, cpu::bias_act(a.act, vo, vx, vb), bias_act, static_cast<int32_t>(a.act), &vo, &vx, &vb);
}

void check(const BiasActBackward& a) {
  const char* op = "biasActBackward";
  check_act(op, a.act);
  check_rows(op, "x", a.x);
  const int64_t cols = cols_of(a.x);
  check_vec(op, "bias", &a.bias, cols, a.x.dtype, false);
  check_like(op, "dy", a.dy, a.x, "x");
  check_out(op, "dx", a.dx, a.x, "x");
  check_vec(op, "dbias", a.dbias.get(), cols, a.x.dtype, true);
}
void run(const BiasActBackward& a) {
  std::shared_ptr<const T> xc, bc, dyc;
  View vdx = a.dx.view(), vdb = opt_view(a.dbias), vx = cview(xc, &a.x), vb = cview(bc, &a.bias),
       vdy = cview(dyc, &a.dy);
  DR_RUN(a.dx, cpu::bias_act_backward(a.act, vdx, vdb, vx, vb, vdy), bias_act_backward, static_cast<int32_t>(a.act),
         &vdx, &vdb, &vx, &vb, &vdy);
}

}  // namespace ops
}  // namespace dualroute
