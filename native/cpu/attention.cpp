// Fused attention (forward, backward, dual local+global forward) and RoPE on the CPU.
//
// Shapes and semantics are those of core/attention.h: q [B, Hq, Sq, D], k, v [B, Hkv, Sk, D],
// query head h reads kv head h / G (G = Hq / Hkv), query row i sits at position
// p = i + Sk - Sq, and every mask gives each row ONE interval of visible keys [lo, hi)
// (minus padded keys). float32 and bfloat16 compute in float (bf16 is widened on load),
// float64 in double; lse is float (double for float64).
//
// Layout: "queries in lanes". A query tile holds BM = 2 vectors of query rows (32 floats with
// AVX-512, 16 with AVX2, 8 with SSE; half as many doubles). Its Q is packed once, transposed
// and pre-scaled, as Qt[d][i]. A key chunk of up to BN keys then gives
//   St[j][i] = sum_d K[j][d] Qt[d][i]          (scores, transposed: key rows, query lanes)
//   Ot[d][i] = alpha_i Ot[d][i] + sum_j V[j][d] P[j][i]
// Both are the matmul micro-kernel shape (an MR x NB-vector register tile, one broadcast of
// the A operand per row, NB vector loads of B per k-step), and both read K and V straight
// from memory as broadcasts: no transpose of K is ever needed. Because the lanes are queries,
// the online softmax is vertical: the running max, sum and rescale of each query are lane
// operations across the chunk's key rows, with no horizontal reductions, and vexp runs on
// whole vectors. Ot is transposed back into out rows once per tile.
//
// Skipping: each tile visits only the hull of its rows' key intervals, in chunks of BN keys
// starting at the hull's first key. A chunk inside every row's interval and free of padding
// (the "core") takes no mask at all; other chunks get a per-lane interval compare. The cost
// is therefore (hull width) x BM per tile, i.e. it grows with the window, never with Sk.
// With window >= Sk the sliding hull and intervals equal the global ones exactly, so the
// arithmetic (and the result) is bit-identical to Global.
//
// Backward (FA2): P and dS are rebuilt from the saved lse per (query tile, key chunk), all as
// the same micro-kernel,
//   St = K Qt, dPt = V dOt, dSt = scale * P (dPt - Dr)       (key rows, query lanes)
//   dV[j] += sum_i P[j][i] dO[i]   dK[j] += sum_i dS[j][i] Q[i]  (rows of d in lanes)
//   dQtile[i] += sum_j dS[j][i] K[j]
// Every output element has one owning task, so accumulation is race-free and deterministic
// without atomics. Fused form: one task per (b, kv head) owns that head's dk/dv (a task-local
// [Sk, Dp] buffer, Dp = D padded to a vector, added once at the end) and the dq of its G
// query heads (query_index rows may repeat; they add sequentially within the task). When
// B x Hkv tasks cannot fill the pool, grouped heads are dealt out in chunks with private
// dK/dV partials summed afterwards in a fixed order (the heads form), and when even B x Hq
// cannot, the split form runs two passes: one over runs of keys (dK, dV) and one over query
// tiles (dQ), forming P and dS in both.
//
// Dual: one pass over the hull of the global path (or of the local path when no row of the
// tile is global). Each chunk's scores are computed once; chunks that touch the local hull
// feed the local accumulator with the local mask, and every chunk feeds the global one.
//
// Variants: the file is compiled per ISA (kernels.h); the vector width and the accumulator
// budget follow it (16 vector accumulators with AVX-512's 32 registers, 12 with 16).
// The S = K Qt products are specialised at compile time for head dims 32, 64 and 128 (the
// reduction loop is then of constant length); any other D runs the same code with a
// runtime length.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <type_traits>
#include <utility>
#include <vector>

#include "../core/attention.h"
#include "common.h"
#include "simd.h"

