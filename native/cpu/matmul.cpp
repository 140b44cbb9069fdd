// CPU matrix multiply: C = alpha * op(A) @ op(B) + beta * C over a batch (see MatmulArgs in
// core/ops.h), for float32, float64 and bfloat16 (bfloat16 is widened to float while packing
// and accumulates in float; the result is rounded once, at the end, with float_to_bf16).
//
// Structure (Goto/BLIS): the k x n operand is cut into KC x NC panels and copied ("packed")
// into NR-column micro-panels; the m x k operand into MC x KC blocks of MR-row micro-panels.
// Packing is where both transposes, the leading dimensions and the dtype conversion are
// handled, so the micro-kernel only ever streams two contiguous, 64-byte aligned buffers of
// float (or double) and keeps an MR x NR tile of C in vector registers for the whole KC loop.
// Edge panels are zero-padded to full MR / NR, so the micro-kernel never branches on shape;
// only the write-back of an edge tile is clipped to the valid rows and columns.
//
// Block sizes (float; float64 keeps MR, halves NR since a vector holds half the lanes, and
// halves MC and NC so that every block occupies the same bytes):
//   avx512  MR 14 x NR 32: 28 zmm accumulators + 2 for B + 1 broadcast of A = 31 of 32.
//   avx2    MR  6 x NR 16: 12 ymm accumulators + 2 + 1 = 15 of 16.
//   generic MR  6 x NR  8: the same count in 16-byte registers (SSE2, NEON).
//   KC 512: the C tile is loaded and stored once per KC step, so a long KC amortises that
//     traffic. The KC x NR micro-panel of B (64 KiB) then overflows L1, but it need not fit:
//     one k-step reads 184 bytes of packed A and B for 28 FMAs, which L2 streams with room to
//     spare. Measured on Zen 4, one thread, 2048^3: KC 192/256/384/512 gave about
//     87/91/94/98 GFLOP/s; 768 was no better.
//   MC 168 (a multiple of MR): the MC x KC block of A (336 KiB) stays in the 1 MiB L2 while
//     every NR panel of B streams past it.
//   NC 4096: the packed KC x NC panel of B (8 MiB) is shared by all threads through L3.
// These were tuned on an AMD EPYC (Zen 4: 32 KiB L1d, 1 MiB L2 per core, 32 MiB L3).
//
// Threading: for one matrix, each (NC, KC) step first packs the B panel on the pool (the
// micro-panels are independent), then hands out tiles of C, MC rows by a group of NR panels,
// one at a time from a shared counter; every tile packs its own A block into a thread_local
// buffer, so no two threads ever write the same memory. The grid aims at about four tiles
// per thread and splits N only when the M blocks alone are too few (a short, wide C), which
// keeps 2 cores and 16 alike busy. With a single M block each tile packs its own B panels
// as well, saving a pool round trip. Below about 200^3 multiply-adds one matrix runs on one
// thread (waking the pool costs more than the second core saves); a batch of such matrices
// is spread over the pool a whole matrix per task instead.
//
// Shapes with no reuse go around the packing: m*n*k <= 256 is a plain loop, and m == 1 or
// n == 1 (a matrix-vector product, bound by reading the matrix once) has its own loop.
//
// bfloat16 with k > KC accumulates the partial products in a float workspace and rounds
// once at the end; rounding after every KC step would lose precision with k.
#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <utility>
#include <vector>

#include "../core/dtype.h"
#include "../core/error.h"
#include "../core/parallel.h"
#include "kernels.h"

