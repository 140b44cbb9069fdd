// Shared by the forward tests (attn_fwd_test.cpp, attn_simt_test.cpp): random inputs and the
// float64 forward reference of one attention case, written from the contract
// (native/core/attention.h), for tensors stored as float or bf16 bits (uint16_t).
#pragma once
#include <cmath>
#include <random>
#include <vector>

#include "harness.h"

namespace harness {

// Value of a stored element, and a float stored as S.
inline double val(float x) { return x; }
inline double val(uint16_t x) { return bf2f(x); }
template <class S> S enc(float x);
template <> inline float enc<float>(float x) { return x; }
template <> inline uint16_t enc<uint16_t>(float x) { return f2bf(x); }

// Uniform values in [lo, hi), stored as S (for uint16_t the same draws as random_bf16).
template <class S>
void fill(Buf<S>& b, std::mt19937& r, float lo, float hi) {
  std::uniform_real_distribution<float> u(lo, hi);
  for (size_t i = 0; i < b.size(); ++i) b[i] = enc<S>(u(r));
}

// Inputs and reference of one forward case. Shape: tag, B, Hq, Hkv, Sq, Sk, mask, causal, window,
// pad (0 none; 1 a random quarter of the keys; 2 keys [0, 70); 3 every key of batch 0), n (> 0:
// query_index of n rows, with repeats and out-of-range entries), dual (1 gates per row, 2 per
// head), grows (dual: random global_rows), sc (scale = sc * 2 / sqrt(D)), poison (non-finite
// inputs, see poison()). St: float or uint16_t.
//   out, lse per output row (b, h, r): softmax(scale q k^T over the visible, unpadded keys) v and
//   log sum exp; 0 and -inf for a row with no such key or a bad query_index (listed in bad as
//   b * n + r). Dual: out_g, lse_g the global path (0 / -inf off global_rows), mix the gated sum.
template <class Shape, class St>
struct Problem {
  Shape s;
  int D, n, G;
  double scale;
  Buf<St> q, k, v, gates;
  Buf<uint8_t> pad, grows;
  Buf<int32_t> qidx, qcount;  // qcount: s.ragged, the real rows of each batch row
  std::vector<double> out, lse, out_g, lse_g, mix;  // mix: dual only
  std::vector<char> empty, empty_g, empty_mix;
  std::vector<long long> bad;

