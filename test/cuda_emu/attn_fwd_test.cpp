// attn_fwd_mma<D, DUAL> (native/cuda/attention.cu), run block by block in the emulator against
// a float64 reference written from the contract (native/core/attention.h):
//   forward: out = softmax(scale q k^T over the visible, unpadded keys) v, lse = log sum exp,
//            out = 0 and lse = -inf for a row with no such key (or a bad query_index, which the
//            kernel also reports through record_bad);
//   dual:    both paths from one pass, out = g_local out_local + g_global out_global; rows off
//            the global path (global_rows) get out_global = 0, lse_global = -inf.
// Launch as launch_mma does: tiles = ceil(n / kBM), B * Hq * tiles blocks of kMmaThreads threads,
// mma_smem_bytes<D>() bytes of dynamic shared memory (extract.js checks those host lines).
#include "attn_fwd_kernel.inc"
#include "harness.h"

using namespace dualroute::cuda;  // FwdParams, attn_fwd_mma, kBM, kMmaThreads, mma_smem_bytes, g_attn_bad
using harness::Buf;
using harness::fmt;

namespace {

struct Shape {
  const char* tag;
  int B, Hq, Hkv, Sq, Sk;
  int mask, causal;
  long long window;
  int pad = 0;    // 0 none; 1 a random quarter of the keys; 2 keys [0, 70); 3 every key of batch 0
  int n = 0;      // > 0: query_index of n rows (repeats, out-of-range entries)
  int dual = 0;   // 0 forward; 1 dual, gates per row; 2 dual, gates per head
  int grows = 0;  // dual: global_rows null (0) or random (1)
  int nolse = 0;  // lse pointers null
  double sc = 1;  // scale = sc * 2 / sqrt(D)
};

// The inputs and the reference of one case.
struct Problem {
  Shape s;
  int D, n, G;
  double scale;
  Buf<uint16_t> q, k, v;
  Buf<uint8_t> pad, grows;
  Buf<int32_t> qidx;
  Buf<uint16_t> gates;
  // reference per output row (b, h, r); mix = out for the forward
  std::vector<double> out, lse, out_g, lse_g, mix;
  std::vector<char> empty, empty_g, empty_mix;
  std::vector<long long> bad;  // b * n + r with query_index[b, r] outside [0, Sq)

  Problem(const Shape& sh, int D_, std::mt19937& r)
      : s(sh),
        D(D_),
        n(sh.n ? sh.n : sh.Sq),
        G(sh.Hq / sh.Hkv),
        scale(sh.sc * 2.0 / std::sqrt(static_cast<double>(D_))),
        q("q", size_t(sh.B) * sh.Hq * sh.Sq * D_, 0),
        k("k", size_t(sh.B) * sh.Hkv * sh.Sk * D_, 0),
        v("v", size_t(sh.B) * sh.Hkv * sh.Sk * D_, 0),
        pad("key_padding", sh.pad ? size_t(sh.B) * sh.Sk : 0, 0),
        grows("global_rows", sh.grows ? size_t(sh.B) * sh.Sq : 0, 1),
        qidx("query_index", sh.n ? size_t(sh.B) * sh.n : 0, 0),
        gates("gates", sh.dual == 1 ? size_t(sh.B) * sh.Sq * 2 : sh.dual == 2 ? size_t(sh.B) * sh.Hq * sh.Sq * 2 : 0, 0) {
    harness::random_bf16(q, r, -1.f, 1.f);
    harness::random_bf16(k, r, -1.f, 1.f);
    harness::random_bf16(v, r, -1.f, 1.f);
    harness::random_bf16(gates, r, -1.f, 1.5f);
    for (int b = 0; b < s.B && s.pad; ++b)
      for (int j = 0; j < s.Sk; ++j) {
        uint8_t& p = pad[size_t(b) * s.Sk + j];
        if (s.pad == 1) p = r() % 4 == 0;
        if (s.pad == 2) p = j < 70;
        if (s.pad == 3) p = b == 0 || r() % 5 == 0;
      }
    for (size_t i = 0; i < grows.size(); ++i) grows[i] = r() % 2;
    for (size_t i = 0; i < qidx.size(); ++i) {
      qidx[i] = static_cast<int32_t>(r() % (s.Sq + 6)) - 3;  // repeats, and -3..-1, Sq..Sq+2
      if (qidx[i] < 0 || qidx[i] >= s.Sq) bad.push_back(static_cast<long long>(i));
    }
    reference();
  }