namespace dualroute {
namespace cpu {
namespace DR_ISA {
namespace {

template <typename C>
struct VT;
template <>
struct VT<float> {
  typedef float V __attribute__((vector_size(kVecBytes)));
  typedef int32_t I __attribute__((vector_size(kVecBytes)));
  typedef int32_t Is;
  static constexpr int L = kVecBytes / 4;
};
template <>
struct VT<double> {
  typedef double V __attribute__((vector_size(kVecBytes)));
  typedef int64_t I __attribute__((vector_size(kVecBytes)));
  typedef int64_t Is;
  static constexpr int L = kVecBytes / 8;
};

#if defined(__AVX512F__)
constexpr int kAcc = 16;  // accumulators per register tile (32 registers)
#else
constexpr int kAcc = 12;  // 16 registers: 12 accumulators, B vectors and a broadcast
#endif
constexpr int kNVQ = 2;  // vectors of query lanes per tile
constexpr int kBN = 64;  // keys per chunk

// One broadcast instruction (an initializer of identical lanes), not an add to zero.
template <typename V, typename S, size_t... k>
inline V splat_impl(S x, std::index_sequence<k...>) {
  return V{((void)k, x)...};
}
template <typename V, typename S>
inline V splat(S x) {
  return splat_impl<V>(x, std::make_index_sequence<sizeof(V) / sizeof(S)>{});
}

template <typename C>
inline typename VT<C>::V ldv(const C* p) {
  typename VT<C>::V v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}
template <typename C>
inline void stv(C* p, typename VT<C>::V v) {
  std::memcpy(p, &v, sizeof(v));
}
template <typename C>
inline typename VT<C>::I ldi(const typename VT<C>::Is* p) {
  typename VT<C>::I v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

// e^x for the exponents attention takes (x <= 0 but for rounding: a score minus its row's max
// or lse; -inf for masked keys; NaN): 2^(x log2 e) with n = round(x log2 e) by the shifter
// trick, whose bits also hold n + 127 (so a shift makes 2^n), f = x log2 e - n in [-1/2, 1/2]
// by one fused multiply-add, and 2^f by a degree-6 fit (relative error under 1e-7 in float
// arithmetic). x is clamped below at -127 ln 2, where n + 127 = 0 makes the factor 2^n exactly
// 0: -inf and everything under about -87.7 give 0. NaN stays NaN. No overflow handling:
// x must stay under 88 (invisible lanes of the backward may exceed it; their results are
// selected away). 13 vector instructions against vexp_softmax's ~20.
inline VT<float>::V vexp_sm(VT<float>::V x) {
  using V = VT<float>::V;
  using I = VT<float>::I;
  const V lo = splat<V>(-88.02969193111305f), sh = splat<V>(12582912.0f + 127.0f);
  const V log2e = splat<V>(1.44269504088896341f);
  const V xc = x < lo ? lo : x;  // NaN compares false and stays
  const V t = xc * log2e + sh;
  const V n = t - sh;
  const V f = xc * log2e - n;
  V p = splat<V>(1.534578768769279e-4f);
  p = p * f + 1.3399930903688073e-3f;
  p = p * f + 9.618489071726799e-3f;
  p = p * f + 5.550328642129898e-2f;
  p = p * f + 2.4022646248340607e-1f;
  p = p * f + 6.931471824645996e-1f;
  p = p * f + 1.0f;
  I e;
  std::memcpy(&e, &t, sizeof(e));
  e <<= 23;
  V sc;
  std::memcpy(&sc, &e, sizeof(sc));
  return p * sc;
}
// float64 attention: libm's exp lane by lane.
inline VT<double>::V vexp_sm(VT<double>::V x) {
  for (int i = 0; i < VT<double>::L; ++i) x[i] = std::exp(x[i]);
  return x;
}


#if defined(__AVX__)
// The transpose of 8 rows of 8 floats, in place (r[k] becomes column k).
inline void transpose8(__m256* r) {
  const __m256 t0 = _mm256_unpacklo_ps(r[0], r[1]), t1 = _mm256_unpackhi_ps(r[0], r[1]);
  const __m256 t2 = _mm256_unpacklo_ps(r[2], r[3]), t3 = _mm256_unpackhi_ps(r[2], r[3]);
  const __m256 t4 = _mm256_unpacklo_ps(r[4], r[5]), t5 = _mm256_unpackhi_ps(r[4], r[5]);
  const __m256 t6 = _mm256_unpacklo_ps(r[6], r[7]), t7 = _mm256_unpackhi_ps(r[6], r[7]);
  const __m256 u0 = _mm256_shuffle_ps(t0, t2, 0x44), u1 = _mm256_shuffle_ps(t0, t2, 0xee);
  const __m256 u2 = _mm256_shuffle_ps(t1, t3, 0x44), u3 = _mm256_shuffle_ps(t1, t3, 0xee);
  const __m256 u4 = _mm256_shuffle_ps(t4, t6, 0x44), u5 = _mm256_shuffle_ps(t4, t6, 0xee);
  const __m256 u6 = _mm256_shuffle_ps(t5, t7, 0x44), u7 = _mm256_shuffle_ps(t5, t7, 0xee);
  r[0] = _mm256_permute2f128_ps(u0, u4, 0x20);
  r[1] = _mm256_permute2f128_ps(u1, u5, 0x20);
  r[2] = _mm256_permute2f128_ps(u2, u6, 0x20);
  r[3] = _mm256_permute2f128_ps(u3, u7, 0x20);
  r[4] = _mm256_permute2f128_ps(u0, u4, 0x31);
  r[5] = _mm256_permute2f128_ps(u1, u5, 0x31);
  r[6] = _mm256_permute2f128_ps(u2, u6, 0x31);
  r[7] = _mm256_permute2f128_ps(u3, u7, 0x31);
}

// out[k * ld + i] = sc * row[i][d0 + k] for an 8 x 8 block (with kNull, a null row gives zeros):
// 8 rows scaled and transposed in registers into 8 columns of a column-major tile (pack_qt,
// pack_kt; the test per row costs pack_kt's every-row-present case ~1% of a segment forward's
// instructions, hence the flag).
template <bool kNull>
inline void scaled_t8(const float* const* row, int64_t d0, __m256 sc, float* out, int64_t ld) {
  __m256 x[8];
  for (int i = 0; i < 8; ++i)
    x[i] = !kNull || row[i] ? _mm256_mul_ps(sc, _mm256_loadu_ps(row[i] + d0)) : _mm256_setzero_ps();
  transpose8(x);
  for (int k = 0; k < 8; ++k) _mm256_storeu_ps(out + k * ld, x[k]);
}
#endif

template <typename T>
inline typename Num<T>::acc wid(T v) {
  return Num<T>::load(v);
}

enum Mode { kSet = 0, kAdd = 1, kScaleAdd = 2, kRowScaleAdd = 3 };

constexpr int mr_for(int nb) { return kAcc / nb > 0 ? kAcc / nb : 1; }

// Row addressing for the micro-kernel's B and C: rows `ld` apart from `base`, or rows by
// pointer (query rows of a segment tile, read or accumulated in place: no copy into the tile),
// from column `o`.
template <typename P>
struct RowsAt {
  P* base;
  int64_t ld;
  P* operator[](int64_t r) const { return base + r * ld; }
  RowsAt at(int64_t r, int64_t o) const { return {base + r * ld + o, ld}; }
};
template <typename P>
struct RowsBy {
  P* const* rows;
  int64_t o;
  P* operator[](int64_t r) const { return rows[r] + o; }
  RowsBy at(int64_t r, int64_t o2) const { return {rows + r, o + o2}; }
};

// C[m][n] (mode) sum_k A(m, k) B[k][n] for an MR x NB-vector tile. A(m, k) = a[m*am + k*ak]
// is broadcast, so A may be any strided view (a row-major K, a transposed P); B rows b[k] and C
// rows c[m] are vectors (RowsAt or RowsBy). kScaleAdd first multiplies C by cs[n] (the
// online-softmax rescale of query lanes), kRowScaleAdd by cs[m] (of query rows; cs then indexes
// this tile's rows).
template <typename C, int MR, int NB, int KC, class BR, class CR>
inline void mk_at(int64_t Kr, const C* a, int64_t am, int64_t ak, BR b, CR c, int mode, const C* cs) {
  using V = typename VT<C>::V;
  constexpr int L = VT<C>::L;
  const int64_t K = KC ? KC : Kr;
  V acc[MR][NB];
  if (mode == kSet) {
#pragma GCC unroll 16
    for (int m = 0; m < MR; ++m)
#pragma GCC unroll 4
      for (int n = 0; n < NB; ++n) acc[m][n] = V{};
  } else {
    V s[NB];
#pragma GCC unroll 4
    for (int n = 0; n < NB; ++n) s[n] = mode == kScaleAdd ? ldv(cs + n * L) : splat<V>(C(1));
#pragma GCC unroll 16
    for (int m = 0; m < MR; ++m)
#pragma GCC unroll 4
      for (int n = 0; n < NB; ++n) {
        acc[m][n] = ldv(c[m] + n * L);
        if (mode == kScaleAdd) acc[m][n] *= s[n];
        if (mode == kRowScaleAdd) acc[m][n] *= splat<V>(cs[m]);
      }
  }
  for (int64_t k = 0; k < K; ++k) {
    V bv[NB];
    const C* bk = b[k];
#pragma GCC unroll 4
    for (int n = 0; n < NB; ++n) bv[n] = ldv(bk + n * L);
    const C* ak_ = a + k * ak;
#pragma GCC unroll 16
    for (int m = 0; m < MR; ++m) {
      const V av = splat<V>(ak_[m * am]);
#pragma GCC unroll 4
      for (int n = 0; n < NB; ++n) acc[m][n] += av * bv[n];
    }
  }
#pragma GCC unroll 16
  for (int m = 0; m < MR; ++m)
#pragma GCC unroll 4
    for (int n = 0; n < NB; ++n) stv(c[m] + n * L, acc[m][n]);
}

// mk_at over row-major B and C (rows ldb and ldc apart).
template <typename C, int MR, int NB, int KC>
inline void mk(int64_t Kr, const C* a, int64_t am, int64_t ak, const C* b, int64_t ldb, C* c, int64_t ldc,
               int mode, const C* cs) {
  mk_at<C, MR, NB, KC>(Kr, a, am, ak, RowsAt<const C>{b, ldb}, RowsAt<C>{c, ldc}, mode, cs);
}

template <typename C, int NB, int KC, int R>
inline void mk_tail(int r, int64_t K, const C* a, int64_t am, int64_t ak, const C* b, int64_t ldb, C* c,
                    int64_t ldc, int mode, const C* cs) {
  if constexpr (R >= 1) {
    if (r == R) return mk<C, R, NB, KC>(K, a, am, ak, b, ldb, c, ldc, mode, cs);
    mk_tail<C, NB, KC, R - 1>(r, K, a, am, ak, b, ldb, c, ldc, mode, cs);
  }
}

// All M rows for NB vectors of columns.
template <typename C, int NB, int KC>
void gemm_nb(int64_t M, int64_t K, const C* a, int64_t am, int64_t ak, const C* b, int64_t ldb, C* c, int64_t ldc,
             int mode, const C* cs) {
  constexpr int MR = mr_for(NB);
  int64_t m = 0;
  const bool rows = mode == kRowScaleAdd;
  for (; m + MR <= M; m += MR)
    mk<C, MR, NB, KC>(K, a + m * am, am, ak, b, ldb, c + m * ldc, ldc, mode, rows ? cs + m : cs);
  if (m < M)
    mk_tail<C, NB, KC, MR - 1>(static_cast<int>(M - m), K, a + m * am, am, ak, b, ldb, c + m * ldc, ldc, mode,
                               rows ? cs + m : cs);
}

// The micro-kernel with rows given by pointers: A(m, k) = ar[m][k] (broadcast) and C row m at
// cr[m] + co, so gathered rows (the query rows of a segment, their accumulators in a task's
// scratch) take part in place, without being copied into a tile. Modes kSet and kRowScaleAdd.
template <typename C, int MR, int NB, int KC>
inline void mkp(int64_t Kr, const C* const* ar, const C* b, int64_t ldb, C* const* cr, int64_t co, int mode,
                const C* cs) {
  using V = typename VT<C>::V;
  constexpr int L = VT<C>::L;
  const int64_t K = KC ? KC : Kr;
  V acc[MR][NB];
  const C* a[MR];
#pragma GCC unroll 16
  for (int m = 0; m < MR; ++m) {
    a[m] = ar[m];
#pragma GCC unroll 4
    for (int n = 0; n < NB; ++n)
      acc[m][n] = mode == kSet ? V{} : ldv(cr[m] + co + n * L) * splat<V>(cs[m]);
  }
  for (int64_t k = 0; k < K; ++k) {
    V bv[NB];
#pragma GCC unroll 4
    for (int n = 0; n < NB; ++n) bv[n] = ldv(b + k * ldb + n * L);
#pragma GCC unroll 16
    for (int m = 0; m < MR; ++m) {
      const V av = splat<V>(a[m][k]);
#pragma GCC unroll 4
      for (int n = 0; n < NB; ++n) acc[m][n] += av * bv[n];
    }
  }
#pragma GCC unroll 16
  for (int m = 0; m < MR; ++m)
#pragma GCC unroll 4
    for (int n = 0; n < NB; ++n) stv(cr[m] + co + n * L, acc[m][n]);
}

template <typename C, int NB, int KC, int R>
inline void mkp_tail(int r, int64_t K, const C* const* ar, const C* b, int64_t ldb, C* const* cr, int64_t co,
                     int mode, const C* cs) {
  if constexpr (R >= 1) {
    if (r == R) return mkp<C, R, NB, KC>(K, ar, b, ldb, cr, co, mode, cs);
    mkp_tail<C, NB, KC, R - 1>(r, K, ar, b, ldb, cr, co, mode, cs);
  }
}

// gemm() over pointer rows: M rows, NV column vectors (groups of at most 4), K steps.
template <typename C, int KC>
void gemm_rows(int64_t M, int64_t NV, int64_t K, const C* const* ar, const C* b, int64_t ldb, C* const* cr, int mode,
               const C* cs = nullptr) {
  constexpr int L = VT<C>::L;
  for (int64_t n0 = 0; n0 < NV;) {
    const int64_t left = NV - n0;
    const int nb = left >= 4 ? 4 : static_cast<int>(left);
    const int64_t o = n0 * L;
    auto run = [&](auto nbc) {
      constexpr int NB = decltype(nbc)::value, MR = mr_for(NB);
      int64_t m = 0;
      for (; m + MR <= M; m += MR) mkp<C, MR, NB, KC>(K, ar + m, b + o, ldb, cr + m, o, mode, cs ? cs + m : cs);
      if (m < M)
        mkp_tail<C, NB, KC, MR - 1>(static_cast<int>(M - m), K, ar + m, b + o, ldb, cr + m, o, mode,
                                    cs ? cs + m : cs);
    };
    switch (nb) {
      case 4: run(std::integral_constant<int, 4>{}); break;
      case 3: run(std::integral_constant<int, 3>{}); break;
      case 2: run(std::integral_constant<int, 2>{}); break;
      default: run(std::integral_constant<int, 1>{}); break;
    }
    n0 += nb;
  }
}

// Any number NV of column vectors, cut into groups of at most 4.
template <typename C>
void gemm(int64_t M, int64_t NV, int64_t K, const C* a, int64_t am, int64_t ak, const C* b, int64_t ldb, C* c,
          int64_t ldc, int mode, const C* cs = nullptr) {
  constexpr int L = VT<C>::L;
  if (M <= 0) return;
  for (int64_t n0 = 0; n0 < NV;) {
    const int64_t left = NV - n0;
    const int nb = left >= 4 ? 4 : static_cast<int>(left);
    const int64_t o = n0 * L;
    const C* cso = cs ? (mode == kRowScaleAdd ? cs : cs + o) : nullptr;
    switch (nb) {
      case 4: gemm_nb<C, 4, 0>(M, K, a, am, ak, b + o, ldb, c + o, ldc, mode, cso); break;
      case 3: gemm_nb<C, 3, 0>(M, K, a, am, ak, b + o, ldb, c + o, ldc, mode, cso); break;
      case 2: gemm_nb<C, 2, 0>(M, K, a, am, ak, b + o, ldb, c + o, ldc, mode, cso); break;
      default: gemm_nb<C, 1, 0>(M, K, a, am, ak, b + o, ldb, c + o, ldc, mode, cso); break;
    }
    n0 += nb;
  }
}

// Visible key interval [lo, hi) of a query at position p (padding aside).
inline void key_interval(const AttnArgs& a, int32_t mask, int64_t p, int64_t& lo, int64_t& hi) {
  const int64_t Sk = a.Sk, w = a.window;
  const bool causal = a.causal != 0;
  if (mask == static_cast<int32_t>(AttnMask::Sliding)) {
    lo = std::max<int64_t>(0, p - w + 1);
    hi = causal ? std::min(Sk, p + 1) : std::min(Sk, p + w);
  } else if (mask == static_cast<int32_t>(AttnMask::Block)) {
    const int64_t q = p >= 0 ? p / w : -((-p + w - 1) / w);  // floor division
    lo = std::max<int64_t>(0, q * w);
    hi = std::min(Sk, q * w + w);
    if (causal) hi = std::min(hi, p + 1);
  } else {
    lo = 0;
    hi = causal ? std::min(Sk, p + 1) : Sk;
  }
  if (hi < lo) hi = lo;
}

// Per-tile key geometry: per-lane intervals, their hull and their common core.
template <typename C>
struct Lanes {
  static constexpr int L = VT<C>::L, BM = L * kNVQ;
  typename VT<C>::Is lo[BM], hi[BM];
  int64_t hull_lo, hull_hi, core_lo, core_hi;
  // Lanes with valid == false take no part in the hull or core (their results are dropped).
  void finish(const bool* valid) {
    hull_lo = INT64_MAX;
    hull_hi = INT64_MIN;
    core_lo = INT64_MIN;
    core_hi = INT64_MAX;
    for (int i = 0; i < BM; ++i) {
      if (!valid[i]) continue;
      if (lo[i] < hi[i]) {
        hull_lo = std::min<int64_t>(hull_lo, lo[i]);
        hull_hi = std::max<int64_t>(hull_hi, hi[i]);
      }
      core_lo = std::max<int64_t>(core_lo, lo[i]);
      core_hi = std::min<int64_t>(core_hi, hi[i]);
    }
    if (hull_lo >= hull_hi) hull_lo = hull_hi = 0;
  }
  bool full(int64_t j0, int64_t nk, const uint8_t* pad) const {
    if (!(j0 >= core_lo && j0 + nk <= core_hi)) return false;
    if (pad)
      for (int64_t j = 0; j < nk; ++j)
        if (pad[j0 + j]) return false;
    return true;
  }
};

// St[j][lanes] = fillv (-inf) where key j0 + j is not visible to the lane or is padding, for
// the lanes of vector groups [g0, g1).
template <typename C>
void apply_mask(C* St, int64_t nk, int64_t j0, const Lanes<C>& ln, const uint8_t* pad, C fillv, int g0 = 0,
                int g1 = kNVQ) {
  using V = typename VT<C>::V;
  using I = typename VT<C>::I;
  using Is = typename VT<C>::Is;
  constexpr int L = VT<C>::L, BM = Lanes<C>::BM;
  const V fill = splat<V>(fillv);
  I lo[kNVQ], hi[kNVQ];
  for (int g = g0; g < g1; ++g) {
    lo[g] = ldi<C>(ln.lo + g * L);
    hi[g] = ldi<C>(ln.hi + g * L);
  }
  for (int64_t j = 0; j < nk; ++j) {
    C* row = St + j * BM;
    if (pad && pad[j0 + j]) {
      for (int g = g0; g < g1; ++g) stv(row + g * L, fill);
      continue;
    }
    const I jv = splat<I>(static_cast<Is>(j0 + j));
    for (int g = g0; g < g1; ++g) {
      const I vis = (jv >= lo[g]) & (jv < hi[g]);
      stv(row + g * L, vis ? ldv(row + g * L) : fill);
    }
  }
}

// Online-softmax step over a chunk of scores St (masked entries -inf): updates the running
// max m and sum l per lane, overwrites St with P = exp(St - m_new) and leaves the rescale
// factor of the old accumulator in alpha. A lane that has seen only -inf keeps m = -inf and
// subtracts 0 instead, so that exp gives 0 rather than NaN. The max skips NaN scores; their P
// is NaN, which makes the lane's l and output NaN (and its lse, from l), as the materialised
// softmax does; a lane whose visible keys all score -inf ends with l = 0, which the
// finalisation turns into NaN. The max and the sum each run four independent chains (one
// chain over a chunk's keys is bound by the latency of its max or add, not by throughput).
// Only the lanes of vector groups [g0, g1) are read and updated.
template <typename C>
void softmax_step(C* St, int64_t nk, C* m, C* l, C* alpha, int g0 = 0, int g1 = kNVQ) {
  using V = typename VT<C>::V;
  constexpr int L = VT<C>::L, BM = Lanes<C>::BM;
  const V ninf = splat<V>(-std::numeric_limits<C>::infinity());
  for (int g = g0; g < g1; ++g) {
    C* col = St + g * L;
    V m0 = ninf, m1 = ninf, m2 = ninf, m3 = ninf;
    int64_t j = 0;
    for (; j + 4 <= nk; j += 4) {
      const V s0 = ldv(col + j * BM), s1 = ldv(col + (j + 1) * BM), s2 = ldv(col + (j + 2) * BM),
              s3 = ldv(col + (j + 3) * BM);
      m0 = s0 > m0 ? s0 : m0;
      m1 = s1 > m1 ? s1 : m1;
      m2 = s2 > m2 ? s2 : m2;
      m3 = s3 > m3 ? s3 : m3;
    }
    for (; j < nk; ++j) {
      const V s0 = ldv(col + j * BM);
      m0 = s0 > m0 ? s0 : m0;
    }
    m0 = m1 > m0 ? m1 : m0;
    m2 = m3 > m2 ? m3 : m2;
    const V mx = m2 > m0 ? m2 : m0;
    const V mo = ldv(m + g * L);
    const V mn = mx > mo ? mx : mo;
    const V mu = mn == ninf ? V{} : mn;
    stv(alpha + g * L, vexp_sm(mo - mu));
    V a0 = V{}, a1 = V{}, a2 = V{}, a3 = V{};
    j = 0;
    for (; j + 4 <= nk; j += 4) {
      const V e0 = vexp_sm(ldv(col + j * BM) - mu), e1 = vexp_sm(ldv(col + (j + 1) * BM) - mu);
      const V e2 = vexp_sm(ldv(col + (j + 2) * BM) - mu), e3 = vexp_sm(ldv(col + (j + 3) * BM) - mu);
      stv(col + j * BM, e0);
      stv(col + (j + 1) * BM, e1);
      stv(col + (j + 2) * BM, e2);
      stv(col + (j + 3) * BM, e3);
      a0 += e0;
      a1 += e1;
      a2 += e2;
      a3 += e3;
    }
    for (; j < nk; ++j) {
      const V e0 = vexp_sm(ldv(col + j * BM) - mu);
      stv(col + j * BM, e0);
      a0 += e0;
    }
    stv(l + g * L, ldv(l + g * L) * ldv(alpha + g * L) + ((a0 + a1) + (a2 + a3)));
    stv(m + g * L, mn);
  }
}

// True when some element of rows x cols (row stride ld) is NaN or infinite: the largest
// magnitude bit pattern reaches the exponent's all-ones (an integer max, which vectorises).
template <typename C>
bool any_nonfinite(const C* x, int64_t rows, int64_t cols, int64_t ld) {
  using U = typename std::conditional<sizeof(C) == 4, uint32_t, uint64_t>::type;
  constexpr U kAbs = ~U(0) >> 1;
  constexpr U kExp = sizeof(C) == 4 ? U(0x7f800000u) : U(0x7ff0000000000000ull);
  U mx = 0;
  for (int64_t r = 0; r < rows; ++r) {
    const C* row = x + r * ld;
    for (int64_t c = 0; c < cols; ++c) {
      U b;
      std::memcpy(&b, row + c, sizeof(b));
      b &= kAbs;
      mx = b > mx ? b : mx;
    }
  }
  return mx >= kExp;
}

// rows_nonfinite: any_nonfinite over rows of D stored values (bfloat16 by its bits).
template <typename T>
bool rows_nonfinite(const T* x, int64_t rows, int64_t D) {
  if constexpr (std::is_same<T, bf16>::value) {
    uint16_t mx = 0;
    for (int64_t e = 0; e < rows * D; ++e) {
      const uint16_t b = x[e].bits & 0x7fffu;
      mx = b > mx ? b : mx;
    }
    return mx >= 0x7f80u;
  } else {
    return any_nonfinite(x, rows, D, D);
  }
}

// Whether the k or v rows of a kv head hold a NaN or an infinity, per block of kBN keys aligned
// to kBN. A masked product must not multiply a hidden non-finite value by P = 0, so every
// masked chunk asks; each block is scanned the first time one does and the answer kept for the
// call (a race scans it twice and stores the same answer). A block is scanned at most once
// however many tiles' edge chunks cover it (local attention's tiles share each key chunk with
// W / BM others), and blocks no masked chunk reaches are never scanned (decoding).
template <typename T>
class FiniteBlocks {
 public:
  // heads: B * Hkv kv heads of Sk rows of D at head_stride elements apart
  FiniteBlocks(const void* base, int64_t heads, int64_t head_stride, int64_t Sk, int64_t D)
      : base_(static_cast<const T*>(base)),
        hs_(head_stride),
        Sk_(Sk),
        D_(D),
        nb_((Sk + kBN - 1) / kBN),
        s_(new std::atomic<uint8_t>[static_cast<size_t>(std::max<int64_t>(1, heads * nb_))]) {
    for (int64_t x = 0; x < heads * nb_; ++x) s_[x].store(0, std::memory_order_relaxed);
  }
  // keys [j0, j0 + nk) of kv head bk (= b * Hkv + kv head)
  bool bad(int64_t bk, int64_t j0, int64_t nk) const {
    bool any = false;
    for (int64_t x = j0 / kBN; x * kBN < j0 + nk; ++x) {
      std::atomic<uint8_t>& st = s_[bk * nb_ + x];
      uint8_t v = st.load(std::memory_order_relaxed);
      if (v == 0) {
        const int64_t r0 = x * kBN, r1 = std::min(Sk_, r0 + kBN);
        v = rows_nonfinite<T>(base_ + bk * hs_ + r0 * D_, r1 - r0, D_) ? 2 : 1;
        st.store(v, std::memory_order_relaxed);
      }
      any = any || v == 2;
    }
    return any;
  }

 private:
  const T* base_;
  int64_t hs_, Sk_, D_, nb_;
  std::unique_ptr<std::atomic<uint8_t>[]> s_;
};

// Whether lane i of a tile sees key j (its interval, and not padding).
template <typename C>
inline bool lane_sees(const Lanes<C>& ln, int i, int64_t j, const uint8_t* pad) {
  return j >= ln.lo[i] && j < ln.hi[i] && !(pad && pad[j]);
}

// Ot = alpha Ot + V^T P for a masked chunk whose V rows hold a NaN or an infinity: each lane
// adds only the keys it sees. (The product over the whole chunk would add 0 * NaN = NaN from
// keys a lane cannot see: values must never leak into queries that do not attend to them.)
template <typename C>
void pv_visible(int64_t D, int64_t nk, const C* Vc, int64_t ldv_, const C* P, C* Ot, const C* alpha, int64_t j0,
                const Lanes<C>& ln, const uint8_t* pad, int g0 = 0, int g1 = kNVQ) {
  constexpr int BM = Lanes<C>::BM, L = VT<C>::L;
  for (int64_t d = 0; d < D; ++d)
    for (int i = g0 * L; i < g1 * L; ++i) Ot[d * BM + i] *= alpha[i];
  for (int64_t j = 0; j < nk; ++j)
    for (int i = g0 * L; i < g1 * L; ++i) {
      if (!lane_sees(ln, i, j0 + j, pad)) continue;
      const C p = P[j * BM + i];
      for (int64_t d = 0; d < D; ++d) Ot[d * BM + i] += p * Vc[j * ldv_ + d];
    }
}

// Ot = alpha Ot + V^T P over a chunk: the micro-kernel product, or pv_visible when the chunk
// is masked and its values are not all finite (visible_only: the caller's FiniteBlocks answer).
// One_group >= 0: only that vector group of lanes (the tile's other lanes see none of the keys).
template <typename C>
void pv_chunk(bool visible_only, int64_t D, int64_t nk, const C* Vc, int64_t ldv_, const C* P, C* Ot, const C* alpha,
              int64_t j0, const Lanes<C>& ln, const uint8_t* pad, int one_group = -1) {
  constexpr int BM = Lanes<C>::BM, L = VT<C>::L;
  if (one_group >= 0) {
    const int g = one_group;
    if (visible_only) return pv_visible<C>(D, nk, Vc, ldv_, P, Ot, alpha, j0, ln, pad, g, g + 1);
    return gemm_nb<C, 1, 0>(D, nk, Vc, 1, ldv_, P + g * L, BM, Ot + g * L, BM, kScaleAdd, alpha + g * L);
  }
  if (visible_only) return pv_visible<C>(D, nk, Vc, ldv_, P, Ot, alpha, j0, ln, pad);
  gemm_nb<C, kNVQ, 0>(D, nk, Vc, 1, ldv_, P, BM, Ot, BM, kScaleAdd, alpha);
}

// Per batch, the count of padded keys before each key (Sk + 1 entries per batch): a row has a
// visible key when its interval holds fewer padded keys than keys.
struct PadCount {
  std::vector<int32_t> c;
  int64_t Sk = 0;
  PadCount(const AttnArgs& a) : Sk(a.Sk) {
    if (!a.key_padding) return;
    c.resize(static_cast<size_t>(a.B * (Sk + 1)));
    for (int64_t b = 0; b < a.B; ++b) {
      int32_t* o = c.data() + b * (Sk + 1);
      o[0] = 0;
      for (int64_t j = 0; j < Sk; ++j) o[j + 1] = o[j] + (a.key_padding[b * Sk + j] != 0);
    }
  }
  bool has_key(int64_t b, int64_t lo, int64_t hi) const {
    if (hi <= lo) return false;
    if (c.empty()) return true;
    const int32_t* o = c.data() + b * (Sk + 1);
    return o[hi] - o[lo] < hi - lo;
  }
};

// A query row's factor on its accumulated Ot and its lse, from its softmax state: no visible
// key gives factor 0 (Ot is 0 then) and lse -inf; otherwise out = Ot / l and lse = m + log l,
// where l = 0 (every visible score -inf) or NaN gives NaN, as the materialised softmax does.
template <typename C>
inline C row_inv(bool has_key, C l) {
  return !has_key ? C(0) : l > 0 ? C(1) / l : std::numeric_limits<C>::quiet_NaN();
}
template <typename C>
inline C row_lse(bool has_key, C m, C l) {
  return !has_key ? -std::numeric_limits<C>::infinity() : l > 0 ? m + std::log(l) : std::numeric_limits<C>::quiet_NaN();
}
template <typename T, typename C>
void finish_row(bool has_key, int64_t D, const C* Ot, int64_t ld, C m, C l, T* o, C* lse) {
  const C inv = row_inv(has_key, l);
  for (int64_t d = 0; d < D; ++d) o[d] = Num<T>::store(has_key ? Ot[d * ld] * inv : C(0));
  if (lse) *lse = row_lse(has_key, m, l);
}

// R (BM rows of D) = the transpose of a tile's Ot (D x BM), in L1: the rows of out are then
// written with whole-vector stores (one scalar store per element into memory that is not yet
// cached fills the store queue while the lines are fetched for ownership).
template <typename C>
void tile_rows(const C* Ot, int64_t D, C* R) {
  constexpr int BM = Lanes<C>::BM;
  for (int64_t d = 0; d < D; ++d)
    for (int i = 0; i < BM; ++i) R[i * D + d] = Ot[d * BM + i];
}

// Qt[d * BM + i] = scale * (row qrow[i] of qh), zeros where qrow[i] < 0. float rows of a
// multiple of 8 move as vectors, transposed 8 x 8 in registers: element by element, a tile's
// BM x D values are as many scalar stores, which cost a window-256 tile ~5% of its time.
template <typename T>
void pack_qt(int64_t D, typename Num<T>::acc scale, const T* qh, const int64_t* qrow, typename Num<T>::acc* Qt) {
  using C = typename Num<T>::acc;
  constexpr int BM = Lanes<C>::BM;
#if defined(__AVX__)
  if constexpr (std::is_same<T, float>::value && BM % 8 == 0) {
    if (D % 8 == 0) {
      const __m256 sc = _mm256_set1_ps(scale);
      for (int g0 = 0; g0 < BM; g0 += 8) {
        const float* rows[8];
        for (int i = 0; i < 8; ++i) rows[i] = qrow[g0 + i] >= 0 ? qh + qrow[g0 + i] * D : nullptr;
        for (int64_t d0 = 0; d0 < D; d0 += 8) scaled_t8<true>(rows, d0, sc, Qt + d0 * BM + g0, BM);
      }
      return;
    }
  }
#endif
  // lane by lane: each query row is read in order (a row is a stream the prefetcher follows)
  for (int i = 0; i < BM; ++i) {
    if (qrow[i] < 0) {
      for (int64_t d = 0; d < D; ++d) Qt[d * BM + i] = C(0);
      continue;
    }
    const T* qr = qh + qrow[i] * D;
    for (int64_t d = 0; d < D; ++d) Qt[d * BM + i] = scale * wid(qr[d]);
  }
}

// The rows of a finished tile: out row orow[i] = inv[i] * column i of Ot (D x BM), or zeros
// where has[i] is false (a row with no visible key); rows with orow[i] == nullptr are not
// written. float rows of a multiple of 8 are transposed 8 x 8 in registers and stored as
// vectors; other types go through the transposed rows in R (BM x D scratch).
template <typename T>
void store_tile(const typename Num<T>::acc* Ot, int64_t D, const typename Num<T>::acc* inv, const bool* has,
                T* const* orow, typename Num<T>::acc* R) {
  using C = typename Num<T>::acc;
  constexpr int BM = Lanes<C>::BM;
#if defined(__AVX__)
  if constexpr (std::is_same<T, float>::value && BM % 8 == 0) {
    if (D % 8 == 0) {
      for (int g0 = 0; g0 < BM; g0 += 8)
        for (int64_t d0 = 0; d0 < D; d0 += 8) {
          __m256 x[8];
          for (int k = 0; k < 8; ++k) x[k] = _mm256_loadu_ps(Ot + (d0 + k) * BM + g0);
          transpose8(x);
          for (int i = 0; i < 8; ++i) {
            T* o = orow[g0 + i];
            if (!o) continue;
            const __m256 y = has[g0 + i] ? _mm256_mul_ps(x[i], _mm256_set1_ps(inv[g0 + i])) : _mm256_setzero_ps();
            _mm256_storeu_ps(o + d0, y);
          }
        }
      return;
    }
  }
#endif
  tile_rows<C>(Ot, D, R);
  for (int i = 0; i < BM; ++i) {
    T* o = orow[i];
    if (!o) continue;
    for (int64_t d = 0; d < D; ++d) o[d] = Num<T>::store(has[i] ? R[i * D + d] * inv[i] : C(0));
  }
}

// St (nk x BM) = Kc (nk x D, row stride ldk) times Qt (D x BM), with D fixed when DC > 0.
template <typename C, int DC>
inline void scores(int64_t nk, int64_t D, const C* Kc, int64_t ldk, const C* Qt, C* St) {
  constexpr int BM = Lanes<C>::BM;
  gemm_nb<C, kNVQ, DC>(nk, D, Kc, ldk, 1, Qt, BM, St, BM, kSet, nullptr);
}

// Scratch growable per worker.
template <typename C>
struct Buf {
  std::vector<C> v;
  C* get(size_t n) {
    if (v.size() < n) v.resize(n);
    return v.data();
  }
};

// A backward task's dK / dV accumulator rows (slot 0, 1), of n values that the caller zeroes:
// kept by the thread from call to call while they stay under kKeepRows bytes, larger ones in
// the task's own scratch (fallback). Buffers of a few MiB freed after every call come back from
// the kernel as fresh pages, each faulted in and zeroed on first touch: ~14% of a window-256
// backward on these virtual machines.
constexpr size_t kKeepRows = size_t(16) << 20;
template <typename C, int Slot>
C* kept_rows(size_t n, Buf<C>& fallback) {
  if (n * sizeof(C) > kKeepRows) return fallback.get(n);
  static thread_local std::vector<C> v;
  if (v.size() < n) v.resize(n);
  return v.data();
}

// Hands tasks out from a shared counter, grain consecutive tasks at a time; each worker makes
// its scratch once, then calls fn(t, scratch) per task. A grain above 1 suits tasks of equal
// cost whose neighbours share data (a sliding window's tiles: the next tile's keys are this
// one's, still in this core's cache, and its query rows follow this tile's in memory).
template <typename W, typename F>
void run_tasks(int64_t ntasks, const F& fn, int64_t grain = 1) {
  const int threads = num_threads();
  if (threads <= 1 || ntasks <= 1) {
    W w;
    for (int64_t t = 0; t < ntasks; ++t) fn(t, w);
    return;
  }
  grain = std::max<int64_t>(1, grain);
  std::atomic<int64_t> next{0};
  parallel_for(std::min<int64_t>(threads, (ntasks + grain - 1) / grain), 1, [&](int64_t, int64_t) {
    W w;
    for (int64_t t0 = next.fetch_add(grain); t0 < ntasks; t0 = next.fetch_add(grain))
      for (int64_t t = t0; t < std::min(ntasks, t0 + grain); ++t) fn(t, w);
  });
}

void check_query_index(const AttnArgs& a) {
  if (!a.query_index) return;
  for (int64_t b = 0; b < a.B; ++b)
    for (int64_t r = 0; r < a.n; ++r) {
      if (!attn_row_valid(a, b, r)) continue;  // ragged padding: never read
      const int64_t v = a.query_index[b * a.n + r];
      if (v < 0 || v >= a.Sq)
        fail(ErrorCode::Range, "attention: query_index ", v, " at [", b, ", ", r, "] is outside [0, ", a.Sq, ")");
    }
}

// The q rows of query head bh = b * Hq + h, and the k, v rows and padding flags of its kv head.
template <typename T>
struct HeadRows {
  const T *q, *k, *v;
  const uint8_t* pad;
};
template <typename T>
HeadRows<T> head_rows(const AttnArgs& a, int64_t bh) {
  const int64_t b = bh / a.Hq, bk = b * a.Hkv + (bh % a.Hq) / (a.Hq / a.Hkv);
  return {static_cast<const T*>(a.q) + bh * a.Sq * a.D, static_cast<const T*>(a.k) + bk * a.Sk * a.D,
          static_cast<const T*>(a.v) + bk * a.Sk * a.D, a.key_padding ? a.key_padding + b * a.Sk : nullptr};
}

// Returns K/V rows [j0, j0 + nk) of one head as compute-type rows of stride ld: the memory
// itself when the stored type is the compute type (and no padding is needed), else a
// converted copy in buf with rows padded to ldp (zeros beyond D).
template <typename T, typename C>
const C* rows_as(const T* src, int64_t j0, int64_t nk, int64_t D, int64_t ldp, Buf<C>& buf, int64_t& ld) {
  if constexpr (std::is_same<T, C>::value) {
    if (ldp == D) {
      ld = D;
      return src + j0 * D;
    }
  }
  C* d = buf.get(static_cast<size_t>(kBN * ldp));
  for (int64_t j = 0; j < nk; ++j) {
    const T* s = src + (j0 + j) * D;
    C* o = d + j * ldp;
    for (int64_t x = 0; x < D; ++x) o[x] = wid(s[x]);
    for (int64_t x = D; x < ldp; ++x) o[x] = C(0);
  }
  ld = ldp;
  return d;
}

// ---------------------------------------------------------------------------------------
// Forward

template <typename C>
struct FwdScratch {
  Buf<C> qt, ot, st, kb, vb, ot2, st2, rows, rows2;
};

// Decode split ("split-K"): when a call has few query rows per (b, head) (n <= 16) and too
// few (b, head, tile) tasks to occupy the pool (fewer than 2 per thread), each tile whose key
// hull spans at least kSplitMinKeys keys is cut into runs of whole kBN chunks (the same chunk
// boundaries as the unsplit walk), each run a task of its own producing a partial (m, l, Ot).
// The partials of a tile are then merged per row:
//   m = max_s m_s, l = sum_s l_s e^(m_s - m), out = sum_s Ot_s e^(m_s - m) / l, lse = m + log l
// (a partial that saw no visible key has m_s = -inf, l_s = 0 and Ot_s = 0, so it adds nothing).
constexpr int64_t kSplitMaxRows = 16;
constexpr int64_t kSplitMinKeys = 512;
constexpr int64_t kSplitMinRun = 4 * kBN;  // keys per split task, at least

// Prefetches bytes [p, p + n) into L2, for reading or (write) for writing. The empty volatile
// asm keeps GCC from deleting a loop of nothing but prefetches.
inline void prefetch_l2(const void* p, int64_t n, bool write) {
  const char* c = static_cast<const char*>(p);
  for (int64_t o = 0; o < n; o += 64) {
    asm volatile("");
    if (write)
      __builtin_prefetch(c + o, 1, 2);
    else
      __builtin_prefetch(c + o, 0, 2);
  }
}

// Tasks per grab of run_tasks for tiles in (b, head, tile) order: windowed masks (sliding,
// block) give tiles of equal cost whose neighbours share keys, dealt ~16 runs per thread;
// causal global tiles grow with their position and stay one at a time.
inline int64_t windowed_grain(const AttnArgs& a, int64_t ntasks, int64_t threads) {
  const bool windowed = a.mask == static_cast<int32_t>(AttnMask::Sliding) || a.mask == static_cast<int32_t>(AttnMask::Block);
  return windowed && !a.query_index ? std::max<int64_t>(1, ntasks / (16 * threads)) : 1;
}

// One tile's rows: validity, query rows and per-lane key intervals.
template <typename C>
void fwd_tile_setup(const AttnArgs& a, int64_t b, int64_t t, Lanes<C>& ln, int64_t* qrow, bool* valid) {
  constexpr int BM = Lanes<C>::BM;
  const int64_t n = a.n, r0 = t * BM;
  for (int i = 0; i < BM; ++i) {
    const int64_t r = r0 + i;
    valid[i] = r < n;  // written; ragged padding rows are written too (no keys: 0 and -inf)
    qrow[i] = !attn_row_valid(a, b, r) ? -1 : a.query_index ? a.query_index[b * n + r] : r;
    int64_t lo = 0, hi = 0;
    if (qrow[i] >= 0) key_interval(a, a.mask, qrow[i] + a.Sk - a.Sq, lo, hi);
    ln.lo[i] = static_cast<typename VT<C>::Is>(lo);
    ln.hi[i] = static_cast<typename VT<C>::Is>(hi);
  }
  // the hull and core cover the real rows: padding rows' results are replaced by 0 and -inf
  bool real[BM];
  for (int i = 0; i < BM; ++i) real[i] = qrow[i] >= 0;
  ln.finish(real);
}

// Online softmax of a tile over keys [j_begin, j_end) (whole chunks from the hull's start, or
// the hull's end): Qt packed from the query rows, m = -inf, l = 0, Ot = 0 on entry.
// vf, bk: the finiteness of the values' blocks and this tile's kv head in it.
template <typename T, int DC>
void fwd_tile_keys(const AttnArgs& a, const T* qh, const T* kh, const T* vh, const uint8_t* pad, const Lanes<typename Num<T>::acc>& ln,
                   const int64_t* qrow, const bool* valid, int64_t j_begin, int64_t j_end, FwdScratch<typename Num<T>::acc>& w,
                   typename Num<T>::acc* m, typename Num<T>::acc* l, typename Num<T>::acc* Ot, const FiniteBlocks<T>& vf,
                   int64_t bk) {
  using C = typename Num<T>::acc;
  constexpr int BM = Lanes<C>::BM, L = VT<C>::L;
  const int64_t D = DC ? DC : a.D;
  const C scale = static_cast<C>(a.scale);
  const C ninf = -std::numeric_limits<C>::infinity();
  C* Qt = w.qt.get(static_cast<size_t>(D * BM));
  C* St = w.st.get(static_cast<size_t>(kBN * BM));
  alignas(64) C alpha[BM];
  for (int i = 0; i < BM; ++i) {
    m[i] = ninf;
    l[i] = 0;
  }
  pack_qt<T>(D, scale, qh, qrow, Qt);
  std::fill(Ot, Ot + D * BM, C(0));
  // Each vector group of lanes has its own key hull. Keys only one group sees (a sliding
  // window's two edges: L - 1 keys each for a tile of consecutive rows) run through that
  // group's half of the products alone, so [j_begin, j_end) is cut at the group hulls' ends
  // into regions of a fixed set of groups, each walked in chunks of kBN from its start (the
  // window's middle, seen by every lane, then falls into whole chunks).
  int64_t glo[kNVQ], ghi[kNVQ];
  int64_t cut[2 * kNVQ + 2];
  int nc = 0;
  cut[nc++] = j_begin;
  cut[nc++] = j_end;
  for (int g = 0; g < kNVQ; ++g) {
    glo[g] = INT64_MAX;
    ghi[g] = INT64_MIN;
    for (int i = g * L; i < (g + 1) * L; ++i)
      if (qrow[i] >= 0 && ln.lo[i] < ln.hi[i]) {
        glo[g] = std::min<int64_t>(glo[g], ln.lo[i]);
        ghi[g] = std::max<int64_t>(ghi[g], ln.hi[i]);
      }
    if (glo[g] >= ghi[g]) continue;
    cut[nc++] = std::min(j_end, std::max(j_begin, glo[g]));
    cut[nc++] = std::min(j_end, std::max(j_begin, ghi[g]));
  }
  std::sort(cut, cut + nc);
  for (int x = 0; x + 1 < nc; ++x) {
    const int64_t x0 = cut[x], x1 = cut[x + 1];
    if (x0 >= x1) continue;
    int active = 0, one = -1;
    for (int g = 0; g < kNVQ; ++g)
      if (glo[g] < ghi[g] && glo[g] < x1 && ghi[g] > x0) {
        ++active;
        one = g;
      }
    if (active == 0) continue;
    if (active > 1 || kNVQ == 1) one = -1;
    for (int64_t j0 = x0; j0 < x1; j0 += kBN) {
      const int64_t nk = std::min<int64_t>(kBN, x1 - j0);
      int64_t ldk, ldvv;
      const C* Kc = rows_as<T, C>(kh, j0, nk, D, D, w.kb, ldk);
      const C* Vc = rows_as<T, C>(vh, j0, nk, D, D, w.vb, ldvv);
      if (one >= 0) {
        const int g = one;
        gemm_nb<C, 1, DC>(nk, D, Kc, ldk, 1, Qt + g * L, BM, St + g * L, BM, kSet, nullptr);
        apply_mask<C>(St, nk, j0, ln, pad, ninf, g, g + 1);
        softmax_step<C>(St, nk, m, l, alpha, g, g + 1);
        pv_chunk<C>(vf.bad(bk, j0, nk), D, nk, Vc, ldvv, St, Ot, alpha, j0, ln, pad, g);
        continue;
      }
      scores<C, DC>(nk, D, Kc, ldk, Qt, St);
      const bool full = ln.full(j0, nk, pad);
      if (!full) apply_mask<C>(St, nk, j0, ln, pad, ninf);
      softmax_step<C>(St, nk, m, l, alpha);
      pv_chunk<C>(!full && vf.bad(bk, j0, nk), D, nk, Vc, ldvv, St, Ot, alpha, j0, ln, pad);
    }
  }
}

template <typename T, int DC>
void forward_typed(const AttnArgs& a, T* out, typename Num<T>::acc* lse) {
  using C = typename Num<T>::acc;
  constexpr int BM = Lanes<C>::BM;
  const int64_t D = DC ? DC : a.D, G = a.Hq / a.Hkv, n = a.n;
  const int64_t ntile = (n + BM - 1) / BM;
  const T* q = static_cast<const T*>(a.q);
  const T* k = static_cast<const T*>(a.k);
  const T* v = static_cast<const T*>(a.v);
  const C ninf = -std::numeric_limits<C>::infinity();
  const int threads = num_threads();
  const int64_t ntasks = a.B * a.Hq * ntile;
  const PadCount pads(a);
  const FiniteBlocks<T> vf(a.v, a.B * a.Hkv, a.Sk * D, a.Sk, D);

  if (n <= kSplitMaxRows && threads > 1 && ntasks < 2 * threads && a.Sk >= kSplitMinKeys) {
    // Plan: per (b, tile) its lanes; per (b, head, tile) its runs of keys.
    const int64_t nbt = a.B * ntile;
    std::vector<Lanes<C>> lanes(static_cast<size_t>(nbt));
    std::vector<int64_t> qrows(static_cast<size_t>(nbt * BM));
    std::vector<uint8_t> valids(static_cast<size_t>(nbt * BM));
    std::vector<int64_t> nsplit(static_cast<size_t>(nbt)), run(static_cast<size_t>(nbt));
    const int64_t want = (4 * threads + ntasks - 1) / ntasks;  // runs per task for ~4 per thread
    for (int64_t bt = 0; bt < nbt; ++bt) {
      bool vb[BM];
      fwd_tile_setup<C>(a, bt / ntile, bt % ntile, lanes[bt], &qrows[bt * BM], vb);
      for (int i = 0; i < BM; ++i) valids[bt * BM + i] = vb[i];
      const int64_t width = lanes[bt].hull_hi - lanes[bt].hull_lo;
      const int64_t chunks = (width + kBN - 1) / kBN;
      int64_t ns = 1;
      if (width >= kSplitMinKeys) ns = std::max<int64_t>(1, std::min(want, width / kSplitMinRun));
      const int64_t per = (chunks + ns - 1) / ns;  // chunks per run
      ns = per > 0 ? (chunks + per - 1) / per : 1;
      nsplit[bt] = ns;
      run[bt] = per * kBN;
    }
    // Task list: (bh, tile, s); partial results at a fixed offset per task.
    std::vector<int64_t> tb(static_cast<size_t>(a.B * a.Hq * ntile + 1));
    tb[0] = 0;
    for (int64_t x = 0; x < a.B * a.Hq * ntile; ++x) {
      const int64_t bh = x / ntile, t = x % ntile, b = bh / a.Hq;
      tb[x + 1] = tb[x] + nsplit[b * ntile + t];
    }
    const int64_t nparts = tb.back(), stride = 2 * BM + D * BM;
    std::vector<C> parts(static_cast<size_t>(nparts * stride));
    run_tasks<FwdScratch<C>>(nparts, [&](int64_t p, FwdScratch<C>& w) {
      const int64_t x = std::upper_bound(tb.begin(), tb.end(), p) - tb.begin() - 1;
      const int64_t s = p - tb[x], bh = x / ntile, t = x % ntile, b = bh / a.Hq, h = bh % a.Hq, hk = h / G;
      const int64_t bt = b * ntile + t;
      const Lanes<C>& ln = lanes[bt];
      bool vb[BM];
      for (int i = 0; i < BM; ++i) vb[i] = valids[bt * BM + i] != 0;
      const int64_t j_begin = std::min(ln.hull_hi, ln.hull_lo + s * run[bt]);
      const int64_t j_end = std::min(ln.hull_hi, j_begin + run[bt]);
      C* pm = parts.data() + p * stride;
      fwd_tile_keys<T, DC>(a, q + bh * a.Sq * D, k + (b * a.Hkv + hk) * a.Sk * D, v + (b * a.Hkv + hk) * a.Sk * D,
                           a.key_padding ? a.key_padding + b * a.Sk : nullptr, ln, &qrows[bt * BM], vb, j_begin, j_end,
                           w, pm, pm + BM, pm + 2 * BM, vf, b * a.Hkv + hk);
    });
    // Merge: one (bh, tile) at a time (small: nsplit * D * BM). The max propagates NaN.
    run_tasks<int>(a.B * a.Hq * ntile, [&](int64_t x, int&) {
      const int64_t bh = x / ntile, t = x % ntile, r0 = t * BM, b = bh / a.Hq;
      const Lanes<C>& ln = lanes[b * ntile + t];
      const int64_t p0 = tb[x], np = tb[x + 1] - tb[x];
      std::vector<C> Om(static_cast<size_t>(D));
      for (int i = 0; i < BM; ++i) {
        const int64_t r = r0 + i;
        if (r >= n) break;
        C mx = ninf;
        for (int64_t s = 0; s < np; ++s) {
          const C ms = parts[(p0 + s) * stride + i];
          mx = ms > mx || ms != ms ? ms : mx;
        }
        C lsum = 0;
        std::fill(Om.begin(), Om.end(), C(0));
        if (mx != ninf)
          for (int64_t s = 0; s < np; ++s) {
            const C* pm = parts.data() + (p0 + s) * stride;
            const C e = std::exp(pm[i] - mx);
            lsum += pm[BM + i] * e;
            for (int64_t d = 0; d < D; ++d) Om[d] += pm[2 * BM + d * BM + i] * e;
          }
        finish_row<T, C>(pads.has_key(b, ln.lo[i], ln.hi[i]), D, Om.data(), 1, mx, lsum, out + (bh * n + r) * D,
                         lse ? lse + bh * n + r : nullptr);
      }
    });
    return;
  }

  run_tasks<FwdScratch<C>>(ntasks, [&](int64_t task, FwdScratch<C>& w) {
    const int64_t t = task % ntile, bh = task / ntile, b = bh / a.Hq;
    const HeadRows<T> hr = head_rows<T>(a, bh);
    const T *qh = hr.q, *kh = hr.k, *vh = hr.v;
    const uint8_t* pad = hr.pad;
    C* Ot = w.ot.get(static_cast<size_t>(D * BM));
    alignas(64) C m[BM], l[BM];
    int64_t qrow[BM];
    bool valid[BM];
    Lanes<C> ln;
    const int64_t r0 = t * BM;
    fwd_tile_setup<C>(a, b, t, ln, qrow, valid);
    if (!a.query_index && t + 1 < ntile) {
      // the next tile's query rows and out rows (this thread's next task when tasks go out in
      // runs): read from memory while this tile computes instead of stalling its packing
      const int64_t r1 = std::min(n, r0 + 2 * BM);
      prefetch_l2(qh + (r0 + BM) * D, (r1 - r0 - BM) * D * static_cast<int64_t>(sizeof(T)), false);
      prefetch_l2(out + (bh * n + r0 + BM) * D, (r1 - r0 - BM) * D * static_cast<int64_t>(sizeof(T)), true);
    }
    fwd_tile_keys<T, DC>(a, qh, kh, vh, pad, ln, qrow, valid, ln.hull_lo, ln.hull_hi, w, m, l, Ot, vf,
                         b * a.Hkv + (bh % a.Hq) / G);
    alignas(64) C inv[BM];
    bool has[BM];
    T* orow[BM];
    for (int i = 0; i < BM; ++i) {
      orow[i] = nullptr;
      if (!valid[i]) continue;
      const int64_t r = r0 + i;
      has[i] = pads.has_key(b, ln.lo[i], ln.hi[i]);
      inv[i] = row_inv(has[i], l[i]);
      orow[i] = out + (bh * n + r) * D;
      if (lse) lse[bh * n + r] = row_lse(has[i], m[i], l[i]);
    }
    store_tile<T>(Ot, D, inv, has, orow, w.rows.get(static_cast<size_t>(BM * D)));
  }, windowed_grain(a, ntasks, threads));
}

// ---------------------------------------------------------------------------------------
// Dual forward

template <typename T, int DC>
void dual_typed(const DualArgs& da, T* out, T* out_l, T* out_g, typename Num<T>::acc* lse_l,
                typename Num<T>::acc* lse_g) {
  using C = typename Num<T>::acc;
  constexpr int BM = Lanes<C>::BM;
  const AttnArgs& a = da.a;
  const int64_t D = DC ? DC : a.D, n = a.Sq;
  const int64_t ntile = (n + BM - 1) / BM;
  const T* gates = static_cast<const T*>(da.gates);
  const C scale = static_cast<C>(a.scale);
  const C ninf = -std::numeric_limits<C>::infinity();
  const int32_t gmask = static_cast<int32_t>(AttnMask::Global);
  const PadCount pads(a);
  const FiniteBlocks<T> vf(a.v, a.B * a.Hkv, a.Sk * D, a.Sk, D);

  run_tasks<FwdScratch<C>>(a.B * a.Hq * ntile, [&](int64_t task, FwdScratch<C>& w) {
    const int64_t t = task % ntile, bh = task / ntile, b = bh / a.Hq, bk = b * a.Hkv + (bh % a.Hq) / (a.Hq / a.Hkv);
    const HeadRows<T> hr = head_rows<T>(a, bh);
    const T *qh = hr.q, *kh = hr.k, *vh = hr.v;
    const uint8_t* pad = hr.pad;
    C* Qt = w.qt.get(static_cast<size_t>(D * BM));
    C* Ol = w.ot.get(static_cast<size_t>(D * BM));
    C* Og = w.ot2.get(static_cast<size_t>(D * BM));
    C* Sg = w.st.get(static_cast<size_t>(kBN * BM));
    C* Sl = w.st2.get(static_cast<size_t>(kBN * BM));
    alignas(64) C ml[BM], ll[BM], mg[BM], lg[BM], alpha[BM];
    bool valid[BM], glob[BM];
    Lanes<C> lnl, lng;
    const int64_t r0 = t * BM;
    bool any_global = false;
    for (int i = 0; i < BM; ++i) {
      const int64_t r = r0 + i;
      valid[i] = r < n;
      glob[i] = valid[i] && (!da.global_rows || da.global_rows[b * n + r] != 0);
      any_global = any_global || glob[i];
      int64_t lo = 0, hi = 0, glo = 0, ghi = 0;
      if (valid[i]) key_interval(a, a.mask, r + a.Sk - a.Sq, lo, hi);
      if (glob[i]) key_interval(a, gmask, r + a.Sk - a.Sq, glo, ghi);
      lnl.lo[i] = static_cast<typename VT<C>::Is>(lo);
      lnl.hi[i] = static_cast<typename VT<C>::Is>(hi);
      lng.lo[i] = static_cast<typename VT<C>::Is>(glo);
      lng.hi[i] = static_cast<typename VT<C>::Is>(ghi);
      ml[i] = mg[i] = ninf;
      ll[i] = lg[i] = 0;
    }
    lnl.finish(valid);
    lng.finish(valid);
    int64_t qrow[BM];
    for (int i = 0; i < BM; ++i) qrow[i] = valid[i] ? r0 + i : -1;
    pack_qt<T>(D, scale, qh, qrow, Qt);
    std::fill(Ol, Ol + D * BM, C(0));
    std::fill(Og, Og + D * BM, C(0));
    // Walk the union of both hulls (rows off the global path still need their local keys,
    // which need not lie inside the hull of the global rows).
    int64_t h0 = lnl.hull_lo, h1 = lnl.hull_hi;
    if (any_global && lng.hull_lo < lng.hull_hi) {
      h0 = h0 < h1 ? std::min(h0, lng.hull_lo) : lng.hull_lo;
      h1 = std::max(h1, lng.hull_hi);
    }
    for (int64_t j0 = h0; j0 < h1; j0 += kBN) {
      const int64_t nk = std::min<int64_t>(kBN, h1 - j0);
      int64_t ldk, ldvv;
      const C* Kc = rows_as<T, C>(kh, j0, nk, D, D, w.kb, ldk);
      const C* Vc = rows_as<T, C>(vh, j0, nk, D, D, w.vb, ldvv);
      scores<C, DC>(nk, D, Kc, ldk, Qt, Sg);
      if (j0 < lnl.hull_hi && j0 + nk > lnl.hull_lo) {
        std::memcpy(Sl, Sg, sizeof(C) * nk * BM);
        const bool full = lnl.full(j0, nk, pad);
        if (!full) apply_mask<C>(Sl, nk, j0, lnl, pad, ninf);
        softmax_step<C>(Sl, nk, ml, ll, alpha);
        pv_chunk<C>(!full && vf.bad(bk, j0, nk), D, nk, Vc, ldvv, Sl, Ol, alpha, j0, lnl, pad);
      }
      if (any_global && j0 < lng.hull_hi && j0 + nk > lng.hull_lo) {
        const bool full = lng.full(j0, nk, pad);
        if (!full) apply_mask<C>(Sg, nk, j0, lng, pad, ninf);
        softmax_step<C>(Sg, nk, mg, lg, alpha);
        pv_chunk<C>(!full && vf.bad(bk, j0, nk), D, nk, Vc, ldvv, Sg, Og, alpha, j0, lng, pad);
      }
    }
    C* Rl = w.rows.get(static_cast<size_t>(BM * D));
    C* Rg = w.rows2.get(static_cast<size_t>(BM * D));
    tile_rows<C>(Ol, D, Rl);
    tile_rows<C>(Og, D, Rg);
    for (int i = 0; i < BM; ++i) {
      if (!valid[i]) continue;
      const int64_t r = r0 + i, row = bh * n + r;
      const T* gp = da.gates_per_head ? gates + row * 2 : gates + (b * n + r) * 2;
      const C g0 = wid(gp[0]), g1 = wid(gp[1]);
      T* o = out + row * D;
      T* ol = out_l + row * D;
      T* og = out_g + row * D;
      const bool hl = pads.has_key(b, lnl.lo[i], lnl.hi[i]), hg = glob[i] && pads.has_key(b, lng.lo[i], lng.hi[i]);
      const C il = row_inv(hl, ll[i]), ig = row_inv(hg, lg[i]);
      for (int64_t d = 0; d < D; ++d) {
        const C xl = hl ? Rl[i * D + d] * il : C(0), xg = hg ? Rg[i * D + d] * ig : C(0);
        ol[d] = Num<T>::store(xl);
        og[d] = Num<T>::store(xg);
        o[d] = Num<T>::store(glob[i] ? g0 * xl + g1 * xg : g0 * xl);
      }
      lse_l[row] = row_lse(hl, ml[i], ll[i]);
      lse_g[row] = row_lse(hg, mg[i], lg[i]);
    }
  });
}

// ---------------------------------------------------------------------------------------
// Backward

template <typename C>
struct BwdScratch {
  Buf<C> qt, qr, dot, dor, st, dpt, kb, vb, dqt, dkacc, dvacc;
};

// What a backward reads besides q, k, v. Plain attention: out, dout, lse. Dual (dual != null):
// out is the local path's output and lse its lse, out_g / lse_g the global path's, and dout
// the gradient of the gated mix; the gates enter per row.
template <typename T>
struct BwdIn {
  const T* out;
  const T* dout;
  const typename Num<T>::acc* lse;
  const DualArgs* dual = nullptr;
  const T* out_g = nullptr;
  const typename Num<T>::acc* lse_g = nullptr;
};

// One query tile of the backward: its key geometry, lse and Dr = rowsum(dO * O) per lane,
// Q packed twice (Qt[d][i] pre-scaled for the scores, Qr[i][d] for dK) and dO likewise. Dual
// tiles also carry the global path's geometry (lg), lse and Dr, and the two gates per lane
// (Dr then includes the gate: Dr = g * rowsum(dout * out_path)). hull_lo/hull_hi span the
// keys any lane needs; live says whether a lane sees any key at all.
template <typename C>
struct BwdTile {
  static constexpr int BM = Lanes<C>::BM;
  Lanes<C> ln, lg;
  alignas(64) C lse[BM], Dr[BM], lse_g[BM], Dr_g[BM], gl[BM], gg[BM];
  int64_t qrow[BM];
  bool valid[BM], live[BM];
  bool bad;  // some live lane's q or dout row holds a NaN or an infinity
  int64_t hull_lo, hull_hi;
  C *Qt, *Qr, *dOt, *dOr;
};

// Fills a lane's interval for a row with lse ls (or nothing when the row saw no key: lse =
// -inf, then the lane keeps lse 0 and an empty interval so that P = 0 everywhere).
template <typename C>
void bwd_lane(const AttnArgs& a, int32_t mask, bool on, C ls, int64_t qrow, Lanes<C>& ln, C* lse, int i) {
  int64_t lo = 0, hi = 0;
  if (on && ls != -std::numeric_limits<C>::infinity())
    key_interval(a, mask, qrow + a.Sk - a.Sq, lo, hi);
  else
    ls = 0;
  ln.lo[i] = static_cast<typename VT<C>::Is>(lo);
  ln.hi[i] = static_cast<typename VT<C>::Is>(hi);
  lse[i] = ls;
}

// The key geometry of tile t of query head (b, h); false when no lane sees any key (rows
// past n, skipped rows with lse = -inf and empty intervals alike).
template <typename T>
bool bwd_tile_geometry(const AttnArgs& a, const BwdIn<T>& in, int64_t b, int64_t h, int64_t t,
                       BwdTile<typename Num<T>::acc>& tl) {
  using C = typename Num<T>::acc;
  constexpr int BM = Lanes<C>::BM;
  const int64_t n = a.n, bh = b * a.Hq + h, r0 = t * BM;
  const DualArgs* du = in.dual;
  const T* gates = du ? static_cast<const T*>(du->gates) : nullptr;
  bool any = false;
  for (int i = 0; i < BM; ++i) {
    const int64_t r = r0 + i;
    const bool ok = attn_row_valid(a, b, r);  // ragged padding rows get no gradient
    tl.valid[i] = ok;
    tl.qrow[i] = !ok ? -1 : a.query_index ? a.query_index[b * n + r] : r;
    bwd_lane<C>(a, a.mask, ok, ok ? in.lse[bh * n + r] : C(0), tl.qrow[i], tl.ln, tl.lse, i);
    bool live = tl.ln.lo[i] < tl.ln.hi[i];
    if (du) {
      const bool glob = ok && (!du->global_rows || du->global_rows[b * n + r] != 0);
      bwd_lane<C>(a, static_cast<int32_t>(AttnMask::Global), glob, glob ? in.lse_g[bh * n + r] : C(0), tl.qrow[i],
                  tl.lg, tl.lse_g, i);
      live = live || tl.lg.lo[i] < tl.lg.hi[i];
      const int64_t gi = ok ? (du->gates_per_head ? bh * n + r : b * n + r) * 2 : 0;
      tl.gl[i] = ok ? wid(gates[gi]) : C(0);
      tl.gg[i] = ok ? wid(gates[gi + 1]) : C(0);
    }
    tl.live[i] = live;
    any = any || live;
  }
  if (!any) return false;
  tl.ln.finish(tl.valid);
  tl.hull_lo = tl.ln.hull_lo;
  tl.hull_hi = tl.ln.hull_hi;
  if (du) {
    tl.lg.finish(tl.valid);
    if (tl.lg.hull_lo < tl.lg.hull_hi) {
      const bool local_empty = tl.ln.hull_lo >= tl.ln.hull_hi;
      tl.hull_lo = local_empty ? tl.lg.hull_lo : std::min(tl.hull_lo, tl.lg.hull_lo);
      tl.hull_hi = local_empty ? tl.lg.hull_hi : std::max(tl.hull_hi, tl.lg.hull_hi);
    }
  }
  return true;
}

// Packs the tile's Q and dO (both layouts) and its Dr into the scratch.
template <typename T>
void bwd_tile_pack(const AttnArgs& a, int64_t D, const BwdIn<T>& in, int64_t b, int64_t h, int64_t t,
                   BwdTile<typename Num<T>::acc>& tl, BwdScratch<typename Num<T>::acc>& w) {
  using C = typename Num<T>::acc;
  constexpr int L = VT<C>::L, BM = Lanes<C>::BM;
  const int64_t Dp = (D + L - 1) / L * L, bh = b * a.Hq + h, r0 = t * BM;
  const T* qh = static_cast<const T*>(a.q) + bh * a.Sq * D;
  const C scale = static_cast<C>(a.scale);
  tl.Qt = w.qt.get(static_cast<size_t>(D * BM));
  tl.Qr = w.qr.get(static_cast<size_t>(BM * Dp));
  tl.dOt = w.dot.get(static_cast<size_t>(D * BM));
  tl.dOr = w.dor.get(static_cast<size_t>(BM * Dp));
  C probe = 0;  // x * 0 summed: NaN when some live q or dout element is not finite
  for (int i = 0; i < BM; ++i) {
    const bool ok = tl.valid[i];
    const bool live = ok && tl.live[i];
    const int64_t row = (bh * a.n + r0 + i) * D;
    const T* qq = ok ? qh + tl.qrow[i] * D : nullptr;
    const T* dd = ok ? in.dout + row : nullptr;
    C dr = 0, drg = 0;
    for (int64_t d = 0; d < D; ++d) {
      const C qv = ok ? wid(qq[d]) : C(0), dv_ = ok ? wid(dd[d]) : C(0);
      if (live) {
        dr += wid(in.out[row + d]) * dv_;
        if (in.dual) drg += wid(in.out_g[row + d]) * dv_;
      }
      tl.Qt[d * BM + i] = scale * qv;
      tl.Qr[i * Dp + d] = qv;
      tl.dOt[d * BM + i] = dv_;
      tl.dOr[i * Dp + d] = dv_;
      if (live) probe += qv * C(0) + dv_ * C(0);
    }
    for (int64_t d = D; d < Dp; ++d) tl.Qr[i * Dp + d] = tl.dOr[i * Dp + d] = C(0);
    tl.Dr[i] = in.dual ? tl.gl[i] * dr : dr;
    tl.Dr_g[i] = in.dual ? tl.gg[i] * drg : C(0);
  }
  tl.bad = probe != probe;
}

// Whether lane i of a backward tile sees key j on either path.
template <typename C>
inline bool tile_sees(const BwdTile<C>& tl, bool dual, int i, int64_t j, const uint8_t* pad) {
  return lane_sees(tl.ln, i, j, pad) || (dual && lane_sees(tl.lg, i, j, pad));
}

// The chunk's products from St = P and dPt = dS (key rows, query lanes):
//   dV[j] += sum_i P[j][i] dO[i],  dK[j] += sum_i dS[j][i] Q[i]   (with_kv, rows of Dp)
//   dQ[i] += sum_j dS[j][i] K[j]                                   (with_dq)
// as micro-kernel products, except in a masked chunk where a q or dout row of the tile, or a
// key of the chunk, is not finite: there each lane adds only the keys it sees, since the
// whole-chunk product would add 0 * NaN = NaN across the mask.
template <typename C>
void bwd_products(const BwdTile<C>& tl, bool dual, bool full, int64_t D, int64_t Dp, const uint8_t* pad, int64_t j0,
                  int64_t nk, const C* St, const C* dPt, const C* Kc, int64_t ldk, bool with_kv, C* dVa, C* dKa,
                  bool with_dq, C* dQt) {
  constexpr int L = VT<C>::L, BM = Lanes<C>::BM;
  const int64_t NVd = Dp / L;
  if (full || !(tl.bad || (with_dq && any_nonfinite(Kc, nk, D, ldk)))) {
    if (with_kv) {
      gemm<C>(nk, NVd, BM, St, BM, 1, tl.dOr, Dp, dVa, Dp, kAdd);
      gemm<C>(nk, NVd, BM, dPt, BM, 1, tl.Qr, Dp, dKa, Dp, kAdd);
    }
    if (with_dq) gemm<C>(BM, NVd, nk, dPt, 1, BM, Kc, ldk, dQt, Dp, kAdd);
    return;
  }
  for (int64_t j = 0; j < nk; ++j)
    for (int i = 0; i < BM; ++i) {
      if (!tl.valid[i] || !tile_sees(tl, dual, i, j0 + j, pad)) continue;
      const C p = St[j * BM + i], ds = dPt[j * BM + i];
      if (with_kv)
        for (int64_t d = 0; d < D; ++d) {
          dVa[j * Dp + d] += p * tl.dOr[i * Dp + d];
          dKa[j * Dp + d] += ds * tl.Qr[i * Dp + d];
        }
      if (with_dq)
        for (int64_t d = 0; d < D; ++d) dQt[i * Dp + d] += ds * Kc[j * ldk + d];
    }
}

// For keys [j0, j0 + nk) of the tile: St = P (key rows, query lanes) and dPt = dS = scale *
// P * (dP - Dr). Kc/Vc are the chunk's rows in compute type. Dual tiles form both paths'
// P from the same scores and dP = V dout, and leave
//   St = gl P_l + gg P_g   (so that dV += St^T dout)
//   dS = scale * (P_l (gl dP - Dr_l) + P_g (gg dP - Dr_g))
template <typename C, int DC>
void bwd_chunk(const BwdTile<C>& tl, bool dual, int64_t D, C scale, const uint8_t* pad, int64_t j0, int64_t nk,
               const C* Kc, int64_t ldk, const C* Vc, int64_t ldv_, C* St, C* dPt) {
  using V = typename VT<C>::V;
  using I = typename VT<C>::I;
  using Is = typename VT<C>::Is;
  constexpr int L = VT<C>::L, BM = Lanes<C>::BM;
  scores<C, DC>(nk, D, Kc, ldk, tl.Qt, St);
  scores<C, DC>(nk, D, Vc, ldv_, tl.dOt, dPt);
  const V sc = splat<V>(scale);
  // Masked entries are set to exactly 0 after the arithmetic (a select, not exp(-inf)): a row
  // with lse NaN, or a key or value holding NaN, must leave P and dS 0 where the row cannot see.
  if (!dual) {
    for (int gq = 0; gq < kNVQ; ++gq) {
      const V lv = ldv(tl.lse + gq * L), dr = ldv(tl.Dr + gq * L);
      for (int64_t j = 0; j < nk; ++j) {
        C* ps = St + j * BM + gq * L;
        C* pd = dPt + j * BM + gq * L;
        const V p = vexp_sm(ldv(ps) - lv);
        stv(ps, p);
        stv(pd, sc * p * (ldv(pd) - dr));
      }
    }
    if (!tl.ln.full(j0, nk, pad)) {
      apply_mask<C>(St, nk, j0, tl.ln, pad, C(0));
      apply_mask<C>(dPt, nk, j0, tl.ln, pad, C(0));
    }
    return;
  }
  if (j0 >= tl.ln.hull_hi || j0 + nk <= tl.ln.hull_lo) {
    // outside every lane's local interval (most chunks of a long global span): the global
    // path alone, masked only where the chunk leaves the global core
    for (int gq = 0; gq < kNVQ; ++gq) {
      const V lv = ldv(tl.lse_g + gq * L), dr = ldv(tl.Dr_g + gq * L), gg = ldv(tl.gg + gq * L);
      for (int64_t j = 0; j < nk; ++j) {
        C* ps = St + j * BM + gq * L;
        C* pd = dPt + j * BM + gq * L;
        const V p = vexp_sm(ldv(ps) - lv);
        stv(ps, gg * p);
        stv(pd, sc * p * (gg * ldv(pd) - dr));
      }
    }
    if (!tl.lg.full(j0, nk, pad)) {
      apply_mask<C>(St, nk, j0, tl.lg, pad, C(0));
      apply_mask<C>(dPt, nk, j0, tl.lg, pad, C(0));
    }
    return;
  }
  const V zero = V{};
  for (int gq = 0; gq < kNVQ; ++gq) {
    const int o = gq * L;
    const V lsl = ldv(tl.lse + o), lsg = ldv(tl.lse_g + o), drl = ldv(tl.Dr + o), drg = ldv(tl.Dr_g + o);
    const V gl = ldv(tl.gl + o), gg = ldv(tl.gg + o);
    const I lol = ldi<C>(tl.ln.lo + o), hil = ldi<C>(tl.ln.hi + o), log_ = ldi<C>(tl.lg.lo + o),
            hig = ldi<C>(tl.lg.hi + o);
    for (int64_t j = 0; j < nk; ++j) {
      C* ps = St + j * BM + o;
      C* pd = dPt + j * BM + o;
      if (pad && pad[j0 + j]) {
        stv(ps, zero);
        stv(pd, zero);
        continue;
      }
      const I jv = splat<I>(static_cast<Is>(j0 + j));
      const V s = ldv(ps), dp = ldv(pd);
      // each path's terms are selected by its own visibility: invisible lanes may overflow
      // exp, and a NaN in a key, value or the other path must not reach a path that cannot see
      const I vl = (jv >= lol) & (jv < hil), vg = (jv >= log_) & (jv < hig);
      const V pl = vexp_sm(s - lsl), pg = vexp_sm(s - lsg);
      stv(ps, (vl ? gl * pl : zero) + (vg ? gg * pg : zero));
      stv(pd, sc * ((vl ? pl * (gl * dp - drl) : zero) + (vg ? pg * (gg * dp - drg) : zero)));
    }
  }
}

// True when every valid lane sees every key of the chunk (on the local path; dual tiles also
// on the global one): no mask applies.
template <typename C>
inline bool chunk_full(const BwdTile<C>& tl, bool dual, int64_t j0, int64_t nk, const uint8_t* pad) {
  return tl.ln.full(j0, nk, pad) || (dual && tl.lg.full(j0, nk, pad));
}

// Adds the tile's dQ rows (dQt, rows of Dp) into dq.
template <typename C>
void bwd_store_dq(const AttnArgs& a, int64_t D, int64_t Dp, int64_t bh, const BwdTile<C>& tl, const C* dQt, C* dq) {
  for (int i = 0; i < BwdTile<C>::BM; ++i) {
    if (!tl.valid[i] || !tl.live[i]) continue;
    C* o = dq + (bh * a.Sq + tl.qrow[i]) * D;
    const C* s = dQt + i * Dp;
    for (int64_t d = 0; d < D; ++d) o[d] += s[d];
  }
}

// Keys per task of the split backward's dK/dV pass.
constexpr int64_t kBwdKeyRun = 4 * kBN;

// How the backward shares the work among threads. Fused: one task per (b, kv head). Heads:
// the G query heads of a kv head in `chunks` groups, each task with private dK/dV partials
// that a second pass adds up in a fixed order (no recomputation; partial memory
// B x Hkv x chunks x Sk x D x 2). Split: key runs own dK/dV and query tiles own dQ (P and dS
// formed twice). DUALROUTE_ATTN_BWD=fused|heads|split forces one (tests compare them; heads
// then takes one chunk per query head). By default: fused while B x Hkv tasks fill the pool,
// else heads while B x Hq does, else split.
enum class BwdForm { Fused, Heads, Split };
BwdForm bwd_form(const AttnArgs& a, int64_t& chunks) {
  const int64_t G = a.Hq / a.Hkv, threads = num_threads(), bkv = a.B * a.Hkv;
  chunks = G;
  const char* env = std::getenv("DUALROUTE_ATTN_BWD");
  if (env && std::strcmp(env, "split") == 0) return BwdForm::Split;
  if (env && std::strcmp(env, "fused") == 0) return BwdForm::Fused;
  if (env && std::strcmp(env, "heads") == 0) return G > 1 ? BwdForm::Heads : BwdForm::Fused;
  if (bkv >= threads) return BwdForm::Fused;
  if (bkv * G >= threads) {
    chunks = std::min(G, (threads + bkv - 1) / bkv);
    return BwdForm::Heads;
  }
  return BwdForm::Split;
}

template <typename T, int DC>
void backward_typed(const AttnArgs& a, const BwdIn<T>& in, typename Num<T>::acc* dq, typename Num<T>::acc* dk,
                    typename Num<T>::acc* dv) {
  using C = typename Num<T>::acc;
  constexpr int L = VT<C>::L, BM = Lanes<C>::BM;
  const int64_t D = DC ? DC : a.D, G = a.Hq / a.Hkv, n = a.n, Sk = a.Sk;
  const int64_t Dp = (D + L - 1) / L * L;
  const int64_t ntile = (n + BM - 1) / BM;
  const T* k = static_cast<const T*>(a.k);
  const T* v = static_cast<const T*>(a.v);
  const C scale = static_cast<C>(a.scale);

  // Keys [K0, K1) of (b, kv head) bk: dK and dV over every tile of the G query heads that sees
  // them, and (with_dq) each tile's dQ as well. With K0 = 0, K1 = Sk and with_dq this is the
  // whole fused backward of one (b, kv head).
  auto key_run = [&](int64_t bk, int64_t K0, int64_t K1, bool with_dq, int64_t g0, int64_t g1, C* dko, C* dvo,
                     BwdScratch<C>& w) {
    const int64_t b = bk / a.Hkv, hk = bk % a.Hkv, nkeys = K1 - K0;
    const T* kh = k + bk * Sk * D;
    const T* vh = v + bk * Sk * D;
    const uint8_t* pad = a.key_padding ? a.key_padding + b * Sk : nullptr;
    C* St = w.st.get(static_cast<size_t>(kBN * BM));
    C* dPt = w.dpt.get(static_cast<size_t>(kBN * BM));
    C* dQt = w.dqt.get(static_cast<size_t>(BM * Dp));
    C* dKa = kept_rows<C, 0>(static_cast<size_t>(nkeys * Dp), w.dkacc);
    C* dVa = kept_rows<C, 1>(static_cast<size_t>(nkeys * Dp), w.dvacc);
    std::fill(dKa, dKa + nkeys * Dp, C(0));
    std::fill(dVa, dVa + nkeys * Dp, C(0));
    BwdTile<C> tl;
    for (int64_t g = g0; g < g1; ++g) {
      const int64_t h = hk * G + g;
      for (int64_t t = 0; t < ntile; ++t) {
        if (!bwd_tile_geometry<T>(a, in, b, h, t, tl)) continue;
        const int64_t lo = std::max(tl.hull_lo, K0), hi = std::min(tl.hull_hi, K1);
        if (lo >= hi) continue;
        bwd_tile_pack<T>(a, D, in, b, h, t, tl, w);
        if (with_dq) std::fill(dQt, dQt + BM * Dp, C(0));
        for (int64_t j0 = lo; j0 < hi; j0 += kBN) {
          const int64_t nk = std::min<int64_t>(kBN, hi - j0);
          int64_t ldk, ldvv;
          // the dQ product reads Kc rows as whole vectors: pad them to Dp then
          const C* Kc = rows_as<T, C>(kh, j0, nk, D, with_dq ? Dp : D, w.kb, ldk);
          const C* Vc = rows_as<T, C>(vh, j0, nk, D, D, w.vb, ldvv);
          bwd_chunk<C, DC>(tl, in.dual != nullptr, D, scale, pad, j0, nk, Kc, ldk, Vc, ldvv, St, dPt);
          bwd_products<C>(tl, in.dual != nullptr, chunk_full(tl, in.dual != nullptr, j0, nk, pad), D, Dp, pad, j0, nk,
                          St, dPt, Kc, ldk, true, dVa + (j0 - K0) * Dp, dKa + (j0 - K0) * Dp, with_dq, dQt);
        }
        if (with_dq) bwd_store_dq(a, D, Dp, b * a.Hq + h, tl, dQt, dq);
      }
    }
    for (int64_t j = K0; j < K1; ++j)
      for (int64_t d = 0; d < D; ++d) {
        dko[j * D + d] += dKa[(j - K0) * Dp + d];
        dvo[j * D + d] += dVa[(j - K0) * Dp + d];
      }
  };

  int64_t chunks = 1;
  const BwdForm form = bwd_form(a, chunks);
  if (form == BwdForm::Fused) {
    // one task per (b, kv head), P and dS formed once per (tile, chunk)
    run_tasks<BwdScratch<C>>(a.B * a.Hkv, [&](int64_t bk, BwdScratch<C>& w) {
      key_run(bk, 0, Sk, true, 0, G, dk + bk * Sk * D, dv + bk * Sk * D, w);
    });
    return;
  }
  if (form == BwdForm::Heads) {
    // task (bk, c): query heads [c G / chunks, (c + 1) G / chunks) of kv head bk, its dK/dV in
    // slot c of the partials; then each (bk, key run) adds its slots in order
    const int64_t slot = Sk * D;
    std::vector<C> part(static_cast<size_t>(a.B * a.Hkv * chunks * slot * 2), C(0));
    C* pk = part.data();
    C* pv = pk + a.B * a.Hkv * chunks * slot;
    run_tasks<BwdScratch<C>>(a.B * a.Hkv * chunks, [&](int64_t task, BwdScratch<C>& w) {
      const int64_t bk = task / chunks, c = task % chunks;
      key_run(bk, 0, Sk, true, c * G / chunks, (c + 1) * G / chunks, pk + task * slot, pv + task * slot, w);
    });
    const int64_t nrun = (Sk + kBwdKeyRun - 1) / kBwdKeyRun;
    run_tasks<BwdScratch<C>>(a.B * a.Hkv * nrun, [&](int64_t task, BwdScratch<C>&) {
      const int64_t bk = task / nrun, run = task % nrun;
      const int64_t e0 = run * kBwdKeyRun * D, e1 = std::min(Sk, (run + 1) * kBwdKeyRun) * D;
      C* ko = dk + bk * slot;
      C* vo = dv + bk * slot;
      for (int64_t c = 0; c < chunks; ++c) {
        const C* ks = pk + (bk * chunks + c) * slot;
        const C* vs = pv + (bk * chunks + c) * slot;
        for (int64_t e = e0; e < e1; ++e) {
          ko[e] += ks[e];
          vo[e] += vs[e];
        }
      }
    });
    return;
  }

  // Split: pass A owns runs of kBwdKeyRun keys of one (b, kv head) and accumulates their dK
  // and dV over every tile of the G query heads that sees them; pass B owns query tiles
  // (whole (b, h) rows when query_index may repeat a row across tiles) and accumulates dQ.
  // P and dS are formed in both passes (the scores twice: 7 products instead of 5), the
  // price of parallelism beyond B x Hkv without atomics; each output element still has one
  // owner, so the result is deterministic.
  const int64_t nrun = (Sk + kBwdKeyRun - 1) / kBwdKeyRun;
  run_tasks<BwdScratch<C>>(a.B * a.Hkv * nrun, [&](int64_t task, BwdScratch<C>& w) {
    const int64_t run = task % nrun;
    const int64_t bk = task / nrun;
    key_run(bk, run * kBwdKeyRun, std::min(Sk, (run + 1) * kBwdKeyRun), false, 0, G, dk + bk * Sk * D,
            dv + bk * Sk * D, w);
  });

  const int64_t per_row = a.query_index ? ntile : 1;  // tiles per pass-B task
  const int64_t ntask_q = a.B * a.Hq * (ntile / per_row);
  run_tasks<BwdScratch<C>>(ntask_q, [&](int64_t task, BwdScratch<C>& w) {
    const int64_t bh = task / (ntile / per_row), t0 = (task % (ntile / per_row)) * per_row;
    const int64_t b = bh / a.Hq, h = bh % a.Hq;
    const HeadRows<T> hr = head_rows<T>(a, bh);
    const T *kh = hr.k, *vh = hr.v;
    const uint8_t* pad = hr.pad;
    C* St = w.st.get(static_cast<size_t>(kBN * BM));
    C* dPt = w.dpt.get(static_cast<size_t>(kBN * BM));
    C* dQt = w.dqt.get(static_cast<size_t>(BM * Dp));
    BwdTile<C> tl;
    for (int64_t t = t0; t < t0 + per_row; ++t) {
      if (!bwd_tile_geometry<T>(a, in, b, h, t, tl)) continue;
      bwd_tile_pack<T>(a, D, in, b, h, t, tl, w);
      std::fill(dQt, dQt + BM * Dp, C(0));
      for (int64_t j0 = tl.hull_lo; j0 < tl.hull_hi; j0 += kBN) {
        const int64_t nk = std::min<int64_t>(kBN, tl.hull_hi - j0);
        int64_t ldk, ldvv;
        const C* Kc = rows_as<T, C>(kh, j0, nk, D, Dp, w.kb, ldk);
        const C* Vc = rows_as<T, C>(vh, j0, nk, D, D, w.vb, ldvv);
        bwd_chunk<C, DC>(tl, in.dual != nullptr, D, scale, pad, j0, nk, Kc, ldk, Vc, ldvv, St, dPt);
        bwd_products<C>(tl, in.dual != nullptr, chunk_full(tl, in.dual != nullptr, j0, nk, pad), D, Dp, pad, j0, nk,
                        St, dPt, Kc, ldk, false, nullptr, nullptr, true, dQt);
      }
      bwd_store_dq(a, D, Dp, bh, tl, dQt, dq);
    }
  });
}

// ---------------------------------------------------------------------------------------
// Segment attention (core/attention.h, SegmentArgs): every query attends to the keys of the
// segments its row of `indices` lists. The walk is segment-major: a task owns a block of query
// rows of one head, sorts the (row, segment) pairs of its rows by segment (a counting sort,
// repeats and -1 dropped), and visits each listed segment once, with the rows that chose it
// gathered into tiles of BM lanes. Each row's online-softmax state (m, l, O) lives in the
// task's row-major scratch between its visits; a tile loads it into lanes, runs the segment's
// key chunks through the same micro-kernels as the fused attention (per-lane intervals give
// the causal cut inside a query's own segment), and stores it back. K and V are read in place:
// no gathered copy of them ever exists, and a segment's keys serve every row that chose it
// while they are in cache. Tile filling needs many rows per segment, so blocks are as long as
// the pool allows (at most kSegRows rows: the scratch stays ~kSegRows x D floats per thread).
constexpr int64_t kSegRows = 4096;

// The rows of each segment for query rows [i0, i1) of one head: rows[start[s] .. start[s+1]).
struct SegLists {
  std::vector<int32_t> start, rows;
  void build(const int32_t* idx, int64_t i0, int64_t i1, int64_t K, int64_t nseg) {
    start.assign(static_cast<size_t>(nseg + 2), 0);
    auto each = [&](auto&& f) {
      for (int64_t i = i0; i < i1; ++i) {
        const int32_t* r = idx + i * K;
        for (int64_t x = 0; x < K; ++x) {
          const int32_t s = r[x];
          if (s < 0) continue;
          bool dup = false;
          for (int64_t y = 0; y < x && !dup; ++y) dup = r[y] == s;
          if (!dup) f(s, i);
        }
      }
    };
    each([&](int32_t s, int64_t) { ++start[s + 2]; });
    for (int64_t s = 0; s < nseg; ++s) start[s + 2] += start[s + 1];
    rows.resize(static_cast<size_t>(start[nseg + 1]));
    each([&](int32_t s, int64_t i) { rows[start[s + 1]++] = static_cast<int32_t>(i); });
    // start[s + 1] is now the end of segment s, start[s] its beginning
  }
};

// Key interval of a query at position p inside segment s: [s0, s1) cut at p + 1 when causal.
inline void seg_interval(const AttnArgs& a, int64_t segment, int64_t s, int64_t p, int64_t& lo, int64_t& hi) {
  lo = s * segment;
  hi = std::min(a.Sk, lo + segment);
  if (a.causal) hi = std::min(hi, p + 1);
  if (hi < lo) hi = lo;
}

void check_segment_indices(const AttnArgs& a, const int32_t* idx, int64_t K, int64_t nseg) {
  const int64_t n = a.B * a.Hq * a.Sq * K;
  for (int64_t e = 0; e < n; ++e)
    if (idx[e] < -1 || idx[e] >= nseg) {
      const int64_t x = e % K, i = (e / K) % a.Sq, h = (e / K / a.Sq) % a.Hq, b = e / K / a.Sq / a.Hq;
      fail(ErrorCode::Range, "segmentAttention: indices[", b, ", ", h, ", ", i, ", ", x, "] = ", idx[e],
           " is outside [-1, ", nseg, ")");
    }
}

// head_rows() with k and v at kv_head_stride (a cache buffer's view read in place).
template <typename T>
HeadRows<T> seg_head_rows(const AttnArgs& a, int64_t bh) {
  const int64_t b = bh / a.Hq, bk = b * a.Hkv + (bh % a.Hq) / (a.Hq / a.Hkv);
  const int64_t kvs = a.kv_head_stride ? a.kv_head_stride : a.Sk * a.D;
  return {static_cast<const T*>(a.q) + bh * a.Sq * a.D, static_cast<const T*>(a.k) + bk * kvs,
          static_cast<const T*>(a.v) + bk * kvs, nullptr};
}

// The kv head index b * Hkv + h / G of query head bh, and the finiteness blocks of v as the
// segment kernels read it (kv_head_stride apart).
inline int64_t kv_of(const AttnArgs& a, int64_t bh) {
  return (bh / a.Hq) * a.Hkv + (bh % a.Hq) / (a.Hq / a.Hkv);
}
template <typename T>
FiniteBlocks<T> seg_finite_v(const AttnArgs& a) {
  return FiniteBlocks<T>(a.v, a.B * a.Hkv, a.kv_head_stride ? a.kv_head_stride : a.Sk * a.D, a.Sk, a.D);
}

template <typename C>
struct SegFwdScratch {
  Buf<C> m, l, o, qg, st, kt, vb, alpha;
  std::vector<uint8_t> seen;
  SegLists lists;
};

constexpr int kRowsMax = 32;
// Per lane i of the result: the max (hmax_rows) or sum (hsum_rows) of the L values at
// x + i * L (L rows' partial vectors, reduced together: a shuffle tree of 2 L - 1 steps for all
// of them instead of a reduction per row). The max's inputs hold no NaN. R gives the
// reduction for 8 float lanes (vec) and for scalars (one).
template <typename C, typename R>
inline typename VT<C>::V reduce_rows(const C* x) {
  using V = typename VT<C>::V;
  constexpr int L = VT<C>::L;
#if defined(__AVX__)
  if constexpr (std::is_same<C, float>::value && L == 8) {
    __m256 v[8];
    for (int i = 0; i < 8; ++i) v[i] = _mm256_loadu_ps(x + i * 8);
    __m256 a[4], b[2];
    for (int i = 0; i < 4; ++i) a[i] = R::vec(_mm256_unpacklo_ps(v[2 * i], v[2 * i + 1]), _mm256_unpackhi_ps(v[2 * i], v[2 * i + 1]));
    for (int i = 0; i < 2; ++i)
      b[i] = R::vec(_mm256_shuffle_ps(a[2 * i], a[2 * i + 1], 0x44), _mm256_shuffle_ps(a[2 * i], a[2 * i + 1], 0xee));
    return (V)R::vec(_mm256_permute2f128_ps(b[0], b[1], 0x20), _mm256_permute2f128_ps(b[0], b[1], 0x31));
  }
#endif
  V r;
  for (int i = 0; i < L; ++i) {
    C m = x[i * L];
    for (int k = 1; k < L; ++k) m = R::one(m, x[i * L + k]);
    r[i] = m;
  }
  return r;
}
struct RowMax {
#if defined(__AVX__)
  static __m256 vec(__m256 a, __m256 b) { return _mm256_max_ps(a, b); }
#endif
  template <typename C>
  static C one(C m, C v) {
    return v > m ? v : m;
  }
};
struct RowSum {
#if defined(__AVX__)
  static __m256 vec(__m256 a, __m256 b) { return _mm256_add_ps(a, b); }
#endif
  template <typename C>
  static C one(C s, C v) {
    return s + v;
  }
};
template <typename C>
inline typename VT<C>::V hmax_rows(const C* x) {
  return reduce_rows<C, RowMax>(x);
}
template <typename C>
inline typename VT<C>::V hsum_rows(const C* x) {
  return reduce_rows<C, RowSum>(x);
}

// Row-wise online-softmax step over St (rows <= kRowsMax of stride ld, n columns, a multiple of
// the vector width; masked and padding columns -inf): per row the running max m and sum l, St
// overwritten with P = exp(St - m_new), alpha the old accumulator's factor. The max skips NaN
// scores: their P is NaN, which makes the row's l and output NaN, as the materialised softmax
// does. A row that has seen only -inf subtracts 0 instead, so that exp gives 0.
// The row maxima and sums are reduced L rows at a time (hmax_rows, hsum_rows) and the state
// updated in vectors of L rows: m, l and alpha must hold the rows rounded up to whole vectors
// (the extra lanes are scratch).
template <typename C>
void softmax_rows(C* St, int rows, int64_t n, int64_t ld, C* m, C* l, C* alpha) {
  using V = typename VT<C>::V;
  constexpr int L = VT<C>::L;
  const C ninf = -std::numeric_limits<C>::infinity();
  const V vninf = splat<V>(ninf);
  alignas(64) C pv[kRowsMax * L], mu[kRowsMax];
  const int rp = (rows + L - 1) / L * L;
  for (int i = 0; i < rows; ++i) {
    const C* row = St + i * ld;
    V mv = vninf, mw = mv;
    int64_t j = 0;
    for (; j + 2 * L <= n; j += 2 * L) {
      const V x = ldv(row + j), y = ldv(row + j + L);
      mv = x > mv ? x : mv;
      mw = y > mw ? y : mw;
    }
    if (j < n) {
      const V x = ldv(row + j);
      mv = x > mv ? x : mv;
    }
    stv(pv + i * L, mw > mv ? mw : mv);
  }
  for (int i = rows; i < rp; ++i) stv(pv + i * L, vninf);
  for (int g = 0; g < rp; g += L) {
    const V mx = hmax_rows<C>(pv + g * L), mo = ldv(m + g);
    const V mn = mx > mo ? mx : mo;
    const V u = mn == vninf ? V{} : mn;
    stv(alpha + g, vexp_sm(mo - u));
    stv(mu + g, u);
    stv(m + g, mn);
  }
  for (int i = 0; i < rows; ++i) {
    C* row = St + i * ld;
    const V mus = splat<V>(mu[i]);
    V sv = V{}, sw = V{};
    int64_t j = 0;
    for (; j + 2 * L <= n; j += 2 * L) {
      const V e = vexp_sm(ldv(row + j) - mus), f = vexp_sm(ldv(row + j + L) - mus);
      stv(row + j, e);
      stv(row + j + L, f);
      sv += e;
      sw += f;
    }
    if (j < n) {
      const V e = vexp_sm(ldv(row + j) - mus);
      stv(row + j, e);
      sv += e;
    }
    stv(pv + i * L, sv + sw);
  }
  for (int i = rows; i < rp; ++i) stv(pv + i * L, V{});
  for (int g = 0; g < rp; g += L) stv(l + g, ldv(l + g) * ldv(alpha + g) + hsum_rows<C>(pv + g * L));
}

// The forward walk, with query rows in the rows of the micro-kernel products (keys, then the
// head dim, in vector lanes): a tile takes up to kSegTile query rows that chose the segment
// and for each chunk of the segment's keys
//   S = Q Kt             (Kt: the chunk's keys transposed and pre-scaled, once per segment for
//                          all its tiles; Q rows read in place, bfloat16 ones widened first)
//   P = exp(S - m_new)   (row-wise online softmax; the causal cut of a row's own segment and the
//                          padding columns are -inf)
//   O = alpha O + P V    (V rows read in place, O rows accumulated in place in the task's scratch)
// The micro-kernel takes its A and C rows by pointer (mkp), so no Q or O row is copied per
// visit; a (row, segment) visit reads ~2 D values and writes D, against 4 D x segment flops.
// rows per tile: a whole number of the micro-kernel's row groups (15 = 5 x 3 with 16 registers,
// 16 = 4 x 4 with AVX-512), so no product runs a one-row tail
constexpr int kSegTile = mr_for(4) * (16 / mr_for(4));
static_assert(kSegTile <= kRowsMax, "softmax_rows keeps per-row state for at most kRowsMax rows");

// kt (D x kBN) = scale * the nk key rows from k (rows of D) transposed, zeros past nk. float
// rows of a multiple of 8 move as vectors, transposed 8 x 8 in registers (one scalar store per
// element, as before: bench --quick's segmentAttn row +1.5% instructions).
template <typename T>
void pack_kt(const T* k, int64_t nk, int64_t D, typename Num<T>::acc scale, typename Num<T>::acc* kt) {
  using C = typename Num<T>::acc;
  int64_t j = 0;
#if defined(__AVX__)
  if constexpr (std::is_same<T, float>::value) {
    if (D % 8 == 0) {
      const __m256 sc = _mm256_set1_ps(scale);
      for (; j + 8 <= nk; j += 8) {
        const float* rows[8];
        for (int i = 0; i < 8; ++i) rows[i] = k + (j + i) * D;
        for (int64_t d0 = 0; d0 < D; d0 += 8) scaled_t8<false>(rows, d0, sc, kt + d0 * kBN + j, kBN);
      }
    }
  }
#endif
  for (; j < nk; ++j)
    for (int64_t d = 0; d < D; ++d) kt[d * kBN + j] = scale * wid(k[j * D + d]);
  for (int64_t d = 0; d < D; ++d)
    for (int64_t jj = nk; jj < kBN; ++jj) kt[d * kBN + jj] = C(0);
}

// The segment-major walk of segment attention over query rows [i0, i1) of head bh (idx: that
// head's [Sq, K] indices), shared by segment_forward_typed and dual_segment_typed: each listed
// segment's keys are transposed once for all its rows, the rows that chose it gathered into
// tiles of kSegTile.
// Leaves each row's online-softmax state in the scratch: w.m, w.l, w.o (rows of Dp) and w.seen.
template <typename T, int DC>
void seg_walk(const AttnArgs& a, const HeadRows<T>& hr, const int32_t* idx, int64_t K, int64_t segment, int64_t i0,
              int64_t i1, SegFwdScratch<typename Num<T>::acc>& w, const FiniteBlocks<T>& vf, int64_t bk) {
  using C = typename Num<T>::acc;
  constexpr int L = VT<C>::L, TM = kSegTile;
  const int64_t D = DC ? DC : a.D, Sq = a.Sq, nseg = (a.Sk + segment - 1) / segment, nr = i1 - i0;
  const int64_t Dp = (D + L - 1) / L * L, seg_chunks = (segment + kBN - 1) / kBN;
  const C scale = static_cast<C>(a.scale);
  const C ninf = -std::numeric_limits<C>::infinity();
  C* m = w.m.get(static_cast<size_t>(nr));
  C* l = w.l.get(static_cast<size_t>(nr));
  C* O = w.o.get(static_cast<size_t>(nr * Dp));
  w.seen.assign(static_cast<size_t>(nr), 0);
  std::fill(m, m + nr, ninf);
  std::fill(l, l + nr, C(0));
  std::fill(O, O + nr * Dp, C(0));
  w.lists.build(idx, i0, i1, K, nseg);
  C* Qg = w.qg.get(static_cast<size_t>(TM * D));
  C* St = w.st.get(static_cast<size_t>(TM * kBN));
  C* Kt = w.kt.get(static_cast<size_t>(std::min(seg_chunks, (a.Sk + kBN - 1) / kBN) * D * kBN));
  C* al = w.alpha.get(static_cast<size_t>(kRowsMax));
  alignas(64) C mt[kRowsMax] = {}, lt[kRowsMax] = {};
  int64_t row[TM], lo[TM], hi[TM];
  const C* qp[TM];
  const C* spc[TM];
  C* op[TM];
  C* sp[TM];
  for (int64_t s = 0; s < nseg; ++s) {
    const int32_t* rs = w.lists.rows.data() + w.lists.start[s];
    const int64_t cnt = w.lists.start[s + 1] - w.lists.start[s];
    if (cnt == 0) continue;
    const int64_t s0 = s * segment, s1 = std::min(a.Sk, s0 + segment);
    for (int64_t c = 0; c * kBN < s1 - s0; ++c) {
      const int64_t j0 = s0 + c * kBN, nk = std::min<int64_t>(kBN, s1 - j0);
      pack_kt<T>(hr.k + j0 * D, nk, D, scale, Kt + c * D * kBN);
    }
    for (int64_t t0 = 0; t0 < cnt; t0 += TM) {
      const int tm = static_cast<int>(std::min<int64_t>(TM, cnt - t0));
      // the Q and O rows of the tile after next are scattered over the block (L3 at long
      // lengths): fetch them into L2 while this tile computes (the list is flat across segments,
      // so a segment's first tile is fetched too). Not into L1: a chunk's keys and values fill it.
      const int64_t g0 = (rs - w.lists.rows.data()) + t0, gend = static_cast<int64_t>(w.lists.rows.size());
      for (int64_t x = g0 + 2 * TM; x < std::min(gend, g0 + 3 * TM); ++x) {
        const int32_t rx = w.lists.rows[static_cast<size_t>(x)];
        const char* qn = reinterpret_cast<const char*>(hr.q + rx * D);
        const char* on = reinterpret_cast<const char*>(O + (rx - i0) * Dp);
        for (int64_t c = 0; c < static_cast<int64_t>(D * sizeof(T)); c += 64) __builtin_prefetch(qn + c, 0, 2);
        for (int64_t c = 0; c < static_cast<int64_t>(Dp * sizeof(C)); c += 64) __builtin_prefetch(on + c, 1, 2);
      }
      int64_t hull = s0;
      for (int i = 0; i < tm; ++i) {
        row[i] = rs[t0 + i];
        seg_interval(a, segment, s, row[i] + a.Sk - Sq, lo[i], hi[i]);
        hull = std::max(hull, hi[i]);
        const int64_t r = row[i] - i0;
        if (lo[i] < hi[i]) w.seen[r] = 1;
        mt[i] = m[r];
        lt[i] = l[r];
        const T* qr = hr.q + row[i] * D;
        if constexpr (std::is_same<T, C>::value) {
          qp[i] = qr;  // read in place (the scale is in Kt)
        } else {
          for (int64_t d = 0; d < D; ++d) Qg[i * D + d] = wid(qr[d]);
          qp[i] = Qg + i * D;
        }
        op[i] = O + r * Dp;
        sp[i] = St + i * kBN;
        spc[i] = sp[i];
      }
      for (int64_t j0 = s0; j0 < hull; j0 += kBN) {
        const int64_t nk = std::min<int64_t>(kBN, hull - j0), nkp = (nk + L - 1) / L * L;
        gemm_rows<C, DC>(tm, nkp / L, D, qp, Kt + ((j0 - s0) / kBN) * D * kBN, kBN, sp, kSet);
        bool masked = false;
        for (int i = 0; i < tm; ++i) {
          C* sr = St + i * kBN;
          const int64_t vis = std::max<int64_t>(0, std::min(nk, hi[i] - j0));
          if (vis < nk) masked = true;
          for (int64_t j = vis; j < nkp; ++j) sr[j] = ninf;
        }
        softmax_rows<C>(St, tm, nkp, kBN, mt, lt, al);
        int64_t ldv_;
        const C* Vc = rows_as<T, C>(hr.v, j0, nk, D, Dp, w.vb, ldv_);
        if (masked && vf.bad(bk, j0, nk)) {
          // P = 0 past a row's cut: a non-finite value there must not reach the row (0 * NaN)
          for (int i = 0; i < tm; ++i) {
            C* orow = op[i];
            for (int64_t d = 0; d < Dp; ++d) orow[d] *= al[i];
            const int64_t vis = std::max<int64_t>(0, std::min(nk, hi[i] - j0));
            for (int64_t j = 0; j < vis; ++j)
              for (int64_t d = 0; d < D; ++d) orow[d] += St[i * kBN + j] * Vc[j * ldv_ + d];
          }
        } else {
          gemm_rows<C, 0>(tm, Dp / L, nk, spc, Vc, ldv_, op, kRowScaleAdd, al);
        }
      }
      for (int i = 0; i < tm; ++i) {
        const int64_t r = row[i] - i0;
        m[r] = mt[i];
        l[r] = lt[i];
      }
    }
  }
}

template <typename T, int DC>
void segment_forward_typed(const AttnArgs& a, const int32_t* idx, int64_t K, int64_t segment, T* out,
                           typename Num<T>::acc* lse) {
  using C = typename Num<T>::acc;
  constexpr int L = VT<C>::L, TM = kSegTile;
  const int64_t D = DC ? DC : a.D, Sq = a.Sq, Dp = (D + L - 1) / L * L;
  const int64_t nbh = a.B * a.Hq, threads = num_threads();
  int64_t nblk = std::max<int64_t>(1, std::min((Sq + TM - 1) / TM, (4 * threads + nbh - 1) / nbh));
  nblk = std::max(nblk, (Sq + kSegRows - 1) / kSegRows);
  const int64_t QB = (Sq + nblk - 1) / nblk;
  nblk = (Sq + QB - 1) / QB;
  const FiniteBlocks<T> vf = seg_finite_v<T>(a);
  run_tasks<SegFwdScratch<C>>(nbh * nblk, [&](int64_t task, SegFwdScratch<C>& w) {
    const int64_t bh = task / nblk, i0 = (task % nblk) * QB, i1 = std::min(Sq, i0 + QB), nr = i1 - i0;
    seg_walk<T, DC>(a, seg_head_rows<T>(a, bh), idx + bh * Sq * K, K, segment, i0, i1, w, vf, kv_of(a, bh));
    const C* m = w.m.v.data();
    const C* l = w.l.v.data();
    const C* O = w.o.v.data();
    for (int64_t r = 0; r < nr; ++r)
      finish_row<T, C>(w.seen[r] != 0, D, O + r * Dp, 1, m[r], l[r], out + (bh * Sq + i0 + r) * D,
                       lse ? lse + bh * Sq + i0 + r : nullptr);
  });
}

// Adds a task's dK, dV rows (stride Dp) into the kv head's outputs (stride D), once at the end.
template <typename C>
void add_kv_rows(C* dko, C* dvo, const C* dKa, const C* dVa, int64_t Sk, int64_t D, int64_t Dp) {
  for (int64_t j = 0; j < Sk; ++j)
    for (int64_t d = 0; d < D; ++d) {
      dko[j * D + d] += dKa[j * Dp + d];
      dvo[j * D + d] += dVa[j * Dp + d];
    }
}

// The lanes of a segment-backward tile: rows rs[t0 ..] of segment s (at most BM of cnt), their
// key intervals inside the segment and lse (a row without keys is not live). False when no lane
// is live; else the lanes' hull and core are set.
template <typename C>
bool seg_bwd_lanes(const AttnArgs& a, int64_t segment, int64_t s, const int32_t* rs, int64_t cnt, int64_t t0,
                   const C* lh, BwdTile<C>& tl) {
  constexpr int BM = Lanes<C>::BM;
  bool any = false;
  for (int i = 0; i < BM; ++i) {
    const bool ok = t0 + i < cnt;
    tl.valid[i] = ok;
    tl.qrow[i] = ok ? rs[t0 + i] : -1;
    int64_t lo = 0, hi = 0;
    C ls = ok ? lh[tl.qrow[i]] : C(0);
    if (ok && ls != -std::numeric_limits<C>::infinity())
      seg_interval(a, segment, s, tl.qrow[i] + a.Sk - a.Sq, lo, hi);
    else
      ls = 0;
    tl.ln.lo[i] = static_cast<typename VT<C>::Is>(lo);
    tl.ln.hi[i] = static_cast<typename VT<C>::Is>(hi);
    tl.lse[i] = ls;
    tl.live[i] = lo < hi;
    any = any || tl.live[i];
  }
  if (any) tl.ln.finish(tl.valid);
  return any;
}

// sum_d x[d] y[d] in the compute type: float rows of a multiple of 8 in eight chains of 8-float
// vectors (one chain of D dependent adds is bound by the add's latency), others in order.
template <typename T>
typename Num<T>::acc row_dot(const T* x, const T* y, int64_t D) {
#if defined(__AVX__)
  if constexpr (std::is_same<T, float>::value) {
    if (D % 8 == 0) {
      __m256 acc = _mm256_setzero_ps();
      for (int64_t d = 0; d < D; d += 8) acc = _mm256_add_ps(acc, _mm256_mul_ps(_mm256_loadu_ps(x + d), _mm256_loadu_ps(y + d)));
      alignas(32) float r[8];
      _mm256_store_ps(r, acc);
      return ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
    }
  }
#endif
  typename Num<T>::acc s = 0;
  for (int64_t d = 0; d < D; ++d) s += wid(x[d]) * wid(y[d]);
  return s;
}

// Packs a backward tile's live lanes (rows tl.qrow of q and dout, whatever their order): Q
// (pre-scaled, and as rows), dO' (both layouts) and Dr' = rowdot of the row; with a gate (one of
// a gated mix's paths) dO' = g dout and Dr' = g rowdot, the plain backward of that path then
// giving exactly the gated gradient (dP' = g dP, dV += P^T dO'). Lanes that are not live get
// zeros. float rows of 8 floats are moved as 8-float vectors (with AVX-512 too) and transposed
// 8 x 8 in registers (the segment walk packs every (row, segment) visit); other types go
// element by element. rows = false skips the row layouts (Qr, dOr) on the vector path, for a
// caller that reads q and dout rows in place (the segment backward's direct form).
template <typename T>
void bwd_pack_rows(int64_t D, typename Num<T>::acc scale, const T* qh, const T* doh, const typename Num<T>::acc* rowdot,
                   const typename Num<T>::acc* gate, BwdTile<typename Num<T>::acc>& tl, bool rows = true) {
  using C = typename Num<T>::acc;
  constexpr int L = VT<C>::L, BM = Lanes<C>::BM;
  const int64_t Dp = (D + L - 1) / L * L;
  bool vec = false;
#if defined(__AVX__)
  // 8-float vectors whatever the ISA's width (AVX-512 too); Qr / dOr pad columns [D, Dp) zeroed
  if constexpr (std::is_same<T, float>::value && BM % 8 == 0) {
    vec = D % 8 == 0;
    if (vec) {
      __m256 probe = _mm256_setzero_ps();  // x * 0 summed: NaN when some live q or dout element is not finite
      const __m256 sc = _mm256_set1_ps(scale), zero = _mm256_setzero_ps();
      for (int g0 = 0; g0 < BM; g0 += 8) {
        const T* qr[8];
        const T* dr[8];
        __m256 gv[8];
        bool live[8];
        for (int i = 0; i < 8; ++i) {
          const int x = g0 + i;
          live[i] = tl.valid[x] && tl.live[x];
          const int64_t r = live[i] ? tl.qrow[x] : 0;
          qr[i] = qh + r * D;
          dr[i] = doh + r * D;
          gv[i] = _mm256_set1_ps(live[i] && gate ? gate[r] : C(1));
          tl.Dr[x] = live[i] ? (gate ? gate[r] * rowdot[r] : rowdot[r]) : C(0);
        }
        for (int64_t d0 = 0; d0 < D; d0 += 8) {
          __m256 xq[8], xd[8];
          for (int i = 0; i < 8; ++i) {
            const __m256 q = live[i] ? _mm256_loadu_ps(qr[i] + d0) : zero;
            __m256 dd = live[i] ? _mm256_loadu_ps(dr[i] + d0) : zero;
            if (gate) dd = _mm256_mul_ps(gv[i], dd);
            probe = _mm256_add_ps(probe, _mm256_add_ps(_mm256_mul_ps(q, zero), _mm256_mul_ps(dd, zero)));
            if (rows) {
              _mm256_storeu_ps(tl.Qr + (g0 + i) * Dp + d0, q);
              _mm256_storeu_ps(tl.dOr + (g0 + i) * Dp + d0, dd);
            }
            xq[i] = q;
            xd[i] = dd;
          }
          transpose8(xq);
          transpose8(xd);
          for (int k = 0; k < 8; ++k) {
            _mm256_storeu_ps(tl.Qt + (d0 + k) * BM + g0, _mm256_mul_ps(sc, xq[k]));
            _mm256_storeu_ps(tl.dOt + (d0 + k) * BM + g0, xd[k]);
          }
        }
        for (int i = 0; i < 8 && rows; ++i)
          for (int64_t d = D; d < Dp; ++d) tl.Qr[(g0 + i) * Dp + d] = tl.dOr[(g0 + i) * Dp + d] = C(0);
      }
      alignas(32) float pr[8];
      _mm256_store_ps(pr, probe);
      bool bad = false;
      for (int x = 0; x < 8; ++x) bad = bad || pr[x] != pr[x];
      tl.bad = bad;
    }
  }
#endif
  if (vec) return;
  C probe = 0;  // x * 0 summed: NaN when some live q or dout element is not finite
  for (int i = 0; i < BM; ++i) {
    const bool live = tl.valid[i] && tl.live[i];
    const int64_t r = live ? tl.qrow[i] : 0;
    const C g = live && gate ? gate[r] : C(1);
    for (int64_t d = 0; d < D; ++d) {
      C dv_ = live ? wid(doh[r * D + d]) : C(0);
      if (gate) dv_ = g * dv_;
      const C qv = live ? wid(qh[r * D + d]) : C(0);
      tl.Qt[d * BM + i] = scale * qv;
      tl.Qr[i * Dp + d] = qv;
      tl.dOt[d * BM + i] = dv_;
      tl.dOr[i * Dp + d] = dv_;
      probe += qv * C(0) + dv_ * C(0);
    }
    for (int64_t d = D; d < Dp; ++d) tl.Qr[i * Dp + d] = tl.dOr[i * Dp + d] = C(0);
    tl.Dr[i] = live ? (gate ? g * rowdot[r] : rowdot[r]) : C(0);
  }
  tl.bad = probe != probe;
}

// Prefetches into L2 the q, dout and dq rows of a segment-backward tile's lanes (the rows of the
// tile after the current one: scattered over the head, they come from L3 at long lengths).
template <typename T, typename C>
void bwd_prefetch_rows(int64_t D, const T* qh, const T* doh, C* dqh, const int32_t* rows, int64_t n) {
  for (int64_t x = 0; x < n; ++x) {
    const int64_t r = rows[x];
    // GCC deletes loops of nothing but prefetches here (they count as free of side effects):
    // an empty volatile asm keeps the loop.
    asm volatile("");
    const char* q = reinterpret_cast<const char*>(qh + r * D);
    const char* o = reinterpret_cast<const char*>(doh + r * D);
    const char* g = reinterpret_cast<const char*>(dqh + r * D);
    for (int64_t c = 0; c < static_cast<int64_t>(D * sizeof(T)); c += 64) {
      __builtin_prefetch(q + c, 0, 2);
      __builtin_prefetch(o + c, 0, 2);
    }
    for (int64_t c = 0; c < static_cast<int64_t>(D * sizeof(C)); c += 64) __builtin_prefetch(g + c, 1, 2);
  }
}

// gemm() for M a multiple of 4, in 4-row micro-kernels over groups of (at most) 3 column vectors,
// 4 with AVX-512's 16 accumulators (D 64 is then one group of 4 vectors, not 3 + 1): a tile's
// lanes and a chunk's 64 keys then run without a one-row tail (gemm's 3-row kernels leave one
// row of 16 and of 64, at a third of the rate). B and C rows through RowsAt / RowsBy (mk_at).
template <typename C, class BR, class CR>
void gemm4_rows(int64_t M, int64_t NV, int64_t K, const C* a, int64_t am, int64_t ak, BR b, CR c, int mode) {
  constexpr int L = VT<C>::L, NBmax = kAcc >= 16 ? 4 : 3;
  for (int64_t n0 = 0; n0 < NV;) {
    const int nb = NV - n0 >= NBmax ? NBmax : static_cast<int>(NV - n0);
    const BR bn = b.at(0, n0 * L);
    for (int64_t m = 0; m < M; m += 4) {
      const C* am_ = a + m * am;
      const CR cm = c.at(m, n0 * L);
      if (NBmax == 4 && nb == 4)
        mk_at<C, 4, NBmax, 0>(K, am_, am, ak, bn, cm, mode, nullptr);
      else if (nb == 3)
        mk_at<C, 4, 3, 0>(K, am_, am, ak, bn, cm, mode, nullptr);
      else if (nb == 2)
        mk_at<C, 4, 2, 0>(K, am_, am, ak, bn, cm, mode, nullptr);
      else
        mk_at<C, 4, 1, 0>(K, am_, am, ak, bn, cm, mode, nullptr);
    }
    n0 += nb;
  }
}

// gemm4_rows over row-major B and C.
template <typename C>
void gemm4(int64_t M, int64_t NV, int64_t K, const C* a, int64_t am, int64_t ak, const C* b, int64_t ldb, C* c,
           int64_t ldc, int mode) {
  gemm4_rows<C>(M, NV, K, a, am, ak, RowsAt<const C>{b, ldb}, RowsAt<C>{c, ldc}, mode);
}

// bwd_products for a segment tile (no dual path, no padding): the unmasked products with
// gemm4 where the rows allow, the rest as bwd_products does it.
template <typename C>
void seg_bwd_products(const BwdTile<C>& tl, bool full, int64_t D, int64_t Dp, int64_t j0, int64_t nk, const C* St,
                      const C* dPt, const C* Kc, int64_t ldk, C* dVa, C* dKa, C* dQt) {
  constexpr int L = VT<C>::L, BM = Lanes<C>::BM;
  const int64_t NVd = Dp / L;
  if (BM % 4 == 0 && nk % 4 == 0 && (full || !(tl.bad || any_nonfinite(Kc, nk, D, ldk)))) {
    gemm4<C>(nk, NVd, BM, St, BM, 1, tl.dOr, Dp, dVa, Dp, kAdd);
    gemm4<C>(nk, NVd, BM, dPt, BM, 1, tl.Qr, Dp, dKa, Dp, kAdd);
    gemm4<C>(BM, NVd, nk, dPt, 1, BM, Kc, ldk, dQt, Dp, kAdd);
    return;
  }
  bwd_products<C>(tl, false, full, D, Dp, nullptr, j0, nk, St, dPt, Kc, ldk, true, dVa, dKa, true, dQt);
}

// Backward: one task per (b, kv head) owns that head's dK/dV (task-local [Sk, Dp] rows, added
// once at the end) and the dQ rows of its G query heads; per query head the same segment-major
// walk as the forward, with P and dS rebuilt from the saved lse (bwd_chunk / bwd_products, as
// the fused backward forms them). Every output element has one owner: no atomics, and the
// result does not depend on the thread count.
template <typename T, int DC>
void segment_backward_typed(const AttnArgs& a, const int32_t* idx, int64_t K, int64_t segment, const BwdIn<T>& in,
                            typename Num<T>::acc* dq, typename Num<T>::acc* dk, typename Num<T>::acc* dv) {
  using C = typename Num<T>::acc;
  constexpr int L = VT<C>::L, BM = Lanes<C>::BM;
  const int64_t D = DC ? DC : a.D, G = a.Hq / a.Hkv, Sq = a.Sq, Sk = a.Sk;
  const int64_t Dp = (D + L - 1) / L * L, nseg = (Sk + segment - 1) / segment;
  const C scale = static_cast<C>(a.scale);
  // The direct form (float rows of whole vectors): dV and dK read the q and dout rows in place
  // and dQ accumulates into the dq rows, by row pointers (gemm4_rows), instead of copying each
  // (row, segment) visit's rows into the tile and adding a zeroed dQ tile back afterwards. A chunk
  // that needs bwd_products' masking (a NaN or an infinity about) packs the rows after all.
  constexpr bool kFloat = std::is_same<T, float>::value;
  const bool direct = kFloat && BM % 8 == 0 && D % 8 == 0 && D % L == 0;
  const int64_t NVd = Dp / L;
  struct W {
    BwdScratch<C> b;
    Buf<C> dr, zr, junk;
    SegLists lists;
  };
  run_tasks<W>(a.B * a.Hkv, [&](int64_t bk, W& w) {
    const int64_t kvs = a.kv_head_stride ? a.kv_head_stride : Sk * D;
    const T* kh = static_cast<const T*>(a.k) + bk * kvs;
    const T* vh = static_cast<const T*>(a.v) + bk * kvs;
    C* St = w.b.st.get(static_cast<size_t>(kBN * BM));
    C* dPt = w.b.dpt.get(static_cast<size_t>(kBN * BM));
    C* dQt = w.b.dqt.get(static_cast<size_t>(BM * Dp));
    C* dKa = kept_rows<C, 0>(static_cast<size_t>(Sk * Dp), w.b.dkacc);
    C* dVa = kept_rows<C, 1>(static_cast<size_t>(Sk * Dp), w.b.dvacc);
    std::fill(dKa, dKa + Sk * Dp, C(0));
    std::fill(dVa, dVa + Sk * Dp, C(0));
    C* Dr = w.dr.get(static_cast<size_t>(Sq));
    BwdTile<C> tl;
    tl.Qt = w.b.qt.get(static_cast<size_t>(D * BM));
    tl.Qr = w.b.qr.get(static_cast<size_t>(BM * Dp));
    tl.dOt = w.b.dot.get(static_cast<size_t>(D * BM));
    tl.dOr = w.b.dor.get(static_cast<size_t>(BM * Dp));
    // the rows of lanes without a live row: zeros to read, a scratch row to accumulate into
    C* zr = w.zr.get(static_cast<size_t>(Dp));
    std::fill(zr, zr + Dp, C(0));
    C* junk = w.junk.get(static_cast<size_t>(Dp));
    const C* qp[BM];
    const C* dp[BM];
    C* dqp[BM];
    for (int64_t g = 0; g < G; ++g) {
      const int64_t bh = (bk / a.Hkv) * a.Hq + (bk % a.Hkv) * G + g;
      const T* qh = static_cast<const T*>(a.q) + bh * Sq * D;
      const T* oh = in.out + bh * Sq * D;
      const T* doh = in.dout + bh * Sq * D;
      const C* lh = in.lse + bh * Sq;
      for (int64_t i = 0; i < Sq; ++i) {
        Dr[i] = row_dot<T>(oh + i * D, doh + i * D, D);
      }
      w.lists.build(idx + bh * Sq * K, 0, Sq, K, nseg);
      for (int64_t s = 0; s < nseg; ++s) {
        const int32_t* rs = w.lists.rows.data() + w.lists.start[s];
        const int64_t cnt = w.lists.start[s + 1] - w.lists.start[s];
        for (int64_t t0 = 0; t0 < cnt; t0 += BM) {
          if (!seg_bwd_lanes(a, segment, s, rs, cnt, t0, lh, tl)) continue;
          bwd_pack_rows<T>(D, scale, qh, doh, Dr, nullptr, tl, !direct);
          {
            // the rows of the tile after next (the list is flat across segments)
            const int64_t x0 = (rs - w.lists.rows.data()) + t0 + 2 * BM, nrows = static_cast<int64_t>(w.lists.rows.size());
            bwd_prefetch_rows<T, C>(D, qh, doh, dq + bh * Sq * D, w.lists.rows.data() + std::min(x0, nrows),
                                    std::max<int64_t>(0, std::min<int64_t>(BM, nrows - x0)));
          }
          bool packed = !direct, dqt = false;  // the tile's row layouts are filled; dQt holds sums
          if constexpr (kFloat) {
            if (direct) {
              for (int i = 0; i < BM; ++i) {
                const bool on = tl.valid[i] && tl.live[i];
                qp[i] = on ? qh + tl.qrow[i] * D : zr;
                dp[i] = on ? doh + tl.qrow[i] * D : zr;
                dqp[i] = on ? dq + (bh * Sq + tl.qrow[i]) * D : junk;
              }
            }
          }
          for (int64_t j0 = tl.ln.hull_lo; j0 < tl.ln.hull_hi; j0 += kBN) {
            const int64_t nk = std::min<int64_t>(kBN, tl.ln.hull_hi - j0);
            int64_t ldk, ldvv;
            const C* Kc = rows_as<T, C>(kh, j0, nk, D, Dp, w.b.kb, ldk);
            const C* Vc = rows_as<T, C>(vh, j0, nk, D, D, w.b.vb, ldvv);
            bwd_chunk<C, DC>(tl, false, D, scale, nullptr, j0, nk, Kc, ldk, Vc, ldvv, St, dPt);
            const bool full = chunk_full(tl, false, j0, nk, nullptr);
            if (direct && nk % 4 == 0 && (full || !(tl.bad || any_nonfinite(Kc, nk, D, ldk)))) {
              gemm4_rows<C>(nk, NVd, BM, St, BM, 1, RowsBy<const C>{dp, 0}, RowsAt<C>{dVa + j0 * Dp, Dp}, kAdd);
              gemm4_rows<C>(nk, NVd, BM, dPt, BM, 1, RowsBy<const C>{qp, 0}, RowsAt<C>{dKa + j0 * Dp, Dp}, kAdd);
              gemm4_rows<C>(BM, NVd, nk, dPt, 1, BM, RowsAt<const C>{Kc, ldk}, RowsBy<C>{dqp, 0}, kAdd);
              continue;
            }
            if (!packed) bwd_pack_rows<T>(D, scale, qh, doh, Dr, nullptr, tl);
            if (!dqt) std::fill(dQt, dQt + BM * Dp, C(0));
            packed = dqt = true;
            seg_bwd_products<C>(tl, full, D, Dp, j0, nk, St, dPt, Kc, ldk, dVa + j0 * Dp, dKa + j0 * Dp, dQt);
          }
          if (dqt) bwd_store_dq(a, D, Dp, bh, tl, dQt, dq);
        }
      }
    }
    add_kv_rows(dk + bk * Sk * D, dv + bk * Sk * D, dKa, dVa, Sk, D, Dp);
  });
}

// ---------------------------------------------------------------------------------------
// Dual attention with a segment-routed global path (dual_segment_attention_forward/backward):
// the local path (a.mask, a.window) and segment attention (indices, segment; the causal cut of
// a.causal) for every query row, mixed by the gates, in one task per block of query rows.

// The gates of row i of head bh = b * Hq + h.
template <typename T>
inline const T* gate_row(const DualArgs& d, int64_t b, int64_t bh, int64_t i) {
  return static_cast<const T*>(d.gates) + (d.gates_per_head ? bh * d.a.Sq + i : b * d.a.Sq + i) * 2;
}

// Forward: a task owns a block of query rows of one head (whole BM tiles). It runs the segment
// walk over the block (state per row), then each BM tile of the block through the local path's
// key hull (fwd_tile_keys, as the fused forward), and mixes both paths per row while they are
// in the task's scratch: out = g_l * out_l + g_g * out_g, with out_l, out_g, lse_l and lse_g
// written for the backward.
template <typename T, int DC>
void dual_segment_typed(const DualArgs& da, const int32_t* idx, int64_t K, int64_t segment, T* out, T* out_l,
                        T* out_g, typename Num<T>::acc* lse_l, typename Num<T>::acc* lse_g) {
  using C = typename Num<T>::acc;
  constexpr int L = VT<C>::L, BM = Lanes<C>::BM;
  const AttnArgs& a = da.a;
  const int64_t D = DC ? DC : a.D, Sq = a.Sq, Dp = (D + L - 1) / L * L;
  const int64_t nbh = a.B * a.Hq, threads = num_threads();
  // blocks as long as the pool allows (rows per segment fill the walk's tiles), whole tiles
  const int64_t ntile = (Sq + BM - 1) / BM;
  int64_t nblk = std::max<int64_t>(1, std::min(ntile, (4 * threads + nbh - 1) / nbh));
  nblk = std::max(nblk, (Sq + kSegRows - 1) / kSegRows);
  const int64_t TB = (ntile + nblk - 1) / nblk;  // tiles per block
  nblk = (ntile + TB - 1) / TB;
  struct W {
    SegFwdScratch<C> s;
    FwdScratch<C> f;
  };
  const FiniteBlocks<T> vf = seg_finite_v<T>(a);
  run_tasks<W>(nbh * nblk, [&](int64_t task, W& w) {
    const int64_t bh = task / nblk, b = bh / a.Hq, t0 = (task % nblk) * TB, t1 = std::min(ntile, t0 + TB);
    const int64_t i0 = t0 * BM, i1 = std::min(Sq, t1 * BM);
    const HeadRows<T> hr = seg_head_rows<T>(a, bh);
    seg_walk<T, DC>(a, hr, idx + bh * Sq * K, K, segment, i0, i1, w.s, vf, kv_of(a, bh));
    const C* mg = w.s.m.v.data();
    const C* lg = w.s.l.v.data();
    const C* Og = w.s.o.v.data();
    C* Ol = w.f.ot.get(static_cast<size_t>(D * BM));
    alignas(64) C ml[BM], ll[BM];
    int64_t qrow[BM];
    bool valid[BM];
    Lanes<C> ln;
    for (int64_t t = t0; t < t1; ++t) {
      fwd_tile_setup<C>(a, b, t, ln, qrow, valid);
      fwd_tile_keys<T, DC>(a, hr.q, hr.k, hr.v, nullptr, ln, qrow, valid, ln.hull_lo, ln.hull_hi, w.f, ml, ll, Ol, vf,
                           kv_of(a, bh));
      for (int i = 0; i < BM; ++i) {
        if (!valid[i]) continue;
        const int64_t r = t * BM + i, x = r - i0, row = bh * Sq + r;
        const T* gp = gate_row<T>(da, b, bh, r);
        const C g0 = wid(gp[0]), g1 = wid(gp[1]);
        const bool hl = ln.lo[i] < ln.hi[i], hg = w.s.seen[x] != 0;
        const C il = row_inv(hl, ll[i]), ig = row_inv(hg, lg[x]);
        T* o = out + row * D;
        T* ol = out_l + row * D;
        T* og = out_g + row * D;
        for (int64_t d = 0; d < D; ++d) {
          const C xl = hl ? Ol[d * BM + i] * il : C(0), xg = hg ? Og[x * Dp + d] * ig : C(0);
          ol[d] = Num<T>::store(xl);
          og[d] = Num<T>::store(xg);
          o[d] = Num<T>::store(g0 * xl + g1 * xg);
        }
        lse_l[row] = row_lse(hl, ml[i], ll[i]);
        lse_g[row] = row_lse(hg, mg[x], lg[x]);
      }
    }
  });
}

// A packed tile's backward over its lanes' key hull (tl.ln): dK, dV added into the task's rows
// dKa, dVa (stride Dp, from key 0) and its dQ into dq.
template <typename T, int DC>
void bwd_tile_run(const AttnArgs& a, int64_t D, int64_t bh, const T* kh, const T* vh, BwdTile<typename Num<T>::acc>& tl,
                  BwdScratch<typename Num<T>::acc>& w, typename Num<T>::acc* dKa, typename Num<T>::acc* dVa,
                  typename Num<T>::acc* dq) {
  using C = typename Num<T>::acc;
  constexpr int L = VT<C>::L, BM = Lanes<C>::BM;
  const int64_t Dp = (D + L - 1) / L * L;
  C* St = w.st.get(static_cast<size_t>(kBN * BM));
  C* dPt = w.dpt.get(static_cast<size_t>(kBN * BM));
  C* dQt = w.dqt.get(static_cast<size_t>(BM * Dp));
  std::fill(dQt, dQt + BM * Dp, C(0));
  for (int64_t j0 = tl.ln.hull_lo; j0 < tl.ln.hull_hi; j0 += kBN) {
    const int64_t nk = std::min<int64_t>(kBN, tl.ln.hull_hi - j0);
    int64_t ldk, ldvv;
    const C* Kc = rows_as<T, C>(kh, j0, nk, D, Dp, w.kb, ldk);
    const C* Vc = rows_as<T, C>(vh, j0, nk, D, D, w.vb, ldvv);
    bwd_chunk<C, DC>(tl, false, D, static_cast<C>(a.scale), nullptr, j0, nk, Kc, ldk, Vc, ldvv, St, dPt);
    bwd_products<C>(tl, false, chunk_full(tl, false, j0, nk, nullptr), D, Dp, nullptr, j0, nk, St, dPt, Kc, ldk, true,
                    dVa + j0 * Dp, dKa + j0 * Dp, true, dQt);
  }
  bwd_store_dq(a, D, Dp, bh, tl, dQt, dq);
}

// Backward: one task per (b, kv head) owns that head's dK/dV (task-local [Sk, Dp] rows, added
// once at the end) and the dQ rows of its G query heads. Per query head, the local path's tiles
// (bwd_tile_geometry over lse_l, as the fused backward) and then the segment path's tiles (the
// segment-major walk over lse_g), each packed with its gate folded into dout. No atomics: the
// result does not depend on the thread count. dgates (sum over d of dout * out_path, summed
// over the heads for shared gates) is a separate pass over the rows, in a fixed order.
template <typename T, int DC>
void dual_segment_backward_typed(const DualArgs& da, const int32_t* idx, int64_t K, int64_t segment,
                                 const BwdIn<T>& in, typename Num<T>::acc* dq, typename Num<T>::acc* dk,
                                 typename Num<T>::acc* dv) {
  using C = typename Num<T>::acc;
  constexpr int L = VT<C>::L, BM = Lanes<C>::BM;
  const AttnArgs& a = da.a;
  const int64_t D = DC ? DC : a.D, G = a.Hq / a.Hkv, Sq = a.Sq, Sk = a.Sk;
  const int64_t Dp = (D + L - 1) / L * L, nseg = (Sk + segment - 1) / segment, ntile = (Sq + BM - 1) / BM;
  const C scale = static_cast<C>(a.scale);
  const BwdIn<T> in_l{in.out, in.dout, in.lse};  // the local path alone, for bwd_tile_geometry
  struct W {
    BwdScratch<C> b;
    Buf<C> rd;
    SegLists lists;
  };
  run_tasks<W>(a.B * a.Hkv, [&](int64_t bk, W& w) {
    const int64_t b = bk / a.Hkv;
    const T* kh = static_cast<const T*>(a.k) + bk * Sk * D;
    const T* vh = static_cast<const T*>(a.v) + bk * Sk * D;
    C* dKa = kept_rows<C, 0>(static_cast<size_t>(Sk * Dp), w.b.dkacc);
    C* dVa = kept_rows<C, 1>(static_cast<size_t>(Sk * Dp), w.b.dvacc);
    std::fill(dKa, dKa + Sk * Dp, C(0));
    std::fill(dVa, dVa + Sk * Dp, C(0));
    // per row of the head: rowdot with out_l, out_g, and the two gates
    C* rd = w.rd.get(static_cast<size_t>(4 * Sq));
    C *rdl = rd, *rdg = rd + Sq, *gl = rd + 2 * Sq, *gg = rd + 3 * Sq;
    BwdTile<C> tl;
    tl.Qt = w.b.qt.get(static_cast<size_t>(D * BM));
    tl.Qr = w.b.qr.get(static_cast<size_t>(BM * Dp));
    tl.dOt = w.b.dot.get(static_cast<size_t>(D * BM));
    tl.dOr = w.b.dor.get(static_cast<size_t>(BM * Dp));
    for (int64_t g = 0; g < G; ++g) {
      const int64_t h = (bk % a.Hkv) * G + g, bh = b * a.Hq + h;
      const T* qh = static_cast<const T*>(a.q) + bh * Sq * D;
      const T* doh = in.dout + bh * Sq * D;
      for (int64_t i = 0; i < Sq; ++i) {
        const T* ol = in.out + (bh * Sq + i) * D;
        const T* og = in.out_g + (bh * Sq + i) * D;
        const T* dd = doh + i * D;
        rdl[i] = row_dot<T>(ol, dd, D);
        rdg[i] = row_dot<T>(og, dd, D);
        const T* gp = gate_row<T>(da, b, bh, i);
        gl[i] = wid(gp[0]);
        gg[i] = wid(gp[1]);
      }
      // local path
      for (int64_t t = 0; t < ntile; ++t) {
        if (!bwd_tile_geometry<T>(a, in_l, b, h, t, tl)) continue;
        bwd_pack_rows<T>(D, scale, qh, doh, rdl, gl, tl);
        bwd_tile_run<T, DC>(a, D, bh, kh, vh, tl, w.b, dKa, dVa, dq);
      }
      // segment path
      const C* lh = in.lse_g + bh * Sq;
      w.lists.build(idx + bh * Sq * K, 0, Sq, K, nseg);
      for (int64_t s = 0; s < nseg; ++s) {
        const int32_t* rs = w.lists.rows.data() + w.lists.start[s];
        const int64_t cnt = w.lists.start[s + 1] - w.lists.start[s];
        for (int64_t t0 = 0; t0 < cnt; t0 += BM) {
          if (!seg_bwd_lanes(a, segment, s, rs, cnt, t0, lh, tl)) continue;
          bwd_pack_rows<T>(D, scale, qh, doh, rdg, gg, tl);
          bwd_tile_run<T, DC>(a, D, bh, kh, vh, tl, w.b, dKa, dVa, dq);
        }
      }
    }
    add_kv_rows(dk + bk * Sk * D, dv + bk * Sk * D, dKa, dVa, Sk, D, Dp);
  });
}

// dgates [B, Sq, 2] or [B, Hq, Sq, 2] (compute type): (sum_d dout * out_l, sum_d dout * out_g),
// summed over the heads in head order for shared gates.
template <typename T>
void dual_gate_grad(const DualArgs& da, const T* out_l, const T* out_g, const T* dout, typename Num<T>::acc* dgates) {
  using C = typename Num<T>::acc;
  const AttnArgs& a = da.a;
  const int64_t D = a.D, Sq = a.Sq, heads = da.gates_per_head ? 1 : a.Hq;
  const int64_t nrow = da.gates_per_head ? a.B * a.Hq * Sq : a.B * Sq;
  parallel_for(nrow, std::max<int64_t>(1, 4096 / std::max<int64_t>(1, D * heads)), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      // rows of head h: per head, row r is (bh, i) itself; shared, r = (b, i) over heads b * Hq + h
      const int64_t i = r % Sq, b0 = da.gates_per_head ? r / Sq : (r / Sq) * a.Hq;
      C sl = 0, sg = 0;
      for (int64_t h = 0; h < heads; ++h) {
        const int64_t e = ((b0 + h) * Sq + i) * D;
        for (int64_t d = 0; d < D; ++d) {
          const C g = wid(dout[e + d]);
          sl += g * wid(out_l[e + d]);
          sg += g * wid(out_g[e + d]);
        }
      }
      dgates[r * 2] = sl;
      dgates[r * 2 + 1] = sg;
    }
  });
}

// Segment means: x [outer, S, D] -> out [outer, nseg, D], out[s] = mean of rows [s*seg, min(S,
// (s+1)*seg)); summed in row order in the compute type (a running sum over arriving keys gives
// the same bits). Backward: dx[j] = dout[seg(j)] / count(seg(j)).
template <typename T>
void segment_mean_typed(const View& out, const View& x, int64_t segment, bool backward) {
  using C = typename Num<T>::acc;
  const int64_t outer = backward ? out.shape[0] : x.shape[0];
  const int64_t S = backward ? out.shape[1] : x.shape[1], D = x.shape[2];
  const int64_t nseg = (S + segment - 1) / segment;
  T* o = static_cast<T*>(out.data);
  const T* xi = static_cast<const T*>(x.data);
  parallel_for(outer * nseg, 1, [&](int64_t b0, int64_t b1) {
    std::vector<C> acc(static_cast<size_t>(D));
    for (int64_t u = b0; u < b1; ++u) {
      const int64_t ob = u / nseg, s = u % nseg, j0 = s * segment, j1 = std::min(S, j0 + segment);
      const C inv = C(1) / static_cast<C>(j1 - j0);
      if (backward) {
        const T* g = xi + (ob * nseg + s) * D;
        for (int64_t j = j0; j < j1; ++j)
          for (int64_t d = 0; d < D; ++d) o[(ob * S + j) * D + d] = Num<T>::store(wid(g[d]) * inv);
        continue;
      }
      std::fill(acc.begin(), acc.end(), C(0));
      for (int64_t j = j0; j < j1; ++j)
        for (int64_t d = 0; d < D; ++d) acc[d] += wid(xi[(ob * S + j) * D + d]);
      for (int64_t d = 0; d < D; ++d) o[(ob * nseg + s) * D + d] = Num<T>::store(acc[d] * inv);
    }
  });
}

// Calls f(T{}, std::integral_constant<int, DC>{}) for the dtype and head dim.
template <typename F>
void dispatch_attn(int32_t dtype, int64_t D, const char* what, F&& f) {
  auto with_d = [&](auto tv) {
    switch (D) {
      case 32: return f(tv, std::integral_constant<int, 32>{});
      case 64: return f(tv, std::integral_constant<int, 64>{});
      case 128: return f(tv, std::integral_constant<int, 128>{});
      default: return f(tv, std::integral_constant<int, 0>{});
    }
  };
  switch (static_cast<DType>(dtype)) {
    case DType::F32: return with_d(float{});
    case DType::F64: return with_d(double{});
    case DType::BF16: return with_d(bf16{});
    default:
      fail(ErrorCode::DType, what, ": expected float32, float64 or bfloat16, got ",
           dtype_name(static_cast<DType>(dtype)));
  }
}

// ---------------------------------------------------------------------------------------
// RoPE

template <typename T>
void rope_typed(const View& out, const View& x, const View& pos, double base, bool inverse) {
  using C = typename Num<T>::acc;
  const int64_t D = x.shape[x.ndim - 1], S = x.shape[x.ndim - 2], half = D / 2;
  const int64_t rows = view_numel(x) / std::max<int64_t>(D, 1);
  const int64_t PB = pos.ndim == 1 ? 1 : pos.shape[0];
  const int64_t rows_per_b = rows / std::max<int64_t>(PB, 1);
  const int32_t* pp = static_cast<const int32_t*>(pos.data);
  const T* xs = static_cast<const T*>(x.data);
  T* os = static_cast<T*>(out.data);
  if (rows == 0 || half == 0) {
    if (os != xs)
      for (int64_t i = 0; i < rows * D; ++i) os[i] = xs[i];
    return;
  }
  std::vector<double> inv(static_cast<size_t>(half));
  for (int64_t i = 0; i < half; ++i) inv[i] = std::pow(base, -2.0 * static_cast<double>(i) / static_cast<double>(D));
  parallel_for(rows, std::max<int64_t>(1, 4096 / D), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t s = r % S, b = PB == 1 ? 0 : r / rows_per_b;
      const double p = static_cast<double>(pp[b * S + s]);
      const T* xr = xs + r * D;
      T* orow = os + r * D;
      for (int64_t i = 0; i < half; ++i) {
        double th = p * inv[i];
        if (inverse) th = -th;
        const C c = static_cast<C>(std::cos(th)), sn = static_cast<C>(std::sin(th));
        const C x0 = wid(xr[i]), x1 = wid(xr[i + half]);
        orow[i] = Num<T>::store(x0 * c - x1 * sn);
        orow[i + half] = Num<T>::store(x1 * c + x0 * sn);
      }
    }
  });
}

}  // namespace

