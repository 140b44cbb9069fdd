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
#include "reference.h"

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
  int poison = 0; // non-finite inputs (reference.h, Problem::poison)
  int ragged = 0; // with n: query_count per batch row (reference.h)
};

// The inputs and the reference of one case (reference.h).
using Problem = harness::Problem<Shape, uint16_t>;

template <int D, bool DUAL>
void launch(const FwdParams& P, const emu::LaunchCfg& cfg) {
  emu::launch(cfg, [&] { attn_fwd_mma<D, DUAL>(P); });
}

std::string run_case(const Shape& s, int D, const harness::Mode& mode, uint32_t seed) {
  emu::clear_globals();
  std::mt19937 r(seed);
  Problem pr(s, D, r);
  const size_t rows = size_t(s.B) * s.Hq * pr.n;
  const uint16_t kNaN = harness::kUnwrittenBf16;  // unwritten outputs hold this NaN
  Buf<uint16_t> out("out", rows * D, kNaN), out_l("out_local", s.dual ? rows * D : 0, kNaN),
      out_g("out_global", s.dual ? rows * D : 0, kNaN);
  Buf<float> lse("lse", rows, harness::unwritten_float()), lse_g("lse_global", s.dual ? rows : 0, harness::unwritten_float());

  // As attention_forward / dual_attention_forward and common_params fill them.
  FwdParams P{};
  P.q = pr.q.data();
  P.k = pr.k.data();
  P.v = pr.v.data();
  harness::set_fwd_outputs(P, pr, s.dual, out, out_l, out_g, lse, lse_g);
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
  P.qcount = s.ragged ? pr.qcount.data() : nullptr;
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
  return harness::check_fwd(pr, s.dual, s.nolse, rows, D, bf(out), bf(out_l), bf(out_g), lse.data(), lse_g.data(), tol,
                            ltol, g_attn_bad);
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
  // non-finite inputs: NaN and infinities reach exactly the rows that see them
  {"nan-v-tail-causal",        1, 2, 1, 150, 150, 0, 1,  1,  0,   0, 0, 0, 0, 1, 1},  // masked tiles: exact path
  {"nan-v-tail-sliding-pad",   1, 1, 1, 200, 200, 1, 1, 16,  1,   0, 0, 0, 0, 1, 1},
  {"nan-v-tail-block",         1, 2, 2, 130, 130, 2, 1, 64,  0,   0, 0, 0, 0, 1, 1},
  {"nan-v-tail-global",        1, 1, 1,  70, 130, 0, 0,  1,  0,   0, 0, 0, 0, 1, 1},  // every row sees them
  {"nan-qk-causal-g2",         1, 2, 1, 150, 151, 0, 1,  1,  0,   0, 0, 0, 0, 1, 2},
  {"inf-qk-sliding",           1, 1, 1, 200, 200, 1, 0, 40,  0,   0, 0, 0, 0, 1, 3},
  {"inf-nan-v-qidx",           1, 2, 1, 100, 130, 0, 1,  1,  1,  90, 0, 0, 0, 1, 4},
  {"dual-nan-v-tail",          1, 2, 1, 200, 200, 1, 1, 16,  0,   0, 1, 0, 0, 1, 1},
  {"dual-nan-qk-headgates",    1, 2, 2, 150, 170, 2, 0, 48,  1,   0, 2, 1, 0, 1, 2},
  {"dual-inf-qk",              1, 1, 1, 130, 130, 1, 1, 20,  0,   0, 1, 1, 0, 1, 3},
  {"dual-inf-nan-v",           1, 2, 1, 140, 160, 2, 1, 64,  0,   0, 2, 0, 0, 1, 4},
  // ragged query rows: batch b keeps qcount[b] rows (half, none, all); padding is never read
  {"ragged-qidx-causal",       3, 2, 1, 120, 140, 0, 1,  1,  0, 150, 0, 0, 0, 1, 0, 1},
  {"ragged-qidx-sliding-pad",  3, 2, 2,  90, 200, 1, 1, 40,  1,  70, 0, 0, 0, 1, 0, 1},
};
// clang-format on

std::vector<harness::Case> cases() {
  std::vector<harness::Case> out;
  harness::add_cases(
      out, kShapes, "fwd", 1000u, 17u,
      [](const Shape& s, int D) {
        const int n = s.n ? s.n : s.Sq;
        return double(s.B) * s.Hq * ((n + 63) / 64) * ((s.Sk + 63) / 64) * (D + 32) * (s.dual ? 2 : 1);
      },
      run_case);
  return out;
}

}  // namespace

int main(int argc, char** argv) { return harness::main(argc, argv, cases()); }
