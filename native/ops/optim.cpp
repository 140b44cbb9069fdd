// The optim family: fused AdamW and SGD steps, updating parameters and their state in place.
#include <cmath>

#include "common.h"

namespace dualroute {
namespace ops {
namespace {

// The in-place state of an optimizer: contiguous, param's numel and dtype.
void check_state(const char* op, const char* arg, const T* s, const T& param) {
  if (!s) return;
  DR_CHECK(s->numel() == param.numel(), Shape, op, ": Expected ", arg, " with ", param.numel(),
           " elements like param but received shape ", s->shape_string());
  require_dtype(op, arg, *s, param.dtype);
  require_contiguous(op, arg, *s);
}

void check_grad(const char* op, const T& grad, const T& param) {
  require_contiguous(op, "param", param);
  DR_CHECK(grad.numel() == param.numel(), Shape, op, ": Expected grad with ", param.numel(),
           " elements like param but received shape ", grad.shape_string());
  DR_CHECK(grad.dtype == param.dtype || grad.dtype == DType::BF16, DType, op, ": Expected ", dtype_name(param.dtype),
           " or bfloat16 for grad but received ", dtype_name(grad.dtype));
}

void check_finite(const char* op, const char* arg, double v) {
  DR_CHECK(std::isfinite(v), Value, op, ": Expected a finite number for ", arg, " but received ", v);
}

}  // namespace

void check(const AdamwStep& a) {
  const char* op = "adamwStep";
  check_grad(op, a.grad, a.param);
  check_state(op, "expAvg", &a.expAvg, a.param);
  check_state(op, "expAvgSq", &a.expAvgSq, a.param);
  check_finite(op, "lr", a.lr);
  check_finite(op, "eps", a.eps);
  check_finite(op, "weightDecay", a.weightDecay);
  check_finite(op, "gradScale", a.gradScale);
  DR_CHECK(a.beta1 >= 0 && a.beta1 < 1 && a.beta2 >= 0 && a.beta2 < 1, Value, op,
           ": Expected betas in [0, 1) but received ", a.beta1, ", ", a.beta2);
  DR_CHECK(a.step >= 1, Value, op, ": Expected an integer step >= 1 but received ", a.step);
}
void run(const AdamwStep& a) {
  if (a.param.numel() == 0) return;
  auto gc = contiguous(a.grad);
  View vp = a.param.view(), vg = gc->view(), vm = a.expAvg.view(), vv = a.expAvgSq.view();
  DR_RUN(a.param, cpu::adamw_step(vp, vg, vm, vv, a.lr, a.beta1, a.beta2, a.eps, a.weightDecay, a.step, a.gradScale),
         adamw_step, &vp, &vg, &vm, &vv, a.lr, a.beta1, a.beta2, a.eps, a.weightDecay, a.step, a.gradScale);
}

void check(const SgdStep& a) {
  const char* op = "sgdStep";
  check_grad(op, a.grad, a.param);
  check_state(op, "momentumBuf", a.momentumBuf.get(), a.param);
  check_finite(op, "lr", a.lr);
  check_finite(op, "momentum", a.momentum);
  check_finite(op, "dampening", a.dampening);
  check_finite(op, "weightDecay", a.weightDecay);
  check_finite(op, "gradScale", a.gradScale);
  DR_CHECK(a.momentum == 0 || a.momentumBuf, Value, op, ": momentum ", a.momentum, " needs a momentumBuf");
}
void run(const SgdStep& a) {
  if (a.param.numel() == 0) return;
  auto gc = contiguous(a.grad);
  View vp = a.param.view(), vg = gc->view(), vb = opt_view(a.momentumBuf);
  DR_RUN(a.param,
         cpu::sgd_step(vp, vg, vb, a.lr, a.momentum, a.dampening, a.weightDecay, a.nesterov, a.firstStep, a.gradScale),
         sgd_step, &vp, &vg, &vb, a.lr, a.momentum, a.dampening, a.weightDecay, a.nesterov ? 1 : 0,
         a.firstStep ? 1 : 0, a.gradScale);
}

}  // namespace ops
}  // namespace dualroute
