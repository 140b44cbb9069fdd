// The kvcache family: decode caches shared by many sequences (contract: core/kvcache.h). The
// checks here are the shapes and dtypes; the values of lengths and slots are checked by the
// kernels when they run (they live on the device).
#include "../core/kvcache.h"
#include "common.h"

namespace dualroute {
namespace ops {
namespace {

void check_index(const char* op, const char* arg, const T& t, int64_t n) {
  DR_CHECK(t.dtype == DType::I32 && has_shape(t, {n}), Shape, op, ": ", arg, " must be int32 [", n, "], received ",
           dtype_name(t.dtype), " ", t.shape_string());
}

// caches [S, H, C, D] alike, contiguous, of dtype dt; means [S, H, ceil(C / segment), D] in the stats dtype
void check_caches(const char* op, const T& kc, const T& vc, const OptTensor& means, int64_t segment, DType dt,
                  int64_t H, int64_t D) {
  DR_CHECK(kc.ndim == 4 && same_shape(kc, vc), Shape, op, ": kCache and vCache must be [slots, heads, capacity, headDim] alike, received ",
           kc.shape_string(), " and ", vc.shape_string());
  DR_CHECK(kc.shape[1] == H && kc.shape[3] == D, Shape, op, ": the caches ", kc.shape_string(), " do not fit ", H,
           " key/value heads of dim ", D);
  require_dtype(op, "kCache", kc, dt);
  require_dtype(op, "vCache", vc, dt);
  require_contiguous(op, "kCache", kc);
  require_contiguous(op, "vCache", vc);
  if (means) {
    DR_CHECK(segment >= 1, Value, op, ": segment must be >= 1 with means, received ", segment);
    const int64_t M = (kc.shape[2] + segment - 1) / segment;
    DR_CHECK(has_shape(*means, {kc.shape[0], H, M, D}), Shape, op, ": means must be [", kc.shape[0], ", ", H, ", ", M,
             ", ", D, "], received ", means->shape_string());
    require_dtype(op, "means", *means, stats_dtype(dt));
    require_contiguous(op, "means", *means);
  }
}

}  // namespace

void check(const KvCacheAppend& a) {
  const char* op = "kvCacheAppend";
  DR_CHECK(a.k.ndim == 4 && same_shape(a.k, a.v), Shape, op, ": k and v must be [sequences, heads, n, headDim] alike, received ",
           a.k.shape_string(), " and ", a.v.shape_string());
  DR_CHECK(a.k.dtype == a.v.dtype, DType, op, ": k and v must share a dtype, received ", dtype_name(a.k.dtype), " and ",
           dtype_name(a.v.dtype));
  check_caches(op, a.kCache, a.vCache, a.means, a.segment, a.k.dtype, a.k.shape[1], a.k.shape[3]);
  check_index(op, "lengths", a.lengths, a.k.shape[0]);
  check_index(op, "slots", a.slots, a.k.shape[0]);
}

void run(const KvCacheAppend& a) {
  auto kc = contiguous(a.k), vc = contiguous(a.v), lc = contiguous(a.lengths), sc = contiguous(a.slots);
  View ck = a.kCache.view(), cv = a.vCache.view(), m = opt_view(a.means), k = kc->view(), v = vc->view(),
       l = lc->view(), s = sc->view();
  DR_RUN(a.kCache, cpu::kv_cache_append(ck, cv, m, k, v, l, s, a.segment), kv_cache_append, &ck, &cv, &m, &k, &v, &l,
         &s, a.segment);
}

void check(const KvCacheAttention& a) {
  const char* op = "kvCacheAttention";
  DR_CHECK(a.q.ndim == 4, Shape, op, ": q must be [sequences, heads, n, headDim], received ", a.q.shape_string());
  const int64_t N = a.q.shape[0], Hq = a.q.shape[1], Sq = a.q.shape[2], D = a.q.shape[3];
  DR_CHECK(a.kCache.ndim == 4, Shape, op, ": kCache must be [slots, heads, capacity, headDim], received ",
           a.kCache.shape_string());
  const int64_t Hkv = a.kCache.shape[1];
  DR_CHECK(Hkv >= 1 && Hq % Hkv == 0, Shape, op, ": query heads (", Hq, ") must be a multiple of key/value heads (", Hkv, ")");
  check_caches(op, a.kCache, a.vCache, a.means, a.segment, a.q.dtype, Hkv, D);
  check_index(op, "lengths", a.lengths, N);
  check_index(op, "slots", a.slots, N);
  DR_CHECK(has_shape(a.out, {N, Hq, Sq, D}), Shape, op, ": out has shape ", a.out.shape_string(), ", which does not fit q ",
           a.q.shape_string());
  require_dtype(op, "out", a.out, a.q.dtype);
  require_contiguous(op, "out", a.out);
  DR_CHECK(a.mask == AttnMask::Global || a.window >= 1, Value, op, ": window must be >= 1, received ", a.window);
  if (a.means) {
    DR_CHECK(a.mask == AttnMask::Global, Value, op, ": segment routing (means) takes the global mask");
    DR_CHECK(a.topK >= 1, Value, op, ": topK must be >= 1, received ", a.topK);
    const int64_t G = Hq / Hkv;
    DR_CHECK(a.group >= 1 && G % a.group == 0, Value, op, ": group must divide the ", G, " query heads per key/value head, received ",
             a.group);
  }
}

void run(const KvCacheAttention& a) {
  auto qc = contiguous(a.q), lc = contiguous(a.lengths), sc = contiguous(a.slots);
  View o = a.out.view(), q = qc->view(), ck = a.kCache.view(), cv = a.vCache.view(), l = lc->view(), s = sc->view(),
       m = opt_view(a.means);
  DR_RUN(a.out, cpu::kv_cache_attention(o, q, ck, cv, l, s, m, a.mask, a.window, a.segment, a.topK, a.group, a.scale),
         kv_cache_attention, &o, &q, &ck, &cv, &l, &s, &m, static_cast<int32_t>(a.mask), a.window, a.segment, a.topK,
         a.group, a.scale);
}

}  // namespace ops
}  // namespace dualroute
