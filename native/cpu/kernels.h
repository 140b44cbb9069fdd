// The CPU kernels. Each is a plain function over Views (see core/view.h): no N-API, no
// allocation of tensors, no ownership. Every kernel source in native/cpu is compiled once per
// instruction-set level (generic x86-64/other, AVX2+FMA, AVX-512 with BF16) into its own
// namespace; dispatch.cpp picks one at run time from what the processor reports.
//
// Preconditions are checked by the dispatchers in native/ops: shapes agree, dtypes are
// supported, and where a kernel says "contiguous" its views are row-major contiguous.
#pragma once
#include <cstdint>

#include "../core/attention.h"
#include "../core/ops.h"
#include "../core/view.h"

namespace dualroute {
namespace cpu {

// X(return type, name, parameter list, argument list)
#define DR_CPU_KERNELS(X)                                                                      \
  /* out = value (any dtype, any strides) */                                                  \
  X(void, fill, (const View& out, double value), (out, value))                                \
  /* out[i] = start + i * step over the flat index (contiguous out) */                        \
  X(void, arange, (const View& out, double start, double step), (out, start, step))           \
  /* Philox draws, element i of the flat index uses stream index offset + i (see philox.h) */ \
  X(void, random, (const View& out, RandomKind kind, uint64_t seed, uint64_t offset, double a, double b), \
    (out, kind, seed, offset, a, b))                                                          \
  /* out = in, same shape, any strides, dtype cast */                                         \
  X(void, copy, (const View& out, const View& in), (out, in))                                 \
  /* out = f(x), same shape; x any strides */                                                 \
  X(void, unary, (UnaryOp op, const View& out, const View& x), (op, out, x))                  \
  /* out = a op b; a and b already broadcast to out's shape (stride 0 where broadcast) */     \
  X(void, binary, (BinaryOp op, const View& out, const View& a, const View& b), (op, out, a, b)) \
  X(void, binary_scalar, (BinaryOp op, const View& out, const View& a, double s, bool scalar_first), \
    (op, out, a, s, scalar_first))                                                            \
  /* out = cond ? a : b; all broadcast to out's shape, cond is Bool */                        \
  X(void, where, (const View& out, const View& cond, const View& a, const View& b), (out, cond, a, b)) \
  /* x has out's dims followed by `nreduce` reduced dims; out contiguous */                   \
  X(void, reduce, (ReduceOp op, const View& out, const View& x, int nreduce), (op, out, x, nreduce)) \
  /* x has out's dims followed by one reduced dim; out int32 contiguous; first index wins ties */ \
  X(void, arg_reduce, (ArgReduceOp op, const View& out, const View& x), (op, out, x))         \
  X(void, matmul, (const MatmulArgs& args), (args))                                           \
  /* x, out contiguous [outer, dim, inner]; softmax (or log-softmax) over dim */              \
  X(void, softmax, (const View& out, const View& x, int64_t outer, int64_t dim, int64_t inner, bool log), \
    (out, x, outer, dim, inner, log))                                                         \
  /* x, out contiguous [rows, cols]; w [cols] or data == nullptr; rstd [rows] float32 (float64 for float64 x) or null */ \
  X(void, rms_norm, (const View& out, const View& x, const View& w, float eps, const View& rstd), \
    (out, x, w, eps, rstd))                                                                   \
  /* as rms_norm plus bias b [cols] or null; mean/rstd [rows] outputs or null */        \
  X(void, layer_norm, (const View& out, const View& x, const View& w, const View& b, float eps, \
                       const View& mean, const View& rstd),                                   \
    (out, x, w, b, eps, mean, rstd))                                                          \
  /* x contiguous [rows, 2*h], out [rows, h]: out = silu(x[:, :h]) * x[:, h:] */              \
  X(void, swiglu, (const View& out, const View& x), (out, x))                                 \
  /* ids int32 contiguous [n], table contiguous [V, D], out contiguous [n, D]. Throws        \
     RangeError before reading anything when an id is outside [0, V). */                      \
  X(void, embedding, (const View& out, const View& ids, const View& table), (out, ids, table)) \
  /* torch.gather along axis: out has index's shape; index int32; all contiguous */           \
  X(void, gather, (const View& out, const View& x, const View& index, int axis), (out, x, index, axis)) \
  /* out[..., index[..., j, ...], ...] += src[..., j, ...] along axis, in place */            \
  X(void, scatter_add, (const View& out, const View& index, const View& src, int axis), (out, index, src, axis)) \
  /* logits contiguous [rows, C]; targets int32 [rows]; loss [rows] (0 where ignored); lse  \
     [rows] float32 (float64 for float64) or null. loss = lse - (1-s) * x[t] - s/C * sum_j x[j]. Throws RangeError \
     for a target outside [0, C) that is not ignore_index. */                                 \
  X(void, cross_entropy, (const View& loss, const View& logits, const View& targets, int32_t ignore_index, \
                          float smoothing, const View& lse),                                  \
    (loss, logits, targets, ignore_index, smoothing, lse))                                   \
  /* ---- backward kernels (all views contiguous; statistics float32, float64 for float64 x) */ \
  /* y, dy, dx [outer, dim, inner]; y is the forward output (log-softmax output when log):   \
     softmax dx = y (dy - sum(dy y)); log-softmax dx = dy - exp(y) sum(dy) */                  \
  X(void, softmax_backward, (const View& dx, const View& y, const View& dy, int64_t outer, int64_t dim, \
                             int64_t inner, bool log),                                         \
    (dx, y, dy, outer, dim, inner, log))                                                      \
  /* x, dy, dx [rows, cols]; w [cols] or null; rstd [rows]; dw [cols] or null (overwritten):  \
     xhat = x r, g = dy w, dx = r (g - xhat mean(g xhat)), dw = sum_rows dy xhat */            \
  X(void, rms_norm_backward, (const View& dx, const View& dw, const View& x, const View& w, const View& rstd, \
                              const View& dy),                                                 \
    (dx, dw, x, w, rstd, dy))                                                                  \
  /* as rms_norm_backward with xhat = (x - mean) r, dx = r (g - mean(g) - xhat mean(g xhat)),  \
     db = sum_rows dy (dw, db optional) */                                                     \
  X(void, layer_norm_backward, (const View& dx, const View& dw, const View& db, const View& x, const View& w, \
                                const View& mean, const View& rstd, const View& dy),           \
    (dx, dw, db, x, w, mean, rstd, dy))                                                        \
  /* logits, dlogits [rows, C]; targets int32 [rows]; lse [rows]; dloss [rows] (the loss      \
     dtype). dlogits = dloss (p - (1-s) onehot(t) - s/C), 0 for ignored rows. RangeError for  \
     a target outside [0, C) that is not ignore_index. */                                      \
  X(void, cross_entropy_backward, (const View& dlogits, const View& logits, const View& targets, const View& lse, \
                                   const View& dloss, int32_t ignore_index, float smoothing), \
    (dlogits, logits, targets, lse, dloss, ignore_index, smoothing))                          \
  /* dx = dy * f'(x), all the same shape and float dtype */                                   \
  X(void, unary_backward, (UnaryOp op, const View& dx, const View& x, const View& dy), (op, dx, x, dy)) \
  /* x, dx [rows, 2h] = [a | b], dy [rows, h]: da = dy b silu'(a), db = dy silu(a) */          \
  X(void, swiglu_backward, (const View& dx, const View& x, const View& dy), (dx, x, dy))      \
  /* In place, PyTorch AdamW with g = grad * grad_scale. param, exp_avg, exp_avg_sq share one  \
     dtype (float32 or float64); grad has param's dtype or bfloat16. All contiguous, same numel. */ \
  X(void, adamw_step, (const View& param, const View& grad, const View& exp_avg, const View& exp_avg_sq, \
                       double lr, double beta1, double beta2, double eps, double weight_decay, int64_t step, \
                       double grad_scale),                                                     \
    (param, grad, exp_avg, exp_avg_sq, lr, beta1, beta2, eps, weight_decay, step, grad_scale)) \
  /* In place, PyTorch SGD; buf (param's dtype) or null when momentum == 0; first_step sets    \
     buf = g instead of the momentum update. */                                                \
  X(void, sgd_step, (const View& param, const View& grad, const View& buf, double lr, double momentum, \
                     double dampening, double weight_decay, bool nesterov, bool first_step, double grad_scale), \
    (param, grad, buf, lr, momentum, dampening, weight_decay, nesterov, first_step, grad_scale)) \
  /* Fused attention (contract in core/attention.h): out [B,Hq,n,D], lse [B,Hq,n] or null */  \
  X(void, attention_forward, (const AttnArgs& a, void* out, void* lse), (a, out, lse))         \
  /* adds into float32 (float64) accumulators dq [B,Hq,Sq,D], dk, dv [B,Hkv,Sk,D] */          \
  X(void, attention_backward, (const AttnArgs& a, const void* out, const void* dout, const void* lse, void* dq, \
                               void* dk, void* dv),                                           \
    (a, out, dout, lse, dq, dk, dv))                                                           \
  X(void, dual_attention_forward, (const DualArgs& d, void* out, void* out_local, void* out_global, \
                                   void* lse_local, void* lse_global),                        \
    (d, out, out_local, out_global, lse_local, lse_global))                                    \
  /* the dual forward's backward in one pass: adds into dq, dk, dv (gate gradients aside) */  \
  X(void, dual_attention_backward, (const DualArgs& d, const void* out_local, const void* out_global, \
                                    const void* dout, const void* lse_local, const void* lse_global, void* dq, \
                                    void* dk, void* dv),                                      \
    (d, out_local, out_global, dout, lse_local, lse_global, dq, dk, dv))                       \
  /* rotary embedding, rotate-half: x, out [B,H,S,D]; positions int32 [S] or [B,S] */         \
  X(void, rope, (const View& out, const View& x, const View& positions, double base, bool inverse), \
    (out, x, positions, base, inverse))

#define DR_DECLARE_KERNEL(ret, name, params, args) ret name params;
DR_CPU_KERNELS(DR_DECLARE_KERNEL)

// The ISA variants; dispatch.cpp forwards the functions above to one of them.
namespace generic { DR_CPU_KERNELS(DR_DECLARE_KERNEL) }
#if defined(__x86_64__) || defined(_M_X64)
#define DR_CPU_HAS_X86_VARIANTS 1
namespace avx2 { DR_CPU_KERNELS(DR_DECLARE_KERNEL) }
namespace avx512 { DR_CPU_KERNELS(DR_DECLARE_KERNEL) }
#endif
#undef DR_DECLARE_KERNEL

// "avx512", "avx2" or "generic": the variant in use (DUALROUTE_CPU_ISA may lower it).
const char* isa_name();
// "avx512bf16 avx512f avx2 fma" and so on: what the processor reports.
const char* cpu_features();

}  // namespace cpu
}  // namespace dualroute

// In kernel sources: the namespace of the variant being compiled.
#ifndef DR_ISA
#define DR_ISA generic
#endif
