// Fused optimizer updates on the GPU, in place. Contracts as the CPU kernels of the same name
// (native/cpu/kernels.h): param / exp_avg / exp_avg_sq / momentum buffer float32 (master
// weights), grad float32 or bfloat16, g = grad * grad_scale.
//
// adamw: grid-stride over elements; when every pointer is aligned for it, lanes move packs of
// 4 elements (16-byte loads of param and state, 16- or 8-byte loads of the gradient) and a
// scalar loop finishes the tail. Scalars that depend only on the step (bias corrections) are
// computed once on the host in double.
#include <algorithm>
#include <cmath>
#include <string>

#include "device.cuh"

namespace dualroute {
namespace cuda {
namespace {

struct AdamArgs {
  float b1, b2, om1, om2, inv_bc1, inv_bc2, lr, eps, scale, decay;
};

__device__ __forceinline__ void adam_elem(float& p, float& m, float& v, float g, const AdamArgs& a) {
  g *= a.scale;
  m = a.b1 * m + a.om1 * g;
  v = a.b2 * v + a.om2 * g * g;
  p = p * a.decay - a.lr * (m * a.inv_bc1) / (sqrtf(v * a.inv_bc2) + a.eps);
}

template <typename G>
__global__ void adamw_kernel(float* __restrict__ p, const G* __restrict__ g, float* __restrict__ m,
                             float* __restrict__ v, int64_t n, AdamArgs a, int vec) {
  const int64_t tid = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  int64_t done = 0;
  if (vec) {
    const int64_t n4 = n / 4;
    for (int64_t i = tid; i < n4; i += stride) {
      float4 pp = reinterpret_cast<float4*>(p)[i];
      float4 mm = reinterpret_cast<float4*>(m)[i];
      float4 vv = reinterpret_cast<float4*>(v)[i];
      const Pack<G, 4> gg = reinterpret_cast<const Pack<G, 4>*>(g)[i];
      adam_elem(pp.x, mm.x, vv.x, ld(gg.v[0]), a);
      adam_elem(pp.y, mm.y, vv.y, ld(gg.v[1]), a);
      adam_elem(pp.z, mm.z, vv.z, ld(gg.v[2]), a);
      adam_elem(pp.w, mm.w, vv.w, ld(gg.v[3]), a);
      reinterpret_cast<float4*>(p)[i] = pp;
      reinterpret_cast<float4*>(m)[i] = mm;
      reinterpret_cast<float4*>(v)[i] = vv;
    }
    done = n4 * 4;
  }
  for (int64_t i = done + tid; i < n; i += stride) {
    float pi = p[i], mi = m[i], vi = v[i];
    adam_elem(pi, mi, vi, ld(g[i]), a);
    p[i] = pi;
    m[i] = mi;
    v[i] = vi;
  }
}

template <typename G>
__global__ void sgd_kernel(float* __restrict__ p, const G* __restrict__ g, float* __restrict__ buf, int64_t n, float lr,
                           float momentum, float damp, float wd, int nesterov, int first, float scale) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    float gi = ld(g[i]) * scale + wd * p[i];
    if (buf) {
      const float b = first ? gi : momentum * buf[i] + damp * gi;
      buf[i] = b;
      gi = nesterov ? gi + momentum * b : b;
    }
    p[i] -= lr * gi;
  }
}

// param and the state views: float32, contiguous, n elements; grad float32 or bfloat16.
int check_optim(const char* name, const View* param, const View* grad, std::initializer_list<const View*> state) {
  if (dt(*param) != DType::F32) return dtype_error(name, *param);
  if (dt(*grad) != DType::F32 && dt(*grad) != DType::BF16) return dtype_error(name, *grad);
  const int64_t n = view_numel(*param);
  if (!view_contiguous(*param) || !view_contiguous(*grad) || view_numel(*grad) != n)
    return set_error(std::string(name) + ": param and grad must be contiguous with the same size");
  for (const View* s : state) {
    if (!s || !s->data) continue;
    if (dt(*s) != DType::F32) return dtype_error(name, *s);
    if (!view_contiguous(*s) || view_numel(*s) != n)
      return set_error(std::string(name) + ": optimizer state must be contiguous with param's size");
  }
  return 0;
}

}  // namespace

