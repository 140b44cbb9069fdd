// Loads libdualroute_cuda.so (built beside the addon) on first use. A missing library,
// driver or GPU leaves the CPU backend working; cuda_unavailable_reason() says why.
#pragma once
#include <string>

#include "../cuda/api.h"

namespace dualroute {

// The backend when CUDA is usable, else nullptr. Thread-safe; loads at most once.
const CudaApi* cuda_backend();
// Why cuda_backend() is null ("" when it is not).
std::string cuda_unavailable_reason();
int cuda_device_count();
// Throws DeviceError naming `what` with the backend's last error when status != 0.
void cuda_check(int status, const char* what);
// cuda_backend(), or a DeviceError explaining why CUDA cannot be used.
const CudaApi& cuda_required();

}  // namespace dualroute