void attention_forward(const AttnArgs& a, void* out, void* lse) {
  dispatch_attn(a.dtype, a.D, "attention", [&](auto tv, auto dc) {
    using T = decltype(tv);
    using C = typename Num<T>::acc;
    check_query_index(a);
    if (a.B <= 0 || a.Hq <= 0 || a.n <= 0) return;
    if (a.D <= 0) {
      if (lse) {
        // No dimensions: every visible key scores 0, so lse = log(count of visible keys).
        C* l = static_cast<C*>(lse);
        for (int64_t b = 0; b < a.B; ++b)
          for (int64_t h = 0; h < a.Hq; ++h)
            for (int64_t r = 0; r < a.n; ++r) {
              const int64_t qi = a.query_index ? a.query_index[b * a.n + r] : r;
              int64_t lo, hi, cnt = 0;
              key_interval(a, a.mask, qi + a.Sk - a.Sq, lo, hi);
              for (int64_t j = lo; j < hi; ++j) cnt += !(a.key_padding && a.key_padding[b * a.Sk + j]);
              l[(b * a.Hq + h) * a.n + r] = cnt ? std::log(static_cast<C>(cnt)) : -std::numeric_limits<C>::infinity();
            }
      }
      return;
    }
    forward_typed<T, decltype(dc)::value>(a, static_cast<T*>(out), static_cast<C*>(lse));
  });
}

