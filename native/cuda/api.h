// The C ABI between the addon and libdualroute_cuda.so. The addon opens the library with
// dlopen on first use of the CUDA device and calls dualroute_cuda_api(); nothing else is
// exported. Every entry returns 0 on success or a nonzero status, with a message naming the
// kernel and the CUDA error in last_error() (per calling thread). No C++ exception crosses
// this boundary, and no entry aborts the process.
//
// All work is queued in order on one stream owned by the library; the copy-to-host entries
// wait for it. Views (core/view.h) point at device memory.
#pragma once
#include <cstddef>
#include <cstdint>

#include "../core/attention.h"
#include "../core/ops.h"
#include "../core/view.h"

namespace dualroute {

constexpr int kCudaAbiVersion = 5;

struct CudaDeviceInfo {
  char name[256];
  int64_t total_memory;
  int64_t free_memory;
  int32_t cc_major, cc_minor;
  int32_t multiprocessors;
  int32_t cublaslt;  // 1 when cuBLASLt was found and loaded
  char cublaslt_status[256];  // why it is (not) in use
};

struct CudaMemoryStats {
  int64_t allocated_bytes;  // handed out to tensors
  int64_t reserved_bytes;   // held from the driver, cached blocks included
  int64_t allocations;      // live blocks handed out
};

struct CudaApi {
  int32_t abi_version;
  const char* (*last_error)();
  // Number of devices (>= 1) or -1 with last_error() saying why CUDA cannot be used.
  int (*init)();
  int (*device_info)(int device, CudaDeviceInfo* info);
  // Caching allocator: blocks are rounded up and reused; empty_cache returns the free ones.
  int (*alloc)(void** ptr, size_t bytes);
  int (*release)(void* ptr);
  int (*memory_stats)(CudaMemoryStats* stats);
  int (*empty_cache)();
  int (*copy_h2d)(void* dst, const void* src, size_t bytes);
  int (*copy_d2h)(void* dst, const void* src, size_t bytes);  // waits for queued work
  int (*copy_d2d)(void* dst, const void* src, size_t bytes);
  int (*synchronize)();

  // Kernels: the same contracts as the CPU kernels of the same name (native/cpu/kernels.h).
  int (*fill)(const View* out, double value);
  int (*arange)(const View* out, double start, double step);
  int (*random)(const View* out, int32_t kind, uint64_t seed, uint64_t offset, double a, double b);
  int (*copy)(const View* out, const View* in);
  int (*unary)(int32_t op, const View* out, const View* x);
  int (*binary)(int32_t op, const View* out, const View* a, const View* b);
  int (*binary_scalar)(int32_t op, const View* out, const View* a, double s, int32_t scalar_first);
  int (*where)(const View* out, const View* cond, const View* a, const View* b);
  int (*reduce)(int32_t op, const View* out, const View* x, int32_t nreduce);
  int (*arg_reduce)(int32_t op, const View* out, const View* x);
  // algo: 0 = fastest known for the shape (timed once per shape), 1 = own kernel, 2 = cuBLASLt
  int (*matmul)(const MatmulArgs* args, int32_t algo);
  int (*softmax)(const View* out, const View* x, int64_t outer, int64_t dim, int64_t inner, int32_t log);
  int (*rms_norm)(const View* out, const View* x, const View* w, float eps, const View* rstd);
  int (*layer_norm)(const View* out, const View* x, const View* w, const View* b, float eps, const View* mean,
                    const View* rstd);
  int (*swiglu)(const View* out, const View* x);
  // Entries that take indices (embedding, gather, scatter_add, cross_entropy) never read
  // through an out-of-range index: the kernel records the first one, and the call waits for
  // the stream and returns nonzero with last_error() naming it.
  int (*embedding)(const View* out, const View* ids, const View* table);
  int (*gather)(const View* out, const View* x, const View* index, int32_t axis);
  int (*scatter_add)(const View* out, const View* index, const View* src, int32_t axis);
  int (*cross_entropy)(const View* loss, const View* logits, const View* targets, int32_t ignore_index,
                       float smoothing, const View* lse);

  // ABI 2: backward kernels and fused optimizer steps (contracts in native/cpu/kernels.h;
  // statistics float32; float64 is CPU-only). Optional views are null or have data == nullptr.
  // cross_entropy_backward never reads through a target: a row whose target is outside
  // [0, C) and not ignore_index gets NaN gradients (the forward has already rejected it).
  int (*softmax_backward)(const View* dx, const View* y, const View* dy, int64_t outer, int64_t dim, int64_t inner,
                          int32_t log);
  int (*rms_norm_backward)(const View* dx, const View* dw, const View* x, const View* w, const View* rstd,
                           const View* dy);
  int (*layer_norm_backward)(const View* dx, const View* dw, const View* db, const View* x, const View* w,
                             const View* mean, const View* rstd, const View* dy);
  int (*cross_entropy_backward)(const View* dlogits, const View* logits, const View* targets, const View* lse,
                                const View* dloss, int32_t ignore_index, float smoothing);
  int (*unary_backward)(int32_t op, const View* dx, const View* x, const View* dy);
  int (*swiglu_backward)(const View* dx, const View* x, const View* dy);
  // param, exp_avg, exp_avg_sq, buf float32; grad float32 or bfloat16.
  int (*adamw_step)(const View* param, const View* grad, const View* exp_avg, const View* exp_avg_sq, double lr,
                    double beta1, double beta2, double eps, double weight_decay, int64_t step, double grad_scale);
  int (*sgd_step)(const View* param, const View* grad, const View* buf, double lr, double momentum, double dampening,
                  double weight_decay, int32_t nesterov, int32_t first_step, double grad_scale);
  // Fused attention (core/attention.h); dq/dk/dv are float32 accumulators added into.
  int (*attention_forward)(const AttnArgs* a, void* out, void* lse);
  int (*attention_backward)(const AttnArgs* a, const void* out, const void* dout, const void* lse, void* dq, void* dk,
                            void* dv);
  int (*dual_attention_forward)(const DualArgs* d, void* out, void* out_local, void* out_global, void* lse_local,
                                void* lse_global);
  int (*dual_attention_backward)(const DualArgs* d, const void* out_local, const void* out_global, const void* dout,
                                 const void* lse_local, const void* lse_global, void* dq, void* dk, void* dv);
  int (*rope)(const View* out, const View* x, const View* positions, double base, int32_t inverse);
};

}  // namespace dualroute

extern "C" const dualroute::CudaApi* dualroute_cuda_api(void);
