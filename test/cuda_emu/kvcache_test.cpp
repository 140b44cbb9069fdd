// The decode-cache kernels (native/cuda/kvcache.cu) in the emulator against float64 references
// written from core/kvcache.h with plain loops. Each case is one step of N sequences:
//   1. caches [S, Hkv, C, D] holding positions [max(0, L0 - C), L0) of every sequence's slot at
//      rows p % C (every other row, and the slots no sequence uses, NaN: a read of a row the
//      contract does not name shows), segment means of the segments so far (NaN after them);
//   2. kv_check + kv_append_rows (+ kv_append_means) append Sq positions: the caches must equal
//      the contract's writes (position L0 + i to row (L0 + i) % C, in order, so an append longer
//      than C keeps its last C) bit for bit, every other element untouched; the touched segments'
//      means equal the float64 mean of their keys (1e-5 relative), the others keep their bits;
//   3. kv_check + kv_attn_warp: the Sq queries at the newest positions against the caches the
//      append left: out against the materialised softmax over the contract's visible keys
//      (lo = max(0, L - C) <= j <= p; sliding j > p - window; block j / window == p / window;
//      with means the own segment plus the topk - 1 best earlier segments by scale * sum over the
//      group's heads of q . means, ties to the lower segment). Tolerance 2e-5 of max |ref|
//      (float32), 2e-2 (bf16); exact 0 on rows that see no key.
// Scores of random inputs can nearly tie; where the float64 scores of the last picked and the
// first left-out segment are within 1e-5, either choice is accepted (the row is compared with the
// closer reference). The `quant` shapes make every score exact in float and in double (values
// multiples of 1/8, scale 1/4, power-of-two segments) and repeat the keys every three segments,
// so exact ties happen and must go to the lower segment.
// Errors (`err`): a slot out of range, a negative length, an append with means past C, a repeated
// slot (append), a length below Sq or past C with means (attention), each at sequence 1 with a
// later problem at another sequence: the slot must hold sequence 1's n * 4 + kind, and the call
// must write nothing (caches, means, out untouched).
// Launches as kvcache.cu's host code makes them (extract.js checks); the grid-stride kernels also
// run on a 2-block grid so their loops go round.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <memory>
#include <numeric>
#include <random>
#include <vector>

#include "kvcache_kernel.inc"
#include "harness.h"

using namespace dualroute::cuda;
using harness::Buf;
using harness::cfg_of;
using harness::fmt;