  // One path of one row: o[D] and the lse, or -inf (o = 0) when no key is visible.
  double attend(int b, int h, int qi, int mask, int causal, long long window, double* o) const {
    const int hk = h / G;
    const long long p = static_cast<long long>(qi) + s.Sk - s.Sq;
    std::vector<double> sc;
    std::vector<int> js;
    double m = -INFINITY;
    for (int j = 0; j < s.Sk; ++j) {
      if (!visible_key(b, mask, causal, window, p, j)) continue;
      double d = 0;
      for (int x = 0; x < D; ++x)
        d += double(bf2f(q[((size_t(b) * s.Hq + h) * s.Sq + qi) * D + x])) *
             bf2f(k[((size_t(b) * s.Hkv + hk) * s.Sk + j) * D + x]);
      sc.push_back(scale * d);
      js.push_back(j);
      m = std::max(m, scale * d);
    }
    for (int x = 0; x < D; ++x) o[x] = 0;
    if (js.empty()) return -INFINITY;
    double l = 0;
    for (double x : sc) l += std::exp(x - m);
    for (size_t i = 0; i < js.size(); ++i) {
      const double w = std::exp(sc[i] - m) / l;
      for (int x = 0; x < D; ++x) o[x] += w * bf2f(v[((size_t(b) * s.Hkv + hk) * s.Sk + js[i]) * D + x]);
    }
    return m + std::log(l);
  }
  bool visible_key(int b, int mask, int causal, long long window, long long p, int j) const {
    if (s.pad && pad[size_t(b) * s.Sk + j]) return false;
    return harness::visible(mask, causal, window, p, j);
  }