namespace dualroute {
namespace cpu {
namespace DR_ISA {
namespace {

#if defined(__AVX512F__)
constexpr int kVB = 64;
constexpr int kMRf = 14, kMRd = 14;
#elif defined(__AVX2__)
constexpr int kVB = 32;
constexpr int kMRf = 6, kMRd = 6;
#else
constexpr int kVB = 16;
constexpr int kMRf = 6, kMRd = 6;
#endif

#ifndef MM_KC
#define MM_KC 512
#endif
#ifndef MM_MC
#define MM_MC 168
#endif
#ifndef MM_NC
#define MM_NC 4096
#endif

typedef float vfloat __attribute__((vector_size(kVB)));
typedef double vdouble __attribute__((vector_size(kVB)));

template <typename T>
struct Cfg;
template <>
struct Cfg<float> {
  using V = vfloat;
  static constexpr int VL = kVB / 4, NV = 2, NR = VL * NV, MR = kMRf;
  static constexpr int64_t KC = MM_KC, MC = (MM_MC / MR) * MR, NC = MM_NC;
};
template <>
struct Cfg<double> {
  using V = vdouble;
  static constexpr int VL = kVB / 8, NV = 2, NR = VL * NV, MR = kMRd;
  static constexpr int64_t KC = MM_KC, MC = (MM_MC / 2 / MR) * MR, NC = MM_NC / 2;
};

// A growable 64-byte aligned scratch buffer. Only ever used as thread_local or as a local,
// never shared between two running matmuls.
struct Scratch {
  std::vector<unsigned char> bytes;
  template <typename T>
  T* get(size_t count) {
    size_t need = count * sizeof(T) + 64;
    if (bytes.size() < need) bytes.resize(need);
    uintptr_t p = reinterpret_cast<uintptr_t>(bytes.data());
    return reinterpret_cast<T*>((p + 63) & ~uintptr_t(63));
  }
};

// Runs fn(t) for every t in [0, ntasks) on the pool, handing tasks out one at a time from a
// shared counter. parallel_for alone would cut them into fixed chunks: 13 equal tiles on 2
// threads become 7 chunks of 2, leaving one thread 8 tiles and the other 5.
template <typename F>
void run_tasks(int64_t ntasks, int threads, const F& fn) {
  if (threads <= 1 || ntasks <= 1) {
    for (int64_t t = 0; t < ntasks; ++t) fn(t);
    return;
  }
  std::atomic<int64_t> next{0};
  parallel_for(std::min<int64_t>(threads, ntasks), 1, [&](int64_t, int64_t) {
    for (int64_t t = next.fetch_add(1); t < ntasks; t = next.fetch_add(1)) fn(t);
  });
}

// Every lane = x, written as a constructor of identical elements so that it becomes one
// broadcast (V{} + x would be an add, since 0 + -0 is not -0; a lane loop becomes inserts).
template <typename V, typename T, size_t... L>
inline V splat_impl(T x, std::index_sequence<L...>) {
  return V{((void)L, x)...};
}
template <typename V, typename T>
inline V splat(T x) {
  return splat_impl<V>(x, std::make_index_sequence<sizeof(V) / sizeof(T)>{});
}

template <typename T, typename In>
inline T widen(In v) {
  return static_cast<T>(v);
}
template <>
inline float widen<float, bf16>(bf16 v) {
  return bf16_to_float(v);
}

template <typename Out, typename T>
inline Out narrow(T v) {
  return static_cast<Out>(v);
}
template <>
inline bf16 narrow<bf16, float>(float v) {
  return float_to_bf16(v);
}

// How a micro-tile is written back: the first KC step applies beta (or ignores C entirely
// when beta == 0, since C may hold garbage), later steps add to what the first wrote.
enum Store { kOverwrite = 0, kScale = 1, kAccumulate = 2 };

// (The zero padding is written in the same loop as the copy, as a select: separate fill and
// copy loops of a few elements become memset / memcpy calls, which dominate tiny products.)
// Packs rows [0, mr) x cols [0, kc) of op(A), starting at element `a` (already offset to the
// block's origin), into one MR-row micro-panel: dst[p * MR + r] = op(A)[r, p].
template <typename T, typename In>
void pack_a_panel(T* __restrict dst, const In* a, int64_t lda, bool trans, int mr, int64_t kc) {
  constexpr int MR = Cfg<T>::MR;
  if (trans) {
    // op(A)[r, p] = a[p * lda + r]: each p is a contiguous run of mr elements.
    for (int64_t p = 0; p < kc; ++p) {
      const In* src = a + p * lda;
      T* d = dst + p * MR;
      for (int r = 0; r < MR; ++r) d[r] = r < mr ? widen<T>(src[r]) : T(0);
    }
  } else if (mr == MR) {
    // Rows are contiguous in p: walk MR rows side by side so every read stream is sequential.
    const In* rows[MR];
    for (int r = 0; r < MR; ++r) rows[r] = a + r * lda;
    for (int64_t p = 0; p < kc; ++p) {
      T* d = dst + p * MR;
      for (int r = 0; r < MR; ++r) d[r] = widen<T>(rows[r][p]);
    }
  } else {
    for (int64_t p = 0; p < kc; ++p) {
      T* d = dst + p * MR;
      for (int r = 0; r < MR; ++r) d[r] = r < mr ? widen<T>(a[r * lda + p]) : T(0);
    }
  }
}

// Packs op(B) rows [0, kc) x cols [0, nr) into one NR-column micro-panel:
// dst[p * NR + j] = op(B)[p, j].
template <typename T, typename In>
void pack_b_panel(T* __restrict dst, const In* b, int64_t ldb, bool trans, int nr, int64_t kc) {
  constexpr int NR = Cfg<T>::NR;
  if (!trans) {
    if (nr == NR) {
      for (int64_t p = 0; p < kc; ++p) {
        const In* src = b + p * ldb;
        T* d = dst + p * NR;
        for (int j = 0; j < NR; ++j) d[j] = widen<T>(src[j]);
      }
    } else {
      for (int64_t p = 0; p < kc; ++p) {
        const In* src = b + p * ldb;
        T* d = dst + p * NR;
        for (int j = 0; j < NR; ++j) d[j] = j < nr ? widen<T>(src[j]) : T(0);
      }
    }
    return;
  }
  // op(B)[p, j] = b[j * ldb + p]: a transpose. Do it in blocks of 8 k-steps so each of the
  // NR source rows is read in short sequential runs while the writes stay within a few lines.
  if (nr < NR) std::memset(static_cast<void*>(dst), 0, sizeof(T) * NR * kc);
  int64_t p0 = 0;
  for (; p0 + 8 <= kc; p0 += 8) {
    for (int j = 0; j < nr; ++j) {
      const In* src = b + j * ldb + p0;
      T* d = dst + p0 * NR + j;
      for (int q = 0; q < 8; ++q) d[q * NR] = widen<T>(src[q]);
    }
  }
  for (; p0 < kc; ++p0)
    for (int j = 0; j < nr; ++j) dst[p0 * NR + j] = widen<T>(b[j * ldb + p0]);
}

// The register-blocked inner kernel: acc = packed A panel (MR x kc) @ packed B panel
// (kc x NR), then written to c per `mode`, clipped to mr x nr.
template <typename T, typename Out>
void micro_kernel(int64_t kc, const T* __restrict pa, const T* __restrict pb, Out* c, int64_t ldc,
                  int mr, int nr, T alpha, T beta, int mode) {
  using Cf = Cfg<T>;
  using V = typename Cf::V;
  constexpr int MR = Cf::MR, NV = Cf::NV, VL = Cf::VL, NR = Cf::NR;
  V acc[MR][NV];
#pragma GCC unroll 32
  for (int i = 0; i < MR; ++i)
#pragma GCC unroll 4
    for (int j = 0; j < NV; ++j) acc[i][j] = V{};
  // The tile of C is needed right after the loop: start fetching it now.
  for (int i = 0; i < mr; ++i) __builtin_prefetch(c + i * ldc, 1);
  for (int64_t p = 0; p < kc; ++p) {
    V bv[NV];
#pragma GCC unroll 4
    for (int j = 0; j < NV; ++j) std::memcpy(&bv[j], pb + j * VL, sizeof(V));
#pragma GCC unroll 32
    for (int i = 0; i < MR; ++i) {
      const V av = splat<V>(pa[i]);
#pragma GCC unroll 4
      for (int j = 0; j < NV; ++j) acc[i][j] += av * bv[j];
    }
    pa += MR;
    pb += NR;
  }
  if constexpr (std::is_same<Out, T>::value) {
    if (mr == MR && nr == NR) {
#pragma GCC unroll 32
      for (int i = 0; i < MR; ++i) {
        T* row = c + i * ldc;
#pragma GCC unroll 4
        for (int j = 0; j < NV; ++j) {
          V r = acc[i][j] * alpha;
          if (mode != kOverwrite) {
            V old;
            std::memcpy(&old, row + j * VL, sizeof(V));
            r += mode == kScale ? old * beta : old;
          }
          std::memcpy(row + j * VL, &r, sizeof(V));
        }
      }
      return;
    }
  }
  alignas(64) T tile[MR * NR];
#pragma GCC unroll 32
  for (int i = 0; i < MR; ++i)
#pragma GCC unroll 4
    for (int j = 0; j < NV; ++j) std::memcpy(tile + i * NR + j * VL, &acc[i][j], sizeof(V));
  for (int i = 0; i < mr; ++i) {
    Out* row = c + i * ldc;
    const T* t = tile + i * NR;
    if (mode == kOverwrite) {
      for (int j = 0; j < nr; ++j) row[j] = narrow<Out>(alpha * t[j]);
    } else if (mode == kScale) {
      for (int j = 0; j < nr; ++j) row[j] = narrow<Out>(alpha * t[j] + beta * widen<T>(row[j]));
    } else {
      for (int j = 0; j < nr; ++j) row[j] = narrow<Out>(alpha * t[j] + widen<T>(row[j]));
    }
  }
}

// One matrix of the batch, with its operand pointers already offset.
template <typename In>
struct Problem {
  int64_t m, n, k;
  const In* a;
  int64_t lda;
  bool ta;
  const In* b;
  int64_t ldb;
  bool tb;
};

// Multiplies a block: rows [i0, i0 + mc) of C against the packed B panel columns
// [j0, j0 + nc) (j0 relative to the panel), packing the A block into thread-local memory.
template <typename T, typename In, typename Out>
void macro_tile(const Problem<In>& pr, int64_t pc, int64_t kc, const T* bpanel, int64_t jc,
                int64_t i0, int64_t mc, int64_t j0, int64_t nc, Out* c, int64_t ldc, T alpha, T beta,
                int mode) {
  constexpr int MR = Cfg<T>::MR, NR = Cfg<T>::NR;
  thread_local Scratch ascratch;
  int64_t mpanels = (mc + MR - 1) / MR;
  T* pa = ascratch.get<T>(static_cast<size_t>(mpanels * MR * kc));
  for (int64_t ip = 0; ip < mpanels; ++ip) {
    int64_t i = i0 + ip * MR;
    int mr = static_cast<int>(std::min<int64_t>(MR, i0 + mc - i));
    const In* src = pr.ta ? pr.a + pc * pr.lda + i : pr.a + i * pr.lda + pc;
    pack_a_panel<T>(pa + ip * MR * kc, src, pr.lda, pr.ta, mr, kc);
  }
  // j0 and nc are multiples of NR except at the right edge of the panel.
  for (int64_t j = j0; j < j0 + nc; j += NR) {
    int nr = static_cast<int>(std::min<int64_t>(NR, j0 + nc - j));
    const T* pb = bpanel + (j / NR) * NR * kc;
    for (int64_t ip = 0; ip < mpanels; ++ip) {
      int64_t i = i0 + ip * MR;
      int mr = static_cast<int>(std::min<int64_t>(MR, i0 + mc - i));
      micro_kernel<T, Out>(kc, pa + ip * MR * kc, pb, c + i * ldc + jc + j, ldc, mr, nr, alpha, beta,
                           mode);
    }
  }
}

// C (Out, leading dim ldc) = alpha * op(A) op(B) + beta * C for one matrix with k >= 1.
// `parallel` says whether to use the pool; when false everything runs on this thread.
template <typename T, typename In, typename Out>
void gemm_blocked(const Problem<In>& pr, Out* c, int64_t ldc, T alpha, T beta, bool parallel) {
  using Cf = Cfg<T>;
  constexpr int MR = Cf::MR, NR = Cf::NR;
  thread_local Scratch bscratch;
  const int64_t m = pr.m, n = pr.n, k = pr.k;
  const int threads = parallel ? num_threads() : 1;

  // Balanced M blocks: the same number of blocks as MC would give, of near-equal height.
  int64_t tm = (m + Cf::MC - 1) / Cf::MC;
  int64_t mc_blk = ((m + tm - 1) / tm + MR - 1) / MR * MR;
  tm = (m + mc_blk - 1) / mc_blk;

  for (int64_t jc = 0; jc < n; jc += Cf::NC) {
    const int64_t ncb = std::min<int64_t>(Cf::NC, n - jc);
    const int64_t npanels = (ncb + NR - 1) / NR;
    // Split N into groups of panels only when the M blocks alone leave threads idle.
    int64_t tn = 1;
    if (threads > 1) {
      int64_t want = 4 * threads;
      tn = std::max<int64_t>(1, (want + tm - 1) / tm);
      tn = std::min<int64_t>(tn, std::max<int64_t>(1, npanels / 2));
    }
    const int64_t ppg = (npanels + tn - 1) / tn;  // panels per group
    tn = (npanels + ppg - 1) / ppg;

    for (int64_t pc = 0; pc < k; pc += Cf::KC) {
      const int64_t kc = std::min<int64_t>(Cf::KC, k - pc);
      T* pb = bscratch.get<T>(static_cast<size_t>(npanels * NR * kc));
      auto pack_b = [&](int64_t p0, int64_t p1) {
        for (int64_t jp = p0; jp < p1; ++jp) {
          int64_t j = jc + jp * NR;
          int nr = static_cast<int>(std::min<int64_t>(NR, n - j));
          const In* src = pr.tb ? pr.b + j * pr.ldb + pc : pr.b + pc * pr.ldb + j;
          pack_b_panel<T>(pb + jp * NR * kc, src, pr.ldb, pr.tb, nr, kc);
        }
      };
      const int mode = pc > 0 ? kAccumulate : beta == T(0) ? kOverwrite : kScale;
      // With a single M block each group of B panels has exactly one reader, so the tile
      // packs its own panels: one pool region per KC step instead of two.
      const bool pack_in_tile = tm == 1;
      auto tile = [&](int64_t t) {
        int64_t bi = t / tn, bj = t % tn;
        int64_t i0 = bi * mc_blk, mc = std::min<int64_t>(mc_blk, m - i0);
        int64_t j0 = bj * ppg * NR, nc = std::min<int64_t>(ppg * NR, ncb - j0);
        if (pack_in_tile) pack_b(bj * ppg, std::min<int64_t>(npanels, (bj + 1) * ppg));
        macro_tile<T, In, Out>(pr, pc, kc, pb, jc, i0, mc, j0, nc, c, ldc, alpha, beta, mode);
      };
      if (!pack_in_tile) {
        constexpr int64_t kPackGroup = 4;  // panels per packing task
        run_tasks((npanels + kPackGroup - 1) / kPackGroup, threads, [&](int64_t g) {
          pack_b(g * kPackGroup, std::min<int64_t>(npanels, (g + 1) * kPackGroup));
        });
      }
      run_tasks(tm * tn, threads, tile);
    }
  }
}

// Few flops (m*n*k <= kDirectMNK): no packing, no threads, one dot product per element.
// Accumulates in T like the blocked path.
constexpr int64_t kDirectMNK = 256;
template <typename T, typename In>
void gemm_direct(const Problem<In>& pr, In* c, int64_t ldc, T alpha, T beta) {
  // Element strides of op(A) along i and p, of op(B) along p and j.
  const int64_t ai = pr.ta ? 1 : pr.lda, ap = pr.ta ? pr.lda : 1;
  const int64_t bp = pr.tb ? 1 : pr.ldb, bj = pr.tb ? pr.ldb : 1;
  for (int64_t i = 0; i < pr.m; ++i) {
    const In* arow = pr.a + i * ai;
    In* out = c + i * ldc;
    for (int64_t j = 0; j < pr.n; ++j) {
      const In* bcol = pr.b + j * bj;
      T s = 0;
      for (int64_t p = 0; p < pr.k; ++p) s += widen<T>(arow[p * ap]) * widen<T>(bcol[p * bp]);
      out[j] = narrow<In>(beta == T(0) ? alpha * s : alpha * s + beta * widen<T>(out[j]));
    }
  }
}

// y[i * ys] = alpha * sum_p M(i, p) x[p] + beta * y[i * ys] for i < len: the m == 1 or n == 1
// case, where there is no reuse for a register tile and the time is all in reading M once.
// M(i, p) = mat[i * rs + p * cs] with rs == 1 ("columns" contiguous: accumulate whole
// columns) or cs == 1 (rows contiguous: one dot product per row).
template <typename T, typename In>
void gemv(int64_t len, int64_t k, const In* mat, int64_t rs, int64_t cs, const In* x, int64_t xs, In* y,
          int64_t ys, T alpha, T beta, bool parallel) {
  using V = typename Cfg<T>::V;
  constexpr int VL = Cfg<T>::VL;
  std::vector<T> xv(static_cast<size_t>(k));
  for (int64_t p = 0; p < k; ++p) xv[p] = widen<T>(x[p * xs]);
  auto put = [&](int64_t i, T s) {
    In* o = y + i * ys;
    *o = narrow<In>(beta == T(0) ? alpha * s : alpha * s + beta * widen<T>(*o));
  };
  constexpr int64_t kChunk = 1024;  // rows of the column form per task: the sums stay in L1
  const bool col_form = rs == 1 && cs != 1;
  auto rows = [&](int64_t r0, int64_t r1) {
    if (col_form) {
      alignas(64) T acc[kChunk];
      for (int64_t i0 = r0; i0 < r1; i0 += kChunk) {
        const int64_t len_c = std::min<int64_t>(kChunk, r1 - i0);
        std::fill(acc, acc + len_c, T(0));
        for (int64_t p = 0; p < k; ++p) {
          const In* col = mat + p * cs + i0;
          const T xp = xv[p];
          for (int64_t i = 0; i < len_c; ++i) acc[i] += xp * widen<T>(col[i]);
        }
        for (int64_t i = 0; i < len_c; ++i) put(i0 + i, acc[i]);
      }
      return;
    }
    for (int64_t i = r0; i < r1; ++i) {
      const In* row = mat + i * rs;
      V s0 = V{}, s1 = V{}, s2 = V{}, s3 = V{};
      int64_t p = 0;
      auto load = [&](int64_t q) {
        V v;
        if constexpr (std::is_same<In, T>::value) {
          std::memcpy(&v, row + q, sizeof(V));
        } else {
          for (int l = 0; l < VL; ++l) v[l] = widen<T>(row[q + l]);
        }
        V w;
        std::memcpy(&w, xv.data() + q, sizeof(V));
        return v * w;
      };
      for (; p + 4 * VL <= k; p += 4 * VL) {
        s0 += load(p);
        s1 += load(p + VL);
        s2 += load(p + 2 * VL);
        s3 += load(p + 3 * VL);
      }
      for (; p + VL <= k; p += VL) s0 += load(p);
      V sv = (s0 + s1) + (s2 + s3);
      T s = 0;
      for (int l = 0; l < VL; ++l) s += sv[l];
      for (; p < k; ++p) s += widen<T>(row[p]) * xv[p];
      put(i, s);
    }
  };
  if (parallel) {
    // at least 64 Ki multiply-adds a task: a decode step's gemv of a small model (128 x 512)
    // runs inline instead of waking the pool for two halves of a few microseconds each
    const int64_t grain = col_form ? std::max<int64_t>(kChunk, 65536 / std::max<int64_t>(1, k))
                                   : std::max<int64_t>(1, 65536 / std::max<int64_t>(1, k));
    parallel_for(len, grain, rows);
  } else {
    rows(0, len);
  }
}

// One matrix, any size, k >= 1.
template <typename T, typename In>
void gemm_one(const Problem<In>& pr, In* c, int64_t ldc, T alpha, T beta, bool parallel) {
  const double flops = double(pr.m) * double(pr.n) * double(pr.k);
  // Below this, packing and the padded register tile cost more than they save.
  if (flops <= double(kDirectMNK)) return gemm_direct<T>(pr, c, ldc, alpha, beta);
  if (pr.m == 1) {
    // C row = op(A) row @ op(B): op(B)(p, j) is M(j, p).
    const In* x = pr.a;
    const int64_t xs = pr.ta ? pr.lda : 1;
    if (pr.tb) return gemv<T>(pr.n, pr.k, pr.b, pr.ldb, 1, x, xs, c, 1, alpha, beta, parallel);
    return gemv<T>(pr.n, pr.k, pr.b, 1, pr.ldb, x, xs, c, 1, alpha, beta, parallel);
  }
  if (pr.n == 1) {
    const In* x = pr.b;
    const int64_t xs = pr.tb ? 1 : pr.ldb;
    if (pr.ta) return gemv<T>(pr.m, pr.k, pr.a, 1, pr.lda, x, xs, c, ldc, alpha, beta, parallel);
    return gemv<T>(pr.m, pr.k, pr.a, pr.lda, 1, x, xs, c, ldc, alpha, beta, parallel);
  }
  if (std::is_same<In, bf16>::value && pr.k > Cfg<T>::KC) {
    // Accumulate across KC steps in float, round once.
    std::vector<T> ws(static_cast<size_t>(pr.m * pr.n));
    gemm_blocked<T, In, T>(pr, ws.data(), pr.n, alpha, T(0), parallel);
    auto finish = [&](int64_t r0, int64_t r1) {
      for (int64_t i = r0; i < r1; ++i) {
        In* row = c + i * ldc;
        const T* w = ws.data() + i * pr.n;
        if (beta == T(0)) {
          for (int64_t j = 0; j < pr.n; ++j) row[j] = narrow<In>(w[j]);
        } else {
          for (int64_t j = 0; j < pr.n; ++j) row[j] = narrow<In>(w[j] + beta * widen<T>(row[j]));
        }
      }
    };
    if (parallel) parallel_for(pr.m, std::max<int64_t>(1, 65536 / std::max<int64_t>(1, pr.n)), finish);
    else finish(0, pr.m);
    return;
  }
  gemm_blocked<T, In, In>(pr, c, ldc, alpha, beta, parallel);
}

template <typename T, typename In>
void matmul_typed(const MatmulArgs& args) {
  const int64_t batch = args.batch, m = args.m, n = args.n, k = args.k;
  In* c0 = static_cast<In*>(args.c);
  const T alpha = static_cast<T>(args.alpha), beta = static_cast<T>(args.beta);
  if (k == 0) {
    // No products: C = beta * C, and beta == 0 must not read C.
    for (int64_t bt = 0; bt < batch; ++bt) {
      In* c = c0 + bt * args.batch_stride_c;
      for (int64_t i = 0; i < m; ++i)
        for (int64_t j = 0; j < n; ++j) {
          In* o = c + i * args.ldc + j;
          *o = narrow<In>(beta == T(0) ? T(0) : beta * widen<T>(*o));
        }
    }
    return;
  }
  auto problem = [&](int64_t bt) {
    Problem<In> pr;
    pr.m = m;
    pr.n = n;
    pr.k = k;
    pr.a = static_cast<const In*>(args.a) + bt * args.batch_stride_a;
    pr.lda = args.lda;
    pr.ta = args.trans_a != 0;
    pr.b = static_cast<const In*>(args.b) + bt * args.batch_stride_b;
    pr.ldb = args.ldb;
    pr.tb = args.trans_b != 0;
    return pr;
  };
  // m*n*k below which one matrix is not worth splitting over threads: waking the pool costs
  // tens of microseconds on a busy VM (measured: no gain below about 200^3 on 2 cores).
  constexpr double kParallelMNK = 8e6;
  const double flops = double(m) * double(n) * double(k);
  const int threads = num_threads();
  const bool parallel = threads > 1 && flops >= kParallelMNK;
  if (!parallel && batch > 1 && threads > 1 && flops * double(batch) >= kParallelMNK) {
    // A batch of small matrices: whole matrices per task, each on one thread, so the pool
    // is entered once. Chunks of at least ~1e6 multiply-adds keep the scheduling cheap.
    const int64_t grain = std::max<int64_t>(1, static_cast<int64_t>(1e6 / flops));
    run_tasks((batch + grain - 1) / grain, threads, [&](int64_t g) {
      for (int64_t bt = g * grain; bt < std::min(batch, (g + 1) * grain); ++bt)
        gemm_one<T>(problem(bt), c0 + bt * args.batch_stride_c, args.ldc, alpha, beta, false);
    });
    return;
  }
  for (int64_t bt = 0; bt < batch; ++bt)
    gemm_one<T>(problem(bt), c0 + bt * args.batch_stride_c, args.ldc, alpha, beta, parallel);
}

}  // namespace

void matmul(const MatmulArgs& args) {
  const DType dt = static_cast<DType>(args.dtype);
  if (dt != DType::F32 && dt != DType::F64 && dt != DType::BF16)
    fail(ErrorCode::DType, "matmul: unsupported dtype ", dtype_name(dt),
         " (float32, float64 and bfloat16 are supported)");
  if (args.batch <= 0 || args.m <= 0 || args.n <= 0) return;
  if (dt == DType::F32) return matmul_typed<float, float>(args);
  if (dt == DType::F64) return matmul_typed<double, double>(args);
  return matmul_typed<float, bf16>(args);
}

}  // namespace DR_ISA
}  // namespace cpu
}  // namespace dualroute
