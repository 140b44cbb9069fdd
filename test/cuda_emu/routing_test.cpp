// The router gate's kernels (native/cuda/routing.cu) in the emulator against a float64 reference
// written from the definitions: scores (softmax / sigmoid), the top k of scores + bias + noise
// (ties to the lower expert, NaN largest) within the best topGroups groups (a group scored by its
// two best values), weights (normalised, scaled), positions (first choices of all tokens before
// second ones, tokens in order; -1 past capacity) and counts; and router_gate_bwd against the
// gradient of the weights. Also segment_select_kernel, the fused segment_topk_kernel and the
// router losses. Launches as routing.cu's host code makes them (extract.js checks).
#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>

#include "routing_kernel.inc"
#include "harness.h"

using namespace dualroute::cuda;
using harness::Buf;
using harness::cfg_of;
using harness::fmt;

namespace {

constexpr int kThreads = 256;  // device.cuh's (host part, not extracted)

struct Shape {
  const char* tag;
  int T, E, k;
  int score;  // 0 softmax, 1 sigmoid
  int normalize;
  float scale;
  int groups, top_groups;
  int capacity;
  int bias, noise;
  int bf = 0;   // bf16 logits
  int nan = 0;  // a NaN logit in token 1
  int ties = 0; // even tokens: every logit equal (the order is the experts' index order)
};

bool before(double a, int ia, double b, int ib) {
  const bool na = a != a, nb = b != b;
  if (na != nb) return na;
  if (!na && a != b) return a > b;
  return ia < ib;
}

std::string run_case(const Shape& s, const harness::Mode& mode, uint32_t seed) {
  emu::clear_globals();
  std::mt19937 r(seed);
  const int T = s.T, E = s.E, K = s.k;
  Buf<float> lf("logits", s.bf ? 0 : size_t(T) * E, 0.f);
  Buf<uint16_t> lb("logits_bf16", s.bf ? size_t(T) * E : 0, 0);
  std::vector<double> l(size_t(T) * E);
  // distinct values per row (a shuffled grid), so that float and double agree on every order
  for (int t = 0; t < T; ++t) {
    std::vector<int> perm(E);
    std::iota(perm.begin(), perm.end(), 0);
    std::shuffle(perm.begin(), perm.end(), r);
    for (int e = 0; e < E; ++e) {
      float v = (perm[e] - E / 2) * (4.f / E) + 0.03f * (t % 3);
      if (s.nan && t == 1 && e == E / 2) v = NAN;
      if (s.ties && t % 2 == 0) v = 0.25f;
      if (s.bf) {
        lb[size_t(t) * E + e] = f2bf(v);
        l[size_t(t) * E + e] = bf2f(lb[size_t(t) * E + e]);
      } else {
        lf[size_t(t) * E + e] = v;
        l[size_t(t) * E + e] = v;
      }
    }
  }
  Buf<float> bias("bias", s.bias ? size_t(E) : 0, 0.f), noise("noise", s.noise ? size_t(T) * E : 0, 0.f);
  for (size_t i = 0; i < bias.size(); ++i) bias[i] = float((i * 7) % 5) * 0.01f;
  for (size_t i = 0; i < noise.size(); ++i) noise[i] = float(r() % 1000) * 1e-4f;
  // reference
  std::vector<double> sc(size_t(T) * E);
  std::vector<int> ridx(size_t(T) * K);
  std::vector<double> rw(size_t(T) * K);
  const int gsize = E / s.groups;
  for (int t = 0; t < T; ++t) {
    const double* lr = &l[size_t(t) * E];
    double* sr = &sc[size_t(t) * E];
    if (s.score == 0) {
      double m = -INFINITY;
      for (int e = 0; e < E; ++e) m = (lr[e] > m || lr[e] != lr[e]) ? lr[e] : m;
      double z = 0;
      for (int e = 0; e < E; ++e) z += std::exp(lr[e] - m);
      for (int e = 0; e < E; ++e) sr[e] = std::exp(lr[e] - m) / z;
    } else {
      for (int e = 0; e < E; ++e) sr[e] = 1 / (1 + std::exp(-lr[e]));
    }
    std::vector<double> sel(E);
    // the kernel adds in float: so does the reference (then orders in double: the sums are exact)
    for (int e = 0; e < E; ++e)
      sel[e] = double(float(float(sr[e]) + (s.bias ? bias[e] : 0.f)) + (s.noise ? noise[size_t(t) * E + e] : 0.f));
    std::vector<int> allowed;
    std::vector<int> gord(s.groups);
    std::iota(gord.begin(), gord.end(), 0);
    std::vector<double> gsc(s.groups);
    for (int g = 0; g < s.groups; ++g) {
      std::vector<int> m(gsize);
      std::iota(m.begin(), m.end(), g * gsize);
      std::sort(m.begin(), m.end(), [&](int a, int b) { return before(sel[a], a, sel[b], b); });
      gsc[g] = double(float(sel[m[0]]) + (gsize > 1 ? float(sel[m[1]]) : 0.f));
    }
    std::sort(gord.begin(), gord.end(), [&](int a, int b) { return before(gsc[a], a, gsc[b], b); });
    for (int e = 0; e < E; ++e)
      if (s.groups == 1 || std::find(gord.begin(), gord.begin() + s.top_groups, e / gsize) != gord.begin() + s.top_groups)
        allowed.push_back(e);
    std::sort(allowed.begin(), allowed.end(), [&](int a, int b) { return before(sel[a], a, sel[b], b); });
    double tot = 0;
    for (int j = 0; j < K; ++j) tot += sr[allowed[j]];
    for (int j = 0; j < K; ++j) {
      ridx[size_t(t) * K + j] = allowed[j];
      rw[size_t(t) * K + j] = s.scale * sr[allowed[j]] / (s.normalize ? tot : 1);
    }
  }
  std::vector<int> rpos(size_t(T) * K), run(E, 0);
  for (int j = 0; j < K; ++j)
    for (int t = 0; t < T; ++t) {
      const int e = ridx[size_t(t) * K + j];
      const int p = run[e]++;
      rpos[size_t(t) * K + j] = s.capacity > 0 && p >= s.capacity ? -1 : p;
    }
  // launch, as router_gate does
  Buf<int32_t> idx("indices", size_t(T) * K, -9), pos("positions", size_t(T) * K, -9), counts("counts", size_t(E), -9);
  Buf<float> w("weights", size_t(T) * K, NAN), scores("scores", size_t(T) * E, NAN);
  const long long gblocks = (T + kGateWarps - 1) / kGateWarps;
  const float* pb = s.bias ? bias.data() : nullptr;
  const float* pn = s.noise ? noise.data() : nullptr;
  if (s.bf)
    emu::launch(cfg_of("router_select<bf16>", gblocks, kGateWarps * 32, mode, seed), [&] {
      router_select<bf16_t>(idx.data(), w.data(), scores.data(), reinterpret_cast<const bf16_t*>(lb.data()), pb, pn, T, E,
                            s.score, K, s.normalize, s.scale, s.groups, s.top_groups);
    });
  else
    emu::launch(cfg_of("router_select", gblocks, kGateWarps * 32, mode, seed), [&] {
      router_select<float>(idx.data(), w.data(), scores.data(), lf.data(), pb, pn, T, E, s.score, K, s.normalize, s.scale,
                           s.groups, s.top_groups);
    });
  const int nblocks = (T + kPosTokens - 1) / kPosTokens;
  Buf<int32_t> cnt("cnt", size_t(K) * nblocks * E, -9);
  emu::launch(cfg_of("router_block_counts", nblocks, kThreads, mode, seed),
              [&] { router_block_counts(cnt.data(), idx.data(), T, E, K, nblocks); });
  emu::launch(cfg_of("router_scan", (E + kThreads - 1) / kThreads, kThreads, mode, seed),
              [&] { router_scan(cnt.data(), counts.data(), E, K, nblocks, s.capacity); });
  emu::launch(cfg_of("router_positions", nblocks, 32, mode, seed),
              [&] { router_positions(pos.data(), cnt.data(), idx.data(), T, E, K, nblocks, s.capacity); });
  for (const std::string& g : {idx.guards(), pos.guards(), counts.guards(), w.guards(), scores.guards(), cnt.guards()})
    if (!g.empty()) return g;
  for (size_t i = 0; i < ridx.size(); ++i) {
    if (idx[i] != ridx[i]) return fmt("indices[%zu] = %d, want %d", i, idx[i], ridx[i]);
    if (pos[i] != rpos[i]) return fmt("positions[%zu] = %d, want %d", i, pos[i], rpos[i]);
    const int nf = harness::nonfinite_agree(w[i], rw[i]);
    if (nf < 0 || (nf == 0 && std::fabs(w[i] - rw[i]) > 1e-5 * (1 + std::fabs(rw[i]))))
      return fmt("weights[%zu] = %g, want %g", i, w[i], rw[i]);
  }
  for (int e = 0; e < E; ++e) {
    const int want = s.capacity > 0 ? std::min(run[e], s.capacity) : run[e];
    if (counts[e] != want) return fmt("counts[%d] = %d, want %d", e, counts[e], want);
  }
  for (size_t i = 0; i < sc.size(); ++i) {
    const int nf = harness::nonfinite_agree(scores[i], sc[i]);
    if (nf < 0 || (nf == 0 && std::fabs(scores[i] - sc[i]) > 1e-6)) return fmt("scores[%zu] = %g, want %g", i, scores[i], sc[i]);
  }
  // backward: dlogits of sum(dw * weights), from the kernel's own scores and indices
  Buf<float> dw("dweights", size_t(T) * K, 0.f), dl("dlogits", size_t(T) * E, NAN);
  for (size_t i = 0; i < dw.size(); ++i) dw[i] = float(int(r() % 200) - 100) * 0.01f;
  emu::launch(cfg_of("router_gate_bwd", gblocks, kGateWarps * 32, mode, seed), [&] {
    router_gate_bwd(dl.data(), scores.data(), idx.data(), dw.data(), T, E, K, s.score, s.normalize, s.scale);
  });
  if (!dl.guards().empty()) return dl.guards();
  for (int t = 0; t < T; ++t) {
    std::vector<double> ds(E, 0.0);
    const double* sr = &sc[size_t(t) * E];
    double tot = 0, dot = 0;
    for (int j = 0; j < K; ++j) {
      tot += sr[ridx[size_t(t) * K + j]];
      dot += dw[size_t(t) * K + j] * sr[ridx[size_t(t) * K + j]];
    }
    for (int j = 0; j < K; ++j) {
      const int e = ridx[size_t(t) * K + j];
      ds[e] += s.normalize ? s.scale * (dw[size_t(t) * K + j] - dot / tot) / tot : s.scale * dw[size_t(t) * K + j];
    }
    double d = 0;
    for (int e = 0; e < E; ++e) d += ds[e] * sr[e];
    for (int e = 0; e < E; ++e) {
      const double want = s.score == 0 ? sr[e] * (ds[e] - d) : ds[e] * sr[e] * (1 - sr[e]);
      const float got = dl[size_t(t) * E + e];
      const int nf = harness::nonfinite_agree(got, want);
      if (nf < 0 || (nf == 0 && std::fabs(got - want) > 1e-5 * (1 + std::fabs(want))))
        return fmt("dlogits[%d][%d] = %g, want %g", t, e, got, want);
    }
  }
  return "";
}

// segment_select_kernel against the definition: per row, the group's summed scores; candidates
// [0, own] (causal) or all, minus -inf; the own segment first when kept, then the selection
// order; -1 pads; weights = softmax of the kept sums, written to every head of the group.
struct SelShape {
  const char* tag;
  int B, H, Sq, Sk, segment, K, group, causal, keep_own;
  int special = 0;  // 1: ties (equal scores), 2: NaN and -inf scores
};

std::string run_select(const SelShape& s, const harness::Mode& mode, uint32_t seed) {
  emu::clear_globals();
  std::mt19937 r(seed);
  const int nseg = (s.Sk + s.segment - 1) / s.segment, K = s.K, G = s.group;
  const size_t n = size_t(s.B) * s.H * s.Sq * nseg;
  Buf<float> sc("scores", n, 0.f);
  for (size_t i = 0; i < n; ++i) {
    sc[i] = float(int(r() % 2001) - 1000) * 1e-3f;
    if (s.special == 1) sc[i] = float(int(r() % 3));
    if (s.special == 2 && i % 7 == 3) sc[i] = NAN;
    if (s.special == 2 && i % 5 == 1) sc[i] = -INFINITY;
  }
  const size_t no = size_t(s.B) * s.H * s.Sq * K;
  Buf<int32_t> idx("indices", no, -9);
  Buf<float> w("weights", no, harness::unwritten_float());
  const long long rows = (long long)s.B * (s.H / G) * s.Sq;
  emu::launch(cfg_of("segment_select_kernel", (rows + kGateWarps - 1) / kGateWarps, kGateWarps * 32, mode, seed), [&] {
    segment_select_kernel(idx.data(), w.data(), sc.data(), rows, s.H, s.Sq, nseg, K, G, s.causal, s.keep_own, s.segment,
                          s.Sk);
  });
  for (const std::string& g : {idx.guards(), w.guards()})
    if (!g.empty()) return g;
  for (int b = 0; b < s.B; ++b)
    for (int h = 0; h < s.H; ++h)
      for (int i = 0; i < s.Sq; ++i) {
        const long long p = i + s.Sk - s.Sq, own = p / s.segment;
        const int last = s.causal ? int(std::min<long long>(nseg - 1, own)) : nseg - 1;
        const int h0 = h / G * G;
        std::vector<double> sum(nseg, 0.0);
        for (int g = 0; g < G; ++g)
          for (int x = 0; x <= last; ++x) sum[x] = double(float(sum[x]) + sc[((size_t(b) * s.H + h0 + g) * s.Sq + i) * nseg + x]);
        std::vector<int> cand;
        const bool force = s.keep_own && own <= last;
        for (int x = 0; x <= last; ++x)
          if (!(force && x == own) && sum[x] != -INFINITY) cand.push_back(x);
        std::sort(cand.begin(), cand.end(), [&](int a, int c) { return before(sum[a], a, sum[c], c); });
        std::vector<int> pick;
        if (force) pick.push_back(int(own));
        for (int c : cand)
          if (int(pick.size()) < K) pick.push_back(c);
        double mx = -INFINITY;
        for (int c : pick) mx = (sum[c] > mx || sum[c] != sum[c]) ? sum[c] : mx;
        double z = 0;
        for (int c : pick) z += std::exp(sum[c] - mx);
        for (int x = 0; x < K; ++x) {
          const size_t o = ((size_t(b) * s.H + h) * s.Sq + i) * K + x;
          const int want = x < int(pick.size()) ? pick[x] : -1;
          if (idx[o] != want) return fmt("indices[%d][%d][%d][%d] = %d, want %d", b, h, i, x, idx[o], want);
          const double ww = x < int(pick.size()) ? std::exp(sum[pick[x]] - mx) / z : 0.0;
          const int nf = harness::nonfinite_agree(w[o], ww);
          if (nf < 0 || (nf == 0 && std::fabs(w[o] - ww) > 1e-5)) return fmt("weights[%d][%d][%d][%d] = %g, want %g", b, h, i, x, w[o], ww);
        }
      }
  return "";
}

// segment_topk_kernel (segmentTopk, the fused selection) against a float64 reference: per row
// the scores scale * (sum of the group's q) . summary over the visible segments (causal: up to
// the row's own), then the selection order of run_select (own segment first when causal; -inf
// no candidate; -1 pads). Quantized inputs (quarters and eighths, scale 1/2) make every score
// exact in float, ties true ties: indices must match exactly. Random inputs (`rnd`) may reorder
// near-ties: there each pick is checked by its reference score (within 1e-5 of the wanted one).
// The launch mirrors segment_topk's host code (warps per block from the shared memory, `cache`
// off past 12288 floats per warp); `nocache` runs the kernel's rescoring path on a small shape.
struct TopkShape {
  const char* tag;
  int B, H, Hkv, Sq, Sk, D, segment, K, group, causal;
  int bf = 0, rnd = 0, nocache = 0;
  int special = 0;  // 1: a NaN summary (segment 1 of every head); 2: a NaN query row (row 1)
};

std::string run_topk(const TopkShape& s, const harness::Mode& mode, uint32_t seed) {
  emu::clear_globals();
  std::mt19937 r(seed);
  const int nseg = (s.Sk + s.segment - 1) / s.segment, K = s.K, G = s.group, D = s.D;
  const size_t nq = size_t(s.B) * s.H * s.Sq * D, nk = size_t(s.B) * s.Hkv * nseg * D;
  Buf<float> qf("q", s.bf ? 0 : nq, 0.f), kb("summaries", nk, 0.f);
  Buf<uint16_t> qb("q_bf16", s.bf ? nq : 0, 0);
  std::vector<double> qd(nq);
  auto draw = [&](int den) { return s.rnd ? float(std::uniform_real_distribution<double>(-1, 1)(r)) : float(int(r() % 9) - 4) / den; };
  for (size_t x = 0; x < nq; ++x) {
    float v = draw(4);
    if (s.special == 2 && (x / D) % s.Sq == 1) v = NAN;
    if (s.bf) {
      qb[x] = f2bf(v);
      qd[x] = bf2f(qb[x]);
    } else {
      qf[x] = v;
      qd[x] = v;
    }
  }
  for (size_t x = 0; x < nk; ++x) kb[x] = draw(8);
  if (s.special == 1 && nseg > 1)
    for (int bh = 0; bh < s.B * s.Hkv; ++bh) kb[(size_t(bh) * nseg + 1) * D] = NAN;
  const float scale = s.rnd ? 0.37f : 0.5f;
  // launch, as segment_topk does
  const long long kSmem = 48 * 1024 / sizeof(float);
  const int cache = D + nseg <= kSmem && !s.nocache ? 1 : 0;
  const long long per_warp = std::max<long long>(1, D + (cache ? nseg : 0));
  const int warps = static_cast<int>(std::min<long long>(kGateWarps, kSmem / per_warp));
  const long long rows = (long long)s.B * (s.H / G) * s.Sq;
  const unsigned blocks = static_cast<unsigned>((rows + warps - 1) / warps);
  Buf<int32_t> idx("indices", size_t(s.B) * s.H * s.Sq * K, -9);
  emu::LaunchCfg c = cfg_of(s.bf ? "segment_topk_kernel<bf16>" : "segment_topk_kernel", blocks, warps * 32, mode, seed);
  c.dyn_smem = static_cast<size_t>(warps * per_warp) * sizeof(float);
  if (s.bf)
    emu::launch(c, [&] {
      segment_topk_kernel<bf16_t>(idx.data(), reinterpret_cast<const bf16_t*>(qb.data()), kb.data(), rows, s.H, s.Hkv, s.Sq, D,
                                  nseg, K, G, s.causal, s.segment, s.Sk, scale, cache);
    });
  else
    emu::launch(c, [&] {
      segment_topk_kernel<float>(idx.data(), qf.data(), kb.data(), rows, s.H, s.Hkv, s.Sq, D, nseg, K, G, s.causal,
                                 s.segment, s.Sk, scale, cache);
    });
  if (!idx.guards().empty()) return idx.guards();
  const int Gkv = s.H / s.Hkv;
  for (int b = 0; b < s.B; ++b)
    for (int h = 0; h < s.H; ++h)
      for (int i = 0; i < s.Sq; ++i) {
        const long long p = i + s.Sk - s.Sq, own = p / s.segment;
        const int last = s.causal ? int(std::min<long long>(nseg - 1, own)) : nseg - 1;
        const int h0 = h / G * G;
        std::vector<double> sum(nseg, 0.0);
        for (int x = 0; x <= last; ++x) {
          double a = 0;
          for (int d = 0; d < D; ++d) {
            double qs = 0;
            for (int g = 0; g < G; ++g) qs += qd[((size_t(b) * s.H + h0 + g) * s.Sq + i) * D + d];
            a += qs * kb[((size_t(b) * s.Hkv + h0 / Gkv) * nseg + x) * D + d];
          }
          sum[x] = scale * a;
        }
        std::vector<int> cand;
        const bool force = s.causal && own <= last;
        for (int x = 0; x <= last; ++x)
          if (!(force && x == own) && sum[x] != -INFINITY) cand.push_back(x);
        std::sort(cand.begin(), cand.end(), [&](int a, int c2) { return before(sum[a], a, sum[c2], c2); });
        std::vector<int> pick;
        if (force) pick.push_back(int(own));
        for (int c2 : cand)
          if (int(pick.size()) < K) pick.push_back(c2);
        std::vector<bool> seen(nseg, false);
        for (int x = 0; x < K; ++x) {
          const size_t o = ((size_t(b) * s.H + h) * s.Sq + i) * K + x;
          const int want = x < int(pick.size()) ? pick[x] : -1, got = idx[o];
          if (got == want) {
            if (got >= 0) seen[got] = true;
            continue;
          }
          // random inputs: a near-tie may come in either order; the pick must be a new candidate
          // scoring (in float64) within 1e-5 of the wanted one
          const bool ok = s.rnd && want >= 0 && got >= 0 && got <= last && !seen[got] && !(force && (x == 0 || got == own)) &&
                          std::fabs(sum[got] - sum[want]) <= 1e-5 * (1 + std::fabs(sum[want]));
          if (!ok) return fmt("indices[%d][%d][%d][%d] = %d, want %d", b, h, i, x, got, want);
          seen[got] = true;
        }
      }
  return "";
}

// router_loss_tokens / router_loss_part / router_loss_final and router_loss_bwd against the
// definitions in float64 (p = softmax or normalised sigmoid; f from the first choices; aux, z and
// their gradients); a first choice out of range is recorded at its token and never counted.
struct LossShape {
  const char* tag;
  int T, E, score;
  int bad = 0;  // token T / 2 gets first choice E
};

std::string run_losses(const LossShape& s, const harness::Mode& mode, uint32_t seed) {
  emu::clear_globals();
  std::mt19937 r(seed);
  const int T = s.T, E = s.E;
  Buf<float> l("logits", size_t(T) * E, 0.f);
  Buf<int32_t> first("first", size_t(T), 0);
  for (size_t i = 0; i < l.size(); ++i) l[i] = float(int(r() % 2001) - 1000) * 2e-3f;
  for (int t = 0; t < T; ++t) first[t] = int(r() % E);
  if (s.bad) first[T / 2] = E;
  const long long nb = (T + kLossTokens - 1) / kLossTokens;
  Buf<float> lse("lse", size_t(T), harness::unwritten_float()), ssum("ssum", size_t(T), harness::unwritten_float());
  Buf<float> part("part", size_t(nb) * (E + 1), harness::unwritten_float()), f("f", size_t(E), harness::unwritten_float());
  Buf<float> aux("aux", 1, harness::unwritten_float()), z("z", 1, harness::unwritten_float());
  Buf<int> cnt("cnt", size_t(E), 0);
  unsigned long long slot = ~0ull;
  auto grid = [](long long n) { return std::max(1LL, (n + kThreads - 1) / kThreads); };
  emu::launch(cfg_of("router_loss_tokens", grid(T), kThreads, mode, seed),
              [&] { router_loss_tokens(lse.data(), ssum.data(), l.data(), T, E, s.score); });
  emu::launch(cfg_of("router_loss_part", grid(nb * (E + 1)), kThreads, mode, seed),
              [&] { router_loss_part(part.data(), l.data(), lse.data(), ssum.data(), T, E, s.score, nb); });
  emu::launch(cfg_of("router_loss_final", 1, kThreads, mode, seed), [&] {
    router_loss_final(aux.data(), z.data(), f.data(), cnt.data(), part.data(), first.data(), T, E, nb, &slot);
  });
  // reference
  std::vector<double> P(E, 0.0), fr(E, 0.0), rl(T);
  std::vector<std::vector<double>> p(T, std::vector<double>(E));
  double zs = 0;
  for (int t = 0; t < T; ++t) {
    double m = -INFINITY, sum = 0, ss = 0;
    for (int e = 0; e < E; ++e) m = std::max(m, double(l[size_t(t) * E + e]));
    for (int e = 0; e < E; ++e) sum += std::exp(l[size_t(t) * E + e] - m);
    rl[t] = m + std::log(sum);
    for (int e = 0; e < E; ++e) ss += 1 / (1 + std::exp(-double(l[size_t(t) * E + e])));
    for (int e = 0; e < E; ++e) {
      const double x = l[size_t(t) * E + e];
      p[t][e] = s.score == 0 ? std::exp(x - rl[t]) : (1 / (1 + std::exp(-x))) / ss;
      P[e] += p[t][e] / T;
    }
    zs += rl[t] * rl[t];
    if (first[t] >= 0 && first[t] < E) fr[first[t]] += 1.0 / T;
  }
  double ra = 0;
  for (int e = 0; e < E; ++e) ra += fr[e] * P[e];
  ra *= E;
  const double rz = zs / T;
  for (const std::string& g : {lse.guards(), part.guards(), f.guards(), aux.guards(), z.guards(), cnt.guards()})
    if (!g.empty()) return g;
  if (s.bad && slot != (unsigned long long)(T / 2)) return fmt("bad first choice slot %llu, want %d", slot, T / 2);
  if (!s.bad && slot != ~0ull) return fmt("bad first choice recorded at %llu", slot);
  if (std::fabs(aux[0] - ra) > 1e-4 * (1 + std::fabs(ra))) return fmt("aux = %g, want %g", aux[0], ra);
  if (std::fabs(z[0] - rz) > 1e-4 * (1 + std::fabs(rz))) return fmt("z = %g, want %g", z[0], rz);
  for (int e = 0; e < E; ++e)
    if (std::fabs(f[e] - fr[e]) > 1e-6) return fmt("f[%d] = %g, want %g", e, f[e], fr[e]);
  // backward
  Buf<float> daux("daux", 1, 0.7f), dz("dz", 1, -1.3f), dl("dlogits", size_t(T) * E, harness::unwritten_float());
  emu::launch(cfg_of("router_loss_bwd", grid(T), kThreads, mode, seed), [&] {
    router_loss_bwd(dl.data(), l.data(), lse.data(), f.data(), daux.data(), dz.data(), T, E, s.score);
  });
  if (!dl.guards().empty()) return dl.guards();
  for (int t = 0; t < T; ++t) {
    double g = 0, ss = 0;
    for (int e = 0; e < E; ++e) g += fr[e] * p[t][e];
    for (int e = 0; e < E; ++e) ss += 1 / (1 + std::exp(-double(l[size_t(t) * E + e])));
    for (int e = 0; e < E; ++e) {
      const double x = l[size_t(t) * E + e], sg = 1 / (1 + std::exp(-x));
      const double ja = s.score == 0 ? p[t][e] * (fr[e] - g) : sg * (1 - sg) / ss * (fr[e] - g);
      const double want = 0.7 * E / T * ja + (-1.3) * 2.0 / T * rl[t] * std::exp(x - rl[t]);
      const float got = dl[size_t(t) * E + e];
      if (std::fabs(got - want) > 1e-5 * (1 + std::fabs(want))) return fmt("dlogits[%d][%d] = %g, want %g", t, e, got, want);
    }
  }
  return "";
}

// clang-format off
const LossShape kLossShapes[] = {
  {"one", 1, 1, 0}, {"softmax", 37, 8, 0}, {"sigmoid", 45, 16, 1}, {"blocks-of-256", 600, 3, 0},
  {"experts-300", 9, 300, 1}, {"bad-first", 20, 4, 0, 1},
};
// clang-format on

// clang-format off
const SelShape kSelShapes[] = {
  // tag            B  H  Sq  Sk seg  K  G causal own
  {"one",           1, 1,  1,  1,  1, 1, 1, 1, 1},
  {"causal",        2, 3, 13, 13,  4, 2, 1, 1, 1},
  {"k1-own",        1, 2,  9, 20,  3, 1, 1, 1, 1},
  {"group3",        1, 6, 11, 11,  2, 3, 3, 1, 1},
  {"noncausal",     1, 2,  7,  7,  1, 4, 2, 0, 0},
  {"k>nseg",        1, 1,  5,  9,  4, 8, 1, 1, 1},
  {"many-segments", 1, 1,  3, 300, 1, 5, 1, 1, 1},
  {"ties",          1, 2, 10, 10,  1, 3, 1, 1, 1, 1},
  {"nan-inf",       1, 2, 10, 10,  2, 4, 2, 1, 1, 2},
};
// clang-format on

// clang-format off
const TopkShape kTopkShapes[] = {
  // tag              B  H Hkv  Sq   Sk   D seg  K  G causal bf rnd nocache special
  {"one",             1, 1, 1,   1,   1,  1,  1, 1, 1, 1},
  {"causal",          2, 3, 3,  13,  13,  5,  4, 2, 1, 1},
  {"sq<sk-k1",        1, 2, 1,   9,  20,  4,  3, 1, 1, 1},
  {"gqa3-group3",     1, 6, 2,  11,  11, 37,  2, 3, 3, 1},
  {"gqa8-group8",     1, 8, 1,   7,  40, 64,  5, 4, 8, 1},
  {"gqa8-group2",     1, 8, 1,   7,  40, 33,  5, 4, 2, 1},
  {"noncausal",       1, 2, 2,   7,   7,  3,  1, 4, 1, 0},
  {"k>nseg",          1, 1, 1,   5,   9,  8,  4, 8, 1, 1},
  {"seg>=S",          1, 2, 1,   6,   6,  4, 10, 2, 2, 1},
  {"bf16",            2, 4, 2,  10,  17, 24,  3, 3, 1, 1, 1},
  {"random",          1, 4, 2,  20,  50, 64,  2, 6, 2, 1, 0, 1},
  {"random-bf16-nc",  1, 2, 1,  12,  30, 40,  3, 5, 1, 0, 1, 1},
  {"nocache",         1, 4, 2,  15,  15, 12,  1, 3, 2, 1, 0, 0, 1},
  {"nan-summary",     1, 2, 1,   9,   9,  6,  1, 4, 1, 1, 0, 0, 0, 1},
  {"nan-query",       1, 2, 2,   9,   9,  6,  2, 3, 2, 0, 0, 0, 0, 2},
  {"warps-2",         1, 1, 1,   5, 5000,  4,  1, 3, 1, 1},   // 5004 floats a warp: 2 warps a block
  {"uncached",        1, 1, 1,   2, 13000, 4,  1, 2, 1, 0},   // past 48 KiB a warp: rescoring
  {"d0",              1, 2, 1,   5,   9,  0,  2, 3, 1, 1},   // head dim 0: every score 0, index order
};
// clang-format on

// clang-format off
const Shape kShapes[] = {
  // tag                    T    E   k  score norm scale groups top cap bias noise bf nan
  {"one",                   1,   1,  1, 0, 0, 1.0f,  1, 1,   0, 0, 0},
  {"top2-softmax",         37,   8,  2, 0, 0, 1.0f,  1, 1,   0, 0, 0},
  {"top2-capacity",        37,   8,  2, 0, 0, 1.0f,  1, 1,   5, 1, 0},
  {"sigmoid-norm-scale",   50,  16,  4, 1, 1, 2.5f,  1, 1,   0, 1, 1},
  {"groups-sigmoid",       33,  64,  6, 1, 1, 2.5f,  8, 3,   0, 1, 0},
  {"groups-one-each",      20,  12,  2, 0, 1, 1.0f, 12, 4,   0, 0, 0},  // groups of one expert
  {"experts-100",          41, 100,  3, 0, 1, 1.0f,  4, 2,   9, 0, 1},  // experts past 32 lanes, not a multiple
  {"k-all",                 9,   5,  5, 0, 1, 1.0f,  1, 1,   0, 1, 0},
  {"blocks-of-256",       600,   8,  2, 0, 0, 1.0f,  1, 1, 140, 0, 0},  // positions across token blocks
  {"bf16",                 45,  32,  2, 1, 1, 1.0f,  1, 1,   0, 1, 0, 1},
  {"nan-logit",            10,   8,  2, 0, 0, 1.0f,  1, 1,   0, 0, 0, 0, 1},
  {"ties",                 12,  40,  3, 0, 1, 1.0f,  4, 2,   4, 0, 0, 0, 0, 1},
  {"ties-sigmoid-groups",  12,  16,  2, 1, 1, 1.0f,  8, 3,   0, 0, 0, 0, 0, 1},
};
// clang-format on

}  // namespace