  void reference() {
    const size_t rows = size_t(s.B) * s.Hq * n;
    out.assign(rows * D, 0);
    out_g.assign(rows * D, 0);
    mix.assign(rows * D, 0);
    lse.assign(rows, -INFINITY);
    lse_g.assign(rows, -INFINITY);
    empty.assign(rows, 1);
    empty_g.assign(rows, 1);
    empty_mix.assign(rows, 1);
    for (int b = 0; b < s.B; ++b)
      for (int h = 0; h < s.Hq; ++h)
        for (int rr = 0; rr < n; ++rr) {
          const size_t row = (size_t(b) * s.Hq + h) * n + rr;
          const int qi = s.n ? qidx[size_t(b) * n + rr] : rr;
          if (qi < 0 || qi >= s.Sq) continue;
          lse[row] = attend(b, h, qi, s.mask, s.causal, s.window, &out[row * D]);
          empty[row] = std::isinf(lse[row]);
          if (!s.dual) {
            std::copy(&out[row * D], &out[row * D] + D, &mix[row * D]);
            empty_mix[row] = empty[row];
            continue;
          }
          if (!s.grows || grows[size_t(b) * s.Sq + qi]) {
            lse_g[row] = attend(b, h, qi, 0, s.causal, 1, &out_g[row * D]);
            empty_g[row] = std::isinf(lse_g[row]);
          }
          const size_t gi = 2 * (s.dual == 2 ? row : size_t(b) * s.Sq + rr);
          const double g0 = bf2f(gates[gi]), g1 = bf2f(gates[gi + 1]);
          for (int x = 0; x < D; ++x) mix[row * D + x] = g0 * out[row * D + x] + g1 * out_g[row * D + x];
          empty_mix[row] = empty[row] && empty_g[row];
        }
  }
};

template <int D, bool DUAL>
void launch(const FwdParams& P, const emu::LaunchCfg& cfg) {
  emu::launch(cfg, [&] { attn_fwd_mma<D, DUAL>(P); });
}

std::string run_case(const Shape& s, int D, const harness::Mode& mode, uint32_t seed) {
  emu::clear_globals();
  std::mt19937 r(seed);
  Problem pr(s, D, r);
  const size_t rows = size_t(s.B) * s.Hq * pr.n;
  const uint16_t kNaN = 0x7fa1;  // unwritten outputs read as NaN
  Buf<uint16_t> out("out", rows * D, kNaN), out_l("out_local", s.dual ? rows * D : 0, kNaN),
      out_g("out_global", s.dual ? rows * D : 0, kNaN);
  Buf<float> lse("lse", rows, NAN), lse_g("lse_global", s.dual ? rows : 0, NAN);

  // As attention_forward / dual_attention_forward and common_params fill them.
  FwdParams P{};
  P.q = pr.q.data();
  P.k = pr.k.data();
  P.v = pr.v.data();
  if (s.dual) {
    P.out = out_l.data();
    P.lse = s.nolse ? nullptr : lse.data();
    P.out_mix = out.data();
    P.out_g = out_g.data();
    P.lse_g = s.nolse ? nullptr : lse_g.data();
    P.gates = pr.gates.data();
    P.gates_per_head = s.dual == 2;
    P.global_rows = s.grows ? pr.grows.data() : nullptr;
  } else {
    P.out = out.data();
    P.lse = s.nolse ? nullptr : lse.data();
  }
  P.Hq = s.Hq;
  P.Hkv = s.Hkv;
  P.G = pr.G;
  P.Sq = s.Sq;
  P.Sk = s.Sk;
  P.n = pr.n;
  P.D = D;
  P.causal = s.causal;
  P.mask = s.mask;
  P.window = s.mask == 0 ? 1 : s.window;
  P.scale2 = static_cast<float>(pr.scale * kLog2e);
  P.pad = s.pad ? pr.pad.data() : nullptr;
  P.qidx = s.n ? pr.qidx.data() : nullptr;
  // launch_mma
  P.tiles = (P.n + kBM - 1) / kBM;
  emu::LaunchCfg cfg;
  cfg.kernel = s.dual ? "attn_fwd_mma<DUAL>" : "attn_fwd_mma";
  cfg.grid = static_cast<unsigned>(size_t(s.B) * s.Hq * P.tiles);
  cfg.block = kMmaThreads;
  cfg.dyn_smem = D == 32 ? mma_smem_bytes<32>() : D == 64 ? mma_smem_bytes<64>() : mma_smem_bytes<128>();
  cfg.sched = mode.sched;
  cfg.cp = mode.cp;
  cfg.seed = seed * 31 + static_cast<uint32_t>(mode.sched) * 7 + static_cast<uint32_t>(mode.cp);
  g_attn_bad = ~0ull;
  emu::g_bad.clear();
  if (D == 32) (s.dual ? launch<32, true> : launch<32, false>)(P, cfg);
  if (D == 64) (s.dual ? launch<64, true> : launch<64, false>)(P, cfg);
  if (D == 128) (s.dual ? launch<128, true> : launch<128, false>)(P, cfg);

  for (const std::string& g : {out.guards(), out_l.guards(), out_g.guards(), lse.guards(), lse_g.guards()})
    if (!g.empty()) return g;
  const double tol = 2e-2, ltol = 1e-4;
  auto bf = [](const Buf<uint16_t>& b) { return [&b](size_t i) { return bf2f(b[i]); }; };
  std::string e;
  if (s.dual) {
    e = harness::compare("out_local", rows, D, bf(out_l), pr.out, pr.empty, tol);
    if (e.empty()) e = harness::compare("out_global", rows, D, bf(out_g), pr.out_g, pr.empty_g, tol);
    if (e.empty()) e = harness::compare("out", rows, D, bf(out), pr.mix, pr.empty_mix, tol);
    if (e.empty() && !s.nolse) e = harness::compare_lse("lse_local", lse.data(), pr.lse, ltol);
    if (e.empty() && !s.nolse) e = harness::compare_lse("lse_global", lse_g.data(), pr.lse_g, ltol);
  } else {
    e = harness::compare("out", rows, D, bf(out), pr.out, pr.empty, tol);
    if (e.empty() && !s.nolse) e = harness::compare_lse("lse", lse.data(), pr.lse, ltol);
  }
  if (!e.empty()) return e;
  if (s.nolse)
    for (size_t i = 0; i < rows; ++i)
      if (!std::isnan(lse[i])) return fmt("lse is null but lse[%zu] was written", i);

  // record_bad: called for exactly the out-of-range query_index positions; the slot keeps the smallest.
  std::vector<long long> got = emu::g_bad;
  std::sort(got.begin(), got.end());
  got.erase(std::unique(got.begin(), got.end()), got.end());
  if (got != pr.bad)
    return fmt("record_bad: %zu positions recorded (first %lld), %zu bad query_index entries (first %lld)", got.size(),
               got.empty() ? -1LL : got[0], pr.bad.size(), pr.bad.empty() ? -1LL : pr.bad[0]);
  const unsigned long long want = pr.bad.empty() ? ~0ull : static_cast<unsigned long long>(pr.bad[0]);
  if (g_attn_bad != want) return fmt("bad-index slot holds %llu, want %llu", g_attn_bad, want);
  return "";
}

// clang-format off
const Shape kShapes[] = {
  // tag                       B Hq Hkv  Sq   Sk mask causal window pad    n dual grows nolse  sc
  {"global-causal-g2",         1, 2, 1, 150, 151, 0, 1,  1,  0,   0, 0, 0, 0},  // block 0's last key: 64
  {"global-pad-sq<sk",         2, 2, 2, 100, 129, 0, 0,  1,  1,   0, 0, 0, 0},  // last key 128: a tile of one
  {"global-causal-sq>sk",      1, 4, 2, 200,  90, 0, 1,  1,  0,   0, 0, 0, 0},  // p < 0: rows see no key
  {"sliding-causal-pad",       1, 1, 1, 260, 260, 1, 1, 37,  1,   0, 0, 0, 0},
  {"sliding-g2",               1, 2, 1, 190, 200, 1, 0, 50,  0,   0, 0, 0, 0},
  {"block",                    1, 2, 2, 170, 170, 2, 0, 48,  0,   0, 0, 0, 0},
  {"block-causal-pad",         1, 1, 1, 210, 180, 2, 1, 70,  1,   0, 0, 0, 0},
  {"block-sq>sk",              1, 2, 1, 300, 200, 2, 0, 64,  0,   0, 0, 0, 0},  // p < 0: truncating division
  {"sliding-narrow-pad",       1, 1, 1, 400, 400, 1, 0, 20,  1,   0, 0, 0, 0},
  {"qidx-causal-g2",           2, 2, 1, 120, 140, 0, 1,  1,  0, 150, 0, 0, 0},
  {"qidx-sliding",             1, 2, 2,  90, 200, 1, 1, 40,  0,  70, 0, 0, 0},
  {"qidx-g4-repeats-nolse",    1, 4, 1,  64,  64, 0, 0,  1,  0, 200, 0, 0, 1},
  {"padded-prefix-causal",     1, 1, 1, 130, 150, 0, 1,  1,  2,   0, 0, 0, 0},   // rows that see only padding
  {"padded-batch",             2, 2, 1,  70,  90, 0, 0,  1,  3,   0, 0, 0, 0},  // batch 0: every key padded
  {"decode",                   1, 2, 1,   5, 300, 0, 1,  1,  0,   0, 0, 0, 0},
  {"dual-sliding-causal-g2",   2, 2, 1, 200, 200, 1, 1, 40,  0,   0, 1, 0, 0},
  {"dual-block-headgates-pad", 1, 2, 2, 150, 170, 2, 0, 48,  1,   0, 2, 1, 0},
  {"dual-sliding-sq>sk",       1, 1, 1, 230, 180, 1, 0, 30,  0,   0, 1, 1, 0},
  {"dual-block-causal-prefix", 1, 2, 1, 140, 160, 2, 1, 64,  2,   0, 2, 1, 0},
  {"dual-narrow-long-nolse",   1, 1, 1, 130, 520, 1, 1,  8,  0,   0, 1, 0, 1},  // most tiles: global path only
  {"dual-padded-batch-g4",     2, 4, 1,  70, 100, 1, 0, 16,  3,   0, 2, 1, 0},
  {"sliding-w2-tile-edges",    1, 1, 1, 260, 260, 1, 0,  2,  0,   0, 0, 0, 0},  // block keys [64t - 1, 64t + 64]
  {"dual-w2-tile-edges",       1, 2, 1, 200, 257, 1, 0,  2,  1,   0, 1, 1, 0},
  {"exact-tiles",              1, 2, 2, 128, 128, 1, 1, 64,  0,   0, 0, 0, 0},
  {"sliding-window1",          1, 1, 1, 100, 100, 1, 1,  1,  0,   0, 0, 0, 0},  // each row sees its own key
  {"block-window1-sq<sk",      1, 1, 1,  80, 100, 2, 0,  1,  0,   0, 0, 0, 0},
  {"sliding-window-2^40",      1, 2, 1,  70, 150, 1, 0, 1LL << 40, 1, 0, 0, 0, 0},  // the host's clamp
  {"tiny",                     3, 2, 1,   1,   1, 0, 1,  1,  0,   0, 0, 0, 0},
  {"peaky-scores",             1, 2, 1, 150, 200, 0, 1,  1,  1,   0, 0, 0, 0, 8},
  {"long-decode",              1, 1, 1,   3, 1100, 1, 1, 700, 0,  0, 0, 0, 0},
  {"qidx-one-row",             2, 2, 2,  50,  60, 2, 1, 16,  0,   1, 0, 0, 0},
  {"dual-peaky-exact",         1, 2, 1, 128, 192, 2, 1, 64,  0,   0, 2, 0, 0, 8},
  {"dual-window1-tiny",        2, 1, 1,   3,   5, 1, 1,  1,  1,   0, 1, 1, 0},
  {"dual-window-2^40",         1, 1, 1,  90,  90, 1, 0, 1LL << 40, 0, 0, 1, 1, 0},
};
// clang-format on

std::vector<harness::Case> cases() {
  std::vector<harness::Case> out;
  const int Ds[] = {32, 64, 128};
  int si = 0;
  for (const Shape& s : kShapes) {
    for (int di = 0; di < 3; ++di) {
      const int D = Ds[di];
      const uint32_t seed = 1000u + 17u * static_cast<uint32_t>(si) + static_cast<uint32_t>(D);
      const int n = s.n ? s.n : s.Sq;
      const double cost = double(s.B) * s.Hq * ((n + 63) / 64) * ((s.Sk + 63) / 64) * (D + 32) * (s.dual ? 2 : 1);
      for (int mi = 0; mi < 3; ++mi) {
        const harness::Mode m = harness::kModes[mi];
        // --quick: one mode per (shape, D), rotating
        out.push_back({fmt("fwd/d%d/%s/%s", D, s.tag, harness::mode_name(m).c_str()),
                       mi == (si + di) % 3, cost, [s, D, m, seed] { return run_case(s, D, m, seed); }});
      }
    }
    ++si;
  }
  return out;
}

}  // namespace

int main(int argc, char** argv) { return harness::main(argc, argv, cases()); }