int adamw_step(const View* param, const View* grad, const View* exp_avg, const View* exp_avg_sq, double lr,
               double beta1, double beta2, double eps, double weight_decay, int64_t step, double grad_scale) {
  DR_CUDA_ENTRY_BEGIN
  const char* name = "adamw_step";
  if (!exp_avg || !exp_avg->data || !exp_avg_sq || !exp_avg_sq->data)
    return set_error("adamw_step: exp_avg and exp_avg_sq are required");
  DR_CUDA_TRY(check_optim(name, param, grad, {exp_avg, exp_avg_sq}));
  if (step < 1) return set_error("adamw_step: step must be >= 1");
  const int64_t n = view_numel(*param);
  if (n == 0) return 0;
  const double s = static_cast<double>(step);
  AdamArgs a;
  a.b1 = static_cast<float>(beta1);
  a.b2 = static_cast<float>(beta2);
  a.om1 = static_cast<float>(1.0 - beta1);
  a.om2 = static_cast<float>(1.0 - beta2);
  a.inv_bc1 = static_cast<float>(1.0 / (1.0 - std::pow(beta1, s)));
  a.inv_bc2 = static_cast<float>(1.0 / (1.0 - std::pow(beta2, s)));
  a.lr = static_cast<float>(lr);
  a.eps = static_cast<float>(eps);
  a.scale = static_cast<float>(grad_scale);
  a.decay = static_cast<float>(1.0 - lr * weight_decay);
  float* p = static_cast<float*>(param->data);
  float* m = static_cast<float*>(exp_avg->data);
  float* v = static_cast<float*>(exp_avg_sq->data);
  const bool bf = dt(*grad) == DType::BF16;
  const int vec = aligned(p, 16) && aligned(m, 16) && aligned(v, 16) && aligned(grad->data, bf ? 8 : 16);
  const int blocks = grid_cap((n / (vec ? 4 : 1) + 255) / 256);
  if (bf) {
    adamw_kernel<bf16_t><<<blocks, 256, 0, stream()>>>(p, static_cast<const bf16_t*>(grad->data), m, v, n, a, vec);
  } else {
    adamw_kernel<float><<<blocks, 256, 0, stream()>>>(p, static_cast<const float*>(grad->data), m, v, n, a, vec);
  }
  return check_launch(name);
  DR_CUDA_ENTRY_END("adamw_step")
}

int sgd_step(const View* param, const View* grad, const View* buf, double lr, double momentum, double dampening,
             double weight_decay, int32_t nesterov, int32_t first_step, double grad_scale) {
  DR_CUDA_ENTRY_BEGIN
  const char* name = "sgd_step";
  DR_CUDA_TRY(check_optim(name, param, grad, {buf}));
  const int64_t n = view_numel(*param);
  if (n == 0) return 0;
  float* p = static_cast<float*>(param->data);
  float* b = buf && buf->data ? static_cast<float*>(buf->data) : nullptr;
  const int blocks = grid_cap((n + 255) / 256);
  const float lr_f = static_cast<float>(lr), mom = static_cast<float>(momentum);
  const float damp = static_cast<float>(1.0 - dampening), wd = static_cast<float>(weight_decay);
  const float scale = static_cast<float>(grad_scale);
  if (dt(*grad) == DType::BF16) {
    sgd_kernel<bf16_t><<<blocks, 256, 0, stream()>>>(p, static_cast<const bf16_t*>(grad->data), b, n, lr_f, mom, damp,
                                                     wd, nesterov, first_step, scale);
  } else {
    sgd_kernel<float><<<blocks, 256, 0, stream()>>>(p, static_cast<const float*>(grad->data), b, n, lr_f, mom, damp, wd,
                                                    nesterov, first_step, scale);
  }
  return check_launch(name);
  DR_CUDA_ENTRY_END("sgd_step")
}

}  // namespace cuda
}  // namespace dualroute