namespace {

constexpr int kThreads = 256;  // device.cuh's (host part, not extracted)

long long grid_of(long long n, bool small) { return small ? 2 : std::max(1LL, (n + kThreads - 1) / kThreads); }

enum Err { kNone, kSlotRange, kNegLength, kPastC, kRepeat, kAttnShort, kAttnPastC };

struct Shape {
  const char* tag;
  int N, Hq, Hkv, D, Sq, S, C;
  int mask, window;          // 0 global, 1 sliding, 2 block
  int segment, topk, group;  // segment 0: no means
  int lmin, lmax;            // the lengths before the append, drawn from [lmin, lmax]
  int bf = 0;                // bfloat16 caches, k, v, q, out
  int quant = 0;             // exact scores, repeated keys (see above)
  int err = kNone;
};

// A tensor stored as float or bf16; put() stores a float and returns the stored value.
struct Store {
  bool bf;
  std::unique_ptr<Buf<float>> f;
  std::unique_ptr<Buf<uint16_t>> b;
  Store(const char* name, bool bf16, size_t n, bool unwritten = false) : bf(bf16) {
    f = std::make_unique<Buf<float>>(name, bf ? 0 : n, unwritten ? harness::unwritten_float() : NAN);
    b = std::make_unique<Buf<uint16_t>>(name, bf ? n : 0, unwritten ? harness::kUnwrittenBf16 : f2bf(NAN));
  }
  void* ptr() { return bf ? static_cast<void*>(b->data()) : f->data(); }
  size_t size() const { return bf ? b->size() : f->size(); }
  double get(size_t i) const { return bf ? bf2f((*b)[i]) : (*f)[i]; }
  float getf(size_t i) const { return bf ? bf2f((*b)[i]) : (*f)[i]; }
  double put(size_t i, float x) {
    if (bf) {
      (*b)[i] = f2bf(x);
      return bf2f((*b)[i]);
    }
    (*f)[i] = x;
    return x;
  }
  uint32_t bits(size_t i) const {
    if (bf) return (*b)[i];
    uint32_t u;
    memcpy(&u, &(*f)[i], 4);
    return u;
  }
  float value_of(uint32_t u) const {
    if (bf) return bf2f(static_cast<uint16_t>(u));
    float x;
    memcpy(&x, &u, 4);
    return x;
  }
  std::string guards() const { return bf ? b->guards() : f->guards(); }
};

uint32_t fbits(float x) {
  uint32_t u;
  memcpy(&u, &x, 4);
  return u;
}

template <int DPL>
std::string run_dpl(const Shape& s, const harness::Mode& mode, uint32_t seed, bool small) {
  emu::clear_globals();
  std::mt19937 r(seed);
  std::uniform_real_distribution<float> u(-1.f, 1.f);
  std::uniform_int_distribution<int> qi(-8, 8);
  auto draw = [&] { return s.quant ? qi(r) / 8.f : u(r); };
  const int N = s.N, Hq = s.Hq, Hkv = s.Hkv, D = s.D, Sq = s.Sq, S = s.S, C = s.C, G = Hq / Hkv;
  const int seg = s.segment, M = seg ? (C + seg - 1) / seg : 0;
  const bool means_on = seg > 0;
  const float scale = s.quant ? 0.25f : 1.f / std::sqrt(static_cast<float>(D));

  // sequences: distinct slots, lengths before the append
  std::vector<int> perm(S);
  std::iota(perm.begin(), perm.end(), 0);
  std::shuffle(perm.begin(), perm.end(), r);
  Buf<int32_t> slot("slots", N, 0), len("lengths", N, 0);
  std::uniform_int_distribution<int> ld0(s.lmin, s.lmax);
  for (int n = 0; n < N; ++n) {
    slot[n] = perm[n];
    len[n] = ld0(r);
    if (means_on && len[n] + Sq > C) return fmt("shape table: lengths %d + %d past C %d with means", len[n], Sq, C);
  }

  // the key and value of every position of every sequence (as stored): kp[n][(h * Lmax + j) * D + d]
  std::vector<int> L0(N), L(N);
  for (int n = 0; n < N; ++n) {
    L0[n] = len[n];
    L[n] = L0[n] + Sq;
  }
  const size_t ncache = size_t(S) * Hkv * C * D, nkv = size_t(N) * Hkv * Sq * D, nq = size_t(N) * Hq * Sq * D;
  Store kc("k_cache", s.bf, ncache), vc("v_cache", s.bf, ncache), kin("k", s.bf, nkv), vin("v", s.bf, nkv);
  std::vector<std::vector<double>> kp(N), vp(N);
  // quant: the key of position j repeats that of j - 3 * segment (whole segments repeat)
  const int period = s.quant ? 3 * seg : 0;
  std::vector<std::vector<float>> kbase(Hkv);
  if (s.quant)
    for (int h = 0; h < Hkv; ++h) {
      kbase[h].resize(size_t(period) * D);
      for (float& x : kbase[h]) x = draw();
    }
  auto key_value = [&](int h, int j, int d) { return s.quant ? kbase[h][size_t(j % period) * D + d] : draw(); };
  for (int n = 0; n < N; ++n) {
    kp[n].assign(size_t(Hkv) * L[n] * D, NAN);
    vp[n].assign(size_t(Hkv) * L[n] * D, NAN);
    for (int h = 0; h < Hkv; ++h)
      for (int j = 0; j < L[n]; ++j)
        for (int d = 0; d < D; ++d) {
          const size_t at = (size_t(h) * L[n] + j) * D + d;
          const float kx = key_value(h, j, d), vx = draw();
          if (j >= L0[n]) {  // appended now: k, v [n, h, j - L0, d]
            const size_t e = ((size_t(n) * Hkv + h) * Sq + (j - L0[n])) * D + d;
            kp[n][at] = kin.put(e, kx);
            vp[n][at] = vin.put(e, vx);
          } else if (j >= L0[n] - C) {  // still held by the ring
            const size_t e = ((size_t(slot[n]) * Hkv + h) * C + j % C) * D + d;
            kp[n][at] = kc.put(e, kx);
            vp[n][at] = vc.put(e, vx);
          }
        }
  }
  auto key = [&](int n, int h, int j, int d) { return kp[n][(size_t(h) * L[n] + j) * D + d]; };
  auto val = [&](int n, int h, int j, int d) { return vp[n][(size_t(h) * L[n] + j) * D + d]; };

  // means of the segments so far (float64 means rounded to float), NaN after them
  const size_t nmeans = means_on ? size_t(S) * Hkv * M * D : 0;
  Buf<float> means("means", nmeans, NAN);
  auto mean_of = [&](int n, int h, int sg, int upto, int d) {
    const int j0 = sg * seg, j1 = std::min(upto, j0 + seg);
    double a = 0;
    for (int j = j0; j < j1; ++j) a += key(n, h, j, d);
    return a / (j1 - j0);
  };
  if (means_on)
    for (int n = 0; n < N; ++n)
      for (int h = 0; h < Hkv; ++h)
        for (int sg = 0; sg * seg < L0[n]; ++sg)
          for (int d = 0; d < D; ++d)
            means[((size_t(slot[n]) * Hkv + h) * M + sg) * D + d] = static_cast<float>(mean_of(n, h, sg, L0[n], d));

  // errors: sequence 1's problem, and a later one that must not win
  unsigned long long want_bad = ~0ull, want_bad_attn = ~0ull;
  Buf<int32_t> slot_a("slots_attn", N, 0), len_a("lengths_attn", N, 0);
  for (int n = 0; n < N; ++n) {
    slot_a[n] = slot[n];
    len_a[n] = L[n];
  }
  if (s.err != kNone && N < 3) return "shape table: error cases need N >= 3";
  switch (s.err) {
    case kSlotRange:
      slot[1] = S;
      slot[N - 1] = -1;
      slot_a[1] = S + 3;
      len_a[N - 1] = -1;
      want_bad = 1 * 4 + kKvBadSlot;
      want_bad_attn = 1 * 4 + kKvBadSlot;
      break;
    case kNegLength:
      len[1] = -1;
      slot[N - 1] = S;
      want_bad = 1 * 4 + kKvBadLength;
      break;
    case kPastC:
      len[1] = C - Sq + 1;
      slot[2] = slot[0];
      want_bad = 1 * 4 + kKvBadCapacity;
      break;
    case kRepeat:
      slot[1] = slot[0];
      len[2] = -5;
      want_bad = 1 * 4 + kKvBadRepeat;
      break;
    case kAttnShort:
      len_a[1] = Sq - 1;
      slot_a[N - 1] = S;
      want_bad_attn = 1 * 4 + kKvBadLength;
      break;
    case kAttnPastC:
      len_a[1] = C + 1;
      slot_a[2] = -7;
      want_bad_attn = 1 * 4 + kKvBadCapacity;
      break;
    default: break;
  }
  const bool append_err = want_bad != ~0ull;

  // ---- the append ------------------------------------------------------------------------------
  // expected caches: the contract's writes in order over the caches as they were
  std::vector<uint32_t> want_k(ncache), want_v(ncache), want_m(nmeans);
  for (size_t e = 0; e < ncache; ++e) {
    want_k[e] = kc.bits(e);
    want_v[e] = vc.bits(e);
  }
  for (size_t e = 0; e < nmeans; ++e) want_m[e] = fbits(means[e]);
  if (!append_err)
    for (int n = 0; n < N; ++n)
      for (int h = 0; h < Hkv; ++h)
        for (int i = 0; i < Sq; ++i)
          for (int d = 0; d < D; ++d) {
            const long long p = static_cast<long long>(L0[n]) + i;
            const size_t dst = ((size_t(slot[n]) * Hkv + h) * C + p % C) * D + d;
            const size_t src = ((size_t(n) * Hkv + h) * Sq + i) * D + d;
            want_k[dst] = kin.bits(src);
            want_v[dst] = vin.bits(src);
          }
  unsigned long long bad = ~0ull;
  KvAppendParams A{};
  A.kc = kc.ptr();
  A.vc = vc.ptr();
  A.means = means_on ? means.data() : nullptr;
  A.k = kin.ptr();
  A.v = vin.ptr();
  A.len = len.data();
  A.slot = slot.data();
  A.bad = &bad;
  A.N = N;
  A.Hkv = Hkv;
  A.Sq = Sq;
  A.D = D;
  A.C = C;
  A.M = M;
  A.segment = means_on ? seg : 1;
  const int nt = means_on && Sq > 0 ? std::min((Sq - 1) / seg + 2, M) : 0;
  emu::launch(cfg_of("kv_check", grid_of(N, small), kThreads, mode, seed),
              [&] { kv_check(A.len, A.slot, A.bad, N, S, C, Sq, 1, means_on ? 1 : 0); });
  if (bad != want_bad) return fmt("append: bad slot %llu, want %llu", bad, want_bad);
  const long long rows_total = static_cast<long long>(N) * Hkv * std::min(Sq, C) * D;
  if (s.bf)
    emu::launch(cfg_of("kv_append_rows<bf16>", grid_of(rows_total, small), kThreads, mode, seed),
                [&] { kv_append_rows<bf16_t>(A); });
  else
    emu::launch(cfg_of("kv_append_rows", grid_of(rows_total, small), kThreads, mode, seed),
                [&] { kv_append_rows<float>(A); });
  if (nt > 0) {
    const long long mtotal = static_cast<long long>(N) * Hkv * nt * D;
    if (s.bf)
      emu::launch(cfg_of("kv_append_means<bf16>", grid_of(mtotal, small), kThreads, mode, seed),
                  [&] { kv_append_means<bf16_t>(A, nt); });
    else
      emu::launch(cfg_of("kv_append_means", grid_of(mtotal, small), kThreads, mode, seed),
                  [&] { kv_append_means<float>(A, nt); });
  }
  for (const std::string& g : {kc.guards(), vc.guards(), means.guards(), kin.guards(), vin.guards()})
    if (!g.empty()) return g;
  for (size_t e = 0; e < ncache; ++e) {
    const bool kbad = kc.bits(e) != want_k[e];
    if (kbad || vc.bits(e) != want_v[e]) {
      const size_t d = e % D, row = e / D % C, h = e / D / C % Hkv, sl = e / D / C / Hkv;
      const Store& c = kbad ? kc : vc;
      return fmt("append: %s_cache[%zu, %zu, %zu, %zu] = %g (bits %x), want %g (bits %x)%s", kbad ? "k" : "v", sl, h,
                 row, d, c.getf(e), c.bits(e), c.value_of(kbad ? want_k[e] : want_v[e]), kbad ? want_k[e] : want_v[e],
                 append_err ? ": a rejected append must write nothing" : "");
    }
  }
  if (means_on) {
    std::vector<char> touched(size_t(S) * Hkv * M, 0);
    if (!append_err)
      for (int n = 0; n < N; ++n)
        for (int h = 0; h < Hkv; ++h)
          for (int sg = L0[n] / seg; sg <= (L[n] - 1) / seg; ++sg) {
            const size_t mi = (size_t(slot[n]) * Hkv + h) * M + sg;
            touched[mi] = 1;
            for (int d = 0; d < D; ++d) {
              const double w = mean_of(n, h, sg, L[n], d);
              const float g = means[mi * D + d];
              if (!(std::fabs(g - w) <= 1e-5 * (1 + std::fabs(w))))
                return fmt("append: means[%d, %d, %d, %d] = %.8g, want %.8g", slot[n], h, sg, d, g, w);
            }
          }
    for (size_t mi = 0; mi < touched.size(); ++mi)
      if (!touched[mi])
        for (int d = 0; d < D; ++d)
          if (fbits(means[mi * D + d]) != want_m[mi * D + d])
            return fmt("append: means of (slot %zu, head %zu, segment %zu) changed at d %d (not touched)",
                       mi / M / Hkv, mi / M % Hkv, mi % M, d);
  }
  if (append_err && want_bad_attn == ~0ull) return "";  // (err-slot goes on: the attention must refuse too)

  // ---- the attention -----------------------------------------------------------------------------
  Store q("q", s.bf, nq), out("out", s.bf, nq, true);
  std::vector<double> qv(nq);
  for (size_t e = 0; e < nq; ++e) qv[e] = q.put(e, draw());
  KvAttnParams P{};
  P.q = q.ptr();
  P.o = out.ptr();
  P.kc = kc.ptr();
  P.vc = vc.ptr();
  P.len = len_a.data();
  P.slot = slot_a.data();
  P.means = means_on ? means.data() : nullptr;
  P.rows = static_cast<long long>(N) * Hq * Sq;
  P.window = std::min<long long>(s.window, 1LL << 40);
  P.Hq = Hq;
  P.Hkv = Hkv;
  P.Sq = Sq;
  P.D = D;
  P.C = C;
  P.M = M;
  P.segment = means_on ? seg : 1;
  P.topk = s.topk;
  P.group = means_on ? s.group : 1;
  P.mask = s.mask;
  P.scale = scale;
  bad = ~0ull;
  P.bad = &bad;
  emu::launch(cfg_of("kv_check", grid_of(N, small), kThreads, mode, seed),
              [&] { kv_check(P.len, P.slot, P.bad, N, S, C, Sq, 0, means_on ? 1 : 0); });
  if (bad != want_bad_attn) return fmt("attention: bad slot %llu, want %llu", bad, want_bad_attn);
  const long long blocks = (P.rows + kKvWarps - 1) / kKvWarps;
  if (s.bf)
    emu::launch(cfg_of("kv_attn_warp<bf16>", blocks, kKvWarps * 32, mode, seed), [&] { kv_attn_warp<bf16_t, DPL>(P); });
  else
    emu::launch(cfg_of("kv_attn_warp", blocks, kKvWarps * 32, mode, seed), [&] { kv_attn_warp<float, DPL>(P); });
  for (const std::string& g : {out.guards(), q.guards(), kc.guards(), vc.guards(), means.guards()})
    if (!g.empty()) return g;
  if (want_bad_attn != ~0ull) {
    for (size_t e = 0; e < nq; ++e)
      if (!harness::unwritten(out.getf(e)) && !(s.bf && out.bits(e) == harness::kUnwrittenBf16))
        return fmt("attention: out[%zu] written by a rejected call", e);
    return "";
  }

  // reference: per row, the visible keys (in any order: a set) and the softmax over them
  const size_t rows = size_t(P.rows);
  std::vector<double> ref(nq, 0.0);
  std::vector<char> empty(rows, 0);
  auto softmax_row = [&](int n, int kvh, const double* qr, const std::vector<int>& vis, double* o) {
    std::fill(o, o + D, 0.0);
    if (vis.empty()) return;
    std::vector<double> sc;
    double mx = -INFINITY;
    for (int j : vis) {
      double a = 0;
      for (int d = 0; d < D; ++d) a += qr[d] * key(n, kvh, j, d);
      sc.push_back(a * scale);
      mx = std::max(mx, a * scale);
    }
    double z = 0;
    for (double a : sc) z += std::exp(a - mx);
    for (size_t x = 0; x < vis.size(); ++x) {
      const double w = std::exp(sc[x] - mx) / z;
      for (int d = 0; d < D; ++d) o[d] += w * val(n, kvh, vis[x], d);
    }
  };
  for (size_t row = 0; row < rows; ++row) {
    const int i = row % Sq, h = row / Sq % Hq, n = row / Sq / Hq;
    const long long Ln = L[n], p = Ln - Sq + i, lo = std::max(0LL, Ln - C);
    const int kvh = h / G;
    const double* qr = &qv[row * D];
    std::vector<std::vector<int>> choices;  // visible sets: the reference's, and a near-tie alternative
    if (!means_on) {
      std::vector<int> vis;
      for (long long j = 0; j <= p; ++j) {
        if (j < lo) continue;
        if (s.mask == 1 && !(j > p - s.window)) continue;
        if (s.mask == 2 && j / s.window != p / s.window) continue;
        vis.push_back(static_cast<int>(j));
      }
      choices.push_back(vis);
    } else {
      const long long own = p / seg;
      // scores of the segments before the own one: scale * sum over the group's heads of q . means
      std::vector<std::pair<double, int>> cand;
      const int h0 = h / s.group * s.group;
      for (int sg = 0; sg < own; ++sg) {
        double a = 0;
        for (int g = h0; g < h0 + s.group; ++g)
          for (int d = 0; d < D; ++d)
            a += qv[((size_t(n) * Hq + g) * Sq + i) * D + d] *
                 means[((size_t(slot_a[n]) * Hkv + g / G) * M + sg) * D + d];
        cand.push_back({a * scale, sg});
      }
      std::sort(cand.begin(), cand.end(), [](const auto& x, const auto& y) {
        return x.first != y.first ? x.first > y.first : x.second < y.second;
      });
      const int k = std::min<int>(std::max(0, s.topk - 1), static_cast<int>(cand.size()));
      std::vector<std::vector<int>> picks(1);
      for (int x = 0; x < k; ++x) picks[0].push_back(cand[x].second);
      if (!s.quant && k >= 1 && k < static_cast<int>(cand.size()) &&
          cand[k - 1].first - cand[k].first <= 1e-5 * (1 + std::fabs(cand[k].first))) {
        picks.push_back(picks[0]);
        picks[1][k - 1] = cand[k].second;
      }
      for (const auto& pk : picks) {
        std::vector<int> vis;
        for (long long j = std::max(lo, own * seg); j <= p; ++j) vis.push_back(static_cast<int>(j));
        for (int sg : pk)
          for (long long j = static_cast<long long>(sg) * seg; j < static_cast<long long>(sg + 1) * seg; ++j)
            if (j >= lo && j <= p) vis.push_back(static_cast<int>(j));
        choices.push_back(vis);
      }
    }
    empty[row] = choices[0].empty();
    softmax_row(n, kvh, qr, choices[0], &ref[row * D]);
    if (choices.size() > 1) {  // keep the reference closer to what the kernel wrote
      std::vector<double> alt(D);
      softmax_row(n, kvh, qr, choices[1], alt.data());
      double e0 = 0, e1 = 0;
      for (int d = 0; d < D; ++d) {
        e0 = std::max(e0, std::fabs(out.get(row * D + d) - ref[row * D + d]));
        e1 = std::max(e1, std::fabs(out.get(row * D + d) - alt[d]));
      }
      if (e1 < e0) std::copy(alt.begin(), alt.end(), &ref[row * D]);
    }
  }
  return harness::compare("out", rows, size_t(D), [&](size_t e) { return out.getf(e); }, ref, empty,
                          s.bf ? 2e-2 : 2e-5);
}

std::string run_case(const Shape& s, const harness::Mode& m, uint32_t seed, bool small) {
  const int dpl = (s.D + 31) / 32;
  if (dpl <= 1) return run_dpl<1>(s, m, seed, small);
  if (dpl <= 2) return run_dpl<2>(s, m, seed, small);
  if (dpl <= 4) return run_dpl<4>(s, m, seed, small);
  return run_dpl<8>(s, m, seed, small);
}

// clang-format off
const Shape kShapes[] = {
  // tag                   N  Hq Hkv  D   Sq  S    C   mask win  seg topk grp  lmin  lmax  bf quant err
  // global, C >= every length (a plain buffer)
  {"global-decode-n1",     1, 1, 1,  24,  1,  2,  40,   0,  0,   0,  0,  0,    0,   38},
  {"global-gqa-n3",        3, 4, 2,  37,  1,  5,  64,   0,  0,   0,  0,  0,    0,   60},
  {"global-chunk-n5",      5, 6, 2,  64,  5,  7,  50,   0,  0,   0,  0,  0,    0,   45},
  {"global-d160",          3, 2, 1, 160,  3,  3,  30,   0,  0,   0,  0,  0,    0,   27},
  // global over a ring: the last C positions
  {"global-ring",          3, 4, 2,  96,  1,  4,  16,   0,  0,   0,  0,  0,   20,  200},
  {"global-ring-chunk",    5, 2, 2,  24,  4,  6,  11,   0,  0,   0,  0,  0,    0,   70},
  // sliding windows: C = window + Sq - 1, larger, and shorter (the ring cuts the window)
  {"slide-decode",         5, 4, 2, 128,  1,  6,   8,   1,  8,   0,  0,  0,    0,  100},
  {"slide-chunk",          3, 6, 2,  37,  4,  4,   9,   1,  6,   0,  0,  0,    0,   80},
  {"slide-chunk-wide",     3, 2, 1,  24,  7,  3,  20,   1,  5,   0,  0,  0,    0,   90},
  {"slide-short-ring",     3, 1, 1,  32,  3,  4,   4,   1,  5,   0,  0,  0,    0,   40},
  {"slide-append>C",       3, 2, 1,  24,  7,  5,   4,   1,  4,   0,  0,  0,    0,   30},
  {"slide-n1-d64",         1, 4, 1,  64,  1,  1,  12,   1, 12,   0,  0,  0,   11,  500},
  // block masks
  {"block",                3, 4, 2,  64,  3,  5,  60,   2,  8,   0,  0,  0,    0,   55},
  {"block-ring",           3, 2, 2,  37,  2,  3,  10,   2,  6,   0,  0,  0,    0,   50},
  {"block-n5-chunk",       5, 6, 2,  24,  6,  5,  40,   2,  7,   0,  0,  0,    0,   33},
  // segment routing (means), lengths not multiples of the segment
  {"seg-k1",               3, 4, 2,  64,  1,  4,  61,   0,  0,   4,  1,  1,    0,   60},
  {"seg-k2-g1",            5, 6, 2,  37,  1,  6,  70,   0,  0,   7,  2,  1,    0,   69},
  {"seg-k3-gG",            3, 6, 2,  96,  3,  4,  50,   0,  0,   4,  3,  3,    0,   47},
  {"seg-k3-chunk",         5, 4, 2, 128,  6,  5,  80,   0,  0,   7,  3,  2,    0,   74},
  {"seg-k2-g1-hq1",        3, 1, 1,  24,  5,  3,  45,   0,  0,   4,  2,  1,    0,   40},
  {"seg-topk>segs",        3, 2, 1,  24,  2,  3,  30,   0,  0,   7,  8,  1,    0,   28},
  {"seg-quant-ties",       3, 4, 2,  24,  1,  3,  64,   0,  0,   4,  3,  2,    0,   63,  0,  1},
  {"seg-quant-chunk",      3, 6, 2,  32,  5,  3,  70,   0,  0,   8,  2,  3,    0,   65,  0,  1},
  {"seg-quant-k3-g1",      5, 4, 2,  37,  3,  5,  60,   0,  0,   4,  3,  1,    0,   57,  0,  1},
  {"seg-past-score-cache", 1, 1, 1,  24,  1,  2, 1100,  0,  0,   1,  3,  1, 1050, 1099},
  // bfloat16
  {"bf16-slide",           3, 4, 2,  64,  1,  4,   8,   1,  8,   0,  0,  0,    0,   60,  1},
  {"bf16-global-chunk",    5, 2, 1,  96,  4,  5,  50,   0,  0,   0,  0,  0,    0,   46,  1},
  {"bf16-seg",             3, 4, 2,  37,  3,  4,  40,   0,  0,   4,  2,  2,    0,   37,  1},
  {"bf16-block-ring",      3, 6, 2,  24,  3,  3,   7,   2,  5,   0,  0,  0,    0,   40,  1},
  // errors: recorded for sequence 1, nothing written
  {"err-slot",             3, 2, 1,  24,  2,  4,  10,   1,  4,   0,  0,  0,    0,   30,  0,  0, kSlotRange},
  {"err-negative-length",  4, 2, 2,  24,  1,  5,  16,   0,  0,   0,  0,  0,    0,   15,  0,  0, kNegLength},
  {"err-means-past-C",     3, 2, 1,  24,  3,  4,  20,   0,  0,   4,  2,  1,    0,   17,  0,  0, kPastC},
  {"err-repeated-slot",    3, 2, 1,  24,  2,  4,  20,   0,  0,   4,  2,  1,    0,   18,  0,  0, kRepeat},
  {"err-attn-short",       3, 2, 1,  24,  3,  4,  12,   1,  6,   0,  0,  0,    0,   40,  0,  0, kAttnShort},
  {"err-attn-past-C",      3, 2, 1,  24,  1,  4,  20,   0,  0,   4,  2,  1,    0,   19,  0,  0, kAttnPastC},
};
// clang-format on

}  // namespace

int main(int argc, char** argv) {
  std::vector<harness::Case> cases;
  int si = 0;
  for (const Shape& s : kShapes) {
    for (int mi = 0; mi < 3; ++mi) {
      const harness::Mode m = harness::kModes[mi];
      const uint32_t seed = 2100u + 17u * static_cast<uint32_t>(si);
      const bool small = (si + mi) % 2 == 1;  // a 2-block grid for the grid-stride kernels
      const double cost = double(s.N) * s.Hq * s.Sq * std::min(s.C, s.lmax + s.Sq) * s.D * 0.002 + 1;
      cases.push_back({fmt("kvcache/%s/%s%s", s.tag, harness::mode_name(m).c_str(), small ? "/grid2" : ""),
                       mi == si % 3, cost, [s, m, seed, small] { return run_case(s, m, seed, small); }});
    }
    ++si;
  }
  return harness::main(argc, argv, cases);
}
