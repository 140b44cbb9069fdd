// The CUDA backend's front door: the exported CudaApi table, device setup, errors, copies and
// the caching allocator. Kernels live in their own files (elementwise, reduce, softmax, norm,
// index, matmul, backward, optim); this file only wires their entries into the table.
//
// Device and stream: init() picks device 0 and creates one non-blocking stream. Every kernel
// and copy is queued on that stream, so work runs in the order it was issued and the only
// points where the host waits are copy_d2h, synchronize and the index-checking kernels.
//
// Errors: each entry returns 0 or 1 and leaves a message in a thread_local string that
// last_error() returns. Nothing throws across the C ABI (DR_CUDA_ENTRY_BEGIN/END) and
// nothing aborts: on a machine without a driver init() fails with the runtime's own words
// ("CUDA driver version is insufficient ...") and the addon keeps the CPU backend.
//
// Allocator: cudaMalloc/cudaFree synchronise the device and cost tens of microseconds, far
// more than a small kernel, so blocks are cached. Requests are rounded (512 bytes up to
// 1 MiB, 2 MiB granules above) and freed blocks wait in a size-keyed multimap. A request
// takes the smallest cached block that fits, unless that block is 2x the request or more
// (a small tensor must not pin a huge block). Because all work is on one stream, a block
// released by the host while kernels still use it can be handed out at once: anything the
// new owner queues runs after those kernels. On out-of-memory the cache is returned to the
// driver and the cudaMalloc tried once more.
#include <cstring>
#include <map>
#include <mutex>
#include <string>
#include <unordered_map>

#include "api.h"
#include "common.cuh"

