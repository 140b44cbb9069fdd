// The N-API surface: tensor handles, argument reading, the op entries generated from the op
// table, the streams that run them, reads, and the mapping of dualroute::Error to JS errors
// (whose `code` lib/errors.ts maps to a typed class). No math here.
//
// Tensors cross into JS as numeric handles (slot index + generation, exact in a double) into
// a per-instance table, so the addon is context-aware and each worker_thread has its own
// tensors and its own streams. A released or never-issued handle throws DisposedError instead
// of touching memory.
//
// An op call (op_entry below): read the positional arguments into the op's argument struct,
// check devices and the dtype support table, ops::check() the shapes and values, queue
// ops::run() on the stream of the op's device, return. Errors of the first three are thrown
// at the call; errors while running fail the op (core/stream.h) and surface at a read.
#include <napi.h>

#include <chrono>
#include <cmath>
#include <atomic>
#include <cstring>
#include <fstream>
#include <functional>
#include <sstream>
#include <string>
#include <unordered_map>
#include <vector>

#include "../core/cuda_backend.h"
#include "../core/error.h"
#include "../core/op_args.h"
#include "../core/parallel.h"
#include "../core/stream.h"
#include "../cpu/kernels.h"
#include "../ops/ops.h"

namespace dualroute {
namespace {

constexpr double kSlotSpace = 16777216.0;  // 2^24 slots; the generation counts above that
constexpr double kMaxSafeInteger = 9007199254740992.0;
// Reads of at most this many bytes from an idle stream are copied at once on the JavaScript
// thread; larger ones, or reads behind queued work, run on the stream.
constexpr size_t kInlineReadBytes = size_t(1) << 20;

// What a read raises for a failure: the failing op named, the reason its own words.
Error failure_error(const OpFailure& f, const char* where) {
  f.reported.store(true);
  std::string msg = f.message;
  const std::string prefix = f.op + ": ";
  if (msg.compare(0, prefix.size(), prefix) == 0) msg.erase(0, prefix.size());
  return Error(f.code, f.op + " failed: " + msg + " (raised at " + where + ": the op ran earlier, queued, and " +
                           "this result depends on it)");
}

// ---- the instance: handles, streams, pending reads ------------------------------------------

struct Completion {
  uint64_t id;
  std::shared_ptr<const OpFailure> failure;
};

struct Instance {
  struct Slot {
    std::unique_ptr<TensorImpl> t;
    uint32_t gen = 0;
  };
  std::vector<Slot> slots;
  std::vector<uint32_t> free_slots;
  int64_t live[2] = {0, 0};

  std::unique_ptr<Stream> streams[2];
  // Reads (and synchronizeAsync calls) whose promise is pending: the stream thread posts
  // their completion through `completions`, which runs on the JavaScript thread.
  struct Pending {
    explicit Pending(Napi::Promise::Deferred d, Napi::Reference<Napi::ArrayBuffer> b = {})
        : deferred(d), buffer(std::move(b)) {}
    Napi::Promise::Deferred deferred;
    Napi::Reference<Napi::ArrayBuffer> buffer;  // the read's result; empty for synchronizeAsync and data(into)
    // data(into): the caller's array, and the host block the read is staged in (copied into
    // `into` by settle, on the JavaScript thread; the block goes back to the cache with this)
    Napi::Reference<Napi::TypedArray> into;
    std::shared_ptr<void> staging;
    size_t staging_bytes = 0;
  };
  std::unordered_map<uint64_t, Pending> pending;
  uint64_t next_id = 1;
  Napi::ThreadSafeFunction completions;
  bool closed = false;

  double add(std::unique_ptr<TensorImpl> t) {
    uint32_t i;
    if (!free_slots.empty()) {
      i = free_slots.back();
      free_slots.pop_back();
    } else {
      DR_CHECK(slots.size() < static_cast<size_t>(kSlotSpace), Memory, "too many live tensors (", slots.size(),
               "): dispose tensors you no longer need");
      i = static_cast<uint32_t>(slots.size());
      slots.emplace_back();
    }
    live[static_cast<int>(t->device())] += 1;
    slots[i].t = std::move(t);
    return static_cast<double>(slots[i].gen) * kSlotSpace + i;
  }

  Slot* find(double id) {
    if (!(id >= 0)) return nullptr;
    uint64_t u = static_cast<uint64_t>(id);
    uint32_t i = static_cast<uint32_t>(u % static_cast<uint64_t>(kSlotSpace));
    uint32_t gen = static_cast<uint32_t>(u / static_cast<uint64_t>(kSlotSpace));
    if (i >= slots.size() || slots[i].gen != gen || !slots[i].t) return nullptr;
    return &slots[i];
  }

  TensorImpl& get(double id, const char* op, const char* arg) {
    Slot* s = find(id);
    if (!s) fail(ErrorCode::Disposed, op, ": ", arg, ": the tensor was disposed (or is not a tensor handle)");
    return *s->t;
  }

  bool release(double id) {
    Slot* s = find(id);
    if (!s) return false;
    live[static_cast<int>(s->t->device())] -= 1;
    s->t.reset();
    s->gen = (s->gen + 1) & 0x1fffffff;
    free_slots.push_back(static_cast<uint32_t>(s - slots.data()));
    return true;
  }

  Stream& stream(DeviceKind d) {
    DR_CHECK(!closed, Internal, "the addon instance is shutting down");
    auto& s = streams[static_cast<int>(d)];
    if (!s) s = std::make_unique<Stream>(d);
    return *s;
  }
  Stream* existing(DeviceKind d) { return streams[static_cast<int>(d)].get(); }

  // Queues a task on device d's stream. A task touching another device too (a transfer) waits
  // for the work queued there, and that stream waits for it in turn, so both orders hold.
  void submit(std::unique_ptr<Task> task, DeviceKind d, const DeviceKind* other = nullptr) {
    Stream& s = stream(d);
    Stream* o = other && *other != d ? &stream(*other) : nullptr;
    if (o) {
      task->after = o;
      task->after_seq = o->submitted();
    }
    const StorageList writes = task->writes;
    const uint64_t seq = s.submit(std::move(task));
    for (Storage* w : writes) w->set_last_write(seq);
    if (o) {
      struct Fence final : Task {
        const char* name() const override { return "fence"; }
        void run() override {}
      };
      auto fence = std::make_unique<Fence>();
      fence->after = &s;
      fence->after_seq = seq;
      o->submit(std::move(fence));
    }
  }