  Problem(const Shape& sh, int D_, std::mt19937& r)
      : s(sh), D(D_), n(sh.n ? sh.n : sh.Sq), G(sh.Hq / sh.Hkv), scale(sh.sc * 2.0 / std::sqrt(double(D_))),
        q("q", size_t(sh.B) * sh.Hq * sh.Sq * D_, 0), k("k", size_t(sh.B) * sh.Hkv * sh.Sk * D_, 0),
        v("v", size_t(sh.B) * sh.Hkv * sh.Sk * D_, 0),
        gates("gates", sh.dual == 1 ? size_t(sh.B) * sh.Sq * 2 : sh.dual == 2 ? size_t(sh.B) * sh.Hq * sh.Sq * 2 : 0, 0),
        pad("key_padding", sh.pad ? size_t(sh.B) * sh.Sk : 0, 0), grows("global_rows", sh.grows ? size_t(sh.B) * sh.Sq : 0, 1),
        qidx("query_index", sh.n ? size_t(sh.B) * sh.n : 0, 0),
        qcount("query_count", sh.ragged ? size_t(sh.B) : 0, 0) {
    fill(q, r, -1.f, 1.f);
    fill(k, r, -1.f, 1.f);
    fill(v, r, -1.f, 1.f);
    fill(gates, r, -1.f, 1.5f);
    for (int b = 0; b < s.B && s.pad; ++b)
      for (int j = 0; j < s.Sk; ++j) {
        uint8_t& p = pad[size_t(b) * s.Sk + j];
        if (s.pad == 1) p = r() % 4 == 0;
        if (s.pad == 2) p = j < 70;
        if (s.pad == 3) p = b == 0 || r() % 5 == 0;
      }
    poison();
    for (size_t i = 0; i < grows.size(); ++i) grows[i] = r() % 2;
    for (size_t i = 0; i < qidx.size(); ++i) {
      qidx[i] = static_cast<int32_t>(r() % (s.Sq + 6)) - 3;  // repeats, and -3..-1, Sq..Sq+2
    }
    // ragged: batch b keeps rows [0, qcount[b]) (0, all, or some); the padding's entries (often
    // out of range) must never be read or reported
    for (int b = 0; b < s.B && s.ragged; ++b) qcount[b] = b % 3 == 0 ? n / 2 + 1 : b % 3 == 1 ? 0 : n;
    for (size_t i = 0; i < qidx.size(); ++i) {
      const int rr = static_cast<int>(i % size_t(n)), b = static_cast<int>(i / size_t(n));
      if (s.ragged && rr >= qcount[b]) continue;
      if (qidx[i] < 0 || qidx[i] >= s.Sq) bad.push_back(static_cast<long long>(i));
    }
    reference();
  }
  // Non-finite inputs (every batch and head), by s.poison: 1 NaN values of the last 4 keys (most
  // rows cannot see them); 2 a NaN in key Sk/2 and a NaN query row Sq/3; 3 +inf in key Sk/3 and
  // -inf in query row 2Sq/3; 4 +inf in the value of key Sk/2 and NaN in that of key 1. The
  // reference then gives what the materialised softmax(q k^T) v gives (NaN rows, infinities).
  void poison() {
    const int Hk = s.Hkv;
    auto setk = [&](Buf<St>& x, int heads, int rows, int row, int d, float v) {
      if (row < 0 || row >= rows) return;
      for (int b = 0; b < s.B; ++b)
        for (int h = 0; h < heads; ++h)
          for (int x0 = 0; x0 < D; ++x0)
            if (d < 0 || x0 == d % D) x[((size_t(b) * heads + h) * rows + row) * D + x0] = enc<St>(v);
    };
    switch (s.poison) {
      case 1:
        for (int j = s.Sk - 4; j < s.Sk; ++j) setk(v, Hk, s.Sk, j, -1, NAN);
        break;
      case 2:
        setk(k, Hk, s.Sk, s.Sk / 2, 3, NAN);
        setk(q, s.Hq, s.Sq, s.Sq / 3, -1, NAN);
        break;
      case 3:
        setk(k, Hk, s.Sk, s.Sk / 3, 1, INFINITY);
        setk(q, s.Hq, s.Sq, 2 * s.Sq / 3, 2, -INFINITY);
        break;
      case 4:
        setk(v, Hk, s.Sk, s.Sk / 2, 0, INFINITY);
        setk(v, Hk, s.Sk, 1, 5, NAN);
        break;
      default:
        break;
    }
  }
  size_t qrow(int b, int h, int qi) const { return ((size_t(b) * s.Hq + h) * s.Sq + qi) * D; }
  size_t krow(int b, int h, int j) const { return ((size_t(b) * s.Hkv + h / G) * s.Sk + j) * D; }
  int query(int b, int rr) const { return s.n ? qidx[size_t(b) * n + rr] : rr; }
  bool vis(int b, int mask, int causal, long long window, long long p, int j) const {
    return !(s.pad && pad[size_t(b) * s.Sk + j]) && visible(mask, causal, window, p, j);
  }
  double dot(const Buf<St>& x, size_t xo, const Buf<St>& y, size_t yo) const {
    double d = 0;
    for (int i = 0; i < D; ++i) d += val(x[xo + i]) * val(y[yo + i]);
    return d;
  }
  // One path of one row: o[D] and the lse (-inf, o = 0 when no key is visible).
  double attend(int b, int h, int qi, int mask, int causal, long long window, double* o) const {
    const long long p = static_cast<long long>(qi) + s.Sk - s.Sq;
    std::vector<double> sc;
    std::vector<int> js;
    double m = -INFINITY, l = 0;
    for (int j = 0; j < s.Sk; ++j)
      if (vis(b, mask, causal, window, p, j)) {
        sc.push_back(scale * dot(q, qrow(b, h, qi), k, krow(b, h, j)));
        js.push_back(j);
        m = std::max(m, sc.back());
      }
    std::fill(o, o + D, 0.0);
    if (js.empty()) return -INFINITY;
    for (double x : sc) l += std::exp(x - m);
    for (size_t i = 0; i < js.size(); ++i)
      for (int x = 0; x < D; ++x) o[x] += std::exp(sc[i] - m) / l * val(v[krow(b, h, js[i]) + x]);
    return m + std::log(l);
  }
  void reference() {
    const size_t rows = size_t(s.B) * s.Hq * n;
    out.assign(rows * D, 0), out_g.assign(rows * D, 0), mix.assign(rows * D, 0);
    lse.assign(rows, -INFINITY), lse_g.assign(rows, -INFINITY);
    empty.assign(rows, 1), empty_g.assign(rows, 1), empty_mix.assign(rows, 1);
    for (int b = 0; b < s.B; ++b)
      for (int h = 0; h < s.Hq; ++h)
        for (int rr = 0; rr < n; ++rr) {
          const size_t row = (size_t(b) * s.Hq + h) * n + rr;
          if (s.ragged && rr >= qcount[b]) continue;  // padding: out 0, lse -inf
          const int qi = query(b, rr);
          if (qi < 0 || qi >= s.Sq) continue;
          lse[row] = attend(b, h, qi, s.mask, s.causal, s.window, &out[row * D]);
          empty[row] = std::isinf(lse[row]);
          if (!s.dual) continue;
          if (!s.grows || grows[size_t(b) * s.Sq + qi]) {
            lse_g[row] = attend(b, h, qi, 0, s.causal, 1, &out_g[row * D]);
            empty_g[row] = std::isinf(lse_g[row]);
          }
          const size_t gi = 2 * (s.dual == 2 ? row : size_t(b) * s.Sq + rr);
          const double g0 = val(gates[gi]), g1 = val(gates[gi + 1]);
          for (int x = 0; x < D; ++x) mix[row * D + x] = g0 * out[row * D + x] + g1 * out_g[row * D + x];
          empty_mix[row] = empty[row] && empty_g[row];
        }
  }
  // FwdParams / BwdParams fields common_params fills.
  template <class P>
  void common(P& p) const {
    p.q = q.data();
    p.k = k.data();
    p.v = v.data();
    p.Hq = s.Hq;
    p.Hkv = s.Hkv;
    p.G = G;
    p.Sq = s.Sq;
    p.Sk = s.Sk;
    p.n = n;
    p.D = D;
    p.causal = s.causal;
    p.mask = s.mask;
    p.window = s.mask == 0 ? 1 : std::min<long long>(s.window, 1LL << 40);
    p.pad = s.pad ? pad.data() : nullptr;
    p.qidx = s.n ? qidx.data() : nullptr;
    p.qcount = s.ragged ? qcount.data() : nullptr;
  }
};

}  // namespace harness