namespace dualroute {
namespace cuda {

// The kernel entries, defined in the other sources of this library (declared from the op table).
#define DR_CUDA_DECLARE(name, params) int name params;
DR_CUDA_KERNELS(DR_CUDA_DECLARE)
#undef DR_CUDA_DECLARE

namespace {

thread_local std::string t_error;

cudaStream_t g_stream = nullptr;
int g_sm_count = 0;
std::mutex g_init_mutex;
bool g_init_done = false;
int g_init_result = -1;
std::string g_init_error;

// ---- caching allocator -------------------------------------------------------------------
constexpr size_t kSmallLimit = size_t(1) << 20;
constexpr size_t kSmallGranule = 512;
constexpr size_t kLargeGranule = size_t(2) << 20;

struct Cache {
  std::mutex mu;
  std::multimap<size_t, void*> free_blocks;    // size -> block
  std::unordered_map<void*, size_t> live;      // block -> size
  int64_t allocated = 0, reserved = 0;
};
Cache& cache() {
  static Cache* c = new Cache();  // never destroyed: release() may run during process exit
  return *c;
}

size_t round_size(size_t bytes) {
  if (bytes <= kSmallLimit) return (bytes + kSmallGranule - 1) / kSmallGranule * kSmallGranule;
  return (bytes + kLargeGranule - 1) / kLargeGranule * kLargeGranule;
}

// Returns every cached block to the driver; caller holds the mutex. cudaFree waits for the
// device, so blocks still named by queued kernels are not pulled from under them.
int free_cached_locked(Cache& c) {
  int status = 0;
  for (auto& kv : c.free_blocks) {
    cudaError_t e = cudaFree(kv.second);
    if (e != cudaSuccess && status == 0) status = check(e, "empty_cache: cudaFree");
    c.reserved -= static_cast<int64_t>(kv.first);
  }
  c.free_blocks.clear();
  return status;
}

// ---- entries -----------------------------------------------------------------------------
const char* api_last_error() { return t_error.c_str(); }

int api_init() {
  DR_CUDA_ENTRY_BEGIN
  std::lock_guard<std::mutex> lock(g_init_mutex);
  if (g_init_done) {
    if (g_init_result < 0) set_error(g_init_error);
    return g_init_result;
  }
  g_init_done = true;
  auto fail = [](const std::string& msg) {
    g_init_error = msg;
    g_init_result = -1;
    cudaGetLastError();  // leave no stale error behind for later launch checks
    set_error(msg);
    return -1;
  };
  int n = 0;
  cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess) return fail(std::string("cudaGetDeviceCount: ") + cudaGetErrorString(e));
  if (n <= 0) return fail("cudaGetDeviceCount: no CUDA device found");
  e = cudaSetDevice(0);
  if (e != cudaSuccess) return fail(std::string("cudaSetDevice(0): ") + cudaGetErrorString(e));
  cudaStream_t s = nullptr;
  e = cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking);
  if (e != cudaSuccess) return fail(std::string("cudaStreamCreateWithFlags: ") + cudaGetErrorString(e));
  int sm = 0;
  e = cudaDeviceGetAttribute(&sm, cudaDevAttrMultiProcessorCount, 0);
  if (e != cudaSuccess) return fail(std::string("cudaDeviceGetAttribute: ") + cudaGetErrorString(e));
  g_stream = s;
  g_sm_count = sm > 0 ? sm : 1;
  g_init_result = n;
  return n;
  DR_CUDA_ENTRY_END("init")
}

int api_device_info(int device, CudaDeviceInfo* info) {
  DR_CUDA_ENTRY_BEGIN
  if (!info) return set_error("device_info: null info pointer");
  int n = 0;
  DR_CUDA_TRY(check(cudaGetDeviceCount(&n), "device_info: cudaGetDeviceCount"));
  if (device < 0 || device >= n)
    return set_error("device_info: device " + std::to_string(device) + " does not exist (" + std::to_string(n) +
                     " device(s))");
  cudaDeviceProp prop;
  DR_CUDA_TRY(check(cudaGetDeviceProperties(&prop, device), "device_info: cudaGetDeviceProperties"));
  std::memset(info, 0, sizeof(*info));
  std::snprintf(info->name, sizeof(info->name), "%s", prop.name);
  info->total_memory = static_cast<int64_t>(prop.totalGlobalMem);
  info->free_memory = -1;
  int current = -1;
  if (cudaGetDevice(&current) == cudaSuccess && current == device) {
    size_t free_b = 0, total_b = 0;
    DR_CUDA_TRY(check(cudaMemGetInfo(&free_b, &total_b), "device_info: cudaMemGetInfo"));
    info->free_memory = static_cast<int64_t>(free_b);
    info->total_memory = static_cast<int64_t>(total_b);
  }
  info->cc_major = prop.major;
  info->cc_minor = prop.minor;
  info->multiprocessors = prop.multiProcessorCount;
  cublaslt_info(&info->cublaslt, info->cublaslt_status, sizeof(info->cublaslt_status));
  return 0;
  DR_CUDA_ENTRY_END("device_info")
}

int api_alloc(void** ptr, size_t bytes) {
  DR_CUDA_ENTRY_BEGIN
  if (!ptr) return set_error("alloc: null out pointer");
  *ptr = nullptr;
  if (bytes == 0) return 0;  // an empty tensor owns no memory; release(nullptr) is a no-op
  const size_t size = round_size(bytes);
  Cache& c = cache();
  std::lock_guard<std::mutex> lock(c.mu);
  auto it = c.free_blocks.lower_bound(size);
  if (it != c.free_blocks.end() && it->first / 2 < size) {
    void* p = it->second;
    const size_t got = it->first;
    c.free_blocks.erase(it);
    c.live.emplace(p, got);
    c.allocated += static_cast<int64_t>(got);
    *ptr = p;
    return 0;
  }
  void* p = nullptr;
  cudaError_t e = cudaMalloc(&p, size);
  if (e == cudaErrorMemoryAllocation) {
    cudaGetLastError();  // not sticky, but it would otherwise surface in the next check_launch
    DR_CUDA_TRY(free_cached_locked(c));
    e = cudaMalloc(&p, size);
  }
  if (e != cudaSuccess) {
    cudaGetLastError();
    return set_error("alloc: cudaMalloc of " + std::to_string(size) + " bytes failed: " + cudaGetErrorString(e));
  }
  c.live.emplace(p, size);
  c.allocated += static_cast<int64_t>(size);
  c.reserved += static_cast<int64_t>(size);
  *ptr = p;
  return 0;
  DR_CUDA_ENTRY_END("alloc")
}

int api_release(void* ptr) {
  DR_CUDA_ENTRY_BEGIN
  if (!ptr) return 0;
  Cache& c = cache();
  std::lock_guard<std::mutex> lock(c.mu);
  auto it = c.live.find(ptr);
  if (it == c.live.end()) return set_error("release: pointer was not allocated by this backend (or freed twice)");
  const size_t size = it->second;
  c.live.erase(it);
  c.allocated -= static_cast<int64_t>(size);
  c.free_blocks.emplace(size, ptr);
  return 0;
  DR_CUDA_ENTRY_END("release")
}

int api_memory_stats(CudaMemoryStats* stats) {
  DR_CUDA_ENTRY_BEGIN
  if (!stats) return set_error("memory_stats: null stats pointer");
  Cache& c = cache();
  std::lock_guard<std::mutex> lock(c.mu);
  stats->allocated_bytes = c.allocated;
  stats->reserved_bytes = c.reserved;
  stats->allocations = static_cast<int64_t>(c.live.size());
  return 0;
  DR_CUDA_ENTRY_END("memory_stats")
}

int api_empty_cache() {
  DR_CUDA_ENTRY_BEGIN
  Cache& c = cache();
  std::lock_guard<std::mutex> lock(c.mu);
  return free_cached_locked(c);
  DR_CUDA_ENTRY_END("empty_cache")
}

int api_copy_h2d(void* dst, const void* src, size_t bytes) {
  DR_CUDA_ENTRY_BEGIN
  if (bytes == 0) return 0;
  // From pageable memory the runtime stages the bytes before returning, so the caller may
  // reuse `src` as soon as this returns.
  return check(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, stream()), "copy_h2d");
  DR_CUDA_ENTRY_END("copy_h2d")
}

