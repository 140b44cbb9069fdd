// The rnn family: one fused LSTM layer over a whole sequence (lstmForward) and its backward
// through time (lstmBackward). The input projection x W_ih^T + b is one big matmul outside
// (lib/ops/rnn.ts); the ops run the recurrence. Kernels: native/cpu/rnn.cpp, native/cuda/rnn.cu.
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

// whh [4H, H] with H >= 1: the hidden size every other shape follows.
void lstm_dims(const char* op, const T& whh, int64_t& H) {
  DR_CHECK(whh.ndim == 2 && whh.shape[1] >= 1 && whh.shape[0] == 4 * whh.shape[1], Shape, op,
           ": whh must be [4H, H] with H >= 1, received ", whh.shape_string());
  H = whh.shape[1];
}

}  // namespace

void check(const LstmForward& a) {
  const char* op = "lstmForward";
  require_float(op, "xw", a.xw);
  int64_t H;
  lstm_dims(op, a.whh, H);
  DR_CHECK(a.xw.ndim == 3 && a.xw.shape[2] == 4 * H, Shape, op, ": xw must be [batch, seq, 4H] with H = ", H,
           ", received ", a.xw.shape_string());
  const int64_t B = a.xw.shape[0], S = a.xw.shape[1];
  const DType d = a.xw.dtype;
  require_dtype(op, "whh", a.whh, d);
  check_shape(op, "h0", a.h0, {B, H}, d, false);
  check_shape(op, "c0", a.c0, {B, H}, d, false);
  check_shape(op, "h", a.h, {B, S, H}, d, true);
  check_shape(op, "hN", a.hN, {B, H}, d, true);
  check_shape(op, "cN", a.cN, {B, H}, d, true);
  check_shape(op, "saved", a.saved, {B, S, 5 * H}, stats_dtype(d), true);
}
void run(const LstmForward& a) {
  auto xc = contiguous(a.xw), wc = contiguous(a.whh), hc = contiguous(a.h0), cc = contiguous(a.c0);
  View vh = a.h.view(), vhn = a.hN.view(), vcn = a.cN.view(), vs = a.saved.view(), vx = xc->view(), vw = wc->view(),
       vh0 = hc->view(), vc0 = cc->view();
  DR_RUN(a.h, cpu::lstm_forward(vh, vhn, vcn, vs, vx, vw, vh0, vc0), lstm_forward, &vh, &vhn, &vcn, &vs, &vx, &vw, &vh0,
         &vc0);
}

void check(const LstmBackward& a) {
  const char* op = "lstmBackward";
  require_float(op, "h", a.h);
  int64_t H;
  lstm_dims(op, a.whh, H);
  DR_CHECK(a.h.ndim == 3 && a.h.shape[2] == H, Shape, op, ": h must be [batch, seq, H] with H = ", H, ", received ",
           a.h.shape_string());
  const int64_t B = a.h.shape[0], S = a.h.shape[1];
  const DType d = a.h.dtype;
  require_dtype(op, "whh", a.whh, d);
  check_shape(op, "saved", a.saved, {B, S, 5 * H}, stats_dtype(d), false);
  check_shape(op, "h0", a.h0, {B, H}, d, false);
  check_shape(op, "c0", a.c0, {B, H}, d, false);
  if (a.dh) check_shape(op, "dh", *a.dh, {B, S, H}, d, false);
  if (a.dhN) check_shape(op, "dhN", *a.dhN, {B, H}, d, false);
  if (a.dcN) check_shape(op, "dcN", *a.dcN, {B, H}, d, false);
  check_shape(op, "dxw", a.dxw, {B, S, 4 * H}, d, true);
  check_shape(op, "dwhh", a.dwhh, {4 * H, H}, d, true);
  check_shape(op, "dh0", a.dh0, {B, H}, d, true);
  check_shape(op, "dc0", a.dc0, {B, H}, d, true);
}
void run(const LstmBackward& a) {
  auto hc = contiguous(a.h), sc = contiguous(a.saved), wc = contiguous(a.whh), h0c = contiguous(a.h0),
       c0c = contiguous(a.c0);
  std::shared_ptr<const T> dhc = a.dh ? contiguous(*a.dh) : nullptr, dhnc = a.dhN ? contiguous(*a.dhN) : nullptr,
                           dcnc = a.dcN ? contiguous(*a.dcN) : nullptr;
  View vdx = a.dxw.view(), vdw = a.dwhh.view(), vdh0 = a.dh0.view(), vdc0 = a.dc0.view(), vdh = opt_view(dhc.get()),
       vdhn = opt_view(dhnc.get()), vdcn = opt_view(dcnc.get()), vh = hc->view(), vs = sc->view(), vw = wc->view(),
       vh0 = h0c->view(), vc0 = c0c->view();
  DR_RUN(a.dxw, cpu::lstm_backward(vdx, vdw, vdh0, vdc0, vdh, vdhn, vdcn, vh, vs, vw, vh0, vc0), lstm_backward, &vdx,
         &vdw, &vdh0, &vdc0, &vdh, &vdhn, &vdcn, &vh, &vs, &vw, &vh0, &vc0);
}

}  // namespace ops
}  // namespace dualroute
