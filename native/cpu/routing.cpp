// The router gate on the CPU: per token (row of logits [T, E]) the scores, the selection of k
// experts and their weights; then the capacity positions of every (token, choice).
//
//   scores  s = softmax(l) or sigmoid(l)                      (float; double for float64 logits)
//   select  the top k of s + bias + noise (ties to the lower expert; NaN counts as the largest),
//           with groups > 1 only among the best topGroups groups, a group scored by the sum of its
//           two best values (its one value when it holds one expert)
//   weights w_j = routeScale * s[i_j] / (normalize ? sum_j' s[i_j'] : 1)
//   positions: entry (t, j) is the rank of its expert's entries in the order (j, t): every first
//           choice before any second one, tokens in order; -1 from `capacity` on (0: no limit);
//           counts[e] = the kept entries of e.
// Tokens are independent (parallel); the positions are one pass over the T x k entries.
//
// Backward: dweights [T, k] -> dlogits [T, E] per token, through the normalisation
//   ds[i_j] = c (dw_j - sum_j' dw_j' s[i_j'] / S) / S   (normalize; S = sum_j s[i_j], c = routeScale)
//   ds[i_j] = c dw_j                                      (otherwise), 0 elsewhere
// then softmax (dl = s (ds - sum_e ds_e s_e)) or sigmoid (dl = ds s (1 - s)).
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <numeric>
#include <type_traits>
#include <vector>

#include "common.h"
#include "simd.h"

