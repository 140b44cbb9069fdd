// The segment kernels (native/cuda/segment.cu) in the emulator against float64 references written
// from core/attention.h: seg_fwd_warp (out, lse) and seg_bwd_warp (dq, dk, dv added into
// accumulators) over the keys of the segments each row lists (-1 and repeats ignored, a causal cut
// at the row's position, segments after it contributing nothing), with GQA, queries shorter than
// keys, a short last segment, segment 1 and segment >= Sk, k/v at a head stride larger than
// Sk * D (a cache buffer read in place), bf16, a NaN key and an index out of range (recorded,
// never read); seg_mean_kernel / seg_mean_bwd_kernel; and the dual kernels (local window +
// segment path mixed by the gates, sliding and block, shared and per-head gates, dgates). Launches as segment.cu's host code
// makes them (extract.js checks).
#include <algorithm>
#include <cmath>
#include <memory>
#include <random>
#include <set>

#include "segment_kernel.inc"
#include "harness.h"

using namespace dualroute::cuda;
using harness::Buf;
using harness::cfg_of;
using harness::fmt;

namespace {

constexpr int kThreads = 256;  // device.cuh's (host part, not extracted)

struct Shape {
  const char* tag;
  int B, Hq, Hkv, Sq, Sk, D, segment, K, causal;
  int bf = 0;       // bf16 q, k, v
  int extra = 0;    // kv head stride = (Sk + extra) * D
  int nan = 0;      // key 3 of every kv head is NaN
  int bad = 0;      // one index out of range
};

template <int DPL>
std::string run_dpl(const Shape& s, const harness::Mode& mode, uint32_t seed) {
  emu::clear_globals();
  std::mt19937 r(seed);
  std::uniform_real_distribution<float> u(-1.f, 1.f);
  const int B = s.B, Hq = s.Hq, Hkv = s.Hkv, Sq = s.Sq, Sk = s.Sk, D = s.D, K = s.K, G = Hq / Hkv;
  const int nseg = (Sk + s.segment - 1) / s.segment;
  const long long kvs = static_cast<long long>(Sk + s.extra) * D;
  const size_t nq = size_t(B) * Hq * Sq * D, nkv = size_t(B) * Hkv * kvs;
  // inputs, stored as float or bf16; the reference reads the stored values
  std::vector<double> q(nq), k(nkv), v(nkv), dO(nq);
  Buf<float> qf("q", s.bf ? 0 : nq, 0.f), kf("k", s.bf ? 0 : nkv, 0.f), vf("v", s.bf ? 0 : nkv, 0.f),
      dof("dout", s.bf ? 0 : nq, 0.f), of("out", s.bf ? 0 : nq, 0.f);
  Buf<uint16_t> qb("q_bf16", s.bf ? nq : 0, 0), kb("k_bf16", s.bf ? nkv : 0, 0), vb("v_bf16", s.bf ? nkv : 0, 0),
      dob("dout_bf16", s.bf ? nq : 0, 0), ob("out_bf16", s.bf ? nq : 0, 0);
  auto put = [&](Buf<float>& f, Buf<uint16_t>& b, std::vector<double>& ref, size_t i, float x) {
    if (s.bf) {
      b[i] = f2bf(x);
      ref[i] = bf2f(b[i]);
    } else {
      f[i] = x;
      ref[i] = x;
    }
  };
  for (size_t i = 0; i < nq; ++i) put(qf, qb, q, i, u(r));
  for (size_t i = 0; i < nq; ++i) put(dof, dob, dO, i, u(r));
  for (size_t i = 0; i < nkv; ++i) {
    const long long j = static_cast<long long>(i % kvs) / D;
    put(kf, kb, k, i, s.nan && j == 3 ? NAN : u(r));
    put(vf, vb, v, i, u(r));
  }
  Buf<int32_t> idx("indices", size_t(B) * Hq * Sq * K, 0);
  for (size_t i = 0; i < idx.size(); ++i) idx[i] = static_cast<int32_t>(r() % (nseg + 1)) - 1;
  size_t bad_at = ~size_t(0);
  if (s.bad) {
    bad_at = idx.size() / 2 + 1;
    idx[bad_at] = nseg + 2;
  }
  const float scale = 1.f / std::sqrt(static_cast<float>(D));

  // reference forward: the materialised softmax over each row's visible keys
  const size_t rows = size_t(B) * Hq * Sq;
  std::vector<double> rout(nq, 0.0), rlse(rows, -INFINITY);
  std::vector<char> empty(rows, 1);
  std::vector<std::vector<int>> vis(rows);
  for (size_t row = 0; row < rows; ++row) {
    const long long bh = row / Sq, i = row % Sq, b = bh / Hq, h = bh % Hq;
    const long long p = i + Sk - Sq;
    std::set<int> segs;
    for (int x = 0; x < K; ++x) {
      const int sg = idx[row * K + x];
      if (sg >= 0 && sg < nseg) segs.insert(sg);
    }
    for (int sg : segs)
      for (int j = sg * s.segment; j < std::min(Sk, (sg + 1) * s.segment); ++j)
        if (!s.causal || j <= p) vis[row].push_back(j);
    if (vis[row].empty()) continue;
    empty[row] = 0;
    const long long kv = (b * Hkv + h / G) * kvs;
    std::vector<double> sc;
    double m = -INFINITY;
    for (int j : vis[row]) {
      double a = 0;
      for (int d = 0; d < D; ++d) a += q[row * D + d] * k[kv + j * D + d];
      a *= scale;
      sc.push_back(a);
      m = (a > m || a != a) ? a : m;
    }
    double z = 0;
    for (double a : sc) z += std::exp(a - m);
    rlse[row] = m + std::log(z);
    for (size_t n = 0; n < sc.size(); ++n) {
      const double pj = std::exp(sc[n] - rlse[row]);
      for (int d = 0; d < D; ++d) rout[row * D + d] += pj * v[kv + vis[row][n] * D + d];
    }
  }

  // forward launch, as segment_attention_forward does
  Buf<float> o32("o", s.bf ? 0 : nq, harness::unwritten_float());
  Buf<uint16_t> o16("o_bf16", s.bf ? nq : 0, harness::kUnwrittenBf16);
  Buf<float> lse("lse", rows, harness::unwritten_float());
  unsigned long long slot = ~0ull;
  SegParams P{};
  P.q = s.bf ? static_cast<const void*>(qb.data()) : qf.data();
  P.k = s.bf ? static_cast<const void*>(kb.data()) : kf.data();
  P.v = s.bf ? static_cast<const void*>(vb.data()) : vf.data();
  P.idx = idx.data();
  P.o = s.bf ? static_cast<void*>(o16.data()) : o32.data();
  P.lse = lse.data();
  P.bad = &slot;
  P.rows = static_cast<long long>(rows);
  P.kv_stride = kvs;
  P.Hq = Hq;
  P.Hkv = Hkv;
  P.Sq = Sq;
  P.Sk = Sk;
  P.D = D;
  P.K = K;
  P.segment = s.segment;
  P.nseg = nseg;
  P.causal = s.causal;
  P.scale = scale;
  const long long blocks = (P.rows + kSegWarps - 1) / kSegWarps;
  if (s.bf)
    emu::launch(cfg_of("seg_fwd_warp<bf16>", blocks, kSegWarps * 32, mode, seed),
                [&] { seg_fwd_warp<bf16_t, DPL>(P); });
  else
    emu::launch(cfg_of("seg_fwd_warp", blocks, kSegWarps * 32, mode, seed), [&] { seg_fwd_warp<float, DPL>(P); });
  for (const std::string& g : {o32.guards(), o16.guards(), lse.guards(), idx.guards()})
    if (!g.empty()) return g;
  if (s.bad && slot != bad_at) return fmt("bad index slot %llu, want %zu", slot, bad_at);
  if (!s.bad && slot != ~0ull) return fmt("bad index recorded at %llu, none expected", slot);
  const double tol = s.bf ? 2e-2 : 2e-5;
  std::string e = harness::compare("out", rows, size_t(D),
                                   [&](size_t i) { return s.bf ? bf2f(o16[i]) : o32[i]; }, rout, empty, tol);
  if (!e.empty()) return e;
  e = harness::compare_lse("lse", lse.data(), rlse, 1e-5);
  if (!e.empty()) return e;

  // backward: out and lse as the forward wrote them (stored), dq/dk/dv accumulators start at base
  std::vector<double> outs(nq);
  for (size_t i = 0; i < nq; ++i) {
    const float x = s.bf ? bf2f(o16[i]) : o32[i];
    if (s.bf) ob[i] = o16[i];
    else of[i] = x;
    outs[i] = x;
  }
  const float base = 0.25f;
  const size_t ngkv = size_t(B) * Hkv * Sk * D;  // dk, dv: contiguous [B, Hkv, Sk, D]
  Buf<float> dq("dq", nq, base), dk("dk", ngkv, base), dv("dv", ngkv, base);
  std::vector<double> rdq(nq, 0.0), rdk(ngkv, 0.0), rdv(ngkv, 0.0);
  std::vector<char> tq(rows, 0), tkv(size_t(B) * Hkv * Sk, 0);
  for (size_t row = 0; row < rows; ++row) {
    if (lse[row] == -INFINITY) continue;
    const long long bh = row / Sq, b = bh / Hq, h = bh % Hq;
    const long long kv = (b * Hkv + h / G) * kvs, gk = (b * Hkv + h / G) * Sk;
    double dr = 0;
    for (int d = 0; d < D; ++d) dr += dO[row * D + d] * outs[row * D + d];
    for (int j : vis[row]) {
      double sdot = 0, pdot = 0;
      for (int d = 0; d < D; ++d) {
        sdot += q[row * D + d] * k[kv + j * D + d];
        pdot += dO[row * D + d] * v[kv + j * D + d];
      }
      const double pj = std::exp(sdot * scale - lse[row]);
      const double ds = pj * (pdot - dr) * scale;
      tq[row] = 1;
      tkv[gk + j] = 1;
      for (int d = 0; d < D; ++d) {
        rdq[row * D + d] += ds * k[kv + j * D + d];
        rdk[(gk + j) * D + d] += ds * q[row * D + d];
        rdv[(gk + j) * D + d] += pj * dO[row * D + d];
      }
    }
  }
  P.out = s.bf ? static_cast<const void*>(ob.data()) : of.data();
  P.dout = s.bf ? static_cast<const void*>(dob.data()) : dof.data();
  P.dq = dq.data();
  P.dk = dk.data();
  P.dv = dv.data();
  slot = ~0ull;
  if (s.bf)
    emu::launch(cfg_of("seg_bwd_warp<bf16>", blocks, kSegWarps * 32, mode, seed),
                [&] { seg_bwd_warp<bf16_t, DPL>(P); });
  else
    emu::launch(cfg_of("seg_bwd_warp", blocks, kSegWarps * 32, mode, seed), [&] { seg_bwd_warp<float, DPL>(P); });
  for (const std::string& g : {dq.guards(), dk.guards(), dv.guards()})
    if (!g.empty()) return g;
  // (a row that saw no key is skipped whole by the backward: its bad entry is the forward's to report)
  if (s.bad && slot != bad_at && !(slot == ~0ull && lse[bad_at / K] == -INFINITY))
    return fmt("backward: bad index slot %llu, want %zu", slot, bad_at);
  const double btol = s.bf ? 3e-2 : 1e-4;
  e = harness::compare_acc("dq", dq.data(), base, rdq, tq, size_t(D), btol, 1e-3);
  if (e.empty()) e = harness::compare_acc("dk", dk.data(), base, rdk, tkv, size_t(D), btol, 1e-3);
  if (e.empty()) e = harness::compare_acc("dv", dv.data(), base, rdv, tkv, size_t(D), btol, 1e-3);
  if (!e.empty()) return e;

  // segment means of k's contiguous part [B * Hkv, Sk, D] (extra == 0 only) and their backward
  if (s.extra == 0 && !s.bf) {
    const long long outer = static_cast<long long>(B) * Hkv;
    Buf<float> mean("mean", size_t(outer) * nseg * D, harness::unwritten_float());
    emu::launch(cfg_of("seg_mean_kernel", (outer * nseg * D + kThreads - 1) / kThreads, kThreads, mode, seed), [&] {
      seg_mean_kernel<float>(mean.data(), kf.data(), outer, Sk, D, s.segment, nseg);
    });
    Buf<float> dx("dx", size_t(outer) * Sk * D, harness::unwritten_float());
    emu::launch(cfg_of("seg_mean_bwd_kernel", (outer * Sk * D + kThreads - 1) / kThreads, kThreads, mode, seed), [&] {
      seg_mean_bwd_kernel<float>(dx.data(), mean.data(), outer, Sk, D, s.segment, nseg);
    });
    for (const std::string& g : {mean.guards(), dx.guards()})
      if (!g.empty()) return g;
    for (long long o = 0; o < outer; ++o)
      for (int sg = 0; sg < nseg; ++sg) {
        const int j0 = sg * s.segment, j1 = std::min(Sk, j0 + s.segment);
        for (int d = 0; d < D; ++d) {
          double a = 0;
          for (int j = j0; j < j1; ++j) a += k[(o * Sk + j) * D + d];
          a /= (j1 - j0);
          const float g = mean[(size_t(o) * nseg + sg) * D + d];
          const int nf = harness::nonfinite_agree(g, a);
          if (nf < 0 || (nf == 0 && std::fabs(g - a) > 1e-5 * (1 + std::fabs(a))))
            return fmt("mean[%lld][%d][%d] = %g, want %g", o, sg, d, g, a);
          for (int j = j0; j < j1; ++j) {
            const float gx = dx[(size_t(o) * Sk + j) * D + d];
            const double w = double(g) / (j1 - j0);
            const int nx = harness::nonfinite_agree(gx, w);
            if (nx < 0 || (nx == 0 && std::fabs(gx - w) > 1e-6 * (1 + std::fabs(w))))
              return fmt("dx[%lld][%d][%d] = %g, want %g", o, j, d, gx, w);
          }
        }
      }
  }
  return "";
}

// ---- dual attention with a segment-routed global path ------------------------------------
// dual_seg_fwd_warp (out, out_l, out_g, lse_l, lse_g), dual_seg_bwd_warp (dq, dk, dv added into
// accumulators) and dual_gate_grad_warp (dgates) against the float64 definition: the local path
// (harness::visible, the contract's rule), the segment path as above, the gated mix and its
// gradients, each path's gate folded into its terms.
struct DualShape {
  const char* tag;
  int B, Hq, Hkv, Sq, Sk, D, segment, K, causal, mask, window;
  int per_head = 0;  // gates [B, Hq, Sq, 2] (else [B, Sq, 2])
  int bf = 0;
  int bad = 0;       // one index out of range
};

template <int DPL>
std::string run_dual_dpl(const DualShape& s, const harness::Mode& mode, uint32_t seed) {
  emu::clear_globals();
  std::mt19937 r(seed);
  std::uniform_real_distribution<float> u(-1.f, 1.f);
  const int B = s.B, Hq = s.Hq, Hkv = s.Hkv, Sq = s.Sq, Sk = s.Sk, D = s.D, K = s.K, G = Hq / Hkv;
  const int nseg = (Sk + s.segment - 1) / s.segment;
  const size_t nq = size_t(B) * Hq * Sq * D, nkv = size_t(B) * Hkv * Sk * D, rows = size_t(B) * Hq * Sq;
  const size_t ngr = s.per_head ? rows : size_t(B) * Sq;
  // stored values (float or bf16) and the reference's copies of them
  struct In {
    std::unique_ptr<Buf<float>> f32;
    std::unique_ptr<Buf<uint16_t>> b16;
  };
  auto make = [&](const char* name, size_t n, std::vector<double>& ref, float lo = -1.f, float hi = 1.f) {
    In in{std::make_unique<Buf<float>>(name, s.bf ? 0 : n, 0.f), std::make_unique<Buf<uint16_t>>(name, s.bf ? n : 0, 0)};
    ref.resize(n);
    std::uniform_real_distribution<float> w(lo, hi);
    for (size_t i = 0; i < n; ++i) {
      const float x = w(r);
      if (s.bf) {
        (*in.b16)[i] = f2bf(x);
        ref[i] = bf2f((*in.b16)[i]);
      } else {
        (*in.f32)[i] = x;
        ref[i] = x;
      }
    }
    return in;
  };
  std::vector<double> q, k, v, dO, gt;
  In qs = make("q", nq, q), ks = make("k", nkv, k), vs = make("v", nkv, v), ds = make("dout", nq, dO);
  In gs = make("gates", ngr * 2, gt, -1.5f, 1.5f);
  auto ptr = [&](In& in) -> void* { return s.bf ? static_cast<void*>(in.b16->data()) : in.f32->data(); };
  Buf<int32_t> idx("indices", rows * K, 0);
  for (size_t i = 0; i < idx.size(); ++i) idx[i] = static_cast<int32_t>(r() % (nseg + 1)) - 1;
  size_t bad_at = ~size_t(0);
  if (s.bad) {
    bad_at = idx.size() / 2 + 1;
    idx[bad_at] = nseg + 2;
  }
  const float scale = 1.f / std::sqrt(static_cast<float>(D));

  // reference forward: per row, each path's visible keys and materialised softmax
  std::vector<std::vector<int>> vis[2];
  vis[0].resize(rows);
  vis[1].resize(rows);
  std::vector<double> rout(nq, 0.0), rpath[2] = {std::vector<double>(nq, 0.0), std::vector<double>(nq, 0.0)};
  std::vector<double> rlse[2] = {std::vector<double>(rows, -INFINITY), std::vector<double>(rows, -INFINITY)};
  std::vector<char> empty[2] = {std::vector<char>(rows, 1), std::vector<char>(rows, 1)}, none(rows, 0);
  auto gate = [&](size_t row, int path) {
    const size_t bh = row / Sq, i = row % Sq, b = bh / Hq;
    return gt[(s.per_head ? row : b * Sq + i) * 2 + path];
  };
  for (size_t row = 0; row < rows; ++row) {
    const long long bh = row / Sq, i = row % Sq, b = bh / Hq, h = bh % Hq, p = i + Sk - Sq;
    for (int j = 0; j < Sk; ++j)
      if (harness::visible(s.mask, s.causal, s.window, p, j)) vis[0][row].push_back(j);
    std::set<int> segs;
    for (int x = 0; x < K; ++x) {
      const int sg = idx[row * K + x];
      if (sg >= 0 && sg < nseg) segs.insert(sg);
    }
    for (int sg : segs)
      for (int j = sg * s.segment; j < std::min(Sk, (sg + 1) * s.segment); ++j)
        if (!s.causal || j <= p) vis[1][row].push_back(j);
    const long long kv = (b * Hkv + h / G) * Sk * D;
    for (int path = 0; path < 2; ++path) {
      if (vis[path][row].empty()) continue;
      empty[path][row] = 0;
      std::vector<double> sc;
      double m = -INFINITY;
      for (int j : vis[path][row]) {
        double a = 0;
        for (int d = 0; d < D; ++d) a += q[row * D + d] * k[kv + j * D + d];
        sc.push_back(a * scale);
        m = std::max(m, a * scale);
      }
      double z = 0;
      for (double a : sc) z += std::exp(a - m);
      rlse[path][row] = m + std::log(z);
      for (size_t n = 0; n < sc.size(); ++n)
        for (int d = 0; d < D; ++d)
          rpath[path][row * D + d] += std::exp(sc[n] - rlse[path][row]) * v[kv + vis[path][row][n] * D + d];
    }
    for (int d = 0; d < D; ++d)
      rout[row * D + d] = gate(row, 0) * rpath[0][row * D + d] + gate(row, 1) * rpath[1][row * D + d];
  }

  // forward launch, as dual_segment_attention_forward does
  Buf<float> o32[3] = {Buf<float>("out", s.bf ? 0 : nq, harness::unwritten_float()),
                       Buf<float>("out_l", s.bf ? 0 : nq, harness::unwritten_float()),
                       Buf<float>("out_g", s.bf ? 0 : nq, harness::unwritten_float())};
  Buf<uint16_t> o16[3] = {Buf<uint16_t>("out_bf16", s.bf ? nq : 0, harness::kUnwrittenBf16),
                          Buf<uint16_t>("out_l_bf16", s.bf ? nq : 0, harness::kUnwrittenBf16),
                          Buf<uint16_t>("out_g_bf16", s.bf ? nq : 0, harness::kUnwrittenBf16)};
  Buf<float> lse_l("lse_l", rows, harness::unwritten_float()), lse_g("lse_g", rows, harness::unwritten_float());
  auto optr = [&](int x) -> void* { return s.bf ? static_cast<void*>(o16[x].data()) : o32[x].data(); };
  auto oget = [&](int x, size_t i) -> float { return s.bf ? bf2f(o16[x][i]) : o32[x][i]; };
  unsigned long long slot = ~0ull;
  DualSegParams DP{};
  SegParams& P = DP.P;
  P.q = ptr(qs);
  P.k = ptr(ks);
  P.v = ptr(vs);
  P.idx = idx.data();
  P.o = optr(0);
  P.bad = &slot;
  P.rows = static_cast<long long>(rows);
  P.kv_stride = static_cast<long long>(Sk) * D;
  P.Hq = Hq;
  P.Hkv = Hkv;
  P.Sq = Sq;
  P.Sk = Sk;
  P.D = D;
  P.K = K;
  P.segment = s.segment;
  P.nseg = nseg;
  P.causal = s.causal;
  P.scale = scale;
  DP.out_l = optr(1);
  DP.out_g = optr(2);
  DP.lse_l = lse_l.data();
  DP.lse_g = lse_g.data();
  DP.gates = ptr(gs);
  DP.gates_per_head = s.per_head;
  DP.mask = s.mask;
  DP.window = s.window;
  const long long blocks = (P.rows + kSegWarps - 1) / kSegWarps;
  if (s.bf)
    emu::launch(cfg_of("dual_seg_fwd_warp<bf16>", blocks, kSegWarps * 32, mode, seed),
                [&] { dual_seg_fwd_warp<bf16_t, DPL>(DP); });
  else
    emu::launch(cfg_of("dual_seg_fwd_warp", blocks, kSegWarps * 32, mode, seed),
                [&] { dual_seg_fwd_warp<float, DPL>(DP); });
  for (int x = 0; x < 3; ++x)
    for (const std::string& g : {o32[x].guards(), o16[x].guards()})
      if (!g.empty()) return g;
  for (const std::string& g : {lse_l.guards(), lse_g.guards(), idx.guards()})
    if (!g.empty()) return g;
  if (s.bad && slot != bad_at) return fmt("bad index slot %llu, want %zu", slot, bad_at);
  if (!s.bad && slot != ~0ull) return fmt("bad index recorded at %llu, none expected", slot);
  const double tol = s.bf ? 2e-2 : 2e-5;
  std::string e = harness::compare("out", rows, size_t(D), [&](size_t i) { return oget(0, i); }, rout, none, tol);
  if (e.empty()) e = harness::compare("out_l", rows, size_t(D), [&](size_t i) { return oget(1, i); }, rpath[0], empty[0], tol);
  if (e.empty()) e = harness::compare("out_g", rows, size_t(D), [&](size_t i) { return oget(2, i); }, rpath[1], empty[1], tol);
  if (e.empty()) e = harness::compare_lse("lse_l", lse_l.data(), rlse[0], 1e-5);
  if (e.empty()) e = harness::compare_lse("lse_g", lse_g.data(), rlse[1], 1e-5);
  if (!e.empty()) return e;

  // backward from the stored path outputs and lse; accumulators start at base
  std::vector<double> outs[2] = {std::vector<double>(nq), std::vector<double>(nq)};
  for (int path = 0; path < 2; ++path)
    for (size_t i = 0; i < nq; ++i) outs[path][i] = oget(1 + path, i);
  const float base = 0.25f;
  Buf<float> dq("dq", nq, base), dk("dk", nkv, base), dv("dv", nkv, base);
  Buf<float> dg("dgates", ngr * 2, harness::unwritten_float());
  std::vector<double> rdq(nq, 0.0), rdk(nkv, 0.0), rdv(nkv, 0.0), rdg(ngr * 2, 0.0);
  std::vector<char> tq(rows, 0), tkv(size_t(B) * Hkv * Sk, 0);
  for (size_t row = 0; row < rows; ++row) {
    const long long bh = row / Sq, i = row % Sq, b = bh / Hq, h = bh % Hq;
    const long long kv = (b * Hkv + h / G) * Sk * D, gk = (b * Hkv + h / G) * Sk;
    for (int path = 0; path < 2; ++path) {
      double dot = 0;
      for (int d = 0; d < D; ++d) dot += dO[row * D + d] * outs[path][row * D + d];
      rdg[(s.per_head ? row : b * Sq + i) * 2 + path] += dot;
      const float ls = path ? lse_g[row] : lse_l[row];
      if (ls == -INFINITY) continue;
      const double g = gate(row, path), dr = g * dot;
      for (int j : vis[path][row]) {
        double sdot = 0, pdot = 0;
        for (int d = 0; d < D; ++d) {
          sdot += q[row * D + d] * k[kv + j * D + d];
          pdot += dO[row * D + d] * v[kv + j * D + d];
        }
        const double pj = std::exp(sdot * scale - ls);
        const double dsj = pj * (g * pdot - dr) * scale;
        tq[row] = 1;
        tkv[gk + j] = 1;
        for (int d = 0; d < D; ++d) {
          rdq[row * D + d] += dsj * k[kv + j * D + d];
          rdk[(gk + j) * D + d] += dsj * q[row * D + d];
          rdv[(gk + j) * D + d] += g * pj * dO[row * D + d];
        }
      }
    }
  }
  P.dout = ptr(ds);
  P.dq = dq.data();
  P.dk = dk.data();
  P.dv = dv.data();
  DP.dgates = dg.data();
  slot = ~0ull;
  const long long gblocks = (static_cast<long long>(ngr) + kSegWarps - 1) / kSegWarps;
  if (s.bf) {
    emu::launch(cfg_of("dual_gate_grad_warp<bf16>", gblocks, kSegWarps * 32, mode, seed),
                [&] { dual_gate_grad_warp<bf16_t, DPL>(DP); });
    emu::launch(cfg_of("dual_seg_bwd_warp<bf16>", blocks, kSegWarps * 32, mode, seed),
                [&] { dual_seg_bwd_warp<bf16_t, DPL>(DP); });
  } else {
    emu::launch(cfg_of("dual_gate_grad_warp", gblocks, kSegWarps * 32, mode, seed),
                [&] { dual_gate_grad_warp<float, DPL>(DP); });
    emu::launch(cfg_of("dual_seg_bwd_warp", blocks, kSegWarps * 32, mode, seed),
                [&] { dual_seg_bwd_warp<float, DPL>(DP); });
  }
  for (const std::string& g : {dq.guards(), dk.guards(), dv.guards(), dg.guards()})
    if (!g.empty()) return g;
  if (s.bad && slot != bad_at && !(slot == ~0ull && lse_g[bad_at / K] == -INFINITY))
    return fmt("backward: bad index slot %llu, want %zu", slot, bad_at);
  const double btol = s.bf ? 3e-2 : 1e-4;
  e = harness::compare_acc("dq", dq.data(), base, rdq, tq, size_t(D), btol, 1e-3);
  if (e.empty()) e = harness::compare_acc("dk", dk.data(), base, rdk, tkv, size_t(D), btol, 1e-3);
  if (e.empty()) e = harness::compare_acc("dv", dv.data(), base, rdv, tkv, size_t(D), btol, 1e-3);
  if (e.empty())
    e = harness::compare("dgates", ngr, 2, [&](size_t i) { return dg[i]; }, rdg, std::vector<char>(ngr, 0), 1e-5);
  return e;
}

std::string run_dual_case(const DualShape& s, const harness::Mode& m, uint32_t seed) {
  const int dpl = (s.D + 31) / 32;
  if (dpl <= 1) return run_dual_dpl<1>(s, m, seed);
  if (dpl <= 2) return run_dual_dpl<2>(s, m, seed);
  if (dpl <= 4) return run_dual_dpl<4>(s, m, seed);
  return run_dual_dpl<8>(s, m, seed);
}

std::string run_case(const Shape& s, const harness::Mode& m, uint32_t seed) {
  const int dpl = (s.D + 31) / 32;
  if (dpl <= 1) return run_dpl<1>(s, m, seed);
  if (dpl <= 2) return run_dpl<2>(s, m, seed);
  if (dpl <= 4) return run_dpl<4>(s, m, seed);
  return run_dpl<8>(s, m, seed);
}

// clang-format off
const Shape kShapes[] = {
  // tag               B  Hq Hkv  Sq  Sk   D  seg  K causal
  {"one",              1, 1, 1,    1,  1,  1,  1,  1, 1},
  {"g1-odd",           2, 2, 2,   13, 13,  5,  4,  3, 1},
  {"g3-sq<sk",         1, 3, 1,    7, 20, 40,  6,  3, 1},
  {"g8-d64",           1, 8, 1,    9,  9, 64,  3,  2, 1},
  {"noncausal",        1, 2, 1,   11, 11, 33,  5,  4, 0},
  {"seg1",             1, 1, 1,    8,  8,  8,  1,  5, 1},
  {"seg>=S",           1, 2, 2,    6,  6, 16, 32,  2, 1},
  {"d128",             1, 2, 1,    5,  9, 128, 4,  2, 1},
  {"d200",             1, 1, 1,    4,  7, 200, 3,  3, 1},
  {"stride",           2, 4, 2,    6, 10, 16,  4,  3, 1, 0, 5},
  {"bf16",             1, 3, 1,   10, 10, 32,  4,  3, 1, 1},
  {"nan-key",          1, 2, 1,   12, 12,  8,  4,  3, 1, 0, 0, 1},
  {"bad-index",        1, 2, 1,    6,  6,  8,  2,  3, 1, 0, 0, 0, 1},
};

// mask 1 = sliding, 2 = block
const DualShape kDualShapes[] = {
  // tag               B  Hq Hkv  Sq  Sk   D  seg  K causal mask win perhead bf bad
  {"one",              1, 1, 1,    1,  1,  1,  1,  1, 1,    1,  1},
  {"g1-odd-slide",     2, 2, 2,   13, 13,  5,  4,  3, 1,    1,  3},
  {"g3-sq<sk-block",   1, 3, 1,    7, 20, 40,  6,  3, 1,    2,  4,  1},
  {"g8-d64",           1, 8, 1,    9,  9, 64,  3,  2, 1,    1,  1},
  {"noncausal-slide",  1, 2, 1,   11, 11, 33,  5,  4, 0,    1,  4,  1},
  {"noncausal-block",  2, 2, 2,    9, 12, 16,  4,  2, 0,    2,  5},
  {"seg>=S-topk>=n",   1, 2, 1,    6,  6, 16, 32,  3, 1,    1,  2,  1},
  {"win>=S",           1, 1, 1,    5,  9, 128, 4,  2, 1,    1, 50},
  {"bf16",             1, 3, 1,   10, 10, 32,  4,  3, 1,    2,  3,  0, 1},
  {"bf16-perhead",     1, 2, 2,    8, 11, 24,  3,  2, 0,    1,  2,  1, 1},
  {"bad-index",        1, 2, 1,    6,  6,  8,  2,  3, 1,    1,  2,  0, 0, 1},
};
// clang-format on

}  // namespace

int main(int argc, char** argv) {
  std::vector<harness::Case> cases;
  int si = 0;
  for (const Shape& s : kShapes) {
    for (int mi = 0; mi < 3; ++mi) {
      const harness::Mode m = harness::kModes[mi];
      const uint32_t seed = 1300u + 17u * static_cast<uint32_t>(si);
      cases.push_back({fmt("segment/%s/%s", s.tag, harness::mode_name(m).c_str()), mi == si % 3,
                       double(s.B) * s.Hq * s.Sq * s.Sk * s.D * 0.002, [s, m, seed] { return run_case(s, m, seed); }});
    }
    ++si;
  }
  for (const DualShape& s : kDualShapes) {
    for (int mi = 0; mi < 3; ++mi) {
      const harness::Mode m = harness::kModes[mi];
      const uint32_t seed = 1700u + 17u * static_cast<uint32_t>(si);
      cases.push_back({fmt("segment-dual/%s/%s", s.tag, harness::mode_name(m).c_str()), mi == si % 3,
                       double(s.B) * s.Hq * s.Sq * s.Sk * s.D * 0.004, [s, m, seed] { return run_dual_case(s, m, seed); }});
    }
    ++si;
  }
  return harness::main(argc, argv, cases);
}