void attention_backward(const AttnArgs& a, const void* out, const void* dout, const void* lse, void* dq, void* dk,
                        void* dv) {
  dispatch_attn(a.dtype, a.D, "attention_backward", [&](auto tv, auto dc) {
    using T = decltype(tv);
    using C = typename Num<T>::acc;
    check_query_index(a);
    if (a.B <= 0 || a.Hq <= 0 || a.n <= 0 || a.D <= 0 || a.Sk <= 0) return;
    BwdIn<T> in{static_cast<const T*>(out), static_cast<const T*>(dout), static_cast<const C*>(lse)};
    backward_typed<T, decltype(dc)::value>(a, in, static_cast<C*>(dq), static_cast<C*>(dk), static_cast<C*>(dv));
  });
}

void dual_attention_backward(const DualArgs& d, const void* out_local, const void* out_global, const void* dout,
                             const void* lse_local, const void* lse_global, void* dq, void* dk, void* dv) {
  const AttnArgs& a = d.a;
  if (a.query_index) fail(ErrorCode::Value, "dual_attention_backward: query_index is not supported");
  dispatch_attn(a.dtype, a.D, "dual_attention_backward", [&](auto tv, auto dc) {
    using T = decltype(tv);
    using C = typename Num<T>::acc;
    if (a.B <= 0 || a.Hq <= 0 || a.Sq <= 0 || a.D <= 0 || a.Sk <= 0) return;
    BwdIn<T> in{static_cast<const T*>(out_local), static_cast<const T*>(dout), static_cast<const C*>(lse_local), &d,
                static_cast<const T*>(out_global), static_cast<const C*>(lse_global)};
    backward_typed<T, decltype(dc)::value>(a, in, static_cast<C*>(dq), static_cast<C*>(dk), static_cast<C*>(dv));
  });
}

