// Dispatchers for the fused attention kernels and RoPE.
#include "common.h"

namespace dualroute {
namespace ops {
namespace {

const char* kOp = "attention";

bool same_shape(const T& t, std::initializer_list<int64_t> want) {
  if (t.ndim != static_cast<int>(want.size())) return false;
  int d = 0;
  for (int64_t w : want)
    if (t.shape[d++] != w) return false;
  return true;
}

DType stats_dtype(DType d) { return d == DType::F64 ? DType::F64 : DType::F32; }

void check_contig(const T& t, const char* arg, std::initializer_list<int64_t> shape, DType dtype) {
  DR_CHECK(same_shape(t, shape), Shape, kOp, ": ", arg, " has shape ", t.shape_string(), ", which does not fit");
  DR_CHECK(t.dtype == dtype, DType, kOp, ": ", arg, " must be ", dtype_name(dtype), ", got ", dtype_name(t.dtype));
  DR_CHECK(t.contiguous(), Internal, kOp, ": ", arg, " must be contiguous");
}

struct Prepared {
  AttnArgs a{};
  std::shared_ptr<const T> q, k, v, kp, qi;
};

Prepared prepare(const T& q, const T& k, const T& v, const AttnOptions& o) {
  same_device(kOp, {&q, &k, &v, o.key_padding, o.query_index});
  DR_CHECK(q.ndim == 4 && k.ndim == 4 && v.ndim == 4, Shape, kOp, ": q, k, v must be [batch, heads, seq, headDim], got ",
           q.shape_string(), ", ", k.shape_string(), ", ", v.shape_string());
  DR_CHECK(q.dtype == k.dtype && q.dtype == v.dtype && dtype_is_float(q.dtype), DType, kOp,
           ": q, k, v must share a float dtype, got ", dtype_name(q.dtype), ", ", dtype_name(k.dtype), ", ",
           dtype_name(v.dtype));
  const int64_t B = q.shape[0], Hq = q.shape[1], Sq = q.shape[2], D = q.shape[3];
  const int64_t Hkv = k.shape[1], Sk = k.shape[2];
  DR_CHECK(k.shape[0] == B && same_shape(v, {B, Hkv, Sk, D}) && k.shape[3] == D, Shape, kOp,
           ": k and v must be [", B, ", heads, Sk, ", D, "] alike, got ", k.shape_string(), " and ", v.shape_string());
  DR_CHECK(Hkv >= 1 && Hq % Hkv == 0, Shape, kOp, ": query heads (", Hq, ") must be a multiple of key/value heads (", Hkv, ")");
  DR_CHECK(Sk >= Sq, Shape, kOp, ": Sk (", Sk, ") must be >= Sq (", Sq, ")");
  DR_CHECK(o.mask == AttnMask::Global || o.window >= 1, Value, kOp, ": window must be >= 1, got ", o.window);
  Prepared p;
  p.q = contiguous(q);
  p.k = contiguous(k);
  p.v = contiguous(v);
  AttnArgs& a = p.a;
  a.dtype = static_cast<int32_t>(q.dtype);
  a.B = B;
  a.Hq = Hq;
  a.Hkv = Hkv;
  a.Sq = Sq;
  a.Sk = Sk;
  a.D = D;
  a.q = p.q->data();
  a.k = p.k->data();
  a.v = p.v->data();
  a.scale = o.scale;
  a.causal = o.causal ? 1 : 0;
  a.mask = static_cast<int32_t>(o.mask);
  a.window = o.mask == AttnMask::Global ? 1 : o.window;
  a.n = Sq;
  if (o.key_padding) {
    DR_CHECK(o.key_padding->dtype == DType::Bool && same_shape(*o.key_padding, {B, Sk}), Shape, kOp,
             ": keyPaddingMask must be bool [", B, ", ", Sk, "], got ", dtype_name(o.key_padding->dtype), " ",
             o.key_padding->shape_string());
    p.kp = contiguous(*o.key_padding);
    a.key_padding = static_cast<const uint8_t*>(p.kp->data());
  }
  if (o.query_index) {
    DR_CHECK(o.query_index->dtype == DType::I32 && o.query_index->ndim == 2 && o.query_index->shape[0] == B, Shape,
             kOp, ": queryIndex must be int32 [", B, ", n], got ", dtype_name(o.query_index->dtype), " ",
             o.query_index->shape_string());
    p.qi = contiguous(*o.query_index);
    a.query_index = static_cast<const int32_t*>(p.qi->data());
    a.n = o.query_index->shape[1];
  }
  return p;
}

}  // namespace

void attention_forward(const T& out, const T* lse, const T& q, const T& k, const T& v, const AttnOptions& o) {
  Prepared p = prepare(q, k, v, o);
  const AttnArgs& a = p.a;
  same_device(kOp, {&out, lse, &q});
  check_contig(out, "out", {a.B, a.Hq, a.n, a.D}, q.dtype);
  if (lse) check_contig(*lse, "lse", {a.B, a.Hq, a.n}, stats_dtype(q.dtype));
  void* po = out.data();
  void* pl = lse ? lse->data() : nullptr;
  DR_RUN(out, cpu::attention_forward(a, po, pl), attention_forward, &a, po, pl);
}

void attention_backward(const T& dq, const T& dk, const T& dv, const T& q, const T& k, const T& v, const T& out,
                        const T& dout, const T& lse, const AttnOptions& o) {
  Prepared p = prepare(q, k, v, o);
  const AttnArgs& a = p.a;
  same_device(kOp, {&dq, &dk, &dv, &out, &dout, &lse, &q});
  const DType acc = stats_dtype(q.dtype);
  check_contig(dq, "dq", {a.B, a.Hq, a.Sq, a.D}, acc);
  check_contig(dk, "dk", {a.B, a.Hkv, a.Sk, a.D}, acc);
  check_contig(dv, "dv", {a.B, a.Hkv, a.Sk, a.D}, acc);
  check_contig(lse, "lse", {a.B, a.Hq, a.n}, acc);
  auto oc = contiguous(out);
  auto dc = contiguous(dout);
  check_contig(*oc, "out", {a.B, a.Hq, a.n, a.D}, q.dtype);
  check_contig(*dc, "dout", {a.B, a.Hq, a.n, a.D}, q.dtype);
  const void *po = oc->data(), *pd = dc->data(), *pl = lse.data();
  void *pq = dq.data(), *pk = dk.data(), *pv = dv.data();
  DR_RUN(dq, cpu::attention_backward(a, po, pd, pl, pq, pk, pv), attention_backward, &a, po, pd, pl, pq, pk, pv);
}

namespace {

// The dual op's arguments: the local path's AttnArgs, the gates and the global rows, with the
// contiguous copies they point into.
struct PreparedDual {
  Prepared p;
  DualArgs d{};
  std::shared_ptr<const T> gates, rows;
};

PreparedDual prepare_dual(const T& q, const T& k, const T& v, const T& gates, const AttnOptions& o, const T* global_rows) {
  DR_CHECK(o.mask != AttnMask::Global, Value, "dualAttention: the local path needs a sliding or block mask");
  DR_CHECK(!o.query_index, Value, "dualAttention: pass the global rows as a mask, not a query index");
  PreparedDual pd;
  pd.p = prepare(q, k, v, o);
  const AttnArgs& a = pd.p.a;
  pd.d.a = a;
  same_device("dualAttention", {&gates, global_rows, &q});
  DR_CHECK(gates.dtype == q.dtype, DType, "dualAttention: gates must be ", dtype_name(q.dtype), ", got ",
           dtype_name(gates.dtype));
  const bool per_head = gates.ndim == 4;
  DR_CHECK(per_head ? same_shape(gates, {a.B, a.Hq, a.Sq, 2}) : same_shape(gates, {a.B, a.Sq, 2}), Shape,
           "dualAttention: gates must be [", a.B, ", ", a.Sq, ", 2] or [", a.B, ", ", a.Hq, ", ", a.Sq, ", 2], got ",
           gates.shape_string());
  pd.gates = contiguous(gates);
  pd.d.gates = pd.gates->data();
  pd.d.gates_per_head = per_head ? 1 : 0;
  if (global_rows) {
    DR_CHECK(global_rows->dtype == DType::Bool && same_shape(*global_rows, {a.B, a.Sq}), Shape,
             "dualAttention: global rows must be bool [", a.B, ", ", a.Sq, "]");
    pd.rows = contiguous(*global_rows);
    pd.d.global_rows = static_cast<const uint8_t*>(pd.rows->data());
  }
  return pd;
}

}  // namespace

void dual_attention_forward(const T& out, const T& out_local, const T& out_global, const T& lse_local,
                            const T& lse_global, const T& q, const T& k, const T& v, const T& gates,
                            const AttnOptions& o, const T* global_rows) {
  PreparedDual pd = prepare_dual(q, k, v, gates, o, global_rows);
  const DualArgs& d = pd.d;
  const AttnArgs& a = d.a;
  same_device("dualAttention", {&out, &out_local, &out_global, &lse_local, &lse_global, &q});
  for (const T* t : {&out, &out_local, &out_global}) check_contig(*t, "out", {a.B, a.Hq, a.Sq, a.D}, q.dtype);
  for (const T* t : {&lse_local, &lse_global}) check_contig(*t, "lse", {a.B, a.Hq, a.Sq}, stats_dtype(q.dtype));
  void *po = out.data(), *pl = out_local.data(), *pg = out_global.data(), *sl = lse_local.data(),
       *sg = lse_global.data();
  DR_RUN(out, cpu::dual_attention_forward(d, po, pl, pg, sl, sg), dual_attention_forward, &d, po, pl, pg, sl, sg);
}

void dual_attention_backward(const T& dq, const T& dk, const T& dv, const T& q, const T& k, const T& v,
                             const T& out_local, const T& out_global, const T& dout, const T& lse_local,
                             const T& lse_global, const T& gates, const AttnOptions& o, const T* global_rows) {
  PreparedDual pd = prepare_dual(q, k, v, gates, o, global_rows);
  const DualArgs& d = pd.d;
  const AttnArgs& a = d.a;
  same_device("dualAttention", {&dq, &dk, &dv, &out_local, &out_global, &dout, &lse_local, &lse_global, &q});
  const DType acc = stats_dtype(q.dtype);
  check_contig(dq, "dq", {a.B, a.Hq, a.Sq, a.D}, acc);
  check_contig(dk, "dk", {a.B, a.Hkv, a.Sk, a.D}, acc);
  check_contig(dv, "dv", {a.B, a.Hkv, a.Sk, a.D}, acc);
  for (const T* t : {&lse_local, &lse_global}) check_contig(*t, "lse", {a.B, a.Hq, a.Sq}, acc);
  auto ol = contiguous(out_local);
  auto og = contiguous(out_global);
  auto dc = contiguous(dout);
  for (const T* t : {ol.get(), og.get(), dc.get()}) check_contig(*t, "out", {a.B, a.Hq, a.Sq, a.D}, q.dtype);
  const void *pl = ol->data(), *pg = og->data(), *pdo = dc->data(), *sl = lse_local.data(), *sg = lse_global.data();
  void *pq = dq.data(), *pk = dk.data(), *pv = dv.data();
  DR_RUN(dq, cpu::dual_attention_backward(d, pl, pg, pdo, sl, sg, pq, pk, pv), dual_attention_backward, &d, pl, pg,
         pdo, sl, sg, pq, pk, pv);
}

void rope(const T& out, const T& x, const T& positions, double base, bool inverse) {
  same_device("rope", {&out, &x, &positions});
  DR_CHECK(x.ndim == 4 && x.shape[3] % 2 == 0, Shape, "rope: x must be [batch, heads, seq, headDim] with an even headDim, got ",
           x.shape_string());
  DR_CHECK(dtype_is_float(x.dtype), DType, "rope: x must be a float tensor, got ", dtype_name(x.dtype));
  DR_CHECK(positions.dtype == DType::I32 &&
               (same_shape(positions, {x.shape[2]}) || same_shape(positions, {x.shape[0], x.shape[2]})),
           Shape, "rope: positions must be int32 [", x.shape[2], "] or [", x.shape[0], ", ", x.shape[2], "], got ",
           dtype_name(positions.dtype), " ", positions.shape_string());
  DR_CHECK(base > 0, Value, "rope: base must be > 0, got ", base);
  check_contig(out, "out", {x.shape[0], x.shape[1], x.shape[2], x.shape[3]}, x.dtype);
  auto xc = contiguous(x);
  auto pc = contiguous(positions);
  View vo = out.view(), vx = xc->view(), vp = pc->view();
  DR_RUN(out, cpu::rope(vo, vx, vp, base, inverse), rope, &vo, &vx, &vp, base, inverse ? 1 : 0);
}

}  // namespace ops
}  // namespace dualroute
