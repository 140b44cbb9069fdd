#include "tensor.h"

#include <cstdlib>
#include <map>
#include <mutex>
#include <sstream>

#include <sys/mman.h>

#include "cuda_backend.h"
#include "error.h"

namespace dualroute {

MemoryCounters& memory_counters() {
  static MemoryCounters* c = new MemoryCounters();  // never destroyed: storages may outlive statics
  return *c;
}

namespace {

// Large host buffers come from mmap, and a fresh one page-faults on every first touch: in 4 KiB
// pages that costs far more than the kernel that fills it. Blocks of 1.5 MiB or more are therefore
// 2 MiB aligned and advised as transparent huge pages (MADV_HUGEPAGE; the machines' THP mode is
// "madvise"; huge_span says which part): one fault per 2 MiB. bench/elementwise.ts's "large outputs" rows measure it (an
// exp into 64 MiB of fresh memory: 142 ms in 4 KiB pages against 5.3 ms in 2 MiB ones,
// bench/results/elementwise-cpu-2026-12-02g.json and -02f). DUALROUTE_CPU_HUGEPAGES=0 turns the
// advice off (an older VM once made fresh huge pages slower while the hypervisor had not backed
// the guest's memory). Freed blocks of 1 MiB or more are kept in size classes (1/8 of a power of two apart, so at most 12.5% is wasted) and handed
// out again, up to DUALROUTE_CPU_CACHE_MB (default 512) of cached bytes. Tensors and the
// buffers reads return (host_buffer_take) share the cache.
class HostCache {
 public:
  static constexpr size_t kMin = size_t(1) << 20;

  static size_t round(size_t bytes) {
    if (bytes < kMin) return (bytes + 63) / 64 * 64;
    int top = 63 - __builtin_clzll(bytes);
    size_t step = size_t(1) << (top - 3);
    return (bytes + step - 1) / step * step;
  }

  void* take(size_t rounded) {
    if (rounded < kMin) return nullptr;
    std::lock_guard<std::mutex> lk(mu_);
    auto it = free_.find(rounded);
    if (it == free_.end()) return nullptr;
    void* p = it->second;
    free_.erase(it);
    cached_ -= rounded;
    return p;
  }

  // True when the cache kept the block.
  bool give(void* p, size_t rounded) {
    if (rounded < kMin) return false;
    std::lock_guard<std::mutex> lk(mu_);
    if (cached_ + rounded > limit_) return false;
    free_.emplace(rounded, p);
    cached_ += rounded;
    return true;
  }

  void clear() {
    std::lock_guard<std::mutex> lk(mu_);
    for (auto& [sz, p] : free_) std::free(p);
    free_.clear();
    cached_ = 0;
  }

  size_t cached() {
    std::lock_guard<std::mutex> lk(mu_);
    return cached_;
  }

  size_t limit() const { return limit_; }

