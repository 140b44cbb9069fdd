// The fused LSTM kernels (native/cuda/rnn.cu) in the emulator against a float64 reference written
// from the LSTM equations: lstm_fwd (h every step, hN, cN and the saved gates and c), lstm_bwd
// (dxw, the float copy of the gate gradients, dh0, dc0, from dh / dhN / dcN each present or
// null) and lstm_bwd_w (dW_hh), float32 and bf16 storage; B 1 and several rows, L 1 and L 0, H
// below a warp, odd, and above the block's 256 threads (each thread owning several cells).
// Launches as rnn.cu's host code makes them (extract.js checks); lstm_bwd_w's grid is capped at
// 3 blocks so its grid-stride loop goes round.
#include <cmath>
#include <random>

#include "rnn_kernel.inc"
#include "harness.h"

using namespace dualroute::cuda;
using harness::Buf;
using harness::cfg_of;
using harness::fmt;

namespace {

constexpr int kThreads = 256;  // device.cuh's (host part, not extracted)

struct Shape {
  const char* tag;
  int B, L, H, bf;
  int state;  // h0 / c0 random (else 0)
  int grads;  // bit 0: dh given, bit 1: dhN, bit 2: dcN
};

double sig(double v) { return 1 / (1 + std::exp(-v)); }

// Float64 forward and backward of one layer from (rounded) inputs.
struct Ref {
  std::vector<double> h, hn, cn, gates, c;  // gates [B, L, 4H] activated, c [B, L, H]
  std::vector<double> dxw, dw, dh0, dc0;
};

Ref reference(int B, int L, int H, const std::vector<double>& xw, const std::vector<double>& w, const std::vector<double>& h0,
              const std::vector<double>& c0, const std::vector<double>& dh, const std::vector<double>& dhn,
              const std::vector<double>& dcn) {
  const int G = 4 * H;
  Ref r;
  r.h.assign(size_t(B) * L * H, 0);
  r.c.assign(size_t(B) * L * H, 0);
  r.gates.assign(size_t(B) * L * G, 0);
  r.hn.assign(size_t(B) * H, 0);
  r.cn.assign(size_t(B) * H, 0);
  r.dxw.assign(size_t(B) * L * G, 0);
  r.dw.assign(size_t(G) * H, 0);
  r.dh0.assign(size_t(B) * H, 0);
  r.dc0.assign(size_t(B) * H, 0);
  for (int b = 0; b < B; ++b) {
    auto hp = [&](int t, int k) { return t ? r.h[(size_t(b) * L + t - 1) * H + k] : h0[size_t(b) * H + k]; };
    auto cp = [&](int t, int k) { return t ? r.c[(size_t(b) * L + t - 1) * H + k] : c0[size_t(b) * H + k]; };
    for (int t = 0; t < L; ++t) {
      const size_t bt = size_t(b) * L + t;
      std::vector<double> a(G);
      for (int j = 0; j < G; ++j) {
        double s = xw[bt * G + j];
        for (int p = 0; p < H; ++p) s += w[size_t(j) * H + p] * hp(t, p);
        a[j] = s;
      }
      for (int k = 0; k < H; ++k) {
        const double i = sig(a[k]), f = sig(a[H + k]), g = std::tanh(a[2 * H + k]), o = sig(a[3 * H + k]);
        const double c = f * cp(t, k) + i * g;
        r.gates[bt * G + k] = i;
        r.gates[bt * G + H + k] = f;
        r.gates[bt * G + 2 * H + k] = g;
        r.gates[bt * G + 3 * H + k] = o;
        r.c[bt * H + k] = c;
        r.h[bt * H + k] = o * std::tanh(c);
      }
    }
    for (int k = 0; k < H; ++k) {
      r.hn[size_t(b) * H + k] = L ? r.h[(size_t(b) * L + L - 1) * H + k] : h0[size_t(b) * H + k];
      r.cn[size_t(b) * H + k] = L ? r.c[(size_t(b) * L + L - 1) * H + k] : c0[size_t(b) * H + k];
    }
    std::vector<double> dhr(H), dc(H);
    for (int k = 0; k < H; ++k) {
      dhr[k] = dhn.empty() ? 0 : dhn[size_t(b) * H + k];
      dc[k] = dcn.empty() ? 0 : dcn[size_t(b) * H + k];
    }
    for (int t = L - 1; t >= 0; --t) {
      const size_t bt = size_t(b) * L + t;
      double* d = &r.dxw[bt * G];
      for (int k = 0; k < H; ++k) {
        const double i = r.gates[bt * G + k], f = r.gates[bt * G + H + k], g = r.gates[bt * G + 2 * H + k],
                     o = r.gates[bt * G + 3 * H + k], tc = std::tanh(r.c[bt * H + k]);
        const double dht = dhr[k] + (dh.empty() ? 0 : dh[bt * H + k]);
        const double dcv = dc[k] + dht * o * (1 - tc * tc);
        d[k] = dcv * g * i * (1 - i);
        d[H + k] = dcv * cp(t, k) * f * (1 - f);
        d[2 * H + k] = dcv * i * (1 - g * g);
        d[3 * H + k] = dht * tc * o * (1 - o);
        dc[k] = dcv * f;
      }
      for (int p = 0; p < H; ++p) {
        double s = 0;
        for (int j = 0; j < G; ++j) s += d[j] * w[size_t(j) * H + p];
        dhr[p] = s;
      }
      for (int j = 0; j < G; ++j)
        for (int p = 0; p < H; ++p) r.dw[size_t(j) * H + p] += d[j] * hp(t, p);
    }
    for (int k = 0; k < H; ++k) {
      r.dh0[size_t(b) * H + k] = dhr[k];
      r.dc0[size_t(b) * H + k] = dc[k];
    }
  }
  return r;
}

// Storage of type T (float, or bf16 as uint16_t) filled from the test's random doubles, which
// are rounded to what is stored.
struct Tensor {
  Buf<float> f;
  Buf<uint16_t> h;
  std::vector<double> v;
  bool bf;
  // fill: the outputs' unwritten NaN (its bf16 twin for bf16), or 0 for inputs left at 0
  Tensor(const char* name, size_t n, bool bf16, float fill)
      : f(name, bf16 ? 0 : n, fill),
        h(name, bf16 ? n : 0, fill == 0.f ? uint16_t(0) : harness::kUnwrittenBf16),
        v(n, 0),
        bf(bf16) {}
  void random(std::mt19937& r, float lo, float hi) {
    std::uniform_real_distribution<float> u(lo, hi);
    for (size_t i = 0; i < v.size(); ++i) {
      const float x = u(r);
      if (bf) {
        h[i] = f2bf(x);
        v[i] = bf2f(h[i]);
      } else {
        f[i] = x;
        v[i] = x;
      }
    }
  }
  double at(size_t i) const { return bf ? bf2f(h[i]) : f[i]; }
  void* ptr() { return bf ? static_cast<void*>(h.data()) : f.data(); }
  std::string guards() const { return f.guards() + h.guards(); }
};

// max |got - want| <= tol * max(max |want|, floor)
std::string compare(const char* what, const Tensor& got, const std::vector<double>& want, double tol) {
  double m = 1e-3;
  for (double w : want) m = std::max(m, std::fabs(w));
  for (size_t i = 0; i < want.size(); ++i) {
    const double g = got.at(i);
    if (!(std::fabs(g - want[i]) <= tol * m)) return fmt("%s[%zu] = %.7g, want %.7g (max |ref| %.3g)", what, i, g, want[i], m);
  }
  return "";
}

template <typename T>
std::string run_t(const Shape& s, const harness::Mode& mode, uint32_t seed) {
  emu::clear_globals();
  std::mt19937 r(seed);
  const int B = s.B, L = s.L, H = s.H, G = 4 * H;
  const bool bf = s.bf != 0;
  const double k = 1 / std::sqrt(double(H));
  Tensor xw("xw", size_t(B) * L * G, bf, 0.f), w("whh", size_t(G) * H, bf, 0.f), h0("h0", size_t(B) * H, bf, 0.f),
      c0("c0", size_t(B) * H, bf, 0.f);
  xw.random(r, -1.5f, 1.5f);
  w.random(r, float(-k), float(k));
  if (s.state) {
    h0.random(r, -1.f, 1.f);
    c0.random(r, -2.f, 2.f);
  }
  Tensor dh("dh", (s.grads & 1) ? size_t(B) * L * H : 0, bf, 0.f), dhn("dhn", (s.grads & 2) ? size_t(B) * H : 0, bf, 0.f),
      dcn("dcn", (s.grads & 4) ? size_t(B) * H : 0, bf, 0.f);
  dh.random(r, -1.f, 1.f);
  dhn.random(r, -1.f, 1.f);
  dcn.random(r, -1.f, 1.f);
  const Ref ref = reference(B, L, H, xw.v, w.v, h0.v, c0.v, dh.v, dhn.v, dcn.v);

  const float nanf = harness::unwritten_float();
  Tensor h("h", size_t(B) * L * H, bf, nanf), hn("hn", size_t(B) * H, bf, nanf), cn("cn", size_t(B) * H, bf, nanf);
  Buf<float> saved("saved", size_t(B) * L * 5 * H, nanf);
  auto P = [](Tensor& t) { return static_cast<T*>(t.ptr()); };
  auto C = [](Tensor& t) { return t.v.empty() ? nullptr : static_cast<const T*>(t.ptr()); };
  emu::LaunchCfg fc = cfg_of("lstm_fwd", B, kLstmThreads, mode, seed);
  fc.dyn_smem = size_t(5) * H * sizeof(float);
  emu::launch(fc, [&] { lstm_fwd<T>(P(h), P(hn), P(cn), saved.data(), C(xw), C(w), C(h0), C(c0), L, H); });
  for (const std::string& g : {h.guards(), hn.guards(), cn.guards(), saved.guards()})
    if (!g.empty()) return g;
  const double tol = bf ? 1.5e-2 : 2e-5;
  for (const std::string& e : {compare("h", h, ref.h, tol), compare("hN", hn, ref.hn, tol), compare("cN", cn, ref.cn, tol)})
    if (!e.empty()) return e;
  for (int b = 0; b < B; ++b)
    for (int t = 0; t < L; ++t)
      for (int q = 0; q < 5; ++q)
        for (int kk = 0; kk < H; ++kk) {
          const size_t bt = size_t(b) * L + t;
          const double want = q < 4 ? ref.gates[bt * G + q * H + kk] : ref.c[bt * H + kk];
          const double got = saved[bt * 5 * H + q * H + kk];
          if (!(std::fabs(got - want) <= (bf ? 1e-3 : 2e-5) * (1 + std::fabs(want))))
            return fmt("saved[%d][%d][%d * H + %d] = %.7g, want %.7g", b, t, q, kk, got, want);
        }

  Tensor dxw("dxw", size_t(B) * L * G, bf, nanf), dw("dwhh", size_t(G) * H, bf, nanf), dh0("dh0", size_t(B) * H, bf, nanf),
      dc0("dc0", size_t(B) * H, bf, nanf);
  Buf<float> da("da", size_t(B) * L * G, nanf);
  emu::LaunchCfg bc = cfg_of("lstm_bwd", B, kLstmThreads, mode, seed + 1);
  bc.dyn_smem = size_t(6) * H * sizeof(float);
  emu::launch(bc, [&] {
    lstm_bwd<T>(P(dxw), da.data(), P(dh0), P(dc0), C(dh), C(dhn), C(dcn), saved.data(), C(w), C(c0), L, H);
  });
  const long long n = 4LL * H * H;
  emu::launch(cfg_of("lstm_bwd_w", std::min<long long>(3, (n + kThreads - 1) / kThreads), kThreads, mode, seed + 2),
              [&] { lstm_bwd_w<T>(P(dw), da.data(), C(h), C(h0), B, L, H); });
  for (const std::string& g : {dxw.guards(), dw.guards(), dh0.guards(), dc0.guards(), da.guards()})
    if (!g.empty()) return g;
  // bf16: the backward reads the rounded h of the forward (as the library stores it)
  const double btol = bf ? 3e-2 : 5e-5;
  for (const std::string& e : {compare("dxw", dxw, ref.dxw, btol), compare("dWhh", dw, ref.dw, btol),
                               compare("dh0", dh0, ref.dh0, btol), compare("dc0", dc0, ref.dc0, btol)})
    if (!e.empty()) return e;
  for (size_t i = 0; i < ref.dxw.size(); ++i)
    if (!(std::fabs(da[i] - ref.dxw[i]) <= btol * (1 + std::fabs(ref.dxw[i]))))
      return fmt("da[%zu] = %.7g, want %.7g", i, da[i], ref.dxw[i]);
  return "";
}

// clang-format off
const Shape kShapes[] = {
  // tag              B   L    H  bf state grads
  {"b1-l1-h1",        1,  1,   1, 0, 0, 7},
  {"b3-l5-h9",        3,  5,   9, 0, 1, 7},
  {"b2-l4-h37-dh",    2,  4,  37, 0, 1, 1},
  {"b2-l3-h40-hN",    2,  3,  40, 0, 0, 2},
  {"b1-l2-h300",      1,  2, 300, 0, 1, 5},
  {"b2-l0-h5",        2,  0,   5, 0, 1, 6},
  {"bf16-b2-l4-h33",  2,  4,  33, 1, 1, 7},
  {"bf16-b1-l3-h260", 1,  3, 260, 1, 1, 3},
};
// clang-format on

}  // namespace

int main(int argc, char** argv) {
  std::vector<harness::Case> cases;
  int si = 0;
  for (const Shape& s : kShapes) {
    for (int mi = 0; mi < 3; ++mi) {
      const harness::Mode m = harness::kModes[mi];
      const uint32_t seed = 5300u + 17u * static_cast<uint32_t>(si);
      cases.push_back({fmt("rnn/%s/%s", s.tag, harness::mode_name(m).c_str()), mi == si % 3,
                       double(s.B) * (s.L + 1) * s.H * s.H * 0.01 + 1,
                       [s, m, seed] { return s.bf ? run_t<bf16_t>(s, m, seed) : run_t<float>(s, m, seed); }});
    }
    ++si;
  }
  return harness::main(argc, argv, cases);
}
