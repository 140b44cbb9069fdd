// The fused LSTM layer on the CPU (the rnn family; native/ops/rnn.cpp checks the shapes).
//
// Forward, per step t (gates i, f, g, o in PyTorch's order; xw = x W_ih^T + b from outside):
//   a = xw[:, t] + h_{t-1} W_hh^T                                [B, 4H]
//   i, f, o = sigmoid(a_i, a_f, a_o), g = tanh(a_g)
//   c_t = f c_{t-1} + i g,  h_t = o tanh(c_t)
// Backward, t from the last step down, with dh_t = dh[:, t] + the recurrent gradient:
//   dc = dc_next + dh_t o (1 - tanh(c_t)^2)
//   da_i = dc g i (1 - i), da_f = dc c_{t-1} f (1 - f), da_g = dc i (1 - g^2),
//   da_o = dh_t tanh(c_t) o (1 - o);  dc_next = dc f,  dh_next = da W_hh
// and at the end dW_hh = sum over (b, t) of da[b, t]^T h_{t-1}[b] (one matmul over all steps).
//
// Each step's recurrent product is one matmul over the whole batch (matmul.cpp: threaded and
// vectorised once it is large enough), so the work is split over batch rows and gate columns
// without a barrier of our own; the cell update after it is threaded over batch rows. State
// (h, c), gates and sums stay in the stats type (float, double for float64): bfloat16 storage
// is rounded only where it is written out (h every step, hN, cN, the gradients), so both
// backends run the same float recurrence.
#include <vector>

#include "common.h"
#include "simd.h"