  void add_pending(Napi::Env env, uint64_t id, Pending p) {
    if (pending.empty()) napi_ref_threadsafe_function(env, completions);
    pending.emplace(id, std::move(p));
  }

  // Ends every stream (letting running tasks finish) and forgets pending promises. Runs at
  // environment teardown (a worker ending, the process exiting) before N-API goes away.
  void close() {
    if (closed) return;
    closed = true;
    for (auto& s : streams)
      if (s) s->shutdown();
    for (auto& kv : pending) {
      kv.second.buffer.Reset();
      kv.second.into.Reset();
    }
    pending.clear();
    completions.Release();
  }

  ~Instance() { close(); }
};

Instance& inst(Napi::Env env) { return *env.GetInstanceData<Instance>(); }
Instance& inst(const Napi::CallbackInfo& info) { return inst(info.Env()); }

// Tells V8 how many native bytes tensors hold, so that its GC runs (and the FinalizationRegistry
// frees undisposed tensors) when they grow. V8 answers a report of growth by starting a
// collection, and with ops queued the JavaScript thread can allocate hundreds of outputs in a
// few milliseconds: reported one by one, that was a collection every few ops. Reports are
// therefore batched to at most one per kExternalReportMs (or at once past kExternalReportBytes).
constexpr int64_t kExternalReportMs = 100;
constexpr int64_t kExternalReportBytes = int64_t(1) << 30;
constexpr int64_t kExternalClockBytes = int64_t(1) << 20;

void sync_external_memory(Napi::Env env, bool force = false) {
  static thread_local int64_t last_ms = 0;
  static thread_local uint32_t calls = 0;
  auto& pending = memory_counters().pending_external;
  const int64_t d = pending.load(std::memory_order_relaxed);
  if (d == 0) return;
  const bool big = d >= kExternalReportBytes || d <= -kExternalReportBytes;
  // While less than kExternalClockBytes wait (tiny ops), the clock is read on every 64th call
  // only: reading it costs a tenth of a tiny op. Past that, on every call as before: holding back
  // the report of large tensors makes the one that follows big enough for V8 to answer with a
  // collection on the spot, which stalls the JavaScript thread (seen in bench/overhead.ts's
  // event-loop rows).
  if (!force && !big && d < kExternalClockBytes && d > -kExternalClockBytes && (++calls & 63) != 0) return;
  const int64_t now = std::chrono::duration_cast<std::chrono::milliseconds>(
                          std::chrono::steady_clock::now().time_since_epoch())
                          .count();
  if (!force && !big && now - last_ms < kExternalReportMs) return;
  last_ms = now;
  Napi::MemoryManagement::AdjustExternalMemory(env, pending.exchange(0));
}

Napi::Error to_js(Napi::Env env, ErrorCode code, const std::string& msg) {
  Napi::Error e = Napi::Error::New(env, msg);
  e.Set("code", Napi::String::New(env, error_code_name(code)));
  return e;
}

// Wraps a body so that C++ errors become JS exceptions and never unwind into V8.
template <typename F>
Napi::Value guarded(const Napi::CallbackInfo& info, F&& body) {
  Napi::Env env = info.Env();
  try {
    Napi::Value r = body();
    sync_external_memory(env);
    return r;
  } catch (const Error& e) {
    sync_external_memory(env);
    to_js(env, e.code(), e.what()).ThrowAsJavaScriptException();
  } catch (const Napi::Error& e) {
    throw;
  } catch (const std::bad_alloc&) {
    to_js(env, ErrorCode::Memory, "out of memory").ThrowAsJavaScriptException();
  } catch (const std::exception& e) {
    to_js(env, ErrorCode::Internal, std::string("internal error: ") + e.what()).ThrowAsJavaScriptException();
  }
  return env.Undefined();
}

#define DR_FN(name) Napi::Value name(const Napi::CallbackInfo& info)
#define DR_BODY(...) return guarded(info, [&]() -> Napi::Value { __VA_ARGS__ });

std::string describe(const Napi::Value& v) {
  switch (v.Type()) {
    case napi_undefined: return "undefined";
    case napi_null: return "null";
    case napi_boolean: return std::string("a boolean (") + (v.As<Napi::Boolean>().Value() ? "true" : "false") + ")";
    case napi_number: {
      std::ostringstream os;
      os << "the number " << v.As<Napi::Number>().DoubleValue();
      return os.str();
    }
    case napi_string: return "a string";
    case napi_object: return v.IsArray() ? "an array" : "an object";
    default: return "a value of another type";
  }
}

// Reads an op's positional arguments, in the order of its op table entry, naming the op and
// the argument in every error.
class ArgReader {
 public:
  ArgReader(const Napi::CallbackInfo& info, Instance& in, const char* op) : info_(info), in_(in), op_(op) {}

  void tensor(TensorImpl& dst, const char* name) { dst = in_.get(number(name, "a tensor handle"), op_, name); }
  void opt_tensor(OptTensor& dst, const char* name) {
    Napi::Value v = next();
    if (v.IsUndefined() || v.IsNull()) return;
    if (!v.IsNumber()) bad(name, "a tensor handle or null", v);
    double id = v.As<Napi::Number>().DoubleValue();
    if (id < 0) return;
    dst.reset(in_.get(id, op_, name));
  }
  void f64(double& dst, const char* name) { dst = number(name, "a number"); }
  void f32(float& dst, const char* name) { dst = static_cast<float>(number(name, "a number")); }
  void i32(int32_t& dst, const char* name) { dst = static_cast<int32_t>(integer(name, -2147483648.0, 2147483647.0)); }
  void i64(int64_t& dst, const char* name) { dst = static_cast<int64_t>(integer(name, -kMaxSafeInteger, kMaxSafeInteger)); }
  void u64(uint64_t& dst, const char* name) { dst = static_cast<uint64_t>(integer(name, 0, kMaxSafeInteger)); }
  void boolean(bool& dst, const char* name) {
    Napi::Value v = next();
    if (napi_get_value_bool(info_.Env(), v, &dst) != napi_ok) bad(name, "a boolean", v);
  }
  void int_list(std::vector<int>& dst, const char* name) {
    Napi::Value v = next();
    if (!v.IsArray()) bad(name, "an array of integers", v);
    Napi::Array a = v.As<Napi::Array>();
    dst.resize(a.Length());
    for (uint32_t k = 0; k < a.Length(); ++k) {
      Napi::Value e = a.Get(k);
      double d = e.IsNumber() ? e.As<Napi::Number>().DoubleValue() : NAN;
      if (!(d == std::floor(d) && std::fabs(d) <= 2147483647.0)) {
        fail(ErrorCode::Value, op_, ": Expected an integer for ", name, "[", k, "] but received ", describe(e));
      }
      dst[k] = static_cast<int>(d);
    }
  }
  template <typename E>
  void enumeration(E& dst, const char* name) {
    dst = static_cast<E>(integer(name, 0, static_cast<double>(static_cast<int>(E::Count) - 1)));
  }
  void finish(size_t count) {
    if (info_.Length() > count) {
      fail(ErrorCode::Value, op_, ": Expected ", count, " arguments but received ", info_.Length());
    }
  }

