// The route_rules family: random routing (Philox draws against cumulative thresholds), hash
// routing and rule-table routing of token ids. Kernels: native/cpu/route_rules.cpp,
// native/cuda/route_rules.cu. lib/ops/route_rules.ts builds the thresholds and compiles the
// rule tables; the checks here guard the contracts the kernels rely on (shapes, dtypes, sorted
// disjoint rules cannot be checked without reading device memory: the library builds them).
#include "common.h"

namespace dualroute {
namespace ops {
namespace {

void require_i32(const char* op, const char* arg, const T& t, bool written) {
  require_dtype(op, arg, t, DType::I32);
  if (written) require_contiguous(op, arg, t);
}

}  // namespace

void check(const RandomRoute& a) {
  const char* op = "randomRoute";
  require_i32(op, "route", a.route, true);
  require_i32(op, "thresholds", a.thresholds, false);
  DR_CHECK(a.route.ndim == 1, Shape, op, ": route must be [T], received ", a.route.shape_string());
  DR_CHECK(a.thresholds.ndim == 1 && a.thresholds.shape[0] >= 1, Shape, op,
           ": thresholds must be [P] with P >= 1, received ", a.thresholds.shape_string());
}
void run(const RandomRoute& a) {
  auto tc = contiguous(a.thresholds);
  View vr = a.route.view(), vt = tc->view();
  DR_RUN(a.route, cpu::route_random(vr, vt, a.seed, a.offset), route_random, &vr, &vt, a.seed, a.offset);
}

void check(const HashRoute& a) {
  const char* op = "hashRoute";
  require_i32(op, "route", a.route, true);
  require_i32(op, "ids", a.ids, false);
  DR_CHECK(a.route.numel() == a.ids.numel(), Shape, op, ": route ", a.route.shape_string(), " does not fit ids ",
           a.ids.shape_string());
  DR_CHECK(a.buckets >= 1, Value, op, ": Expected buckets >= 1 but received ", a.buckets);
  DR_CHECK(a.limit >= 0, Value, op, ": Expected limit >= 0 but received ", a.limit);
}
void run(const HashRoute& a) {
  auto ic = contiguous(a.ids);
  View vr = a.route.view(), vi = ic->view();
  DR_RUN(a.route, cpu::route_hash(vr, vi, a.buckets, a.seed, a.limit), route_hash, &vr, &vi, a.buckets, a.seed,
         a.limit);
}

void check(const RuleRoute& a) {
  const char* op = "ruleRoute";
  require_i32(op, "route", a.route, true);
  require_i32(op, "ids", a.ids, false);
  require_i32(op, "rules", a.rules, false);
  DR_CHECK(a.route.numel() == a.ids.numel(), Shape, op, ": route ", a.route.shape_string(), " does not fit ids ",
           a.ids.shape_string());
  DR_CHECK(a.rules.ndim == 2 && a.rules.shape[1] == 3, Shape, op, ": rules must be [n, 3] (lo, last, route), received ",
           a.rules.shape_string());
  if (a.lut) {
    require_i32(op, "lut", *a.lut, false);
    DR_CHECK(a.lut->ndim == 1, Shape, op, ": lut must be [L], received ", a.lut->shape_string());
  }
  DR_CHECK(a.limit >= 0, Value, op, ": Expected limit >= 0 but received ", a.limit);
}
void run(const RuleRoute& a) {
  auto ic = contiguous(a.ids), rc = contiguous(a.rules);
  std::shared_ptr<const T> lc = a.lut ? contiguous(*a.lut) : nullptr;
  View vr = a.route.view(), vi = ic->view(), vu = rc->view(), vl = lc ? lc->view() : null_view();
  DR_RUN(a.route, cpu::route_rules(vr, vi, vu, vl, a.fallback, a.limit), route_rules, &vr, &vi, &vu, &vl, a.fallback,
         a.limit);
}

}  // namespace ops
}  // namespace dualroute
