// Fused optimizer updates, in place over contiguous tensors of equal numel.
//
// adamw_step (PyTorch AdamW, g = grad * grad_scale):
//   p -= lr * wd * p;  m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2
//   p -= lr * (m / (1 - b1^step)) / (sqrt(v / (1 - b2^step)) + eps)
// sgd_step (PyTorch SGD): g += wd p; buf = g on the first step, else momentum buf +
//   (1 - dampening) g; g = nesterov ? g + momentum buf : buf; p -= lr g.
// The parameter dtype (float32 master weights, or float64) is the compute type; the gradient
// may be bfloat16. The loops are branch-free per element, so the compiler vectorises them.
#include <cmath>

#include "common.h"
#include "simd.h"

namespace dualroute {
namespace cpu {
namespace DR_ISA {
namespace {

template <typename P, typename G>
void adamw_typed(const View& param, const View& grad, const View& exp_avg, const View& exp_avg_sq, double lr,
                 double beta1, double beta2, double eps, double weight_decay, int64_t step, double grad_scale) {
  using A = P;
  P* p = static_cast<P*>(param.data);
  P* m = static_cast<P*>(exp_avg.data);
  P* v = static_cast<P*>(exp_avg_sq.data);
  const G* g = static_cast<const G*>(grad.data);
  const double s = static_cast<double>(step);
  const A b1 = static_cast<A>(beta1), b2 = static_cast<A>(beta2);
  const A om1 = static_cast<A>(1.0 - beta1), om2 = static_cast<A>(1.0 - beta2);
  const A inv_bc1 = static_cast<A>(1.0 / (1.0 - std::pow(beta1, s)));
  const A inv_bc2 = static_cast<A>(1.0 / (1.0 - std::pow(beta2, s)));
  const A lr_a = static_cast<A>(lr), e = static_cast<A>(eps), scale = static_cast<A>(grad_scale);
  const A decay = static_cast<A>(1.0 - lr * weight_decay);
  const int64_t n = view_numel(param);
  parallel_for(n, 16384, [&](int64_t lo, int64_t hi) {
    int64_t i = lo;
    if constexpr (std::is_same_v<P, float>) {
      // in vector lanes: the compiler does not vectorise the scalar loop (p, m, v and g may alias)
      const vf vb1 = vset1(b1), vb2 = vset1(b2), vom1 = vset1(om1), vom2 = vset1(om2), vbc1 = vset1(inv_bc1),
               vbc2 = vset1(inv_bc2), vlr = vset1(lr_a), ve = vset1(e), vsc = vset1(scale), vdec = vset1(decay);
      for (; i + kVecF <= hi; i += kVecF) {
        const vf gi = vload(g + i) * vsc;
        const vf mi = vb1 * vload(m + i) + vom1 * gi;
        const vf vi = vb2 * vload(v + i) + vom2 * gi * gi;
        vstore(m + i, mi);
        vstore(v + i, vi);
        vstore(p + i, vload(p + i) * vdec - vlr * (mi * vbc1) / (vsqrt(vi * vbc2) + ve));
      }
    }
    for (; i < hi; ++i) {
      const A gi = static_cast<A>(Num<G>::load(g[i])) * scale;
      const A mi = b1 * m[i] + om1 * gi;
      const A vi = b2 * v[i] + om2 * gi * gi;
      m[i] = mi;
      v[i] = vi;
      p[i] = p[i] * decay - lr_a * (mi * inv_bc1) / (std::sqrt(vi * inv_bc2) + e);
    }
  });
}

template <typename P, typename G>
void sgd_typed(const View& param, const View& grad, const View& buf, double lr, double momentum, double dampening,
               double weight_decay, bool nesterov, bool first_step, double grad_scale) {
  using A = P;
  P* p = static_cast<P*>(param.data);
  P* b = static_cast<P*>(buf.data);
  const G* g = static_cast<const G*>(grad.data);
  const A lr_a = static_cast<A>(lr), mom = static_cast<A>(momentum), damp = static_cast<A>(1.0 - dampening);
  const A wd = static_cast<A>(weight_decay), scale = static_cast<A>(grad_scale);
  const int64_t n = view_numel(param);
  parallel_for(n, 16384, [&](int64_t lo, int64_t hi) {
    for (int64_t i = lo; i < hi; ++i) {
      A gi = static_cast<A>(Num<G>::load(g[i])) * scale + wd * p[i];
      if (b) {
        const A bi = first_step ? gi : mom * b[i] + damp * gi;
        b[i] = bi;
        gi = nesterov ? gi + mom * bi : bi;
      }
      p[i] -= lr_a * gi;
    }
  });
}

// Calls f(P{}, G{}) for the supported (param, grad) dtype pairs.
template <typename F>
void dispatch_optim(const char* name, const View& param, const View& grad, F&& f) {
  const DType pt = dt(param), gt = dt(grad);
  if (pt == DType::F32 && gt == DType::F32) return f(float{}, float{});
  if (pt == DType::F32 && gt == DType::BF16) return f(float{}, bf16{});
  if (pt == DType::F64 && gt == DType::F64) return f(double{}, double{});
  if (pt == DType::F64 && gt == DType::BF16) return f(double{}, bf16{});
  fail(ErrorCode::DType, name, ": parameters must be float32 or float64 with a gradient of the same dtype or bfloat16, got ",
       dtype_name(pt), " and ", dtype_name(gt));
}

}  // namespace

void adamw_step(const View& param, const View& grad, const View& exp_avg, const View& exp_avg_sq, double lr,
                double beta1, double beta2, double eps, double weight_decay, int64_t step, double grad_scale) {
  dispatch_optim("adamw_step", param, grad, [&](auto ptag, auto gtag) {
    adamw_typed<decltype(ptag), decltype(gtag)>(param, grad, exp_avg, exp_avg_sq, lr, beta1, beta2, eps, weight_decay,
                                                step, grad_scale);
  });
}

void sgd_step(const View& param, const View& grad, const View& buf, double lr, double momentum, double dampening,
              double weight_decay, bool nesterov, bool first_step, double grad_scale) {
  dispatch_optim("sgd_step", param, grad, [&](auto ptag, auto gtag) {
    sgd_typed<decltype(ptag), decltype(gtag)>(param, grad, buf, lr, momentum, dampening, weight_decay, nesterov,
                                              first_step, grad_scale);
  });
}

}  // namespace DR_ISA
}  // namespace cpu
}  // namespace dualroute
