// The activation functions of native/cuda/activations.cuh (the unary ops and their backward,
// bias_act, SwiGLU, the LSTM gates and the router's sigmoid call them), included as they are and
// run on the host, both instantiations:
//  - double against float64 references written here (gelu through erfc, so no cancellation)
//    and its gradient against a central difference of the reference;
//  - float against double at the same input;
//  - NaN and infinities: the float and double instantiations agree.
// Over x in [-20, 20] in steps of 1/64 plus zeros, tiny and huge values, infinities and NaN, with
// upstream gradients 1, -0.75 and 3.
#include <cmath>

#include "harness.h"
#include "../../native/cuda/activations.cuh"

using namespace dualroute::cuda;
using harness::fmt;

namespace {

struct Act {
  const char* name;
  float (*ff)(float);
  double (*fd)(double);
  float (*gf)(float, float);
  double (*gd)(double, double);
  double (*ref)(double);  // the float64 reference of the forward
};

double sig(double x) { return 1 / (1 + std::exp(-x)); }
const Act kActs[] = {
    {"relu", act_relu<float>, act_relu<double>, act_relu_grad<float>, act_relu_grad<double>,
     [](double x) { return x > 0 ? x : (std::isnan(x) ? x : 0.0); }},
    {"sigmoid", act_sigmoid<float>, act_sigmoid<double>, act_sigmoid_grad<float>, act_sigmoid_grad<double>, sig},
    {"tanh", act_tanh, act_tanh, act_tanh_grad<float>, act_tanh_grad<double>, [](double x) { return std::tanh(x); }},
    {"silu", act_silu<float>, act_silu<double>, act_silu_grad<float>, act_silu_grad<double>,
     [](double x) { return x * sig(x); }},
    {"gelu", act_gelu<float>, act_gelu<double>, act_gelu_grad<float>, act_gelu_grad<double>,
     [](double x) { return 0.5 * x * std::erfc(-x / std::sqrt(2.0)); }},
    {"geluTanh", act_gelu_tanh<float>, act_gelu_tanh<double>, act_gelu_tanh_grad<float>, act_gelu_tanh_grad<double>,
     [](double x) { return 0.5 * x * (1 + std::tanh(std::sqrt(2 / M_PI) * (x + 0.044715 * x * x * x))); }},
};

std::vector<float> inputs() {
  std::vector<float> v;
  for (int i = -20 * 64; i <= 20 * 64; ++i) v.push_back(static_cast<float>(i) / 64);
  for (float s : {1.f, -1.f})
    for (float m : {0.f, 1e-30f, 1e-7f, 1e-3f, 0.3f, 30.f, 88.f, 100.f, 1e5f, 1e20f, 3e38f, INFINITY})
      v.push_back(s * m);
  v.push_back(NAN);
  return v;
}

std::string run(const Act& a) {
  const double gs[] = {1.0, -0.75, 3.0};
  if (std::string(a.name) == "relu" && (a.gf(0.f, 1.f) != 0.f || a.gd(-0.0, 1.0) != 0.0 || a.gf(NAN, 1.f) != 0.f))
    return "relu' at 0, -0 or NaN is not 0";
  for (const float xf : inputs()) {
    const double x = xf;
    const double yd = a.fd(x);
    const float yf = a.ff(xf);
    // float against double, non-finite values where double has them
    int nf = harness::nonfinite_agree(yf, static_cast<float>(yd));
    if (nf < 0 || (nf == 0 && std::fabs(yf - yd) > 2e-6 * std::max(1.0, std::fabs(x))))
      return fmt("%s(%g): float %.9g, double %.17g", a.name, x, yf, yd);
    // geluTanh' in float is NaN past |x| ~ 1.8e19 (x * x overflows and meets 1 - t^2 = 0), as the
    // kernels have always computed it; the gradients are compared up to 1e5
    for (const double g : gs) {
      if (std::isfinite(x) && std::fabs(x) > 1e5) break;
      const double dd = a.gd(x, g);
      const float df = a.gf(xf, static_cast<float>(g));
      nf = harness::nonfinite_agree(df, static_cast<float>(dd));
      if (nf < 0 || (nf == 0 && std::fabs(df - dd) > 1e-5 * std::fabs(g) * std::max(1.0, x * x)))
        return fmt("%s'(%g) * %g: float %.9g, double %.17g", a.name, x, g, df, dd);
    }
    if (!std::isfinite(x)) {
      if (std::isnan(x) && !std::isnan(yd)) return fmt("%s(NaN) = %g", a.name, yd);
      continue;
    }
    // double against the reference and the derivative against its central difference
    const double r = a.ref(x);
    if (std::isfinite(r) != std::isfinite(yd) || (std::isfinite(r) && std::fabs(yd - r) > 1e-13 * std::max(1.0, std::fabs(x))))
      return fmt("%s(%g) = %.17g, want %.17g", a.name, x, yd, r);
    if (std::fabs(x) > 30) continue;  // past the difference's range
    const double h = 1e-5;
    if (std::fabs(x) <= h && std::string(a.name) == "relu") continue;  // the kink (the kernels take 0 at 0)
    const double fd = (a.ref(x + h) - a.ref(x - h)) / (2 * h);
    const double dd = a.gd(x, 1.0);
    if (std::fabs(dd - fd) > 1e-7 * std::max(1.0, x * x)) return fmt("%s'(%g) = %.17g, difference %.17g", a.name, x, dd, fd);
  }
  return "";
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<harness::Case> cases;
  for (const Act& a : kActs) cases.push_back({fmt("activations/%s", a.name), true, 1, [&a] { return run(a); }});
  return harness::main(argc, argv, cases);
}