void dual_attention_forward(const DualArgs& d, void* out, void* out_local, void* out_global, void* lse_local,
                            void* lse_global) {
  const AttnArgs& a = d.a;
  if (a.query_index) fail(ErrorCode::Value, "dual_attention: query_index is not supported");
  dispatch_attn(a.dtype, a.D, "dual_attention", [&](auto tv, auto dc) {
    using T = decltype(tv);
    using C = typename Num<T>::acc;
    if (a.B <= 0 || a.Hq <= 0 || a.Sq <= 0 || a.D <= 0) return;
    dual_typed<T, decltype(dc)::value>(d, static_cast<T*>(out), static_cast<T*>(out_local),
                                       static_cast<T*>(out_global), static_cast<C*>(lse_local),
                                       static_cast<C*>(lse_global));
  });
}

void segment_attention_forward(const AttnArgs& a, const void* indices, int32_t topk, int64_t segment, void* out,
                               void* lse) {
  dispatch_attn(a.dtype, a.D, "segmentAttention", [&](auto tv, auto dc) {
    using T = decltype(tv);
    using C = typename Num<T>::acc;
    if (a.B <= 0 || a.Hq <= 0 || a.Sq <= 0 || a.D <= 0) return;
    const int32_t* idx = static_cast<const int32_t*>(indices);
    check_segment_indices(a, idx, topk, a.Sk > 0 ? (a.Sk + segment - 1) / segment : 0);
    segment_forward_typed<T, decltype(dc)::value>(a, idx, topk, segment, static_cast<T*>(out), static_cast<C*>(lse));
  });
}

