// attn_bwd_dot<D> and attn_bwd_mma<D> (native/cuda/attention_bwd.cu), run block by block in the
// emulator against a float64 reference of the attention backward (native/core/attention.h):
//   P = exp(scale q.k - lse) over the visible, unpadded keys, Dr = dout . out,
//   dS = P (dout.v - Dr), dv = P^T dout, dk = scale dS^T q, dq = scale dS k,
// with out (bf16) and lse (float) from a float64 forward. dq, dk, dv start at 0.25: the kernel
// adds into them. Launch as launch_t does (extract.js checks those host lines).
#include "attn_bwd_kernel.inc"
#include "harness.h"

using namespace dualroute::cuda;  // BwdParams, attn_bwd_dot, attn_bwd_mma, kBN, kBwdThreads, kDotThreads, bwd_smem_bytes
using harness::Buf;
using harness::fmt;

namespace {

// Built twice: as sm_80 and (-D__CUDA_ARCH__=900) as sm_90, whose dq update is a float2 atomicAdd.
#if __CUDA_ARCH__ >= 900
constexpr const char* kPrefix = "bwd-sm90";
#else
constexpr const char* kPrefix = "bwd";
#endif

struct Shape {
  const char* tag;
  int B, Hq, Hkv, Sq, Sk;
  int mask, causal;
  long long window;
  int pad;  // 0 none; 1 a random quarter of the keys; 2 keys [0, 70); 3 every key of batch 0
  int n;    // > 0: query_index of n rows (repeats, out-of-range entries)
  double sc = 1;  // scale = sc * 2 / sqrt(D)
  int poison = 0; // non-finite inputs: see poison() (0 none)
  int ragged = 0; // with n: query_count [B] (half the rows, none, all); padding rows hold valid
                  // indices and a finite lse, so that only query_count keeps them out
};

// Non-finite inputs (every batch and head): 1 NaN values of the last 4 keys; 2 a NaN in key Sk/2
// and a NaN query row Sq/3; 3 +inf in key Sk/3 and -inf in query row 2Sq/3; 4 +inf in the value
// of key Sk/2 and NaN in that of key 1; 5 a NaN dout row (row n/2 of every head). The
// references then give what the materialised softmax(q k^T) v and its backward give.
void poison(int kind, int B, int Hq, int Hkv, int Sq, int Sk, int n, int D, Buf<uint16_t>& q, Buf<uint16_t>& k,
            Buf<uint16_t>& v, Buf<uint16_t>& dout) {
  auto set = [&](Buf<uint16_t>& x, int heads, int rows, int row, int d, float val) {
    if (row < 0 || row >= rows) return;
    for (int b = 0; b < B; ++b)
      for (int h = 0; h < heads; ++h)
        for (int x0 = 0; x0 < D; ++x0)
          if (d < 0 || x0 == d % D) x[((size_t(b) * heads + h) * rows + row) * D + x0] = f2bf(val);
  };
  if (kind == 1)
    for (int j = Sk - 4; j < Sk; ++j) set(v, Hkv, Sk, j, -1, NAN);
  if (kind == 2) {
    set(k, Hkv, Sk, Sk / 2, 3, NAN);
    set(q, Hq, Sq, Sq / 3, -1, NAN);
  }
  if (kind == 3) {
    set(k, Hkv, Sk, Sk / 3, 1, INFINITY);
    set(q, Hq, Sq, 2 * Sq / 3, 2, -INFINITY);
  }
  if (kind == 4) {
    set(v, Hkv, Sk, Sk / 2, 0, INFINITY);
    set(v, Hkv, Sk, 1, 5, NAN);
  }
  if (kind == 5) set(dout, Hq, n, n / 2, 4, NAN);
}

// BwdParams as launch_t's callers fill them (out / lse: the local path's for the dual), and
// launch_t's KT, tiles and launch configurations of attn_bwd_dot (dot_cfg) and attn_bwd_mma (cfg).
template <class S>
BwdParams bwd_params(const S& s, int n, int D, double scale, const Buf<uint16_t>& q, const Buf<uint16_t>& k,
                     const Buf<uint16_t>& v, const Buf<uint16_t>& out, const Buf<uint16_t>& dout, const Buf<float>& lse,
                     Buf<float>& dq, Buf<float>& dk, Buf<float>& dv, const Buf<uint8_t>& pad) {
  BwdParams P{};
  P.q = q.data();
  P.k = k.data();
  P.v = v.data();
  P.out = out.data();
  P.dout = dout.data();
  P.lse = lse.data();
  P.dq = dq.data();
  P.dk = dk.data();
  P.dv = dv.data();
  P.Hq = s.Hq;
  P.Hkv = s.Hkv;
  P.G = s.Hq / s.Hkv;
  P.Sq = s.Sq;
  P.Sk = s.Sk;
  P.n = n;
  P.D = D;
  P.causal = s.causal;
  P.mask = s.mask;
  P.window = s.mask == 0 ? 1 : s.window;
  P.scale = static_cast<float>(scale);
  P.pad = s.pad ? pad.data() : nullptr;
  P.qidx = nullptr;
  return P;
}
void launch_t_cfgs(BwdParams& P, int B, size_t rows, const char* dot_name, const char* name, size_t smem,
                   const harness::Mode& mode, uint32_t seed, emu::LaunchCfg& dot_cfg, emu::LaunchCfg& cfg,
                   emu::LaunchCfg& redo_cfg) {
  P.KT = kBN;
  P.tiles = (P.Sk + kBN - 1) / kBN;
  const int rows_per_block = (kDotThreads / 32) * (32 / (P.D / 8));
  dot_cfg.kernel = dot_name;
  dot_cfg.grid = static_cast<unsigned>((static_cast<long long>(rows) + rows_per_block - 1) / rows_per_block);
  dot_cfg.block = kDotThreads;
  cfg.kernel = name;
  cfg.grid = static_cast<unsigned>(size_t(B) * P.Hkv * P.tiles);
  cfg.block = kBwdThreads;
  cfg.dyn_smem = smem;
  dot_cfg.sched = cfg.sched = mode.sched;
  dot_cfg.cp = cfg.cp = mode.cp;
  dot_cfg.seed = cfg.seed = seed * 31 + static_cast<uint32_t>(mode.sched) * 7 + static_cast<uint32_t>(mode.cp);
  // attn_bwd_redo: a grid smaller than the list (blocks take listed tiles in turn), KT = kRedoKeys
  redo_cfg = cfg;
  redo_cfg.kernel = "attn_bwd_redo";
  redo_cfg.grid = std::min<unsigned>(cfg.grid, 3u);
  redo_cfg.block = kRedoThreads;
  redo_cfg.dyn_smem = 4 * kRedoKeys * P.D * sizeof(float) + kRedoKeys;
}

// attn_bwd_redo<D / 32> for each path, as launch_t runs it after attn_bwd_mma.
void launch_redo(const BwdParams& P, bool dual, const emu::LaunchCfg& redo_cfg) {
  BwdParams Pr = P;
  Pr.KT = kRedoKeys;
  for (int path = dual ? 1 : 0; path <= (dual ? 2 : 0); ++path) {
    if (P.D == 32) emu::launch(redo_cfg, [&] { attn_bwd_redo<1>(Pr, path); });
    if (P.D == 64) emu::launch(redo_cfg, [&] { attn_bwd_redo<2>(Pr, path); });
    if (P.D == 128) emu::launch(redo_cfg, [&] { attn_bwd_redo<4>(Pr, path); });
  }
}

std::string run_case(const Shape& s, int D, const harness::Mode& mode, uint32_t seed) {
  emu::clear_globals();
  std::mt19937 r(seed);
  const int B = s.B, Hq = s.Hq, Hkv = s.Hkv, Sq = s.Sq, Sk = s.Sk, G = Hq / Hkv;
  const int n = s.n ? s.n : Sq;
  const double scale = s.sc * 2.0 / std::sqrt(double(D));
  const size_t rows = size_t(B) * Hq * n;
  Buf<uint16_t> q("q", size_t(B) * Hq * Sq * D, 0), k("k", size_t(B) * Hkv * Sk * D, 0),
      v("v", size_t(B) * Hkv * Sk * D, 0), dout("dout", rows * D, 0), out("out", rows * D, 0);
  Buf<float> lse("lse", rows, -INFINITY);
  Buf<uint8_t> pad("key_padding", s.pad ? size_t(B) * Sk : 0, 0);
  Buf<int32_t> qidx("query_index", s.n ? size_t(B) * n : 0, 0);
  harness::random_bf16(q, r, -1.f, 1.f);
  harness::random_bf16(k, r, -1.f, 1.f);
  harness::random_bf16(v, r, -1.f, 1.f);
  harness::random_bf16(dout, r, -1.f, 1.f);
  poison(s.poison, B, Hq, Hkv, Sq, Sk, n, D, q, k, v, dout);
  for (int b = 0; b < B && s.pad; ++b)
    for (int j = 0; j < Sk; ++j) {
      uint8_t& p = pad[size_t(b) * Sk + j];
      if (s.pad == 1) p = r() % 4 == 0;
      if (s.pad == 2) p = j < 70;
      if (s.pad == 3) p = b == 0 || r() % 5 == 0;
    }
  for (size_t i = 0; i < qidx.size(); ++i) qidx[i] = static_cast<int32_t>(r() % (Sq + 4)) - 2;
  Buf<int32_t> qcount("query_count", s.ragged ? size_t(B) : 0, 0);
  for (int b = 0; b < B && s.ragged; ++b) {
    qcount[b] = b % 3 == 0 ? n / 2 + 1 : b % 3 == 1 ? 0 : n;
    for (int rr = qcount[b]; rr < n; ++rr) qidx[size_t(b) * n + rr] = rr % Sq;
  }
  auto padding = [&](int b, int rr) { return s.ragged && rr >= qcount[b]; };

  auto qrow = [&](int b, int h, int qi) { return ((size_t(b) * Hq + h) * Sq + qi) * D; };
  auto krow = [&](int b, int h, int j) { return ((size_t(b) * Hkv + h / G) * Sk + j) * D; };
  auto query = [&](int b, int rr) { return padding(b, rr) ? -1 : s.n ? qidx[size_t(b) * n + rr] : rr; };
  auto keys = [&](int b, int qi) {  // visible, unpadded keys of query qi
    std::vector<int> js;
    if (qi < 0 || qi >= Sq) return js;
    const long long p = static_cast<long long>(qi) + Sk - Sq;
    for (int j = 0; j < Sk; ++j)
      if (!(s.pad && pad[size_t(b) * Sk + j]) && harness::visible(s.mask, s.causal, s.window, p, j)) js.push_back(j);
    return js;
  };
  auto dot = [&](const Buf<uint16_t>& x, size_t xo, const Buf<uint16_t>& y, size_t yo) {
    double d = 0;
    for (int i = 0; i < D; ++i) d += double(bf2f(x[xo + i])) * bf2f(y[yo + i]);
    return d;
  };

  // Forward in float64, stored as the kernel reads it: out in bf16, lse in float.
  for (int b = 0; b < B; ++b)
    for (int h = 0; h < Hq; ++h)
      for (int rr = 0; rr < n; ++rr) {
        const size_t orow = (size_t(b) * Hq + h) * n + rr;
        const int qi = query(b, rr);
        const std::vector<int> js = keys(b, qi);
        if (js.empty()) continue;
        std::vector<double> sc;
        double m = -INFINITY, l = 0;
        for (int j : js) {
          sc.push_back(scale * dot(q, qrow(b, h, qi), k, krow(b, h, j)));
          m = std::max(m, sc.back());
        }
        for (double x : sc) l += std::exp(x - m);
        lse[orow] = static_cast<float>(m + std::log(l));
        for (int x = 0; x < D; ++x) {
          double o = 0;
          for (size_t i = 0; i < js.size(); ++i) o += std::exp(sc[i] - m) / l * bf2f(v[krow(b, h, js[i]) + x]);
          out[orow * D + x] = f2bf(static_cast<float>(o));
        }
      }
  // padding rows: a finite lse, as if the caller's lse held anything there (the kernel must still skip them)
  for (int b = 0; b < B && s.ragged; ++b)
    for (int h = 0; h < Hq; ++h)
      for (int rr = qcount[b]; rr < n; ++rr) lse[(size_t(b) * Hq + h) * n + rr] = 0.5f;
  // Backward reference.
  std::vector<double> rdq(q.size(), 0), rdk(k.size(), 0), rdv(v.size(), 0), rDr(rows, 0);
  std::vector<char> tq(q.size() / D, 0), tkv(k.size() / D, 0);  // rows some (query, key) pair reaches
  double mag[3] = {0, 0, 0};  // largest sum of |terms| of an element of dq, dk, dv
  for (int b = 0; b < B; ++b)
    for (int h = 0; h < Hq; ++h)
      for (int rr = 0; rr < n; ++rr) {
        const size_t orow = (size_t(b) * Hq + h) * n + rr;
        const double dr = dot(dout, orow * D, out, orow * D);
        rDr[orow] = dr;
        const int qi = query(b, rr);
        if (lse[orow] == -INFINITY || qi < 0) continue;
        for (int j : keys(b, qi)) {
          const size_t qo = qrow(b, h, qi), ko = krow(b, h, j);
          tq[qo / D] = tkv[ko / D] = 1;
          const double p = std::exp(scale * dot(q, qo, k, ko) - lse[orow]);
          const double dp = dot(dout, orow * D, v, ko), ds = p * (dp - dr), dsa = p * (std::fabs(dp) + std::fabs(dr));
          mag[0] = std::max(mag[0], scale * dsa);  // |k|, |q|, |dout| <= 1
          mag[1] = std::max(mag[1], scale * dsa);
          mag[2] = std::max(mag[2], p);
          for (int x = 0; x < D; ++x) {
            rdv[ko + x] += p * bf2f(dout[orow * D + x]);
            rdk[ko + x] += scale * ds * bf2f(q[qo + x]);
            rdq[qo + x] += scale * ds * bf2f(k[ko + x]);
          }
        }
      }

  const float base = 0.25f;
  Buf<float> dq("dq", q.size(), base), dk("dk", k.size(), base), dv("dv", v.size(), base), Dr("Dr", rows, NAN);
  BwdParams P = bwd_params(s, n, D, scale, q, k, v, out, dout, lse, dq, dk, dv, pad);
  P.qidx = s.n ? qidx.data() : nullptr;
  P.qcount = s.ragged ? qcount.data() : nullptr;
  // launch_t
  emu::LaunchCfg dot_cfg, cfg, redo_cfg;
  launch_t_cfgs(P, B, rows, "attn_bwd_dot", "attn_bwd_mma",
                D == 32 ? bwd_smem_bytes<32, false>() : D == 64 ? bwd_smem_bytes<64, false>() : bwd_smem_bytes<128, false>(),
                mode, seed, dot_cfg, cfg, redo_cfg);
  Buf<int> redo("redo", cfg.grid + 1, 0);
  P.redo = redo.data();
  const bf16_t* o = reinterpret_cast<const bf16_t*>(out.data());
  const bf16_t* d = reinterpret_cast<const bf16_t*>(dout.data());
  float* dr = Dr.data();
  const long long nrows = static_cast<long long>(rows);
  if (D == 32) {
    emu::launch(dot_cfg, [&] { attn_bwd_dot<32, false>(o, d, dr, nrows, nullptr, nullptr, nullptr, 0, Hq, Sq); });
    emu::launch(cfg, [&] { attn_bwd_mma<32, false>(P, dr, nullptr); });
  } else if (D == 64) {
    emu::launch(dot_cfg, [&] { attn_bwd_dot<64, false>(o, d, dr, nrows, nullptr, nullptr, nullptr, 0, Hq, Sq); });
    emu::launch(cfg, [&] { attn_bwd_mma<64, false>(P, dr, nullptr); });
  } else {
    emu::launch(dot_cfg, [&] { attn_bwd_dot<128, false>(o, d, dr, nrows, nullptr, nullptr, nullptr, 0, Hq, Sq); });
    emu::launch(cfg, [&] { attn_bwd_mma<128, false>(P, dr, nullptr); });
  }
  launch_redo(P, false, redo_cfg);

  for (const std::string& g : {dq.guards(), dk.guards(), dv.guards(), Dr.guards()})
    if (!g.empty()) return g;
  for (size_t i = 0; i < rows; ++i)
    if (const int nf = harness::nonfinite_agree(Dr[i], rDr[i]); nf < 0 || (nf == 0 && !(std::fabs(Dr[i] - rDr[i]) <= 1e-4 * (1 + std::fabs(rDr[i])))))
      return fmt("Dr: row %zu got %.7g want %.7g", i, Dr[i], rDr[i]);
  const double tol = 2e-2;
  return harness::check_grads(dq.data(), dk.data(), dv.data(), base, rdq, rdk, rdv, tq, tkv, D, tol, mag);
}

// ---- dual (local + global path) backward: attn_bwd_dot<D, true> and attn_bwd_mma<D, true> ------
// Per row r of (b, h), gates g_l, g_g (bf16): P_l over the local mask's visible unpadded keys
// (lse_l), P_g over the global (Global, same causal) ones for rows on the global path (lse_g);
// Dr_l = g_l dout . out_l, Dr_g = g_g dout . out_g, dS = P_l (g_l dP - Dr_l) + P_g (g_g dP - Dr_g),
// dv = (g_l P_l + g_g P_g)^T dout, dk = scale dS^T q, dq = scale dS k. Rows off the global path
// carry a real global out / lse in the buffers (the kernel must ignore them for those rows).
struct DualShape {
  const char* tag;
  int B, Hq, Hkv, Sq, Sk;
  int mask, causal;  // local mask: 1 Sliding, 2 Block
  long long window;
  int pad;       // 0 none; 1 a random quarter of the keys; 2 keys [0, 70)
  int per_head;  // gates [B, Hq, Sq, 2] instead of [B, Sq, 2]
  int grows;     // global_rows: 0 null; 1 random (about 2/3 on); 2 all off
  int poison = 0;  // non-finite inputs: see poison()
};

std::string run_dual_case(const DualShape& s, int D, const harness::Mode& mode, uint32_t seed) {
  emu::clear_globals();
  std::mt19937 r(seed);
  const int B = s.B, Hq = s.Hq, Hkv = s.Hkv, Sq = s.Sq, Sk = s.Sk, G = Hq / Hkv, n = Sq;
  const double scale = 2.0 / std::sqrt(double(D));
  const size_t rows = size_t(B) * Hq * n;
  Buf<uint16_t> q("q", size_t(B) * Hq * Sq * D, 0), k("k", size_t(B) * Hkv * Sk * D, 0),
      v("v", size_t(B) * Hkv * Sk * D, 0), dout("dout", rows * D, 0), out_l("out_l", rows * D, 0),
      out_g("out_g", rows * D, 0), gates("gates", (s.per_head ? rows : size_t(B) * Sq) * 2, 0);
  Buf<float> lse_l("lse_l", rows, -INFINITY), lse_g("lse_g", rows, -INFINITY);
  Buf<uint8_t> pad("key_padding", s.pad ? size_t(B) * Sk : 0, 0);
  Buf<uint8_t> grows("global_rows", s.grows ? size_t(B) * Sq : 0, 0);
  harness::random_bf16(q, r, -1.f, 1.f);
  harness::random_bf16(k, r, -1.f, 1.f);
  harness::random_bf16(v, r, -1.f, 1.f);
  harness::random_bf16(dout, r, -1.f, 1.f);
  harness::random_bf16(gates, r, -1.f, 1.5f);
  poison(s.poison, B, Hq, Hkv, Sq, Sk, n, D, q, k, v, dout);
  for (size_t i = 0; i < gates.size(); ++i)
    if (r() % 8 == 0) gates[i] = 0;  // zero gates (and, by chance, rows with both zero)
  for (int b = 0; b < B && s.pad; ++b)
    for (int j = 0; j < Sk; ++j) pad[size_t(b) * Sk + j] = s.pad == 1 ? r() % 4 == 0 : j < 70;
  for (size_t i = 0; i < grows.size(); ++i) grows[i] = s.grows == 1 && r() % 3 != 0 ? uint8_t(1 + r() % 255) : 0;

  auto qrow = [&](int b, int h, int qi) { return ((size_t(b) * Hq + h) * Sq + qi) * D; };
  auto krow = [&](int b, int h, int j) { return ((size_t(b) * Hkv + h / G) * Sk + j) * D; };
  auto on_global = [&](int b, int rr) { return !s.grows || grows[size_t(b) * Sq + rr] != 0; };
  auto keys = [&](int b, int rr, int mask, long long window) {  // visible, unpadded keys of row rr
    std::vector<int> js;
    const long long p = static_cast<long long>(rr) + Sk - Sq;
    for (int j = 0; j < Sk; ++j)
      if (!(s.pad && pad[size_t(b) * Sk + j]) && harness::visible(mask, s.causal, window, p, j)) js.push_back(j);
    return js;
  };
  auto dot = [&](const Buf<uint16_t>& x, size_t xo, const Buf<uint16_t>& y, size_t yo) {
    double d = 0;
    for (int i = 0; i < D; ++i) d += double(bf2f(x[xo + i])) * bf2f(y[yo + i]);
    return d;
  };
  auto gate = [&](int b, int h, int rr, int path) {
    const size_t gi = s.per_head ? (size_t(b) * Hq + h) * Sq + rr : size_t(b) * Sq + rr;
    return double(bf2f(gates[gi * 2 + path]));
  };

  // Both paths' forward in float64, stored as the kernel reads it (bf16 out, float lse).
  for (int b = 0; b < B; ++b)
    for (int h = 0; h < Hq; ++h)
      for (int rr = 0; rr < n; ++rr) {
        const size_t orow = (size_t(b) * Hq + h) * n + rr;
        for (int path = 0; path < 2; ++path) {
          const std::vector<int> js = path ? keys(b, rr, 0, 1) : keys(b, rr, s.mask, s.window);
          if (js.empty()) continue;
          Buf<uint16_t>& o = path ? out_g : out_l;
          std::vector<double> sc;
          double m = -INFINITY, l = 0;
          for (int j : js) {
            sc.push_back(scale * dot(q, qrow(b, h, rr), k, krow(b, h, j)));
            m = std::max(m, sc.back());
          }
          for (double x : sc) l += std::exp(x - m);
          (path ? lse_g : lse_l)[orow] = static_cast<float>(m + std::log(l));
          for (int x = 0; x < D; ++x) {
            double a = 0;
            for (size_t i = 0; i < js.size(); ++i) a += std::exp(sc[i] - m) / l * bf2f(v[krow(b, h, js[i]) + x]);
            o[orow * D + x] = f2bf(static_cast<float>(a));
          }
        }
      }
  // Backward reference.
  std::vector<double> rdq(q.size(), 0), rdk(k.size(), 0), rdv(v.size(), 0), rDl(rows, 0), rDg(rows, 0);
  std::vector<char> tq(q.size() / D, 0), tkv(k.size() / D, 0);
  double mag[3] = {0, 0, 0};
  for (int b = 0; b < B; ++b)
    for (int h = 0; h < Hq; ++h)
      for (int rr = 0; rr < n; ++rr) {
        const size_t orow = (size_t(b) * Hq + h) * n + rr;
        const double gl = gate(b, h, rr, 0), gg = gate(b, h, rr, 1);
        const double drl = gl * dot(dout, orow * D, out_l, orow * D), drg = gg * dot(dout, orow * D, out_g, orow * D);
        rDl[orow] = drl;
        rDg[orow] = drg;
        const bool lon = lse_l[orow] != -INFINITY, gon = on_global(b, rr) && lse_g[orow] != -INFINITY;
        const std::vector<int> jl = keys(b, rr, s.mask, s.window), jg = keys(b, rr, 0, 1);
        for (int j = 0; j < Sk; ++j) {
          const bool vl = lon && std::find(jl.begin(), jl.end(), j) != jl.end();
          const bool vg = gon && std::find(jg.begin(), jg.end(), j) != jg.end();
          if (!vl && !vg) continue;
          const size_t qo = qrow(b, h, rr), ko = krow(b, h, j);
          tq[qo / D] = tkv[ko / D] = 1;
          const double sc = scale * dot(q, qo, k, ko), dp = dot(dout, orow * D, v, ko);
          const double pl = vl ? std::exp(sc - lse_l[orow]) : 0, pg = vg ? std::exp(sc - lse_g[orow]) : 0;
          // each path's terms only where it sees the key (a path that cannot see may carry NaN)
          const double ds = (vl ? pl * (gl * dp - drl) : 0) + (vg ? pg * (gg * dp - drg) : 0);
          const double pt = (vl ? gl * pl : 0) + (vg ? gg * pg : 0);
          const double dsa = pl * (std::fabs(gl * dp) + std::fabs(drl)) + pg * (std::fabs(gg * dp) + std::fabs(drg));
          mag[0] = std::max(mag[0], scale * dsa);
          mag[1] = std::max(mag[1], scale * dsa);
          mag[2] = std::max(mag[2], std::fabs(gl) * pl + std::fabs(gg) * pg);
          for (int x = 0; x < D; ++x) {
            rdv[ko + x] += pt * bf2f(dout[orow * D + x]);
            rdk[ko + x] += scale * ds * bf2f(q[qo + x]);
            rdq[qo + x] += scale * ds * bf2f(k[ko + x]);
          }
        }
      }

  const float base = 0.25f;
  Buf<float> dq("dq", q.size(), base), dk("dk", k.size(), base), dv("dv", v.size(), base), Dr("Dr", 2 * rows, NAN);
  BwdParams P = bwd_params(s, n, D, scale, q, k, v, out_l, dout, lse_l, dq, dk, dv, pad);  // local mask: window > 0
  P.out_g = out_g.data();
  P.lse_g = lse_g.data();
  P.gates = gates.data();
  P.gates_per_head = s.per_head;
  P.global_rows = s.grows ? grows.data() : nullptr;
  // launch_t<D, true>
  emu::LaunchCfg dot_cfg, cfg, redo_cfg;
  launch_t_cfgs(P, B, rows, "attn_bwd_dot<D, true>", "attn_bwd_mma<D, true>",
                D == 32 ? bwd_smem_bytes<32, true>() : D == 64 ? bwd_smem_bytes<64, true>() : bwd_smem_bytes<128, true>(),
                mode, seed, dot_cfg, cfg, redo_cfg);
  Buf<int> redo("redo", cfg.grid + 1, 0);
  P.redo = redo.data();
  const bf16_t* ol = reinterpret_cast<const bf16_t*>(out_l.data());
  const bf16_t* og = reinterpret_cast<const bf16_t*>(out_g.data());
  const bf16_t* gt = reinterpret_cast<const bf16_t*>(gates.data());
  const bf16_t* d = reinterpret_cast<const bf16_t*>(dout.data());
  float* dr = Dr.data();
  float* dr_g = dr + rows;
  const long long nrows = static_cast<long long>(rows);
  const int ph = s.per_head;
  if (D == 32) {
    emu::launch(dot_cfg, [&] { attn_bwd_dot<32, true>(ol, d, dr, nrows, og, gt, dr_g, ph, Hq, Sq); });
    emu::launch(cfg, [&] { attn_bwd_mma<32, true>(P, dr, dr_g); });
  } else if (D == 64) {
    emu::launch(dot_cfg, [&] { attn_bwd_dot<64, true>(ol, d, dr, nrows, og, gt, dr_g, ph, Hq, Sq); });
    emu::launch(cfg, [&] { attn_bwd_mma<64, true>(P, dr, dr_g); });
  } else {
    emu::launch(dot_cfg, [&] { attn_bwd_dot<128, true>(ol, d, dr, nrows, og, gt, dr_g, ph, Hq, Sq); });
    emu::launch(cfg, [&] { attn_bwd_mma<128, true>(P, dr, dr_g); });
  }
  launch_redo(P, true, redo_cfg);

  for (const std::string& g : {dq.guards(), dk.guards(), dv.guards(), Dr.guards()})
    if (!g.empty()) return g;
  for (size_t i = 0; i < 2 * rows; ++i) {
    const double want = i < rows ? rDl[i] : rDg[i - rows];
    if (const int nf = harness::nonfinite_agree(Dr[i], want); nf < 0 || (nf == 0 && !(std::fabs(Dr[i] - want) <= 1e-4 * (1 + std::fabs(want)))))
      return fmt("%s: row %zu got %.7g want %.7g", i < rows ? "Dr_l" : "Dr_g", i % rows, Dr[i], want);
  }
  const double tol = 2e-2;
  return harness::check_grads(dq.data(), dk.data(), dv.data(), base, rdq, rdk, rdv, tq, tkv, D, tol, mag);
}

// clang-format off
const DualShape kDualShapes[] = {
  // tag                      B Hq Hkv  Sq   Sk mask causal window pad head grows
  {"sliding-causal-g2",       1, 2, 1, 150, 150, 1, 1, 37, 0, 0, 0},
  {"sliding-pad-sk>sq",       1, 2, 2, 130, 161, 1, 0, 40, 1, 1, 1},  // non-causal: keys past p, global causal
  {"block-causal-g2",         1, 2, 1, 140, 140, 2, 1, 48, 0, 1, 1},
  {"block-pad-sk>sq",         2, 2, 2,  70, 135, 2, 0, 50, 1, 0, 1},
  {"padded-prefix-causal",    1, 1, 1, 130, 150, 1, 1, 30, 2, 0, 0},  // rows that see only padding
  {"padded-prefix-g2",        1, 2, 1, 100, 150, 1, 0, 25, 2, 1, 1},
  {"sq>sk-odd",               1, 2, 1,  97,  61, 1, 1, 20, 0, 0, 1},  // p < 0: -inf on both paths
  {"decode-g2",               1, 2, 1,   3, 200, 1, 1, 50, 1, 1, 0},  // global span past the window
  {"no-global-rows",          1, 1, 1, 100, 100, 2, 0, 32, 0, 0, 2},
  {"window1-tiny-rows",       2, 2, 1,  65,  66, 1, 1,  1, 0, 1, 1},
  // non-finite inputs: the blocks that meet them take the exact path (attn_bwd_redo)
  {"nan-v-tail-sliding",      1, 2, 1, 150, 150, 1, 1, 37, 0, 0, 0, 1},
  {"nan-qk-block-headgates",  1, 2, 2, 140, 140, 2, 1, 48, 0, 1, 1, 2},
  {"inf-qk-sliding-pad",      1, 2, 1, 130, 161, 1, 0, 40, 1, 1, 1, 3},
  {"inf-nan-v-block",         1, 1, 1, 140, 140, 2, 1, 48, 0, 0, 0, 4},
  {"nan-dout-sliding",        1, 2, 1, 150, 150, 1, 1, 37, 0, 0, 1, 5},
};
// clang-format on

// clang-format off
const Shape kShapes[] = {
  // tag                    B Hq Hkv  Sq   Sk mask causal window pad  n    sc
  {"global-causal-g2",      1, 2, 1, 150, 151, 0, 1,  1, 0,   0},
  {"global-pad-sq<sk",      2, 2, 2, 100, 129, 0, 0,  1, 1,   0},  // last key tile: one key
  {"global-causal-sq>sk",   1, 4, 2, 200,  90, 0, 1,  1, 0,   0},  // -inf rows
  {"sliding-causal-pad",    1, 1, 1, 260, 260, 1, 1, 37, 1,   0},
  {"sliding-g2",            1, 2, 1, 190, 200, 1, 0, 50, 0,   0},
  {"block",                 1, 2, 2, 170, 170, 2, 0, 48, 0,   0},
  {"block-causal-pad",      1, 1, 1, 210, 180, 2, 1, 70, 1,   0},
  {"qidx-causal-g2",        2, 2, 1, 120, 140, 0, 1,  1, 1, 150},
  {"qidx-sliding",          1, 2, 2,  90, 200, 1, 1, 40, 0,  70},
  {"padded-prefix",         1, 1, 1, 130, 150, 0, 0,  1, 2,   0},  // fully padded key tile
  {"padded-prefix-causal",  1, 1, 1, 130, 150, 0, 1,  1, 2,   0},  // rows that see only padding
  {"padded-batch",          2, 2, 1,  70,  90, 0, 0,  1, 3,   0},  // batch 0: every key padded
  {"decode",                1, 1, 1,   5, 300, 0, 1,  1, 0,   0},
  {"block-sq>sk",           1, 2, 1, 300, 200, 2, 0, 64, 0,   0},  // p < 0
  {"sliding-narrow-pad",    1, 1, 1, 400, 400, 1, 0, 20, 1,   0},
  {"qidx-g4-repeats",       1, 4, 1,  64,  64, 0, 0,  1, 0, 200},
  {"sliding-w2-tile-edges", 1, 1, 1, 260, 260, 1, 0,  2, 0,   0},  // rows [64t - 1, 64t + 64] meet key tile t
  {"exact-tiles",           1, 2, 2, 128, 128, 1, 1, 64, 0,   0},
  {"sliding-window1",       1, 1, 1, 100, 100, 1, 1,  1, 0,   0},
  {"block-window1-sq<sk",   1, 1, 1,  80, 100, 2, 0,  1, 0,   0},
  {"sliding-window-2^40",   1, 2, 1,  70, 150, 1, 0, 1LL << 40, 1, 0},
  {"tiny",                  3, 2, 1,   1,   1, 0, 1,  1, 0,   0},
  {"peaky-scores",          1, 2, 1, 150, 200, 0, 1,  1, 1,   0, 8},
  {"long-decode",           1, 1, 1,   3, 1100, 1, 1, 700, 0, 0},
  // non-finite inputs: the blocks that meet them take the exact path (attn_bwd_redo)
  {"nan-v-tail-causal",     1, 2, 1, 150, 151, 0, 1,  1, 0,   0, 1, 1},
  {"nan-qk-causal-g2",      1, 2, 1, 150, 151, 0, 1,  1, 0,   0, 1, 2},
  {"inf-qk-sliding-pad",    1, 1, 1, 260, 260, 1, 1, 37, 1,   0, 1, 3},
  {"inf-nan-v-block",       1, 2, 2, 170, 170, 2, 0, 48, 0,   0, 1, 4},
  {"nan-dout-causal",       1, 2, 1, 150, 151, 0, 1,  1, 0,   0, 1, 5},
  {"nan-qk-qidx",           2, 2, 1, 120, 140, 0, 1,  1, 1, 150, 1, 2},
  {"ragged-qidx-causal",    3, 2, 1, 120, 140, 0, 1,  1, 1, 150, 1, 0, 1},
  {"ragged-qidx-sliding",   3, 2, 2,  90, 200, 1, 1, 40, 0,  70, 1, 0, 1},
};
// clang-format on

std::vector<harness::Case> cases() {
  std::vector<harness::Case> out;
  harness::add_cases(
      out, kShapes, kPrefix, 1u, 17u,
      [](const Shape& s, int D) {
        const int n = s.n ? s.n : s.Sq;
        return double(s.B) * s.Hq * ((n + 63) / 64) * ((s.Sk + 63) / 64) * (D + 32) * 2.5;
      },
      run_case);
  harness::add_cases(
      out, kDualShapes, std::string(kPrefix) + "-dual", 7u, 31u,
      [](const DualShape& s, int D) { return double(s.B) * s.Hq * ((s.Sq + 63) / 64) * ((s.Sk + 63) / 64) * (D + 32) * 4; },
      run_dual_case);
  return out;
}

}  // namespace

int main(int argc, char** argv) { return harness::main(argc, argv, cases()); }
