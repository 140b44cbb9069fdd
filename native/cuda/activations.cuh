// The activation functions of the CUDA kernels, one definition each (included by device.cuh):
// the forward value act_X(x) and the gradient act_X_grad(x, g) = g * X'(x), for the unary ops
// (elementwise.cu, backward.cu), bias_act (fused.cu), SwiGLU, the LSTM gates (rnn.cu) and the
// router's sigmoid scores (routing.cu). act_sigmoid_grad_y / act_tanh_grad_y take the output y
// instead of x (the LSTM backward and the router backward keep y).
//
// Templates over the accumulator type A: float (what every kernel uses today: float64 is
// CPU-only) or double. float calls the f-suffixed libm functions (expf, tanhf, erff) and float
// constants, so the float instantiation is the formulas the kernels wrote out before, operation
// for operation. Forms:
//   relu(x)     = x > 0 ? x : 0, NaN kept;            relu'(x) = x > 0 ? 1 : 0 (0 at NaN)
//   sigmoid(x)  = 1 / (1 + exp(-x));                  sigmoid' = s (1 - s)
//   tanh(x);                                          tanh'    = 1 - t^2
//   silu(x)     = x / (1 + exp(-x));                  silu'    = s (1 + x (1 - s)), s = sigmoid(x)
//   gelu(x)     = x/2 (1 + erf(x / sqrt 2));          gelu'    = cdf + x pdf
//   geluTanh(x) = x/2 (1 + tanh(k (x + c x^3))),      geluTanh' = (1 + t)/2 + x/2 (1 - t^2) k (1 + 3c x^2),
//                 k = sqrt(2/pi), c = 0.044715
//
// Header-only device code with no other dependency (test/cuda_emu includes it as it is).
#pragma once
#include <cmath>

namespace dualroute {
namespace cuda {

// libm by accumulator type.
__device__ __forceinline__ float act_exp(float x) { return expf(x); }
__device__ __forceinline__ double act_exp(double x) { return exp(x); }
__device__ __forceinline__ float act_tanh(float x) { return tanhf(x); }
__device__ __forceinline__ double act_tanh(double x) { return tanh(x); }
__device__ __forceinline__ float act_erf(float x) { return erff(x); }
__device__ __forceinline__ double act_erf(double x) { return erf(x); }

// The constants, written once as double literals; for float they round to the float literals the
// kernels used (checked below).
namespace act_const {
constexpr double kRsqrt2 = 0.70710678118654752440;      // 1 / sqrt(2)
constexpr double kSqrt2OverPi = 0.79788456080286535588;  // sqrt(2 / pi)
constexpr double kRsqrt2Pi = 0.39894228040143267794;     // 1 / sqrt(2 pi)
constexpr double kGeluC = 0.044715;
static_assert(static_cast<float>(kRsqrt2) == 0.70710678118654752440f, "float rounding of 1/sqrt(2)");
static_assert(static_cast<float>(kSqrt2OverPi) == 0.79788456080286535588f, "float rounding of sqrt(2/pi)");
static_assert(static_cast<float>(kRsqrt2Pi) == 0.39894228040143268f, "float rounding of 1/sqrt(2 pi)");
static_assert(static_cast<float>(kGeluC) == 0.044715f, "float rounding of 0.044715");
}  // namespace act_const

// ---- forward -------------------------------------------------------------------------------
template <typename A>
__device__ __forceinline__ A act_relu(A x) {
  return x > A(0) ? x : (x == x ? A(0) : x);
}
template <typename A>
__device__ __forceinline__ A act_sigmoid(A x) {
  return A(1) / (A(1) + act_exp(-x));
}
template <typename A>
__device__ __forceinline__ A act_silu(A x) {
  return x / (A(1) + act_exp(-x));
}
template <typename A>
__device__ __forceinline__ A act_gelu(A x) {
  return A(0.5) * x * (A(1) + act_erf(x * A(act_const::kRsqrt2)));
}
template <typename A>
__device__ __forceinline__ A act_gelu_tanh(A x) {
  return A(0.5) * x * (A(1) + act_tanh(A(act_const::kSqrt2OverPi) * (x + A(act_const::kGeluC) * x * x * x)));
}

// ---- gradients: g * act'(x) ----------------------------------------------------------------
template <typename A>
__device__ __forceinline__ A act_relu_grad(A x, A g) {
  return x > A(0) ? g : A(0);
}
// From the output y = sigmoid(x) / y = tanh(x).
template <typename A>
__device__ __forceinline__ A act_sigmoid_grad_y(A y, A g) {
  return g * y * (A(1) - y);
}
template <typename A>
__device__ __forceinline__ A act_tanh_grad_y(A y, A g) {
  return g * (A(1) - y * y);
}
template <typename A>
__device__ __forceinline__ A act_sigmoid_grad(A x, A g) {
  return act_sigmoid_grad_y(act_sigmoid(x), g);
}
template <typename A>
__device__ __forceinline__ A act_tanh_grad(A x, A g) {
  return act_tanh_grad_y(act_tanh(x), g);
}
template <typename A>
__device__ __forceinline__ A act_silu_grad(A x, A g) {
  const A s = act_sigmoid(x);
  return g * s * (A(1) + x * (A(1) - s));
}
template <typename A>
__device__ __forceinline__ A act_gelu_grad(A x, A g) {
  const A cdf = A(0.5) * (A(1) + act_erf(x * A(act_const::kRsqrt2)));
  const A pdf = A(act_const::kRsqrt2Pi) * act_exp(A(-0.5) * x * x);
  return g * (cdf + x * pdf);
}
template <typename A>
__device__ __forceinline__ A act_gelu_tanh_grad(A x, A g) {
  const A k = A(act_const::kSqrt2OverPi), c = A(act_const::kGeluC);
  const A t = act_tanh(k * (x + c * x * x * x));
  return g * (A(0.5) * (A(1) + t) + A(0.5) * x * (A(1) - t * t) * k * (A(1) + A(3) * c * x * x));
}

}  // namespace cuda
}  // namespace dualroute