void segment_attention_backward(const AttnArgs& a, const void* indices, int32_t topk, int64_t segment, const void* out,
                                const void* dout, const void* lse, void* dq, void* dk, void* dv) {
  dispatch_attn(a.dtype, a.D, "segmentAttentionBackward", [&](auto tv, auto dc) {
    using T = decltype(tv);
    using C = typename Num<T>::acc;
    if (a.B <= 0 || a.Hq <= 0 || a.Sq <= 0 || a.D <= 0 || a.Sk <= 0) return;
    const int32_t* idx = static_cast<const int32_t*>(indices);
    check_segment_indices(a, idx, topk, (a.Sk + segment - 1) / segment);
    BwdIn<T> in{static_cast<const T*>(out), static_cast<const T*>(dout), static_cast<const C*>(lse)};
    segment_backward_typed<T, decltype(dc)::value>(a, idx, topk, segment, in, static_cast<C*>(dq), static_cast<C*>(dk),
                                                   static_cast<C*>(dv));
  });
}

void dual_segment_attention_forward(const DualArgs& d, const void* indices, int32_t topk, int64_t segment, void* out,
                                    void* out_local, void* out_global, void* lse_local, void* lse_global) {
  const AttnArgs& a = d.a;
  dispatch_attn(a.dtype, a.D, "dualAttention", [&](auto tv, auto dc) {
    using T = decltype(tv);
    using C = typename Num<T>::acc;
    if (a.B <= 0 || a.Hq <= 0 || a.Sq <= 0 || a.D <= 0) return;
    const int32_t* idx = static_cast<const int32_t*>(indices);
    check_segment_indices(a, idx, topk, a.Sk > 0 ? (a.Sk + segment - 1) / segment : 0);
    dual_segment_typed<T, decltype(dc)::value>(d, idx, topk, segment, static_cast<T*>(out), static_cast<T*>(out_local),
                                               static_cast<T*>(out_global), static_cast<C*>(lse_local),
                                               static_cast<C*>(lse_global));
  });
}

