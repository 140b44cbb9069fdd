// The fused kernels (native/cuda/fused.cu) in the emulator against float64 references written
// from the formulas:
//   add_rms_fwd (warp per row up to 1024 columns, block per row above): h = x + residual rounded
//   to the dtype, rstd, out = h rstd w, rows whose float statistics leave float's range (|x| ~
//   1e20, ~ 1e-25: the double path);
//   add_rms_bw_dx + add_rms_bw_partial + fused_colsum_final: dx = dh + rmsNorm backward, dw;
//   bias_act_fwd, bias_act_bw_partial + fused_colsum_final: act(x + bias), dx, dbias, for gelu,
//   geluTanh, silu, relu.
// float32 and bf16; awkward column counts (1, 3, 17, 33, 1023, 1025, 2050), one row and many; grids
// capped below the rows so the grid-stride loops go round; row chunks of the column sums chosen
// by the test (1 .. 5 per shape). Launch geometry as fused.cu's host code (extract.js checks).
#include <cmath>
#include <random>

#include "fused_kernel.inc"
#include "harness.h"

using namespace dualroute::cuda;
using harness::Buf;
using harness::cfg_of;
using harness::fmt;

namespace {

// Element storage of T in the test's buffers, and the conversions the kernels make.
template <typename T>
struct Io;
template <>
struct Io<float> {
  using S = float;
  static double get(S v) { return v; }
  static S put(double v) { return static_cast<float>(v); }
  static S unwritten() { return harness::unwritten_float(); }
  static constexpr bool bf = false;
};
template <>
struct Io<bf16_t> {
  using S = uint16_t;
  static double get(S v) { return bf2f(v); }
  static S put(double v) { return f2bf(static_cast<float>(v)); }
  static S unwritten() { return harness::kUnwrittenBf16; }
  static constexpr bool bf = true;
};
// What a float add of two stored values gives once stored.
template <typename T>
double add_stored(double a, double b) {
  return Io<T>::get(Io<T>::put(static_cast<double>(static_cast<float>(a) + static_cast<float>(b))));
}

template <typename T>
T* dev(Buf<typename Io<T>::S>& b) {
  return reinterpret_cast<T*>(b.data());
}

long long capped(long long n, int cap) { return cap > 0 && n > cap ? cap : n; }

// ---- add + RMSNorm ---------------------------------------------------------------------------

struct NormShape {
  const char* tag;
  int rows, cols, bf, weight, dh, wide, grid_cap, chunks;
};

template <typename T>
void launch_rows_fwd(T* h, T* o, const T* x, const T* r, const T* w, float eps, float* rstd, long long rows, long long cols,
                     int cap, const harness::Mode& m, uint32_t seed) {
  if (cols <= 1024)
    emu::launch(cfg_of("add_rms_fwd<32>", capped((rows + 7) / 8, cap), 256, m, seed),
                [&] { add_rms_fwd<T, 32>(h, o, x, r, w, eps, rstd, rows, cols); });
  else
    emu::launch(cfg_of("add_rms_fwd<512>", capped(rows, cap), 512, m, seed),
                [&] { add_rms_fwd<T, 512>(h, o, x, r, w, eps, rstd, rows, cols); });
}

template <typename T>
void launch_rows_bw(T* dx, const T* h, const T* dy, const T* dh, const T* w, const float* rstd, long long rows,
                    long long cols, int cap, const harness::Mode& m, uint32_t seed) {
  if (cols <= 1024)
    emu::launch(cfg_of("add_rms_bw_dx<32>", capped((rows + 7) / 8, cap), 256, m, seed),
                [&] { add_rms_bw_dx<T, 32>(dx, h, dy, dh, w, rstd, rows, cols); });
  else
    emu::launch(cfg_of("add_rms_bw_dx<512>", capped(rows, cap), 512, m, seed),
                [&] { add_rms_bw_dx<T, 512>(dx, h, dy, dh, w, rstd, rows, cols); });
}

// The chunking of fused.cu's plan_chunks, with the chunk count asked for by the test.
void chunks_of(long long rows, int want, long long* nchunks, long long* chunk_rows) {
  *nchunks = 0;
  *chunk_rows = 1;
  if (rows <= 0) return;
  const long long n = std::min<long long>(want, rows);
  *chunk_rows = (rows + n - 1) / n;
  *nchunks = (rows + *chunk_rows - 1) / *chunk_rows;
}

template <typename T>
std::string run_norm(const NormShape& s, const harness::Mode& mode, uint32_t seed) {
  using I = Io<T>;
  using S = typename I::S;
  emu::clear_globals();
  std::mt19937 rng(seed);
  std::uniform_real_distribution<double> u(-2.0, 2.0);
  const long long R = s.rows, C = s.cols;
  const size_t n = size_t(R) * C;
  Buf<S> x("x", n, 0), res("residual", n, 0), w("w", s.weight ? size_t(C) : 0, 0);
  Buf<S> h("h", n, I::unwritten()), out("out", n, I::unwritten());
  Buf<float> rstd("rstd", size_t(R), harness::unwritten_float());
  for (size_t e = 0; e < n; ++e) {
    const long long i = static_cast<long long>(e / C);
    double sc = 1;
    if (s.wide && i == 0) sc = 1e20;
    if (s.wide && i == 1) sc = 1e-25;
    x[e] = I::put(u(rng) * sc);
    res[e] = I::put(u(rng) * sc);
  }
  for (long long j = 0; j < (s.weight ? C : 0); ++j) w[j] = I::put(0.5 + double(rng() % 100) * 0.01);
  const float eps = 1e-5f;
  launch_rows_fwd<T>(dev<T>(h), dev<T>(out), dev<T>(x), dev<T>(res), s.weight ? dev<T>(w) : nullptr, eps, rstd.data(), R,
                     C, s.grid_cap, mode, seed);
  for (const std::string& g : {x.guards(), res.guards(), h.guards(), out.guards(), rstd.guards()})
    if (!g.empty()) return g;
  const double tol = I::bf ? 1e-2 : 2e-5;
  std::vector<double> hr(n);
  for (long long i = 0; i < R; ++i) {
    double ss = 0;
    for (long long j = 0; j < C; ++j) {
      const size_t e = size_t(i) * C + j;
      hr[e] = add_stored<T>(I::get(x[e]), I::get(res[e]));
      ss += hr[e] * hr[e];
      const double got = I::get(h[e]);
      if (!(got == hr[e])) return fmt("h[%lld][%lld] = %.9g, want %.9g", i, j, got, hr[e]);
    }
    const double rs = 1 / std::sqrt(ss / C + eps);
    if (!(std::fabs(rstd[i] - rs) <= 1e-5 * rs)) return fmt("rstd[%lld] = %.9g, want %.9g", i, double(rstd[i]), rs);
    for (long long j = 0; j < C; ++j) {
      const size_t e = size_t(i) * C + j;
      const double want = hr[e] * rs * (s.weight ? I::get(w[j]) : 1.0);
      const double got = I::get(out[e]);
      if (!(std::fabs(got - want) <= tol * (1 + std::fabs(want)))) return fmt("out[%lld][%lld] = %.7g, want %.7g", i, j, got, want);
    }
  }

  // backward, on h as stored and the rstd the forward wrote
  Buf<S> dy("dy", n, 0), dh("dh", s.dh ? n : 0, 0), dx("dx", n, I::unwritten()), dw("dw", s.weight ? size_t(C) : 0, I::unwritten());
  for (size_t e = 0; e < n; ++e) {
    dy[e] = I::put(u(rng));
    if (s.dh) dh[e] = I::put(u(rng));
  }
  launch_rows_bw<T>(dev<T>(dx), dev<T>(h), dev<T>(dy), s.dh ? dev<T>(dh) : nullptr, s.weight ? dev<T>(w) : nullptr,
                    rstd.data(), R, C, s.grid_cap, mode, seed + 1);
  long long nchunks, chunk_rows;
  chunks_of(R, s.chunks, &nchunks, &chunk_rows);
  Buf<float> part("part", size_t(nchunks * C), harness::unwritten_float());
  if (s.weight) {
    const long long blocks = (C + 31) / 32 * nchunks;
    if (nchunks > 0)
      emu::launch(cfg_of("add_rms_bw_partial", blocks, 256, mode, seed + 2),
                  [&] { add_rms_bw_partial<T>(part.data(), dev<T>(h), dev<T>(dy), rstd.data(), R, C, chunk_rows); });
    emu::launch(cfg_of("fused_colsum_final", std::min<long long>((C + 255) / 256, 2), 256, mode, seed + 3),
                [&] { fused_colsum_final<T>(dev<T>(dw), part.data(), nchunks, C); });
  }
  for (const std::string& g : {dx.guards(), dw.guards(), part.guards()})
    if (!g.empty()) return g;
  const double btol = I::bf ? 1e-2 : 1e-4;
  std::vector<double> aw(size_t(C), 0.0), mag(size_t(C), 0.0);
  for (long long i = 0; i < R; ++i) {
    const double r = rstd[i];
    double sgx = 0;
    for (long long j = 0; j < C; ++j) {
      const size_t e = size_t(i) * C + j;
      sgx += I::get(dy[e]) * (s.weight ? I::get(w[j]) : 1.0) * I::get(h[e]);
    }
    const double c2 = sgx * r / C;
    for (long long j = 0; j < C; ++j) {
      const size_t e = size_t(i) * C + j;
      const double d = I::get(dy[e]), xh = I::get(h[e]) * r;
      const double g = d * (s.weight ? I::get(w[j]) : 1.0);
      const double want = r * (g - xh * c2) + (s.dh ? I::get(dh[e]) : 0.0);
      const double got = I::get(dx[e]);
      // scale: the row's gradient terms (rstd may be huge on the 1e-25 row)
      const double sc = std::fabs(r * g) + std::fabs(r * xh * c2) + (s.dh ? std::fabs(I::get(dh[e])) : 0.0) + 1;
      if (!(std::fabs(got - want) <= btol * sc)) return fmt("dx[%lld][%lld] = %.7g, want %.7g", i, j, got, want);
      aw[j] += d * xh;
      mag[j] += std::fabs(d * xh);
    }
  }
  if (s.weight)
    for (long long j = 0; j < C; ++j) {
      const double got = I::get(dw[j]);
      if (!(std::fabs(got - aw[j]) <= btol * (mag[j] + 1))) return fmt("dw[%lld] = %.7g, want %.7g", j, got, aw[j]);
    }
  return "";
}

// ---- bias + activation ---------------------------------------------------------------------

struct ActShape {
  const char* tag;
  int rows, cols, bf, grid_cap, chunks, dbias;
};

double act_ref(FAct f, double z) {
  switch (f) {
    case FAct::Gelu: return 0.5 * z * (1 + std::erf(z / std::sqrt(2.0)));
    case FAct::GeluTanh: return 0.5 * z * (1 + std::tanh(std::sqrt(2 / M_PI) * (z + 0.044715 * z * z * z)));
    case FAct::Silu: return z / (1 + std::exp(-z));
    default: return z > 0 ? z : 0;
  }
}
double dact_ref(FAct f, double z) {
  switch (f) {
    case FAct::Gelu: return 0.5 * (1 + std::erf(z / std::sqrt(2.0))) + z * std::exp(-0.5 * z * z) / std::sqrt(2 * M_PI);
    case FAct::GeluTanh: {
      const double k = std::sqrt(2 / M_PI), c = 0.044715, t = std::tanh(k * (z + c * z * z * z));
      return 0.5 * (1 + t) + 0.5 * z * (1 - t * t) * k * (1 + 3 * c * z * z);
    }
    case FAct::Silu: {
      const double s = 1 / (1 + std::exp(-z));
      return s * (1 + z * (1 - s));
    }
    default: return z > 0 ? 1 : 0;
  }
}
const char* act_name(FAct f) {
  switch (f) {
    case FAct::Gelu: return "gelu";
    case FAct::GeluTanh: return "geluTanh";
    case FAct::Silu: return "silu";
    default: return "relu";
  }
}

template <typename T, FAct F>
std::string run_act(const ActShape& s, const harness::Mode& mode, uint32_t seed) {
  using I = Io<T>;
  using S = typename I::S;
  emu::clear_globals();
  std::mt19937 rng(seed);
  std::uniform_real_distribution<double> u(-4.0, 4.0);
  const long long R = s.rows, C = s.cols, n = R * C;
  Buf<S> x("x", size_t(n), 0), b("bias", size_t(C), 0), dy("dy", size_t(n), 0);
  Buf<S> out("out", size_t(n), I::unwritten()), dx("dx", size_t(n), I::unwritten()), db("dbias", size_t(C), I::unwritten());
  for (long long e = 0; e < n; ++e) {
    x[e] = I::put(u(rng));
    dy[e] = I::put(u(rng) * 0.5);
  }
  for (long long j = 0; j < C; ++j) b[j] = I::put(u(rng) * 0.5);
  if (n > 2) {  // exact zeros of x + bias: relu's kink, gelu at 0
    x[0] = I::put(-I::get(b[0]));
    x[n - 1] = I::put(-I::get(b[(n - 1) % C]));
  }
  emu::launch(cfg_of("bias_act_fwd", capped((n + 255) / 256, s.grid_cap), 256, mode, seed),
              [&] { bias_act_fwd<T, F>(dev<T>(out), dev<T>(x), dev<T>(b), n, C); });
  long long nchunks, chunk_rows;
  chunks_of(R, s.chunks, &nchunks, &chunk_rows);
  Buf<float> part("part", s.dbias ? size_t(nchunks * C) : 0, harness::unwritten_float());
  if (nchunks > 0)
    emu::launch(cfg_of("bias_act_bw_partial", (C + 31) / 32 * nchunks, 256, mode, seed + 1), [&] {
      bias_act_bw_partial<T, F>(dev<T>(dx), s.dbias ? part.data() : nullptr, dev<T>(x), dev<T>(b), dev<T>(dy), R, C,
                                chunk_rows);
    });
  if (s.dbias)
    emu::launch(cfg_of("fused_colsum_final", std::min<long long>((C + 255) / 256, 2), 256, mode, seed + 2),
                [&] { fused_colsum_final<T>(dev<T>(db), part.data(), nchunks, C); });
  for (const std::string& g : {x.guards(), out.guards(), dx.guards(), db.guards(), part.guards()})
    if (!g.empty()) return g;
  const double tol = I::bf ? 1e-2 : 1e-5, btol = I::bf ? 1e-2 : 1e-5;
  std::vector<double> sb(size_t(C), 0.0), mag(size_t(C), 0.0);
  for (long long e = 0; e < n; ++e) {
    const long long j = e % C;
    const double z = add_stored<T>(I::get(x[e]), I::get(b[j]));
    const double want = act_ref(F, z), got = I::get(out[e]);
    if (!(std::fabs(got - want) <= tol * (1 + std::fabs(want))))
      return fmt("%s out[%lld] = %.7g, want %.7g (z %.7g)", act_name(F), e, got, want, z);
    const double dw = I::get(dy[e]) * dact_ref(F, z), dg = I::get(dx[e]);
    if (!(std::fabs(dg - dw) <= btol * (1 + std::fabs(dw))))
      return fmt("%s dx[%lld] = %.7g, want %.7g (z %.7g)", act_name(F), e, dg, dw, z);
    sb[j] += dw;
    mag[j] += std::fabs(dw);
  }
  if (s.dbias)
    for (long long j = 0; j < C; ++j) {
      const double got = I::get(db[j]);
      if (!(std::fabs(got - sb[j]) <= (I::bf ? 1e-2 : 1e-5) * (mag[j] + 1)))
        return fmt("%s dbias[%lld] = %.7g, want %.7g", act_name(F), j, got, sb[j]);
    }
  return "";
}

// clang-format off
const NormShape kNorm[] = {
  // tag            rows  cols bf weight dh wide cap chunks
  {"1x1",             1,    1, 0, 1, 1, 0, 0, 1},
  {"rows-3",         13,    3, 0, 1, 0, 0, 1, 3},
  {"17-nodh",         9,   17, 0, 0, 0, 0, 0, 2},
  {"33-wide",         5,   33, 0, 1, 1, 1, 1, 5},
  {"1023",            3, 1023, 0, 1, 1, 0, 0, 2},
  {"1025-block",      3, 1025, 0, 1, 1, 1, 2, 2},
  {"bf16-17",        11,   17, 1, 1, 1, 0, 1, 4},
  {"bf16-1023-wide",  3, 1023, 1, 1, 0, 1, 0, 1},
  {"bf16-2050",       2, 2050, 1, 0, 1, 0, 1, 2},
  {"many-rows",      70,    5, 0, 1, 1, 0, 3, 5},
};
const ActShape kAct[] = {
  // tag          rows cols bf cap chunks dbias
  {"1x1",            1,   1, 0, 0, 1, 1},
  {"3",            7,     3, 0, 1, 3, 1},
  {"17",           9,    17, 0, 2, 2, 1},
  {"33-nobias",    4,    33, 0, 0, 2, 0},
  {"1023",         2,  1023, 0, 3, 2, 1},
  {"bf16-17",     13,    17, 1, 1, 5, 1},
  {"bf16-70",      3,    70, 1, 0, 1, 1},
};
// clang-format on

template <typename T>
std::function<std::string()> act_case(FAct f, const ActShape& s, const harness::Mode& m, uint32_t seed) {
  switch (f) {
    case FAct::Gelu: return [s, m, seed] { return run_act<T, FAct::Gelu>(s, m, seed); };
    case FAct::GeluTanh: return [s, m, seed] { return run_act<T, FAct::GeluTanh>(s, m, seed); };
    case FAct::Silu: return [s, m, seed] { return run_act<T, FAct::Silu>(s, m, seed); };
    default: return [s, m, seed] { return run_act<T, FAct::Relu>(s, m, seed); };
  }
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<harness::Case> cases;
  int si = 0;
  for (const NormShape& s : kNorm) {
    for (int mi = 0; mi < 3; ++mi) {
      const harness::Mode m = harness::kModes[mi];
      const uint32_t seed = 5200u + 13u * static_cast<uint32_t>(si);
      std::function<std::string()> run;
      if (s.bf) run = [s, m, seed] { return run_norm<bf16_t>(s, m, seed); };
      else run = [s, m, seed] { return run_norm<float>(s, m, seed); };
      cases.push_back({fmt("fused/add-rms/%s/%s", s.tag, harness::mode_name(m).c_str()), mi == si % 3,
                       double(s.rows) * s.cols * 0.02, run});
    }
    ++si;
  }
  const FAct acts[] = {FAct::Gelu, FAct::GeluTanh, FAct::Silu, FAct::Relu};
  for (const ActShape& s : kAct) {
    for (FAct f : acts) {
      for (int mi = 0; mi < 3; ++mi) {
        const harness::Mode m = harness::kModes[mi];
        const uint32_t seed = 6100u + 17u * static_cast<uint32_t>(si) + static_cast<uint32_t>(f);
        cases.push_back({fmt("fused/bias-act/%s/%s/%s", act_name(f), s.tag, harness::mode_name(m).c_str()),
                         mi == (si + static_cast<int>(f)) % 3, double(s.rows) * s.cols * 0.02,
                         s.bf ? act_case<bf16_t>(f, s, m, seed) : act_case<float>(f, s, m, seed)});
      }
    }
    ++si;
  }
  return harness::main(argc, argv, cases);
}
