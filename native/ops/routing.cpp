// The routing family: the router gate (scores, top-k selection with bias, noise and group
// limits, capacity positions) and its backward. Kernels: native/cpu/routing.cpp,
// native/cuda/routing.cu.
#include <cmath>

#include "common.h"

namespace dualroute {
namespace ops {
namespace {

const char* kGate = "routerGate";

void check_shape(const char* op, const char* arg, const T& t, std::initializer_list<int64_t> shape, DType dtype,
                 bool written) {
  DR_CHECK(has_shape(t, shape), Shape, op, ": ", arg, " has shape ", t.shape_string(), ", which does not fit");
  require_dtype(op, arg, t, dtype);
  if (written) require_contiguous(op, arg, t);
}

}  // namespace

void check(const RouterGate& a) {
  DR_CHECK(a.logits.ndim == 2, Shape, kGate, ": logits must be [tokens, experts], received ", a.logits.shape_string());
  require_float(kGate, "logits", a.logits);
  const int64_t T = a.logits.shape[0], E = a.logits.shape[1];
  const DType sd = stats_dtype(a.logits.dtype);
  DR_CHECK(E >= 1 && E <= 65536, Shape, kGate, ": Expected between 1 and 65536 experts, received ", E);
  DR_CHECK(a.k >= 1 && a.k <= E, Range, kGate, ": Expected k in [1, ", E, "] but received ", a.k);
  DR_CHECK(a.groups >= 1 && E % a.groups == 0, Value, kGate, ": groups (", a.groups, ") must divide the experts (", E,
           ")");
  DR_CHECK(a.topGroups >= 1 && a.topGroups <= a.groups, Range, kGate, ": Expected topGroups in [1, ", a.groups,
           "] but received ", a.topGroups);
  DR_CHECK(static_cast<int64_t>(a.topGroups) * (E / a.groups) >= a.k, Value, kGate, ": the best ", a.topGroups,
           " groups hold ", a.topGroups * (E / a.groups), " experts, fewer than k = ", a.k);
  DR_CHECK(a.capacity >= 0, Range, kGate, ": Expected capacity >= 0 but received ", a.capacity);
  DR_CHECK(T * a.k <= INT32_MAX, Shape, kGate, ": ", T, " tokens x k = ", a.k, " is more entries than int32 positions");
  check_shape(kGate, "indices", a.indices, {T, a.k}, DType::I32, true);
  check_shape(kGate, "weights", a.weights, {T, a.k}, sd, true);
  check_shape(kGate, "positions", a.positions, {T, a.k}, DType::I32, true);
  check_shape(kGate, "counts", a.counts, {E}, DType::I32, true);
  check_shape(kGate, "scores", a.scores, {T, E}, sd, true);
  if (a.bias) check_shape(kGate, "bias", *a.bias, {E}, sd, false);
  if (a.noise) check_shape(kGate, "noise", *a.noise, {T, E}, sd, false);
}
void run(const RouterGate& a) {
  auto lc = contiguous(a.logits);
  std::shared_ptr<const T> bc = a.bias ? contiguous(*a.bias) : nullptr, nc = a.noise ? contiguous(*a.noise) : nullptr;
  View vi = a.indices.view(), vw = a.weights.view(), vp = a.positions.view(), vc = a.counts.view(),
       vs = a.scores.view(), vl = lc->view(), vb = bc ? bc->view() : null_view(), vn = nc ? nc->view() : null_view();
  DR_RUN(a.scores,
         cpu::router_gate(vi, vw, vp, vc, vs, vl, vb, vn, a.score, a.k, a.normalize, a.routeScale, a.groups,
                          a.topGroups, a.capacity),
         router_gate, &vi, &vw, &vp, &vc, &vs, &vl, &vb, &vn, static_cast<int32_t>(a.score), a.k, a.normalize ? 1 : 0,
         a.routeScale, a.groups, a.topGroups, a.capacity);
}

void check(const RouterGateBackward& a) {
  const char* op = "routerGateBackward";
  DR_CHECK(a.scores.ndim == 2 && a.indices.ndim == 2 && a.indices.shape[0] == a.scores.shape[0], Shape, op,
           ": scores [T, E] and indices [T, k] do not fit: ", a.scores.shape_string(), ", ",
           a.indices.shape_string());
  const int64_t T = a.scores.shape[0], E = a.scores.shape[1], K = a.indices.shape[1];
  check_shape(op, "scores", a.scores, {T, E}, a.scores.dtype, false);
  check_shape(op, "indices", a.indices, {T, K}, DType::I32, false);
  check_shape(op, "dweights", a.dweights, {T, K}, a.scores.dtype, false);
  check_shape(op, "dlogits", a.dlogits, {T, E}, a.scores.dtype, true);
}
void run(const RouterGateBackward& a) {
  auto sc = contiguous(a.scores), ic = contiguous(a.indices), dc = contiguous(a.dweights);
  View vd = a.dlogits.view(), vs = sc->view(), vi = ic->view(), vw = dc->view();
  DR_RUN(a.dlogits, cpu::router_gate_backward(vd, vs, vi, vw, a.score, a.normalize, a.routeScale),
         router_gate_backward, &vd, &vs, &vi, &vw, static_cast<int32_t>(a.score), a.normalize ? 1 : 0, a.routeScale);
}

void check(const SegmentSelect& a) {
  const char* op = "segmentSelect";
  DR_CHECK(a.scores.ndim == 4, Shape, op, ": scores must be [batch, heads, Sq, segments], received ", a.scores.shape_string());
  DR_CHECK(a.scores.dtype == DType::F32 || a.scores.dtype == DType::F64, DType, op,
           ": scores must be float32 or float64, received ", dtype_name(a.scores.dtype));
  const int64_t B = a.scores.shape[0], H = a.scores.shape[1], Sq = a.scores.shape[2], nseg = a.scores.shape[3];
  DR_CHECK(a.indices.ndim == 4 && a.indices.shape[3] >= 1, Shape, op, ": indices must be [", B, ", ", H, ", ", Sq,
           ", topK], received ", a.indices.shape_string());
  const int64_t K = a.indices.shape[3];
  check_shape(op, "indices", a.indices, {B, H, Sq, K}, DType::I32, true);
  check_shape(op, "weights", a.weights, {B, H, Sq, K}, a.scores.dtype, true);
  DR_CHECK(a.group >= 1 && H % a.group == 0, Value, op, ": group (", a.group, ") must divide the heads (", H, ")");
  DR_CHECK(a.segment >= 1, Value, op, ": segment must be >= 1, received ", a.segment);
  DR_CHECK(a.keyLength >= Sq, Value, op, ": keyLength (", a.keyLength, ") must be >= Sq (", Sq, ")");
  DR_CHECK(!(a.causal || a.keepOwn) || (a.keyLength + a.segment - 1) / a.segment == nseg, Shape, op, ": ",
           a.keyLength, " keys in segments of ", a.segment, " make ", (a.keyLength + a.segment - 1) / a.segment,
           " segments, but scores has ", nseg);
}
void run(const SegmentSelect& a) {
  auto sc = contiguous(a.scores);
  View vi = a.indices.view(), vw = a.weights.view(), vs = sc->view();
  DR_RUN(a.indices, cpu::segment_select(vi, vw, vs, a.group, a.causal, a.keepOwn, a.segment, a.keyLength),
         segment_select, &vi, &vw, &vs, a.group, a.causal ? 1 : 0, a.keepOwn ? 1 : 0, a.segment, a.keyLength);
}

void check(const SegmentTopk& a) {
  const char* op = "segmentTopk";
  DR_CHECK(a.q.ndim == 4, Shape, op, ": q must be [batch, heads, Sq, headDim], received ", a.q.shape_string());
  require_float(op, "q", a.q);
  const int64_t B = a.q.shape[0], H = a.q.shape[1], Sq = a.q.shape[2], D = a.q.shape[3];
  DR_CHECK(a.summaries.ndim == 4 && a.summaries.shape[0] == B && a.summaries.shape[1] >= 1 &&
               H % a.summaries.shape[1] == 0 && a.summaries.shape[3] == D,
           Shape, op, ": summaries must be [", B, ", kvHeads dividing ", H, ", segments, ", D, "], received ",
           a.summaries.shape_string());
  const int64_t Hkv = a.summaries.shape[1], nseg = a.summaries.shape[2];
  check_shape(op, "summaries", a.summaries, {B, Hkv, nseg, D}, stats_dtype(a.q.dtype), false);
  DR_CHECK(a.indices.ndim == 4 && a.indices.shape[3] >= 1, Shape, op, ": indices must be [", B, ", ", H, ", ", Sq,
           ", topK], received ", a.indices.shape_string());
  check_shape(op, "indices", a.indices, {B, H, Sq, a.indices.shape[3]}, DType::I32, true);
  DR_CHECK(a.group >= 1 && (H / Hkv) % a.group == 0, Value, op, ": group (", a.group,
           ") must divide the query heads per kv head (", H / Hkv, ")");
  DR_CHECK(a.segment >= 1, Value, op, ": segment must be >= 1, received ", a.segment);
  DR_CHECK(a.keyLength >= Sq, Value, op, ": keyLength (", a.keyLength, ") must be >= Sq (", Sq, ")");
  DR_CHECK((a.keyLength + a.segment - 1) / a.segment == nseg, Shape, op, ": ", a.keyLength, " keys in segments of ",
           a.segment, " make ", (a.keyLength + a.segment - 1) / a.segment, " segments, but summaries has ", nseg);
  DR_CHECK(std::isfinite(a.scale), Value, op, ": scale must be finite, received ", a.scale);
}
void run(const SegmentTopk& a) {
  auto qc = contiguous(a.q), sc = contiguous(a.summaries);
  View vi = a.indices.view(), vq = qc->view(), vs = sc->view();
  DR_RUN(a.indices, cpu::segment_topk(vi, vq, vs, a.scale, a.group, a.causal, a.segment, a.keyLength), segment_topk,
         &vi, &vq, &vs, a.scale, a.group, a.causal ? 1 : 0, a.segment, a.keyLength);
}

void check(const RouterLosses& a) {
  const char* op = "routerLosses";
  DR_CHECK(a.logits.ndim == 2, Shape, op, ": logits must be [tokens, experts], received ", a.logits.shape_string());
  DR_CHECK(a.logits.dtype == DType::F32 || a.logits.dtype == DType::F64, DType, op,
           ": logits must be float32 or float64, received ", dtype_name(a.logits.dtype));
  const int64_t T_ = a.logits.shape[0], E = a.logits.shape[1];
  check_shape(op, "first", a.first, {T_}, DType::I32, false);
  check_shape(op, "aux", a.aux, {}, a.logits.dtype, true);
  check_shape(op, "zloss", a.zloss, {}, a.logits.dtype, true);
  check_shape(op, "lse", a.lse, {T_}, a.logits.dtype, true);
  check_shape(op, "fraction", a.fraction, {E}, a.logits.dtype, true);
}
void run(const RouterLosses& a) {
  auto lc = contiguous(a.logits), fc = contiguous(a.first);
  View va = a.aux.view(), vz = a.zloss.view(), vl = a.lse.view(), vf = a.fraction.view(), vx = lc->view(), vi = fc->view();
  DR_RUN(a.aux, cpu::router_losses(va, vz, vl, vf, vx, vi, a.score), router_losses, &va, &vz, &vl, &vf, &vx, &vi,
         static_cast<int32_t>(a.score));
}

void check(const RouterLossesBackward& a) {
  const char* op = "routerLossesBackward";
  DR_CHECK(a.logits.ndim == 2, Shape, op, ": logits must be [tokens, experts], received ", a.logits.shape_string());
  const int64_t T_ = a.logits.shape[0], E = a.logits.shape[1];
  const DType d = a.logits.dtype;
  DR_CHECK(d == DType::F32 || d == DType::F64, DType, op, ": logits must be float32 or float64, received ", dtype_name(d));
  check_shape(op, "lse", a.lse, {T_}, d, false);
  check_shape(op, "fraction", a.fraction, {E}, d, false);
  check_shape(op, "daux", a.daux, {}, d, false);
  check_shape(op, "dz", a.dz, {}, d, false);
  check_shape(op, "dlogits", a.dlogits, {T_, E}, d, true);
}
void run(const RouterLossesBackward& a) {
  auto lc = contiguous(a.logits), sc = contiguous(a.lse), fc = contiguous(a.fraction), ac = contiguous(a.daux),
       zc = contiguous(a.dz);
  View vd = a.dlogits.view(), vx = lc->view(), vl = sc->view(), vf = fc->view(), va = ac->view(), vz = zc->view();
  DR_RUN(a.dlogits, cpu::router_losses_backward(vd, vx, vl, vf, va, vz, a.score), router_losses_backward, &vd, &vx,
         &vl, &vf, &va, &vz, static_cast<int32_t>(a.score));
}

}  // namespace ops
}  // namespace dualroute
