#include "tensor.h"

#include <cstdlib>
#include <sstream>

#include "cuda_backend.h"
#include "error.h"

namespace dualroute {

MemoryCounters& memory_counters() {
  static MemoryCounters* c = new MemoryCounters();  // never destroyed: storages may outlive statics
  return *c;
}

Storage::Storage(DeviceKind device, size_t bytes) : bytes_(bytes), device_(device) {
  size_t alloc = bytes == 0 ? 64 : (bytes + 63) / 64 * 64;  // 64-byte aligned, padded to a cache line
  if (device == DeviceKind::CPU) {
    ptr_ = std::aligned_alloc(64, alloc);
    if (!ptr_) fail(ErrorCode::Memory, "out of host memory allocating ", bytes, " bytes");
  } else {
    const CudaApi& api = cuda_required();
    cuda_check(api.alloc(&ptr_, alloc), "cuda allocation");
  }
  auto& c = memory_counters();
  int d = static_cast<int>(device);
  c.bytes[d] += static_cast<int64_t>(bytes);
  c.buffers[d] += 1;
  c.pending_external += static_cast<int64_t>(bytes);
}

Storage::~Storage() {
  if (device_ == DeviceKind::CPU) {
    std::free(ptr_);
  } else if (const CudaApi* api = cuda_backend()) {
    api->release(ptr_);  // returns the block to the caching allocator; cannot fail usefully here
  }
  auto& c = memory_counters();
  int d = static_cast<int>(device_);
  c.bytes[d] -= static_cast<int64_t>(bytes_);
  c.buffers[d] -= 1;
  c.pending_external -= static_cast<int64_t>(bytes_);
}

std::string TensorImpl::shape_string() const {
  std::ostringstream os;
  os << "[";
  for (int i = 0; i < ndim; ++i) os << (i ? ", " : "") << shape[i];
  os << "]";
  return os.str();
}

std::unique_ptr<TensorImpl> make_tensor(const std::vector<int64_t>& shape, DType dtype, DeviceKind device) {
  DR_CHECK(shape.size() <= static_cast<size_t>(kMaxDims), Shape, "tensors have at most ", kMaxDims,
           " dimensions, got ", shape.size());
  auto t = std::make_unique<TensorImpl>();
  t->dtype = dtype;
  t->ndim = static_cast<int>(shape.size());
  int64_t n = 1;
  for (int i = t->ndim - 1; i >= 0; --i) {
    DR_CHECK(shape[i] >= 0, Shape, "dimension ", i, " must be >= 0, got ", shape[i]);
    t->shape[i] = shape[i];
    t->strides[i] = n;
    DR_CHECK(shape[i] == 0 || n <= (int64_t(1) << 50) / shape[i], Memory, "tensor of shape too large");
    n *= shape[i];
  }
  t->storage = std::make_shared<Storage>(device, static_cast<size_t>(n) * dtype_size(dtype));
  return t;
}

}  // namespace dualroute
