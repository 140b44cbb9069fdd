// The SIMT attention kernels of native/cuda/attention.cu, float32 and bf16, run block by block in
// the emulator against float64 references from the contract (native/core/attention.h):
//   fwd:   attn_fwd_warp<T, DPL, false>  out, lse (as attn_fwd_test.cpp)
//   dual:  attn_fwd_warp<T, DPL, true>   out_local, out_global, out (gated mix), lse_local, lse_global
//   split: attn_fwd_split<T, DPL> + attn_split_merge<T> with S chunks per row (flash-decoding)
//   bwd:   attn_bwd_warp<T, DPL>         dq, dk, dv added into accumulators started at 0.25
//   rope:  rope_kernel<T>                rotate-half with [S] or [B, S] positions, inverse
// Launches mirror launch_warp_d / launch_split_t / launch_bwd_t / rope (extract.js checks those
// host lines); DPL is chosen from D as there.
#include "attn_fwd_kernel.inc"
#include "attn_simt_kernel.inc"
#include "harness.h"
#include "reference.h"

using namespace dualroute::cuda;
using harness::Buf;
using harness::fmt;

namespace {

// Storage of a T tensor: float, or bf16 bits.
template <class T> struct Store { using type = float; };
template <> struct Store<bf16_t> { using type = uint16_t; };
using harness::enc;
using harness::fill;
using harness::val;

// DPL of launch_warp_d / launch_split / launch_bwd.
int dpl_for(int D) { return D <= 32 ? 1 : D <= 64 ? 2 : D <= 128 ? 4 : D <= 256 ? 8 : 16; }

constexpr int kThreads = 256;  // device.cuh's (host part, not extracted; extract.js checks the value)

// Calls f.template operator()<DPL>() with DPL = dpl_for(D).
template <class F>
void with_dpl(int D, F&& f) {
  switch (dpl_for(D)) {
    case 1: f.template operator()<1>(); break;
    case 2: f.template operator()<2>(); break;
    case 4: f.template operator()<4>(); break;
    case 8: f.template operator()<8>(); break;
    default: f.template operator()<16>(); break;
  }
}

enum Kind { Fwd, Dual, Split, Bwd };
const char* kind_name(Kind k) { return k == Fwd ? "fwd" : k == Dual ? "dual" : k == Split ? "split" : "bwd"; }

struct Shape {
  const char* tag;
  int B, Hq, Hkv, Sq, Sk;
  int mask, causal;
  long long window;
  int pad = 0;    // 0 none; 1 a random quarter of the keys; 2 keys [0, 70); 3 every key of batch 0
  int n = 0;      // > 0: query_index of n rows (repeats, out-of-range entries)
  int dual = 0;   // dual: 1 gates per row, 2 gates per head
  int grows = 0;  // dual: random global_rows
  int nolse = 0;  // forward: lse pointers null
  int S = 0;      // split: chunks per row
  double sc = 1;  // scale = sc * 2 / sqrt(D)
  int poison = 0; // non-finite inputs (reference.h, Problem::poison)
  int ragged = 0; // with n: query_count per batch row (reference.h)
};

// Inputs and float64 forward reference of one attention case, T-stored.
template <class T>
using Problem = harness::Problem<Shape, typename Store<T>::type>;

emu::LaunchCfg cfg_of(const char* name, long long grid, int block, size_t smem, const harness::Mode& m, uint32_t seed) {
  emu::LaunchCfg c;
  c.kernel = name;
  c.grid = static_cast<unsigned>(grid);
  c.block = static_cast<unsigned>(block);
  c.dyn_smem = smem;
  c.sched = m.sched;
  c.cp = m.cp;
  c.seed = seed * 31 + static_cast<uint32_t>(m.sched) * 7 + static_cast<uint32_t>(m.cp);
  return c;
}

template <class T>
std::string run_fwd(const Shape& s, Kind kind, int D, const harness::Mode& mode, uint32_t seed) {
  using St = typename Store<T>::type;
  const bool bf = std::is_same_v<T, bf16_t>;
  emu::clear_globals();
  std::mt19937 r(seed);
  Problem<T> pr(s, D, r);
  const size_t rows = size_t(s.B) * s.Hq * pr.n;
  const bool dual = kind == Dual;
  const St kNaN = bf ? St(harness::kUnwrittenBf16) : St(harness::unwritten_float());
  Buf<St> out("out", rows * D, kNaN), out_l("out_local", dual ? rows * D : 0, kNaN), out_g("out_global", dual ? rows * D : 0, kNaN);
  Buf<float> lse("lse", rows, harness::unwritten_float()), lse_g("lse_global", dual ? rows : 0, harness::unwritten_float());
  const int S = kind == Split ? s.S : 1;
  Buf<float> part("split_scratch", kind == Split ? rows * S * (2 + D) : 0, NAN);
  FwdParams P{};
  pr.common(P);
  harness::set_fwd_outputs(P, pr, dual, out, out_l, out_g, lse, lse_g);
  P.scale2 = static_cast<float>(pr.scale * kLog2e);
  g_attn_bad = ~0ull;
  emu::g_bad.clear();
  const long long BH = static_cast<long long>(s.B) * s.Hq;
  if (kind == Split) {  // launch_split_t
    const long long nrows = BH * P.n, blocks = nrows * S;
    const emu::LaunchCfg c1 = cfg_of("attn_fwd_split", blocks, kSplitWarps * 32, 0, mode, seed);
    const emu::LaunchCfg c2 = cfg_of("attn_split_merge", (nrows + kWarpRows - 1) / kWarpRows, kWarpRows * 32, 0, mode, seed + 1);
    float* pp = part.data();
    with_dpl(D, [&]<int DPL>() { emu::launch(c1, [&] { attn_fwd_split<T, DPL>(P, pp, S); }); });
    emu::launch(c2, [&] { attn_split_merge<T>(P, pp, S, nrows); });
  } else {  // launch_warp
    P.tiles = (P.n + kWarpRows - 1) / kWarpRows;
    const emu::LaunchCfg c = cfg_of(dual ? "attn_fwd_warp<DUAL>" : "attn_fwd_warp", BH * P.tiles, kWarpRows * 32, 0, mode, seed);
    with_dpl(D, [&]<int DPL>() {
      if (dual)
        emu::launch(c, [&] { attn_fwd_warp<T, DPL, true>(P); });
      else
        emu::launch(c, [&] { attn_fwd_warp<T, DPL, false>(P); });
    });
  }
  for (const std::string& g : {out.guards(), out_l.guards(), out_g.guards(), lse.guards(), lse_g.guards(), part.guards()})
    if (!g.empty()) return g;
  const double tol = bf ? 1e-2 : 1e-5, ltol = 1e-5;
  auto get = [](const Buf<St>& b) { return [&b](size_t i) { return static_cast<float>(val(b[i])); }; };
  return harness::check_fwd(pr, dual, s.nolse, rows, D, get(out), get(out_l), get(out_g), lse.data(), lse_g.data(), tol,
                            ltol, g_attn_bad);
}

template <class T>
std::string run_bwd(const Shape& s, int D, const harness::Mode& mode, uint32_t seed) {
  using St = typename Store<T>::type;
  emu::clear_globals();
  std::mt19937 r(seed);
  Problem<T> pr(s, D, r);
  const int n = pr.n, G = pr.G;
  const size_t rows = size_t(s.B) * s.Hq * n;
  Buf<St> out("out", rows * D, 0), dout("dout", rows * D, 0);
  Buf<float> lse("lse", rows, 0);
  fill(dout, r, -1.f, 1.f);
  for (size_t i = 0; i < rows; ++i) {
    lse[i] = static_cast<float>(pr.lse[i]);
    for (int x = 0; x < D; ++x) out[i * D + x] = enc<St>(static_cast<float>(pr.out[i * D + x]));
  }
  auto dot = [&](const Buf<St>& x, size_t xo, const Buf<St>& y, size_t yo) { return pr.dot(x, xo, y, yo); };
  std::vector<double> rdq(pr.q.size(), 0), rdk(pr.k.size(), 0), rdv(pr.v.size(), 0);
  std::vector<char> tq(pr.q.size() / D, 0), tkv(pr.k.size() / D, 0);
  double mag[3] = {0, 0, 0};
  for (int b = 0; b < s.B; ++b)
    for (int h = 0; h < s.Hq; ++h)
      for (int rr = 0; rr < n; ++rr) {
        const size_t orow = (size_t(b) * s.Hq + h) * n + rr;
        const int qi = pr.query(b, rr);
        if (qi < 0 || qi >= s.Sq || lse[orow] == -INFINITY) continue;
        const double dr = dot(dout, orow * D, out, orow * D);
        const long long p = static_cast<long long>(qi) + s.Sk - s.Sq;
        for (int j = 0; j < s.Sk; ++j) {
          if (!pr.vis(b, s.mask, s.causal, s.window, p, j)) continue;
          const size_t qo = pr.qrow(b, h, qi), ko = pr.krow(b, h, j);
          tq[qo / D] = tkv[ko / D] = 1;
          const double pj = std::exp(pr.scale * dot(pr.q, qo, pr.k, ko) - lse[orow]);
          const double dp = dot(dout, orow * D, pr.v, ko), ds = pj * (dp - dr);
          mag[0] = mag[1] = std::max(mag[0], pr.scale * pj * (std::fabs(dp) + std::fabs(dr)));
          mag[2] = std::max(mag[2], pj);
          for (int x = 0; x < D; ++x) {
            rdv[ko + x] += pj * val(dout[orow * D + x]);
            rdk[ko + x] += pr.scale * ds * val(pr.q[qo + x]);
            rdq[qo + x] += pr.scale * ds * val(pr.k[ko + x]);
          }
        }
      }
  (void)G;
  const float base = 0.25f;
  Buf<float> dq("dq", pr.q.size(), base), dk("dk", pr.k.size(), base), dv("dv", pr.v.size(), base);
  BwdParams P{};
  pr.common(P);
  P.out = out.data();
  P.dout = dout.data();
  P.lse = lse.data();
  P.dq = dq.data();
  P.dk = dk.data();
  P.dv = dv.data();
  P.scale = static_cast<float>(pr.scale);
  // launch_bwd_t
  P.KT = P.D <= 256 ? 32 : 16;
  P.tiles = (P.Sk + P.KT - 1) / P.KT;
  const size_t smem = size_t(4) * P.KT * P.D * sizeof(float) + P.KT;
  const emu::LaunchCfg c = cfg_of("attn_bwd_warp", static_cast<long long>(s.B) * s.Hkv * P.tiles, kBwdThreads, smem, mode, seed);
  with_dpl(D, [&]<int DPL>() { emu::launch(c, [&] { attn_bwd_warp<T, DPL>(P); }); });
  for (const std::string& g : {dq.guards(), dk.guards(), dv.guards()})
    if (!g.empty()) return g;
  const double tol = 1e-3;
  return harness::check_grads(dq.data(), dk.data(), dv.data(), base, rdq, rdk, rdv, tq, tkv, D, tol, mag);
}

struct RopeShape {
  const char* tag;
  int B, H, S, D;
  int pos2d, inverse;
  double base;
  int cap;  // grid cap (grid_for's multiprocessor_count() * 32), 0: none
};

template <class T>
std::string run_rope(const RopeShape& s, const harness::Mode& mode, uint32_t seed) {
  using St = typename Store<T>::type;
  const bool bf = std::is_same_v<T, bf16_t>;
  emu::clear_globals();
  std::mt19937 r(seed);
  const long long rows = 1LL * s.B * s.H * s.S, total = rows * (s.D / 2);
  Buf<St> x("x", size_t(rows) * s.D, 0), out("out", size_t(rows) * s.D, bf ? St(0x7fa1) : St(NAN));
  Buf<int32_t> pos("positions", s.pos2d ? size_t(s.B) * s.S : size_t(s.S), 0);
  fill(x, r, -1.f, 1.f);
  for (size_t i = 0; i < pos.size(); ++i) pos[i] = static_cast<int32_t>(r() % 100000) - 3000;
  long long blocks = (total + kThreads - 1) / kThreads;  // grid_for
  if (s.cap) blocks = std::min<long long>(blocks, s.cap);
  const emu::LaunchCfg c = cfg_of("rope_kernel", std::max(1LL, blocks), kThreads, 0, mode, seed);
  T* o = reinterpret_cast<T*>(out.data());
  const T* xi = reinterpret_cast<const T*>(x.data());
  emu::launch(c, [&] { rope_kernel<T>(o, xi, pos.data(), rows, s.H, s.S, s.D, s.pos2d, s.base, s.inverse); });
  if (std::string g = out.guards(); !g.empty()) return g;
  const int half = s.D / 2;
  for (long long row = 0; row < rows; ++row) {
    const long long b = row / (1LL * s.S * s.H), sq = row % s.S;
    const long double p = pos[s.pos2d ? b * s.S + sq : sq];
    for (int i = 0; i < half; ++i) {
      long double th = p * std::exp(-2.0L * i / s.D * std::log(static_cast<long double>(s.base)));
      if (s.inverse) th = -th;
      const long double x0 = val(x[row * s.D + i]), x1 = val(x[row * s.D + i + half]);
      const long double want[2] = {x0 * std::cos(th) - x1 * std::sin(th), x1 * std::cos(th) + x0 * std::sin(th)};
      for (int w = 0; w < 2; ++w) {
        const size_t at = row * s.D + i + w * half;
        const double g = val(out[at]);
        const double err = std::fabs(g - double(want[w]));
        if (!(err <= (bf ? std::ldexp(std::fabs(double(want[w])), -8) : 1e-6)))
          return fmt("out: row %lld col %zu got %.9g want %.9g", row, size_t(i + w * half), g, double(want[w]));
      }
    }
  }
  return "";
}

// clang-format off
// Forward (warp kernel) and backward shapes.
const Shape kShapes[] = {
  // tag                     B Hq Hkv  Sq  Sk mask causal window pad  n  dual grows nolse
  {"global-causal-g2",       1, 2, 1,  37,  41, 0, 1,  1, 0,   0},
  {"global-pad-sq<sk",       2, 2, 2,  19,  33, 0, 0,  1, 1,   0},
  {"global-causal-sq>sk",    1, 4, 2,  30,  13, 0, 1,  1, 0,   0},  // p < 0: rows see no key
  {"sliding-causal-pad",     1, 1, 1,  45,  45, 1, 1,  7, 1,   0},
  {"sliding-g2",             1, 2, 1,  29,  35, 1, 0,  6, 0,   0},
  {"block-causal-pad",       1, 1, 1,  40,  34, 2, 1,  9, 1,   0},
  {"block-sq>sk",            1, 2, 1,  41,  30, 2, 0,  8, 0,   0},  // p < 0: truncating division
  {"qidx-causal-g2",         2, 2, 1,  25,  27, 0, 1,  1, 1,  31},
  {"qidx-sliding-nolse",     1, 2, 2,  18,  40, 1, 1,  5, 0,  23, 0, 0, 1},
  {"qidx-g4-repeats",        1, 4, 1,  11,  13, 0, 0,  1, 0,  37},
  {"padded-batch",           2, 2, 1,  13,  17, 0, 0,  1, 3,   0},  // batch 0: every key padded
  {"padded-prefix-causal",   1, 1, 1,  20,  75, 0, 1,  1, 2,   0},
  {"window-2^40",            1, 2, 1,  15,  22, 1, 0, 1LL << 40, 1, 0},
  {"window1-odd",            3, 1, 1,   7,   9, 1, 1,  1, 0,   0},
  {"tiny",                   3, 2, 1,   1,   1, 0, 1,  1, 0,   0},
  // non-finite inputs: NaN and infinities reach exactly the rows that see them
  {"nan-v-tail-causal",      1, 2, 1,  37,  41, 0, 1,  1, 0,   0, 0, 0, 0, 0, 1, 1},
  {"nan-qk-sliding-pad",     1, 2, 1,  45,  45, 1, 1,  7, 1,   0, 0, 0, 0, 0, 1, 2},
  {"inf-qk-block",           1, 1, 1,  40,  40, 2, 1,  9, 0,   0, 0, 0, 0, 0, 1, 3},
  {"inf-nan-v-qidx",         1, 2, 2,  25,  27, 0, 1,  1, 0,  31, 0, 0, 0, 0, 1, 4},
  {"ragged-qidx-causal",     3, 2, 1,  25,  27, 0, 1,  1, 1,  31, 0, 0, 0, 0, 1, 0, 1},
  {"ragged-qidx-sliding",    3, 2, 2,  18,  40, 1, 1,  5, 0,  23, 0, 0, 0, 0, 1, 0, 1},
};
const Shape kDualShapes[] = {
  {"dual-sliding-causal-g2", 2, 2, 1,  30,  30, 1, 1,  6, 0,   0, 1, 0, 0},
  {"dual-block-headgates-pad",1, 2, 2, 23,  27, 2, 0,  8, 1,   0, 2, 1, 0},
  {"dual-sliding-sq>sk",     1, 1, 1,  35,  24, 1, 0,  5, 0,   0, 1, 1, 0},
  {"dual-block-causal-nolse",1, 2, 1,  21,  80, 2, 1, 16, 2,   0, 2, 1, 1},
  {"dual-padded-batch-g4",   2, 4, 1,  10,  15, 1, 0,  3, 3,   0, 2, 1, 0},
  {"dual-nan-v-tail",        1, 2, 1,  30,  30, 1, 1,  6, 0,   0, 1, 0, 0, 0, 1, 1},
  {"dual-inf-qk-headgates",  1, 2, 2,  23,  27, 2, 0,  8, 1,   0, 2, 1, 0, 0, 1, 3},
};
// Flash-decoding: n <= 16 rows, spans of >= 1024 keys (chunks of >= 256: S <= span / 256).
const Shape kSplitShapes[] = {
  {"split-decode-causal",    1, 2, 1,   3, 1100, 0, 1,   1, 0,  0, 0, 0, 0, 4},
  {"split-global-pad-g2",    1, 4, 2,   2, 1037, 0, 0,   1, 1,  0, 0, 0, 0, 3},
  {"split-sliding-nolse",    1, 1, 1,   5, 1300, 1, 1, 1024, 0, 0, 0, 0, 1, 4},
  {"split-qidx-repeats",     2, 1, 1,   9, 1030, 0, 1,   1, 2, 12, 0, 0, 0, 2},  // padded prefix, bad indices
  {"split-block-empty-chunks",1, 1, 1, 16, 1500, 2, 1, 1100, 0, 0, 0, 0, 0, 5},  // short rows: empty chunks
  {"split-padded-batch",     2, 1, 1,   2, 1024, 0, 0,   1, 3,  0, 0, 0, 0, 4},
  {"split-nan-v-tail-sliding",1, 1, 1,  3, 1100, 1, 1, 1024, 0, 0, 0, 0, 0, 4, 1, 1},  // the last rows see them
  {"split-nan-qk",           1, 2, 1,   4, 1100, 0, 1,   1, 0,  0, 0, 0, 0, 3, 1, 2},
  {"split-inf-qk",           1, 1, 1,   3, 1100, 0, 0,   1, 0,  0, 0, 0, 0, 4, 1, 3},
  {"split-ragged-qidx",      3, 1, 1,   9, 1030, 0, 1,   1, 2, 12, 0, 0, 0, 2, 1, 0, 1},
};
const RopeShape kRope[] = {
  // tag             B  H   S   D  2d inv base     cap
  {"rope-1d",        2, 3, 17, 24, 0, 0, 10000.0, 0},
  {"rope-2d-inv",    2, 2, 13, 38, 1, 1, 10000.0, 0},
  {"rope-2d-stride", 3, 2, 29, 64, 1, 0, 500000.0, 3},  // grid-stride loop: 3 blocks
  {"rope-d2-inv",    1, 1, 40,  2, 0, 1, 10.0, 1},
};
// clang-format on

const int kDims[] = {24, 37, 64, 96, 160};

std::vector<harness::Case> cases() {
  std::vector<harness::Case> out;
  int si = 0;
  // (kind, shape) x two head dims x two dtypes x three modes; --quick: one mode per combination.
  auto add = [&](Kind kind, const Shape& s, std::vector<int> dims) {
    int ci = 0;
    for (int D : dims)
      for (int bf = 0; bf < 2; ++bf, ++ci) {
        const uint32_t seed = 7000u + 131u * static_cast<uint32_t>(si) + static_cast<uint32_t>(D) + bf;
        const int n = s.n ? s.n : s.Sq;
        const double cost = double(s.B) * s.Hq * n * s.Sk * (D / 32 + 2) * (kind == Bwd ? 0.05 : 0.02);
        for (int mi = 0; mi < 3; ++mi) {
          const harness::Mode m = harness::kModes[mi];
          const std::string name = fmt("simt-%s/%s/d%d/%s/%s", kind_name(kind), bf ? "bf16" : "f32", D, s.tag, harness::mode_name(m).c_str());
          std::function<std::string()> run;
          if (kind == Bwd)
            run = bf ? std::function<std::string()>([s, D, m, seed] { return run_bwd<bf16_t>(s, D, m, seed); })
                     : [s, D, m, seed] { return run_bwd<float>(s, D, m, seed); };
          else
            run = bf ? std::function<std::string()>([s, kind, D, m, seed] { return run_fwd<bf16_t>(s, kind, D, m, seed); })
                     : [s, kind, D, m, seed] { return run_fwd<float>(s, kind, D, m, seed); };
          out.push_back({name, mi == (si + ci) % 3, cost, run});
        }
      }
    ++si;
  };
  for (const Shape& s : kShapes) add(Fwd, s, {kDims[si % 5], kDims[(si + 2) % 5]});
  for (const Shape& s : kDualShapes) add(Dual, s, {kDims[si % 5], kDims[(si + 3) % 5]});
  for (const Shape& s : kSplitShapes) add(Split, s, {kDims[si % 5]});
  for (const Shape& s : kShapes) add(Bwd, s, {kDims[si % 5], kDims[(si + 1) % 5]});
  // The largest DPL (16) and KT = 16 (D > 256) once each.
  add(Fwd, kShapes[1], {300});
  add(Dual, kDualShapes[1], {300});
  add(Split, kSplitShapes[1], {300});
  add(Bwd, kShapes[3], {264});
  // rope: no collectives or shared memory, one mode.
  for (const RopeShape& s : kRope)
    for (int bf = 0; bf < 2; ++bf) {
      const uint32_t seed = 9000u + 7u * static_cast<uint32_t>(si++) + bf;
      const harness::Mode m = harness::kModes[0];
      out.push_back({fmt("simt-rope/%s/%s", bf ? "bf16" : "f32", s.tag), true, 1.0,
                     bf ? std::function<std::string()>([s, m, seed] { return run_rope<bf16_t>(s, m, seed); })
                        : [s, m, seed] { return run_rope<float>(s, m, seed); }});
    }
  return out;
}

}  // namespace

int main(int argc, char** argv) { return harness::main(argc, argv, cases()); }
