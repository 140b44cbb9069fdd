// The RMSNorm / LayerNorm kernels (native/cuda/norm.cu) in the emulator against float64
// references: norm_warp (rows up to 1024 columns; the packed and the scalar layout) and
// norm_block (longer rows), float32 and bf16, with and without weight and bias, and rows whose
// float statistics leave float's range (|x| ~ 1e20, ~ 1e-25), which the kernels redo in double.
// Launches as norm.cu's host code makes them (extract.js checks).
#include <cmath>
#include <random>

#include "norm_kernel.inc"
#include "harness.h"

using namespace dualroute::cuda;
using harness::Buf;
using harness::cfg_of;
using harness::fmt;

namespace {

struct Shape {
  const char* tag;
  int rows, cols, layer, bf, params;
  int wide;  // 1: row 0 scaled by 1e20, row 1 by 1e-25 (the double path)
};

template <typename T, int K, bool VEC, bool LAYER>
void launch_warp_t(T* o, const T* x, Param w, Param b, float eps, float* mean, float* rstd, long long rows, int cols,
                   const harness::Mode& m, uint32_t seed) {
  emu::launch(cfg_of(VEC ? "norm_warp<vec>" : "norm_warp", (rows + 7) / 8, 256, m, seed),
              [&] { norm_warp<T, K, VEC, LAYER>(o, x, w, b, eps, mean, rstd, rows, cols); });
}

template <typename T, bool LAYER>
void launch_t(T* o, const T* x, Param w, Param b, float eps, float* mean, float* rstd, long long rows, int cols,
              bool vec, const harness::Mode& m, uint32_t seed) {
  constexpr int V = 16 / sizeof(T);
  if (cols > 1024) {
    emu::launch(cfg_of("norm_block", rows, 512, m, seed),
                [&] { norm_block<T, LAYER>(o, x, w, b, eps, mean, rstd, rows, cols); });
    return;
  }
#define DR_NORM_K(KK)                                                                                   \
  if (vec && KK % V == 0) return launch_warp_t<T, KK, KK % V == 0, LAYER>(o, x, w, b, eps, mean, rstd, rows, cols, m, seed); \
  return launch_warp_t<T, KK, false, LAYER>(o, x, w, b, eps, mean, rstd, rows, cols, m, seed);
  if (cols <= 32) { DR_NORM_K(1) }
  if (cols <= 64) { DR_NORM_K(2) }
  if (cols <= 128) { DR_NORM_K(4) }
  if (cols <= 256) { DR_NORM_K(8) }
  if (cols <= 512) { DR_NORM_K(16) }
  DR_NORM_K(32)
#undef DR_NORM_K
}

std::string run_case(const Shape& s, const harness::Mode& mode, uint32_t seed) {
  emu::clear_globals();
  std::mt19937 r(seed);
  std::uniform_real_distribution<float> u(-2.f, 2.f);
  const int R = s.rows, C = s.cols;
  const size_t n = size_t(R) * C;
  Buf<float> xf("x", s.bf ? 0 : n, 0.f), of("out", s.bf ? 0 : n, harness::unwritten_float());
  Buf<uint16_t> xb("x_bf16", s.bf ? n : 0, 0), ob("out_bf16", s.bf ? n : 0, harness::kUnwrittenBf16);
  Buf<float> w("w", s.params ? size_t(C) : 0, 0.f), b("b", s.params ? size_t(C) : 0, 0.f);
  Buf<float> mean("mean", size_t(R), harness::unwritten_float()), rstd("rstd", size_t(R), harness::unwritten_float());
  std::vector<double> x(n);
  for (int i = 0; i < R; ++i)
    for (int j = 0; j < C; ++j) {
      float v = u(r);
      if (s.wide && i == 0) v *= 1e20f;
      if (s.wide && i == 1) v *= 1e-25f;
      const size_t e = size_t(i) * C + j;
      if (s.bf) {
        xb[e] = f2bf(v);
        x[e] = bf2f(xb[e]);
      } else {
        xf[e] = v;
        x[e] = v;
      }
    }
  for (int j = 0; j < int(w.size()); ++j) {
    w[j] = 0.5f + float(r() % 100) * 0.01f;
    b[j] = float(int(r() % 200) - 100) * 0.01f;
  }
  const Param pw{s.params ? w.data() : nullptr, 0}, pb{s.params && s.layer ? b.data() : nullptr, 0};
  const float eps = 1e-5f;
  void* o = s.bf ? static_cast<void*>(ob.data()) : of.data();
  const void* px = s.bf ? static_cast<const void*>(xb.data()) : xf.data();
  const bool vec = true;  // the buffers are 256-byte aligned: the packed layout where cols allow it
  if (s.bf) {
    if (s.layer)
      launch_t<bf16_t, true>(static_cast<bf16_t*>(o), static_cast<const bf16_t*>(px), pw, pb, eps, mean.data(), rstd.data(), R, C,
                             vec && C % 8 == 0, mode, seed);
    else
      launch_t<bf16_t, false>(static_cast<bf16_t*>(o), static_cast<const bf16_t*>(px), pw, pb, eps, mean.data(), rstd.data(), R,
                              C, vec && C % 8 == 0, mode, seed);
  } else {
    if (s.layer)
      launch_t<float, true>(static_cast<float*>(o), static_cast<const float*>(px), pw, pb, eps, mean.data(), rstd.data(), R, C,
                            vec && C % 4 == 0, mode, seed);
    else
      launch_t<float, false>(static_cast<float*>(o), static_cast<const float*>(px), pw, pb, eps, mean.data(), rstd.data(), R, C,
                             vec && C % 4 == 0, mode, seed);
  }
  for (const std::string& g : {of.guards(), ob.guards(), mean.guards(), rstd.guards()})
    if (!g.empty()) return g;
  const double tol = s.bf ? 1e-2 : 2e-5;
  for (int i = 0; i < R; ++i) {
    double m = 0, ss = 0;
    if (s.layer) {
      for (int j = 0; j < C; ++j) m += x[size_t(i) * C + j];
      m /= C;
    }
    for (int j = 0; j < C; ++j) {
      const double d = x[size_t(i) * C + j] - m;
      ss += d * d;
    }
    const double rs = 1 / std::sqrt(ss / C + eps);
    if (std::fabs(rstd[i] - rs) > 1e-5 * std::fabs(rs)) return fmt("rstd[%d] = %g, want %g", i, rstd[i], rs);
    if (s.layer && std::fabs(mean[i] - m) > 1e-5 * (std::fabs(m) + 1e-30) + 1e-6 * std::sqrt(ss / C))
      return fmt("mean[%d] = %g, want %g", i, mean[i], m);
    for (int j = 0; j < C; ++j) {
      double want = (x[size_t(i) * C + j] - m) * rs * (s.params ? w[j] : 1.0);
      if (s.layer && s.params) want += b[j];
      const size_t e = size_t(i) * C + j;
      const double got = s.bf ? bf2f(ob[e]) : of[e];
      if (!(std::fabs(got - want) <= tol * (1 + std::fabs(want))))
        return fmt("out[%d][%d] = %.7g, want %.7g", i, j, got, want);
    }
  }
  return "";
}

// clang-format off
const Shape kShapes[] = {
  // tag                rows cols layer bf params wide
  {"rms-1",              1,    1,  0, 0, 0, 0},
  {"rms-odd",           13,   37,  0, 0, 1, 0},
  {"layer-64-vec",      10,   64,  1, 0, 1, 0},
  {"layer-200",          9,  200,  1, 0, 1, 1},
  {"rms-1024-wide",      3, 1024,  0, 0, 1, 1},
  {"layer-bf16-96",      9,   96,  1, 1, 1, 0},
  {"rms-bf16-wide",      4,  160,  0, 1, 0, 1},
  {"layer-block",        3, 1500,  1, 0, 1, 1},
  {"rms-block-bf16",     2, 2050,  0, 1, 1, 1},
};
// clang-format on

}  // namespace

int main(int argc, char** argv) {
  std::vector<harness::Case> cases;
  int si = 0;
  for (const Shape& s : kShapes) {
    for (int mi = 0; mi < 3; ++mi) {
      const harness::Mode m = harness::kModes[mi];
      const uint32_t seed = 4100u + 13u * static_cast<uint32_t>(si);
      cases.push_back({fmt("norm/%s/%s", s.tag, harness::mode_name(m).c_str()), mi == si % 3,
                       double(s.rows) * s.cols * 0.01, [s, m, seed] { return run_case(s, m, seed); }});
    }
    ++si;
  }
  return harness::main(argc, argv, cases);
}
