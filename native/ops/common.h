// Helpers for the dispatchers' run() functions.
#pragma once
#include "../core/cuda_backend.h"
#include "../core/error.h"
#include "../cpu/kernels.h"
#include "ops.h"

namespace dualroute {
namespace ops {

inline bool on_cpu(const T& t) { return t.device() == DeviceKind::CPU; }

inline View opt_view(const T* t) { return t ? t->view() : null_view(); }
inline View opt_view(const OptTensor& t) { return t ? t->view() : null_view(); }

// Checks of the kernel families that take gradient-like arguments (backward, fused):
// an output written whole (contiguous, with `like`'s shape and dtype),
inline void check_out(const char* op, const char* arg, const T& out, const T& like, const char* like_name) {
  require_same_shape(op, arg, out, like, like_name);
  require_dtype(op, arg, out, like.dtype);
  require_contiguous(op, arg, out);
}

// an input of `like`'s shape and dtype (any layout),
inline void check_like(const char* op, const char* arg, const T& v, const T& like, const char* like_name) {
  require_same_shape(op, arg, v, like, like_name);
  require_dtype(op, arg, v, like.dtype);
}

// a vector of n elements of a dtype: an input any layout, an output (written) contiguous;
inline void check_vec(const char* op, const char* arg, const T* v, int64_t n, DType dtype, bool written) {
  if (!v) return;
  DR_CHECK(v->numel() == n, Shape, op, ": Expected ", arg, " with ", n, " elements but received shape ",
           v->shape_string());
  require_dtype(op, arg, *v, dtype);
  if (written) require_contiguous(op, arg, *v);
}

// and the view of an optional input made contiguous (kept alive by `keep`).
inline View cview(std::shared_ptr<const T>& keep, const T* t) {
  if (!t) return null_view();
  keep = contiguous(*t);
  return keep->view();
}

// Calls the CPU kernel or the CUDA entry of the same name.
#define DR_RUN(device_of, cpu_call, cuda_name, ...)                                   \
  do {                                                                                \
    if (on_cpu(device_of)) {                                                          \
      cpu_call;                                                                       \
    } else {                                                                          \
      const CudaApi& api_ = cuda_required();                                          \
      cuda_check(api_.cuda_name(__VA_ARGS__), #cuda_name);                            \
    }                                                                                 \
  } while (0)

}  // namespace ops
}  // namespace dualroute
