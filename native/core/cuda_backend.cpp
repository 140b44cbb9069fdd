#include "cuda_backend.h"

#include <dlfcn.h>

#include <mutex>

#include "error.h"

#ifndef DR_BUILD_CUDA_STATUS
#define DR_BUILD_CUDA_STATUS "unknown"
#endif

namespace dualroute {
namespace {

struct Loaded {
  const CudaApi* api = nullptr;
  int devices = 0;
  std::string reason;
};

// The folder of the loaded addon, found from the address of one of its functions.
std::string addon_dir() {
  Dl_info info;
  if (dladdr(reinterpret_cast<void*>(&addon_dir), &info) && info.dli_fname) {
    std::string p = info.dli_fname;
    auto slash = p.find_last_of('/');
    if (slash != std::string::npos) return p.substr(0, slash);
  }
  return ".";
}

const Loaded& loaded() {
  static Loaded l;
  static std::once_flag once;
  std::call_once(once, [] {
    std::string path = addon_dir() + "/libdualroute_cuda.so";
    void* h = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (!h) {
      const char* e = dlerror();
      l.reason = std::string("the CUDA backend library could not be loaded (") + (e ? e : path) +
                 "); build status: " DR_BUILD_CUDA_STATUS;
      return;
    }
    using Entry = const CudaApi* (*)();
    auto entry = reinterpret_cast<Entry>(dlsym(h, "dualroute_cuda_api"));
    const CudaApi* api = entry ? entry() : nullptr;
    if (!api || api->abi_version != kCudaAbiVersion) {
      l.reason = "libdualroute_cuda.so does not match this addon (rebuild with npm run build)";
      return;
    }
    int n = api->init();
    if (n <= 0) {
      l.reason = std::string("CUDA is not usable: ") + (n < 0 ? api->last_error() : "no CUDA device found");
      return;
    }
    l.api = api;
    l.devices = n;
  });
  return l;
}

}  // namespace

const CudaApi* cuda_backend() { return loaded().api; }
std::string cuda_unavailable_reason() { return loaded().reason; }
int cuda_device_count() { return loaded().devices; }

const CudaApi& cuda_required() {
  const CudaApi* api = cuda_backend();
  if (!api) fail(ErrorCode::Device, "device 'cuda' is not available: ", cuda_unavailable_reason());
  return *api;
}

void cuda_check(int status, const char* what) {
  if (status == 0) return;
  const CudaApi* api = cuda_backend();
  std::string msg = api ? api->last_error() : "CUDA backend not loaded";
  // Index errors are the caller's, not the device's.
  if (msg.rfind("RangeError:", 0) == 0) fail(ErrorCode::Range, what, ": ", msg.substr(11));
  fail(ErrorCode::Device, what, " failed on cuda: ", msg);
}

}  // namespace dualroute
