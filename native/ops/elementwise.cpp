#include <cstring>

#include "common.h"

namespace dualroute {
namespace ops {

void same_device(const char* op, std::initializer_list<const T*> ts) {
  const T* first = nullptr;
  for (const T* t : ts) {
    if (!t) continue;
    if (!first) first = t;
    else if (t->device() != first->device())
      fail(ErrorCode::Device, op, ": expected all tensors on one device, got ", device_name(first->device()), " and ",
           device_name(t->device()));
  }
}

View broadcast_to(const T& x, const T& shape_of, const char* op, const char* arg) {
  View v = x.view();
  View r = shape_of.view();
  r.data = v.data;
  r.dtype = v.dtype;
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

static void same_shape(const char* op, const T& a, const T& b) {
  bool ok = a.ndim == b.ndim;
  for (int d = 0; ok && d < a.ndim; ++d) ok = a.shape[d] == b.shape[d];
  DR_CHECK(ok, Shape, op, ": expected shape ", a.shape_string(), ", got ", b.shape_string());
}

std::unique_ptr<T> contiguous_copy(const T& t) {
  std::vector<int64_t> shape(t.shape.begin(), t.shape.begin() + t.ndim);
  auto r = make_tensor(shape, t.dtype, t.device());
  copy(*r, t);
  return r;
}

std::shared_ptr<const T> contiguous(const T& t) {
  if (t.contiguous()) return std::shared_ptr<const T>(&t, [](const T*) {});
  return std::shared_ptr<const T>(contiguous_copy(t).release());
}

void fill(const T& out, double value) {
  View o = out.view();
  DR_RUN(out, cpu::fill(o, value), fill, &o, value);
}

void arange(const T& out, double start, double step) {
  DR_CHECK(out.contiguous(), Internal, "arange: output must be contiguous");
  View o = out.view();
  DR_RUN(out, cpu::arange(o, start, step), arange, &o, start, step);
}

void random(const T& out, RandomKind kind, uint64_t seed, uint64_t offset, double a, double b) {
  DR_CHECK(out.contiguous(), Internal, "random: output must be contiguous");
  View o = out.view();
  DR_RUN(out, cpu::random(o, kind, seed, offset, a, b), random, &o, static_cast<int32_t>(kind), seed, offset, a, b);
}

void copy(const T& out, const T& in) {
  same_device("copy", {&out, &in});
  same_shape("copy", out, in);
  View o = out.view(), i = in.view();
  DR_RUN(out, cpu::copy(o, i), copy, &o, &i);
}

std::unique_ptr<T> to_device(const T& src, DeviceKind device) {
  auto c = contiguous(src);
  std::vector<int64_t> shape(src.shape.begin(), src.shape.begin() + src.ndim);
  auto r = make_tensor(shape, src.dtype, device);
  const size_t bytes = static_cast<size_t>(src.numel()) * dtype_size(src.dtype);
  if (bytes == 0) return r;
  if (device == DeviceKind::CPU && src.device() == DeviceKind::CPU) {
    std::memcpy(r->data(), c->data(), bytes);
  } else {
    const CudaApi& api = cuda_required();
    int st = device == DeviceKind::CPU ? api.copy_d2h(r->data(), c->data(), bytes)
             : src.device() == DeviceKind::CPU ? api.copy_h2d(r->data(), c->data(), bytes)
                                                : api.copy_d2d(r->data(), c->data(), bytes);
    cuda_check(st, "to(device)");
  }
  return r;
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

void unary(UnaryOp op, const T& out, const T& x) {
  same_device("unary", {&out, &x});
  same_shape("unary", out, x);
  DR_CHECK(op < UnaryOp::Count, Value, "unary: unknown op ", static_cast<int>(op));
  View o = out.view(), i = x.view();
  DR_RUN(out, cpu::unary(op, o, i), unary, static_cast<int32_t>(op), &o, &i);
}

void binary(BinaryOp op, const T& out, const T& a, const T& b) {
  same_device("binary", {&out, &a, &b});
  DR_CHECK(op < BinaryOp::Count, Value, "binary: unknown op ", static_cast<int>(op));
  DR_CHECK(a.dtype == b.dtype, DType, "binary: operands must share a dtype, got ", dtype_name(a.dtype), " and ",
           dtype_name(b.dtype));
  View o = out.view(), va = broadcast_to(a, out, "binary", "a"), vb = broadcast_to(b, out, "binary", "b");
  DR_RUN(out, cpu::binary(op, o, va, vb), binary, static_cast<int32_t>(op), &o, &va, &vb);
}

void binary_scalar(BinaryOp op, const T& out, const T& a, double s, bool scalar_first) {
  same_device("binary", {&out, &a});
  same_shape("binary", out, a);
  DR_CHECK(op < BinaryOp::Count, Value, "binary: unknown op ", static_cast<int>(op));
  View o = out.view(), va = a.view();
  DR_RUN(out, cpu::binary_scalar(op, o, va, s, scalar_first), binary_scalar, static_cast<int32_t>(op), &o, &va, s,
         scalar_first ? 1 : 0);
}

void where(const T& out, const T& cond, const T& a, const T& b) {
  same_device("where", {&out, &cond, &a, &b});
  DR_CHECK(cond.dtype == DType::Bool, DType, "where: cond must be bool, got ", dtype_name(cond.dtype));
  View o = out.view(), vc = broadcast_to(cond, out, "where", "cond"), va = broadcast_to(a, out, "where", "a"),
       vb = broadcast_to(b, out, "where", "b");
  DR_RUN(out, cpu::where(o, vc, va, vb), where, &o, &vc, &va, &vb);
}

void swiglu(const T& out, const T& x) {
  same_device("swiglu", {&out, &x});
  auto xc = contiguous(x);
  DR_CHECK(out.contiguous() && x.ndim >= 1 && x.shape[x.ndim - 1] == 2 * out.shape[out.ndim - 1], Shape,
           "swiglu: bad shapes ", x.shape_string(), " -> ", out.shape_string());
  View o = out.view(), i = xc->view();
  DR_RUN(out, cpu::swiglu(o, i), swiglu, &o, &i);
}

}  // namespace ops
}  // namespace dualroute