 private:
  std::mutex mu_;
  std::multimap<size_t, void*> free_;
  size_t cached_ = 0;
  size_t limit_ = [] {
    const char* s = std::getenv("DUALROUTE_CPU_CACHE_MB");
    long v = s ? std::atol(s) : 512;
    return static_cast<size_t>(v < 0 ? 0 : v) << 20;
  }();
};

HostCache& host_cache() {
  static HostCache* c = new HostCache();  // never destroyed: storages may outlive statics
  return *c;
}

}  // namespace

void cpu_empty_cache() { host_cache().clear(); }
int64_t cpu_cached_bytes() { return static_cast<int64_t>(host_cache().cached()); }
int64_t cpu_cache_limit() { return static_cast<int64_t>(host_cache().limit()); }

namespace {

constexpr size_t kHuge = size_t(2) << 20, kHugeMin = size_t(3) << 19;  // 2 MiB pages, from 1.5 MiB

size_t alloc_size(size_t bytes) {
  return bytes == 0 ? 64 : (bytes + 63) / 64 * 64;  // 64-byte aligned, padded to a cache line
}

// The bytes of a new block of `alloc` bytes advised as 2 MiB pages: its whole pages, and the
// last, partial one too where rounding up to it wastes at most a quarter of the block (a 1.6 MiB
// or 3.5 MiB block is all huge pages; a 3 MiB one is one huge page and 1 MiB of 4 KiB pages,
// which cost no more than they are touched). 0 below kHugeMin.
size_t huge_span(size_t alloc) {
  if (alloc < kHugeMin) return 0;
  const size_t up = (alloc + kHuge - 1) / kHuge * kHuge;
  return up - alloc <= alloc / 4 ? up : alloc / kHuge * kHuge;
}

// A new block: 2 MiB pages where it is large enough (see HostCache's comment).
void* host_new(size_t alloc) {
  static const bool huge = [] {
    const char* s = std::getenv("DUALROUTE_CPU_HUGEPAGES");
    return !(s && s[0] == '0');
  }();
  const size_t span = huge ? huge_span(alloc) : 0;
  if (span == 0) return std::aligned_alloc(64, alloc);
  // aligned_alloc wants a multiple of the alignment: the block's memory runs to the next 2 MiB
  void* p = std::aligned_alloc(kHuge, (alloc + kHuge - 1) / kHuge * kHuge);
#ifdef MADV_HUGEPAGE
  if (p) madvise(p, span, MADV_HUGEPAGE);  // advice only: failure is harmless
#endif
  return p;
}

// A cached block of the rounded size, else a new one (after emptying the cache once when
// memory runs out); nullptr when there is none.
void* host_take(size_t alloc) {
  void* p = host_cache().take(alloc);
  if (!p) p = host_new(alloc);
  if (!p) {
    host_cache().clear();
    p = host_new(alloc);
  }
  return p;
}

void host_give(void* p, size_t alloc) {
  if (!host_cache().give(p, alloc)) std::free(p);
}

void count(DeviceKind device, int64_t bytes, int64_t buffers) {
  auto& c = memory_counters();
  const int d = static_cast<int>(device);
  c.bytes[d] += bytes;
  c.buffers[d] += buffers;
  c.pending_external += bytes;
}

}  // namespace

void* host_buffer_take(size_t bytes) {
  void* p = host_take(HostCache::round(alloc_size(bytes)));
  if (!p) fail(ErrorCode::Memory, "out of host memory allocating ", bytes, " bytes");
  return p;
}

void host_buffer_give(void* p, size_t bytes) {
  if (p) host_give(p, HostCache::round(alloc_size(bytes)));
}

Storage::Storage(DeviceKind device, size_t bytes) : bytes_(bytes), device_(device) {
  if (device == DeviceKind::CPU) {
    // the memory comes on first use (materialize); limits are checked now, at the call
    DR_CHECK(bytes <= (size_t(1) << 50), Memory, "out of host memory: ", bytes, " bytes requested");
    return;
  }
  void* p = nullptr;
  const CudaApi& api = cuda_required();
  cuda_check(api.alloc(&p, alloc_size(bytes)), "cuda allocation");
  ptr_.store(p);
  count(device, static_cast<int64_t>(bytes), 1);
}

void* Storage::materialize() const {
  if (device_ != DeviceKind::CPU) return nullptr;  // an empty CUDA buffer owns no memory
  const size_t alloc = HostCache::round(alloc_size(bytes_));
  void* p = host_take(alloc);
  if (!p) fail(ErrorCode::Memory, "out of host memory allocating ", bytes_, " bytes");
  void* expected = nullptr;
  if (!ptr_.compare_exchange_strong(expected, p, std::memory_order_acq_rel)) {
    // another thread got there first (a transfer reading a never-written tensor, say)
    host_give(p, alloc);
    return expected;
  }
  count(device_, static_cast<int64_t>(bytes_), 1);
  return p;
}

Storage::~Storage() {
  void* p = ptr_.load();
  if (device_ == DeviceKind::CPU) {
    if (!p) return;  // never used: nothing was allocated or counted
    host_give(p, HostCache::round(alloc_size(bytes_)));
  } else if (const CudaApi* api = cuda_backend()) {
    api->release(p);  // returns the block to the caching allocator; cannot fail usefully here
  }
  count(device_, -static_cast<int64_t>(bytes_), -1);
}

std::string TensorImpl::shape_string() const {
  std::ostringstream os;
  os << "[";
  for (int i = 0; i < ndim; ++i) os << (i ? ", " : "") << shape[i];
  os << "]";
  return os.str();
}

int64_t check_elements(const int64_t* shape, int ndim) {
  bool zero = false;
  for (int i = 0; i < ndim; ++i) {
    DR_CHECK(shape[i] >= 0 && shape[i] <= kMaxElements, Shape, "dimension ", i, " (", shape[i],
             ") is outside [0, 2^36]: tensors have at most 2^36 elements");
    zero = zero || shape[i] == 0;
  }
  if (zero) return 0;
  int64_t n = 1;
  for (int i = 0; i < ndim; ++i) {
    DR_CHECK(n <= kMaxElements / shape[i], Shape, "a shape with more than 2^36 elements");
    n *= shape[i];
  }
  return n;
}

std::unique_ptr<TensorImpl> make_tensor(const std::vector<int64_t>& shape, DType dtype, DeviceKind device) {
  DR_CHECK(shape.size() <= static_cast<size_t>(kMaxDims), Shape, "tensors have at most ", kMaxDims,
           " dimensions, got ", shape.size());
  auto t = std::make_unique<TensorImpl>();
  t->dtype = dtype;
  t->ndim = static_cast<int>(shape.size());
  check_elements(shape.data(), t->ndim);
  int64_t n = 1;
  for (int i = t->ndim - 1; i >= 0; --i) {
    t->shape[i] = shape[i];
    t->strides[i] = n;
    n *= shape[i];
  }
  t->storage = std::make_shared<Storage>(device, static_cast<size_t>(n) * dtype_size(dtype));
  return t;
}

}  // namespace dualroute