int api_copy_d2h(void* dst, const void* src, size_t bytes) {
  DR_CUDA_ENTRY_BEGIN
  if (bytes == 0) return check(cudaStreamSynchronize(stream()), "copy_d2h: cudaStreamSynchronize");
  DR_CUDA_TRY(check(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, stream()), "copy_d2h"));
  return check(cudaStreamSynchronize(stream()), "copy_d2h: cudaStreamSynchronize");
  DR_CUDA_ENTRY_END("copy_d2h")
}

int api_copy_d2d(void* dst, const void* src, size_t bytes) {
  DR_CUDA_ENTRY_BEGIN
  if (bytes == 0) return 0;
  return check(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, stream()), "copy_d2d");
  DR_CUDA_ENTRY_END("copy_d2d")
}

int api_synchronize() {
  DR_CUDA_ENTRY_BEGIN
  return check(cudaStreamSynchronize(stream()), "synchronize");
  DR_CUDA_ENTRY_END("synchronize")
}

CudaApi make_api() {
  CudaApi a;
  std::memset(&a, 0, sizeof(a));
  a.abi_version = kCudaAbiVersion;
  a.last_error = api_last_error;
  a.init = api_init;
  a.device_info = api_device_info;
  a.alloc = api_alloc;
  a.release = api_release;
  a.memory_stats = api_memory_stats;
  a.empty_cache = api_empty_cache;
  a.copy_h2d = api_copy_h2d;
  a.copy_d2h = api_copy_d2h;
  a.copy_d2d = api_copy_d2d;
  a.synchronize = api_synchronize;
#define DR_CUDA_SET(name, params) a.name = name;
  DR_CUDA_KERNELS(DR_CUDA_SET)
#undef DR_CUDA_SET
  return a;
}

}  // namespace

cudaStream_t stream() { return g_stream; }

int set_error(const std::string& msg) {
  try {
    t_error = msg;
  } catch (...) {
    // out of memory while recording the message: keep whatever was there
  }
  return 1;
}

int check(cudaError_t e, const char* what) {
  if (e == cudaSuccess) return 0;
  return set_error(std::string(what) + ": " + cudaGetErrorName(e) + ": " + cudaGetErrorString(e));
}

int multiprocessor_count() { return g_sm_count > 0 ? g_sm_count : 1; }

// Scratch memory for kernels (backward.cu): the caching allocator's blocks. Because all work is
// on one stream, a block may be released right after the launches that use it are queued.
int scratch_alloc(void** ptr, size_t bytes) { return api_alloc(ptr, bytes); }
int scratch_release(void* ptr) { return api_release(ptr); }

}  // namespace cuda
}  // namespace dualroute

extern "C" __attribute__((visibility("default"))) const dualroute::CudaApi* dualroute_cuda_api(void) {
  static const dualroute::CudaApi api = dualroute::cuda::make_api();
  return &api;
}