namespace dualroute {
namespace cpu {
namespace DR_ISA {
namespace {

template <typename T>
using StatsOf = typename std::conditional<std::is_same_v<T, double>, double, float>::type;

template <typename S>
inline S sigmoid(S x) {
  return S(1) / (S(1) + std::exp(-x));
}

template <typename S>
void run_matmul(int64_t m, int64_t n, int64_t k, const S* a, int64_t lda, bool ta, const S* b, int64_t ldb, bool tb,
                S* c, int64_t ldc, float beta) {
  MatmulArgs g{};
  g.batch = 1;
  g.m = m;
  g.n = n;
  g.k = k;
  g.a = a;
  g.lda = lda;
  g.trans_a = ta ? 1 : 0;
  g.b = b;
  g.ldb = ldb;
  g.trans_b = tb ? 1 : 0;
  g.c = c;
  g.ldc = ldc;
  g.dtype = static_cast<int32_t>(std::is_same_v<S, double> ? DType::F64 : DType::F32);
  g.alpha = 1.f;
  g.beta = beta;
  matmul(g);
}

template <typename T, typename S>
void widen(S* dst, const T* src, int64_t n) {
  for (int64_t i = 0; i < n; ++i) dst[i] = Num<T>::load(src[i]);
}
template <typename T, typename S>
void narrow(T* dst, const S* src, int64_t n) {
  for (int64_t i = 0; i < n; ++i) dst[i] = Num<T>::store(src[i]);
}

// One batch row's cell update at one step: a [4H] pre-activations; c, h [H] the state (updated);
// sv [5H] the saved i, f, g, o, c_t; out [H] h_t in storage type.
template <typename T, typename S>
void cell_forward(const S* a, S* c, S* h, S* sv, T* out, int64_t H) {
  int64_t k = 0;
  if constexpr (std::is_same_v<S, float>) {
    const vf one = vset1(1.f);
    for (; k + kVecF <= H; k += kVecF) {
      const vf i = one / (one + vexp(-vload(a + k))), f = one / (one + vexp(-vload(a + H + k)));
      const vf g = vtanh(vload(a + 2 * H + k)), o = one / (one + vexp(-vload(a + 3 * H + k)));
      const vf cn = f * vload(c + k) + i * g, hn = o * vtanh(cn);
      vstore(sv + k, i);
      vstore(sv + H + k, f);
      vstore(sv + 2 * H + k, g);
      vstore(sv + 3 * H + k, o);
      vstore(sv + 4 * H + k, cn);
      vstore(c + k, cn);
      vstore(h + k, hn);
      vstore(out + k, hn);
    }
  }
  for (; k < H; ++k) {
    const S i = sigmoid(a[k]), f = sigmoid(a[H + k]), g = std::tanh(a[2 * H + k]), o = sigmoid(a[3 * H + k]);
    const S cn = f * c[k] + i * g, hn = o * std::tanh(cn);
    sv[k] = i;
    sv[H + k] = f;
    sv[2 * H + k] = g;
    sv[3 * H + k] = o;
    sv[4 * H + k] = cn;
    c[k] = cn;
    h[k] = hn;
    out[k] = Num<T>::store(hn);
  }
}

// Rows per task of the cell updates: about 16k elements, so small batches run inline.
inline int64_t row_grain(int64_t H) { return std::max<int64_t>(1, 16384 / std::max<int64_t>(H, 1)); }

template <typename T>
void forward_typed(const View& hv, const View& hnv, const View& cnv, const View& sav, const View& xwv, const View& whv,
                   const View& h0v, const View& c0v) {
  using S = StatsOf<T>;
  const int64_t B = xwv.shape[0], L = xwv.shape[1], H = whv.shape[1], G = 4 * H;
  const T* xw = static_cast<const T*>(xwv.data);
  T* hout = static_cast<T*>(hv.data);
  S* saved = static_cast<S*>(sav.data);
  std::vector<S> w(static_cast<size_t>(G * H)), h(static_cast<size_t>(B * H)), c(static_cast<size_t>(B * H)),
      a(static_cast<size_t>(B * G));
  widen(w.data(), static_cast<const T*>(whv.data), G * H);
  widen(h.data(), static_cast<const T*>(h0v.data), B * H);
  widen(c.data(), static_cast<const T*>(c0v.data), B * H);
  for (int64_t t = 0; t < L; ++t) {
    for (int64_t b = 0; b < B; ++b) widen(a.data() + b * G, xw + (b * L + t) * G, G);
    run_matmul<S>(B, G, H, h.data(), H, false, w.data(), H, true, a.data(), G, 1.f);
    parallel_for(B, row_grain(H), [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b)
        cell_forward<T, S>(a.data() + b * G, c.data() + b * H, h.data() + b * H, saved + (b * L + t) * 5 * H,
                           hout + (b * L + t) * H, H);
    });
  }
  narrow(static_cast<T*>(hnv.data), h.data(), B * H);
  narrow(static_cast<T*>(cnv.data), c.data(), B * H);
}

template <typename T>
void backward_typed(const View& dxwv, const View& dwv, const View& dh0v, const View& dc0v, const View& dhv,
                    const View& dhnv, const View& dcnv, const View& hv, const View& sav, const View& whv,
                    const View& h0v, const View& c0v) {
  using S = StatsOf<T>;
  const int64_t B = hv.shape[0], L = hv.shape[1], H = whv.shape[1], G = 4 * H;
  const T* dh = static_cast<const T*>(dhv.data);  // optional
  const T* hs = static_cast<const T*>(hv.data);
  const T* c0 = static_cast<const T*>(c0v.data);
  const S* saved = static_cast<const S*>(sav.data);
  T* dxw = static_cast<T*>(dxwv.data);
  std::vector<S> w(static_cast<size_t>(G * H)), da(static_cast<size_t>(B * L * G)), dhr(static_cast<size_t>(B * H), S(0)),
      dc(static_cast<size_t>(B * H), S(0));
  widen(w.data(), static_cast<const T*>(whv.data), G * H);
  if (dhnv.data) widen(dhr.data(), static_cast<const T*>(dhnv.data), B * H);
  if (dcnv.data) widen(dc.data(), static_cast<const T*>(dcnv.data), B * H);
  for (int64_t t = L - 1; t >= 0; --t) {
    parallel_for(B, row_grain(H), [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) {
        const S* sv = saved + (b * L + t) * 5 * H;
        const S* cprev = t > 0 ? saved + (b * L + t - 1) * 5 * H + 4 * H : nullptr;
        const T* dht = dh ? dh + (b * L + t) * H : nullptr;
        S* d = da.data() + (b * L + t) * G;
        S* dcb = dc.data() + b * H;
        const S* dhb = dhr.data() + b * H;
        for (int64_t k = 0; k < H; ++k) {
          const S i = sv[k], f = sv[H + k], g = sv[2 * H + k], o = sv[3 * H + k], tc = std::tanh(sv[4 * H + k]);
          const S cp = cprev ? cprev[k] : Num<T>::load(c0[b * H + k]);
          const S dht_k = dhb[k] + (dht ? Num<T>::load(dht[k]) : S(0));
          const S dcv = dcb[k] + dht_k * o * (S(1) - tc * tc);
          d[k] = dcv * g * i * (S(1) - i);
          d[H + k] = dcv * cp * f * (S(1) - f);
          d[2 * H + k] = dcv * i * (S(1) - g * g);
          d[3 * H + k] = dht_k * tc * o * (S(1) - o);
          dcb[k] = dcv * f;
        }
        narrow(dxw + (b * L + t) * G, d, G);
      }
    });
    // dh_{t-1} = da[:, t] W_hh: rows of da for step t are L * G apart.
    run_matmul<S>(B, H, G, da.data() + t * G, L * G, false, w.data(), H, false, dhr.data(), H, 0.f);
  }
  narrow(static_cast<T*>(dh0v.data), dhr.data(), B * H);
  narrow(static_cast<T*>(dc0v.data), dc.data(), B * H);
  // dW_hh = da^T [4H, B L] @ h_prev [B L, H], h_prev[b, t] = h0[b] for t = 0, else h[b, t - 1].
  std::vector<S> hp(static_cast<size_t>(B * L * H)), dw(static_cast<size_t>(G * H));
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t < L; ++t)
      widen(hp.data() + (b * L + t) * H,
            t ? hs + (b * L + t - 1) * H : static_cast<const T*>(h0v.data) + b * H, H);
  run_matmul<S>(G, H, B * L, da.data(), G, true, hp.data(), H, false, dw.data(), H, 0.f);
  narrow(static_cast<T*>(dwv.data), dw.data(), G * H);
}

}  // namespace

void lstm_forward(const View& h, const View& h_n, const View& c_n, const View& saved, const View& xw, const View& whh,
                  const View& h0, const View& c0) {
  dispatch_float(dt(xw), "lstmForward",
                 [&](auto tv) { forward_typed<decltype(tv)>(h, h_n, c_n, saved, xw, whh, h0, c0); });
}

void lstm_backward(const View& dxw, const View& dwhh, const View& dh0, const View& dc0, const View& dh, const View& dh_n,
                   const View& dc_n, const View& h, const View& saved, const View& whh, const View& h0,
                   const View& c0) {
  dispatch_float(dt(h), "lstmBackward", [&](auto tv) {
    backward_typed<decltype(tv)>(dxw, dwhh, dh0, dc0, dh, dh_n, dc_n, h, saved, whh, h0, c0);
  });
}

}  // namespace DR_ISA
}  // namespace cpu
}  // namespace dualroute
