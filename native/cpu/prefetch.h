// Software prefetch of one unrolled step (two vectors from element i) of a row, shared by the
// row kernels (norm.cpp, softmax.cpp, backward.cpp): while a pass works from cache, the next
// row's lines are fetched (one prefetch per 64 bytes), for reading or for writing. Also the
// row kernels' other memory-traffic rules: how far ahead to prefetch (rows_ahead) and when to
// store around the caches (stream_stores).
//
// Every helper is always inlined: GCC 12 treats __builtin_prefetch as free of side effects, so
// a helper it chose not to inline early was found to have no effect and its calls were deleted
// (SwiGLU forward and backward shipped without a single prefetch instruction: objdump of
// elementwise.cpp.o and backward.cpp.o; test/codegen.test.ts counts them in the built addon).
#pragma once
#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <type_traits>

#include "kernels.h"
#include "simd.h"

namespace dualroute {
namespace cpu {
namespace DR_ISA {

template <typename T>
DR_VINLINE void prefetch_r(const T* p, int64_t i) {
  constexpr int kBytes = 2 * kVecF * static_cast<int>(sizeof(T));  // one step of two vectors
  for (int b = 0; b < kBytes; b += 64) __builtin_prefetch(reinterpret_cast<const char*>(p + i) + b, 0, 3);
}
template <typename T>
DR_VINLINE void prefetch_w(T* p, int64_t i) {
  constexpr int kBytes = 2 * kVecF * static_cast<int>(sizeof(T));
  for (int b = 0; b < kBytes; b += 64) __builtin_prefetch(reinterpret_cast<char*>(p + i) + b, 1, 3);
}

// The same for a step of four vectors from element i (two calls of the above).
template <typename T>
DR_VINLINE void prefetch_r4(const T* p, int64_t i) {
  prefetch_r(p, i);
  prefetch_r(p, i + 2 * kVecF);
}
template <typename T>
DR_VINLINE void prefetch_w4(T* p, int64_t i) {
  prefetch_w(p, i);
  prefetch_w(p, i + 2 * kVecF);
}

// How many rows ahead a row kernel prefetches: about 8 KiB of its input ahead of the row it
// reads (SwiGLU over rows of 4 KiB: two rows ahead 1.20-1.31 ms, one 1.31-1.39, none 1.61-1.82
// over 16384 x 1024, alternated call by call in one process), at least one row and at most 16.
inline int64_t rows_ahead(int64_t row_bytes) {
  return std::clamp<int64_t>(8192 / std::max<int64_t>(row_bytes, 1), 1, 16);
}

// f(std::true_type{}) when stream, else f(std::false_type{}): the store form (vput / vputn's
// `stream`) as a compile-time constant in a kernel's loop. Tested per vector at run time it cost
// instructions (rmsNorm's forward 15-18% more, the norms' backward ~5%, under callgrind).
template <class F>
DR_VINLINE decltype(auto) with_store_form(bool stream, F&& f) {
  return stream ? f(std::true_type{}) : f(std::false_type{});
}

// Whether a kernel writes its output of n elements, in rows of row_n, with vstream (simd.h):
// float32 only (vput / vputn store the other types through the cache), an output larger than
// the caches would keep for the next op (DUALROUTE_CPU_STREAM_BYTES, 16 MiB by default; never
// under 256 KiB) whose rows all start on a vector boundary. Such an output costs a read of
// every line when stored through the cache. Counted for native.cpuStats() when true.
template <typename T>
inline bool stream_stores(const T* out, int64_t n, int64_t row_n) {
  if constexpr (!std::is_same_v<T, float>) return false;
  constexpr int64_t kFloor = 256 << 10;
  const int64_t bytes = n * static_cast<int64_t>(sizeof(T)), row_bytes = row_n * static_cast<int64_t>(sizeof(T));
  if (bytes < kFloor) return false;
  if (reinterpret_cast<uintptr_t>(out) % kVecBytes != 0 || row_bytes % kVecBytes != 0) return false;
  double at = 16 << 20;  // a number that does not parse leaves the default
  if (const char* s = std::getenv("DUALROUTE_CPU_STREAM_BYTES")) {
    char* end = nullptr;
    const double v = std::strtod(s, &end);
    if (end != s && v >= 0) at = v;
  }
  if (static_cast<double>(bytes) < std::max(at, static_cast<double>(kFloor))) return false;
  count_bypassed_output();
  return true;
}

}  // namespace DR_ISA
}  // namespace cpu
}  // namespace dualroute