 private:
  Napi::Value next() { return i_ < info_.Length() ? info_[i_++] : (++i_, info_.Env().Undefined()); }
  [[noreturn]] void bad(const char* name, const char* want, const Napi::Value& v) {
    fail(ErrorCode::Value, op_, ": Expected ", want, " for ", name, " but received ", describe(v));
  }
  // (napi_get_value_double refuses a non-number itself: no napi_typeof first)
  double number(const char* name, const char* want) {
    Napi::Value v = next();
    double d;
    if (napi_get_value_double(info_.Env(), v, &d) != napi_ok) bad(name, want, v);
    return d;
  }
  double integer(const char* name, double lo, double hi) {
    Napi::Value v = next();
    double d;
    if (napi_get_value_double(info_.Env(), v, &d) != napi_ok) d = NAN;
    if (!(d == std::floor(d) && d >= lo && d <= hi)) {
      fail(ErrorCode::Value, op_, ": Expected an integer in [", lo, ", ", hi, "] for ", name, " but received ",
           describe(v));
    }
    return d;
  }

  const Napi::CallbackInfo& info_;
  Instance& in_;
  const char* op_;
  size_t i_ = 0;
};

#include "../generated/bindings.inc"

// ---- ops -------------------------------------------------------------------------------------

template <typename A>
class OpTask final : public Task {
 public:
  A args;
  const char* name() const override { return A::name; }
  void run() override { ops::run(args); }
  void collect() {
    args.for_each_tensor([&](const TensorImpl& t, Access access, const char*) {
      if (access != Access::Out) reads.push_back(t.storage.get());
      if (access != Access::In) writes.push_back(t.storage.get());
    });
  }
};

// One device for every tensor (except across a transfer), and a dtype the backend computes.
template <typename A>
void check_common(const A& a, DeviceKind* run_on, DeviceKind* other) {
  const TensorImpl& d = a.dtype_tensor();
  const DeviceKind dev = d.device();
  *run_on = dev;
  *other = dev;
  a.for_each_tensor([&](const TensorImpl& t, Access access, const char* name) {
    if (t.device() == dev) return;
    if (!A::cross_device) {
      fail(ErrorCode::Device, A::name, ": Expected every tensor on ", device_name(dev), " but ", name, " is on ",
           device_name(t.device()));
    }
    if (access != Access::In) *run_on = t.device();
    *other = t.device();
  });
  if (*other == *run_on) *other = dev;
  if (!supports(A::id, d.dtype, dev)) {
    fail(ErrorCode::DType, A::name, ": ", dtype_name(d.dtype), " is not supported on ", device_name(dev),
         " (supported: ", supported_dtypes(A::id, dev), ")");
  }
  if (dev == DeviceKind::CUDA || *other == DeviceKind::CUDA || *run_on == DeviceKind::CUDA) cuda_required();
}

// Small ops (A::inline_elements over all their tensors, from the op table) run at once on the
// JavaScript thread when their stream is idle: a thread hand-off costs more than the work, a
// queued output buffer goes cold in cache, and nothing is queued that the op could overtake.
// Larger ops, and any op behind queued work, go to the stream.

template <typename A>
bool run_inline(Instance& in, const A& a, DeviceKind run_on) {
  if (A::cross_device || run_on != DeviceKind::CPU) return false;
  Stream* s = in.existing(DeviceKind::CPU);
  if (s && !s->idle()) return false;
  int64_t elements = 0;
  a.for_each_tensor([&](const TensorImpl& t, Access, const char*) { elements += t.numel(); });
  return elements <= A::inline_elements;
}

// An op whose every written tensor is empty has nothing to do once its arguments are checked:
// it is not queued (kernels may then assume at least one output element, and divide by sizes).
template <typename A>
bool writes_nothing(const A& a) {
  bool nothing = true;
  a.for_each_tensor([&](const TensorImpl& t, Access access, const char*) {
    if (access != Access::In && t.numel() != 0) nothing = false;
  });
  return nothing;
}

template <typename A>
Napi::Value op_entry(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value {
    Instance& in = inst(info);
    OpTask<A> task;  // on the stack: a task run at once needs no allocation
    ArgReader r(info, in, A::name);
    read_args(r, task.args);
    DeviceKind run_on, other;
    check_common(task.args, &run_on, &other);
    ops::check(task.args);
    if (writes_nothing(task.args)) return info.Env().Undefined();
    task.collect();
    if (run_inline(in, task.args, run_on)) {
      in.stream(run_on).run_now(task);
    } else {
      auto queued = std::make_unique<OpTask<A>>();
      queued->args = std::move(task.args);
      queued->collect();
      in.submit(std::move(queued), run_on, &other);
    }
    return info.Env().Undefined();
  });
}

// ---- reads -----------------------------------------------------------------------------------

// Copies a tensor's elements, in order, into host memory the caller keeps alive; bfloat16
// widened to float32 when asked (what JavaScript reads: there is no bfloat16 array).
void read_elements(const TensorImpl& t, void* dst, bool widen) {
  if (!widen) return ops::read_bytes(t, dst);
  const size_t n = static_cast<size_t>(t.numel());
  void* tmp = host_buffer_take(n * 2);
  try {
    ops::read_bytes(t, tmp);
  } catch (...) {
    host_buffer_give(tmp, n * 2);
    throw;
  }
  const uint16_t* h = static_cast<const uint16_t*>(tmp);
  uint32_t* f = static_cast<uint32_t*>(dst);
  for (size_t i = 0; i < n; ++i) f[i] = static_cast<uint32_t>(h[i]) << 16;
  host_buffer_give(tmp, n * 2);
}

class ReadTask final : public Task {
 public:
  ReadTask(const TensorImpl& src, void* dst, bool widen) : src_(src), dst_(dst), widen_(widen) {
    reads.push_back(src_.storage.get());
  }
  const char* name() const override { return "read"; }
  void run() override { read_elements(src_, dst_, widen_); }
  void finish(const std::shared_ptr<const OpFailure>& failure) noexcept override {
    if (on_done) on_done(failure);
  }
  std::function<void(const std::shared_ptr<const OpFailure>&)> on_done;