void dual_segment_attention_backward(const DualArgs& d, const void* indices, int32_t topk, int64_t segment,
                                     const void* out_local, const void* out_global, const void* dout,
                                     const void* lse_local, const void* lse_global, void* dq, void* dk, void* dv,
                                     void* dgates) {
  const AttnArgs& a = d.a;
  dispatch_attn(a.dtype, a.D, "dualAttentionBackward", [&](auto tv, auto dc) {
    using T = decltype(tv);
    using C = typename Num<T>::acc;
    if (a.B <= 0 || a.Hq <= 0 || a.Sq <= 0) return;
    const T *ol = static_cast<const T*>(out_local), *og = static_cast<const T*>(out_global);
    const T* dd = static_cast<const T*>(dout);
    dual_gate_grad<T>(d, ol, og, dd, static_cast<C*>(dgates));
    if (a.D <= 0 || a.Sk <= 0) return;
    const int32_t* idx = static_cast<const int32_t*>(indices);
    check_segment_indices(a, idx, topk, (a.Sk + segment - 1) / segment);
    BwdIn<T> in{ol, dd, static_cast<const C*>(lse_local), &d, og, static_cast<const C*>(lse_global)};
    dual_segment_backward_typed<T, decltype(dc)::value>(d, idx, topk, segment, in, static_cast<C*>(dq),
                                                        static_cast<C*>(dk), static_cast<C*>(dv));
  });
}

void segment_mean(const View& out, const View& x, int64_t segment) {
  dispatch_float(dt(x), "segmentMean", [&](auto tv) { segment_mean_typed<decltype(tv)>(out, x, segment, false); });
}

void segment_mean_backward(const View& dx, const View& dout, int64_t segment) {
  dispatch_float(dt(dout), "segmentMeanBackward",
                 [&](auto tv) { segment_mean_typed<decltype(tv)>(dx, dout, segment, true); });
}

void rope(const View& out, const View& x, const View& positions, double base, bool inverse) {
  dispatch_float(dt(x), "rope", [&](auto tv) { rope_typed<decltype(tv)>(out, x, positions, base, inverse); });
}

}  // namespace DR_ISA
}  // namespace cpu
}  // namespace dualroute