int main(int argc, char** argv) {
  std::vector<harness::Case> cases;
  int si = 0;
  for (const Shape& s : kShapes) {
    for (int mi = 0; mi < 3; ++mi) {
      const harness::Mode m = harness::kModes[mi];
      const uint32_t seed = 900u + 17u * static_cast<uint32_t>(si);
      cases.push_back({fmt("routing/%s/%s", s.tag, harness::mode_name(m).c_str()), mi == si % 3,
                       double(s.T) * s.E * 0.01, [s, m, seed] { return run_case(s, m, seed); }});
    }
    ++si;
  }
  si = 0;
  for (const SelShape& s : kSelShapes) {
    for (int mi = 0; mi < 3; ++mi) {
      const harness::Mode m = harness::kModes[mi];
      const uint32_t seed = 2100u + 13u * static_cast<uint32_t>(si);
      cases.push_back({fmt("routing/select/%s/%s", s.tag, harness::mode_name(m).c_str()), mi == si % 3,
                       double(s.B) * s.H * s.Sq * s.Sk * 0.01, [s, m, seed] { return run_select(s, m, seed); }});
    }
    ++si;
  }
  si = 0;
  for (const TopkShape& s : kTopkShapes) {
    for (int mi = 0; mi < 3; ++mi) {
      const harness::Mode m = harness::kModes[mi];
      const uint32_t seed = 4100u + 19u * static_cast<uint32_t>(si);
      cases.push_back({fmt("routing/topk/%s/%s", s.tag, harness::mode_name(m).c_str()), mi == si % 3,
                       double(s.B) * s.H * s.Sq * s.Sk * (s.D + 4) * 0.001, [s, m, seed] { return run_topk(s, m, seed); }});
    }
    ++si;
  }
  si = 0;
  for (const LossShape& s : kLossShapes) {
    for (int mi = 0; mi < 3; ++mi) {
      const harness::Mode m = harness::kModes[mi];
      const uint32_t seed = 3100u + 11u * static_cast<uint32_t>(si);
      cases.push_back({fmt("routing/losses/%s/%s", s.tag, harness::mode_name(m).c_str()), mi == si % 3,
                       double(s.T) * s.E * 0.01, [s, m, seed] { return run_losses(s, m, seed); }});
    }
    ++si;
  }
  return harness::main(argc, argv, cases);
}
