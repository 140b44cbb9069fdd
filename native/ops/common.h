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
