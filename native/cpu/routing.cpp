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
#include <limits>
#include <numeric>
#include <vector>

#include "common.h"

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
      int n = 0;
      for (int x = 0; x < static_cast<int>(E); ++x)
        if (allowed[x]) order[n++] = x;
      std::partial_sort(order.begin(), order.begin() + k, order.begin() + n,
                        [&](int a, int c) { return better(sel[a], a, sel[c], c); });
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

}  // namespace DR_ISA
}  // namespace cpu
}  // namespace dualroute