 private:
  TensorImpl src_;
  void* dst_;
  bool widen_;
};

size_t byte_size(const TensorImpl& t) { return static_cast<size_t>(t.numel()) * dtype_size(t.dtype); }

// True when every queued task that writes the tensor's storage has run: it may be read at once
// on this thread (later queued tasks do not write it, nor may they until this call returns).
// CUDA tensors are read by their stream (the copy has to follow the launches on the device).
bool readable_now(Instance& in, const TensorImpl& t) {
  Stream* s = in.existing(t.device());
  if (!s) return true;
  if (t.device() != DeviceKind::CPU) return s->idle();
  return s->completed() >= t.storage->last_write();
}

// The task number a read of t waits for: the last queued write of its storage (CPU), or
// everything queued (CUDA).
uint64_t read_after(Stream& s, const TensorImpl& t) {
  return t.device() == DeviceKind::CPU ? t.storage->last_write() : s.submitted();
}

void read_now(const TensorImpl& t, void* dst, bool widen, const char* where) {
  if (auto f = t.storage->poison()) throw failure_error(*f, where);
  read_elements(t, dst, widen);
}

// Reads of this size or more return blocks of the host cache (see read_destination).
constexpr size_t kPooledReadMin = size_t(1) << 20;
// Bytes of such blocks handed to JavaScript and not yet given back.
std::atomic<int64_t> g_read_outstanding{0};

void give_read_buffer(napi_env, void* data, void* hint) {
  const size_t bytes = reinterpret_cast<size_t>(hint);
  host_buffer_give(data, bytes);
  g_read_outstanding.fetch_sub(static_cast<int64_t>(bytes));
}

void clear_exception(napi_env env) {
  bool pending = false;
  if (napi_is_exception_pending(env, &pending) == napi_ok && pending) {
    napi_value ignored;
    napi_get_and_clear_last_exception(env, &ignored);
  }
}

// The ArrayBuffer a read fills. A large one is a block of the host cache tensors use, handed
// back to it when JavaScript collects the buffer, so a program that reads in a loop copies into
// memory it already touched. Node returns a collected external buffer only on a later turn of
// the event loop, so a synchronous loop of reads keeps every one until it yields and the cache
// runs dry: the blocks then mapped fresh are in 2 MiB pages (host_new), 4 first-touch faults for
// 8 MiB, where the 2048 faults of the 4 KiB pages a Node Buffer or a fresh Float32Array gets
// cost 20-30 ms on these virtual machines (bench/elementwise.ts's "reads" rows). Such blocks
// outstanding are bounded by the cache's own limit (a loop that never yields must not hold
// without bound memory that only a later turn gives back); past it, for small reads, or where
// the runtime refuses external buffers, the buffer is a Node Buffer's memory (freed by the
// collector itself), not zero-filled first (the read writes every byte).
Napi::ArrayBuffer read_destination(Napi::Env env, size_t bytes) {
  const int64_t cap = std::max(cpu_cache_limit(), int64_t(64) << 20);
  if (bytes >= kPooledReadMin && g_read_outstanding.load() + static_cast<int64_t>(bytes) <= cap) {
    void* p = host_buffer_take(bytes);
    napi_value v;
    if (napi_create_external_arraybuffer(env, p, bytes, give_read_buffer, reinterpret_cast<void*>(bytes), &v) == napi_ok) {
      g_read_outstanding.fetch_add(static_cast<int64_t>(bytes));
      return Napi::ArrayBuffer(env, v);
    }
    host_buffer_give(p, bytes);
    clear_exception(env);
  }
  void* data = nullptr;
  napi_value buf, ab;
  if (napi_create_buffer(env, bytes, &data, &buf) != napi_ok ||
      napi_get_typedarray_info(env, buf, nullptr, nullptr, nullptr, &ab, nullptr) != napi_ok) {
    clear_exception(env);
    fail(ErrorCode::Memory, "out of memory allocating ", bytes, " bytes for the read");
  }
  return Napi::ArrayBuffer(env, ab);
}

// Reads return the elements widened when the tensor is bfloat16 (the second argument says so).
bool widen_arg(const Napi::CallbackInfo& info, const TensorImpl& t) {
  const bool widen = info.Length() >= 2 && info[1].IsBoolean() && info[1].As<Napi::Boolean>().Value();
  DR_CHECK(!widen || t.dtype == DType::BF16, Value, "read: only a bfloat16 tensor is widened, got ", dtype_name(t.dtype));
  return widen;
}

// The typed array a read writes into (dataSync(into), data(into)): exactly `bytes` long (the
// caller checked its type and length; the bytes are checked again here).
Napi::TypedArray into_arg(const Napi::CallbackInfo& info, size_t i, size_t bytes, const char* op) {
  DR_CHECK(info[i].IsTypedArray(), Value, op, ": expected a typed array");
  Napi::TypedArray ta = info[i].As<Napi::TypedArray>();
  DR_CHECK(ta.ByteLength() == bytes, Shape, op, ": the array holds ", ta.ByteLength(), " bytes, the read needs ", bytes);
  return ta;
}

// Its first element (napi_get_typedarray_info's own pointer: unlike ArrayBuffer().Data(), it
// also serves an array over a SharedArrayBuffer). Callers check the byte length first (0 once
// the buffer is detached).
uint8_t* into_data(const Napi::TypedArray& ta) {
  void* data = nullptr;
  napi_status st = napi_get_typedarray_info(ta.Env(), ta, nullptr, nullptr, &data, nullptr, nullptr);
  DR_CHECK(st == napi_ok, Value, "read(into): the array's memory could not be reached");
  return static_cast<uint8_t*>(data);
}

// readSync(handle, widen[, into]) -> ArrayBuffer, or `into` (a typed array of exactly the read's
// bytes, checked by the caller for its type and length) filled in place: a loop that reads into
// the same array touches no fresh memory at all.
DR_FN(ReadSync) {
  DR_BODY({
    Instance& in = inst(info);
    TensorImpl& t = in.get(info[0].IsNumber() ? info[0].As<Napi::Number>().DoubleValue() : -1, "dataSync()", "tensor");
    const bool widen = widen_arg(info, t);
    const size_t bytes = byte_size(t) * (widen ? 2 : 1);
    Napi::Value result;
    void* dst = nullptr;
    if (info.Length() >= 3 && !info[2].IsUndefined()) {
      Napi::TypedArray ta = into_arg(info, 2, bytes, "dataSync(into)");
      dst = into_data(ta);
      result = ta;
    } else {
      Napi::ArrayBuffer ab = read_destination(info.Env(), bytes);
      dst = ab.Data();
      result = ab;
    }
    if (readable_now(in, t)) {
      read_now(t, dst, widen, "dataSync()");
      return result;
    }
    struct Result {
      std::shared_ptr<const OpFailure> failure;
      std::atomic<bool> done{false};
    };
    auto state = std::make_shared<Result>();
    auto task = std::make_unique<ReadTask>(t, dst, widen);
    task->on_done = [state](const std::shared_ptr<const OpFailure>& f) {
      state->failure = f;
      state->done.store(true, std::memory_order_release);
    };
    Stream& s = in.stream(t.device());
    s.submit_read(std::move(task), read_after(s, t));
    // only the read (or a shutdown) ends this wait: no task wakes it
    s.wait_until([&] { return state->done.load(std::memory_order_acquire); }, UINT64_MAX);
    if (state->failure) throw failure_error(*state->failure, "dataSync()");
    return result;
  })
}

void settle(Napi::Env env, Napi::Function, Completion* c) {
  std::unique_ptr<Completion> owned(c);
  if (!env) return;  // the environment is being torn down: nobody waits any more
  // Runs from libuv, outside any JavaScript frame: nothing may throw past here. While a worker
  // is terminating, N-API calls fail (JavaScript can no longer run); the promise is then
  // dropped with the environment.
  try {
    Instance& in = inst(env);
    if (in.closed) return;
    auto it = in.pending.find(c->id);
    if (it == in.pending.end()) return;
    Instance::Pending p = std::move(it->second);
    in.pending.erase(it);
    if (in.pending.empty()) napi_unref_threadsafe_function(env, in.completions);
    Napi::HandleScope scope(env);
    const bool into = !p.into.IsEmpty();
    // the promise is settled whatever happens below: its entry is gone, and an exception
    // swallowed here would leave it pending for ever
    try {
      if (c->failure) {
        Error e = failure_error(*c->failure, into ? "data(into)" : p.buffer.IsEmpty() ? "synchronizeAsync()" : "data()");
        p.deferred.Reject(to_js(env, e.code(), e.what()).Value());
      } else if (into) {
        // the array may have been detached (transferred) while the read ran: its length is then 0
        Napi::TypedArray ta = p.into.Value();
        if (ta.ByteLength() != p.staging_bytes) {
          p.deferred.Reject(to_js(env, ErrorCode::Value, "data(into): the array was detached (transferred) while the read ran; it holds " +
                                                             std::to_string(ta.ByteLength()) + " bytes, the read " + std::to_string(p.staging_bytes)).Value());
        } else {
          std::memcpy(into_data(ta), p.staging.get(), p.staging_bytes);
          p.deferred.Resolve(ta);
        }
      } else if (p.buffer.IsEmpty()) {
        p.deferred.Resolve(env.Undefined());
      } else {
        p.deferred.Resolve(p.buffer.Value());
      }
    } catch (const Error& e) {
      p.deferred.Reject(to_js(env, e.code(), e.what()).Value());
    } catch (const std::exception& e) {
      p.deferred.Reject(to_js(env, ErrorCode::Internal, std::string("data(): ") + e.what()).Value());
    }
    sync_external_memory(env);
  } catch (...) {
  }
}

// Posts a completion to the JavaScript thread; dropped when the environment is going away.
void post(Instance& in, uint64_t id, const std::shared_ptr<const OpFailure>& failure) {
  auto* c = new Completion{id, failure};
  if (in.completions.NonBlockingCall(c, settle) != napi_ok) delete c;
}

// read(handle, widen[, into]) -> Promise<ArrayBuffer>, or Promise<into>
DR_FN(Read) {
  DR_BODY({
    Napi::Env env = info.Env();
    Instance& in = inst(info);
    const bool to_into = info.Length() >= 3 && !info[2].IsUndefined();
    const char* op = to_into ? "data(into)" : "data()";
    TensorImpl& t = in.get(info[0].IsNumber() ? info[0].As<Napi::Number>().DoubleValue() : -1, op, "tensor");
    const bool widen = widen_arg(info, t);
    const size_t bytes = byte_size(t) * (widen ? 2 : 1);
    Napi::TypedArray ta;
    Napi::ArrayBuffer ab;
    if (to_into) ta = into_arg(info, 2, bytes, op);
    else ab = read_destination(env, bytes);
    auto deferred = Napi::Promise::Deferred::New(env);
    Napi::Promise promise = deferred.Promise();
    // data(into) copies into `into` on this thread in any case (see below): when nothing queued
    // writes the tensor, at once, whatever its size
    if ((to_into || byte_size(t) <= kInlineReadBytes) && readable_now(in, t)) {
      try {
        read_now(t, to_into ? into_data(ta) : ab.Data(), widen, op);
        if (to_into) deferred.Resolve(ta);
        else deferred.Resolve(ab);
      } catch (const Error& e) {
        deferred.Reject(to_js(env, e.code(), e.what()).Value());
      }
      return promise;
    }
    const uint64_t id = in.next_id++;
    Instance::Pending pending(deferred);
    void* dst;
    if (to_into) {
      // staged: `into` is JavaScript's memory, which may be detached while the stream runs
      dst = host_buffer_take(bytes);
      pending.staging = std::shared_ptr<void>(dst, [bytes](void* q) { host_buffer_give(q, bytes); });
      pending.staging_bytes = bytes;
      pending.into = Napi::Persistent(ta);
    } else {
      dst = ab.Data();
      pending.buffer = Napi::Persistent(ab);
    }
    auto task = std::make_unique<ReadTask>(t, dst, widen);
    Instance* self = &in;
    task->on_done = [self, id](const std::shared_ptr<const OpFailure>& f) { post(*self, id, f); };
    in.add_pending(env, id, std::move(pending));
    Stream& s = in.stream(t.device());
    s.submit_read(std::move(task), read_after(s, t));
    return promise;
  })
}

// ---- tensors -------------------------------------------------------------------------------

double num(const Napi::CallbackInfo& info, size_t i, const char* what) {
  if (i >= info.Length() || !info[i].IsNumber()) fail(ErrorCode::Value, "expected a number for ", what);
  return info[i].As<Napi::Number>().DoubleValue();
}

std::vector<int64_t> int_list(const Napi::CallbackInfo& info, size_t i, const char* what) {
  if (i >= info.Length() || !info[i].IsArray()) fail(ErrorCode::Value, "expected an array for ", what);
  Napi::Array a = info[i].As<Napi::Array>();
  std::vector<int64_t> r(a.Length());
  for (uint32_t k = 0; k < a.Length(); ++k) {
    Napi::Value v = a.Get(k);
    if (!v.IsNumber()) fail(ErrorCode::Value, what, "[", k, "] must be a number");
    double d = v.As<Napi::Number>().DoubleValue();
    if (d != static_cast<double>(static_cast<int64_t>(d))) fail(ErrorCode::Value, what, "[", k, "] must be an integer, got ", d);
    r[k] = static_cast<int64_t>(d);
  }
  return r;
}

DType dtype_arg(const Napi::CallbackInfo& info, size_t i) {
  double d = num(info, i, "dtype");
  DR_CHECK(d >= 0 && d < kNumDTypes && d == std::floor(d), DType, "unknown dtype code ", d);
  return static_cast<DType>(static_cast<int>(d));
}
DeviceKind device_arg(const Napi::CallbackInfo& info, size_t i) {
  double d = num(info, i, "device");
  DR_CHECK(d == 0 || d == 1, Device, "unknown device code ", d);
  return static_cast<DeviceKind>(static_cast<int>(d));
}

Napi::Number handle(const Napi::CallbackInfo& info, std::unique_ptr<TensorImpl> t) {
  return Napi::Number::New(info.Env(), inst(info).add(std::move(t)));
}

DR_FN(Empty) {
  DR_BODY({
    DeviceKind dev = device_arg(info, 2);
    if (dev == DeviceKind::CUDA) cuda_required();
    return handle(info, make_tensor(int_list(info, 0, "shape"), dtype_arg(info, 1), dev));
  })
}

// Fills a new CUDA tensor from host bytes, in stream order (the block may be one that queued
// kernels were using a moment ago).
class UploadTask final : public Task {
 public:
  UploadTask(const TensorImpl& t, const uint8_t* src, size_t n) : t_(t), bytes_(src, src + n) {
    writes.push_back(t_.storage.get());
  }
  const char* name() const override { return "tensor upload"; }
  void run() override { ops::write_bytes(t_, bytes_.data()); }

