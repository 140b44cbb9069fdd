// The attention family: fused attention forward/backward (global and local masks), the dual
// kernel (both paths in one pass) and RoPE. The kernel contract is core/attention.h.
#include "common.h"

namespace dualroute {
namespace ops {
namespace {

const char* kOp = "attention";

// The options every attention op takes, as the op table names them.
struct Opts {
  AttnMask mask;
  bool causal;
  int64_t window;
  double scale;
  const T* key_padding;
  const T* query_index;  // attention ops only; the dual op's global rows are separate
  const T* query_count = nullptr;
};

template <typename A>
Opts opts_of(const A& a, const T* query_index, const T* query_count = nullptr) {
  return Opts{a.mask, a.causal, a.window, a.scale, a.keyPadding.get(), query_index, query_count};
}

void check_shaped(const T& t, const char* arg, std::initializer_list<int64_t> shape, DType dtype, bool written) {
  DR_CHECK(has_shape(t, shape), Shape, kOp, ": ", arg, " has shape ", t.shape_string(), ", which does not fit");
  require_dtype(kOp, arg, t, dtype);
  if (written) require_contiguous(kOp, arg, t);
}

// Shapes of q [B, Hq, Sq, D], k/v [B, Hkv, Sk, D] and the options; returns n (the query rows).
int64_t check_qkv(const T& q, const T& k, const T& v, const Opts& o) {
  DR_CHECK(q.ndim == 4 && k.ndim == 4 && v.ndim == 4, Shape, kOp,
           ": q, k, v must be [batch, heads, seq, headDim], received ", q.shape_string(), ", ", k.shape_string(), ", ",
           v.shape_string());
  DR_CHECK(q.dtype == k.dtype && q.dtype == v.dtype, DType, kOp, ": q, k, v must share a dtype, received ",
           dtype_name(q.dtype), ", ", dtype_name(k.dtype), ", ", dtype_name(v.dtype));
  const int64_t B = q.shape[0], Hq = q.shape[1], Sq = q.shape[2], D = q.shape[3];
  const int64_t Hkv = k.shape[1], Sk = k.shape[2];
  DR_CHECK(k.shape[0] == B && has_shape(v, {B, Hkv, Sk, D}) && k.shape[3] == D, Shape, kOp, ": k and v must be [", B,
           ", heads, Sk, ", D, "] alike, received ", k.shape_string(), " and ", v.shape_string());
  DR_CHECK(Hkv >= 1 && Hq % Hkv == 0, Shape, kOp, ": query heads (", Hq, ") must be a multiple of key/value heads (",
           Hkv, ")");
  // fewer keys than queries is cross-attention (query i sits at position i + Sk - Sq, so the
  // window masks still line up the newest query with the newest key); causal would leave the
  // first queries before every key
  DR_CHECK(Sk >= Sq || !o.causal, Shape, kOp, ": causal attention needs Sk (", Sk, ") >= Sq (", Sq, ")");
  DR_CHECK(o.mask == AttnMask::Global || o.window >= 1, Value, kOp, ": window must be >= 1, received ", o.window);
  if (o.key_padding) {
    DR_CHECK(o.key_padding->dtype == DType::Bool && has_shape(*o.key_padding, {B, Sk}), Shape, kOp,
             ": keyPadding must be bool [", B, ", ", Sk, "], received ", dtype_name(o.key_padding->dtype), " ",
             o.key_padding->shape_string());
  }
  if (o.query_index) {
    DR_CHECK(o.query_index->dtype == DType::I32 && o.query_index->ndim == 2 && o.query_index->shape[0] == B, Shape,
             kOp, ": queryIndex must be int32 [", B, ", n], received ", dtype_name(o.query_index->dtype), " ",
             o.query_index->shape_string());
    if (o.query_count) {
      DR_CHECK(o.query_count->dtype == DType::I32 && has_shape(*o.query_count, {B}), Shape, kOp,
               ": queryCount must be int32 [", B, "], received ", dtype_name(o.query_count->dtype), " ",
               o.query_count->shape_string());
    }
    return o.query_index->shape[1];
  }
  DR_CHECK(!o.query_count, Value, kOp, ": queryCount needs a queryIndex (it counts the real rows of each)");
  return Sq;
}

// dq [B, Hq, Sq, D], dk and dv [B, Hkv, Sk, D]: contiguous float32 (float64) accumulators.
template <typename A>
void check_accumulators(const A& a) {
  const int64_t B = a.q.shape[0], Hq = a.q.shape[1], Sq = a.q.shape[2], D = a.q.shape[3];
  const int64_t Hkv = a.k.shape[1], Sk = a.k.shape[2];
  const DType acc = stats_dtype(a.q.dtype);
  check_shaped(a.dq, "dq", {B, Hq, Sq, D}, acc, true);
  check_shaped(a.dk, "dk", {B, Hkv, Sk, D}, acc, true);
  check_shaped(a.dv, "dv", {B, Hkv, Sk, D}, acc, true);
}

// The kernel arguments, with the contiguous copies they point into.
struct Prepared {
  AttnArgs a{};
  std::shared_ptr<const T> q, k, v, kp, qi, qc;
};

Prepared prepare(const T& q, const T& k, const T& v, const Opts& o) {
  Prepared p;
  p.q = contiguous(q);
  p.k = contiguous(k);
  p.v = contiguous(v);
  AttnArgs& a = p.a;
  a.dtype = static_cast<int32_t>(q.dtype);
  a.B = q.shape[0];
  a.Hq = q.shape[1];
  a.Hkv = k.shape[1];
  a.Sq = q.shape[2];
  a.Sk = k.shape[2];
  a.D = q.shape[3];
  a.q = p.q->data();
  a.k = p.k->data();
  a.v = p.v->data();
  a.scale = o.scale;
  a.causal = o.causal ? 1 : 0;
  a.mask = static_cast<int32_t>(o.mask);
  a.window = o.mask == AttnMask::Global ? 1 : o.window;
  a.n = a.Sq;
  if (o.key_padding) {
    p.kp = contiguous(*o.key_padding);
    a.key_padding = static_cast<const uint8_t*>(p.kp->data());
  }
  if (o.query_index) {
    p.qi = contiguous(*o.query_index);
    a.query_index = static_cast<const int32_t*>(p.qi->data());
    a.n = o.query_index->shape[1];
  }
  if (o.query_count) {
    p.qc = contiguous(*o.query_count);
    a.query_count = static_cast<const int32_t*>(p.qc->data());
  }
  return p;
}

}  // namespace

void check(const AttentionForward& a) {
  const int64_t n = check_qkv(a.q, a.k, a.v, opts_of(a, a.queryIndex.get(), a.queryCount.get()));
  const int64_t B = a.q.shape[0], H = a.q.shape[1], D = a.q.shape[3];
  check_shaped(a.out, "out", {B, H, n, D}, a.q.dtype, true);
  if (a.lse) check_shaped(*a.lse, "lse", {B, H, n}, stats_dtype(a.q.dtype), true);
}
void run(const AttentionForward& a) {
  Prepared p = prepare(a.q, a.k, a.v, opts_of(a, a.queryIndex.get(), a.queryCount.get()));
  void* po = a.out.data();
  void* pl = a.lse ? a.lse->data() : nullptr;
  DR_RUN(a.out, cpu::attention_forward(p.a, po, pl), attention_forward, &p.a, po, pl);
}

void check(const AttentionBackward& a) {
  const int64_t n = check_qkv(a.q, a.k, a.v, opts_of(a, a.queryIndex.get(), a.queryCount.get()));
  check_accumulators(a);
  const int64_t B = a.q.shape[0], Hq = a.q.shape[1], D = a.q.shape[3];
  check_shaped(a.lse, "lse", {B, Hq, n}, stats_dtype(a.q.dtype), false);
  check_shaped(a.out, "out", {B, Hq, n, D}, a.q.dtype, false);
  check_shaped(a.dout, "dout", {B, Hq, n, D}, a.q.dtype, false);
}
void run(const AttentionBackward& a) {
  Prepared p = prepare(a.q, a.k, a.v, opts_of(a, a.queryIndex.get(), a.queryCount.get()));
  auto oc = contiguous(a.out);
  auto dc = contiguous(a.dout);
  auto lc = contiguous(a.lse);
  const void *po = oc->data(), *pd = dc->data(), *pl = lc->data();
  void *pq = a.dq.data(), *pk = a.dk.data(), *pv = a.dv.data();
  DR_RUN(a.dq, cpu::attention_backward(p.a, po, pd, pl, pq, pk, pv), attention_backward, &p.a, po, pd, pl, pq, pk, pv);
}

namespace {

template <typename A>
void check_dual_inputs(const A& a) {
  DR_CHECK(a.mask != AttnMask::Global, Value, "dualAttention: the local path needs a sliding or block mask");
  check_qkv(a.q, a.k, a.v, opts_of(a, nullptr));
  const int64_t B = a.q.shape[0], Hq = a.q.shape[1], Sq = a.q.shape[2];
  require_dtype("dualAttention", "gates", a.gates, a.q.dtype);
  const bool per_head = a.gates.ndim == 4;
  DR_CHECK(per_head ? has_shape(a.gates, {B, Hq, Sq, 2}) : has_shape(a.gates, {B, Sq, 2}), Shape,
           "dualAttention: gates must be [", B, ", ", Sq, ", 2] or [", B, ", ", Hq, ", ", Sq, ", 2], received ",
           a.gates.shape_string());
  if (a.globalRows) {
    DR_CHECK(a.globalRows->dtype == DType::Bool && has_shape(*a.globalRows, {B, Sq}), Shape,
             "dualAttention: globalRows must be bool [", B, ", ", Sq, "], received ", a.globalRows->shape_string());
  }
}

// The dual op's arguments: the local path's AttnArgs, the gates and the global rows, with the
// contiguous copies they point into.
struct PreparedDual {
  Prepared p;
  DualArgs d{};
  std::shared_ptr<const T> gates, rows;
};

template <typename A>
PreparedDual prepare_dual(const A& a) {
  PreparedDual pd;
  pd.p = prepare(a.q, a.k, a.v, opts_of(a, nullptr));
  pd.d.a = pd.p.a;
  pd.gates = contiguous(a.gates);
  pd.d.gates = pd.gates->data();
  pd.d.gates_per_head = a.gates.ndim == 4 ? 1 : 0;
  if (a.globalRows) {
    pd.rows = contiguous(*a.globalRows);
    pd.d.global_rows = static_cast<const uint8_t*>(pd.rows->data());
  }
  return pd;
}

}  // namespace

void check(const DualAttentionForward& a) {
  check_dual_inputs(a);
  const int64_t B = a.q.shape[0], H = a.q.shape[1], S = a.q.shape[2], D = a.q.shape[3];
  for (const T* t : {&a.out, &a.outLocal, &a.outGlobal}) check_shaped(*t, "out", {B, H, S, D}, a.q.dtype, true);
  for (const T* t : {&a.lseLocal, &a.lseGlobal}) check_shaped(*t, "lse", {B, H, S}, stats_dtype(a.q.dtype), true);
}
void run(const DualAttentionForward& a) {
  PreparedDual pd = prepare_dual(a);
  void *po = a.out.data(), *pl = a.outLocal.data(), *pg = a.outGlobal.data(), *sl = a.lseLocal.data(),
       *sg = a.lseGlobal.data();
  DR_RUN(a.out, cpu::dual_attention_forward(pd.d, po, pl, pg, sl, sg), dual_attention_forward, &pd.d, po, pl, pg, sl,
         sg);
}

void check(const DualAttentionBackward& a) {
  check_dual_inputs(a);
  check_accumulators(a);
  const int64_t B = a.q.shape[0], Hq = a.q.shape[1], Sq = a.q.shape[2], D = a.q.shape[3];
  const DType acc = stats_dtype(a.q.dtype);
  for (const T* t : {&a.lseLocal, &a.lseGlobal}) check_shaped(*t, "lse", {B, Hq, Sq}, acc, false);
  for (const T* t : {&a.outLocal, &a.outGlobal, &a.dout}) check_shaped(*t, "out", {B, Hq, Sq, D}, a.q.dtype, false);
}
void run(const DualAttentionBackward& a) {
  PreparedDual pd = prepare_dual(a);
  auto ol = contiguous(a.outLocal);
  auto og = contiguous(a.outGlobal);
  auto dc = contiguous(a.dout);
  auto ll = contiguous(a.lseLocal);
  auto lg = contiguous(a.lseGlobal);
  const void *pl = ol->data(), *pg = og->data(), *pdo = dc->data(), *sl = ll->data(), *sg = lg->data();
  void *pq = a.dq.data(), *pk = a.dk.data(), *pv = a.dv.data();
  DR_RUN(a.dq, cpu::dual_attention_backward(pd.d, pl, pg, pdo, sl, sg, pq, pk, pv), dual_attention_backward, &pd.d, pl,
         pg, pdo, sl, sg, pq, pk, pv);
}

namespace {

// Segment attention: q, k, v as for attention (no padding, no query index), indices int32
// [B, Hq, Sq, K] with entries in [-1, ceil(Sk / segment)) (the kernels report others).
template <typename A>
void check_segment_inputs(const A& a) {
  const char* op = "segmentAttention";
  check_qkv(a.q, a.k, a.v, Opts{AttnMask::Global, a.causal, 1, a.scale, nullptr, nullptr});
  DR_CHECK(a.k.shape[2] >= a.q.shape[2], Shape, op, ": Sk (", a.k.shape[2], ") must be >= Sq (", a.q.shape[2], ")");
  DR_CHECK(a.segment >= 1, Value, op, ": segment must be >= 1, received ", a.segment);
  const T& ix = a.indices;
  DR_CHECK(ix.dtype == DType::I32 && ix.ndim == 4 && ix.shape[0] == a.q.shape[0] && ix.shape[1] == a.q.shape[1] &&
               ix.shape[2] == a.q.shape[2] && ix.shape[3] >= 1 && ix.shape[3] <= INT32_MAX,
           Shape, op, ": indices must be int32 [", a.q.shape[0], ", ", a.q.shape[1], ", ", a.q.shape[2],
           ", topK], received ", dtype_name(ix.dtype), " ", ix.shape_string());
}

// The elements between consecutive kv heads when k's rows are contiguous and its heads evenly
// spaced (a view of a cache buffer's first Sk positions); 0 otherwise.
int64_t head_stride(const T& k) {
  const int64_t B = k.shape[0], H = k.shape[1], S = k.shape[2], D = k.shape[3];
  if (k.contiguous()) return S * D;
  if (!(k.strides[3] == 1 || D == 1) || !(k.strides[2] == D || S == 1)) return 0;
  const int64_t hs = H > 1 ? k.strides[1] : B > 1 ? k.strides[0] : S * D;
  if (B > 1 && k.strides[0] != H * hs) return 0;
  return hs >= S * D ? hs : 0;
}

// Like prepare(), but k and v are read in place when they are such views.
template <typename A>
Prepared prepare_segment(const A& a, std::shared_ptr<const T>& ic) {
  const int64_t hk = head_stride(a.k), hv = head_stride(a.v);
  if (hk == 0 || hk != hv) {
    Prepared p = prepare(a.q, a.k, a.v, Opts{AttnMask::Global, a.causal, 1, a.scale, nullptr, nullptr});
    ic = contiguous(a.indices);
    return p;
  }
  Prepared p = prepare(a.q, a.q, a.q, Opts{AttnMask::Global, a.causal, 1, a.scale, nullptr, nullptr});
  p.k = std::shared_ptr<const T>(&a.k, [](const T*) {});
  p.v = std::shared_ptr<const T>(&a.v, [](const T*) {});
  AttnArgs& x = p.a;
  x.Hkv = a.k.shape[1];
  x.Sk = a.k.shape[2];
  x.k = a.k.data();
  x.v = a.v.data();
  x.kv_head_stride = hk;
  ic = contiguous(a.indices);
  return p;
}

}  // namespace

void check(const SegmentAttentionForward& a) {
  check_segment_inputs(a);
  const int64_t B = a.q.shape[0], H = a.q.shape[1], S = a.q.shape[2], D = a.q.shape[3];
  check_shaped(a.out, "out", {B, H, S, D}, a.q.dtype, true);
  if (a.lse) check_shaped(*a.lse, "lse", {B, H, S}, stats_dtype(a.q.dtype), true);
}
void run(const SegmentAttentionForward& a) {
  std::shared_ptr<const T> ic;
  Prepared p = prepare_segment(a, ic);
  const void* pi = ic->data();
  const int32_t K = static_cast<int32_t>(a.indices.shape[3]);
  void* po = a.out.data();
  void* pl = a.lse ? a.lse->data() : nullptr;
  DR_RUN(a.out, cpu::segment_attention_forward(p.a, pi, K, a.segment, po, pl), segment_attention_forward, &p.a, pi, K,
         a.segment, po, pl);
}

void check(const SegmentAttentionBackward& a) {
  check_segment_inputs(a);
  check_accumulators(a);
  const int64_t B = a.q.shape[0], Hq = a.q.shape[1], S = a.q.shape[2], D = a.q.shape[3];
  check_shaped(a.lse, "lse", {B, Hq, S}, stats_dtype(a.q.dtype), false);
  check_shaped(a.out, "out", {B, Hq, S, D}, a.q.dtype, false);
  check_shaped(a.dout, "dout", {B, Hq, S, D}, a.q.dtype, false);
}
void run(const SegmentAttentionBackward& a) {
  std::shared_ptr<const T> ic;
  Prepared p = prepare_segment(a, ic);
  auto oc = contiguous(a.out);
  auto dc = contiguous(a.dout);
  auto lc = contiguous(a.lse);
  const void *pi = ic->data(), *po = oc->data(), *pd = dc->data(), *pl = lc->data();
  const int32_t K = static_cast<int32_t>(a.indices.shape[3]);
  void *pq = a.dq.data(), *pk = a.dk.data(), *pv = a.dv.data();
  DR_RUN(a.dq, cpu::segment_attention_backward(p.a, pi, K, a.segment, po, pd, pl, pq, pk, pv),
         segment_attention_backward, &p.a, pi, K, a.segment, po, pd, pl, pq, pk, pv);
}

namespace {

// The segment dual ops: the dual op's q, k, v and gates (no padding, no global rows) and the
// segment op's indices.
template <typename A>
void check_dual_segment_inputs(const A& a) {
  DR_CHECK(a.mask != AttnMask::Global, Value, "dualAttention: the local path needs a sliding or block mask");
  check_qkv(a.q, a.k, a.v, Opts{a.mask, a.causal, a.window, a.scale, nullptr, nullptr});
  const int64_t B = a.q.shape[0], Hq = a.q.shape[1], Sq = a.q.shape[2];
  require_dtype("dualAttention", "gates", a.gates, a.q.dtype);
  DR_CHECK(a.gates.ndim == 4 ? has_shape(a.gates, {B, Hq, Sq, 2}) : has_shape(a.gates, {B, Sq, 2}), Shape,
           "dualAttention: gates must be [", B, ", ", Sq, ", 2] or [", B, ", ", Hq, ", ", Sq, ", 2], received ",
           a.gates.shape_string());
  check_segment_inputs(a);
}

template <typename A>
PreparedDual prepare_dual_segment(const A& a, std::shared_ptr<const T>& ic) {
  PreparedDual pd;
  pd.p = prepare(a.q, a.k, a.v, Opts{a.mask, a.causal, a.window, a.scale, nullptr, nullptr});
  pd.d.a = pd.p.a;
  pd.gates = contiguous(a.gates);
  pd.d.gates = pd.gates->data();
  pd.d.gates_per_head = a.gates.ndim == 4 ? 1 : 0;
  ic = contiguous(a.indices);
  return pd;
}

}  // namespace

void check(const DualSegmentAttentionForward& a) {
  check_dual_segment_inputs(a);
  const int64_t B = a.q.shape[0], H = a.q.shape[1], S = a.q.shape[2], D = a.q.shape[3];
  for (const T* t : {&a.out, &a.outLocal, &a.outGlobal}) check_shaped(*t, "out", {B, H, S, D}, a.q.dtype, true);
  for (const T* t : {&a.lseLocal, &a.lseGlobal}) check_shaped(*t, "lse", {B, H, S}, stats_dtype(a.q.dtype), true);
}
void run(const DualSegmentAttentionForward& a) {
  std::shared_ptr<const T> ic;
  PreparedDual pd = prepare_dual_segment(a, ic);
  const void* pi = ic->data();
  const int32_t K = static_cast<int32_t>(a.indices.shape[3]);
  void *po = a.out.data(), *pl = a.outLocal.data(), *pg = a.outGlobal.data(), *sl = a.lseLocal.data(),
       *sg = a.lseGlobal.data();
  DR_RUN(a.out, cpu::dual_segment_attention_forward(pd.d, pi, K, a.segment, po, pl, pg, sl, sg),
         dual_segment_attention_forward, &pd.d, pi, K, a.segment, po, pl, pg, sl, sg);
}

void check(const DualSegmentAttentionBackward& a) {
  check_dual_segment_inputs(a);
  check_accumulators(a);
  const int64_t B = a.q.shape[0], Hq = a.q.shape[1], Sq = a.q.shape[2], D = a.q.shape[3];
  const DType acc = stats_dtype(a.q.dtype);
  for (const T* t : {&a.lseLocal, &a.lseGlobal}) check_shaped(*t, "lse", {B, Hq, Sq}, acc, false);
  for (const T* t : {&a.outLocal, &a.outGlobal, &a.dout}) check_shaped(*t, "out", {B, Hq, Sq, D}, a.q.dtype, false);
  if (a.gates.ndim == 4) check_shaped(a.dgates, "dgates", {B, Hq, Sq, 2}, acc, true);
  else check_shaped(a.dgates, "dgates", {B, Sq, 2}, acc, true);
}
void run(const DualSegmentAttentionBackward& a) {
  std::shared_ptr<const T> ic;
  PreparedDual pd = prepare_dual_segment(a, ic);
  auto ol = contiguous(a.outLocal);
  auto og = contiguous(a.outGlobal);
  auto dc = contiguous(a.dout);
  auto ll = contiguous(a.lseLocal);
  auto lg = contiguous(a.lseGlobal);
  const void *pi = ic->data(), *pl = ol->data(), *pg = og->data(), *pdo = dc->data(), *sl = ll->data(),
             *sg = lg->data();
  const int32_t K = static_cast<int32_t>(a.indices.shape[3]);
  void *pq = a.dq.data(), *pk = a.dk.data(), *pv = a.dv.data(), *pgt = a.dgates.data();
  DR_RUN(a.dq, cpu::dual_segment_attention_backward(pd.d, pi, K, a.segment, pl, pg, pdo, sl, sg, pq, pk, pv, pgt),
         dual_segment_attention_backward, &pd.d, pi, K, a.segment, pl, pg, pdo, sl, sg, pq, pk, pv, pgt);
}

void check(const SegmentMean& a) {
  const char* op = "segmentMean";
  DR_CHECK(a.segment >= 1, Value, op, ": segment must be >= 1, received ", a.segment);
  require_float(op, "x", a.x);
  DR_CHECK(a.x.ndim == 3, Shape, op, ": x must be [outer, rows, dim], received ", a.x.shape_string());
  const int64_t O = a.x.shape[0], D = a.x.shape[2];
  if (!a.backward) {
    const int64_t nseg = (a.x.shape[1] + a.segment - 1) / a.segment;
    check_shaped(a.out, "out", {O, nseg, D}, a.x.dtype, true);
  } else {
    DR_CHECK(a.out.ndim == 3 && a.out.shape[0] == O && a.out.shape[2] == D &&
                 (a.out.shape[1] + a.segment - 1) / a.segment == a.x.shape[1],
             Shape, op, ": dx ", a.out.shape_string(), " does not fit dout ", a.x.shape_string(), " with segment ",
             a.segment);
    require_dtype(op, "dx", a.out, a.x.dtype);
    require_contiguous(op, "dx", a.out);
  }
}
void run(const SegmentMean& a) {
  auto xc = contiguous(a.x);
  View vo = a.out.view(), vx = xc->view();
  if (a.backward) {
    DR_RUN(a.out, cpu::segment_mean_backward(vo, vx, a.segment), segment_mean_backward, &vo, &vx, a.segment);
  } else {
    DR_RUN(a.out, cpu::segment_mean(vo, vx, a.segment), segment_mean, &vo, &vx, a.segment);
  }
}

void check(const Rope& a) {
  const T &x = a.x, &positions = a.positions;
  DR_CHECK(x.ndim == 4 && x.shape[3] % 2 == 0, Shape,
           "rope: x must be [batch, heads, seq, headDim] with an even headDim, received ", x.shape_string());
  DR_CHECK(positions.dtype == DType::I32 &&
               (has_shape(positions, {x.shape[2]}) || has_shape(positions, {x.shape[0], x.shape[2]})),
           Shape, "rope: positions must be int32 [", x.shape[2], "] or [", x.shape[0], ", ", x.shape[2],
           "], received ", dtype_name(positions.dtype), " ", positions.shape_string());
  DR_CHECK(a.base > 0, Value, "rope: base must be > 0, received ", a.base);
  check_shaped(a.out, "out", {x.shape[0], x.shape[1], x.shape[2], x.shape[3]}, x.dtype, true);
}
void run(const Rope& a) {
  auto xc = contiguous(a.x);
  auto pc = contiguous(a.positions);
  View vo = a.out.view(), vx = xc->view(), vp = pc->view();
  DR_RUN(a.out, cpu::rope(vo, vx, vp, a.base, a.inverse), rope, &vo, &vx, &vp, a.base, a.inverse ? 1 : 0);
}

}  // namespace ops
}  // namespace dualroute
