// Shared by the CUDA backend's sources: the stream, error reporting and small device helpers.
// Every entry of CudaApi (api.h) is an `extern "C"`-free C++ function returning int status; it
// wraps its body in DR_CUDA_ENTRY so that a C++ exception (bad_alloc, ...) never escapes.
#pragma once
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <cstdio>
#include <string>

#include "../core/dtype.h"
#include "../core/ops.h"
#include "../core/view.h"

namespace dualroute {
namespace cuda {

// The one stream all work is queued on (created by init()).
cudaStream_t stream();

// Records the message returned by CudaApi::last_error() for this thread; returns 1.
int set_error(const std::string& msg);
// set_error("<what>: <cuda error string>") when e != cudaSuccess; returns 0 or 1.
int check(cudaError_t e, const char* what);
// After a launch: the launch error (bad configuration, ...) if any.
inline int check_launch(const char* kernel) { return check(cudaGetLastError(), kernel); }

// Properties read once at init.
int multiprocessor_count();

// matmul.cu: the CudaApi::matmul entry (own tensor-core kernel, SIMT fallback, cuBLASLt) and
// what device_info reports about cuBLASLt.
int matmul(const MatmulArgs* args, int32_t algo);
void cublaslt_info(int32_t* in_use, char* status, size_t status_len);

}  // namespace cuda
}  // namespace dualroute

#define DR_CUDA_TRY(expr)                     \
  do {                                        \
    int dr_status_ = (expr);                  \
    if (dr_status_ != 0) return dr_status_;   \
  } while (0)

#define DR_CUDA_ENTRY_BEGIN try {
#define DR_CUDA_ENTRY_END(name)                                                      \
  }                                                                                  \
  catch (const std::exception& e) {                                                  \
    return ::dualroute::cuda::set_error(std::string(name) + ": " + e.what());        \
  }                                                                                  \
  catch (...) {                                                                      \
    return ::dualroute::cuda::set_error(std::string(name) + ": unknown C++ exception"); \
  }