 private:
  TensorImpl t_;
  std::vector<uint8_t> bytes_;
};

// fromBytes(bytes: Uint8Array, shape, dtype, device)
DR_FN(FromBytes) {
  DR_BODY({
    if (!info[0].IsTypedArray()) fail(ErrorCode::Value, "fromBytes: expected a Uint8Array");
    Napi::Uint8Array bytes = info[0].As<Napi::Uint8Array>();
    DeviceKind dev = device_arg(info, 3);
    if (dev == DeviceKind::CUDA) cuda_required();
    auto t = make_tensor(int_list(info, 1, "shape"), dtype_arg(info, 2), dev);
    size_t need = byte_size(*t);
    DR_CHECK(bytes.ByteLength() == need, Shape, "data has ", bytes.ByteLength(), " bytes, the shape needs ", need);
    if (dev == DeviceKind::CPU) {
      ops::write_bytes(*t, bytes.Data());  // a fresh storage: nothing queued can touch it yet
    } else if (need > 0) {
      inst(info).submit(std::make_unique<UploadTask>(*t, bytes.Data(), need), dev);
    }
    return handle(info, std::move(t));
  })
}

// A view of src's storage; the furthest element must lie inside the storage.
std::unique_ptr<TensorImpl> make_view(const TensorImpl& src, const std::vector<int64_t>& shape,
                                      const std::vector<int64_t>& strides, double offset) {
  DR_CHECK(shape.size() == strides.size() && shape.size() <= static_cast<size_t>(kMaxDims), Shape,
           "view: shape and strides must have the same length (at most ", kMaxDims, ")");
  check_elements(shape.data(), static_cast<int>(shape.size()));
  auto t = std::make_unique<TensorImpl>();
  t->storage = src.storage;
  t->dtype = src.dtype;
  t->offset = static_cast<int64_t>(offset);
  t->ndim = static_cast<int>(shape.size());
  int64_t hi = t->offset, numel = 1;
  for (int d = 0; d < t->ndim; ++d) {
    DR_CHECK(shape[d] >= 0 && strides[d] >= 0, Shape, "view: negative size or stride");
    t->shape[d] = shape[d];
    t->strides[d] = strides[d];
    numel *= shape[d];
    if (shape[d] > 0) hi += (shape[d] - 1) * strides[d];
  }
  int64_t cap = static_cast<int64_t>(src.storage->bytes() / dtype_size(src.dtype));
  DR_CHECK(t->offset >= 0 && (numel == 0 || hi < cap), Range, "view: elements up to ", hi,
           " exceed the storage of ", cap, " elements");
  return t;
}

// view(id, shape, strides, offset): a new handle on the same storage.
DR_FN(ViewOf) {
  DR_BODY({
    TensorImpl& src = inst(info).get(num(info, 0, "tensor"), "view", "tensor");
    auto shape = int_list(info, 1, "shape");
    auto strides = int_list(info, 2, "strides");
    return handle(info, make_view(src, shape, strides, num(info, 3, "offset")));
  })
}

// The fast forms of empty() and view() the library's ops use: the shape (and strides) come in
// the ArrayBuffer of a Float64Array (dims: shape in [0, ndim), strides in [8, 8 + ndim)) that
// JavaScript fills, which costs far less to read than a JavaScript array element by element
// (and than a frozen one).
std::vector<int64_t> dims_list(const Napi::CallbackInfo& info, size_t i, int ndim, int at, const char* what) {
  void* data = nullptr;
  size_t bytes = 0;
  if (i >= info.Length() || napi_get_arraybuffer_info(info.Env(), info[i], &data, &bytes) != napi_ok) {
    fail(ErrorCode::Value, "expected the ArrayBuffer of a Float64Array for ", what);
  }
  DR_CHECK(ndim >= 0 && ndim <= kMaxDims && (at + ndim) * sizeof(double) <= bytes, Shape,
           "tensors have at most ", kMaxDims, " dimensions, got ", ndim);
  const double* a = static_cast<const double*>(data);
  std::vector<int64_t> r(ndim);
  for (int k = 0; k < ndim; ++k) {
    const double d = a[at + k];
    if (!(d == std::floor(d) && std::fabs(d) <= kMaxSafeInteger)) fail(ErrorCode::Value, what, "[", k, "] must be an integer, got ", d);
    r[k] = static_cast<int64_t>(d);
  }
  return r;
}

int ndim_arg(const Napi::CallbackInfo& info, size_t i) {
  const double d = num(info, i, "ndim");
  DR_CHECK(d >= 0 && d <= kMaxDims && d == std::floor(d), Shape, "tensors have at most ", kMaxDims, " dimensions, got ", d);
  return static_cast<int>(d);
}

// emptyFrom(dims, ndim, dtype, device)
DR_FN(EmptyFrom) {
  DR_BODY({
    DeviceKind dev = device_arg(info, 3);
    if (dev == DeviceKind::CUDA) cuda_required();
    return handle(info, make_tensor(dims_list(info, 0, ndim_arg(info, 1), 0, "shape"), dtype_arg(info, 2), dev));
  })
}

// viewFrom(id, dims, ndim, offset)
DR_FN(ViewFrom) {
  DR_BODY({
    TensorImpl& src = inst(info).get(num(info, 0, "tensor"), "view", "tensor");
    const int ndim = ndim_arg(info, 2);
    return handle(info, make_view(src, dims_list(info, 1, ndim, 0, "shape"), dims_list(info, 1, ndim, kMaxDims, "strides"),
                                  num(info, 3, "offset")));
  })
}

// alias(id): a new handle on the same storage with the same layout (what saving a tensor for
// backward and Tensor.alias() need: view() without reading a shape and strides back from JS).
DR_FN(Alias) {
  DR_BODY({
    const TensorImpl& src = inst(info).get(num(info, 0, "tensor"), "alias", "tensor");
    return handle(info, std::make_unique<TensorImpl>(src));
  })
}

DR_FN(Release) {
  DR_BODY(return Napi::Boolean::New(info.Env(), inst(info).release(num(info, 0, "tensor")));)
}

DR_FN(IsLive) { DR_BODY(return Napi::Boolean::New(info.Env(), inst(info).find(num(info, 0, "tensor")) != nullptr);) }

// ---- streams ---------------------------------------------------------------------------------

void raise_unreported(Instance& in) {
  for (auto& s : in.streams)
    if (s)
      if (auto f = s->take_unreported()) throw failure_error(*f, "synchronize()");
}

// Waits for every queued op, then raises the first failure that no read has raised.
DR_FN(Synchronize) {
  DR_BODY({
    Instance& in = inst(info);
    for (auto& s : in.streams)
      if (s) s->wait_all();
    if (in.existing(DeviceKind::CUDA)) cuda_check(cuda_required().synchronize(), "synchronize");
    raise_unreported(in);
    return info.Env().Undefined();
  })
}

// The same without blocking: a promise settled when the work queued so far is done.
DR_FN(SynchronizeAsync) {
  DR_BODY({
    Napi::Env env = info.Env();
    Instance& in = inst(info);
    auto deferred = Napi::Promise::Deferred::New(env);
    Napi::Promise promise = deferred.Promise();
    Stream* cuda = in.existing(DeviceKind::CUDA);
    Stream* cpu = in.existing(DeviceKind::CPU);
    if ((!cuda || cuda->idle()) && (!cpu || cpu->idle())) {
      try {
        raise_unreported(in);
        deferred.Resolve(env.Undefined());
      } catch (const Error& e) {
        deferred.Reject(to_js(env, e.code(), e.what()).Value());
      }
      return promise;
    }
    // a barrier on the CPU stream that waits for the CUDA stream (and the device) as well
    struct Barrier final : Task {
      bool cuda = false;
      Instance* in = nullptr;
      std::vector<Stream*> streams;
      uint64_t id = 0;
      const char* name() const override { return "synchronizeAsync"; }
      void run() override {
        if (cuda) cuda_check(cuda_required().synchronize(), "synchronize");
      }
      void finish(const std::shared_ptr<const OpFailure>& f) noexcept override {
        std::shared_ptr<const OpFailure> first = f;
        for (Stream* s : streams)
          if (!first) first = s->take_unreported();
        post(*in, id, first);
      }
    };
    auto task = std::make_unique<Barrier>();
    task->cuda = cuda != nullptr;
    task->in = &in;
    task->streams.push_back(&in.stream(DeviceKind::CPU));
    if (cuda) task->streams.push_back(cuda);
    task->id = in.next_id++;
    in.add_pending(env, task->id, Instance::Pending(deferred));
    const DeviceKind other = DeviceKind::CUDA;
    in.submit(std::move(task), DeviceKind::CPU, cuda ? &other : nullptr);
    return promise;
  })
}

// {cpu: value(stream), cuda: value(stream)}, value(nullptr) for a stream not started yet.
template <typename F>
Napi::Object per_device(const Napi::CallbackInfo& info, F value) {
  Instance& in = inst(info);
  Napi::Object r = Napi::Object::New(info.Env());
  for (int d = 0; d < 2; ++d) r.Set(d == 0 ? "cpu" : "cuda", value(in.streams[d].get()));
  return r;
}

// Ops queued and not yet finished, per device.
DR_FN(PendingOps) {
  DR_BODY({
    return per_device(info, [&](Stream* s) {
      return Napi::Number::New(info.Env(), static_cast<double>(s ? s->submitted() - s->completed() : 0));
    });
  })
}

// How often a blocked waiter (dataSync, synchronize) was woken, per device: tests check that a
// wait behind many queued ops is woken once, not once per op.
DR_FN(StreamStats) {
  DR_BODY({
    return per_device(info, [&](Stream* s) {
      Napi::Object o = Napi::Object::New(info.Env());
      o.Set("waiterWakes", static_cast<double>(s ? s->waiter_wakes() : 0));
      return o;
    });
  })
}

// CPU kernel counters: calls that wrote their output around the caches (tests of that path).
DR_FN(CpuStats) {
  DR_BODY({
    Napi::Object o = Napi::Object::New(info.Env());
    o.Set("bypassedOutputs", static_cast<double>(cpu::bypassed_outputs()));
    return o;
  })
}

// ---- introspection -------------------------------------------------------------------------

std::string cpu_model_name() {
  std::ifstream f("/proc/cpuinfo");
  std::string line;
  while (std::getline(f, line)) {
    if (line.rfind("model name", 0) == 0) {
      auto p = line.find(':');
      if (p != std::string::npos) return line.substr(p + 2);
    }
  }
  return "unknown";
}

DR_FN(Devices) {
  DR_BODY({
    Napi::Env env = info.Env();
    Napi::Object r = Napi::Object::New(env);
    Napi::Object cpu = Napi::Object::New(env);
    cpu.Set("name", cpu_model_name());
    cpu.Set("threads", num_threads());
    cpu.Set("simd", cpu::isa_name());
    cpu.Set("features", cpu::cpu_features());
    r.Set("cpu", cpu);
    Napi::Object cuda = Napi::Object::New(env);
    const CudaApi* api = cuda_backend();
    cuda.Set("available", api != nullptr);
    cuda.Set("reason", cuda_unavailable_reason());
    cuda.Set("build", DR_BUILD_CUDA_STATUS);
    Napi::Array list = Napi::Array::New(env);
    if (api) {
      for (int d = 0; d < cuda_device_count(); ++d) {
        CudaDeviceInfo di{};
        cuda_check(api->device_info(d, &di), "device_info");
        Napi::Object o = Napi::Object::New(env);
        o.Set("name", di.name);
        o.Set("totalMemory", static_cast<double>(di.total_memory));
        o.Set("freeMemory", static_cast<double>(di.free_memory));
        o.Set("computeCapability", std::to_string(di.cc_major) + "." + std::to_string(di.cc_minor));
        o.Set("multiprocessors", di.multiprocessors);
        o.Set("cublasLt", di.cublaslt != 0);
        o.Set("cublasLtStatus", di.cublaslt_status);
        list.Set(static_cast<uint32_t>(d), o);
      }
    }
    cuda.Set("devices", list);
    r.Set("cuda", cuda);
    return r;
  })
}

DR_FN(Memory) {
  DR_BODY({
    Napi::Env env = info.Env();
    Instance& in = inst(info);
    auto& c = memory_counters();
    Napi::Object r = Napi::Object::New(env);
    for (int d = 0; d < 2; ++d) {
      Napi::Object o = Napi::Object::New(env);
      o.Set("tensors", static_cast<double>(in.live[d]));
      o.Set("bytes", static_cast<double>(c.bytes[d].load()));
      o.Set("buffers", static_cast<double>(c.buffers[d].load()));
      if (d == 0) o.Set("cachedBytes", static_cast<double>(cpu_cached_bytes()));
      r.Set(d == 0 ? "cpu" : "cuda", o);
    }
    if (const CudaApi* api = cuda_backend()) {
      CudaMemoryStats s{};
      if (api->memory_stats(&s) == 0) {
        Napi::Object o = r.Get("cuda").As<Napi::Object>();
        o.Set("reservedBytes", static_cast<double>(s.reserved_bytes));
      }
    }
    return r;
  })
}

DR_FN(NumThreads) { DR_BODY(return Napi::Number::New(info.Env(), num_threads());) }
DR_FN(SetNumThreads) {
  DR_BODY({
    double n = num(info, 0, "threads");
    DR_CHECK(n >= 1 && n <= 1024 && n == std::floor(n), Value, "setNumThreads: Expected an integer in 1..1024 but received ", n);
    set_num_threads(static_cast<int>(n));
    return info.Env().Undefined();
  })
}
// Sets (or, given undefined / null, removes) a variable of the process environment that the
// kernels read with getenv at each call (DUALROUTE_ATTN_BWD, DUALROUTE_CPU_STREAM_BYTES). For
// tests: Jest gives a test file a copy of process.env, whose writes never reach the C library.
DR_FN(SetEnv) {
  DR_BODY({
    DR_CHECK(info.Length() >= 1 && info[0].IsString(), Value, "setEnv: Expected name to be a string");
    const std::string name = info[0].As<Napi::String>().Utf8Value();
    DR_CHECK(!name.empty() && name.find('=') == std::string::npos, Value,
             "setEnv: Expected name to be a non-empty string without '=' but received '", name, "'");
    const bool unset = info.Length() < 2 || info[1].IsUndefined() || info[1].IsNull();
    DR_CHECK(unset || info[1].IsString(), Value, "setEnv: Expected value to be a string, undefined or null");
    if (unset) unsetenv(name.c_str());
    else setenv(name.c_str(), info[1].As<Napi::String>().Utf8Value().c_str(), 1);
    return info.Env().Undefined();
  })
}
DR_FN(EmptyCache) {
  DR_BODY({
    cpu_empty_cache();
    if (const CudaApi* api = cuda_backend()) cuda_check(api->empty_cache(), "emptyCache");
    return info.Env().Undefined();
  })
}

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  auto* in = new Instance();
  env.SetInstanceData<Instance>(in);
  // Completions of reads arrive through this; it keeps the event loop alive only while a read
  // is pending (Ref/Unref in add_pending/settle).
  in->completions = Napi::ThreadSafeFunction::New(env, Napi::Function::New(env, [](const Napi::CallbackInfo&) {}),
                                                  "dualroute.stream", 0, 1);
  in->completions.Unref(env);
  // Added after the completions function, so it runs before N-API tears that down: the
  // streams stop (the running task finishes) and nothing is posted afterwards.
  env.AddCleanupHook([in]() { in->close(); });

