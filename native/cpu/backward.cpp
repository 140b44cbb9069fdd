// Backward (gradient) kernels: softmax / log-softmax, RMSNorm, LayerNorm, cross-entropy,
// unary math and SwiGLU. All views are contiguous (the dispatchers make copies).
//
// Rows are handled like the forward kernels: float32 and bfloat16 rows go through the vector
// lanes of simd.h (vload/vstore convert bfloat16, so both compute in float), float64 rows in
// double with plain loops. Statistics (rstd, mean, lse) and dloss are float32, float64 for
// float64 inputs.
//
// Norm parameter gradients (dw, db) reduce over rows without atomics: the rows are cut into a
// fixed number of contiguous chunks, each chunk sums its rows into its own [cols] partial
// buffer while it computes dx (one pass over x and dy), and a second parallel loop over the
// columns adds the partials in chunk order. dw/db are overwritten, never accumulated into.
#include <cmath>
#include <cstring>
#include <vector>

#include "activations.h"
#include "common.h"
#include "prefetch.h"
#include "simd.h"

namespace dualroute {
namespace cpu {
namespace DR_ISA {
namespace {

// float32 and bfloat16 go through vector lanes; float64 does not.
template <typename T>
constexpr bool kVec = !std::is_same_v<T, double>;
// Statistics dtype for an input dtype.
template <typename T>
using Stat = std::conditional_t<std::is_same_v<T, double>, double, float>;

template <typename T>
inline typename Num<T>::acc ld(T v) {
  return Num<T>::load(v);
}

// ---- softmax -----------------------------------------------------------------------------

// One contiguous row, float32 / bfloat16.
template <typename T>
void softmax_bw_row_vec(T* dx, const T* y, const T* dy, int64_t n, bool log) {
  vf acc = vset1(0);
  int64_t i = 0;
  if (log) {
    for (; i + kVecF <= n; i += kVecF) acc += vload(dy + i);
  } else {
    for (; i + kVecF <= n; i += kVecF) acc += vload(dy + i) * vload(y + i);
  }
  float s = hsum(acc);
  for (; i < n; ++i) s += log ? ld(dy[i]) : ld(dy[i]) * ld(y[i]);
  const vf vs = vset1(s);
  i = 0;
  if (log) {
    for (; i + kVecF <= n; i += kVecF) vstore(dx + i, vload(dy + i) - vexp(vload(y + i)) * vs);
    for (; i < n; ++i) dx[i] = Num<T>::store(ld(dy[i]) - std::exp(ld(y[i])) * s);
  } else {
    for (; i + kVecF <= n; i += kVecF) vstore(dx + i, vload(y + i) * (vload(dy + i) - vs));
    for (; i < n; ++i) dx[i] = Num<T>::store(ld(y[i]) * (ld(dy[i]) - s));
  }
}

template <typename T>
void softmax_bw_typed(const View& dx, const View& y, const View& dy, int64_t outer, int64_t dim, int64_t inner,
                      bool log) {
  using A = typename Num<T>::acc;
  T* pdx = static_cast<T*>(dx.data);
  const T* py = static_cast<const T*>(y.data);
  const T* pdy = static_cast<const T*>(dy.data);
  const int64_t rows = outer * inner;
  parallel_for(rows, std::max<int64_t>(1, 16384 / std::max<int64_t>(dim, 1)), [&](int64_t b, int64_t e) {
    for (int64_t r = b; r < e; ++r) {
      const int64_t o = r / inner, in = r % inner;
      const int64_t base = o * dim * inner + in;
      if constexpr (kVec<T>) {
        if (inner == 1) {
          softmax_bw_row_vec<T>(pdx + base, py + base, pdy + base, dim, log);
          continue;
        }
      }
      A s = 0;
      for (int64_t i = 0; i < dim; ++i) {
        const int64_t k = base + i * inner;
        s += log ? ld(pdy[k]) : ld(pdy[k]) * ld(py[k]);
      }
      for (int64_t i = 0; i < dim; ++i) {
        const int64_t k = base + i * inner;
        const A yv = ld(py[k]), g = ld(pdy[k]);
        pdx[k] = Num<T>::store(log ? g - std::exp(yv) * s : yv * (g - s));
      }
    }
  });
}

// ---- RMSNorm / LayerNorm -----------------------------------------------------------------

// One row: writes dx and, when pdw / pdb are given, adds dy * xhat / dy into them (dy in the
// first pass, which stores nothing else: layerNormBackward over 16384 x 1024 ran 1.04x and
// 1.035x against adding it in the second pass beside dx and dw, A B B A in one process, a
// one-off loop on 2026-12-03; dw in the first pass too ran 0.93-0.97x). With
// `more` (the next row, at +n, is this chunk's too) the second pass, which reads the row from
// cache, prefetches the next row's x and dy and its dx for writing.
template <typename T, bool stream>
void norm_bw_row(bool layer, T* dx, const T* x, const T* w, const T* dy, typename Num<T>::acc mean,
                 typename Num<T>::acc r, int64_t n, typename Num<T>::acc* pdw, typename Num<T>::acc* pdb,
                 bool more) {
  using A = typename Num<T>::acc;
  A sg = 0, sgx = 0;  // sum(g), sum(g * (x - mean))
  int64_t j = 0;
  if constexpr (kVec<T>) {
    vf ag = vset1(0), agx = vset1(0);
    const vf vm = vset1(mean);
    for (; j + kVecF <= n; j += kVecF) {
      const vf d = vload(dy + j);
      vf g = d;
      if (w) g *= vload(w + j);
      ag += g;
      agx += g * (vload(x + j) - vm);
      if (pdb) vstore(pdb + j, vload(pdb + j) + d);
    }
    sg = hsum(ag);
    sgx = hsum(agx);
  }
  for (; j < n; ++j) {
    A g = ld(dy[j]);
    if (pdb) pdb[j] += g;
    if (w) g *= ld(w[j]);
    sg += g;
    sgx += g * (ld(x[j]) - mean);
  }
  const A c1 = layer ? sg / static_cast<A>(n) : A(0);  // mean(g)
  const A c2 = sgx * r / static_cast<A>(n);            // mean(g * xhat)
  j = 0;
  if constexpr (kVec<T>) {
    const vf vm = vset1(mean), vr = vset1(r), v1 = vset1(c1), v2 = vset1(c2);
    auto step = [&](int64_t k) {
      const vf d = vload(dy + k);
      const vf xh = (vload(x + k) - vm) * vr;
      const vf g = w ? d * vload(w + k) : d;
      vput(dx + k, vr * (g - v1 - xh * v2), stream);
      if (pdw) vstore(pdw + k, vload(pdw + k) + d * xh);
    };
    if (more) {
      for (; j + 2 * kVecF <= n; j += 2 * kVecF) {
        prefetch_r(x + n, j);
        prefetch_r(dy + n, j);
        if constexpr (!stream) prefetch_w(dx + n, j);
        step(j);
        step(j + kVecF);
      }
    }
    for (; j + kVecF <= n; j += kVecF) step(j);
  }
  for (; j < n; ++j) {
    const A d = ld(dy[j]);
    const A xh = (ld(x[j]) - mean) * r;
    const A g = w ? d * ld(w[j]) : d;
    dx[j] = Num<T>::store(r * (g - c1 - xh * c2));
    if (pdw) pdw[j] += d * xh;
  }
}

template <typename T>
void norm_bw_typed(bool layer, const View& dx, const View& dw, const View& db, const View& x, const View& w,
                   const View& mean, const View& rstd, const View& dy) {
  using A = typename Num<T>::acc;
  using S = Stat<T>;
  const int64_t cols = x.ndim ? x.shape[x.ndim - 1] : 1;
  const int64_t rows = cols ? view_numel(x) / cols : 0;
  T* pdx = static_cast<T*>(dx.data);
  T* pdw = static_cast<T*>(dw.data);
  T* pdb = static_cast<T*>(db.data);
  const T* px = static_cast<const T*>(x.data);
  const T* pw = static_cast<const T*>(w.data);
  const T* pdy = static_cast<const T*>(dy.data);
  const S* pm = static_cast<const S*>(mean.data);
  const S* pr = static_cast<const S*>(rstd.data);
  // a large dx goes around the caches (simd.h's vstream)
  const bool stream = stream_stores(pdx, rows * cols, cols);
  auto row = [&](int64_t r, A* adw, A* adb, bool more) {
    const A m = layer && pm ? static_cast<A>(pm[r]) : A(0);
    with_store_form(stream, [&](auto st) {
      norm_bw_row<T, decltype(st)::value>(layer, pdx + r * cols, px + r * cols, pw, pdy + r * cols, m,
                                          static_cast<A>(pr[r]), cols, adw, adb, more);
    });
  };
  if (!pdw && !pdb) {
    parallel_for(rows, std::max<int64_t>(1, 8192 / std::max<int64_t>(cols, 1)), [&](int64_t lo, int64_t hi) {
      for (int64_t r = lo; r < hi; ++r) row(r, nullptr, nullptr, r + 1 < hi);
      if (stream) vstream_fence();
    });
    return;
  }
  // Chunked partial sums (see the file comment). The chunk count depends on the thread count
  // only, so a given configuration always adds in the same order.
  const int64_t nchunks = std::min<int64_t>(rows, std::max<int64_t>(1, 4 * static_cast<int64_t>(num_threads())));
  ChunkRows<A> part_w(pdw ? nchunks : 0, cols), part_b(pdb ? nchunks : 0, cols);
  parallel_for(nchunks, 1, [&](int64_t lo, int64_t hi) {
    for (int64_t c = lo; c < hi; ++c) {
      const int64_t r0 = rows * c / nchunks, r1 = rows * (c + 1) / nchunks;
      A* aw = pdw ? part_w.row(c) : nullptr;
      A* ab = pdb ? part_b.row(c) : nullptr;
      for (int64_t r = r0; r < r1; ++r) row(r, aw, ab, r + 1 < r1);
    }
    if (stream) vstream_fence();
  });
  // the rows through locals (see rows_with_colsum in fused_rows.h)
  const A* w0 = part_w.row(0);
  const A* b0 = part_b.row(0);
  const int64_t ps = part_w.stride();
  parallel_for(cols, 4096, [&](int64_t lo, int64_t hi) {
    for (int64_t j = lo; j < hi; ++j) {
      A sw = 0, sb = 0;
      for (int64_t c = 0; c < nchunks; ++c) {
        if (pdw) sw += w0[c * ps + j];
        if (pdb) sb += b0[c * ps + j];
      }
      if (pdw) pdw[j] = Num<T>::store(sw);
      if (pdb) pdb[j] = Num<T>::store(sb);
    }
  });
}

// ---- cross-entropy -----------------------------------------------------------------------

template <typename T>
void cross_entropy_bw_typed(const View& dlogits, const View& logits, const int32_t* t, const View& lse,
                            const View& dloss, int32_t ignore_index, float smoothing) {
  using A = typename Num<T>::acc;
  using S = Stat<T>;
  const int64_t rows = logits.shape[0], C = logits.shape[1];
  T* pdx = static_cast<T*>(dlogits.data);
  const T* px = static_cast<const T*>(logits.data);
  const S* pl = static_cast<const S*>(lse.data);
  const S* pg = static_cast<const S*>(dloss.data);
  const A s = static_cast<A>(smoothing);
  const A sc = s / static_cast<A>(C);
  parallel_for(rows, std::max<int64_t>(1, 16384 / std::max<int64_t>(C, 1)), [&](int64_t b, int64_t e) {
    for (int64_t r = b; r < e; ++r) {
      T* dr = pdx + r * C;
      const T* xr = px + r * C;
      if (t[r] == ignore_index) {
        const T zero = Num<T>::store(A(0));
        for (int64_t j = 0; j < C; ++j) dr[j] = zero;
        continue;
      }
      const A l = static_cast<A>(pl[r]), g = static_cast<A>(pg[r]);
      int64_t j = 0;
      if constexpr (kVec<T>) {
        // p = e^(x - lse) <= 1 (lse >= the row's max), four vectors in step
        const vf vl = vset1(l), vsc = vset1(sc), vg = vset1(g);
        for (; j + 4 * kVecF <= C; j += 4 * kVecF) {
          VN<4> p = act::exp_nonpos_terms(vloadn<4>(xr + j) - l);
          for (int k = 0; k < 4; ++k) p.v[k] = (p.v[k] - vsc) * vg;
          vstoren<4>(dr + j, p);
        }
        for (; j + kVecF <= C; j += kVecF) vstore(dr + j, (vexp_softmax(vload(xr + j) - vl) - vsc) * vg);
      }
      for (; j < C; ++j) dr[j] = Num<T>::store((std::exp(ld(xr[j]) - l) - sc) * g);
      const int32_t k = t[r];
      dr[k] = Num<T>::store((std::exp(ld(xr[k]) - l) - sc - (A(1) - s)) * g);
    }
  });
}

// ---- unary -------------------------------------------------------------------------------

// dx[i] = f(x[i], dy[i]) over contiguous views.
template <typename T, typename F>
void ew_backward(const View& dx, const View& x, const View& dy, int64_t cost, F f) {
  T* pdx = static_cast<T*>(dx.data);
  const T* px = static_cast<const T*>(x.data);
  const T* pdy = static_cast<const T*>(dy.data);
  const int64_t n = view_numel(dx);
  parallel_for(n, std::max<int64_t>(1, 32768 / cost), [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) pdx[i] = Num<T>::store(f(ld(px[i]), ld(pdy[i])));
  });
}

// dy * f'(x) in vector lanes (float32, and bfloat16 through float) for the ops whose
// derivative needs exp, erf or tanh: the vector forms of simd.h instead of a libm call per
// element. False when the op has no vector form here (the scalar loop of ew_backward, which
// the compiler vectorises for the plain arithmetic ones).
template <typename T>
bool unary_bw_vec(UnaryOp op, const View& dx, const View& x, const View& dy) {
  T* pdx = static_cast<T*>(dx.data);
  const T* px = static_cast<const T*>(x.data);
  const T* pdy = static_cast<const T*>(dy.data);
  const int64_t n = view_numel(dx);
  // A large dx goes around the caches (simd.h's vstream) from a task's first aligned vector,
  // except for the GELUs, which are bound by their arithmetic (16384 x 1024, the forms
  // alternated call by call in a /tmp loop: exp, tanh, sigmoid, silu, erf 2.22-2.39 ms streamed
  // against 2.68-2.97 through the cache; gelu 3.89 against 3.78, geluTanh 3.77 against 3.67;
  // bench/stores.ts's siluBackward row: 1.09x and 1.06x in two runs).
  auto run = [&](auto f, bool may_stream = true) {
    const bool stream = may_stream && stream_stores(pdx, n, kVecF);
    parallel_for(n, 16384, [&](int64_t b, int64_t e) {
      const bool st = stream && reinterpret_cast<uintptr_t>(pdx + b) % kVecBytes == 0;
      const int64_t i = b + with_store_form(st, [&](auto stc) DR_VLAMBDA {
        return act::vblocks(e - b, [&](int64_t i, auto u) DR_VLAMBDA {
          constexpr int U = decltype(u)::value;
          vputn<U>(pdx + b + i, f(vloadn<U>(px + b + i), vloadn<U>(pdy + b + i)), decltype(stc)::value);
        });
      });
      if (i < e) {
        T tx[kVecF] = {}, tg[kVecF] = {}, to[kVecF];
        std::memcpy(tx, px + i, (e - i) * sizeof(T));
        std::memcpy(tg, pdy + i, (e - i) * sizeof(T));
        vstore(to, f(vload(tx), vload(tg)));
        std::memcpy(pdx + i, to, (e - i) * sizeof(T));
      }
      if (st) vstream_fence();
    });
    return true;
  };
  switch (op) {
    case UnaryOp::Exp:
    case UnaryOp::Expm1: return run([](auto v, auto g) DR_VLAMBDA { return act::act_grad<act::Exp>(v, g); });
    case UnaryOp::Tanh:
      return run([](auto v, auto g) DR_VLAMBDA {
        return act::per_vec(v, g, [](vf v, vf g) {
          const vf t = vtanh(v);
          return g * (1.0f - t * t);
        });
      });
    case UnaryOp::Sigmoid: return run([](auto v, auto g) DR_VLAMBDA { return act::act_grad<act::Sigmoid>(v, g); });
    case UnaryOp::Silu: return run([](auto v, auto g) DR_VLAMBDA { return act::act_grad<act::Silu>(v, g); });
    case UnaryOp::Gelu: return run([](auto v, auto g) DR_VLAMBDA { return act::act_grad<act::Gelu>(v, g); }, false);
    case UnaryOp::GeluTanh:
      return run([](auto v, auto g) DR_VLAMBDA { return act::act_grad<act::GeluTanh>(v, g); }, false);
    case UnaryOp::Erf:
      return run([](auto v, auto g) DR_VLAMBDA {
        return act::per_vec(v, g, [](vf v, vf g) { return g * 1.12837916709551257390f * vexp(-v * v); });
      });
    default: return false;
  }
}

template <typename T>
void unary_bw_typed(UnaryOp op, const View& dx, const View& x, const View& dy) {
  using A = typename Num<T>::acc;
  if constexpr (kVec<T>) {
    if (unary_bw_vec<T>(op, dx, x, dy)) return;
  }
  auto run = [&](int64_t cost, auto f) { ew_backward<T>(dx, x, dy, cost, f); };
  switch (op) {
    case UnaryOp::Neg: return run(1, [](A, A g) { return -g; });
    case UnaryOp::Abs:
      return run(1, [](A v, A g) { return v > A(0) ? g : v < A(0) ? -g : (v == v ? A(0) : v); });
    case UnaryOp::Exp: return run(8, [](A v, A g) { return g * std::exp(v); });
    case UnaryOp::Log: return run(2, [](A v, A g) { return g / v; });
    case UnaryOp::Sqrt: return run(4, [](A v, A g) { return g * A(0.5) / std::sqrt(v); });
    case UnaryOp::Rsqrt: return run(4, [](A v, A g) { return g * A(-0.5) / (v * std::sqrt(v)); });
    case UnaryOp::Sin: return run(8, [](A v, A g) { return g * std::cos(v); });
    case UnaryOp::Cos: return run(8, [](A v, A g) { return -g * std::sin(v); });
    case UnaryOp::Tanh:
      return run(8, [](A v, A g) {
        const A t = std::tanh(v);
        return g * (A(1) - t * t);
      });
    case UnaryOp::Sigmoid: return run(8, [](A v, A g) { return A(act::Sigmoid::gref(v, g)); });
    case UnaryOp::Relu: return run(1, [](A v, A g) { return A(act::Relu::gref(v, g)); });
    // the activations' float64 formulas (activations.h)
    case UnaryOp::Gelu: return run(8, [](A v, A g) { return A(act::Gelu::gref(v, g)); });
    case UnaryOp::GeluTanh: return run(8, [](A v, A g) { return A(act::GeluTanh::gref(v, g)); });
    case UnaryOp::Silu: return run(8, [](A v, A g) { return A(act::Silu::gref(v, g)); });
    case UnaryOp::Square: return run(1, [](A v, A g) { return g * A(2) * v; });
    case UnaryOp::Reciprocal: return run(2, [](A v, A g) { return -g / (v * v); });
    case UnaryOp::Floor:
    case UnaryOp::Ceil:
    case UnaryOp::Round:
    case UnaryOp::Sign: return run(1, [](A, A) { return A(0); });
    case UnaryOp::Erf:
      return run(8, [](A v, A g) { return g * A(1.12837916709551257390) * std::exp(-v * v); });  // 2/sqrt(pi)
    case UnaryOp::Log1p: return run(2, [](A v, A g) { return g / (A(1) + v); });
    case UnaryOp::Expm1: return run(8, [](A v, A g) { return g * std::exp(v); });
    case UnaryOp::LogicalNot: fail(ErrorCode::Value, "unary_backward: logicalNot has no gradient");
    default: fail(ErrorCode::Value, "unary_backward: unknown op ", static_cast<int>(op));
  }
}

// ---- SwiGLU ------------------------------------------------------------------------------

template <typename T>
void swiglu_bw_typed(const View& dx, const View& x, const View& dy) {
  using A = typename Num<T>::acc;
  const int64_t h = dy.ndim ? dy.shape[dy.ndim - 1] : 1;
  const int64_t rows = h ? view_numel(dy) / h : 0;
  T* pdx = static_cast<T*>(dx.data);
  const T* px = static_cast<const T*>(x.data);
  const T* pdy = static_cast<const T*>(dy.data);
  // as swiglu's forward: the rows ahead prefetched, a large dx streamed (bench/stores.ts: 1.28x
  // while memory was contended, 1.07x while not)
  const int64_t ahead = rows_ahead(2 * h * static_cast<int64_t>(sizeof(T)));
  const bool stream = stream_stores(pdx, rows * 2 * h, h);
  parallel_for(rows, std::max<int64_t>(1, 8192 / std::max<int64_t>(h, 1)), [&](int64_t lo, int64_t hi) {
    for (int64_t r = lo; r < hi; ++r) {
      const T* a = px + r * 2 * h;
      const T* b = a + h;
      const T* g = pdy + r * h;
      T* da = pdx + r * 2 * h;
      T* db = da + h;
      int64_t j = 0;
      if constexpr (kVec<T>) {
        // d/da silu(a) b = b silu'(a), d/db = silu(a): the sigmoid once for both
        const int64_t step = r + ahead < hi ? ahead * 2 * h : 0;
        j = act::vblocks(h, [&](int64_t j, auto u) DR_VLAMBDA {
          constexpr int U = decltype(u)::value;
          if constexpr (U == 4) {
            prefetch_r4(a + step, j);
            prefetch_r4(b + step, j);
            prefetch_r4(g + step / 2, j);
          }
          const auto av = vloadn<U>(a + j), bv = vloadn<U>(b + j), gv = vloadn<U>(g + j);
          const auto s = act::act_fwd<act::Sigmoid>(av);
          vputn<U>(da + j, gv * bv * s * (1.0f + av * (1.0f - s)), stream);
          vputn<U>(db + j, gv * av * s, stream);
        });
      }
      for (; j < h; ++j) {
        const A av = ld(a[j]), bv = ld(b[j]), gv = ld(g[j]);
        const A s = A(1) / (A(1) + std::exp(-av));
        da[j] = Num<T>::store(gv * bv * s * (A(1) + av * (A(1) - s)));
        db[j] = Num<T>::store(gv * av * s);
      }
    }
    if (stream) vstream_fence();
  });
}

}  // namespace

void softmax_backward(const View& dx, const View& y, const View& dy, int64_t outer, int64_t dim, int64_t inner,
                      bool log) {
  dispatch_float(dt(y), "softmax_backward",
                 [&](auto tag) { softmax_bw_typed<decltype(tag)>(dx, y, dy, outer, dim, inner, log); });
}

void rms_norm_backward(const View& dx, const View& dw, const View& x, const View& w, const View& rstd,
                       const View& dy) {
  dispatch_float(dt(x), "rms_norm_backward", [&](auto tag) {
    norm_bw_typed<decltype(tag)>(false, dx, dw, View{}, x, w, View{}, rstd, dy);
  });
}

void layer_norm_backward(const View& dx, const View& dw, const View& db, const View& x, const View& w,
                         const View& mean, const View& rstd, const View& dy) {
  dispatch_float(dt(x), "layer_norm_backward",
                 [&](auto tag) { norm_bw_typed<decltype(tag)>(true, dx, dw, db, x, w, mean, rstd, dy); });
}

void cross_entropy_backward(const View& dlogits, const View& logits, const View& targets, const View& lse,
                            const View& dloss, int32_t ignore_index, float smoothing) {
  const int64_t rows = logits.shape[0], C = logits.shape[1];
  const int32_t* t = static_cast<const int32_t*>(targets.data);
  for (int64_t r = 0; r < rows; ++r) {
    if (t[r] != ignore_index && (t[r] < 0 || t[r] >= C))
      fail(ErrorCode::Range, "cross_entropy_backward: target ", t[r], " at row ", r, " is outside [0, ", C, ")");
  }
  dispatch_float(dt(logits), "cross_entropy_backward", [&](auto tag) {
    cross_entropy_bw_typed<decltype(tag)>(dlogits, logits, t, lse, dloss, ignore_index, smoothing);
  });
}

void unary_backward(UnaryOp op, const View& dx, const View& x, const View& dy) {
  if (op == UnaryOp::LogicalNot) fail(ErrorCode::Value, "unary_backward: logicalNot has no gradient");
  dispatch_float(dt(x), "unary_backward", [&](auto tag) { unary_bw_typed<decltype(tag)>(op, dx, x, dy); });
}

void swiglu_backward(const View& dx, const View& x, const View& dy) {
  dispatch_float(dt(x), "swiglu_backward", [&](auto tag) { swiglu_bw_typed<decltype(tag)>(dx, x, dy); });
}

}  // namespace DR_ISA
}  // namespace cpu
}  // namespace dualroute
