// The element-wise family: fill, arange, random, copy, transfer, unary, binary, binaryScalar,
// where, swiglu; and the data helpers every family's run() uses (contiguous copies, reads).
#include <cstring>

#include "common.h"

namespace dualroute {
namespace ops {

// ---- helpers -----------------------------------------------------------------------------------

bool same_shape(const T& a, const T& b) {
  if (a.ndim != b.ndim) return false;
  for (int d = 0; d < a.ndim; ++d)
    if (a.shape[d] != b.shape[d]) return false;
  return true;
}

bool has_shape(const T& t, std::initializer_list<int64_t> shape) {
  if (t.ndim != static_cast<int>(shape.size())) return false;
  int d = 0;
  for (int64_t w : shape)
    if (t.shape[d++] != w) return false;
  return true;
}

void require_same_shape(const char* op, const char* arg, const T& t, const T& like, const char* like_name) {
  DR_CHECK(same_shape(t, like), Shape, op, ": Expected ", arg, " of shape ", like.shape_string(), " (the shape of ",
           like_name, ") but received ", t.shape_string());
}

void require_dtype(const char* op, const char* arg, const T& t, DType want) {
  DR_CHECK(t.dtype == want, DType, op, ": Expected ", dtype_name(want), " for ", arg, " but received ",
           dtype_name(t.dtype));
}

void require_contiguous(const char* op, const char* arg, const T& t) {
  DR_CHECK(t.contiguous(), Value, op, ": ", arg, " must be contiguous (it is written in place)");
}

void require_float(const char* op, const char* arg, const T& t) {
  DR_CHECK(dtype_is_float(t.dtype), DType, op, ": Expected a float tensor for ", arg, " but received ",
           dtype_name(t.dtype));
}

namespace {
View broadcast_layout(const T& x, const T& shape_of, const char* op, const char* arg) {
  View r = shape_of.layout();
  r.dtype = static_cast<int32_t>(x.dtype);
  const int off = shape_of.ndim - x.ndim;
  DR_CHECK(off >= 0, Shape, op, ": ", arg, " has more dimensions (", x.ndim, ") than the result (", shape_of.ndim, ")");
  for (int d = 0; d < shape_of.ndim; ++d) {
    int xd = d - off;
    if (xd < 0) {
      r.strides[d] = 0;
    } else if (x.shape[xd] == shape_of.shape[d]) {
      r.strides[d] = x.strides[xd];
    } else {
      DR_CHECK(x.shape[xd] == 1, Shape, op, ": ", arg, " of shape ", x.shape_string(), " cannot broadcast to ",
               shape_of.shape_string());
      r.strides[d] = 0;
    }
  }
  for (int d = shape_of.ndim; d < kMaxDims; ++d) r.strides[d] = 0;
  return r;
}
}  // namespace

View broadcast_to(const T& x, const T& shape_of, const char* op, const char* arg) {
  View r = broadcast_layout(x, shape_of, op, arg);
  r.data = x.data();
  return r;
}

void check_broadcast(const T& x, const T& shape_of, const char* op, const char* arg) {
  broadcast_layout(x, shape_of, op, arg);
}

std::unique_ptr<T> contiguous_copy(const T& t) {
  std::vector<int64_t> shape(t.shape.begin(), t.shape.begin() + t.ndim);
  auto r = make_tensor(shape, t.dtype, t.device());
  copy_into(*r, t);
  return r;
}

std::shared_ptr<const T> contiguous(const T& t) {
  if (t.contiguous()) return std::shared_ptr<const T>(&t, [](const T*) {});
  return std::shared_ptr<const T>(contiguous_copy(t).release());
}

void copy_into(const T& out, const T& in) {
  DR_CHECK(out.device() == in.device() && same_shape(out, in), Internal, "copy: ", in.shape_string(), " on ",
           device_name(in.device()), " into ", out.shape_string(), " on ", device_name(out.device()));
  View o = out.view(), i = in.view();
  DR_RUN(out, cpu::copy(o, i), copy, &o, &i);
}

void read_bytes(const T& t, void* dst) {
  auto c = contiguous(t);
  const size_t bytes = static_cast<size_t>(t.numel()) * dtype_size(t.dtype);
  if (bytes == 0) return;
  if (on_cpu(t)) std::memcpy(dst, c->data(), bytes);
  else cuda_check(cuda_required().copy_d2h(dst, c->data(), bytes), "data()");
}

void write_bytes(const T& t, const void* src) {
  DR_CHECK(t.contiguous(), Internal, "write_bytes: tensor must be contiguous");
  const size_t bytes = static_cast<size_t>(t.numel()) * dtype_size(t.dtype);
  if (bytes == 0) return;
  if (on_cpu(t)) std::memcpy(t.data(), src, bytes);
  else cuda_check(cuda_required().copy_h2d(t.data(), src, bytes), "tensor upload");
}

// ---- fill, arange, random ------------------------------------------------------------------------

void check(const Fill&) {}
void run(const Fill& a) {
  View o = a.out.view();
  DR_RUN(a.out, cpu::fill(o, a.value), fill, &o, a.value);
}

void check(const Arange& a) { require_contiguous("arange", "out", a.out); }
void run(const Arange& a) {
  View o = a.out.view();
  DR_RUN(a.out, cpu::arange(o, a.start, a.step), arange, &o, a.start, a.step);
}

void check(const Random& args) { require_contiguous("random", "out", args.out); }
void run(const Random& args) {
  View o = args.out.view();
  DR_RUN(args.out, cpu::random(o, args.kind, args.seed, args.offset, args.a, args.b), random, &o,
         static_cast<int32_t>(args.kind), args.seed, args.offset, args.a, args.b);
}

// ---- copies --------------------------------------------------------------------------------------

void check(const Copy& a) { require_same_shape("copy", "out", a.out, a.x, "x"); }
void run(const Copy& a) { copy_into(a.out, a.x); }

void check(const Transfer& a) {
  require_same_shape("transfer", "out", a.out, a.x, "x");
  require_dtype("transfer", "out", a.out, a.x.dtype);
  require_contiguous("transfer", "out", a.out);
}
void run(const Transfer& a) {
  const size_t bytes = static_cast<size_t>(a.x.numel()) * dtype_size(a.x.dtype);
  if (bytes == 0) return;
  auto c = contiguous(a.x);  // made on x's device
  if (on_cpu(a.out) && on_cpu(a.x)) {
    std::memcpy(a.out.data(), c->data(), bytes);
    return;
  }
  const CudaApi& api = cuda_required();
  int st = on_cpu(a.out) ? api.copy_d2h(a.out.data(), c->data(), bytes)
           : on_cpu(a.x) ? api.copy_h2d(a.out.data(), c->data(), bytes)
                         : api.copy_d2d(a.out.data(), c->data(), bytes);
  cuda_check(st, "to(device)");
}

// ---- unary, binary, where ------------------------------------------------------------------------

void check(const Unary& a) {
  const char* op = enum_name(a.op);
  require_same_shape(op, "out", a.out, a.x, "x");
  if (a.op == UnaryOp::LogicalNot) {
    require_dtype(op, "out", a.out, DType::Bool);
    return;
  }
  const bool int_ok = a.op == UnaryOp::Neg || a.op == UnaryOp::Abs || a.op == UnaryOp::Square || a.op == UnaryOp::Sign;
  DR_CHECK(dtype_is_float(a.x.dtype) || (int_ok && a.x.dtype == DType::I32), DType, op,
           ": Expected a float tensor", int_ok ? " or int32" : "", " for x but received ", dtype_name(a.x.dtype));
  require_dtype(op, "out", a.out, a.x.dtype);
}
void run(const Unary& a) {
  View o = a.out.view(), i = a.x.view();
  DR_RUN(a.out, cpu::unary(a.op, o, i), unary, static_cast<int32_t>(a.op), &o, &i);
}

static void check_binary_out(const char* op, BinaryOp code, const T& out, DType operands) {
  if (binary_is_compare(code)) {
    require_dtype(op, "out", out, DType::Bool);
  } else {
    DR_CHECK(operands != DType::Bool, DType, op, ": arithmetic on bool tensors is not supported (cast first)");
    require_dtype(op, "out", out, operands);
  }
}

void check(const Binary& args) {
  const char* op = enum_name(args.op);
  DR_CHECK(args.a.dtype == args.b.dtype, DType, op, ": operands must share a dtype, received ",
           dtype_name(args.a.dtype), " and ", dtype_name(args.b.dtype));
  check_binary_out(op, args.op, args.out, args.a.dtype);
  check_broadcast(args.a, args.out, op, "a");
  check_broadcast(args.b, args.out, op, "b");
}
void run(const Binary& args) {
  const char* op = enum_name(args.op);
  View o = args.out.view(), va = broadcast_to(args.a, args.out, op, "a"), vb = broadcast_to(args.b, args.out, op, "b");
  DR_RUN(args.out, cpu::binary(args.op, o, va, vb), binary, static_cast<int32_t>(args.op), &o, &va, &vb);
}

void check(const BinaryScalar& args) {
  const char* op = enum_name(args.op);
  require_same_shape(op, "out", args.out, args.a, "a");
  check_binary_out(op, args.op, args.out, args.a.dtype);
}
void run(const BinaryScalar& args) {
  View o = args.out.view(), va = args.a.view();
  DR_RUN(args.out, cpu::binary_scalar(args.op, o, va, args.scalar, args.scalarFirst), binary_scalar,
         static_cast<int32_t>(args.op), &o, &va, args.scalar, args.scalarFirst ? 1 : 0);
}

void check(const Where& args) {
  require_dtype("where", "cond", args.cond, DType::Bool);
  require_dtype("where", "b", args.b, args.a.dtype);
  require_dtype("where", "out", args.out, args.a.dtype);
  check_broadcast(args.cond, args.out, "where", "cond");
  check_broadcast(args.a, args.out, "where", "a");
  check_broadcast(args.b, args.out, "where", "b");
}
void run(const Where& args) {
  View o = args.out.view(), vc = broadcast_to(args.cond, args.out, "where", "cond"),
       va = broadcast_to(args.a, args.out, "where", "a"), vb = broadcast_to(args.b, args.out, "where", "b");
  DR_RUN(args.out, cpu::where(o, vc, va, vb), where, &o, &vc, &va, &vb);
}

void check(const Swiglu& a) {
  require_dtype("swiglu", "out", a.out, a.x.dtype);
  require_contiguous("swiglu", "out", a.out);
  bool ok = a.x.ndim >= 1 && a.out.ndim == a.x.ndim && a.x.shape[a.x.ndim - 1] == 2 * a.out.shape[a.out.ndim - 1];
  for (int d = 0; ok && d + 1 < a.x.ndim; ++d) ok = a.out.shape[d] == a.x.shape[d];
  DR_CHECK(ok, Shape, "swiglu: Expected out of x's shape with the last axis halved, received x ", a.x.shape_string(),
           " and out ", a.out.shape_string());
}
void run(const Swiglu& a) {
  auto xc = contiguous(a.x);
  View o = a.out.view(), i = xc->view();
  DR_RUN(a.out, cpu::swiglu(o, i), swiglu, &o, &i);
}

}  // namespace ops
}  // namespace dualroute
