// The C ABI between the addon and libdualroute_cuda.so. The addon opens the library with
// dlopen on first use of the CUDA device and calls dualroute_cuda_api(); nothing else is
// exported. Every entry returns 0 on success or a nonzero status, with a message naming the
// kernel and the CUDA error in last_error() (per calling thread). No C++ exception crosses
// this boundary, and no entry aborts the process.
//
// All work is queued in order on one stream owned by the library; the copy-to-host entries
// wait for it. Views (core/view.h) point at device memory. abi_version (kCudaAbiVersion) is a
// hash of the kernel table, so an addon never calls a library built from another table.
#pragma once
#include <cstddef>
#include <cstdint>

#include "../core/attention.h"
#include "../core/ops.h"
#include "../core/view.h"
#include "../generated/kernels.h"

namespace dualroute {

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

  // The kernels, from the op table (native/optable.js via generated/kernels.h): the same
  // contracts as the CPU kernels of the same name. Optional views are null or have data ==
  // nullptr; float64 is CPU-only. Entries that take indices (embedding, gather, scatter_add,
  // cross_entropy) never read through an out-of-range index: the kernel records the first one,
  // and the call waits for the stream and returns nonzero with last_error() naming it.
#define DR_CUDA_FIELD(name, params) int(*name) params;
  DR_CUDA_KERNELS(DR_CUDA_FIELD)
#undef DR_CUDA_FIELD
};

}  // namespace dualroute

extern "C" const dualroute::CudaApi* dualroute_cuda_api(void);
