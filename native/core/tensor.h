// Storage (an owned buffer on one device) and TensorImpl (a strided view of a storage).
// Views share storage through shared_ptr: a buffer lives while any tensor, or any async
// read in flight, refers to it.
#pragma once
#include <array>
#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "dtype.h"
#include "error.h"
#include "view.h"

namespace dualroute {

enum class DeviceKind : int32_t { CPU = 0, CUDA = 1 };
inline const char* device_name(DeviceKind d) { return d == DeviceKind::CPU ? "cpu" : "cuda"; }

// Process-wide byte and buffer counts per device (index = DeviceKind).
struct MemoryCounters {
  std::atomic<int64_t> bytes[2]{{0}, {0}};
  std::atomic<int64_t> buffers[2]{{0}, {0}};
  // Bytes freed or allocated since the addon last told V8 (AdjustExternalMemory runs on the
  // JS thread; storages may die on a worker thread).
  std::atomic<int64_t> pending_external{0};
};
MemoryCounters& memory_counters();

// The host block cache (see tensor.cpp): bytes held for reuse, and freeing them.
int64_t cpu_cached_bytes();
// The most bytes the cache keeps (DUALROUTE_CPU_CACHE_MB, default 512 MiB).
int64_t cpu_cache_limit();
void cpu_empty_cache();
// Host memory from the block cache tensors use (64-byte aligned; huge pages from 1.5 MiB): for
// buffers handed outside the tensor system, such as the ArrayBuffers reads return. Give a
// block back with the byte count it was taken with. Throws a Memory error when there is none.
void* host_buffer_take(size_t bytes);
void host_buffer_give(void* p, size_t bytes);

// What went wrong in a queued op (core/stream.h): the op's name, the error's code and message.
// Every storage that op wrote, and every storage computed from those, carries it ("poisoned"),
// so a read of any of them raises it instead of returning garbage.
struct OpFailure {
  ErrorCode code;
  std::string op;
  std::string message;
  mutable std::atomic<bool> reported{false};  // raised at a read (synchronize() raises the unreported)
  OpFailure(ErrorCode c, std::string o, std::string m) : code(c), op(std::move(o)), message(std::move(m)) {}
};

// A buffer on one device. CPU memory is allocated on first access to data(), which for an op's
// output is when the op runs on its stream, not when JavaScript queued it: buffers are then
// taken and given back in the order the ops run (a chain of ops reuses one warm buffer, as it
// did when ops ran at the call), and queued work holds no memory for outputs it has not made
// yet. This is the CPU side of stream-ordered allocation (CUDA's caching allocator is already
// stream-ordered: one CUDA stream). Only the thread running the storage's ops (its stream, or
// the JavaScript thread while that stream is idle) touches data().
class Storage {
 public:
  Storage(DeviceKind device, size_t bytes);  // uninitialised; throws MemoryError / DeviceError
  ~Storage();
  Storage(const Storage&) = delete;
  Storage& operator=(const Storage&) = delete;

  void* data() const {
    void* p = ptr_.load(std::memory_order_acquire);
    return p ? p : materialize();
  }
  size_t bytes() const { return bytes_; }
  DeviceKind device() const { return device_; }

  // The number (on its device's stream) of the last queued task that writes this storage; a
  // read needs that task done, and nothing else. Set on the thread that queues.
  uint64_t last_write() const { return last_write_.load(std::memory_order_acquire); }
  void set_last_write(uint64_t seq) { last_write_.store(seq, std::memory_order_release); }

  // The failure this storage's contents depend on, or null. Set and read on stream threads.
  std::shared_ptr<const OpFailure> poison() const {
    if (!poisoned_.load(std::memory_order_acquire)) return nullptr;  // the common case, no lock
    return std::atomic_load(&poison_);
  }
  void set_poison(std::shared_ptr<const OpFailure> f) {
    std::atomic_store(&poison_, std::move(f));
    poisoned_.store(true, std::memory_order_release);
  }

 private:
  std::shared_ptr<const OpFailure> poison_;
  std::atomic<bool> poisoned_{false};
  std::atomic<uint64_t> last_write_{0};
  void* materialize() const;  // allocates (CPU), throws MemoryError
  mutable std::atomic<void*> ptr_{nullptr};
  size_t bytes_ = 0;
  DeviceKind device_;
};

struct TensorImpl {
  std::shared_ptr<Storage> storage;
  int64_t offset = 0;  // elements
  DType dtype = DType::F32;
  int ndim = 0;
  std::array<int64_t, kMaxDims> shape{};
  std::array<int64_t, kMaxDims> strides{};

  DeviceKind device() const { return storage->device(); }
  int64_t numel() const {
    int64_t n = 1;
    for (int i = 0; i < ndim; ++i) n *= shape[i];
    return n;
  }
  // From the layout alone: a check at the call must not touch data() (that would allocate an
  // output's memory when the op is queued instead of when it runs, defeating stream-ordered
  // reuse: each queued op would hold a fresh buffer).
  bool contiguous() const { return view_contiguous(layout()); }
  void* data() const {
    return static_cast<char*>(storage->data()) + offset * dtype_size(dtype);
  }
  // The view's shape, strides and dtype without its data pointer (nullptr): for checks.
  View layout() const {
    View v;
    v.data = nullptr;
    v.dtype = static_cast<int32_t>(dtype);
    v.ndim = ndim;
    for (int i = 0; i < kMaxDims; ++i) {
      v.shape[i] = i < ndim ? shape[i] : 1;
      v.strides[i] = i < ndim ? strides[i] : 0;
    }
    return v;
  }
  View view() const {
    View v = layout();
    v.data = data();
    return v;
  }
  std::string shape_string() const;
};

// The most elements a tensor or view may have, and the largest dimension (lib/limits.ts says
// the same): past it, a ShapeError at the call.
constexpr int64_t kMaxElements = int64_t(1) << 36;
// The element count of a shape; a ShapeError when a dimension is negative or past kMaxElements,
// or the product passes it.
int64_t check_elements(const int64_t* shape, int ndim);

// A new contiguous tensor (uninitialised).
std::unique_ptr<TensorImpl> make_tensor(const std::vector<int64_t>& shape, DType dtype, DeviceKind device);

// A View with nothing behind it, for optional kernel arguments.
inline View null_view() {
  View v{};
  v.data = nullptr;
  return v;
}

}  // namespace dualroute
