// Decode caches shared by many sequences on the CPU (contract: core/kvcache.h): the append of N
// sequences' new keys and values into their slots, and the attention of their newest queries
// over their slots, each sequence at its own length, in one call per layer.
//
// kv_cache_attention: a task per (sequence, kv head); its G query heads and Sq rows walk the
// visible keys in position order, two passes per row: the scores (a dot product over the head
// dim, vectorised over d), then exp(s - max) and the weighted sum of the values. Only visible
// keys are read: a sliding-window row reads `window` keys, a segment-routed row the keys of its
// top-k segments, whatever the slot's length.
#include <algorithm>
#include <cmath>
#include <limits>
#include <type_traits>
#include <vector>

#include "../core/kvcache.h"
#include "common.h"

namespace dualroute {
namespace cpu {
namespace DR_ISA {
namespace {

// S: the compute type (float; double for float64 caches)
template <typename T>
using StatT = typename std::conditional<std::is_same_v<T, double>, double, float>::type;

template <typename T>
inline StatT<T> ld(T v) {
  return static_cast<StatT<T>>(Num<T>::load(v));
}

// Values (or multiply-adds) a parallel task should be worth at least: less and the pool's
// hand-off (a futex wake on a virtual machine: ~10 us) costs more than the task saves.
constexpr int64_t kTaskWork = 65536;

// a before b in the segment order: larger score first (NaN largest), then the lower index
template <typename S>
inline bool seg_better(S a, int64_t ia, S b, int64_t ib) {
  const bool na = a != a, nb = b != b;
  if (na != nb) return na;
  if (!na && a != b) return a > b;
  return ia < ib;
}

template <typename T>
void append_typed(const View& kc, const View& vc, const View& means, const View& k, const View& v,
                  const int32_t* lengths, const int32_t* slots, int64_t segment) {
  using S = StatT<T>;
  const int64_t N = k.shape[0], H = k.shape[1], Sq = k.shape[2], D = k.shape[3];
  const int64_t Sl = kc.shape[0], C = kc.shape[2];
  for (int64_t n = 0; n < N; ++n) {
    if (slots[n] < 0 || slots[n] >= Sl) fail(ErrorCode::Range, "kvCacheAppend: slot ", slots[n], " of sequence ", n, " is outside [0, ", Sl, ")");
    if (lengths[n] < 0) fail(ErrorCode::Range, "kvCacheAppend: length ", lengths[n], " of sequence ", n, " is negative");
    if (means.data && lengths[n] + Sq > C) {
      fail(ErrorCode::Range, "kvCacheAppend: sequence ", n, " would hold ", lengths[n] + Sq, " positions; a segment cache holds at most ", C);
    }
    for (int64_t m = 0; m < n; ++m)
      if (slots[m] == slots[n]) fail(ErrorCode::Value, "kvCacheAppend: sequences ", m, " and ", n, " both name slot ", slots[n]);
  }
  T* pk = static_cast<T*>(kc.data);
  T* pv = static_cast<T*>(vc.data);
  const T* sk = static_cast<const T*>(k.data);
  const T* sv = static_cast<const T*>(v.data);
  const int64_t M = means.data ? means.shape[2] : 0;
  S* pm = static_cast<S*>(means.data);
  // a task copies Sq x D values (and may average a segment): decode-sized appends run inline
  // rather than paying a wake-up of the pool for a few hundred bytes
  parallel_for(N * H, std::max<int64_t>(1, kTaskWork / std::max<int64_t>(1, Sq * D)), [&](int64_t t0, int64_t t1) {
    std::vector<S> acc(static_cast<size_t>(D));
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t n = t / H, h = t % H, slot = slots[n], len = lengths[n];
      T* dk = pk + (slot * H + h) * C * D;
      T* dv = pv + (slot * H + h) * C * D;
      const T* ksrc = sk + (n * H + h) * Sq * D;
      const T* vsrc = sv + (n * H + h) * Sq * D;
      for (int64_t i = std::max<int64_t>(0, Sq - C); i < Sq; ++i) {
        const int64_t row = kv_row(len + i, C);
        std::copy(ksrc + i * D, ksrc + (i + 1) * D, dk + row * D);
        std::copy(vsrc + i * D, vsrc + (i + 1) * D, dv + row * D);
      }
      if (!pm || Sq == 0) continue;
      const int64_t L = len + Sq;
      for (int64_t s = len / segment; s <= (L - 1) / segment; ++s) {
        const int64_t j0 = s * segment, j1 = std::min(L, j0 + segment);
        std::fill(acc.begin(), acc.end(), S(0));
        for (int64_t j = j0; j < j1; ++j)
          for (int64_t d = 0; d < D; ++d) acc[d] += ld(dk[j * D + d]);
        const S inv = S(1) / static_cast<S>(j1 - j0);
        S* o = pm + ((slot * H + h) * M + s) * D;
        for (int64_t d = 0; d < D; ++d) o[d] = acc[d] * inv;
      }
    }
  });
}

template <typename T>
void attention_typed(const View& out, const View& q, const View& kc, const View& vc, const View& means,
                     const int32_t* lengths, const int32_t* slots, AttnMask mask, int64_t window, int64_t segment,
                     int64_t topk, int64_t group, double scale_d) {
  using S = StatT<T>;
  const int64_t N = q.shape[0], Hq = q.shape[1], Sq = q.shape[2], D = q.shape[3];
  const int64_t Sl = kc.shape[0], Hkv = kc.shape[1], C = kc.shape[2], G = Hq / Hkv;
  const int64_t M = means.data ? means.shape[2] : 0;
  for (int64_t n = 0; n < N; ++n) {
    if (slots[n] < 0 || slots[n] >= Sl) fail(ErrorCode::Range, "kvCacheAttention: slot ", slots[n], " of sequence ", n, " is outside [0, ", Sl, ")");
    if (lengths[n] < Sq) fail(ErrorCode::Range, "kvCacheAttention: length ", lengths[n], " of sequence ", n, " is shorter than its ", Sq, " queries");
    if (M && lengths[n] > C) fail(ErrorCode::Range, "kvCacheAttention: length ", lengths[n], " of sequence ", n, " exceeds the segment cache's ", C, " positions");
  }
  const S scale = static_cast<S>(scale_d);
  const T* pq = static_cast<const T*>(q.data);
  const T* pk = static_cast<const T*>(kc.data);
  const T* pv = static_cast<const T*>(vc.data);
  const S* pm = static_cast<const S*>(means.data);
  T* po = static_cast<T*>(out.data);
  // a task's work is about G x Sq x (its keys) x D multiply-adds twice: tasks of a small
  // model's decode step are grouped so that each is worth a thread's wake-up
  int64_t maxlen = 1;
  for (int64_t n = 0; n < N; ++n) maxlen = std::max<int64_t>(maxlen, lengths[n]);
  if ((mask == AttnMask::Sliding || mask == AttnMask::Block) && window > 0) maxlen = std::min(maxlen, window);
  const int64_t task_work = std::max<int64_t>(1, 2 * G * Sq * maxlen * D);
  parallel_for(N * Hkv, std::max<int64_t>(1, kTaskWork / task_work), [&](int64_t t0, int64_t t1) {
    std::vector<S> qs(static_cast<size_t>(D)), acc(static_cast<size_t>(D)), sc, segsc;
    std::vector<int64_t> keys, chosen;
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t n = t / Hkv, hk = t % Hkv, slot = slots[n], len = lengths[n];
      const T* kb = pk + (slot * Hkv + hk) * C * D;
      const T* vb = pv + (slot * Hkv + hk) * C * D;
      const int64_t ring_lo = std::max<int64_t>(0, len - C);
      for (int64_t i = 0; i < Sq; ++i) {
        const int64_t p = len - Sq + i;
        int64_t lo = ring_lo;
        if (mask == AttnMask::Sliding) lo = std::max(lo, p - window + 1);
        else if (mask == AttnMask::Block) lo = std::max(lo, p / window * window);
        for (int64_t g = 0; g < G; ++g) {
          const int64_t h = hk * G + g;
          const T* qr = pq + ((n * Hq + h) * Sq + i) * D;
          // the visible keys, in position order
          keys.clear();
          if (pm) {
            const int64_t own = p / segment, g0 = h / group * group;
            // the selection is shared by the `group` heads [g0, g0 + group): recompute it at the group's first head
            if (h == g0 || chosen.empty()) {
              for (int64_t d = 0; d < D; ++d) {
                S x = 0;
                for (int64_t u = 0; u < group; ++u) x += ld(pq[((n * Hq + g0 + u) * Sq + i) * D + d]);
                qs[d] = x * scale;
              }
              const S* mb = pm + (slot * Hkv + hk) * M * D;
              segsc.resize(static_cast<size_t>(own));
              for (int64_t s = 0; s < own; ++s) {
                S x = 0;
                for (int64_t d = 0; d < D; ++d) x += qs[d] * mb[s * D + d];
                segsc[s] = x;
              }
              chosen.assign(1, own);
              std::vector<char> taken(static_cast<size_t>(own), 0);
              for (int64_t c = 1; c < topk && c <= own; ++c) {
                int64_t best = -1;
                for (int64_t s = 0; s < own; ++s)
                  if (!taken[s] && (best < 0 || seg_better(segsc[s], s, segsc[best], best))) best = s;
                taken[best] = 1;
                chosen.push_back(best);
              }
            }
            std::vector<int64_t> order(chosen);
            std::sort(order.begin(), order.end());
            for (int64_t s : order)
              for (int64_t j = s * segment; j < std::min(p + 1, (s + 1) * segment); ++j) keys.push_back(j);
          } else {
            for (int64_t j = lo; j <= p; ++j) keys.push_back(j);
          }
          T* orow = po + ((n * Hq + h) * Sq + i) * D;
          const int64_t nk = static_cast<int64_t>(keys.size());
          if (nk == 0) {
            for (int64_t d = 0; d < D; ++d) orow[d] = Num<T>::store(0);
            continue;
          }
          for (int64_t d = 0; d < D; ++d) qs[d] = ld(qr[d]);
          sc.resize(static_cast<size_t>(nk));
          S mx = -std::numeric_limits<S>::infinity();
          for (int64_t u = 0; u < nk; ++u) {
            const T* kr = kb + kv_row(keys[u], C) * D;
            S x = 0;
            for (int64_t d = 0; d < D; ++d) x += qs[d] * ld(kr[d]);
            sc[u] = x * scale;
            mx = std::max(mx, sc[u]);
          }
          std::fill(acc.begin(), acc.end(), S(0));
          S l = 0;
          for (int64_t u = 0; u < nk; ++u) {
            const S w = std::exp(sc[u] - mx);
            l += w;
            const T* vr = vb + kv_row(keys[u], C) * D;
            for (int64_t d = 0; d < D; ++d) acc[d] += w * ld(vr[d]);
          }
          const S inv = S(1) / l;
          for (int64_t d = 0; d < D; ++d) orow[d] = Num<T>::store(static_cast<typename Num<T>::acc>(acc[d] * inv));
        }
      }
    }
  });
}

}  // namespace

void kv_cache_append(const View& k_cache, const View& v_cache, const View& means, const View& k, const View& v,
                     const View& lengths, const View& slots, int64_t segment) {
  dispatch_float(dt(k), "kvCacheAppend", [&](auto tag) {
    append_typed<decltype(tag)>(k_cache, v_cache, means, k, v, static_cast<const int32_t*>(lengths.data),
                                static_cast<const int32_t*>(slots.data), segment);
  });
}

void kv_cache_attention(const View& out, const View& q, const View& k_cache, const View& v_cache, const View& lengths,
                        const View& slots, const View& means, AttnMask mask, int64_t window, int64_t segment, int topk,
                        int group, double scale) {
  dispatch_float(dt(q), "kvCacheAttention", [&](auto tag) {
    attention_typed<decltype(tag)>(out, q, k_cache, v_cache, means, static_cast<const int32_t*>(lengths.data),
                                   static_cast<const int32_t*>(slots.data), mask, window, segment, topk, group, scale);
  });
}

}  // namespace DR_ISA
}  // namespace cpu
}  // namespace dualroute