  struct Entry {
    const char* name;
    Napi::Value (*fn)(const Napi::CallbackInfo&);
  };
  static const Entry runtime[] = {
      {"empty", Empty},         {"fromBytes", FromBytes},     {"view", ViewOf},           {"alias", Alias},
      {"emptyFrom", EmptyFrom}, {"viewFrom", ViewFrom},
      {"release", Release},     {"isLive", IsLive},           {"readSync", ReadSync},
      {"read", Read},           {"devices", Devices},         {"memory", Memory},
      {"numThreads", NumThreads}, {"setNumThreads", SetNumThreads}, {"synchronize", Synchronize},
      {"synchronizeAsync", SynchronizeAsync}, {"pending", PendingOps}, {"emptyCache", EmptyCache},
      {"streamStats", StreamStats},
      {"cpuStats", CpuStats},
      {"setEnv", SetEnv},
  };
  for (const Entry& e : runtime) exports.Set(e.name, Napi::Function::New(env, e.fn, e.name));
#define DR_EXPORT_OP(js, Args) exports.Set(#js, Napi::Function::New(env, op_entry<ops::Args>, #js));
  DR_OPS(DR_EXPORT_OP)
#undef DR_EXPORT_OP
  return exports;
}

}  // namespace
}  // namespace dualroute

static Napi::Object InitDualroute(Napi::Env env, Napi::Object exports) { return dualroute::Init(env, exports); }
NODE_API_MODULE(dualroute, InitDualroute)
