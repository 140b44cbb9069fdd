// The N-API surface: unwraps handles, reads arguments, calls the dispatchers in native/ops,
// and turns dualroute::Error into a JS Error whose `code` lib/errors.ts maps to a typed
// class. No math here.
//
// Tensors cross into JS as numeric handles (slot index + generation, exact in a double) into
// a per-instance table, so the addon is context-aware and each worker_thread has its own
// tensors. A released or never-issued handle throws DisposedError instead of touching memory.
#include <napi.h>

#include <cstring>
#include <fstream>
#include <string>
#include <vector>

#include "../core/cuda_backend.h"
#include "../core/error.h"
#include "../core/parallel.h"
#include "../cpu/kernels.h"
#include "../ops/ops.h"

namespace dualroute {
namespace {

constexpr double kSlotSpace = 16777216.0;  // 2^24 slots; the generation counts above that

struct Instance {
  struct Slot {
    std::unique_ptr<TensorImpl> t;
    uint32_t gen = 0;
  };
  std::vector<Slot> slots;
  std::vector<uint32_t> free_slots;
  int64_t live[2] = {0, 0};

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

  TensorImpl& get(double id, const char* arg) {
    Slot* s = find(id);
    if (!s) fail(ErrorCode::Disposed, arg, ": the tensor was disposed (or is not a tensor handle)");
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
};

Instance& inst(const Napi::CallbackInfo& info) { return *info.Env().GetInstanceData<Instance>(); }

void sync_external_memory(Napi::Env env) {
  int64_t d = memory_counters().pending_external.exchange(0);
  if (d != 0) Napi::MemoryManagement::AdjustExternalMemory(env, d);
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

double num(const Napi::CallbackInfo& info, size_t i, const char* what) {
  if (i >= info.Length() || !info[i].IsNumber()) fail(ErrorCode::Value, "expected a number for ", what);
  return info[i].As<Napi::Number>().DoubleValue();
}
int32_t i32(const Napi::CallbackInfo& info, size_t i, const char* what) { return static_cast<int32_t>(num(info, i, what)); }
bool flag(const Napi::CallbackInfo& info, size_t i) { return i < info.Length() && info[i].ToBoolean().Value(); }

TensorImpl& tensor(const Napi::CallbackInfo& info, size_t i, const char* what) {
  return inst(info).get(num(info, i, what), what);
}
// -1 (or undefined) means "none".
TensorImpl* opt_tensor(const Napi::CallbackInfo& info, size_t i, const char* what) {
  if (i >= info.Length() || info[i].IsUndefined() || info[i].IsNull()) return nullptr;
  double id = num(info, i, what);
  if (id < 0) return nullptr;
  return &inst(info).get(id, what);
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
  int32_t d = i32(info, i, "dtype");
  DR_CHECK(d >= 0 && d < kNumDTypes, DType, "unknown dtype code ", d);
  return static_cast<DType>(d);
}
DeviceKind device_arg(const Napi::CallbackInfo& info, size_t i) {
  int32_t d = i32(info, i, "device");
  DR_CHECK(d == 0 || d == 1, Device, "unknown device code ", d);
  return static_cast<DeviceKind>(d);
}

Napi::Number handle(const Napi::CallbackInfo& info, std::unique_ptr<TensorImpl> t) {
  return Napi::Number::New(info.Env(), inst(info).add(std::move(t)));
}

// ---- tensors -------------------------------------------------------------------------------

DR_FN(Empty) {
  DR_BODY(return handle(info, make_tensor(int_list(info, 0, "shape"), dtype_arg(info, 1), device_arg(info, 2)));)
}

// fromBytes(bytes: Uint8Array, shape, dtype, device)
DR_FN(FromBytes) {
  DR_BODY({
    if (!info[0].IsTypedArray()) fail(ErrorCode::Value, "fromBytes: expected a Uint8Array");
    Napi::Uint8Array bytes = info[0].As<Napi::Uint8Array>();
    auto t = make_tensor(int_list(info, 1, "shape"), dtype_arg(info, 2), device_arg(info, 3));
    size_t need = static_cast<size_t>(t->numel()) * dtype_size(t->dtype);
    DR_CHECK(bytes.ByteLength() == need, Shape, "data has ", bytes.ByteLength(), " bytes, the shape needs ", need);
    ops::write_bytes(*t, bytes.Data());
    return handle(info, std::move(t));
  })
}

// view(id, shape, strides, offset): a new handle on the same storage.
DR_FN(ViewOf) {
  DR_BODY({
    TensorImpl& src = tensor(info, 0, "tensor");
    auto shape = int_list(info, 1, "shape");
    auto strides = int_list(info, 2, "strides");
    double offset = num(info, 3, "offset");
    DR_CHECK(shape.size() == strides.size() && shape.size() <= static_cast<size_t>(kMaxDims), Shape,
             "view: shape and strides must have the same length (at most ", kMaxDims, ")");
    auto t = std::make_unique<TensorImpl>();
    t->storage = src.storage;
    t->dtype = src.dtype;
    t->offset = static_cast<int64_t>(offset);
    t->ndim = static_cast<int>(shape.size());
    // The furthest element must lie inside the storage.
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
    return handle(info, std::move(t));
  })
}

DR_FN(Release) {
  DR_BODY(return Napi::Boolean::New(info.Env(), inst(info).release(num(info, 0, "tensor")));)
}

DR_FN(IsLive) { DR_BODY(return Napi::Boolean::New(info.Env(), inst(info).find(num(info, 0, "tensor")) != nullptr);) }

DR_FN(ReadSync) {
  DR_BODY({
    TensorImpl& t = tensor(info, 0, "tensor");
    size_t bytes = static_cast<size_t>(t.numel()) * dtype_size(t.dtype);
    Napi::ArrayBuffer ab = Napi::ArrayBuffer::New(info.Env(), bytes);
    ops::read_bytes(t, ab.Data());
    return ab;
  })
}

// Copies a tensor to a new ArrayBuffer on a libuv worker; the storage is kept alive by the
// worker's own reference, so disposing the tensor meanwhile is safe.
class ReadWorker : public Napi::AsyncWorker {
 public:
  ReadWorker(Napi::Env env, const TensorImpl& t, Napi::ArrayBuffer ab)
      : Napi::AsyncWorker(env, "dualroute.read"), t_(t), deferred_(Napi::Promise::Deferred::New(env)) {
    ab_ = Napi::Persistent(ab);
    dst_ = ab.Data();
  }
  Napi::Promise promise() { return deferred_.Promise(); }
  void Execute() override {
    try {
      ops::read_bytes(t_, dst_);
    } catch (const Error& e) {
      code_ = e.code();
      SetError(e.what());
    } catch (const std::exception& e) {
      code_ = ErrorCode::Internal;
      SetError(e.what());
    }
  }
  void OnOK() override { deferred_.Resolve(ab_.Value()); }
  void OnError(const Napi::Error& e) override {
    deferred_.Reject(to_js(Env(), code_, e.Message()).Value());
  }

 private:
  TensorImpl t_;  // a copy: shares the storage
  Napi::Promise::Deferred deferred_;
  Napi::Reference<Napi::ArrayBuffer> ab_;
  void* dst_;
  ErrorCode code_ = ErrorCode::Internal;
};

DR_FN(Read) {
  DR_BODY({
    TensorImpl& t = tensor(info, 0, "tensor");
    size_t bytes = static_cast<size_t>(t.numel()) * dtype_size(t.dtype);
    auto* w = new ReadWorker(info.Env(), t, Napi::ArrayBuffer::New(info.Env(), bytes));
    Napi::Promise p = w->promise();
    w->Queue();
    return p;
  })
}

DR_FN(ToDevice) {
  DR_BODY(return handle(info, ops::to_device(tensor(info, 0, "tensor"), device_arg(info, 1)));)
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
    int n = i32(info, 0, "threads");
    DR_CHECK(n >= 1 && n <= 1024, Value, "setNumThreads: expected 1..1024, got ", n);
    set_num_threads(n);
    return info.Env().Undefined();
  })
}
DR_FN(Synchronize) {
  DR_BODY({
    if (const CudaApi* api = cuda_backend()) cuda_check(api->synchronize(), "synchronize");
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

// The op names in enum order, so lib/ checks its tables against the native ones.
#define DR_NAME(name, str) str,
const char* const kUnaryNames[] = {DR_UNARY_OPS(DR_NAME)};
const char* const kBinaryNames[] = {DR_BINARY_OPS(DR_NAME)};
#undef DR_NAME

DR_FN(OpNames) {
  DR_BODY({
    Napi::Env env = info.Env();
    Napi::Object r = Napi::Object::New(env);
    Napi::Array u = Napi::Array::New(env), b = Napi::Array::New(env);
    for (uint32_t i = 0; i < static_cast<uint32_t>(UnaryOp::Count); ++i) u.Set(i, kUnaryNames[i]);
    for (uint32_t i = 0; i < static_cast<uint32_t>(BinaryOp::Count); ++i) b.Set(i, kBinaryNames[i]);
    r.Set("unary", u);
    r.Set("binary", b);
    return r;
  })
}

// ---- ops -------------------------------------------------------------------------------------

DR_FN(Fill) { DR_BODY(ops::fill(tensor(info, 0, "out"), num(info, 1, "value")); return info.Env().Undefined();) }
DR_FN(Arange) {
  DR_BODY(ops::arange(tensor(info, 0, "out"), num(info, 1, "start"), num(info, 2, "step")); return info.Env().Undefined();)
}
// random(out, kind, seed, offset, a, b); seed and offset are integers below 2^53
DR_FN(Random) {
  DR_BODY({
    ops::random(tensor(info, 0, "out"), static_cast<RandomKind>(i32(info, 1, "kind")),
                static_cast<uint64_t>(num(info, 2, "seed")), static_cast<uint64_t>(num(info, 3, "offset")),
                num(info, 4, "a"), num(info, 5, "b"));
    return info.Env().Undefined();
  })
}
DR_FN(Copy) { DR_BODY(ops::copy(tensor(info, 0, "out"), tensor(info, 1, "x")); return info.Env().Undefined();) }
DR_FN(Unary) {
  DR_BODY(ops::unary(static_cast<UnaryOp>(i32(info, 0, "op")), tensor(info, 1, "out"), tensor(info, 2, "x"));
          return info.Env().Undefined();)
}
DR_FN(Binary) {
  DR_BODY(ops::binary(static_cast<BinaryOp>(i32(info, 0, "op")), tensor(info, 1, "out"), tensor(info, 2, "a"),
                      tensor(info, 3, "b"));
          return info.Env().Undefined();)
}
DR_FN(BinaryScalar) {
  DR_BODY(ops::binary_scalar(static_cast<BinaryOp>(i32(info, 0, "op")), tensor(info, 1, "out"), tensor(info, 2, "a"),
                             num(info, 3, "scalar"), flag(info, 4));
          return info.Env().Undefined();)
}
DR_FN(Where) {
  DR_BODY(ops::where(tensor(info, 0, "out"), tensor(info, 1, "cond"), tensor(info, 2, "a"), tensor(info, 3, "b"));
          return info.Env().Undefined();)
}
DR_FN(Reduce) {
  DR_BODY({
    auto axes64 = int_list(info, 3, "axes");
    std::vector<int> axes(axes64.begin(), axes64.end());
    ops::reduce(static_cast<ReduceOp>(i32(info, 0, "op")), tensor(info, 1, "out"), tensor(info, 2, "x"), axes);
    return info.Env().Undefined();
  })
}
DR_FN(ArgReduce) {
  DR_BODY(ops::arg_reduce(static_cast<ArgReduceOp>(i32(info, 0, "op")), tensor(info, 1, "out"), tensor(info, 2, "x"),
                          i32(info, 3, "axis"));
          return info.Env().Undefined();)
}
// matmul(out, a, b, transA, transB, alpha, beta)
DR_FN(Matmul) {
  DR_BODY(ops::matmul(tensor(info, 0, "out"), tensor(info, 1, "a"), tensor(info, 2, "b"), flag(info, 3), flag(info, 4),
                      static_cast<float>(num(info, 5, "alpha")), static_cast<float>(num(info, 6, "beta")));
          return info.Env().Undefined();)
}
DR_FN(Softmax) {
  DR_BODY(ops::softmax(tensor(info, 0, "out"), tensor(info, 1, "x"), i32(info, 2, "axis"), flag(info, 3));
          return info.Env().Undefined();)
}
// rmsNorm(out, x, weight|-1, eps, rstd|-1)
DR_FN(RmsNorm) {
  DR_BODY(ops::rms_norm(tensor(info, 0, "out"), tensor(info, 1, "x"), opt_tensor(info, 2, "weight"),
                        static_cast<float>(num(info, 3, "eps")), opt_tensor(info, 4, "rstd"));
          return info.Env().Undefined();)
}
// layerNorm(out, x, weight|-1, bias|-1, eps, mean|-1, rstd|-1)
DR_FN(LayerNorm) {
  DR_BODY(ops::layer_norm(tensor(info, 0, "out"), tensor(info, 1, "x"), opt_tensor(info, 2, "weight"),
                          opt_tensor(info, 3, "bias"), static_cast<float>(num(info, 4, "eps")),
                          opt_tensor(info, 5, "mean"), opt_tensor(info, 6, "rstd"));
          return info.Env().Undefined();)
}
DR_FN(Swiglu) { DR_BODY(ops::swiglu(tensor(info, 0, "out"), tensor(info, 1, "x")); return info.Env().Undefined();) }
DR_FN(Embedding) {
  DR_BODY(ops::embedding(tensor(info, 0, "out"), tensor(info, 1, "ids"), tensor(info, 2, "table"));
          return info.Env().Undefined();)
}
DR_FN(Gather) {
  DR_BODY(ops::gather(tensor(info, 0, "out"), tensor(info, 1, "x"), tensor(info, 2, "index"), i32(info, 3, "axis"));
          return info.Env().Undefined();)
}
DR_FN(ScatterAdd) {
  DR_BODY(ops::scatter_add(tensor(info, 0, "out"), tensor(info, 1, "index"), tensor(info, 2, "src"),
                           i32(info, 3, "axis"));
          return info.Env().Undefined();)
}
// crossEntropy(loss, logits, targets, ignoreIndex, smoothing, lse|-1)
DR_FN(CrossEntropy) {
  DR_BODY(ops::cross_entropy(tensor(info, 0, "loss"), tensor(info, 1, "logits"), tensor(info, 2, "targets"),
                             i32(info, 3, "ignoreIndex"), static_cast<float>(num(info, 4, "smoothing")),
                             opt_tensor(info, 5, "lse"));
          return info.Env().Undefined();)
}

// ---- backward kernels and optimizer steps ---------------------------------------------------

// softmaxBackward(dx, y, dy, axis, log)
DR_FN(SoftmaxBackward) {
  DR_BODY(ops::softmax_backward(tensor(info, 0, "dx"), tensor(info, 1, "y"), tensor(info, 2, "dy"),
                                i32(info, 3, "axis"), flag(info, 4));
          return info.Env().Undefined();)
}
// rmsNormBackward(dx, dweight|-1, x, weight|-1, rstd, dy)
DR_FN(RmsNormBackward) {
  DR_BODY(ops::rms_norm_backward(tensor(info, 0, "dx"), opt_tensor(info, 1, "dweight"), tensor(info, 2, "x"),
                                 opt_tensor(info, 3, "weight"), tensor(info, 4, "rstd"), tensor(info, 5, "dy"));
          return info.Env().Undefined();)
}
// layerNormBackward(dx, dweight|-1, dbias|-1, x, weight|-1, mean, rstd, dy)
DR_FN(LayerNormBackward) {
  DR_BODY(ops::layer_norm_backward(tensor(info, 0, "dx"), opt_tensor(info, 1, "dweight"), opt_tensor(info, 2, "dbias"),
                                   tensor(info, 3, "x"), opt_tensor(info, 4, "weight"), tensor(info, 5, "mean"),
                                   tensor(info, 6, "rstd"), tensor(info, 7, "dy"));
          return info.Env().Undefined();)
}
// crossEntropyBackward(dlogits, logits, targets, lse, dloss, ignoreIndex, smoothing)
DR_FN(CrossEntropyBackward) {
  DR_BODY(ops::cross_entropy_backward(tensor(info, 0, "dlogits"), tensor(info, 1, "logits"), tensor(info, 2, "targets"),
                                      tensor(info, 3, "lse"), tensor(info, 4, "dloss"), i32(info, 5, "ignoreIndex"),
                                      static_cast<float>(num(info, 6, "smoothing")));
          return info.Env().Undefined();)
}
// unaryBackward(op, dx, x, dy)
DR_FN(UnaryBackward) {
  DR_BODY(ops::unary_backward(static_cast<UnaryOp>(i32(info, 0, "op")), tensor(info, 1, "dx"), tensor(info, 2, "x"),
                              tensor(info, 3, "dy"));
          return info.Env().Undefined();)
}
// swigluBackward(dx, x, dy)
DR_FN(SwigluBackward) {
  DR_BODY(ops::swiglu_backward(tensor(info, 0, "dx"), tensor(info, 1, "x"), tensor(info, 2, "dy"));
          return info.Env().Undefined();)
}
// adamwStep(param, grad, expAvg, expAvgSq, lr, beta1, beta2, eps, weightDecay, step, gradScale)
DR_FN(AdamwStep) {
  DR_BODY({
    const double step = num(info, 9, "step");
    DR_CHECK(step >= 1 && step <= 9007199254740992.0 && step == static_cast<double>(static_cast<int64_t>(step)), Value,
             "adamwStep: step must be an integer >= 1, got ", step);
    ops::adamw_step(tensor(info, 0, "param"), tensor(info, 1, "grad"), tensor(info, 2, "expAvg"),
                    tensor(info, 3, "expAvgSq"), num(info, 4, "lr"), num(info, 5, "beta1"), num(info, 6, "beta2"),
                    num(info, 7, "eps"), num(info, 8, "weightDecay"), static_cast<int64_t>(step),
                    num(info, 10, "gradScale"));
    return info.Env().Undefined();
  })
}
// sgdStep(param, grad, momentumBuf|-1, lr, momentum, dampening, weightDecay, nesterov, firstStep, gradScale)
DR_FN(SgdStep) {
  DR_BODY(ops::sgd_step(tensor(info, 0, "param"), tensor(info, 1, "grad"), opt_tensor(info, 2, "momentumBuf"),
                        num(info, 3, "lr"), num(info, 4, "momentum"), num(info, 5, "dampening"),
                        num(info, 6, "weightDecay"), flag(info, 7), flag(info, 8), num(info, 9, "gradScale"));
          return info.Env().Undefined();)
}

// ---- attention ---------------------------------------------------------------------------------

ops::AttnOptions attn_options(const Napi::CallbackInfo& info, size_t i) {
  // (mask, causal, window, scale, keyPadding|-1, queryIndex|-1) starting at argument i
  ops::AttnOptions o;
  int32_t m = i32(info, i, "mask");
  DR_CHECK(m >= 0 && m <= 2, Value, "attention: unknown mask code ", m);
  o.mask = static_cast<AttnMask>(m);
  o.causal = flag(info, i + 1);
  o.window = static_cast<int64_t>(num(info, i + 2, "window"));
  o.scale = num(info, i + 3, "scale");
  o.key_padding = opt_tensor(info, i + 4, "keyPaddingMask");
  o.query_index = opt_tensor(info, i + 5, "queryIndex");
  return o;
}

// attentionForward(out, lse|-1, q, k, v, mask, causal, window, scale, keyPadding|-1, queryIndex|-1)
DR_FN(AttentionForward) {
  DR_BODY(ops::attention_forward(tensor(info, 0, "out"), opt_tensor(info, 1, "lse"), tensor(info, 2, "q"),
                                 tensor(info, 3, "k"), tensor(info, 4, "v"), attn_options(info, 5));
          return info.Env().Undefined();)
}
// attentionBackward(dq, dk, dv, q, k, v, out, dout, lse, mask, causal, window, scale, keyPadding|-1, queryIndex|-1)
DR_FN(AttentionBackward) {
  DR_BODY(ops::attention_backward(tensor(info, 0, "dq"), tensor(info, 1, "dk"), tensor(info, 2, "dv"),
                                  tensor(info, 3, "q"), tensor(info, 4, "k"), tensor(info, 5, "v"),
                                  tensor(info, 6, "out"), tensor(info, 7, "dout"), tensor(info, 8, "lse"),
                                  attn_options(info, 9));
          return info.Env().Undefined();)
}
// dualAttentionForward(out, outLocal, outGlobal, lseLocal, lseGlobal, q, k, v, gates, mask, causal, window,
//                      scale, keyPadding|-1, globalRows|-1)
DR_FN(DualAttentionForward) {
  DR_BODY({
    ops::AttnOptions o = attn_options(info, 9);
    const TensorImpl* rows = o.query_index;
    o.query_index = nullptr;
    ops::dual_attention_forward(tensor(info, 0, "out"), tensor(info, 1, "outLocal"), tensor(info, 2, "outGlobal"),
                                tensor(info, 3, "lseLocal"), tensor(info, 4, "lseGlobal"), tensor(info, 5, "q"),
                                tensor(info, 6, "k"), tensor(info, 7, "v"), tensor(info, 8, "gates"), o, rows);
    return info.Env().Undefined();
  })
}
// dualAttentionBackward(dq, dk, dv, q, k, v, outLocal, outGlobal, dout, lseLocal, lseGlobal, gates, mask, causal,
//                       window, scale, keyPadding|-1, globalRows|-1)
DR_FN(DualAttentionBackward) {
  DR_BODY({
    ops::AttnOptions o = attn_options(info, 12);
    const TensorImpl* rows = o.query_index;
    o.query_index = nullptr;
    ops::dual_attention_backward(tensor(info, 0, "dq"), tensor(info, 1, "dk"), tensor(info, 2, "dv"), tensor(info, 3, "q"),
                                 tensor(info, 4, "k"), tensor(info, 5, "v"), tensor(info, 6, "outLocal"),
                                 tensor(info, 7, "outGlobal"), tensor(info, 8, "dout"), tensor(info, 9, "lseLocal"),
                                 tensor(info, 10, "lseGlobal"), tensor(info, 11, "gates"), o, rows);
    return info.Env().Undefined();
  })
}
// rope(out, x, positions, base, inverse)
DR_FN(Rope) {
  DR_BODY(ops::rope(tensor(info, 0, "out"), tensor(info, 1, "x"), tensor(info, 2, "positions"), num(info, 3, "base"),
                    flag(info, 4));
          return info.Env().Undefined();)
}

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  env.SetInstanceData<Instance>(new Instance());
  struct Entry {
    const char* name;
    Napi::Value (*fn)(const Napi::CallbackInfo&);
  };
  static const Entry entries[] = {
      {"empty", Empty},         {"fromBytes", FromBytes},     {"view", ViewOf},
      {"release", Release},     {"isLive", IsLive},           {"readSync", ReadSync},
      {"read", Read},           {"toDevice", ToDevice},       {"devices", Devices},
      {"memory", Memory},       {"numThreads", NumThreads},   {"setNumThreads", SetNumThreads},
      {"synchronize", Synchronize}, {"emptyCache", EmptyCache}, {"opNames", OpNames},
      {"fill", Fill},           {"arange", Arange},           {"random", Random},
      {"copy", Copy},           {"unary", Unary},             {"binary", Binary},
      {"binaryScalar", BinaryScalar}, {"where", Where},       {"reduce", Reduce},
      {"argReduce", ArgReduce}, {"matmul", Matmul},           {"softmax", Softmax},
      {"rmsNorm", RmsNorm},     {"layerNorm", LayerNorm},     {"swiglu", Swiglu},
      {"embedding", Embedding}, {"gather", Gather},           {"scatterAdd", ScatterAdd},
      {"crossEntropy", CrossEntropy},
      {"softmaxBackward", SoftmaxBackward}, {"rmsNormBackward", RmsNormBackward},
      {"layerNormBackward", LayerNormBackward}, {"crossEntropyBackward", CrossEntropyBackward},
      {"unaryBackward", UnaryBackward}, {"swigluBackward", SwigluBackward},
      {"adamwStep", AdamwStep}, {"sgdStep", SgdStep}, {"attentionForward", AttentionForward}, {"attentionBackward", AttentionBackward},
      {"dualAttentionForward", DualAttentionForward},
      {"dualAttentionBackward", DualAttentionBackward}, {"rope", Rope},
  };
  for (const Entry& e : entries) exports.Set(e.name, Napi::Function::New(env, e.fn, e.name));
  return exports;
}

}  // namespace
}  // namespace dualroute

static Napi::Object InitDualroute(Napi::Env env, Napi::Object exports) { return dualroute::Init(env, exports); }
NODE_API_MODULE(dualroute, InitDualroute)