namespace dualroute {
namespace cpu {
namespace DR_ISA {
namespace {

// a before b in the selection order: larger first, NaN largest, then the lower index
template <typename S>
inline bool better(S a, int ia, S b, int ib) {
  const bool na = a != a, nb = b != b;
  if (na != nb) return na;
  if (!na && a != b) return a > b;
  return ia < ib;
}

template <typename T, typename S>
void gate_typed(int32_t* indices, S* weights, int32_t* positions, int32_t* counts, S* scores, const T* logits,
                const S* bias, const S* noise, int64_t T_, int64_t E, RouterScore score, int k, bool normalize,
                double route_scale, int groups, int top_groups, int capacity) {
  const int64_t gsize = E / groups;
  parallel_for(T_, std::max<int64_t>(1, 4096 / std::max<int64_t>(E, 1)), [&](int64_t b, int64_t e) {
    std::vector<S> sel(static_cast<size_t>(E)), gscore(static_cast<size_t>(groups));
    std::vector<int> order(static_cast<size_t>(E)), gorder(static_cast<size_t>(groups));
    std::vector<char> allowed(static_cast<size_t>(E));
    for (int64_t t = b; t < e; ++t) {
      const T* lr = logits + t * E;
      S* sr = scores + t * E;
      if (score == RouterScore::Softmax) {
        S m = -std::numeric_limits<S>::infinity();
        for (int64_t x = 0; x < E; ++x) {
          const S v = static_cast<S>(Num<T>::load(lr[x]));
          m = (v > m || v != v) ? v : m;
        }
        S sum = 0;
        for (int64_t x = 0; x < E; ++x) {
          sr[x] = std::exp(static_cast<S>(Num<T>::load(lr[x])) - m);
          sum += sr[x];
        }
        const S inv = S(1) / sum;
        for (int64_t x = 0; x < E; ++x) sr[x] *= inv;
      } else {
        for (int64_t x = 0; x < E; ++x) sr[x] = S(1) / (S(1) + std::exp(-static_cast<S>(Num<T>::load(lr[x]))));
      }
      for (int64_t x = 0; x < E; ++x) {
        sel[x] = sr[x] + (bias ? bias[x] : S(0)) + (noise ? noise[t * E + x] : S(0));
        allowed[x] = 1;
      }
      if (groups > 1) {
        for (int g = 0; g < groups; ++g) {
          // the sum of the group's two best values (one when the group holds one expert)
          int b1 = -1, b2 = -1;
          for (int64_t x = g * gsize; x < (g + 1) * gsize; ++x) {
            const int xi = static_cast<int>(x);
            if (b1 < 0 || better(sel[x], xi, sel[b1], b1)) {
              b2 = b1;
              b1 = xi;
            } else if (b2 < 0 || better(sel[x], xi, sel[b2], b2)) {
              b2 = xi;
            }
          }
          gscore[g] = sel[b1] + (b2 >= 0 ? sel[b2] : S(0));
        }
        std::iota(gorder.begin(), gorder.end(), 0);
        std::partial_sort(gorder.begin(), gorder.begin() + top_groups, gorder.end(),
                          [&](int a, int c) { return better(gscore[a], a, gscore[c], c); });
        std::fill(allowed.begin(), allowed.end(), 0);
        for (int j = 0; j < top_groups; ++j)
          std::fill(allowed.begin() + gorder[j] * gsize, allowed.begin() + (gorder[j] + 1) * gsize, 1);
      }
      // the k best allowed experts, best first: an insertion into a sorted list of k (k and E are
      // small; a heap-based partial_sort costs more at E = 8)
      int n = 0;
      for (int x = 0; x < static_cast<int>(E); ++x) {
        if (!allowed[x]) continue;
        if (n == k && !better(sel[x], x, sel[order[k - 1]], order[k - 1])) continue;
        int at = n < k ? n++ : k - 1;
        while (at > 0 && better(sel[x], x, sel[order[at - 1]], order[at - 1])) {
          order[at] = order[at - 1];
          --at;
        }
        order[at] = x;
      }
      S total = 0;
      for (int j = 0; j < k; ++j) total += sr[order[j]];
      const S f = static_cast<S>(route_scale) / (normalize ? total : S(1));
      for (int j = 0; j < k; ++j) {
        indices[t * k + j] = order[j];
        weights[t * k + j] = sr[order[j]] * f;
      }
    }
  });
  // positions: first choices of every token, then second choices, each in token order
  std::vector<int64_t> running(static_cast<size_t>(E), 0);
  for (int j = 0; j < k; ++j)
    for (int64_t t = 0; t < T_; ++t) {
      const int32_t x = indices[t * k + j];
      const int64_t p = running[x]++;
      positions[t * k + j] = capacity > 0 && p >= capacity ? -1 : static_cast<int32_t>(p);
    }
  for (int64_t x = 0; x < E; ++x)
    counts[x] = static_cast<int32_t>(capacity > 0 ? std::min<int64_t>(running[x], capacity) : running[x]);
}

template <typename S>
void gate_backward_typed(S* dlogits, const S* scores, const int32_t* indices, const S* dweights, int64_t T_, int64_t E,
                         int64_t K, RouterScore score, bool normalize, double route_scale) {
  const S c = static_cast<S>(route_scale);
  parallel_for(T_, std::max<int64_t>(1, 4096 / std::max<int64_t>(E, 1)), [&](int64_t b, int64_t e) {
    std::vector<S> ds(static_cast<size_t>(E));
    for (int64_t t = b; t < e; ++t) {
      const S* s = scores + t * E;
      const int32_t* idx = indices + t * K;
      const S* dw = dweights + t * K;
      std::fill(ds.begin(), ds.end(), S(0));
      if (normalize) {
        S total = 0, dot = 0;
        for (int64_t j = 0; j < K; ++j) total += s[idx[j]];
        for (int64_t j = 0; j < K; ++j) dot += dw[j] * s[idx[j]];
        for (int64_t j = 0; j < K; ++j) ds[idx[j]] += c * (dw[j] - dot / total) / total;
      } else {
        for (int64_t j = 0; j < K; ++j) ds[idx[j]] += c * dw[j];
      }
      S* dl = dlogits + t * E;
      if (score == RouterScore::Softmax) {
        S dot = 0;
        for (int64_t x = 0; x < E; ++x) dot += ds[x] * s[x];
        for (int64_t x = 0; x < E; ++x) dl[x] = s[x] * (ds[x] - dot);
      } else {
        for (int64_t x = 0; x < E; ++x) dl[x] = ds[x] * s[x] * (S(1) - s[x]);
      }
    }
  });
}

// Router losses (routerGate's auxLoss and zLoss) over logits [T, E] (the stats dtype) and the
// first choices [T]:
//   p_t = softmax(l_t) (score softmax) or s_t / sum(s_t), s = sigmoid(l_t) (score sigmoid)
//   f_e = #{t : first_t = e} / T      P_e = mean_t p_te      aux = E sum_e f_e P_e
//   lse_t = log sum_e exp(l_te)       z = mean_t lse_t^2
// lse [T] and f [E] are kept for the backward. Token blocks of kLossBlock give partial sums added
// in block order: the result does not depend on the thread count.
constexpr int64_t kLossBlock = 256;

template <typename S>
inline void token_probs(const S* l, int64_t E, RouterScore score, S* p, S& lse, S& ssum) {
  S m = -std::numeric_limits<S>::infinity();
  for (int64_t e = 0; e < E; ++e) m = (l[e] > m || l[e] != l[e]) ? l[e] : m;
  S sum = 0;
  for (int64_t e = 0; e < E; ++e) sum += std::exp(l[e] - m);
  lse = m + std::log(sum);
  ssum = 0;
  if (score == RouterScore::Softmax) {
    for (int64_t e = 0; e < E; ++e) p[e] = std::exp(l[e] - lse);
  } else {
    for (int64_t e = 0; e < E; ++e) ssum += (p[e] = S(1) / (S(1) + std::exp(-l[e])));
    for (int64_t e = 0; e < E; ++e) p[e] /= ssum;
  }
}

template <typename S>
void losses_typed(S* aux, S* z, S* lse, S* f, const S* l, const int32_t* first, int64_t T_, int64_t E,
                  RouterScore score) {
  const int64_t nb = (T_ + kLossBlock - 1) / kLossBlock;
  std::vector<S> part(static_cast<size_t>(nb * (E + 1)), S(0));
  parallel_for(nb, 1, [&](int64_t b0, int64_t b1) {
    std::vector<S> p(static_cast<size_t>(E));
    for (int64_t b = b0; b < b1; ++b) {
      S* pp = part.data() + b * (E + 1);
      for (int64_t t = b * kLossBlock; t < std::min(T_, (b + 1) * kLossBlock); ++t) {
        S ls, ss;
        token_probs(l + t * E, E, score, p.data(), ls, ss);
        lse[t] = ls;
        for (int64_t e = 0; e < E; ++e) pp[e] += p[e];
        pp[E] += ls * ls;
      }
    }
  });
  std::vector<int64_t> cnt(static_cast<size_t>(E), 0);
  for (int64_t t = 0; t < T_; ++t) {
    const int32_t e = first[t];
    if (e < 0 || e >= E) fail(ErrorCode::Range, "routerGate: first choice ", e, " of token ", t, " is outside [0, ", E, ")");
    ++cnt[e];
  }
  S a = 0, zs = 0;
  for (int64_t e = 0; e < E; ++e) {
    S P = 0;
    for (int64_t b = 0; b < nb; ++b) P += part[b * (E + 1) + e];
    P /= static_cast<S>(T_);  // 0 / 0 = NaN for no token, as a mean of nothing
    f[e] = static_cast<S>(cnt[e]) / static_cast<S>(std::max<int64_t>(T_, 1));
    a += f[e] * P;
  }
  for (int64_t b = 0; b < nb; ++b) zs += part[b * (E + 1) + E];
  *aux = static_cast<S>(E) * a;
  *z = zs / static_cast<S>(T_);
}

// dlogits_t = daux (E / T) J_t^T f + dz (2 / T) lse_t softmax(l_t), J_t = d p_t / d l_t:
//   softmax: J^T f = p (f - <f, p>);  sigmoid: (J^T f)_j = s_j (1 - s_j) / sum(s) (f_j - <f, p>)
template <typename S>
void losses_backward_typed(S* dl, const S* l, const S* lse, const S* f, S daux, S dz, int64_t T_, int64_t E,
                           RouterScore score) {
  const S ca = daux * static_cast<S>(E) / static_cast<S>(T_), cz = dz * S(2) / static_cast<S>(T_);
  parallel_for(T_, std::max<int64_t>(1, 4096 / std::max<int64_t>(E, 1)), [&](int64_t t0, int64_t t1) {
    std::vector<S> p(static_cast<size_t>(E));
    for (int64_t t = t0; t < t1; ++t) {
      const S* lr = l + t * E;
      S* d = dl + t * E;
      S ls, ss;
      token_probs(lr, E, score, p.data(), ls, ss);
      S g = 0;
      for (int64_t e = 0; e < E; ++e) g += f[e] * p[e];
      for (int64_t e = 0; e < E; ++e) {
        const S sm = std::exp(lr[e] - lse[t]);
        const S ja = score == RouterScore::Softmax ? p[e] * (f[e] - g)
                                                   : p[e] * ss * (S(1) - p[e] * ss) / ss * (f[e] - g);
        d[e] = ca * ja + cz * lse[t] * sm;
      }
    }
  });
}

// Segment selection, one row (segmentSelect and segmentTopk): the top K of vals[0, last] into
// bv / bi, best first: the own segment first when `force`, then by score (ties to the lower
// index, NaN largest); -inf is no candidate. Returns how many were kept (<= K). A running top-k:
// a candidate is compared with the k-th best so far and inserted only when it beats it (a few
// insertions per row on typical data).
// The sign bits of 8 int32 lanes (all ones or zero): one movmskps with AVX.
typedef int32_t i8v __attribute__((vector_size(32)));
inline int mask8(i8v m) {
#if defined(__AVX__)
  typedef float f8v __attribute__((vector_size(32)));
  f8v f;
  std::memcpy(&f, &m, sizeof(f));
  return __builtin_ia32_movmskps256(f);
#else
  int bits = 0;
  for (int j = 0; j < 8; ++j) bits |= (m[j] != 0) << j;
  return bits;
#endif
}

template <typename S>
int64_t select_row(const S* vals, int64_t last, int64_t own, bool force, int64_t K, S* bv, int32_t* bi) {
  const S ninf = -std::numeric_limits<S>::infinity();
  int64_t n = 0;  // kept so far, best first in bv/bi
  if (force) {
    bi[0] = static_cast<int32_t>(own);
    bv[0] = vals[own];
    n = 1;
  }
  const int64_t lo = force ? 1 : 0;  // the own segment's place is fixed
  S thr = ninf;                       // the k-th best value once the list is full
  auto consider = [&](int64_t s) {
    const S v = vals[s];
    // fast rejection: not above the k-th best (a later index never wins a tie), not NaN
    if (n == K && !(v > thr) && v == v) return;
    if ((force && s == own) || v == ninf) return;
    if (n == K && !better(v, static_cast<int>(s), bv[K - 1], bi[K - 1])) return;
    int64_t at = n < K ? n++ : K - 1;
    if (v == v) {
      // every kept index is lower than s (the own segment's slot is never compared), so a
      // plain > orders ties; a NaN in the list stops it (NaN ranks above)
      while (at > lo && v > bv[at - 1]) {
        bv[at] = bv[at - 1];
        bi[at] = bi[at - 1];
        --at;
      }
    } else {
      while (at > lo && better(v, static_cast<int>(s), bv[at - 1], bi[at - 1])) {
        bv[at] = bv[at - 1];
        bi[at] = bi[at - 1];
        --at;
      }
    }
    bv[at] = v;
    bi[at] = static_cast<int32_t>(s);
    if (n == K) thr = bv[K - 1];
  };
  const int64_t end = K - 1 < lo ? 0 : last + 1;  // K == 1 with the own segment kept: no scan
  if constexpr (std::is_same<S, float>::value) {
    // A threshold first: lane j of a vector pass keeps the largest candidate at positions
    // = j mod 16 (the own segment excluded). Those 16 values are candidates, so the (K -
    // lo)-th largest of them, t0, is at most the (K - lo)-th largest candidate: anything
    // below t0 can never be kept, and the scan looks only at the values that reach it. (A
    // NaN, fewer than 32 candidates, or K - lo > 16 take the plain scan below.)
    typedef float v8 __attribute__((vector_size(32)));
    typedef int32_t i8 __attribute__((vector_size(32)));
    const int64_t need = K - lo, full = end / 8;
    if (need >= 1 && need <= 16 && full >= 4) {
      // 16 lanes: even and odd blocks apart (a higher threshold than 8 maxima give)
      v8 mx[2];
      for (int j = 0; j < 8; ++j) mx[0][j] = mx[1][j] = ninf;
      i8 nan = i8{};
      for (int64_t q = 0; q < full; ++q) {
        v8 v;
        std::memcpy(&v, vals + q * 8, sizeof(v));
        if (force && own / 8 == q) v[own % 8] = ninf;
        nan |= v != v;
        mx[q & 1] = v > mx[q & 1] ? v : mx[q & 1];
      }
      const bool any_nan = mask8(nan) != 0;
      if (!any_nan) {
        // t0 = the need-th largest of the 16: the smallest value with fewer than `need` values
        // above it (counted branch-free, a lane's count negative: true compares are -1)
        i8 c0 = i8{}, c1 = i8{};
        for (int j = 0; j < 16; ++j) {
          const v8 x = v8{} + mx[j >> 3][j & 7];
          c0 += x > mx[0];
          c1 += x > mx[1];
        }
        const int32_t lim = static_cast<int32_t>(1 - need);
        const v8 pinf = v8{} + std::numeric_limits<float>::infinity();
        const v8 m0 = c0 >= lim ? mx[0] : pinf, m1 = c1 >= lim ? mx[1] : pinf;
        const v8 mm = m0 < m1 ? m0 : m1;
        float t0 = mm[0];
        for (int j = 1; j < 8; ++j) t0 = mm[j] < t0 ? mm[j] : t0;
        v8 tv;
        for (int j = 0; j < 8; ++j) tv[j] = t0;
        for (int64_t q = 0; q < full; ++q) {
          v8 v;
          std::memcpy(&v, vals + q * 8, sizeof(v));
          const i8 hit = v >= tv;
          int bits = mask8(hit);
          while (bits) {
            const int j = __builtin_ctz(bits);
            bits &= bits - 1;
            consider(q * 8 + j);
          }
        }
        for (int64_t x = full * 8; x < end; ++x) consider(x);
        return n;
      }
    }
  }
  for (int64_t s0 = 0; s0 < end; s0 += 8) {
    const int64_t s1 = std::min(end, s0 + 8);
    if (n == K && s1 - s0 == 8) {
      // a block of 8 with nothing above the k-th best and no NaN is passed whole: one
      // well-predicted branch per 8 values once the list is full
      bool any = false;
      for (int j = 0; j < 8; ++j) any |= (vals[s0 + j] > thr) | (vals[s0 + j] != vals[s0 + j]);
      if (!any) continue;
    }
    for (int64_t s = s0; s < s1; ++s) consider(s);
  }
  return n;
}

// Segment selection (segmentSelect): per query row of scores [B, H, Sq, nseg] (rows of `group`
// consecutive heads summed first), the top k segments (select_row): the own one (floor(p /
// segment), p = i + Sk - Sq) first when keep_own; segments that start after p are not
// candidates when causal; -1 pads. weights = softmax of the kept (summed) scores, 0 for
// padding. The same indices and weights for the group's heads.
template <typename S>
void segment_select_typed(int32_t* idx, S* w, const S* sc, int64_t B, int64_t H, int64_t Sq, int64_t nseg, int64_t K,
                          int64_t group, bool causal, bool keep_own, int64_t segment, int64_t Sk) {
  const int64_t rows = B * (H / group) * Sq;
  const S ninf = -std::numeric_limits<S>::infinity();
  parallel_for(rows, 64, [&](int64_t r0, int64_t r1) {
    std::vector<S> sum(static_cast<size_t>(nseg));
    std::vector<S> bv(static_cast<size_t>(K));
    std::vector<int32_t> bi(static_cast<size_t>(K));
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t i = r % Sq, bg = r / Sq, b = bg / (H / group), h0 = (bg % (H / group)) * group;
      const int64_t p = i + Sk - Sq;
      const int64_t own = p / segment;
      const int64_t last = causal ? std::min(nseg - 1, own) : nseg - 1;  // candidates [0, last]
      const S* row0 = sc + ((b * H + h0) * Sq + i) * nseg;
      const S* vals = row0;
      if (group > 1) {
        for (int64_t s = 0; s <= last; ++s) sum[s] = row0[s];
        for (int64_t g = 1; g < group; ++g) {
          const S* rg = row0 + g * Sq * nseg;
          for (int64_t s = 0; s <= last; ++s) sum[s] += rg[s];
        }
        vals = sum.data();
      }
      const int64_t n = select_row(vals, last, own, keep_own && own <= last, K, bv.data(), bi.data());
      // weights: softmax of the kept scores (NaN propagates)
      S mx = ninf;
      for (int64_t x = 0; x < n; ++x) mx = (bv[x] > mx || bv[x] != bv[x]) ? bv[x] : mx;
      S z = 0;
      for (int64_t x = 0; x < n; ++x) z += std::exp(bv[x] - mx);
      for (int64_t g = 0; g < group; ++g) {
        const int64_t o = ((b * H + h0 + g) * Sq + i) * K;
        for (int64_t x = 0; x < K; ++x) {
          idx[o + x] = x < n ? bi[x] : -1;
          w[o + x] = x < n ? std::exp(bv[x] - mx) / z : S(0);
        }
      }
    }
  });
}

// Fused segment selection (segmentTopk): the scores of segmentSelect formed block by block and
// never stored whole. First the summaries are packed transposed, kt[b, kv][D][npad] (segments
// contiguous, zero-padded to whole tiles; the size of the summaries, shared by the threads).
// Then a task is (b, selection head, block of kRows query rows): the group's query heads summed
// and scaled into a row-major block (sum_g scale q_g . k = scale (sum_g q_g) . k: one product for
// the group; bfloat16 widened), scored against the segments each tile of kTileRows rows can see
// (causal: up to its last row's own segment; about half of them over a causal sequence) in a
// register tile of kTileRows rows x 2 vectors of segments, the matmul micro-kernel's layout
// (broadcast query values, vector loads of kt; 12 accumulators with AVX2), stored row by row to
// a per-thread scratch [kRows][npad] (24 KB for 256 segments), from which select_row picks each
// row's segments. Each row's scores depend only on its inputs: deterministic whatever the threads.
template <typename S>
struct TopkVec {
  typedef S v __attribute__((vector_size(kVecBytes)));
  static constexpr int kLanes = kVecBytes / sizeof(S);
  static constexpr int kSegs = 2 * kLanes;  // segments per tile
};
constexpr int kTileRows = 6, kRows = 4 * kTileRows;

template <typename T, typename S>
void segment_topk_typed(int32_t* idx, const T* q, const S* kbar, int64_t B, int64_t H, int64_t Hkv, int64_t Sq,
                        int64_t D, int64_t nseg, int64_t K, int64_t group, bool causal, int64_t segment, int64_t Sk,
                        S scale) {
  using V = typename TopkVec<S>::v;
  constexpr int L = TopkVec<S>::kLanes, NS = TopkVec<S>::kSegs, R = kRows;
  const int64_t npad = (nseg + NS - 1) / NS * NS;
  std::vector<S> kt(static_cast<size_t>(B * Hkv * D * npad));
  parallel_for(B * Hkv, 1, [&](int64_t h0, int64_t h1) {
    for (int64_t bh = h0; bh < h1; ++bh) {
      const S* src = kbar + bh * nseg * D;
      S* dst = kt.data() + bh * D * npad;
      for (int64_t d = 0; d < D; ++d) {
        for (int64_t s = 0; s < nseg; ++s) dst[d * npad + s] = src[s * D + d];
        for (int64_t s = nseg; s < npad; ++s) dst[d * npad + s] = S(0);
      }
    }
  });
  const int64_t hs = H / group, G = H / Hkv, nblk = (Sq + R - 1) / R;
  const int64_t tasks = B * hs * nblk;
  // cost of a task ~ R x nseg x D multiply-adds: a few tasks per chunk when they are small
  const int64_t grain = std::max<int64_t>(1, 65536 / std::max<int64_t>(1, R * nseg * D));
  parallel_for(tasks, grain, [&](int64_t t0, int64_t t1) {
    // per-thread scratch, kept from call to call (a chunk is often a single task)
    static thread_local std::vector<S> qp, sc, bv;
    static thread_local std::vector<int32_t> bi;
    qp.resize(static_cast<size_t>(R * D));
    sc.resize(static_cast<size_t>(R * npad));
    bv.resize(static_cast<size_t>(K));
    bi.resize(static_cast<size_t>(K));
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t blk = t % nblk, bh = t / nblk, b = bh / hs, h0 = (bh % hs) * group;
      const int64_t i0 = blk * R, rn = std::min<int64_t>(R, Sq - i0);
      // qp[r][d] = scale * sum_g q[b, h0 + g, i0 + r, d]; rows past Sq are 0
      for (int64_t r = 0; r < R; ++r) {
        S* o = qp.data() + r * D;
        if (r >= rn) {
          std::fill(o, o + D, S(0));
          continue;
        }
        // plain loops over restrict pointers and a local scale: vectorised (a scalar loop with
        // the scale reloaded after every store was a quarter of the op's time)
        S* __restrict po = o;
        const T* __restrict qr = q + ((b * H + h0) * Sq + i0 + r) * D;
        const S sc1 = scale;
        for (int64_t d = 0; d < D; ++d) po[d] = Num<T>::load(qr[d]);
        for (int64_t g = 1; g < group; ++g) {
          const T* __restrict qg = qr + g * Sq * D;
          for (int64_t d = 0; d < D; ++d) po[d] += Num<T>::load(qg[d]);
        }
        for (int64_t d = 0; d < D; ++d) po[d] *= sc1;
      }
      const S* kb = kt.data() + (b * Hkv + h0 / G) * D * npad;
      for (int64_t r0 = 0; r0 < rn; r0 += kTileRows) {
        const int64_t own_last = (i0 + std::min<int64_t>(rn, r0 + kTileRows) - 1 + Sk - Sq) / segment;
        const int64_t nvis = causal ? std::min(nseg, own_last + 1) : nseg;
        const S* qr = qp.data() + r0 * D;
        for (int64_t s0 = 0; s0 < nvis; s0 += NS) {
          V acc[kTileRows][2];
#pragma GCC unroll 8
          for (int m = 0; m < kTileRows; ++m) acc[m][0] = acc[m][1] = V{};
          const S* kc = kb + s0;
          for (int64_t d = 0; d < D; ++d) {
            V k0, k1;
            std::memcpy(&k0, kc + d * npad, sizeof(V));
            std::memcpy(&k1, kc + d * npad + L, sizeof(V));
#pragma GCC unroll 8
            for (int m = 0; m < kTileRows; ++m) {
              const S a = qr[m * D + d];
              acc[m][0] += k0 * a;
              acc[m][1] += k1 * a;
            }
          }
#pragma GCC unroll 8
          for (int m = 0; m < kTileRows; ++m) {
            std::memcpy(&sc[(r0 + m) * npad + s0], &acc[m][0], sizeof(V));
            std::memcpy(&sc[(r0 + m) * npad + s0 + L], &acc[m][1], sizeof(V));
          }
        }
      }
      for (int64_t r = 0; r < rn; ++r) {
        const int64_t i = i0 + r, own = (i + Sk - Sq) / segment;
        const int64_t last = causal ? std::min(nseg - 1, own) : nseg - 1;
        const int64_t n = select_row(&sc[r * npad], last, own, causal && own <= last, K, bv.data(), bi.data());
        for (int64_t g = 0; g < group; ++g) {
          int32_t* o = idx + ((b * H + h0 + g) * Sq + i) * K;
          for (int64_t x = 0; x < K; ++x) o[x] = x < n ? bi[x] : -1;
        }
      }
    }
  });
}

}  // namespace

void router_gate(const View& indices, const View& weights, const View& positions, const View& counts,
                 const View& scores, const View& logits, const View& bias, const View& noise, RouterScore score, int k,
                 bool normalize, double route_scale, int groups, int top_groups, int capacity) {
  const int64_t T_ = logits.shape[0], E = logits.shape[1];
  int32_t* pc = static_cast<int32_t*>(counts.data);
  if (T_ == 0) {
    std::fill(pc, pc + E, 0);
    return;
  }
  dispatch_float(dt(logits), "router_gate", [&](auto tag) {
    using T = decltype(tag);
    using S = typename std::conditional<std::is_same_v<T, double>, double, float>::type;
    gate_typed<T, S>(static_cast<int32_t*>(indices.data), static_cast<S*>(weights.data),
                     static_cast<int32_t*>(positions.data), pc, static_cast<S*>(scores.data),
                     static_cast<const T*>(logits.data), static_cast<const S*>(bias.data),
                     static_cast<const S*>(noise.data), T_, E, score, k, normalize, route_scale, groups, top_groups,
                     capacity);
  });
}

void router_gate_backward(const View& dlogits, const View& scores, const View& indices, const View& dweights,
                          RouterScore score, bool normalize, double route_scale) {
  const int64_t T_ = scores.shape[0], E = scores.shape[1], K = indices.shape[1];
  if (T_ == 0) return;
  if (dt(scores) == DType::F64)
    gate_backward_typed<double>(static_cast<double*>(dlogits.data), static_cast<const double*>(scores.data),
                                static_cast<const int32_t*>(indices.data), static_cast<const double*>(dweights.data), T_,
                                E, K, score, normalize, route_scale);
  else
    gate_backward_typed<float>(static_cast<float*>(dlogits.data), static_cast<const float*>(scores.data),
                               static_cast<const int32_t*>(indices.data), static_cast<const float*>(dweights.data), T_, E,
                               K, score, normalize, route_scale);
}

void segment_select(const View& indices, const View& weights, const View& scores, int32_t group, bool causal,
                    bool keep_own, int64_t segment, int64_t key_length) {
  const int64_t B = scores.shape[0], H = scores.shape[1], Sq = scores.shape[2], nseg = scores.shape[3];
  const int64_t K = indices.shape[3];
  if (B * H * Sq == 0) return;
  int32_t* pi = static_cast<int32_t*>(indices.data);
  switch (dt(scores)) {
    case DType::F32:
      return segment_select_typed<float>(pi, static_cast<float*>(weights.data), static_cast<const float*>(scores.data),
                                         B, H, Sq, nseg, K, group, causal, keep_own, segment, key_length);
    case DType::F64:
      return segment_select_typed<double>(pi, static_cast<double*>(weights.data),
                                          static_cast<const double*>(scores.data), B, H, Sq, nseg, K, group, causal,
                                          keep_own, segment, key_length);
    default: fail(ErrorCode::DType, "segmentSelect: scores must be float32 or float64, got ", dtype_name(dt(scores)));
  }
}

void segment_topk(const View& indices, const View& q, const View& summaries, double scale, int32_t group, bool causal,
                  int64_t segment, int64_t key_length) {
  const int64_t B = q.shape[0], H = q.shape[1], Sq = q.shape[2], D = q.shape[3];
  const int64_t Hkv = summaries.shape[1], nseg = summaries.shape[2], K = indices.shape[3];
  if (B * H * Sq == 0) return;
  int32_t* pi = static_cast<int32_t*>(indices.data);
  dispatch_float(dt(q), "segmentTopk", [&](auto tag) {
    using T = decltype(tag);
    using S = typename std::conditional<std::is_same_v<T, double>, double, float>::type;
    segment_topk_typed<T, S>(pi, static_cast<const T*>(q.data), static_cast<const S*>(summaries.data), B, H, Hkv, Sq, D,
                             nseg, K, group, causal, segment, key_length, static_cast<S>(scale));
  });
}

void router_losses(const View& aux, const View& z, const View& lse, const View& f, const View& logits, const View& first,
                   RouterScore score) {
  const int64_t T_ = logits.shape[0], E = logits.shape[1];
  const int32_t* pf = static_cast<const int32_t*>(first.data);
  if (dt(logits) == DType::F64)
    losses_typed<double>(static_cast<double*>(aux.data), static_cast<double*>(z.data), static_cast<double*>(lse.data),
                         static_cast<double*>(f.data), static_cast<const double*>(logits.data), pf, T_, E, score);
  else
    losses_typed<float>(static_cast<float*>(aux.data), static_cast<float*>(z.data), static_cast<float*>(lse.data),
                        static_cast<float*>(f.data), static_cast<const float*>(logits.data), pf, T_, E, score);
}

void router_losses_backward(const View& dlogits, const View& logits, const View& lse, const View& f, const View& daux,
                            const View& dz, RouterScore score) {
  const int64_t T_ = logits.shape[0], E = logits.shape[1];
  if (T_ == 0) return;
  if (dt(logits) == DType::F64)
    losses_backward_typed<double>(static_cast<double*>(dlogits.data), static_cast<const double*>(logits.data),
                                  static_cast<const double*>(lse.data), static_cast<const double*>(f.data),
                                  *static_cast<const double*>(daux.data), *static_cast<const double*>(dz.data), T_, E,
                                  score);
  else
    losses_backward_typed<float>(static_cast<float*>(dlogits.data), static_cast<const float*>(logits.data),
                                 static_cast<const float*>(lse.data), static_cast<const float*>(f.data),
                                 *static_cast<const float*>(daux.data), *static_cast<const float*>(dz.data), T_, E,
                                 score);
}

}  // namespace DR_ISA
}  // namespace cpu
}  // namespace dualroute
