// Dispatchers: one per op family. Each checks what the kernels assume (devices match, dtypes
// are supported, shapes agree: lib/ops has already given the friendly error, these checks
// keep native code safe whatever the caller does), prepares views (broadcasting, permuting,
// contiguous copies) and calls the CPU kernel or the CUDA backend.
#pragma once
#include <cstdint>
#include <memory>
#include <vector>

#include "../core/attention.h"
#include "../core/ops.h"
#include "../core/tensor.h"

namespace dualroute {
namespace ops {

using T = TensorImpl;

// Same storage device for every tensor given; throws DeviceError naming the op.
void same_device(const char* op, std::initializer_list<const T*> ts);
// A contiguous tensor with t's contents (t itself, shared, when already contiguous).
std::shared_ptr<const T> contiguous(const T& t);
std::unique_ptr<T> contiguous_copy(const T& t);

void fill(const T& out, double value);
void arange(const T& out, double start, double step);
void random(const T& out, RandomKind kind, uint64_t seed, uint64_t offset, double a, double b);
void copy(const T& out, const T& in);  // same shape, same device, any dtypes
// A new contiguous tensor on `device` with src's contents and dtype.
std::unique_ptr<T> to_device(const T& src, DeviceKind device);
// Contiguous bytes of t in element order, on the host.
void read_bytes(const T& t, void* dst);
void write_bytes(const T& t, const void* src);  // t contiguous

void unary(UnaryOp op, const T& out, const T& x);
void binary(BinaryOp op, const T& out, const T& a, const T& b);
void binary_scalar(BinaryOp op, const T& out, const T& a, double s, bool scalar_first);
void where(const T& out, const T& cond, const T& a, const T& b);
void reduce(ReduceOp op, const T& out, const T& x, const std::vector<int>& axes);
void arg_reduce(ArgReduceOp op, const T& out, const T& x, int axis);
void matmul(const T& out, const T& a, const T& b, bool trans_a, bool trans_b, float alpha, float beta);
void softmax(const T& out, const T& x, int axis, bool log);
void rms_norm(const T& out, const T& x, const T* w, float eps, const T* rstd);
void layer_norm(const T& out, const T& x, const T* w, const T* b, float eps, const T* mean, const T* rstd);
void swiglu(const T& out, const T& x);
void embedding(const T& out, const T& ids, const T& table);
void gather(const T& out, const T& x, const T& index, int axis);
void scatter_add(const T& out, const T& index, const T& src, int axis);
void cross_entropy(const T& loss, const T& logits, const T& targets, int32_t ignore_index, float smoothing,
                   const T* lse);

// Backward kernels and fused optimizer steps (backward.cpp). Outputs are contiguous tensors of
// the right shape and dtype; inputs may be strided (copied). Statistics (rstd, mean, lse) and
// dloss are float32, float64 for float64 inputs. dw/db/buf may be null.
void softmax_backward(const T& dx, const T& y, const T& dy, int axis, bool log);
void rms_norm_backward(const T& dx, const T* dw, const T& x, const T* w, const T& rstd, const T& dy);
void layer_norm_backward(const T& dx, const T* dw, const T* db, const T& x, const T* w, const T& mean, const T& rstd,
                         const T& dy);
void cross_entropy_backward(const T& dlogits, const T& logits, const T& targets, const T& lse, const T& dloss,
                            int32_t ignore_index, float smoothing);
void unary_backward(UnaryOp op, const T& dx, const T& x, const T& dy);
void swiglu_backward(const T& dx, const T& x, const T& dy);
// In place; param, exp_avg, exp_avg_sq (and buf) contiguous float32 (or float64 on the cpu).
void adamw_step(const T& param, const T& grad, const T& exp_avg, const T& exp_avg_sq, double lr, double beta1,
                double beta2, double eps, double weight_decay, int64_t step, double grad_scale);
void sgd_step(const T& param, const T& grad, const T* buf, double lr, double momentum, double dampening,
              double weight_decay, bool nesterov, bool first_step, double grad_scale);

// Fused attention (core/attention.h). The dispatcher checks shapes, dtypes and devices, makes
// q/k/v contiguous and fills AttnArgs. dq/dk/dv are float32 (float64) accumulators, added into.
struct AttnOptions {
  AttnMask mask = AttnMask::Global;
  bool causal = false;
  int64_t window = 1;
  double scale = 1.0;
  const T* key_padding = nullptr;  // bool [B, Sk]
  const T* query_index = nullptr;  // int32 [B, n]
};
void attention_forward(const T& out, const T* lse, const T& q, const T& k, const T& v, const AttnOptions& o);
void attention_backward(const T& dq, const T& dk, const T& dv, const T& q, const T& k, const T& v, const T& out,
                        const T& dout, const T& lse, const AttnOptions& o);
// o.mask is the local path's mask; o.query_index must be null; global_rows bool [B, Sq] or null.
void dual_attention_forward(const T& out, const T& out_local, const T& out_global, const T& lse_local,
                            const T& lse_global, const T& q, const T& k, const T& v, const T& gates,
                            const AttnOptions& o, const T* global_rows);
// The dual forward's gradient w.r.t. q, k, v (added into dq, dk, dv): one pass over K/V on the CPU
// and, for bf16 head dims 32/64/128, on CUDA; otherwise two attention backwards on CUDA.
void dual_attention_backward(const T& dq, const T& dk, const T& dv, const T& q, const T& k, const T& v,
                             const T& out_local, const T& out_global, const T& dout, const T& lse_local,
                             const T& lse_global, const T& gates, const AttnOptions& o, const T* global_rows);
void rope(const T& out, const T& x, const T& positions, double base, bool inverse);

}  // namespace ops
}  // namespace dualroute
